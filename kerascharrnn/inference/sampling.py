"""Sampling over a step function `(ids, states) -> (logits, states)`: temperature, argmax, top-k, top-p.

One sampler serves every engine. The RNN state is carried from character to character (never
recomputed from a window). Generation runs as compiled TensorFlow in chunks of characters: each chunk
is one `tf.while_loop` (XLA-compiled when asked; the categorical draw is Gumbel-max, which compiles
where `tf.random.categorical` does not), and the chunks let a caller print text as it is made.

A row's sequence is its prompt followed by the generated characters. At loop step t a row feeds its
prompt character while t is inside its prompt, else the character just sampled, so prompts of
different lengths share one batched run.
"""

from __future__ import annotations

import dataclasses
import secrets
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf

_TINY = float(np.finfo(np.float32).tiny)
# A temperature below this picks the most likely id: logits / T would otherwise overflow float32 (and any such
# temperature already amounts to the argmax: the draw's noise is negligible beside logits / 1e-6).
ARGMAX_BELOW = 1e-6


@dataclasses.dataclass(frozen=True)
class Filters:
    """What a compiled sampling loop contains (static: each changes the graph): the logit filters, and
    whether it reports log-probabilities (the chosen id's and the `logprobs` most likely ones)."""

    greedy: bool = False
    top_k: bool = False
    top_p: bool = False
    logprobs: int = 0


def filter_logits(logits, temperature, top_k, top_p, filters: Filters):
    """Scales by temperature (N,) and masks to the top-k / nucleus (top-p) set; -inf elsewhere.

    top_k = 0 and top_p = 1 mean off. Sorting keeps k a tensor, so this also compiles under XLA.
    """
    logits = logits / temperature[:, None]  # (N, V)
    if not (filters.top_k or filters.top_p):
        return logits
    neg_inf = tf.constant(-np.inf, logits.dtype)
    vocab_size = tf.shape(logits)[1]
    if filters.top_k:
        ordered = tf.sort(logits, axis=1, direction="DESCENDING")
        kth = tf.gather(ordered, tf.clip_by_value(top_k - 1, 0, vocab_size - 1), axis=1)[:, None]
        logits = tf.where((top_k > 0) & (logits < kth), neg_inf, logits)
    if filters.top_p:
        ordered = tf.sort(logits, axis=1, direction="DESCENDING")
        before = tf.math.cumsum(tf.nn.softmax(ordered, axis=1), axis=1, exclusive=True)
        # keep the smallest prefix whose probability reaches top_p; the most likely token always stays (also
        # for a top_p that float32, or a flush of its denormals to zero, makes 0)
        threshold = tf.minimum(tf.reduce_min(tf.where(before < top_p, ordered, np.inf), axis=1, keepdims=True),
                               ordered[:, :1])
        logits = tf.where(logits < threshold, neg_inf, logits)
    return logits


def gumbel_noise(shape, seed_pair):
    """Gumbel(0, 1) noise, -log(-log(U)), from a stateless seed: the same seed gives the same noise."""
    uniform = tf.random.stateless_uniform(shape, seed=seed_pair, minval=_TINY, maxval=1.0)
    return -tf.math.log(-tf.math.log(uniform))


def next_ids(logits, temperature, top_k, top_p, noise, filters: Filters):
    """The next id of each row: argmax (all rows when filters.greedy, else rows whose temperature is
    below ARGMAX_BELOW) or a categorical draw by Gumbel-max, argmax(filtered logits + `noise`), noise ~
    Gumbel(0, 1)."""
    best = tf.argmax(logits, axis=1, output_type=tf.int32)
    if filters.greedy:
        return best
    greedy_rows = temperature < ARGMAX_BELOW
    scores = filter_logits(logits, tf.where(greedy_rows, tf.ones_like(temperature), temperature), top_k, top_p,
                           filters)
    return tf.where(greedy_rows, best, tf.argmax(scores + noise, axis=1, output_type=tf.int32))


