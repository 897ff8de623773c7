"""How one step's logits become the next id of each row: penalties, a logit bias, temperature, the truncation
filters (top-k, typical-p, top-p, min-p) and the draw, for rows that each have their own settings.

Every function here is TensorFlow (run inside the compiled sampling loop) and has a numpy twin `*_np` in
numpy_logits.py (for engines whose step runs outside TensorFlow: a LiteRT interpreter), re-exported here with
the settings both read (Filters, knob_table, Knobs); given the same logits and noise, both pick the same ids
(tests/test_sampling.py).

The order is llama.cpp's: the model's scores are first penalized (repetition, presence, frequency: over the
row's last `penalty_range` ids, its prompt included) and biased; then scaled by the temperature; then cut to
the top-k, the locally typical set, the nucleus (top-p) and the tokens at least min-p times as likely as the
most likely one, each filter over what the one before kept. A row whose temperature is below ARGMAX_BELOW
takes the argmax of its penalized scores (the truncation filters never drop the argmax but typical-p, so they
are skipped). A setting at its neutral value (SamplingSettings' defaults) changes no logit, to the bit: rows
with and without a filter share one compiled loop.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from kerascharrnn.inference import numpy_logits
from kerascharrnn.inference.numpy_logits import (
    _TINY,
    _WHOLE,
    COLUMNS,
    Filters,
    PenaltyTerms,
    empty_window,
    filter_logits_np,
    gumbel_noise_np,
    knob_table,
    log_softmax_np,
    next_ids_np,
    penalized_np,
    penalty_terms,
    truncated_np,
    update_window_np,
    widened,
)
from kerascharrnn.sampling_settings import ARGMAX_BELOW, SamplingSettings

__all__ = ["ARGMAX_BELOW", "COLUMNS", "Filters", "Knobs", "PenaltyTerms", "SamplingSettings", "empty_window",
           "filter_logits", "filter_logits_np", "graph_knob_table", "gumbel_noise", "gumbel_noise_np", "knob_table",
           "log_softmax_np", "next_ids", "next_ids_np", "penalized", "penalized_np", "penalty_terms", "truncated",
           "truncated_np", "update_window", "update_window_np", "widened", "window_geometry"]


def graph_knob_table(temperature, top_k=0, top_p=1.0):
    """knob_table for temperature (N,) and one top-k and top-p for every row, as tensors (a SavedModel's signature
    builds it in its graph)."""
    neutral = dict(SamplingSettings().__dict__, temperature=temperature, top_k=top_k, top_p=top_p, penalty_range=0)
    rows = tf.shape(temperature)
    return tf.stack([tf.broadcast_to(tf.cast(neutral[name], tf.float32), rows) for name in COLUMNS], axis=1)


class Knobs(numpy_logits.Knobs):
    """numpy_logits.Knobs that also reads a knob table of TensorFlow's (inside a compiled loop)."""

    __slots__ = ()

    @classmethod
    def unpacked(cls, table, logit_bias=None) -> "Knobs":
        """The columns of a knob table (numpy or TensorFlow)."""
        if not tf.is_tensor(table):
            return super().unpacked(table, logit_bias)
        columns = tf.unstack(table, len(COLUMNS), axis=1)
        return cls(*(tf.cast(c, tf.int32) if name in _WHOLE else c for name, c in zip(COLUMNS, columns)), logit_bias)


# --- TensorFlow ---------------------------------------------------------------------------------------------


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
