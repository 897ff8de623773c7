"""How one step's logits become the next id of each row, in numpy: the settings a loop reads (Filters, the knob
table), and the penalties, logit bias, temperature, truncation filters and draw of logits.py, for engines whose
step runs outside TensorFlow (a LiteRT interpreter). No TensorFlow here: the lite install (bin/serve --tflite)
has none. logits.py holds the TensorFlow forms and re-exports these names; given the same logits and noise,
both pick the same ids (tests/test_sampling.py). The order and the meaning of each setting are logits.py's.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple, Sequence, Tuple

import numpy as np

from kerascharrnn.sampling_settings import ARGMAX_BELOW, SamplingSettings

_TINY = float(np.finfo(np.float32).tiny)

@dataclasses.dataclass(frozen=True)
class Filters:
    """What a compiled sampling loop contains (static: each part changes the graph). A loop with a part serves
    rows that do not use it (their settings are neutral there), so a batch's loop has the union of its rows'.

    Attributes:
      greedy: every row takes its argmax (no noise is drawn).
      top_k, top_p, min_p, typical_p, penalties, bias: the parts of the logits' path.
      logprobs: report log-probabilities: the chosen id's and the `logprobs` most likely ones (0 = none).
    """

    greedy: bool = False
    top_k: bool = False
    top_p: bool = False
    min_p: bool = False
    typical_p: bool = False
    penalties: bool = False
    bias: bool = False
    logprobs: int = 0

    @property
    def truncates(self) -> bool:
        return self.top_k or self.top_p or self.min_p or self.typical_p

    @property
    def plain(self) -> bool:
        """Temperature and the draw alone: the logits reach the draw as the model made them."""
        return not (self.truncates or self.penalties or self.bias)

    @classmethod
    def for_rows(cls, settings: Sequence[SamplingSettings], logprobs: int = 0) -> "Filters":
        """The parts rows with these settings need."""
        sampled = [s for s in settings if s.temperature >= ARGMAX_BELOW]
        return cls(greedy=bool(settings) and not sampled,
                   top_k=any(s.top_k > 0 for s in sampled), top_p=any(s.top_p < 1.0 for s in sampled),
                   min_p=any(s.min_p > 0.0 for s in sampled), typical_p=any(s.typical_p < 1.0 for s in sampled),
                   penalties=any(s.penalized for s in settings), bias=any(s.logit_bias for s in settings),
                   logprobs=logprobs)


# The settings a loop reads, one column each of a table the loop takes as one float32 array (a call of a compiled
# loop costs per argument it is given; top_k, clamped to the vocabulary, and penalty_range are whole numbers)
COLUMNS = ("temperature", "top_k", "top_p", "min_p", "typical_p", "repetition_penalty", "presence_penalty",
           "frequency_penalty", "penalty_range")
_WHOLE = ("top_k", "penalty_range")


def knob_table(settings: Sequence[SamplingSettings], windows: Sequence[int], vocab_size: int):
    """Rows' settings as a loop takes them: (table (N, len(COLUMNS)) float32, logit_bias (N, V) float32 or None
    when no row has a bias). `windows`: each row's penalty window (SamplingSettings.window; the penalty
    range a row's window allows, and no penalty for a row without one)."""
    windows = np.asarray(windows, np.float32).reshape(len(settings))
    neutral = SamplingSettings()
    table = np.array([[getattr(s if w > 0 or not name.endswith("_penalty") else neutral, name) for name in COLUMNS]
                      for s, w in zip(settings, windows)], np.float32).reshape(len(settings), len(COLUMNS))
    table[:, COLUMNS.index("top_k")] = np.minimum(table[:, COLUMNS.index("top_k")], vocab_size)
    table[:, COLUMNS.index("penalty_range")] = windows
    if not any(s.logit_bias for s in settings):
        return table, None
    bias = np.zeros((len(settings), vocab_size), np.float32)
    for row, s in enumerate(settings):
        for token, value in s.logit_bias:
            bias[row, token] += value
    return table, bias



