"""How fast a model trains on this machine: tokens per second of real training steps on random batches.

A budgeted preset (sizing.py) asks it for a few candidate models before a run, and a long run with
`--fused auto` for its own model on each training path (path_choice.py); each answer is kept per machine
(calibration.py's step_speeds.json), so a machine measures each configuration once and a seeded run chooses
the same model and path the next time. benchmarks/preset_step.py times the training paths with it.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Callable, Optional

import keras
import numpy as np

from kerascharrnn.config import ModelConfig, TrainConfig
from kerascharrnn.data import batches
from kerascharrnn.models.charrnn import CharRNN
from kerascharrnn.training import calibration, path_choice, trainer
from kerascharrnn.vocab import Vocabulary

WARMUP_STEPS = 2  # the first compiles; the second settles the allocator
# The median of 15 steps, not 5: a choice at a sizing boundary moved with the figure (docs/quality.md, round 6).
TIMED_STEPS = 15


def measure(model: ModelConfig, config: TrainConfig, steps: int = TIMED_STEPS,
            clock: Callable[[], float] = time.perf_counter) -> float:
    """Median tokens per second of `steps` training steps (after WARMUP_STEPS) of a fresh `model` trained
    with `config` on random batches. It builds a model: a seeded caller seeds again before building its own."""
    vocab = Vocabulary(tuple(chr(0x100 + i) for i in range(model.vocab_size)))
    batch, length = config.batch_size, config.seq_length
    charrnn = CharRNN.build(model, vocab, batch)
    one_device = trainer.Trainer(config, charrnn, {"train": batches.StreamLayout(batch, batch, length, 1000)})
    rng = np.random.default_rng(0)
    inputs = [(rng.integers(0, model.vocab_size, (batch, length), dtype=np.int32),
               rng.integers(0, model.vocab_size, (batch, length), dtype=np.int32)) for _ in range(2)]
    times = []
    for i in range(WARMUP_STEPS + steps):
        started = clock()
        float(one_device.train_step(*inputs[i % 2]))
        times.append(clock() - started)
    del one_device, charrnn
    keras.backend.clear_session()
    return batch * length / max(float(np.median(times[WARMUP_STEPS:])), 1e-9)


def cached(model: ModelConfig, config: TrainConfig, log: Optional[Callable[[str], None]] = None) -> float:
    """This machine's recorded speed for the configuration, measured and recorded if it has none."""
    key = calibration.config_key(model, config)
    speed = calibration.measured_speed(key)
    if speed is None:
        started = time.perf_counter()
        speed = measure(model, config)
        calibration.record_speed(key, speed)
        if log:
            path = "" if config.fused == "auto" else f" ({path_choice.PATH_NAMES[config.fused]})"
            log(f"Measured {model.num_layers} x {model.rnn_size}{path} on this machine: {speed:,.0f} characters/s"
                f" ({time.perf_counter() - started:.0f} s; kept in {calibration.speeds_path()})")
    return speed


def measure_paths(model: ModelConfig, config: TrainConfig, log: Optional[Callable[[str], None]] = None) -> None:
    """Measures (once per machine) this model's speed on the fused path it could take and on the Keras
    layers, for path_choice.choose to compare."""
    for path in path_choice.candidate_paths(model, config.batch_size):
        cached(model, dataclasses.replace(config, fused=path), log=log)
