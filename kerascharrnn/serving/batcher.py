"""The model's one worker thread: requests queued at the same moment run as one batch.

Model runs happen on one thread, so the event loop never blocks, and the jobs waiting at the same moment
(same length and filters, no fixed seed) merge into one batched run, so concurrent clients share the
model's batch dimension instead of queueing for it.
"""

import asyncio
import collections
import dataclasses
import queue
import threading
from typing import List, Optional

import numpy as np

from kerascharrnn.inference.engines import Engine
from kerascharrnn.serving.rules import bucket


@dataclasses.dataclass
class _Job:
    prompts: List[np.ndarray]
    temperatures: List[float]
    num_new: int
    top_k: int
    top_p: float
    seed: Optional[int]
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop

    @property
    def key(self):
        return (self.num_new, self.top_k, self.top_p)


class BatchingSampler:
    """Runs generation on one worker thread; jobs queued together run as one batch."""

    def __init__(self, engine: Engine, max_rows: int = 64):
        self._engine = engine
        self._max_rows = max_rows
        self._queue = queue.Queue()
        threading.Thread(target=self._work, name="kerascharrnn-sampler", daemon=True).start()

    def warm_up(self) -> None:
        """Traces the batch shapes a server uses, so no client pays for it."""
        rows = 1
        while rows <= self._max_rows:
            self._engine.sample_ids([np.zeros(0, np.int32)] * rows, 2, temperature=1.0)
            rows *= 2

    async def sample_ids(self, prompts: List[np.ndarray], num_new: int, temperatures: List[float], top_k: int = 0,
                       top_p: float = 1.0, seed: Optional[int] = None) -> List[np.ndarray]:
        loop = asyncio.get_running_loop()
        job = _Job(list(prompts), list(temperatures), num_new, top_k, top_p, seed, loop.create_future(), loop)
        self._queue.put(job)
        return await job.future

    def _work(self) -> None:
        backlog = collections.deque()
        while True:
            job = backlog.popleft() if backlog else self._queue.get()
            batch, rows = [job], len(job.prompts)
            if job.seed is None:  # a fixed seed runs alone, so the same request gives the same text
                waiting = list(backlog)
                backlog.clear()
                while True:
                    try:
                        waiting.append(self._queue.get_nowait())
                    except queue.Empty:
                        break
                for other in waiting:
                    if other.seed is None and other.key == job.key and rows + len(other.prompts) <= self._max_rows:
                        batch.append(other)
                        rows += len(other.prompts)
                    else:
                        backlog.append(other)
            self._run(batch)

    def _run(self, batch: List[_Job]) -> None:
        prompts = [p for job in batch for p in job.prompts]
        temperatures = [t for job in batch for t in job.temperatures]
        padding = bucket(len(prompts)) - len(prompts)
        job = batch[0]
        try:
            sequences = self._engine.sample_ids(
                prompts + [np.zeros(0, np.int32)] * padding, job.num_new,
                temperature=np.array(temperatures + [1.0] * padding, np.float32), top_k=job.top_k, top_p=job.top_p,
                seed=job.seed)
        except Exception as e:  # noqa: BLE001 - not caught here: relayed to the waiting requests (their 500)
            for job in batch:
                job.loop.call_soon_threadsafe(_settle, job.future, None, e)
            return
        start = 0
        for job in batch:
            rows = sequences[start:start + len(job.prompts)]
            start += len(job.prompts)
            job.loop.call_soon_threadsafe(_settle, job.future, rows, None)


def _settle(future: asyncio.Future, result, error) -> None:
    if future.done():  # the client went away
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
