"""Sampling over a step function `(ids, states) -> (logits, states)` in compiled TensorFlow, each row with its own
settings (logits.py: temperature, argmax, top-k, top-p, min-p, typical-p, penalties, a logit bias).

One sampler serves every engine (generation.py: the Sampler, the Generation a server steps through, and the numpy
loop of a LiteRT engine, all without TensorFlow; their names are re-exported here). The RNN state is carried from
character to character (never recomputed from a window). Generation runs as compiled TensorFlow in chunks of
characters: each chunk is one `tf.while_loop` (XLA-compiled when asked; the categorical draw is Gumbel-max, which
compiles where `tf.random.categorical` does not), and the chunks let a caller print text as it is made.

A row's sequence is its prompt followed by the generated characters. At loop step t a row feeds its
prompt character while t is inside its prompt, else the character just sampled, so prompts of
different lengths share one batched run.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import tensorflow as tf

from kerascharrnn.inference import generation
from kerascharrnn.inference.generation import (
    BULK_CHUNK,
    STREAM_CHUNK,
    XLA_MAX_ROWS,
    Generation,
    MultiStep,
    Piece,
    make_numpy_chunk_fn,
)
from kerascharrnn.inference.logits import (
    Filters,
    Knobs,
    gumbel_noise,
    next_ids,
    penalty_terms,
    update_window,
    window_geometry,
)
from kerascharrnn.sampling_settings import ARGMAX_BELOW, SamplingSettings

__all__ = ["ARGMAX_BELOW", "BULK_CHUNK", "STREAM_CHUNK", "XLA_MAX_ROWS", "Filters", "Generation", "MultiStep", "Piece",
           "Sampler", "SamplingSettings", "chunk_loop", "make_chunk_fn", "make_numpy_chunk_fn"]


def make_chunk_fn(step_fn: Callable, filters: Filters, jit_compile: bool = False):
    """chunk_loop as a tf.function (XLA-compiled with jit_compile, for a fixed chunk width; without XLA
    traced once for any batch size and width, so that a server's varying requests trace nothing)."""
    return tf.function(chunk_loop(step_fn, filters, jit_compile), jit_compile=jit_compile,
                       reduce_retracing=not jit_compile, autograph=False)


def chunk_loop(step_fn: Callable, filters: Filters, jit_compile: bool = False):
    """Builds run_chunk(prompt, in_prompt, logits, states, knobs, window, positions, seed, t0, num_steps), to be
    traced inside a tf.function: make_chunk_fn's, or a SavedModel signature's (export.py) with the prompt
    handling around it.

    Args of run_chunk:
      prompt: (N, C) int32 ids to feed where `in_prompt` is True.
      in_prompt: (N, C) bool, True while a row is still inside its prompt.
      logits: (N, V) float32, the scores for the first character of the chunk.
      states: tuple of (N, H_k) recurrent states.
      knobs: the rows' settings: (their knob table (N, len(logits.COLUMNS)) float32, their logit bias (N, V) or
        None when no row has one): logits.knob_table.
      window: with filters.penalties, the rows' penalty windows (history (N, W) int32, counts (N, V) float32:
        logits.update_window); else ().
      positions: with filters.penalties, (N,) int32, each row's own position at the chunk's first step; else ().
      seed: int64 scalar; t0: int32 scalar, the chunk's first step (so each step draws new noise).
      num_steps: int32 scalar <= C, the steps to run (XLA compiles one program per C, so callers keep C
        fixed and vary this).
    Returns:
      (ids (N, C) int32 = the sequence for these steps, zeros past num_steps; logits, states, window) to continue
      from, and with filters.logprobs = K > 0 also (chosen (N, C): each id's log-probability under the model's
      distribution before it, top values (N, C, K) and top ids (N, C, K): the K most likely there).

    Under XLA the chunk's Gumbel noise is drawn at once before the loop (one vectorised draw instead of
    one per step); without XLA it is drawn per step, so memory stays O(N * V) for any chunk length.
    """

    def run_chunk(prompt, in_prompt, logits, states, knobs, window, positions, seed, t0, num_steps):
        knobs = Knobs.unpacked(*knobs)  # the columns, once before the loop
        width = tf.shape(prompt)[1]
        rows = prompt.shape[:1]
        out = tf.TensorArray(tf.int32, size=width, element_shape=rows)
        k = filters.logprobs
        # the log-probabilities, when asked: of each id fed, and of the k most likely there
        reported = [tf.TensorArray(tf.float32, size=width, element_shape=rows),
                    tf.TensorArray(tf.float32, size=width, element_shape=rows + [k]),
                    tf.TensorArray(tf.int32, size=width, element_shape=rows + [k])] if k else []
        draw_ahead = jit_compile and not filters.greedy
        if filters.penalties:  # worked out once, not per step
            terms, geometry = penalty_terms(knobs), window_geometry(*window)
        if draw_ahead:
            chunk_noise = gumbel_noise(tf.stack([width, tf.shape(logits)[0], tf.shape(logits)[1]]),
                                       tf.stack([seed, tf.cast(t0, tf.int64)]))

        def body(t, logits, states, window, out, *reported):
            if filters.greedy:
                noise = None
            elif draw_ahead:
                noise = chunk_noise[t]
            else:
                noise = gumbel_noise(tf.shape(logits), tf.stack([seed, tf.cast(t0 + t, tf.int64)]))
            sampled = next_ids(logits, knobs, noise, filters, *((window[1], terms) if filters.penalties else ()))
            ids = tf.where(in_prompt[:, t], prompt[:, t], sampled)
            if k:
                log_probs = tf.nn.log_softmax(logits)
                top = tf.math.top_k(log_probs, k)
                reported = (reported[0].write(t, tf.gather(log_probs, ids, batch_dims=1)),
                            reported[1].write(t, top.values), reported[2].write(t, top.indices))
            if filters.penalties:
                window = update_window(*window, ids, positions + t, knobs.penalty_range, geometry)
            logits, states = step_fn(ids, states)
            return (t + 1, logits, tuple(states), tuple(window), out.write(t, ids), *reported)

        window = tuple(window) if filters.penalties else ()
        _, logits, states, window, out, *reported = tf.while_loop(
            lambda t, *_: t < num_steps, body, (tf.constant(0), logits, tuple(states), window, out, *reported))
        results = (tf.transpose(out.stack()), logits, states, window)
        if k:
            results += (tf.transpose(reported[0].stack()), tf.transpose(reported[1].stack(), [1, 0, 2]),
                        tf.transpose(reported[2].stack(), [1, 0, 2]))
        return results

    return run_chunk


class Sampler(generation.Sampler):
    """generation.Sampler, with a constructor over a TensorFlow step (the compiled loop)."""

    @classmethod
    def for_tf_step(cls, step_fn: Callable, state_sizes: Sequence[int], vocab_size: int, jit_compile: bool = True,
                    chunk_size: Optional[int] = None) -> "Sampler":
        """jit_compile: use XLA for runs of up to XLA_MAX_ROWS rows."""
        compiled_step = tf.function(step_fn, jit_compile=jit_compile, autograph=False)

        def numpy_step(ids, states):
            logits, states = compiled_step(tf.constant(ids, tf.int32), tuple(tf.constant(s) for s in states))
            return logits.numpy(), tuple(s.numpy() for s in states)

        return cls(lambda filters, use_xla: make_chunk_fn(step_fn, filters, use_xla), state_sizes, vocab_size,
                   jit_compile=jit_compile, chunk_size=chunk_size, numpy_step=numpy_step)