def filter_logits_np(logits: np.ndarray, temperature: np.ndarray, top_k: int, top_p: float) -> np.ndarray:
    """numpy twin of filter_logits (for engines whose step runs outside TensorFlow, e.g. TFLite)."""
    logits = logits / temperature[:, None]
    if top_k > 0:
        kth = -np.partition(-logits, min(top_k, logits.shape[1]) - 1, axis=1)[:, min(top_k, logits.shape[1]) - 1]
        logits = np.where(logits < kth[:, None], -np.inf, logits)
    if top_p < 1.0:
        ordered = -np.sort(-logits, axis=1)
        probs = np.exp(ordered - ordered[:, :1])
        probs /= probs.sum(axis=1, keepdims=True)
        before = np.cumsum(probs, axis=1) - probs
        threshold = np.minimum(np.where(before < top_p, ordered, np.inf).min(axis=1, keepdims=True), ordered[:, :1])
        logits = np.where(logits < threshold, -np.inf, logits)
    return logits


def gumbel_noise_np(shape, rng: np.random.Generator) -> np.ndarray:
    """numpy twin of gumbel_noise (its own random stream: draws differ from TensorFlow's), float32 as
    an engine's own sampling ops take it. Draws of shapes (a, *S) then (b, *S) are one draw of
    (a + b, *S), so noise drawn for several steps at once is that of one step at a time."""
    return (-np.log(-np.log(rng.uniform(_TINY, 1.0, size=shape)))).astype(np.float32)


def next_ids_np(logits, temperature, top_k, top_p, noise, filters: Filters) -> np.ndarray:
    """numpy twin of next_ids: given the same noise it picks the same ids (tests/test_sampling.py)."""
    best = logits.argmax(axis=1).astype(np.int32)
    if filters.greedy:
        return best
    greedy_rows = temperature < ARGMAX_BELOW
    scores = filter_logits_np(logits, np.where(greedy_rows, 1.0, temperature).astype(np.float32), top_k, top_p)
    return np.where(greedy_rows, best, (scores + noise).argmax(axis=1)).astype(np.int32)


def make_chunk_fn(step_fn: Callable, filters: Filters, jit_compile: bool = False):
    """chunk_loop as a tf.function (XLA-compiled with jit_compile, for a fixed chunk width; without XLA
    traced once for any batch size and width, so that a server's varying requests trace nothing)."""
    return tf.function(chunk_loop(step_fn, filters, jit_compile), jit_compile=jit_compile,
                       reduce_retracing=not jit_compile)