class Knobs(NamedTuple):
    """Rows' settings, a column each ((N,): top_k and penalty_range int32), and the logit bias (N, V) or None."""

    temperature: np.ndarray
    top_k: np.ndarray
    top_p: np.ndarray
    min_p: np.ndarray
    typical_p: np.ndarray
    repetition_penalty: np.ndarray
    presence_penalty: np.ndarray
    frequency_penalty: np.ndarray
    penalty_range: np.ndarray
    logit_bias: object = None

    @classmethod
    def unpacked(cls, table, logit_bias=None) -> "Knobs":
        """The columns of a numpy knob table (logits.Knobs reads a TensorFlow one too)."""
        return cls(*(table[:, i].astype(np.int32) if name in _WHOLE else table[:, i] for i, name in enumerate(COLUMNS)),
                   logit_bias)

    @classmethod
    def of(cls, settings: Sequence[SamplingSettings], windows: Sequence[int], vocab_size: int) -> "Knobs":
        """The knobs of rows with these settings and penalty windows (SamplingSettings.window)."""
        return cls.unpacked(*knob_table(settings, windows, vocab_size))


class PenaltyTerms(NamedTuple):
    """The penalties as (N, 1) columns, worked out once per chunk (the loop's steps then cost fewer ops): a seen
    id's logit x is x * (1 + positive_x * swing + lift) - presence - frequency * count, where swing and lift make
    the factor 1 / repetition_penalty for a positive x and repetition_penalty for another."""

    swing: object
    lift: object
    presence: object
    frequency: object


def penalty_terms(knobs: Knobs) -> PenaltyTerms:
    """The terms of numpy knobs or TensorFlow ones (plain arithmetic and indexing, which both take)."""
    repetition = knobs.repetition_penalty[:, None]
    return PenaltyTerms(1.0 / repetition - repetition, repetition - 1.0, knobs.presence_penalty[:, None],
                        knobs.frequency_penalty[:, None])


def update_window_np(history, counts, ids, positions, ranges):
    """numpy twin of update_window (returns new arrays)."""
    rows, last = np.arange(len(ids)), history.shape[1] - 1
    leaving = history[rows, np.bitwise_and(positions - ranges, last)]
    counts = counts.copy()
    np.add.at(counts, (rows, ids), 1.0)
    np.add.at(counts, (rows[leaving >= 0], leaving[leaving >= 0]), -1.0)
    history = history.copy()
    history[rows, np.bitwise_and(positions, last)] = ids
    return history, counts


def penalized_np(logits, knobs: Knobs, counts, filters: Filters, terms=None):
    if filters.penalties:
        terms = terms or penalty_terms(knobs)
        seen = np.minimum(counts, 1.0)
        factor = (1.0 + seen * ((logits > 0).astype(np.float32) * terms.swing + terms.lift)).astype(np.float32)
        logits = (logits * factor - seen * terms.presence - counts * terms.frequency).astype(np.float32)
    if filters.bias:
        logits = (logits + knobs.logit_bias).astype(np.float32)
    return logits


def _softmax_np(scores):
    best = scores.max(axis=1, keepdims=True)
    weights = np.exp(scores - np.where(np.isfinite(best), best, 0))
    return weights / weights.sum(axis=1, keepdims=True)


