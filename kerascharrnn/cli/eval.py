"""bin/eval: mean cross-entropy of a checkpoint on a split (torch-rnn's eval.lua)."""

from __future__ import annotations

import math
import os
import sys
from typing import List, Optional, Sequence

from absl import flags

from kerascharrnn import resources
from kerascharrnn.cli import common
from kerascharrnn.data import batches
from kerascharrnn.errors import UserError
from kerascharrnn.io import checkpoint as ckpt
from kerascharrnn.io import files
from kerascharrnn.vocab import Vocabulary


def define_flags(flag_values: flags.FlagValues) -> None:
    options = dict(flag_values=flag_values)
    flags.DEFINE_string("checkpoint", "", "Checkpoint to evaluate: a .keras file (or its .json), or a torch-rnn .t7.",
                        **options)
    flags.DEFINE_string("input_h5", "", "HDF5 corpus to evaluate on (from bin/preprocess).", **options)
    flags.DEFINE_string("input_json", "", "Its JSON vocabulary (default: --input_h5 with .json), checked against"
                        " the checkpoint's.", **options)
    flags.DEFINE_enum("split", "val", ["val", "test"], "Which split to evaluate.", **options)
    flags.DEFINE_integer("seq_length", 50, "T: characters per stream per minibatch (longer than the split: the"
                         " split's length).", lower_bound=1, upper_bound=2**31 - 1, **options)
    flags.DEFINE_float("dynamic_lr", 0.0, "Dynamic evaluation: after predicting each --seq_length segment, one SGD"
                       " step of this learning rate on it, so the model adapts to the text as it reads it (one stream;"
                       " the checkpoint is not changed). 0 = static evaluation, torch-rnn's. Try 0.03-0.1.",
                       lower_bound=0.0, **options)
    common.define_gpu_flag(flag_values)


def run(flag_values: flags.FlagValues, argv: List[str]) -> None:
    common.require("tensorflow", "bin/eval")
    if not flag_values.checkpoint:
        raise UserError("--checkpoint is required")
    if not flag_values.input_h5:
        raise UserError("--input_h5 is required")
    if not math.isfinite(flag_values.dynamic_lr):
        raise UserError(f"--dynamic_lr must be a finite number >= 0 (got {flag_values.dynamic_lr})")
    model_path = ckpt.model_path_for(flag_values.checkpoint)
    vocab = ckpt.read_vocab(model_path)
    files.require_file(flag_values.input_h5, "HDF5 file")
    lengths = batches.split_lengths(flag_values.input_h5)
    json_path = flag_values.input_json or batches.vocab_path_for(flag_values.input_h5)
    if flag_values.input_json or os.path.exists(json_path):
        if Vocabulary.load(json_path) != vocab:
            raise UserError(f"{json_path} is not the vocabulary the checkpoint was trained on")
    batches.check_ids_match(flag_values.input_h5, vocab, f"the checkpoint {model_path}")

    common.quiet_tensorflow()
    from kerascharrnn import devices
    from kerascharrnn.models.charrnn import CharRNN
    from kerascharrnn.training import evaluate

    devices.configure(flag_values.gpu)
    split = flag_values.split
    charrnn = CharRNN.from_checkpoint(model_path)
    layout = batches.stream_layout(lengths[split], charrnn.batch_size, flag_values.seq_length,
                                   allow_fewer_streams=True)
    if layout.num_batches == 0:
        raise UserError(f"the {split} split of {flag_values.input_h5} has too few tokens to evaluate")
    resources.check_inference_fits(charrnn.config, layout.batch_size, layout.seq_length, "--seq_length")
    if flag_values.dynamic_lr > 0:
        loss, count = evaluate.dynamic_split_loss(charrnn, flag_values.input_h5, split, lengths[split],
                                                  flag_values.seq_length, flag_values.dynamic_lr)
        how = f", dynamic evaluation with SGD at {flag_values.dynamic_lr:g}"
    else:
        loss = evaluate.split_loss(charrnn.model, flag_values.input_h5, split, layout)
        count, how = layout.num_batches * layout.num_streams * layout.seq_length, ""
    print(f"{split} loss: {loss:.6f} nats/char, {loss / math.log(2):.6f} bits/char ({count} characters{how})")


def main(argv: Optional[Sequence[str]] = None) -> int:
    return common.main(argv, define_flags, run, __doc__)


if __name__ == "__main__":
    sys.exit(main())
