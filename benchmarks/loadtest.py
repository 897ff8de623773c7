"""Load test for bin/serve: concurrent clients replaying rnn-writer's request (not a unit test).

    python3 benchmarks/loadtest.py --url http://127.0.0.1:8080 --clients 32 --requests 20 --n 3

Needs httpx (pip install httpx, or the package's test extra); talks to the server over HTTP only.

Prints requests/s, latency percentiles and the error count (any non-200 or malformed reply).
"""

import argparse
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


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8080", help="Base URL of a running bin/serve.")
    parser.add_argument("--clients", type=int, default=32, help="Concurrent clients.")
    parser.add_argument("--requests", type=int, default=20, help="Requests per client.")
    parser.add_argument("--n", type=int, default=3, help="Completions per request (rnn-writer's n).")
    args = parser.parse_args()
    for name in ("clients", "requests", "n"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request otherwise
    result = asyncio.run(run_load(args.url.rstrip("/"), args.clients, args.requests, args.n))
    print(f"{result['requests']} requests from {args.clients} clients x {args.requests} (n={args.n}) in "
          f"{result['seconds']:.1f} s: {result['requests_per_s']:.1f} requests/s, p50 {result['p50_ms']:.0f} ms,"
          f" p99 {result['p99_ms']:.0f} ms, errors {result['errors']}")
    for error in result["first_errors"]:
        print("  error:", error)


if __name__ == "__main__":
    main()