def truncated_np(scores, knobs: Knobs, filters: Filters):
    """numpy twin of truncated."""
    vocab_size = scores.shape[1]
    if filters.top_k:
        ordered = -np.sort(-scores, axis=1)
        kth = np.take_along_axis(ordered, np.clip(knobs.top_k - 1, 0, vocab_size - 1)[:, None], axis=1)
        scores = np.where((knobs.top_k[:, None] > 0) & (scores < kth), -np.inf, scores)
    if filters.typical_p:
        with np.errstate(divide="ignore", invalid="ignore"):  # log 0 = -inf, and 0 * -inf masked below
            probs = _softmax_np(scores)
            log_probs = np.log(probs)
            entropy = -np.where(probs > 0, probs * log_probs, 0.0).sum(axis=1, keepdims=True)
        order = np.argsort(np.abs(-log_probs - entropy), axis=1, kind="stable")
        before = np.cumsum(np.take_along_axis(probs, order, axis=1), axis=1) - np.take_along_axis(probs, order, axis=1)
        keep_ordered = (before < knobs.typical_p[:, None]) | (np.arange(vocab_size)[None, :] == 0)
        keep = np.take_along_axis(keep_ordered, np.argsort(order, axis=1, kind="stable"), axis=1)
        scores = np.where((knobs.typical_p[:, None] < 1.0) & ~keep, -np.inf, scores)
    if filters.top_p:
        ordered = -np.sort(-scores, axis=1)
        probs = _softmax_np(ordered)
        before = np.cumsum(probs, axis=1) - probs
        threshold = np.minimum(np.where(before < knobs.top_p[:, None], ordered, np.inf).min(axis=1, keepdims=True),
                               ordered[:, :1])
        scores = np.where((knobs.top_p[:, None] < 1.0) & (scores < threshold), -np.inf, scores)
    if filters.min_p:
        with np.errstate(divide="ignore"):
            floor = scores.max(axis=1, keepdims=True) + np.log(knobs.min_p)[:, None]
        scores = np.where(scores < floor, -np.inf, scores)
    return scores.astype(np.float32)


def filter_logits_np(logits, knobs: Knobs, filters: Filters, counts=None, terms=None):
    """numpy twin of filter_logits."""
    scores = penalized_np(logits, knobs, counts, filters, terms)
    return truncated_np((scores / knobs.temperature[:, None]).astype(np.float32), knobs, filters)


def gumbel_noise_np(shape, rng: np.random.Generator) -> np.ndarray:
    """numpy twin of gumbel_noise (its own random stream: draws differ from TensorFlow's), float32 as
    an engine's own sampling ops take it. Draws of shapes (a, *S) then (b, *S) are one draw of
    (a + b, *S), so noise drawn for several steps at once is that of one step at a time."""
    return (-np.log(-np.log(rng.uniform(_TINY, 1.0, size=shape)))).astype(np.float32)


def next_ids_np(logits, knobs: Knobs, noise, filters: Filters, counts=None, terms=None) -> np.ndarray:
    """numpy twin of next_ids: given the same noise it picks the same ids."""
    scores = penalized_np(np.asarray(logits, np.float32), knobs, counts, filters, terms)
    best = scores.argmax(axis=1).astype(np.int32)
    if filters.greedy:
        return best
    temperature = knobs.temperature
    greedy_rows = temperature < ARGMAX_BELOW
    scaled = truncated_np((scores / np.where(greedy_rows, 1.0, temperature).astype(np.float32)[:, None])
                          .astype(np.float32), knobs, filters)
    return np.where(greedy_rows, best, (scaled + noise).argmax(axis=1)).astype(np.int32)


def log_softmax_np(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def empty_window(rows: int, width: int, vocab_size: int) -> Tuple[np.ndarray, np.ndarray]:
    """A penalty window with nothing in it yet: (history (rows, width) of -1, counts (rows, V) of 0)."""
    return np.full((rows, width), -1, np.int32), np.zeros((rows, vocab_size), np.float32)


def widened(history: np.ndarray, positions: np.ndarray, width: int) -> np.ndarray:
    """A window's history laid out again for a larger width: each row's last ids at slot p mod width."""
    old = history.shape[1]
    if width == old:
        return history
    out = np.full((len(history), width), -1, np.int32)
    back = positions[:, None] - np.arange(1, old + 1)[None, :]  # the positions the old window holds
    rows = np.broadcast_to(np.arange(len(history))[:, None], back.shape)
    valid = back >= 0
    out[rows[valid], np.mod(back[valid], width)] = history[rows[valid], np.mod(back[valid], old)]
    return out


