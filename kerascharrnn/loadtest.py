"""Load test for bin/serve: concurrent clients replaying rnn-writer's request (not a unit test).

    bin/loadtest --url http://127.0.0.1:8080 --clients 32 --requests 20 --n 3

Prints requests/s, latency percentiles and the error count (any non-200 or malformed reply).
"""

import asyncio
import logging
import statistics
import time
import urllib.parse
from typing import List

import httpx
import numpy as np

PROMPTS = ["the ship drifted toward", "She opened the door and", "def load(self, path", "ROMEO: What light"]


async def _client(http: httpx.AsyncClient, url: str, requests: int, n: int, index: int, latencies: List[float],
                  errors: List[str]) -> None:
    for i in range(requests):
        text = PROMPTS[(index + i) % len(PROMPTS)]
        started = time.perf_counter()
        try:
            reply = await http.get(f"{url}/generate?start_text={urllib.parse.quote(text, safe='')}&n={n}")
            body = reply.json()
            if reply.status_code != 200 or "message" in body or len(body["completions"]) > n:
                errors.append(f"{reply.status_code}: {str(body)[:200]}")
        except (httpx.HTTPError, ValueError, KeyError) as e:
            errors.append(f"{type(e).__name__}: {e}")
        latencies.append(time.perf_counter() - started)


async def run_load(url: str, clients: int, requests: int, n: int) -> dict:
    latencies, errors = [], []
    limits = httpx.Limits(max_connections=clients)
    async with httpx.AsyncClient(timeout=120.0, limits=limits) as http:
        started = time.perf_counter()
        await asyncio.gather(*(_client(http, url, requests, n, c, latencies, errors) for c in range(clients)))
        elapsed = time.perf_counter() - started
    ms = np.array(latencies) * 1000
    return {"requests": len(latencies), "seconds": elapsed, "requests_per_s": len(latencies) / elapsed,
            "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
            "mean_ms": statistics.fmean(ms), "errors": len(errors), "first_errors": errors[:3]}


def main(argv):
    del argv
    from absl import flags

    f = flags.FLAGS
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request otherwise
    result = asyncio.run(run_load(f.url.rstrip("/"), f.clients, f.requests, f.n))
    print(f"{result['requests']} requests from {f.clients} clients x {f.requests} (n={f.n}) in "
          f"{result['seconds']:.1f} s: {result['requests_per_s']:.1f} requests/s, p50 {result['p50_ms']:.0f} ms,"
          f" p99 {result['p99_ms']:.0f} ms, errors {result['errors']}")
    for error in result["first_errors"]:
        print("  error:", error)


def run():
    from absl import flags

    from kerascharrnn.cli import common

    flags.DEFINE_string("url", "http://127.0.0.1:8080", "Base URL of a running bin/serve.")
    flags.DEFINE_integer("clients", 32, "Concurrent clients.", lower_bound=1)
    flags.DEFINE_integer("requests", 20, "Requests per client.", lower_bound=1)
    flags.DEFINE_integer("n", 3, "Completions per request (rnn-writer's n).", lower_bound=1)
    common.run_main(main)