def chunk_loop(step_fn: Callable, filters: Filters, jit_compile: bool = False):
    """Builds run_chunk(prompt, in_prompt, logits, states, temperature, top_k, top_p, seed, t0, num_steps),
    to be traced inside a tf.function: make_chunk_fn's, or a SavedModel signature's (export.py) with the
    prompt handling around it.

    Args of run_chunk:
      prompt: (N, C) int32 ids to feed where `in_prompt` is True.
      in_prompt: (N, C) bool, True while a row is still inside its prompt.
      logits: (N, V) float32, the scores for the first character of the chunk.
      states: tuple of (N, H_k) recurrent states.
      temperature: (N,) float32; top_k: int32 scalar; top_p: float32 scalar.
      seed: int64 scalar; t0: int32 scalar, the chunk's first step (so each step draws new noise).
      num_steps: int32 scalar <= C, the steps to run (XLA compiles one program per C, so callers keep C
        fixed and vary this).
    Returns:
      (ids (N, C) int32 = the sequence for these steps, zeros past num_steps; logits, states) to continue from,
      and with filters.logprobs = K > 0 also (chosen (N, C): each id's log-probability under the model's
      distribution before it, top values (N, C, K) and top ids (N, C, K): the K most likely there).

    Under XLA the chunk's Gumbel noise is drawn at once before the loop (one vectorised draw instead of
    one per step); without XLA it is drawn per step, so memory stays O(N * V) for any chunk length.
    """

    def run_chunk(prompt, in_prompt, logits, states, temperature, top_k, top_p, seed, t0, num_steps):
        width = tf.shape(prompt)[1]
        rows = prompt.shape[:1]
        out = tf.TensorArray(tf.int32, size=width, element_shape=rows)
        k = filters.logprobs
        # the log-probabilities, when asked: of each id fed, and of the k most likely there
        reported = [tf.TensorArray(tf.float32, size=width, element_shape=rows),
                    tf.TensorArray(tf.float32, size=width, element_shape=rows + [k]),
                    tf.TensorArray(tf.int32, size=width, element_shape=rows + [k])] if k else []
        draw_ahead = jit_compile and not filters.greedy
        if draw_ahead:
            chunk_noise = gumbel_noise(tf.stack([width, tf.shape(logits)[0], tf.shape(logits)[1]]),
                                       tf.stack([seed, tf.cast(t0, tf.int64)]))

        def body(t, logits, states, out, *reported):
            if filters.greedy:
                noise = None
            elif draw_ahead:
                noise = chunk_noise[t]
            else:
                noise = gumbel_noise(tf.shape(logits), tf.stack([seed, tf.cast(t0 + t, tf.int64)]))
            sampled = next_ids(logits, temperature, top_k, top_p, noise, filters)
            ids = tf.where(in_prompt[:, t], prompt[:, t], sampled)
            if k:
                log_probs = tf.nn.log_softmax(logits)
                top = tf.math.top_k(log_probs, k)
                reported = (reported[0].write(t, tf.gather(log_probs, ids, batch_dims=1)),
                            reported[1].write(t, top.values), reported[2].write(t, top.indices))
            logits, states = step_fn(ids, states)
            return (t + 1, logits, tuple(states), out.write(t, ids), *reported)

        _, logits, states, out, *reported = tf.while_loop(
            lambda t, *_: t < num_steps, body, (tf.constant(0), logits, tuple(states), out, *reported))
        results = (tf.transpose(out.stack()), logits, states)
        if k:
            results += (tf.transpose(reported[0].stack()), tf.transpose(reported[1].stack(), [1, 0, 2]),
                        tf.transpose(reported[2].stack(), [1, 0, 2]))
        return results

    return run_chunk


def make_numpy_chunk_fn(step_fn: Callable, filters: Filters, multi_step: Optional[MultiStep] = None):
    """make_chunk_fn's contract for a step function on numpy arrays (a TFLite interpreter, say).

    With `multi_step`, runs of its `steps` characters without top-k / top-p go through it, one call
    each (the same noise draws, hence the same ids, as one step at a time); the rest step by step.
    """
    k = filters.logprobs
    by_steps = multi_step is not None and not (filters.top_k or filters.top_p or k)

    def run_chunk(prompt, in_prompt, logits, states, temperature, top_k, top_p, seed, t0, num_steps):
        rng = np.random.default_rng([int(seed), int(t0)])
        out = np.zeros(prompt.shape, np.int32)
        if k:
            chosen = np.zeros(prompt.shape, np.float32)
            top_values = np.zeros((*prompt.shape, k), np.float32)
            top_ids = np.zeros((*prompt.shape, k), np.int32)
        t = 0
        while by_steps and t + multi_step.steps <= num_steps:
            span = slice(t, t + multi_step.steps)
            if filters.greedy:  # temperature <= 0: argmax in every row
                noise = np.zeros((len(out), multi_step.steps, logits.shape[1]), np.float32)
                row_temperature = np.zeros_like(temperature)
            else:  # drawn step after step, as below; an export of v0.2 takes only 0 for the argmax
                noise = gumbel_noise_np((multi_step.steps, *logits.shape), rng).transpose(1, 0, 2)
                row_temperature = np.where(temperature < ARGMAX_BELOW, 0, temperature).astype(np.float32)
            out[:, span], logits, states = multi_step.call(logits, prompt[:, span], in_prompt[:, span], noise,
                                                           row_temperature, states)
            t += multi_step.steps
        for t in range(t, int(num_steps)):
            noise = None if filters.greedy else gumbel_noise_np(logits.shape, rng)
            sampled = next_ids_np(logits, temperature, int(top_k), float(top_p), noise, filters)
            out[:, t] = np.where(in_prompt[:, t], prompt[:, t], sampled)
            if k:
                log_probs = _log_softmax(np.asarray(logits, np.float64)).astype(np.float32)
                chosen[:, t] = np.take_along_axis(log_probs, out[:, t, None], axis=1)[:, 0]
                top_ids[:, t] = np.argsort(-log_probs, axis=1, kind="stable")[:, :k]
                top_values[:, t] = np.take_along_axis(log_probs, top_ids[:, t], axis=1)
            logits, states = step_fn(out[:, t], states)
        return (out, logits, states) + ((chosen, top_values, top_ids) if k else ())

    return run_chunk


