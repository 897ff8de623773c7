"""bin/convert: a torch-rnn checkpoint (.t7, from train.lua) -> a kerascharrnn checkpoint (.keras).

The .keras file loads with plain `keras.models.load_model` and carries the vocabulary and the config;
bin/sample, bin/eval, bin/export, bin/serve and `bin/train --init_from` also take the .t7 as it is.
"""

from __future__ import annotations

import os
import sys
from typing import List, Optional, Sequence

from absl import flags

from kerascharrnn.cli import common
from kerascharrnn.errors import UserError
from kerascharrnn.io import checkpoint as ckpt
from kerascharrnn.io import files, paths


def define_flags(flag_values: flags.FlagValues) -> None:
    options = dict(flag_values=flag_values)
    flags.DEFINE_string("checkpoint", "", "The torch-rnn checkpoint to convert (a .t7 written by train.lua).",
                        **options)
    flags.DEFINE_string("output", "", "The .keras file to write (default: the .t7's path with .keras).", **options)
    flags.DEFINE_integer("batch_size", 0, "Streams of the saved stateful model (0 = the --batch_size the .t7 records;"
                         " bin/train and bin/sample rebuild it at their own size anyway; at most 65536).",
                         lower_bound=0, upper_bound=65536, **options)
    flags.DEFINE_bool("overwrite", False, "Replace an existing --output file.", **options)


def run(flag_values: flags.FlagValues, argv: List[str]) -> None:
    if not flag_values.checkpoint:
        raise UserError("--checkpoint is required (a torch-rnn .t7 file)")
    if not ckpt.is_t7(flag_values.checkpoint):
        raise UserError(f"--checkpoint {flag_values.checkpoint}: bin/convert reads torch-rnn .t7 checkpoints")
    output = flag_values.output or os.path.splitext(flag_values.checkpoint)[0] + ".keras"
    if not output.endswith(".keras"):
        raise UserError(f"--output {output}: Keras needs a .keras file name")
    if os.path.exists(output) and not flag_values.overwrite:
        raise UserError(f"{output} already exists; pass --overwrite to replace it")
    paths.check_outputs(inputs=[("--checkpoint", flag_values.checkpoint)], outputs=[("--output", output)])
    t7 = ckpt.read_t7(flag_values.checkpoint)  # every check on the file, before TensorFlow loads
    files.require_writable_dir_for(output)

    common.quiet_tensorflow()
    from kerascharrnn import devices
    from kerascharrnn.models.charrnn import CharRNN

    devices.configure(-1)
    charrnn = CharRNN.from_t7(flag_values.checkpoint, flag_values.batch_size or None)
    charrnn.save(output)
    config = charrnn.config
    print(f"Wrote {output}: {config.model_type} {config.num_layers} x {config.rnn_size}, vocabulary of"
          f" {charrnn.vocab.size} ({charrnn.vocab.encoding}), {charrnn.count_params():,} parameters"
          + (f", trained {t7.iteration} iterations" if t7.iteration is not None else ""))


def main(argv: Optional[Sequence[str]] = None) -> int:
    return common.main(argv, define_flags, run, __doc__)


if __name__ == "__main__":
    sys.exit(main())
