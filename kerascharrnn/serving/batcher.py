"""The model's one worker thread: every request's rows run in one shared batch, a chunk of characters at a time.

Model runs happen on one thread, so the event loop never blocks. The thread keeps one batch going (a
sampling.Generation) and between chunks lets the next waiting requests join it (continuous batching: a new
request does not wait for the others to finish), takes out the rows of requests whose clients went away or
whose time ran out, and sends each request the characters its rows made, as they are made (streaming).
Each row draws with its own settings (filters, penalties, log-probabilities), so requests of any settings share
the batch; only a request with a fixed seed runs alone (so that the same request gives the same text), and the
requests behind it wait until the batch drains, in arrival order. The queue of waiting requests is bounded: a
full queue refuses at once (Overloaded), never queues forever.
"""

import asyncio
import collections
import dataclasses
import logging
import math
import threading
import time
from typing import AsyncIterator, Callable, Dict, List, Optional, Tuple

import numpy as np

from kerascharrnn.config import ServeConfig
from kerascharrnn.inference.engines import Engine
from kerascharrnn.inference.generation import Generation, Piece
from kerascharrnn.sampling_settings import SamplingSettings

log = logging.getLogger("kerascharrnn.serve")
# The server's steps per model call (bin/sample's, longer, are generation.STREAM_CHUNK and BULK_CHUNK):
SERVING_STREAM_CHUNK = 16  # while a reply streams or a request waits to join the batch
SERVING_BULK_CHUNK = 128  # otherwise (replies sent whole, nobody waiting): fewer calls, less overhead per character
FIRST_PIECE = 4  # a streamed reply's first piece: a new row reads its prompt and makes this many in one call
_GRACE_SECONDS = 5.0  # past a job's time limit, its wait ends even if the worker never answers
# The loops traced before the first client (each set of filters is a loop of its own): plain sampling (the writing
# page, rnn-writer, most clients), with log-probabilities, and with the filters and penalty that writing frontends
# send (llama.cpp's defaults top-k 40, top-p 0.95, min-p 0.05; KoboldAI Lite's repetition penalty 1.07)
WARM_UP = ((SamplingSettings(), 0), (SamplingSettings(), 1),
           (SamplingSettings(top_k=40, top_p=0.95, min_p=0.05), 0),
           (SamplingSettings(top_k=100, top_p=0.92, repetition_penalty=1.07, penalty_range=360), 0))


class Overloaded(Exception):
    """The queue of waiting requests is full."""


class Expired(Exception):
    """The request's time limit passed before its text was made."""


class ModelFailed(Exception):
    """The model failed on the request's rows (the worker logged why): the request ends with a 500 of its API's
    shape, or an error in its stream; the other requests of the batch go on."""


@dataclasses.dataclass(eq=False)
class Job:
    """One request's rows and how they are drawn.

    Attributes:
      prompts: one array of 0-based ids per row.
      num_new: ids to make after each prompt (one number, or one per row).
      settings: how the rows draw (one SamplingSettings, or one per row).
      seed: fixes the draws (the job then runs alone); None = random.
      logprobs: how many most likely alternatives to report with each id (0 = none).
      include_prompt: also report the prompt's ids (OpenAI's echo).
      time_limit: seconds from submission within which the job must be done (Expired otherwise).
      stream: its text is sent as it is made (the batch then runs in short chunks).
      client: who asked (for a fair share of the queue: BatchingSampler.submit).
    """

    prompts: List[np.ndarray]
    num_new: object
    settings: object = SamplingSettings()
    seed: Optional[int] = None
    logprobs: int = 0
    include_prompt: bool = False
    time_limit: float = math.inf
    stream: bool = False
    client: str = ""

    def __post_init__(self):
        self.number = -1  # its place in the order of submission (BatchingSampler.submit)
        self.deadline = math.inf
        self.cancelled = False
        self.started = False  # its first piece was sent
        self.rows_done: set = set()  # rows the request needs no more of (cut at a stop string)
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._queue: Optional[asyncio.Queue] = None

    def cancel(self) -> None:
        """The client went away: the job's rows leave the batch at the next chunk."""
        self.cancelled = True

    def cancel_row(self, row: int) -> None:
        """The request needs no more of this row (its text met a stop string): it leaves the batch, unless the
        job is seeded (a row leaving changes the draws of the others, and the same seeded request must give the
        same text, streamed or not)."""
        if self.seed is None:
            self.rows_done.add(row)

    def listen(self) -> None:
        """Pieces go to the running event loop's coroutine that awaits `pieces` (called as the job is submitted)."""
        self._loop = asyncio.get_running_loop()
        self._queue = asyncio.Queue()

    def send(self, item) -> None:  # from the worker thread
        """Hands the awaiting coroutine a (row, Piece), an error, or None (the job is over)."""
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)

    async def pieces(self) -> AsyncIterator[Tuple[int, Piece]]:
        """(row, piece) as the rows' characters are made; ends when every row is done (or the job was
        cancelled), raises Expired (or the model's error) if it failed. A worker that stops sending (it never
        should) still ends the wait: Expired after the time limit and a grace period."""
        while True:
            try:
                item = await asyncio.wait_for(self._queue.get(), timeout=self.time_limit + _GRACE_SECONDS)
            except asyncio.TimeoutError:
                self.cancel()
                raise Expired(f"not done within its time limit of {self.time_limit:g} s") from None
            if item is None:
                return
            if isinstance(item, Expired):
                raise item
            if isinstance(item, BaseException):
                raise ModelFailed(f"{type(item).__name__}: {str(item)[:200]}") from item
            yield item

    async def rows(self) -> List[Tuple[np.ndarray, Optional[Tuple[np.ndarray, ...]]]]:
        """Every row's ids (and their log-probabilities), once all are made."""
        ids = [[] for _ in self.prompts]
        reported = [[] for _ in self.prompts]
        async for row, piece in self.pieces():
            ids[row].append(piece.ids)
            if piece.logprobs is not None:
                reported[row].append(piece.logprobs)
        return [(np.concatenate(parts) if parts else np.zeros(0, np.int32),
                 tuple(np.concatenate(p) for p in zip(*logs)) if logs else None)
                for parts, logs in zip(ids, reported)]


