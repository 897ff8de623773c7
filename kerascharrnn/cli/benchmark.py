"""bin/benchmark: training speed and memory against a PyTorch peer, sampling and preprocessing speed."""

import shlex
import sys

from absl import flags

from kerascharrnn import files
from kerascharrnn.cli import common
from kerascharrnn.config import FUSED_CHOICES, MODEL_TYPES
from kerascharrnn.errors import UserError

flags.DEFINE_multi_enum("what", ["train"], ["train", "calibrate", "sample", "preprocess"], "What to measure"
                        " (repeatable); calibrate = time our fused and Keras training paths on --grid and record"
                        " them for this machine, where --fused auto follows them.")
flags.DEFINE_enum("peer", "none", ["none", "torch"], "Also run the same configurations with PyTorch (pip install"
                  " 'kerascharrnn[bench]'), each in its own process, and print the ratio per row.")
flags.DEFINE_string("grid", "torch-rnn", "Layers x rnn_size list, e.g. '1x64,2x128'; torch-rnn = 1/2/3 x 64..512.")
flags.DEFINE_multi_enum("model_type", ["lstm"], list(MODEL_TYPES), "Recurrent layer type (repeatable: one table"
                        " each, e.g. --model_type lstm --model_type gru against nn.LSTM and nn.GRU).")
flags.DEFINE_integer("repeats", 1, "Runs of each configuration per framework, alternating with the peer's.",
                     lower_bound=1)
flags.DEFINE_enum("fused", "auto", list(FUSED_CHOICES), "Our LSTM training path (bin/train's --fused).")
flags.DEFINE_integer("batch_size", 50, "B.", lower_bound=1)
flags.DEFINE_integer("seq_length", 50, "T.", lower_bound=1)
flags.DEFINE_integer("iters", 100, "Timed train steps per configuration (torch-rnn: 100).", lower_bound=1)
flags.DEFINE_integer("warmup", 10, "Untimed steps first (tracing, allocation).", lower_bound=0)
flags.DEFINE_enum("corpus", "tiny_shakespeare", ["tiny_shakespeare", "stdlib"], "Data for train/preprocess.")
flags.DEFINE_string("input_h5", "", "Train on this preprocessed file instead of --corpus.")
flags.DEFINE_string("checkpoint", "", "--what sample: this .keras (default: a fresh 2x128 LSTM; speed only).")
flags.DEFINE_integer("sample_length", 20000, "--what sample: characters per timed run at batch 1.", lower_bound=100)
flags.DEFINE_multi_integer("preprocess_mb", [45], "--what preprocess: file sizes in MB (tiny-shakespeare repeated).")
flags.DEFINE_string("output_md", "", "Also write the report (markdown) here.")
flags.DEFINE_string("output_png", "", "--what train: write torch-rnn's plot here.")
FLAGS = flags.FLAGS


def main(argv):
    if FLAGS.peer == "torch":
        import importlib.util

        if importlib.util.find_spec("torch") is None:
            raise UserError("--peer torch needs PyTorch: pip install 'kerascharrnn[bench]'")
    try:
        from kerascharrnn.benchmark.report import parse_grid

        parse_grid(FLAGS.grid)
    except ValueError:
        raise UserError(f"--grid {FLAGS.grid!r}: use torch-rnn or a list like 1x64,2x128") from None
    common.quiet_tensorflow()
    from kerascharrnn import devices
    from kerascharrnn.benchmark import report

    devices.configure_xla()  # the sampling rows compile here; training rows in workers that do the same
    if "sample" in FLAGS.what:
        devices.configure_sampling_threads()  # as bin/sample and bin/serve run

    command = " ".join(shlex.quote(a) for a in ["bin/benchmark", *sys.argv[1:]])
    sections = report.run(FLAGS)
    lines = [f"Machine: {report.machine()}", f"Command: `{command}`", ""]
    for what, table in sections.items():
        lines += [f"## {what}", "", table, ""]
    text = "\n".join(lines)
    print(text)
    if FLAGS.output_md:
        files.write_text_atomic(FLAGS.output_md, text)


def run():
    common.run_main(main)


if __name__ == "__main__":
    run()