@dataclasses.dataclass(frozen=True)
class MultiStep:
    """An engine's call that runs `steps` characters at once (the TFLite `steps` signature, export.py):
    call(logits, prompt (N, S), in_prompt (N, S), noise (N, S, V), temperature (N,), states)
      -> (ids (N, S), logits, states), each id the prompt's where in_prompt, else
      argmax(logits / temperature + noise), argmax alone where temperature <= 0 (below ARGMAX_BELOW: given 0)."""

    steps: int
    call: Callable


def random_seed() -> int:
    return secrets.randbelow(2**62) + 1


ChunkFnFactory = Callable[[Filters, bool], Callable]

STREAM_CHUNK = 256  # characters per compiled call when the text is shown as it is made
BULK_CHUNK = 2048  # otherwise: fewer host round trips
XLA_MAX_ROWS = 8  # XLA's single-threaded small matmuls win at a few rows; TF's threaded kernels beyond


class Sampler:
    """Batched, chunked generation over one engine's step, for one vocabulary size.

    `chunk_fn_for(filters, use_xla)` builds the loop that runs a chunk of steps (see make_chunk_fn); use
    Sampler.for_tf_step or Sampler.for_numpy_step.
    """

    def __init__(self, chunk_fn_for: ChunkFnFactory, state_sizes: Sequence[int], vocab_size: int,
                 jit_compile: bool = False, chunk_size: Optional[int] = None, numpy_step: Optional[Callable] = None,
                 multi_step: Optional[MultiStep] = None):
        self._chunk_fn_for = chunk_fn_for
        self._numpy_step = numpy_step  # one character at a time on numpy arrays, for beam search
        self.multi_step = multi_step  # several characters per call, if the engine has it (numpy loops)
        self._state_sizes = list(state_sizes)
        self._vocab_size = vocab_size
        self._jit_compile = jit_compile
        self._chunk_size = chunk_size
        self._compiled = {}

    @classmethod
    def for_tf_step(cls, step_fn: Callable, state_sizes: Sequence[int], vocab_size: int, jit_compile: bool = True,
                    chunk_size: Optional[int] = None) -> "Sampler":
        """jit_compile: use XLA for runs of up to XLA_MAX_ROWS rows."""
        compiled_step = tf.function(step_fn, jit_compile=jit_compile)

        def numpy_step(ids, states):
            logits, states = compiled_step(tf.constant(ids, tf.int32), tuple(tf.constant(s) for s in states))
            return logits.numpy(), tuple(s.numpy() for s in states)

        return cls(lambda filters, use_xla: make_chunk_fn(step_fn, filters, use_xla), state_sizes, vocab_size,
                   jit_compile=jit_compile, chunk_size=chunk_size, numpy_step=numpy_step)

    @classmethod
    def for_numpy_step(cls, step_fn: Callable, state_sizes: Sequence[int], vocab_size: int,
                       chunk_size: Optional[int] = None, multi_step: Optional[MultiStep] = None) -> "Sampler":
        return cls(lambda filters, use_xla: make_numpy_chunk_fn(step_fn, filters, multi_step), state_sizes,
                   vocab_size, chunk_size=chunk_size, numpy_step=step_fn, multi_step=multi_step)

    def _chunk_fn(self, filters: Filters, use_xla: bool):
        key = (filters, use_xla)
        if key not in self._compiled:
            self._compiled[key] = self._chunk_fn_for(filters, use_xla)
        return self._compiled[key]

    def generate(self, prompts: Sequence[np.ndarray], num_new, **options) -> "Generation":
        """A batched run to step through a chunk at a time (see Generation)."""
        return Generation(self, prompts, num_new, **options)

    def sample_ids(
        self,
        prompts: Sequence[np.ndarray],
        num_new: int,
        temperature=1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        greedy: bool = False,
        seed: Optional[int] = None,
        on_chunk: Optional[Callable[[List[np.ndarray]], None]] = None,
    ) -> List[np.ndarray]:
        """Continues each prompt by `num_new` ids.

        Args:
          prompts: one 1-D array of 0-based ids per row (may be empty: the first id is then drawn
            uniformly, as torch-rnn does).
          num_new: ids to add after each prompt.
          temperature: a float or one per row.
          top_k, top_p: filters (0 / 1.0 = off).
          greedy: argmax instead of sampling.
          seed: fixes the draws; None = random.
          on_chunk: called with each row's newly generated ids after every compiled chunk.

        Returns:
          One array per row: the prompt followed by the new ids.
        """
        run = Generation(self, prompts, num_new, temperature=temperature, top_k=top_k, top_p=top_p, greedy=greedy,
                         seed=seed, chunk_size=STREAM_CHUNK if on_chunk is not None else None)
        made = [[] for _ in prompts]
        while not run.done:
            pieces = run.advance()
            for row, piece in pieces.items():
                made[row].append(piece.ids)
            if on_chunk is not None:
                on_chunk([pieces[row].ids if row in pieces else np.zeros(0, np.int32) for row in range(len(prompts))])
        return [np.concatenate([np.asarray(p, np.int32), *new]).astype(np.int32) for p, new in zip(prompts, made)]

    def beam_search_ids(self, prompt: np.ndarray, num_new: int, beam_size: int) -> np.ndarray:
        """The continuation of `prompt` that beam search finds most likely (sum of log-probabilities).

        Keeps the `beam_size` best sequences at every step; with beam_size 1 it is argmax decoding, the
        same ids as sample_ids(..., greedy=True). Deterministic: no temperature, no draws.

        Returns:
          The prompt followed by num_new ids.
        """
        if num_new < 0 or beam_size < 1:
            raise ValueError(f"need num_new >= 0 and beam_size >= 1, got {num_new}, {beam_size}")
        states = tuple(np.zeros((1, size), np.float32) for size in self._state_sizes)
        logits = np.zeros((1, self._vocab_size), np.float32)  # no prompt: every first character alike
        for token in prompt:
            logits, states = self._numpy_step(np.array([token], np.int32), states)
        sequences = np.zeros((1, 0), np.int32)
        scores = np.zeros(1)
        for t in range(num_new):
            log_probs = _log_softmax(np.asarray(logits, np.float64))  # (beams, V)
            candidates = (scores[:, None] + log_probs).reshape(-1)
            best = np.argsort(-candidates, kind="stable")[:beam_size]  # ties: the lower id, as argmax
            parents, tokens = np.divmod(best, self._vocab_size)
            sequences = np.concatenate([sequences[parents], tokens[:, None].astype(np.int32)], axis=1)
            scores = candidates[best]
            if t + 1 < num_new:  # the last choice needs no further step
                logits, states = self._numpy_step(tokens.astype(np.int32), tuple(s[parents] for s in states))
        return np.concatenate([np.asarray(prompt, np.int32), sequences[0]])


