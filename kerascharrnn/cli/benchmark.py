"""bin/benchmark: training speed and memory against a PyTorch peer, sampling and preprocessing speed."""

import functools
import importlib.util
import shlex
import sys
from typing import List, Optional, Sequence

from absl import flags

from kerascharrnn.cli import common
from kerascharrnn.config import FUSED_CHOICES, MODEL_TYPES
from kerascharrnn.errors import UserError
from kerascharrnn.io import files


def define_flags(flag_values: flags.FlagValues) -> None:
    options = dict(flag_values=flag_values)
    flags.DEFINE_multi_enum("what", ["train"], ["train", "calibrate", "sample", "preprocess"], "What to measure"
                            " (repeatable); calibrate = time our fused and Keras training paths on --grid and record"
                            " them for this machine, where --fused auto follows them.", **options)
    flags.DEFINE_enum("peer", "none", ["none", "torch"], "Also run the same configurations with PyTorch (pip install"
                      " 'kerascharrnn[bench]'), each in its own process, and print the ratio per row.", **options)
    flags.DEFINE_string("grid", "torch-rnn", "Layers x rnn_size list, e.g. '1x64,2x128'; torch-rnn = 1/2/3 x"
                        " 64..512.", **options)
    flags.DEFINE_multi_enum("model_type", ["lstm"], list(MODEL_TYPES), "Recurrent layer type (repeatable: one table"
                            " each, e.g. --model_type lstm --model_type gru against nn.LSTM and nn.GRU).", **options)
    flags.DEFINE_integer("repeats", 1, "Runs of each configuration per framework, alternating with the peer's.",
                         lower_bound=1, **options)
    flags.DEFINE_enum("fused", "auto", list(FUSED_CHOICES), "Our LSTM training path (bin/train's --fused).",
                      **options)
    flags.DEFINE_integer("batch_size", 50, "B.", lower_bound=1, **options)
    flags.DEFINE_integer("seq_length", 50, "T.", lower_bound=1, **options)
    flags.DEFINE_integer("iters", 100, "Timed train steps per configuration (torch-rnn: 100).", lower_bound=1,
                         **options)
    flags.DEFINE_integer("warmup", 10, "Untimed steps first (tracing, allocation).", lower_bound=0, **options)
    flags.DEFINE_enum("corpus", "tiny_shakespeare", ["tiny_shakespeare", "stdlib"], "Data for train/preprocess.",
                      **options)
    flags.DEFINE_string("input_h5", "", "Train on this preprocessed file instead of --corpus.", **options)
    flags.DEFINE_string("checkpoint", "", "--what sample: this .keras (default: a fresh 2x128 LSTM; speed only).",
                        **options)
    flags.DEFINE_integer("sample_length", 20000, "--what sample: characters per timed run at batch 1.",
                         lower_bound=100, **options)
    flags.DEFINE_multi_integer("preprocess_mb", [45], "--what preprocess: file sizes in MB (tiny-shakespeare"
                               " repeated).", **options)
    flags.DEFINE_string("output_md", "", "Also write the report (markdown) here.", **options)
    flags.DEFINE_string("output_png", "", "--what train: write torch-rnn's plot here.", **options)


def run(flag_values: flags.FlagValues, argv: List[str], command: Sequence[str] = ()) -> None:
    """command: the whole command line, for the report."""
    if flag_values.peer == "torch" and importlib.util.find_spec("torch") is None:
        raise UserError("--peer torch needs PyTorch: pip install 'kerascharrnn[bench]'")
    from kerascharrnn.speed import report

    try:
        report.parse_grid(flag_values.grid)
    except ValueError:
        raise UserError(f"--grid {flag_values.grid!r}: use torch-rnn or a list like 1x64,2x128") from None
    common.quiet_tensorflow()
    from kerascharrnn import devices

    devices.configure_xla()  # the sampling rows compile here; training rows in workers that do the same
    if "sample" in flag_values.what:
        devices.configure_sampling_threads()  # as bin/sample and bin/serve run

    command = " ".join(shlex.quote(a) for a in ["bin/benchmark", *command[1:]])
    sections = report.run(flag_values)
    lines = [f"Machine: {report.machine()}", f"Command: `{command}`", ""]
    for what, table in sections.items():
        lines += [f"## {what}", "", table, ""]
    text = "\n".join(lines)
    print(text)
    if flag_values.output_md:
        files.write_text_atomic(flag_values.output_md, text)


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv if argv is None else argv)
    return common.main(argv, define_flags, functools.partial(run, command=argv), __doc__)


if __name__ == "__main__":
    sys.exit(main())
