"""How one step's logits become the next id of each row: penalties, a logit bias, temperature, the truncation
filters (top-k, typical-p, top-p, min-p) and the draw, for rows that each have their own settings.

Every function has a TensorFlow form (run inside the compiled sampling loop) and a numpy twin `*_np` (for
engines whose step runs outside TensorFlow: a TFLite interpreter); given the same logits and noise, both pick
the same ids (tests/test_sampling.py).

The order is llama.cpp's: the model's scores are first penalized (repetition, presence, frequency: over the
row's last `penalty_range` ids, its prompt included) and biased; then scaled by the temperature; then cut to
the top-k, the locally typical set, the nucleus (top-p) and the tokens at least min-p times as likely as the
most likely one, each filter over what the one before kept. A row whose temperature is below ARGMAX_BELOW
takes the argmax of its penalized scores (the truncation filters never drop the argmax but typical-p, so they
are skipped). A setting at its neutral value (SamplingSettings' defaults) changes no logit, to the bit: rows
with and without a filter share one compiled loop.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple, Sequence, Tuple

import numpy as np
import tensorflow as tf

from kerascharrnn.inference.settings import ARGMAX_BELOW, SamplingSettings

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


def graph_knob_table(temperature, top_k=0, top_p=1.0):
    """knob_table for temperature (N,) and one top-k and top-p for every row, as tensors (a SavedModel's signature
    builds it in its graph)."""
    neutral = dict(SamplingSettings().__dict__, temperature=temperature, top_k=top_k, top_p=top_p, penalty_range=0)
    rows = tf.shape(temperature)
    return tf.stack([tf.broadcast_to(tf.cast(neutral[name], tf.float32), rows) for name in COLUMNS], axis=1)


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
        """The columns of a knob table (numpy or TensorFlow)."""
        if tf.is_tensor(table):
            columns = tf.unstack(table, len(COLUMNS), axis=1)
            whole = lambda column: tf.cast(column, tf.int32)  # noqa: E731
        else:
            columns = [table[:, i] for i in range(len(COLUMNS))]
            whole = lambda column: column.astype(np.int32)  # noqa: E731
        return cls(*(whole(c) if name in _WHOLE else c for name, c in zip(COLUMNS, columns)), logit_bias)

    @classmethod
    def of(cls, settings: Sequence[SamplingSettings], windows: Sequence[int], vocab_size: int) -> "Knobs":
        """The knobs of rows with these settings and penalty windows (SamplingSettings.window)."""
        return cls.unpacked(*knob_table(settings, windows, vocab_size))


# --- TensorFlow ---------------------------------------------------------------------------------------------


class PenaltyTerms(NamedTuple):
    """The penalties as (N, 1) columns, worked out once per chunk (the loop's steps then cost fewer ops): a seen
    id's logit x is x * (1 + positive_x * swing + lift) - presence - frequency * count, where swing and lift make
    the factor 1 / repetition_penalty for a positive x and repetition_penalty for another."""

    swing: object
    lift: object
    presence: object
    frequency: object


def penalty_terms(knobs: Knobs) -> PenaltyTerms:
    lib = tf if tf.is_tensor(knobs.repetition_penalty) else np
    repetition = lib.reshape(knobs.repetition_penalty, (-1, 1))
    return PenaltyTerms(1.0 / repetition - repetition, repetition - 1.0, lib.reshape(knobs.presence_penalty, (-1, 1)),
                        lib.reshape(knobs.frequency_penalty, (-1, 1)))


def update_window(history, counts, ids, positions, ranges, geometry=None):
    """Adds the ids just fed to each row's penalty window and drops the one that left it.

    Args:
      history: (N, W) int32, W a power of two >= every range: the row's id at each position p in slot p mod W (-1:
        none yet; a slot a row has not reached holds -1, so an id leaves only once it was in).
      counts: (N, V) float32, how often each id occurs among the row's last `ranges` ids.
      ids: (N,) the ids fed now, at positions (N,) of their rows.
      ranges: (N,) int32 window lengths (a row of range 0 counts its last W ids: it has no penalty to apply).
      geometry: window_geometry(history, counts), if worked out already (a loop works it out once).
    Returns:
      (history, counts) with the ids in.
    """
    rows, last, vocab = geometry or window_geometry(history, counts)
    leaving = tf.gather(history, tf.bitwise.bitwise_and(positions - ranges, last), batch_dims=1)
    counts = counts + (tf.one_hot(ids, vocab) - tf.one_hot(leaving, vocab))  # one_hot(-1) is all zeros
    slots = tf.stack([rows, tf.bitwise.bitwise_and(positions, last)], axis=1)
    return tf.tensor_scatter_nd_update(history, slots, ids), counts


def window_geometry(history, counts):
    """(row numbers, W - 1 (p mod W, W a power of two, is p & (W - 1)), V) of a penalty window."""
    return tf.range(tf.shape(history)[0]), tf.shape(history)[1] - 1, tf.shape(counts)[1]


def penalized(logits, knobs: Knobs, counts, filters: Filters, terms=None):
    """The model's logits with the penalties over the rows' windows and the logit bias applied (`terms`:
    penalty_terms(knobs), if worked out already)."""
    if filters.penalties:
        terms = terms or penalty_terms(knobs)
        seen = tf.minimum(counts, 1.0)
        factor = 1.0 + seen * (tf.cast(logits > 0, logits.dtype) * terms.swing + terms.lift)
        logits = logits * factor - seen * terms.presence - counts * terms.frequency
    if filters.bias:
        logits = logits + knobs.logit_bias
    return logits


def truncated(scores, knobs: Knobs, filters: Filters):
    """Temperature-scaled scores (N, V) cut to each row's top-k, typical, nucleus and min-p sets (-inf
    elsewhere). Sorting keeps k a tensor, so this also compiles under XLA."""
    neg_inf = tf.constant(-np.inf, scores.dtype)
    vocab_size = tf.shape(scores)[1]
    if filters.top_k:
        ordered = tf.sort(scores, axis=1, direction="DESCENDING")
        kth = tf.gather(ordered, tf.clip_by_value(knobs.top_k - 1, 0, vocab_size - 1)[:, None], batch_dims=1)
        scores = tf.where((knobs.top_k[:, None] > 0) & (scores < kth), neg_inf, scores)
    if filters.typical_p:
        log_probs = tf.nn.log_softmax(scores)
        probs = tf.exp(log_probs)
        entropy = -tf.reduce_sum(tf.where(probs > 0, probs * log_probs, 0.0), axis=1, keepdims=True)
        order = tf.argsort(tf.abs(-log_probs - entropy), axis=1, stable=True)  # most typical first
        before = tf.math.cumsum(tf.gather(probs, order, batch_dims=1), axis=1, exclusive=True)
        keep = (before < knobs.typical_p[:, None]) | (tf.range(vocab_size)[None, :] == 0)
        keep = tf.gather(keep, tf.argsort(order, axis=1), batch_dims=1)  # back in id order
        scores = tf.where((knobs.typical_p[:, None] < 1.0) & ~keep, neg_inf, scores)
    if filters.top_p:
        ordered = tf.sort(scores, axis=1, direction="DESCENDING")
        before = tf.math.cumsum(tf.nn.softmax(ordered, axis=1), axis=1, exclusive=True)
        # keep the smallest prefix whose probability reaches top_p; the most likely token always stays (also
        # for a top_p that float32, or a flush of its denormals to zero, makes 0)
        threshold = tf.minimum(tf.reduce_min(tf.where(before < knobs.top_p[:, None], ordered, np.inf), axis=1,
                                             keepdims=True), ordered[:, :1])
        scores = tf.where((knobs.top_p[:, None] < 1.0) & (scores < threshold), neg_inf, scores)
    if filters.min_p:
        floor = tf.reduce_max(scores, axis=1, keepdims=True) + tf.math.log(knobs.min_p)[:, None]  # log 0 = -inf
        scores = tf.where(scores < floor, neg_inf, scores)
    return scores


def filter_logits(logits, knobs: Knobs, filters: Filters, counts=None, terms=None):
    """The scores a row draws from: penalized, biased, divided by the temperature (N,), truncated."""
    scores = penalized(logits, knobs, counts, filters, terms)
    return truncated(scores / knobs.temperature[:, None], knobs, filters)


def gumbel_noise(shape, seed_pair):
    """Gumbel(0, 1) noise, -log(-log(U)), from a stateless seed: the same seed gives the same noise."""
    uniform = tf.random.stateless_uniform(shape, seed=seed_pair, minval=_TINY, maxval=1.0)
    return -tf.math.log(-tf.math.log(uniform))


def next_ids(logits, knobs: Knobs, noise, filters: Filters, counts=None, terms=None):
    """The next id of each row: the argmax of its penalized scores (all rows when filters.greedy, else rows whose
    temperature is below ARGMAX_BELOW), or a categorical draw by Gumbel-max, argmax(filtered scores + `noise`),
    noise ~ Gumbel(0, 1)."""
    scores = penalized(logits, knobs, counts, filters, terms)
    best = tf.argmax(scores, axis=1, output_type=tf.int32)
    if filters.greedy:
        return best
    temperature = knobs.temperature
    greedy_rows = temperature < ARGMAX_BELOW
    scaled = truncated(scores / tf.where(greedy_rows, tf.ones_like(temperature), temperature)[:, None], knobs,
                       filters)
    return tf.where(greedy_rows, best, tf.argmax(scaled + noise, axis=1, output_type=tf.int32))


# --- numpy twins ---------------------------------------------------------------------------------------------


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


