"""Batched, chunked generation over an engine's step function `(ids, states) -> (logits, states)`, each row with its
own settings (numpy_logits.py): the Sampler, the Generation a server steps through, and the numpy loop that runs a
chunk of characters for a step outside TensorFlow (a LiteRT interpreter).

No TensorFlow here: the lite install (bin/serve --tflite, bin/sample --tflite) runs on this module alone.
sampling.py adds the compiled TensorFlow loop (`Sampler.for_tf_step`) and re-exports these names.

The RNN state is carried from character to character (never recomputed from a window). A row's sequence is its
prompt followed by the generated characters. At loop step t a row feeds its prompt character while t is inside its
prompt, else the character just sampled, so prompts of different lengths share one batched run.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from kerascharrnn.inference.numpy_logits import (
    Filters,
    Knobs,
    empty_window,
    gumbel_noise_np,
    knob_table,
    log_softmax_np,
    next_ids_np,
    penalty_terms,
    update_window_np,
    widened,
)
from kerascharrnn.sampling_settings import ARGMAX_BELOW, SamplingSettings, random_seed

__all__ = ["ARGMAX_BELOW", "Filters", "Generation", "MultiStep", "Piece", "Sampler", "SamplingSettings"]


def make_numpy_chunk_fn(step_fn: Callable, filters: Filters, multi_step: Optional[MultiStep] = None):
    """sampling.make_chunk_fn's contract (the loop that runs a chunk of steps) for a step function on numpy arrays
    (a LiteRT interpreter, say).

    With `multi_step`, runs of its `steps` characters with plain filters (temperature and the draw alone) go
    through it, one call each (the same noise draws, hence the same ids, as one step at a time); the rest step
    by step.
    """
    k = filters.logprobs
    by_steps = multi_step is not None and filters.plain and not k

    def run_chunk(prompt, in_prompt, logits, states, knobs, window, positions, seed, t0, num_steps):
        rng = np.random.default_rng([int(seed), int(t0)])
        knobs = Knobs.unpacked(*knobs)
        terms = penalty_terms(knobs) if filters.penalties else None
        out = np.zeros(prompt.shape, np.int32)
        if k:
            chosen = np.zeros(prompt.shape, np.float32)
            top_values = np.zeros((*prompt.shape, k), np.float32)
            top_ids = np.zeros((*prompt.shape, k), np.int32)
        temperature = knobs.temperature
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
            sampled = next_ids_np(logits, knobs, noise, filters, window[1] if filters.penalties else None, terms)
            out[:, t] = np.where(in_prompt[:, t], prompt[:, t], sampled)
            if k:
                log_probs = log_softmax_np(np.asarray(logits, np.float64)).astype(np.float32)
                chosen[:, t] = np.take_along_axis(log_probs, out[:, t, None], axis=1)[:, 0]
                top_ids[:, t] = np.argsort(-log_probs, axis=1, kind="stable")[:, :k]
                top_values[:, t] = np.take_along_axis(log_probs, top_ids[:, t], axis=1)
            if filters.penalties:
                window = update_window_np(*window, out[:, t], positions + t, knobs.penalty_range)
            logits, states = step_fn(out[:, t], states)
        return (out, logits, states, window if filters.penalties else ()) + \
            ((chosen, top_values, top_ids) if k else ())

    return run_chunk


@dataclasses.dataclass(frozen=True)
class MultiStep:
    """An engine's call that runs `steps` characters at once (the TFLite `steps` signature, export.py):
    call(logits, prompt (N, S), in_prompt (N, S), noise (N, S, V), temperature (N,), states)
      -> (ids (N, S), logits, states), each id the prompt's where in_prompt, else
      argmax(logits / temperature + noise), argmax alone where temperature <= 0 (below ARGMAX_BELOW: given 0)."""

    steps: int
    call: Callable


ChunkFnFactory = Callable[[Filters, bool], Callable]

STREAM_CHUNK = 256  # characters per compiled call when the text is shown as it is made
BULK_CHUNK = 2048  # otherwise: fewer host round trips
XLA_MAX_ROWS = 8  # XLA's single-threaded small matmuls win at a few rows; TF's threaded kernels beyond


class Sampler:
    """Batched, chunked generation over one engine's step, for one vocabulary size.

    `chunk_fn_for(filters, use_xla)` builds the loop that runs a chunk of steps (sampling.make_chunk_fn); use
    Sampler.for_numpy_step here, sampling.Sampler.for_tf_step for a TensorFlow step.
    """

    def __init__(self, chunk_fn_for: ChunkFnFactory, state_sizes: Sequence[int], vocab_size: int,
                 jit_compile: bool = False, chunk_size: Optional[int] = None, numpy_step: Optional[Callable] = None,
                 multi_step: Optional[MultiStep] = None):
        self._chunk_fn_for = chunk_fn_for
        self._numpy_step = numpy_step  # one character at a time on numpy arrays, for beam search
        self.multi_step = multi_step  # several characters per call, if the engine has it (numpy loops)
        self._state_sizes = list(state_sizes)
        self.vocab_size = vocab_size
        self.jit_compile = jit_compile
        self.chunk_size = chunk_size
        self._compiled = {}

    @classmethod
    def for_numpy_step(cls, step_fn: Callable, state_sizes: Sequence[int], vocab_size: int,
                       chunk_size: Optional[int] = None, multi_step: Optional[MultiStep] = None) -> "Sampler":
        return cls(lambda filters, use_xla: make_numpy_chunk_fn(step_fn, filters, multi_step), state_sizes,
                   vocab_size, chunk_size=chunk_size, numpy_step=step_fn, multi_step=multi_step)

    @property
    def state_sizes(self) -> List[int]:
        return list(self._state_sizes)

    def chunk_fn(self, filters: Filters, use_xla: bool):
        """The loop for these filters (built once, then cached)."""
        key = (filters, use_xla)
        if key not in self._compiled:
            self._compiled[key] = self._chunk_fn_for(filters, use_xla)
        return self._compiled[key]

    def generate(self, prompts: Sequence[np.ndarray], num_new, settings=SamplingSettings(), **options) -> "Generation":
        """A batched run to step through a chunk at a time (see Generation)."""
        return Generation(self, prompts, num_new, settings, **options)

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
        temperatures = np.broadcast_to(np.asarray(0.0 if greedy else temperature, np.float64), (len(prompts),))
        by_temperature = {float(t): SamplingSettings(temperature=float(t), top_k=top_k, top_p=top_p)
                          for t in set(temperatures.tolist())}
        settings = [by_temperature[float(t)] for t in temperatures]
        run = Generation(self, prompts, num_new, settings, seed=seed,
                         chunk_size=STREAM_CHUNK if on_chunk is not None else None)
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
        logits = np.zeros((1, self.vocab_size), np.float32)  # no prompt: every first character alike
        for token in prompt:
            logits, states = self._numpy_step(np.array([token], np.int32), states)
        sequences = np.zeros((1, 0), np.int32)
        scores = np.zeros(1)
        for t in range(num_new):
            log_probs = log_softmax_np(np.asarray(logits, np.float64))  # (beams, V)
            candidates = (scores[:, None] + log_probs).reshape(-1)
            best = np.argsort(-candidates, kind="stable")[:beam_size]  # ties: the lower id, as argmax
            parents, tokens = np.divmod(best, self.vocab_size)
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
      logprobs: for a row added with logprobs=K > 0: (each id's log-probability, the K most likely
        log-probabilities there, their ids), arrays of shapes (n,), (n, K), (n, K); else None.
      done: the row has all its ids.
    """

    ids: np.ndarray
    position: int
    logprobs: Optional[Tuple[np.ndarray, np.ndarray, np.ndarray]]
    done: bool