class BatchingSampler:
    """Runs every job on one worker thread, rows of compatible jobs in one continuous batch.

    Args:
      engine: the model.
      max_rows: rows the batch may hold at once.
      max_waiting: jobs that may wait for the batch; beyond, submit raises Overloaded.
      clock: seconds (time.monotonic); the jobs' time limits are read from it.
    """

    def __init__(self, engine: Engine, max_rows: int = ServeConfig.max_batch_rows,
                 max_waiting: int = ServeConfig.max_waiting, clock: Callable[[], float] = time.monotonic):
        self._engine = engine
        self._max_rows = max_rows
        self._max_waiting = max_waiting
        self._clock = clock
        self._waiting: collections.deque = collections.deque()
        self._submitted = 0  # jobs so far (each job's number: the newest has the highest)
        self._ready = threading.Condition()
        threading.Thread(target=self._work, name="kerascharrnn-sampler", daemon=True).start()

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @property
    def max_rows(self) -> int:
        return self._max_rows

    def warm_up(self) -> None:
        """Traces the loops a server uses (the sampling loop is traced once for every batch size), so that no
        client pays for it."""
        for settings, logprobs in WARM_UP:
            run = self._engine.sampler.generate([np.zeros(1, np.int32)] * 2, 2, settings, chunk_size=2,
                                                logprobs=logprobs, drop_finished=True)
            while not run.done:
                run.advance()

    def submit(self, job: Job) -> Job:
        """Queues a job (on the event loop's thread); its pieces arrive through job.pieces()."""
        if len(job.prompts) > self._max_rows:
            raise ValueError(f"a job of {len(job.prompts)} rows; the batch holds {self._max_rows}")
        job.listen()
        job.deadline = self._clock() + job.time_limit
        with self._ready:
            if len(self._waiting) >= self._max_waiting:
                raise Overloaded(f"{len(self._waiting)} requests are waiting")
            share = max(1, self._max_waiting // 2)
            if sum(1 for waiting in self._waiting if waiting.client == job.client) >= share:
                raise Overloaded(f"{share} requests of this client are waiting already: at most half the queue"
                                 " (--max_waiting) is one client's")
            job.number = self._submitted
            self._submitted += 1
            self._waiting.append(job)
            self._ready.notify()
        return job

    # --- the worker thread ----------------------------------------------------------------------------

    def _work(self) -> None:
        run: Optional[Generation] = None
        members: Dict[int, Tuple[Job, int]] = {}  # the batch's row -> (job, the job's own row)
        seeded = False  # the batch is a seeded job's own
        while True:
            with self._ready:
                while run is None and not self._waiting:
                    self._ready.wait()
                joining = self._admit(None if run is None else seeded, len(members))
            try:
                if run is None and joining:
                    seeded = joining[0].seed is not None
                run = self._step(run, members, joining)
            except Exception as e:  # noqa: BLE001 - the worker must live on: the error goes to the requests
                run = self._recover(run, members, joining, e)

    def _recover(self, run: Optional[Generation], members: Dict[int, Tuple[Job, int]], joining: List[Job],
                 error: Exception) -> Optional[Generation]:
        """After a chunk failed: the batch goes on without the jobs that made it fail. Most likely the newest (a
        request's own input makes a model fail where it joins), so the jobs leave newest first, each with the
        error, until the chunk runs (a failure of the model itself ends every job: the last takes the error).
        The chunk is run again from where it started: the batch's state moves only when a chunk succeeds."""
        log.exception("the model failed on a chunk of %d rows; its newest requests get the error until it runs",
                      len(members) + sum(len(job.prompts) for job in joining))
        jobs = sorted({job for job, _ in members.values()} | set(joining), key=lambda job: job.number)
        while jobs:
            suspect = jobs.pop()
            suspect.send(error)
            if suspect in joining:
                joining.remove(suspect)
            rows = [row for row, (job, _) in members.items() if job is suspect]
            for row in rows:
                del members[row]
            if run is None or not jobs:
                break
            run.drop(rows)
            try:
                return self._step(run, members, joining)
            except Exception as e:  # noqa: BLE001 - the next suspect
                error = e
        for job in jobs:
            job.send(error)
        members.clear()
        return None

    def _step(self, run: Optional[Generation], members: Dict[int, Tuple[Job, int]], joining: List[Job]):
        """Lets the joining jobs in, takes the gone ones out, runs a chunk and sends its pieces; returns the
        batch (None once it drained)."""
        if joining:
            if run is None:
                run = self._engine.sampler.generate([], 0, seed=joining[0].seed, chunk_size=SERVING_STREAM_CHUNK,
                                                    include_prompt=True, drop_finished=True)
            while joining:  # one at a time: a job that cannot join leaves those before it in
                job = joining[0]
                rows = run.add(job.prompts, job.num_new, job.settings, job.logprobs)
                members.update((row, (job, own)) for own, row in enumerate(rows))
                joining.pop(0)  # in: from here on, an error reaches it through members
        self._drop_gone(run, members)
        if run is None or run.done:  # (a row with no id to make is done at once)
            for job in {job for job, _ in members.values()}:
                job.send(None)
            members.clear()
            return None
        pieces = run.advance(self._chunk(run, members))
        for row, piece in pieces.items():
            job, own = members[row]
            if job.cancelled:
                continue
            if not job.include_prompt:
                piece = _without_prompt(piece, len(job.prompts[own]))
            if len(piece.ids):
                job.started = True
                job.send((own, piece))
        done = [row for row, piece in pieces.items() if piece.done]
        finished = {members[row][0] for row in done}
        for row in done:
            del members[row]
        self._finish(members, finished)
        return run

    def _chunk(self, run: Generation, members: Dict[int, Tuple[Job, int]]) -> int:
        """Steps of the next call: a streamed reply that has sent nothing yet gets its first characters as soon
        as its prompt is read (in one call); otherwise short chunks while anything streams or waits to join,
        long ones when every reply goes whole."""
        fresh = [row for row, (job, _) in members.items() if job.stream and not job.started]
        if fresh:
            return min(run.steps_to_new(fresh) + FIRST_PIECE, 4 * SERVING_STREAM_CHUNK)
        streaming = self._waiting or any(job.stream for job, _ in members.values())
        return SERVING_STREAM_CHUNK if streaming else SERVING_BULK_CHUNK

    def _admit(self, seeded: Optional[bool], rows_in_batch: int) -> List[Job]:
        """The waiting jobs that join the batch now, in arrival order: a seeded job only into a batch of its own
        (it waits for the batch to drain, and later jobs wait behind it); any other job into any batch but a
        seeded one's (`seeded`: None when there is no batch)."""
        joining = []
        while self._waiting:
            job = self._waiting[0]
            starts = seeded is None and not joining
            if not starts and (job.seed is not None or seeded):
                break
            if not starts and rows_in_batch + len(job.prompts) > self._max_rows:
                break
            joining.append(self._waiting.popleft())
            rows_in_batch += len(job.prompts)
            if job.seed is not None:
                break
        return joining

    def _drop_gone(self, run: Optional[Generation], members: Dict[int, Tuple[Job, int]]) -> None:
        """Takes out the rows of jobs whose client went away or whose time ran out; expires waiting jobs too."""
        now = self._clock()
        gone = {job for job, _ in members.values() if job.cancelled or now > job.deadline}
        with self._ready:
            late = [job for job in self._waiting if job.cancelled or now > job.deadline]
            for job in late:
                self._waiting.remove(job)
        for job in gone | set(late):  # a cancelled job's wait ends too (its handler may still be waiting)
            job.send(None if job.cancelled else Expired(f"not done within its time limit of {job.time_limit:g} s"))
        rows = [row for row, (job, own) in members.items() if job in gone or own in job.rows_done]
        if rows and run is not None:
            left = sum(1 for row in rows if members[row][0].cancelled)
            if left:
                log.info("clients left: %d rows out of the batch, %d stay", left, len(members) - len(rows))
            run.drop(rows)
            cut = {members[row][0] for row in rows} - gone
            for row in rows:
                del members[row]
            self._finish(members, cut)

    @staticmethod
    def _finish(members: Dict[int, Tuple[Job, int]], jobs) -> None:
        """Tells each job with no row left in the batch that it is done."""
        still = {job for job, _ in members.values()}
        for job in set(jobs) - still:
            job.send(None)


def _without_prompt(piece: Piece, prompt_length: int) -> Piece:
    """The part of a piece after the row's prompt."""
    skip = min(max(prompt_length - piece.position, 0), len(piece.ids))
    if not skip:
        return piece
    return Piece(piece.ids[skip:], piece.position + skip,
                 tuple(r[skip:] for r in piece.logprobs) if piece.logprobs is not None else None, piece.done)
