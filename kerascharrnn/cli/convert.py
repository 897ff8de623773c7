"""bin/convert: a torch-rnn checkpoint (.t7, from train.lua) -> a kerascharrnn checkpoint (.keras).

The .keras file loads with plain `keras.models.load_model` and carries the vocabulary and the config;
bin/sample, bin/eval, bin/export, bin/serve and `bin/train --init_from` also take the .t7 as it is.
"""

from __future__ import annotations

import os

from absl import flags

from kerascharrnn import checkpoint as ckpt
from kerascharrnn import files, paths
from kerascharrnn.cli import common
from kerascharrnn.errors import UserError

flags.DEFINE_string("checkpoint", "", "The torch-rnn checkpoint to convert (a .t7 written by train.lua).")
flags.DEFINE_string("output", "", "The .keras file to write (default: the .t7's path with .keras).")
flags.DEFINE_integer("batch_size", 0, "Streams of the saved stateful model (0 = the --batch_size the .t7 records;"
                     " bin/train and bin/sample rebuild it at their own size anyway; at most 65536).", lower_bound=0,
                     upper_bound=65536)
flags.DEFINE_bool("overwrite", False, "Replace an existing --output file.")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    if not FLAGS.checkpoint:
        raise UserError("--checkpoint is required (a torch-rnn .t7 file)")
    if not ckpt.is_t7(FLAGS.checkpoint):
        raise UserError(f"--checkpoint {FLAGS.checkpoint}: bin/convert reads torch-rnn .t7 checkpoints")
    output = FLAGS.output or os.path.splitext(FLAGS.checkpoint)[0] + ".keras"
    if not output.endswith(".keras"):
        raise UserError(f"--output {output}: Keras needs a .keras file name")
    if os.path.exists(output) and not FLAGS.overwrite:
        raise UserError(f"{output} already exists; pass --overwrite to replace it")
    paths.check_outputs(inputs=[("--checkpoint", FLAGS.checkpoint)], outputs=[("--output", output)])
    t7 = ckpt.read_t7(FLAGS.checkpoint)  # every check on the file, before TensorFlow loads
    files.require_writable_dir_for(output)

    common.quiet_tensorflow()
    from kerascharrnn import devices
    from kerascharrnn.charrnn import CharRNN

    devices.configure(-1)
    charrnn = CharRNN.from_t7(FLAGS.checkpoint, FLAGS.batch_size or None)
    charrnn.save(output)
    config = charrnn.config
    print(f"Wrote {output}: {config.model_type} {config.num_layers} x {config.rnn_size}, vocabulary of"
          f" {charrnn.vocab.size} ({charrnn.vocab.encoding}), {charrnn.count_params():,} parameters"
          + (f", trained {t7.iteration} iterations" if t7.iteration is not None else ""))


def run():
    common.run_main(main)


if __name__ == "__main__":
    run()
