"""bin/eval: mean cross-entropy of a checkpoint on a split (torch-rnn's eval.lua)."""

from __future__ import annotations

import math
import os

from absl import flags

from kerascharrnn import checkpoint as ckpt
from kerascharrnn import data, files, resources
from kerascharrnn.cli import common
from kerascharrnn.errors import UserError
from kerascharrnn.vocab import Vocabulary

flags.DEFINE_string("checkpoint", "", "Checkpoint to evaluate: a .keras file (or its .json),"
                    " or a torch-rnn .t7.")
flags.DEFINE_string("input_h5", "", "HDF5 corpus to evaluate on (from bin/preprocess).")
flags.DEFINE_string("input_json", "", "Its JSON vocabulary (default: --input_h5 with .json), checked against"
                    " the checkpoint's.")
flags.DEFINE_enum("split", "val", ["val", "test"], "Which split to evaluate.")
flags.DEFINE_integer("seq_length", 50, "T: characters per stream per minibatch (longer than the split: the"
                     " split's length).", lower_bound=1, upper_bound=2**31 - 1)
flags.DEFINE_float("dynamic_lr", 0.0, "Dynamic evaluation: after predicting each --seq_length segment, one SGD step"
                   " of this learning rate on it, so the model adapts to the text as it reads it (one stream; the"
                   " checkpoint is not changed). 0 = static evaluation, torch-rnn's. Try 0.03-0.1.",
                   lower_bound=0.0)
common.define_gpu_flag()
FLAGS = flags.FLAGS


def main(argv):
    del argv
    if not FLAGS.checkpoint:
        raise UserError("--checkpoint is required")
    if not FLAGS.input_h5:
        raise UserError("--input_h5 is required")
    if FLAGS.seq_length < 1:
        raise UserError("--seq_length must be at least 1")
    if not math.isfinite(FLAGS.dynamic_lr):
        raise UserError(f"--dynamic_lr must be a finite number >= 0 (got {FLAGS.dynamic_lr})")
    model_path = ckpt.model_path_for(FLAGS.checkpoint)
    vocab = ckpt.read_vocab(model_path)
    files.require_file(FLAGS.input_h5, "HDF5 file")
    lengths = data.split_lengths(FLAGS.input_h5)
    json_path = FLAGS.input_json or os.path.splitext(FLAGS.input_h5)[0] + ".json"
    if FLAGS.input_json or os.path.exists(json_path):
        if Vocabulary.load(json_path) != vocab:
            raise UserError(f"{json_path} is not the vocabulary the checkpoint was trained on")
    data.check_ids_match(FLAGS.input_h5, vocab, f"the checkpoint {model_path}")

    common.quiet_tensorflow()
    from kerascharrnn import devices, evaluate
    from kerascharrnn.charrnn import CharRNN

    devices.configure(FLAGS.gpu)
    charrnn = CharRNN.from_checkpoint(model_path)
    layout = data.stream_layout(lengths[FLAGS.split], charrnn.batch_size, FLAGS.seq_length, allow_fewer_streams=True)
    if layout.num_batches == 0:
        raise UserError(f"the {FLAGS.split} split of {FLAGS.input_h5} has too few tokens to evaluate")
    resources.check_inference_fits(charrnn.config, layout.batch_size, layout.seq_length, "--seq_length")
    if FLAGS.dynamic_lr > 0:
        loss, count = evaluate.dynamic_split_loss(charrnn, FLAGS.input_h5, FLAGS.split, lengths[FLAGS.split],
                                                  FLAGS.seq_length, FLAGS.dynamic_lr)
        how = f", dynamic evaluation with SGD at {FLAGS.dynamic_lr:g}"
    else:
        loss = evaluate.split_loss(charrnn.model, FLAGS.input_h5, FLAGS.split, layout)
        count, how = layout.num_batches * layout.num_streams * layout.seq_length, ""
    print(f"{FLAGS.split} loss: {loss:.6f} nats/char, {loss / math.log(2):.6f} bits/char ({count} characters{how})")


def run():
    common.run_main(main)


if __name__ == "__main__":
    run()