def _logprobs_width(wanted: int, vocab_size: int) -> int:
    """The alternatives a loop reports for rows wanting up to `wanted`: a power of two (few loops to trace)."""
    return 0 if wanted <= 0 else min(vocab_size, 1 << (wanted - 1).bit_length())


class Generation:
    """A batched run of a Sampler, stepped a chunk of characters at a time, so that its text can be sent as it
    is made. Each row has its own settings (SamplingSettings) and wants its own number of new ids; rows can join
    between chunks (`add`: a server's next request, which then need not wait for the batch to finish) and leave
    (`drop`: a client went away), and with drop_finished a row leaves once it is done. Joining and leaving change
    the draws of the other rows (a seeded run repeats itself when the same rows come and go).

    Rows added together with one prompt (n suggestions of a writer's text) read it once: the first of them (the
    leader) reads it in the batch, the others wait outside it and join as its copies (logits, states, penalty
    window) at the step it has read the prompt, where they make their first ids as they would have. A chunk ends
    at that step. Not under XLA (it would compile the loop again for the batch size the copies make).

    Args:
      sampler: what runs the chunks.
      prompts, num_new, settings, logprobs: the first rows (see `add`).
      seed: fixes the draws; None = random.
      chunk_size: steps per call (default: BULK_CHUNK).
      include_prompt: report the prompts' ids (and their log-probabilities) too.
      drop_finished: a finished row leaves the batch (the run then goes without XLA, which compiles per
        batch size).
    """

    def __init__(self, sampler: "Sampler", prompts: Sequence[np.ndarray], num_new,
                 settings=SamplingSettings(), seed: Optional[int] = None, chunk_size: Optional[int] = None,
                 logprobs: int = 0, include_prompt: bool = False, drop_finished: bool = False):
        self._sampler = sampler
        vocab_size = sampler.vocab_size
        # XLA compiles one program per batch size: a batch whose rows come and go runs without it
        self._use_xla = sampler.jit_compile and len(prompts) <= XLA_MAX_ROWS and not drop_finished
        self._chunk_size = chunk_size or sampler.chunk_size or BULK_CHUNK
        self._seed = np.int64(random_seed() if seed is None else int(seed))
        self._include_prompt = include_prompt
        self._drop_finished = drop_finished
        self._t = 0  # steps run so far (a row that joined later starts at its own position 0)
        self._next = 0  # the next row's number
        self.rows: List[int] = []  # the rows in the batch, in the order of their numbers
        self._prompts: List[np.ndarray] = []
        self._settings: List[SamplingSettings] = []
        self._logprobs: List[int] = []
        self._origin = np.zeros(0, np.int64)  # the step at which each row started
        self._ends = np.zeros(0, np.int64)  # the step at which each row is done
        self._table, self._bias = knob_table([], [], vocab_size)  # the rows' settings (logits.knob_table)
        self._window: Optional[Tuple[np.ndarray, np.ndarray]] = None  # penalty windows, once a row has one
        self._logits = np.zeros((0, vocab_size), np.float32)
        self._states = tuple(np.zeros((0, size), np.float32) for size in sampler.state_sizes)
        # a leader's row number -> its copies waiting for it to read their prompt: (row number, settings, window)
        self._copies: Dict[int, List[Tuple[int, SamplingSettings, int]]] = {}
        self.add(prompts, num_new, settings, logprobs)

    def add(self, prompts: Sequence[np.ndarray], num_new, settings=SamplingSettings(), logprobs: int = 0) -> List[int]:
        """Rows that start now; returns their row numbers.

        Args:
          prompts: one 1-D array of 0-based ids per row (may be empty: the first id is then drawn
            uniformly, as torch-rnn does).
          num_new: ids to add after each prompt: one number, or one per row.
          settings: how the rows draw: one SamplingSettings, or one per row.
          logprobs: report log-probabilities for these rows, with this many most likely alternatives (0 = none).
        """
        count = len(prompts)
        num_new = np.broadcast_to(np.asarray(num_new, dtype=np.int64), (count,))
        if (num_new < 0).any():
            raise ValueError(f"num_new must be >= 0, got {int(num_new.min())}")
        settings = [settings] * count if isinstance(settings, SamplingSettings) else list(settings)
        if len(settings) != count:
            raise ValueError(f"{len(settings)} settings for {count} rows")
        prompts = [np.asarray(p, np.int32) for p in prompts]
        windows = [s.window(len(p) + int(n)) for s, p, n in zip(settings, prompts, num_new)]
        numbers = list(range(self._next, self._next + count))
        self._next += count
        # rows that read one prompt alike (the same penalty window: the same counts after it) and end together
        leaders: Dict[tuple, int] = {}
        joining = []
        for index, (prompt, window, new) in enumerate(zip(prompts, windows, num_new.tolist())):
            key = (prompt.tobytes(), window, new)
            if key in leaders and len(prompt) and new and not self._use_xla:
                self._copies.setdefault(numbers[leaders[key]], []).append((numbers[index], settings[index], window))
            else:
                leaders.setdefault(key, index)
                joining.append(index)
        self._make_room(max((windows[i] for i in joining), default=0), len(joining))
        self._append([numbers[i] for i in joining], [prompts[i] for i in joining], [settings[i] for i in joining],
                     [windows[i] for i in joining], logprobs, np.full(len(joining), self._t, np.int64),
                     self._t + np.array([len(prompts[i]) + num_new[i] for i in joining], np.int64).reshape(-1),
                     np.zeros((len(joining), self._logits.shape[1]), np.float32),
                     tuple(np.zeros((len(joining), state.shape[1]), np.float32) for state in self._states))
        return numbers

    def _append(self, numbers, prompts, settings, windows, logprobs, origin, ends, logits, states) -> None:
        """Rows into the batch's arrays (their penalty windows are in already: _make_room, or copied)."""
        self.rows += numbers
        self._prompts += prompts
        self._settings += settings
        self._logprobs += [logprobs] * len(numbers)
        self._origin = np.concatenate([self._origin, origin])
        self._ends = np.concatenate([self._ends, ends])
        table, bias = knob_table(settings, windows, self._sampler.vocab_size)
        if bias is not None or self._bias is not None:  # a row with a logit bias: every row has one (0 if none)
            bias, self._bias = (np.zeros((len(t), self._sampler.vocab_size), np.float32) if b is None else b
                                for t, b in ((table, bias), (self._table, self._bias)))
            bias = np.concatenate([self._bias, bias])
        self._table, self._bias = np.concatenate([self._table, table]), bias
        self._logits = np.concatenate([self._logits, logits])
        self._states = tuple(np.concatenate([state, new]) for state, new in zip(self._states, states))

    def _make_room(self, window: int, count: int) -> None:
        """Penalty windows for `count` rows joining, one of which needs `window` ids (0: none does)."""
        vocab_size = self._sampler.vocab_size
        if self._window is None:
            if not window:
                return
            self._window = empty_window(len(self.rows), 0, vocab_size)
        history, counts = self._window
        width = history.shape[1]
        if window > width:  # a power of two: few shapes to trace
            width = max(16, 1 << (window - 1).bit_length())
            history = widened(history, (self._t - self._origin).astype(np.int64), width)
        fresh_history, fresh_counts = empty_window(count, width, vocab_size)
        self._window = (np.concatenate([history, fresh_history]), np.concatenate([counts, fresh_counts]))

    @property
    def done(self) -> bool:
        return not self.rows or self._t >= int(self._ends.max())

    def steps_to_new(self, rows: Sequence[int]) -> int:
        """Steps until the first of `rows` has read its whole prompt (and makes a new id at the next step)."""
        index = {row: i for i, row in enumerate(self.rows)}
        index.update((copy, index[leader]) for leader, copies in self._copies.items() for copy, _, _ in copies)
        left = [self._prompt_end(index[row]) - self._t for row in rows if row in index]
        return max(0, min(left, default=0))

    def _prompt_end(self, index: int) -> int:
        """The step at which the row at `index` has read its prompt."""
        return int(self._origin[index]) + len(self._prompts[index])

    def advance(self, steps: Optional[int] = None) -> Dict[int, Piece]:
        """Runs the next chunk (of `steps` ids, default the run's chunk size; XLA runs keep theirs; it ends where a
        leader has read its prompt); returns the piece of every row, the copies waiting for a leader's included, by
        its row number."""
        chunk = self._chunk_size if self._use_xla or not steps else steps
        start = self._t
        stop = min(start + chunk, int(self._ends.max()))
        ends_of_leaders = [self._prompt_end(self.rows.index(leader)) for leader in self._copies]
        stop = min([stop, *ends_of_leaders])  # (each > start: a leader's copies join when it has read the prompt)
        width = chunk if self._use_xla else stop - start  # XLA compiles one program per width
        num_rows = len(self.rows)
        prompt = np.zeros((num_rows, width), np.int32)
        in_prompt = np.zeros((num_rows, width), bool)
        for index, ids in enumerate(self._prompts):  # each row's own positions
            lo = start - int(self._origin[index])
            part = ids[lo:lo + stop - start]
            prompt[index, :len(part)] = part
            in_prompt[index, :len(part)] = True
        filters = Filters.for_rows(self._settings, _logprobs_width(max(self._logprobs), self._sampler.vocab_size))
        window, positions = (self._window, (start - self._origin).astype(np.int32)) if filters.penalties else ((), ())
        ids, logits, states, window, *reported = self._sampler.chunk_fn(filters, self._use_xla)(
            prompt, in_prompt, self._logits, self._states, (self._table, self._bias if filters.bias else None),
            window, positions, self._seed, np.int32(start), np.int32(stop - start))
        self._logits, self._states = np.asarray(logits), tuple(np.asarray(state) for state in states)
        if filters.penalties:
            self._window = tuple(np.asarray(part) for part in window)
        ids = np.asarray(ids)
        reported = [np.asarray(r) for r in reported]
        self._t = stop
        pieces = {}
        for index, row in enumerate(self.rows):
            origin = int(self._origin[index])
            first = start if self._include_prompt else max(start, origin + len(self._prompts[index]))
            last = min(stop, int(self._ends[index]))
            span = slice(first - start, max(last - start, first - start))
            wanted = self._logprobs[index]
            logprobs = (reported[0][index, span], reported[1][index, span, :wanted],
                        reported[2][index, span, :wanted]) if reported and wanted else None
            pieces[row] = Piece(ids[index, span], first - origin, logprobs, done=stop >= self._ends[index])
        for leader, copies in list(self._copies.items()):
            for copy, _, _ in copies:  # what the leader read is theirs too (its prompt's ids, their log-probabilities)
                pieces[copy] = dataclasses.replace(pieces[leader])
            if self._prompt_end(self.rows.index(leader)) == stop:
                self._fork(leader)
        if self._drop_finished:
            self.drop([row for row, piece in pieces.items() if piece.done])
        return pieces

    def _fork(self, leader: int) -> None:
        """The copies of `leader` join the batch, each a copy of its row but for its own settings (where it has read
        their prompt, or before: they are at the same place), in the order of their numbers."""
        copies = self._copies.pop(leader)
        index = self.rows.index(leader)
        same = np.full(len(copies), index)
        if self._window is not None:
            self._window = tuple(np.concatenate([part, part[same]]) for part in self._window)
        self._append([copy for copy, _, _ in copies], [self._prompts[index]] * len(copies),
                     [settings for _, settings, _ in copies], [window for _, _, window in copies],
                     self._logprobs[index], self._origin[same], self._ends[same], self._logits[same],
                     tuple(state[same] for state in self._states))
        self._take(np.argsort(self.rows, kind="stable"))

    def drop(self, rows: Sequence[int]) -> None:
        """Takes rows out of the batch (their clients went away); the others go on."""
        leaving = set(rows)
        for leader in list(self._copies):
            self._copies[leader] = [copy for copy in self._copies[leader] if copy[0] not in leaving]
            if not self._copies[leader]:
                del self._copies[leader]
            elif leader in leaving:  # its copies stay: they take its place, where it has got to in their prompt
                self._fork(leader)
        keep = [index for index, row in enumerate(self.rows) if row not in leaving]
        if len(keep) < len(self.rows):
            self._take(keep)

    def _take(self, keep: Sequence[int]) -> None:
        """Keeps the rows at these indices, in this order."""
        self.rows = [self.rows[index] for index in keep]
        self._prompts = [self._prompts[index] for index in keep]
        self._settings = [self._settings[index] for index in keep]
        self._logprobs = [self._logprobs[index] for index in keep]
        for name in ("_origin", "_ends", "_logits"):
            setattr(self, name, getattr(self, name)[keep])
        self._table = self._table[keep]
        self._bias = None if self._bias is None else self._bias[keep]
        self._states = tuple(state[keep] for state in self._states)
        if self._window is not None:
            self._window = tuple(part[keep] for part in self._window)
