"""How a model trains on this machine: through the fused XLA path of fused.py, in one piece or with the
batch split in two halves (one per core), or through the plain Keras layers; the one decision, and why.

`--fused auto` takes the path this machine measured faster: for this very model and batch where a long
run measured both before it started (step_speed.measure_paths, kept per machine), else for the nearest
configuration bin/benchmark --what calibrate measured (calibration.py), else a static rule measured on a
2-core CPU (short runs, where measuring would cost more than it saves). The choice is recorded in the
checkpoint, so a resumed run keeps it.
"""

import dataclasses
from typing import Callable, Optional, Tuple

import keras

from kerascharrnn import resources
from kerascharrnn.errors import UserError
from kerascharrnn.errors import setting as ref
from kerascharrnn.models import stack
from kerascharrnn.training import calibration

PATH_NAMES = {"split": "fused (split)", "on": "fused", "off": "Keras"}
# A run this long (or budgeted this long) measures its own paths before it starts: ~10-30 s once per machine
# and model, against the 10-40% a wrong path costs.
MEASURE_FROM_ITERATIONS = 2000
MEASURE_FROM_MINUTES = 10.0


def worth_measuring(fused: str, planned_iterations: int, budget_minutes: float) -> bool:
    return fused == "auto" and (planned_iterations >= MEASURE_FROM_ITERATIONS
                                or budget_minutes >= MEASURE_FROM_MINUTES)


def candidate_paths(model_config, batch_size: int, cpu_cores: Optional[int] = None) -> Tuple[str, str]:
    """The fused form a freshly built model of this config would take under auto, and the Keras layers."""
    cores = resources.cpu_cores() if cpu_cores is None else cpu_cores
    split = batch_size >= 2 and not model_config.batchnorm and cores >= 2
    return ("split" if split else "on"), "off"


def unsupported_reason(model: keras.Model):
    """Why the fused path cannot reproduce the model's recurrent layers exactly, or None if it can.

    It reproduces stateful, sequence-returning stock LSTM, GRU (reset_after) and SimpleRNN layers with
    Keras's default math only.
    """
    for stage in stack.recurrent_stages(model):
        layer, cell = stage.layer, stage.layer.cell
        default_math = (cell.activation is keras.activations.tanh and cell.use_bias
                        and cell.recurrent_dropout == 0 and cell.dropout == 0
                        and getattr(cell, "recurrent_activation", keras.activations.sigmoid)
                        is keras.activations.sigmoid and getattr(cell, "reset_after", True))
        if not default_math:
            return f"{layer.name} is not a default {stage.kind.name} (activations, bias or cell dropout differ)"
        if not (layer.stateful and layer.return_sequences and not layer.go_backwards):
            return f"{layer.name} is not a stateful, forward, sequence-returning layer"
    return None


# rnn_size ranges where the plain Keras layer beat the fused path in one piece ("on") on the 2-core CPU
# they were measured on (B=50, T=50, docs/benchmarks.md): an LSTM around 128, where the Keras loop's
# threaded small matmuls win (2x128: 22.7 vs 25.2 ms); fused won at 64 (1x64: 5.0 vs 7.7 ms) and from
# 256 up (1x256: 27.3 vs 42.3 ms, 2x512: 150 vs 278 ms). GRU and SimpleRNN: fused won at every size
# (GRU 1x128 7.4 vs 12.6 ms, 3x512 185 vs 321 ms; SimpleRNN 1x128 2.9 vs 4.9 ms, 1x512 15.5 vs 33.3 ms).
# Split in two halves, fused won everywhere (LSTM 1x64 3.1, 1x128 6.6, 2x128 15.0, 1x256 19.0, 2x512
# 141.5 ms; GRU 1x128 6.5 ms).
_KERAS_FASTER = {"lstm": range(97, 192)}


def pays_off(model: keras.Model, path: str) -> bool:
    """Whether the fused path in this form ("split" or "on") measured faster than the plain Keras
    layers for this model's size and kind."""
    stage = stack.recurrent_stages(model)[0]
    return path == "split" or stage.layer.cell.units not in _KERAS_FASTER.get(stage.kind.name, ())


@dataclasses.dataclass(frozen=True)
class PathChoice:
    path: str  # "split", "on" (fused, the batch in one piece) or "off" (the Keras layers)
    why: str  # for the run's log

    @property
    def fused(self) -> bool:
        return self.path != "off"


def split_unsupported_reason(model: keras.Model) -> Optional[str]:
    """Why the batch cannot train as independent pieces (fused.split_loss_and_grads), or None: batch
    normalization's statistics span the whole batch."""
    batch = model.inputs[0].shape[0]
    if batch is None or batch < 2:
        return "a batch of one stream"
    for stage in stack.layer_stack(model):
        if stage.spans_batch:
            return f"{stage.layer.name} ({stage.role}) spans the batch"
    return None


def choose(model: keras.Model, setting: str, on_gpu: bool, cpu_cores: int = 1,
           speeds: Optional[Callable[[str], Optional[float]]] = None) -> PathChoice:
    """The one place that decides how training runs: "split" (fused.split_loss_and_grads), "on"
    (fused.forward) or "off" (the Keras layers).

    Args:
      model: the training model.
      setting: --fused: "split", "on", "off" or "auto": the path this machine measured faster for the
        nearest configuration (calibration.py, written by bin/benchmark --what calibrate), else the static
        rule of `pays_off`; never a timing at start-up, so a seeded run takes the same path every time.
        A fused auto choice splits the batch where the model allows it and the machine has two cores.
      on_gpu: a GPU is visible; the Keras layers then run cuDNN, which auto always prefers.
      cpu_cores: the cores this process may use.
      speeds: tokens per second this machine measured for this model and batch on a path ("split", "on",
        "off"), or None where it measured none (step_speed.measure_paths; read only, never measured here).

    Returns:
      The choice and why; the caller records the path so that a resumed run keeps it.
    """
    reason = unsupported_reason(model)
    if setting in ("on", "split"):
        reason = reason or (split_unsupported_reason(model) if setting == "split" else None)
        if reason:
            raise UserError(f"{ref('fused')} {setting}: this model cannot use that path: {reason}")
        return PathChoice(setting, f"--fused {setting}")
    if setting == "off":
        return PathChoice("off", "--fused off")
    if reason or on_gpu:
        return PathChoice("off", reason or "a GPU: the Keras layers run cuDNN")
    split_reason = split_unsupported_reason(model) or (None if cpu_cores >= 2 else "one CPU core")
    path = "on" if split_reason else "split"
    stage = stack.recurrent_stages(model)[0]
    measured = calibration.measured_choice(stage.kind.name, len(stack.recurrent_stages(model)),
                                           stage.layer.cell.units, path)
    own = (speeds(path), speeds("off")) if speeds else (None, None)
    if None not in own:
        fused = own[0] > own[1]
        why = (f"measured on this machine for this model: {PATH_NAMES[path]} {own[0]:,.0f}, Keras {own[1]:,.0f}"
               " characters/s")
    elif measured:
        fused = measured["fused_ms"] < measured["keras_ms"]
        why = (f"measured on this machine at {measured['num_layers']}x{measured['rnn_size']}: fused ({path})"
               f" {measured['fused_ms']:.1f} ms, Keras {measured['keras_ms']:.1f} ms per step")
    else:
        fused = pays_off(model, path)
        why = "the rule measured on a 2-core CPU (bin/benchmark --what calibrate measures this machine)"
    why += f"; not split: {split_reason}" if split_reason else "; the batch in two halves, one per core"
    return PathChoice(path if fused else "off", why)
