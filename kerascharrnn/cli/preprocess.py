"""bin/preprocess: text file -> HDF5 + JSON vocabulary (torch-rnn's scripts/preprocess.py).

Never imports TensorFlow.
"""

import sys
from typing import List, Optional, Sequence

from absl import flags

from kerascharrnn.cli import common
from kerascharrnn.data import preprocess


def define_flags(flag_values: flags.FlagValues) -> None:
    options = dict(flag_values=flag_values)
    flags.DEFINE_string("input_txt", "data/tiny-shakespeare.txt", "Text file to read.", **options)
    flags.DEFINE_string("output_h5", "data/tiny-shakespeare.h5", "HDF5 file to write (train/val/test id arrays).",
                        **options)
    flags.DEFINE_string("output_json", "data/tiny-shakespeare.json", "JSON vocabulary file to write.", **options)
    flags.DEFINE_float("val_frac", 0.1, "Fraction of the tokens for the validation split.", **options)
    flags.DEFINE_float("test_frac", 0.1, "Fraction of the tokens for the test split.", **options)
    flags.DEFINE_bool("quiet", False, "Do not print the summary lines.", **options)
    flags.DEFINE_string("encoding", "utf-8", "Text encoding of --input_txt (a Python codec name), or 'bytes' for a"
                        " byte-level vocabulary.", **options)


def run(flag_values: flags.FlagValues, argv: List[str]) -> None:
    preprocess.preprocess(flag_values.input_txt, flag_values.output_h5, flag_values.output_json,
                          val_frac=flag_values.val_frac, test_frac=flag_values.test_frac,
                          encoding=flag_values.encoding, quiet=flag_values.quiet)


def main(argv: Optional[Sequence[str]] = None) -> int:
    return common.main(argv, define_flags, run, __doc__)


if __name__ == "__main__":
    sys.exit(main())
