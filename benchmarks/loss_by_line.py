#!/usr/bin/env python3
"""Where a model's loss on a split comes from: speaker headings against the speeches.

In a play laid out as tiny-shakespeare is ("NAME:" on its own line after a blank line), the headings
of an unseen play name speakers the training text never had. This prints, for the val and test splits,
the mean loss per character (one stream, the state carried, as dynamic evaluation reads it), the share
of characters in heading lines, their mean loss, and the loss of the rest.

    python3 benchmarks/loss_by_line.py --checkpoint cv/cpu15_best.keras --input_h5 ts.h5
"""

from __future__ import annotations

import argparse

import h5py
import numpy as np


def heading_mask(text: str) -> np.ndarray:
    """True for the characters of lines that end with ':' right after a blank line (and their newline)."""
    mask = np.zeros(len(text), bool)
    position, previous_blank = 0, True
    for line in text.split("\n"):
        if previous_blank and line.endswith(":") and len(line) < 40:
            mask[position:position + len(line) + 1] = True
        previous_blank = line == ""
        position += len(line) + 1
    return mask[:len(text)]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--input_h5", required=True)
    parser.add_argument("--seq_length", type=int, default=200)
    args = parser.parse_args()

    import tensorflow as tf

    from kerascharrnn.models import stack
    from kerascharrnn.models.charrnn import CharRNN

    charrnn = CharRNN.from_checkpoint(args.checkpoint, batch_size=1)
    log_probs = tf.function(lambda x: tf.nn.log_softmax(charrnn.model(x, training=False)))
    T = args.seq_length
    for split in ("val", "test"):
        with h5py.File(args.input_h5, "r") as f:
            ids = np.asarray(f[split], np.int32) - 1  # torch-rnn ids are 1-based
        stack.reset_states(charrnn.model)
        losses = []
        for start in range(0, len(ids) - 1 - T + 1, T):
            lp = log_probs(tf.constant(ids[None, start:start + T])).numpy()[0]
            losses.append(-lp[np.arange(T), ids[start + 1:start + T + 1]])
        losses = np.concatenate(losses)
        text = "".join(charrnn.vocab.tokens[i] for i in ids[1:1 + len(losses)])
        heading = heading_mask(text)
        print(f"{split}: {losses.mean():.4f} nats/char over {len(losses)} characters; headings: {heading.mean():.1%}"
              f" of them at {losses[heading].mean():.3f}, adding {losses[heading].sum() / len(losses):.3f};"
              f" the rest at {losses[~heading].mean():.3f}")


if __name__ == "__main__":
    main()
