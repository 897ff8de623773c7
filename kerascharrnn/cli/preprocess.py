"""bin/preprocess: text file -> HDF5 + JSON vocabulary (torch-rnn's scripts/preprocess.py).

Never imports TensorFlow.
"""

from absl import flags

from kerascharrnn import preprocess
from kerascharrnn.cli import common

flags.DEFINE_string("input_txt", "data/tiny-shakespeare.txt", "Text file to read.")
flags.DEFINE_string("output_h5", "data/tiny-shakespeare.h5", "HDF5 file to write (train/val/test id arrays).")
flags.DEFINE_string("output_json", "data/tiny-shakespeare.json", "JSON vocabulary file to write.")
flags.DEFINE_float("val_frac", 0.1, "Fraction of the tokens for the validation split.")
flags.DEFINE_float("test_frac", 0.1, "Fraction of the tokens for the test split.")
flags.DEFINE_bool("quiet", False, "Do not print the summary lines.")
flags.DEFINE_string("encoding", "utf-8", "Text encoding of --input_txt (a Python codec name), or 'bytes' for a"
                    " byte-level vocabulary.")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    preprocess.preprocess(FLAGS.input_txt, FLAGS.output_h5, FLAGS.output_json, val_frac=FLAGS.val_frac,
                          test_frac=FLAGS.test_frac, encoding=FLAGS.encoding, quiet=FLAGS.quiet)


def run():
    common.run_main(main)


if __name__ == "__main__":
    run()
