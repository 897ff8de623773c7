"""How a row of text is drawn (SamplingSettings), the one set of bounds its settings have, and the seed range:
written once, for bin/sample's flags and every API of bin/serve. Pure Python (no TensorFlow): configs and the
server's request models read it before any model is loaded."""

from __future__ import annotations

import dataclasses
import math
import secrets
from typing import Dict, Optional, Tuple

# A temperature below this picks the most likely id: logits / T would otherwise overflow float32 (and any such
# temperature already amounts to the argmax: the draw's noise is negligible beside logits / 1e-6).
ARGMAX_BELOW = 1e-6
# How far back a penalty can look, in ids (a range of -1, "the whole text", means this far): the loop keeps each
# row's last ids in a window of the batch's largest range.
MAX_PENALTY_RANGE = 4096
# A logit bias is clamped to this (OpenAI's and KoboldCpp's range); -inf (llama.cpp's `false`) bans an id.
MAX_LOGIT_BIAS = 100.0
# Seeds the samplers take: 1 .. SEED_MAX (0 stands for "draw one" in an exported model's signature).
SEED_MAX = 2**62


@dataclasses.dataclass(frozen=True)
class Bound:
    """An inclusive range of a setting (`open_low`: the low end excluded), checked for finite values."""

    low: float
    high: float = math.inf
    open_low: bool = False

    def problem(self, value) -> Optional[str]:
        """Why `value` is out of range (None if it is not)."""
        if isinstance(value, float) and not math.isfinite(value):
            return f"must be a finite number, got {value}"
        if value < self.low or (self.open_low and value == self.low):
            return f"must be {'>' if self.open_low else '>='} {self.low:g}, got {value:g}"
        if value > self.high:
            return f"must be <= {self.high:g}, got {value:g}"
        return None

    def describe(self) -> str:
        return f"{'(' if self.open_low else '['}{self.low:g}, {self.high:g}]"


# The bounds of each setting, whatever API or flag it comes from.
BOUNDS: Dict[str, Bound] = {
    "temperature": Bound(0.0, 1e6),  # beyond 1e6 every id is equally likely anyway, and float32 overflows
    "top_k": Bound(0, 2**31 - 1),  # above the vocabulary's size: off
    "top_p": Bound(0.0, 1.0),
    "min_p": Bound(0.0, 1.0),
    "typical_p": Bound(0.0, 1.0),
    "repetition_penalty": Bound(0.0, 10.0, open_low=True),
    "presence_penalty": Bound(-2.0, 2.0),
    "frequency_penalty": Bound(-2.0, 2.0),
    "penalty_range": Bound(-1, 2**31 - 1),  # above MAX_PENALTY_RANGE: that
}


class SettingError(ValueError):
    """A setting out of its bounds: `field` names it as SamplingSettings does."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field} {message}")
        self.field = field
        self.message = message


@dataclasses.dataclass(frozen=True)
class SamplingSettings:
    """How one row draws its ids; each default is the setting's neutral value (it changes nothing). Out-of-bounds
    values raise SettingError (BOUNDS).

    Attributes:
      temperature: scales the logits (0, or below ARGMAX_BELOW: the most likely id).
      top_k: keep the k most likely ids (0 = off).
      top_p: keep the smallest set of ids whose probability reaches p (1 = off).
      min_p: keep the ids at least min_p times as likely as the most likely one (0 = off).
      typical_p: keep the locally typical ids (Meister et al. 2022) up to this probability (1 = off).
      repetition_penalty: divides a positive logit (multiplies a negative one) of each id seen in the window
        (CTRL's penalty; 1 = off).
      presence_penalty: subtracted from the logit of each id seen in the window (0 = off).
      frequency_penalty: times the number of times an id was seen in the window, subtracted (0 = off).
      penalty_range: the window: the row's last this many ids, its prompt's included (-1: MAX_PENALTY_RANGE;
        0: no penalty).
      logit_bias: (id, bias) pairs added to the logits (a bias of -inf: never that id); clamped to
        +-MAX_LOGIT_BIAS.
    """

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    typical_p: float = 1.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    penalty_range: int = 64
    logit_bias: Tuple[Tuple[int, float], ...] = ()

    def __post_init__(self):
        for field, bound in BOUNDS.items():
            problem = bound.problem(getattr(self, field))
            if problem:
                raise SettingError(field, problem)
        for token, bias in self.logit_bias:
            if math.isnan(bias) or bias == math.inf:
                raise SettingError("logit_bias", f"for id {token} must be a number or -inf, got {bias}")
        object.__setattr__(self, "logit_bias", tuple(
            (int(token), bias if bias == -math.inf else min(max(float(bias), -MAX_LOGIT_BIAS), MAX_LOGIT_BIAS))
            for token, bias in self.logit_bias))

    @property
    def penalized(self) -> bool:
        return (self.repetition_penalty != 1.0 or self.presence_penalty != 0.0 or self.frequency_penalty != 0.0) \
            and self.penalty_range != 0

    def window(self, length: int) -> int:
        """The penalty window of a row of `length` ids in all (0 when no penalty applies)."""
        if not self.penalized:
            return 0
        wanted = MAX_PENALTY_RANGE if self.penalty_range < 0 else min(self.penalty_range, MAX_PENALTY_RANGE)
        return max(min(wanted, length), 1)


def fold_seed(seed: int) -> int:
    """Any integer a client sends as a seed, as one the samplers take (1 .. SEED_MAX): the same seed, the same
    text."""
    return seed % SEED_MAX + 1


def random_seed() -> int:
    return secrets.randbelow(SEED_MAX) + 1