@dataclasses.dataclass
class Piece:
    """What one chunk of a Generation added to a row.

    Attributes:
      ids: the ids at positions [position, position + len(ids)) of the row's sequence (prompt, then new ids):
        the new ids only, or the prompt's too with Generation(include_prompt=True).
      position: where they start.
      logprobs: with Generation(logprobs=K): (each id's log-probability, the K most likely log-probabilities
        there, their ids), arrays of shapes (n,), (n, K), (n, K); else None.
      done: the row has all its ids.
    """

    ids: np.ndarray
    position: int
    logprobs: Optional[Tuple[np.ndarray, np.ndarray, np.ndarray]]
    done: bool


class Generation:
    """A batched run of a Sampler, stepped a chunk of characters at a time, so that its text can be sent as it
    is made. Rows may want different numbers of new ids; rows can join between chunks (`add`: a server's
    next request, which then need not wait for the batch to finish) and leave (`drop`: a client went away),
    and with drop_finished a row leaves once it is done. Joining and leaving change the draws of the other
    rows (a seeded run repeats itself when the same rows come and go).

    Args:
      sampler: what runs the chunks.
      prompts, num_new, temperature: the first rows (see `add`).
      top_k, top_p, greedy, seed: as Sampler.sample_ids; the same for every row.
      chunk_size: steps per call (default: BULK_CHUNK).
      logprobs: report log-probabilities, with this many most likely alternatives (0 = none).
      include_prompt: report the prompts' ids (and their log-probabilities) too.
      drop_finished: a finished row leaves the batch (the run then goes without XLA, which compiles per
        batch size).
    """

    def __init__(self, sampler: "Sampler", prompts: Sequence[np.ndarray], num_new, temperature=1.0, top_k: int = 0,
                 top_p: float = 1.0, greedy: bool = False, seed: Optional[int] = None,
                 chunk_size: Optional[int] = None, logprobs: int = 0, include_prompt: bool = False,
                 drop_finished: bool = False):
        self._sampler = sampler
        self._filters = Filters(greedy=greedy, top_k=top_k > 0 and not greedy, top_p=top_p < 1.0 and not greedy,
                                logprobs=logprobs)
        self._top_k, self._top_p = np.int32(top_k), np.float32(top_p)
        # XLA compiles one program per batch size: a batch whose rows come and go runs without it
        self._use_xla = sampler._jit_compile and len(prompts) <= XLA_MAX_ROWS and not drop_finished
        self._run_chunk = sampler._chunk_fn(self._filters, self._use_xla)
        self._chunk_size = chunk_size or sampler._chunk_size or BULK_CHUNK
        self._seed = np.int64(random_seed() if seed is None else int(seed))
        self._include_prompt = include_prompt
        self._drop_finished = drop_finished
        self._t = 0  # steps run so far (a row that joined later starts at its own position 0)
        self._next = 0  # the next row's number
        self.rows: List[int] = []
        self._prompts: List[np.ndarray] = []
        self._origin = np.zeros(0, np.int64)  # the step at which each row started
        self._ends = np.zeros(0, np.int64)  # the step at which each row is done
        self._temperature = np.zeros(0, np.float32)
        self._logits = np.zeros((0, sampler._vocab_size), np.float32)
        self._states = tuple(np.zeros((0, size), np.float32) for size in sampler._state_sizes)
        self.add(prompts, num_new, temperature)

    def add(self, prompts: Sequence[np.ndarray], num_new, temperature=1.0) -> List[int]:
        """Rows that start now; returns their row numbers.

        Args:
          prompts: one 1-D array of 0-based ids per row (may be empty: the first id is then drawn
            uniformly, as torch-rnn does).
          num_new: ids to add after each prompt: one number, or one per row.
          temperature: a float or one per row (below ARGMAX_BELOW: argmax).
        """
        count = len(prompts)
        num_new = np.broadcast_to(np.asarray(num_new, dtype=np.int64), (count,))
        if (num_new < 0).any():
            raise ValueError(f"num_new must be >= 0, got {int(num_new.min())}")
        numbers = list(range(self._next, self._next + count))
        self._next += count
        self.rows += numbers
        self._prompts += [np.asarray(p, np.int32) for p in prompts]
        lengths = np.array([len(p) for p in prompts], dtype=np.int64)
        self._origin = np.concatenate([self._origin, np.full(count, self._t, np.int64)])
        self._ends = np.concatenate([self._ends, self._t + lengths + num_new])
        self._temperature = np.concatenate(
            [self._temperature, np.broadcast_to(np.asarray(temperature, dtype=np.float32), (count,))])
        self._logits = np.concatenate([self._logits, np.zeros((count, self._logits.shape[1]), np.float32)])
        self._states = tuple(np.concatenate([state, np.zeros((count, state.shape[1]), np.float32)])
                             for state in self._states)
        return numbers

    @property
    def done(self) -> bool:
        return not self.rows or self._t >= int(self._ends.max())

    def steps_to_new(self, rows: Sequence[int]) -> int:
        """Steps until the first of `rows` has read its whole prompt (and makes a new id at the next step)."""
        index = {row: i for i, row in enumerate(self.rows)}
        left = [int(self._origin[index[row]]) + len(self._prompts[index[row]]) - self._t for row in rows
                if row in index]
        return max(0, min(left, default=0))

    def advance(self, steps: Optional[int] = None) -> Dict[int, Piece]:
        """Runs the next chunk (of `steps` ids, default the run's chunk size; XLA runs keep theirs); returns the
        piece of every row in the batch, by its row number."""
        chunk = self._chunk_size if self._use_xla or not steps else steps
        start = self._t
        stop = min(start + chunk, int(self._ends.max()))
        width = chunk if self._use_xla else stop - start  # XLA compiles one program per width
        num_rows = len(self.rows)
        prompt = np.zeros((num_rows, width), np.int32)
        in_prompt = np.zeros((num_rows, width), bool)
        for index, ids in enumerate(self._prompts):  # each row's own positions
            lo = start - int(self._origin[index])
            part = ids[lo:lo + stop - start]
            prompt[index, :len(part)] = part
            in_prompt[index, :len(part)] = True
        ids, logits, states, *reported = self._run_chunk(
            prompt, in_prompt, self._logits, self._states, self._temperature, self._top_k, self._top_p, self._seed,
            np.int32(start), np.int32(stop - start))
        self._logits, self._states = np.asarray(logits), tuple(np.asarray(state) for state in states)
        ids = np.asarray(ids)
        reported = [np.asarray(r) for r in reported]
        self._t = stop
        pieces = {}
        for index, row in enumerate(self.rows):
            origin = int(self._origin[index])
            first = start if self._include_prompt else max(start, origin + len(self._prompts[index]))
            last = min(stop, int(self._ends[index]))
            span = slice(first - start, max(last - start, first - start))
            pieces[row] = Piece(ids[index, span], first - origin,
                                tuple(r[index, span] for r in reported) if reported else None,
                                done=stop >= self._ends[index])
        if self._drop_finished:
            self.drop([row for row, piece in pieces.items() if piece.done])
        return pieces

    def drop(self, rows: Sequence[int]) -> None:
        """Takes rows out of the batch (their clients went away); the others go on."""
        leaving = set(rows)
        keep = [index for index, row in enumerate(self.rows) if row not in leaving]
        if len(keep) == len(self.rows):
            return
        self.rows = [self.rows[index] for index in keep]
        self._prompts = [self._prompts[index] for index in keep]
        for name in ("_origin", "_ends", "_temperature", "_logits"):
            setattr(self, name, getattr(self, name)[keep])
        self._states = tuple(state[keep] for state in self._states)


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
