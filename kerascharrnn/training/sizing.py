"""The time budget chooses the model: which LSTM, regularisation and checkpoint interval a budgeted preset
(`bin/train --preset auto --max_minutes M`, or `cpu_15min`) trains, from this machine's measured speed, the
budget and the corpus.

The rule, measured in docs/quality.md (round 5):
- Size: of the ladder below, the largest model that sees at least TOKENS_PER_PARAMETER training
  characters per parameter in the budget, at the speed measured for it on this machine (a faster
  machine or a longer budget buys a larger model). Where that model would make more than
  DATA_LIMITED_PASSES passes over the corpus, the data, not the time, is what runs out: then the largest
  model that still sees DATA_LIMITED_TOKENS_PER_PARAMETER characters per parameter and holds at most
  PARAMETERS_PER_CHARACTER parameters per training character (a larger model learns more from each
  pass, and the best validation checkpoint stops it before it memorises).
- Regularisation: dropout from the passes the chosen model will make over the corpus: 0.1 up to 12
  passes (measured best from 0.4 passes to the 15-minute runs' ~12), beyond that more, +0.1 per doubling
  (up to MAX_DROPOUT). The embedding dropout stays at the preset's 0.1.
- Checkpoints (each one validates): as many as keep validation under VALIDATION_SHARE of the budget, at
  most MAX_CHECKPOINTS, at least one at the end.

Pure: the speed of a candidate comes from the caller (step_speed.py measures it, once per machine).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Dict, List, Optional, Tuple

from kerascharrnn import resources
from kerascharrnn.config import INT32_MAX, ModelConfig

# (num_layers, rnn_size), smallest first. Two layers throughout: one layer was worse per parameter in
# every torch-rnn-era comparison, and three only pays at sizes a CPU budget rarely reaches.
LADDER: Tuple[Tuple[int, int], ...] = ((2, 96), (2, 128), (2, 192), (2, 256), (2, 384), (2, 512), (2, 768),
                                       (3, 1024))
TOKENS_PER_PARAMETER = 4.0
DATA_LIMITED_PASSES = 20.0
DATA_LIMITED_TOKENS_PER_PARAMETER = 2.0
PARAMETERS_PER_CHARACTER = 25.0
TRAINING_SHARE = 0.95  # of the budget spent in training steps (the rest: validation, checkpoints, the first compile)
VALIDATION_SHARE = 0.04
MAX_CHECKPOINTS = 10
WELL_TRAINED_PASSES = 12.0  # where dropout 0.1 was measured best (docs/quality.md rounds 2-4)
MAX_DROPOUT = 0.5
# Validation runs no backward pass: it reads about this many times as many characters per second as training.
EVAL_SPEEDUP = 3.0


@dataclasses.dataclass(frozen=True)
class Corpus:
    train_tokens: int
    val_tokens: int
    vocab_size: int


@dataclasses.dataclass(frozen=True)
class Sizing:
    """What the budget chose: flag values for bin/train, and the one line that says why."""

    values: Dict[str, object]
    why: str


def dropout_for(passes: float) -> float:
    """Dropout after each recurrent layer for a run that makes `passes` passes over its training text."""
    if passes <= WELL_TRAINED_PASSES:
        # 0.1 down to a fraction of a pass: measured best there too (docs/quality.md, round 5); without any
        # dropout, a copy-attention model trained through the split path stopped learning there
        return 0.1
    return round(min(MAX_DROPOUT, 0.1 + 0.1 * math.log2(passes / WELL_TRAINED_PASSES)), 2)


def checkpoint_interval(iterations: int, budget_s: float, train_tokens_per_s: float, val_tokens: int) -> int:
    """Iterations between checkpoints: validation (val_tokens at EVAL_SPEEDUP x the training speed) within
    VALIDATION_SHARE of the budget, at most MAX_CHECKPOINTS in the run."""
    validation_s = val_tokens / (EVAL_SPEEDUP * train_tokens_per_s)
    checkpoints = max(1, min(MAX_CHECKPOINTS, int(VALIDATION_SHARE * budget_s / max(validation_s, 1e-9))))
    return min(max(1, math.ceil(iterations / checkpoints)), INT32_MAX)


def _model(base: ModelConfig, layers: int, size: int) -> ModelConfig:
    return dataclasses.replace(base, num_layers=layers, rnn_size=size)


def candidates(fixed: Dict[str, int]) -> List[Tuple[int, int]]:
    """The ladder with the sizes the user gave (--num_layers, --rnn_size) put in, smallest first."""
    rungs = [(fixed.get("num_layers", n), fixed.get("rnn_size", h)) for n, h in LADDER]
    return sorted(set(rungs), key=rungs.index)


def choose(base: ModelConfig, batch_size: int, seq_length: int, budget_s: float, corpus: Corpus,
           tokens_per_s: Callable[[ModelConfig], float], fixed: Optional[Dict[str, int]] = None) -> Sizing:
    """The model and recipe for this budget, corpus and machine.

    Args:
      base: the preset's model (embedding, copy memory, ...); its size is what gets chosen.
      batch_size, seq_length: the run's.
      budget_s: the training time, seconds.
      corpus: sizes of the training data.
      tokens_per_s: training speed of a model on this machine (measured; called for few rungs: the
        search walks from the middle of the ladder, and every bound fails from some rung on).
      fixed: sizes the user set on the command line, which the choice keeps.

    Returns:
      The flag values and the reason, for the run's log and its checkpoints.
    """
    rungs = candidates(fixed or {})
    base = dataclasses.replace(base, vocab_size=corpus.vocab_size)
    speeds: Dict[Tuple[int, int], float] = {}

    def tokens(rung) -> float:
        if rung not in speeds:
            speeds[rung] = tokens_per_s(_model(base, *rung))
        return speeds[rung] * budget_s * TRAINING_SHARE

    def params(rung) -> int:
        return resources.parameter_count(_model(base, *rung))

    def compute_bound(rung) -> bool:
        return tokens(rung) >= TOKENS_PER_PARAMETER * params(rung)

    def data_bound(rung) -> bool:
        return (params(rung) <= PARAMETERS_PER_CHARACTER * corpus.train_tokens
                and tokens(rung) >= DATA_LIMITED_TOKENS_PER_PARAMETER * params(rung))

    index = _last_fitting(rungs, compute_bound)
    data_limited = tokens(rungs[index]) > DATA_LIMITED_PASSES * corpus.train_tokens
    if data_limited:
        index = _last_fitting(rungs, data_bound, start=index)
    layers, size = rungs[index]
    count = params(rungs[index])
    run_tokens = tokens(rungs[index])
    passes = run_tokens / max(corpus.train_tokens, 1)
    dropout = dropout_for(passes)
    iterations = max(1, int(run_tokens // (batch_size * seq_length)))
    # max_epochs: the budget ends the run, not a pass count (1000 passes of a small corpus come early)
    values = dict(num_layers=layers, rnn_size=size, dropout=dropout,
                  max_epochs=min(max(1000, math.ceil(2 * passes)), INT32_MAX),
                  checkpoint_every=checkpoint_interval(iterations, budget_s, speeds[rungs[index]],
                                                       corpus.val_tokens))
    why = (f"{layers} x {size} ({count / 1e6:.2g}M parameters): at {speeds[rungs[index]]:,.0f} characters/s here,"
           f" ~{run_tokens / 1e6:.3g}M characters in {budget_s / 60:g} minutes, {run_tokens / count:.1f} per"
           f" parameter and {passes:.3g} passes over {corpus.train_tokens:,} training characters; dropout {dropout:g}")
    if index + 1 < len(rungs):
        bigger = rungs[index + 1]
        if data_limited and params(bigger) > PARAMETERS_PER_CHARACTER * corpus.train_tokens:
            why += f"; {bigger[0]} x {bigger[1]} would be too large for the corpus"
        else:
            least = DATA_LIMITED_TOKENS_PER_PARAMETER if data_limited else TOKENS_PER_PARAMETER
            why += (f"; {bigger[0]} x {bigger[1]} would see too few characters per parameter"
                    f" ({tokens(bigger) / params(bigger):.2f} < {least:g})")
    if data_limited:
        why += " (the corpus, not the time, limits this run)"
    return Sizing(values, why)


def _last_fitting(rungs, fits: Callable, start: Optional[int] = None) -> int:
    """The index of the last rung that fits (or 0), for a `fits` that holds up to some rung and not after
    it: a walk from `start` (the middle of the ladder) measures only the rungs next to the answer."""
    index = start if start is not None else min(len(rungs) - 1,
                                                next((i for i, (_, h) in enumerate(rungs) if h >= 256), 0))
    if fits(rungs[index]):
        while index + 1 < len(rungs) and fits(rungs[index + 1]):
            index += 1
        return index
    while index > 0 and not fits(rungs[index - 1]):
        index -= 1
    return max(0, index - 1)
