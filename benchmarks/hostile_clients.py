"""bin/serve under hostile and heavy clients (not a test): what a normal client sees, and the server's memory.

    python3 benchmarks/hostile_clients.py --checkpoint cv/small.keras
    python3 benchmarks/hostile_clients.py --checkpoint cv/small.keras --repo /path/to/an/older/checkout

Starts `bin/serve` (of --repo, default this checkout) on 127.0.0.1, then:
  1. quiet: a normal client's requests one after another (GET /generate n=3, POST /v1/generate 60 chars x 3);
  2. slow clients: --slow sockets that each send most of a 4 MB request head and stall, and as many that send
     a header byte now and then (slowloris), while the normal client goes on; then whether the server dropped them;
  3. mixed load: --clients concurrent clients x --requests mixed requests: the two endpoints above (--mix v02,
     which v0.2 also has, so that the same run measures an older checkout), or the writers' APIs as frontends
     call them, streams included (--mix writers: OpenAI completions streamed and chat, Ollama chat, KoboldCpp's
     stream, llama.cpp's /completion streamed, and the two above).
Prints p50/p99 of the normal client in 1 and 2, the load's p50/p99 (a stream's time: until its last byte),
requests/s, non-200 and 5xx counts, and the server's resident memory before, during and after the slow clients.

    python3 benchmarks/hostile_clients.py --checkpoint cv/small.keras --mix writers
"""

import argparse
import asyncio
import logging
import os
import socket
import tempfile
import threading
import time
from typing import List

import httpx
import numpy as np
from writers_latency import resident_mib, serve

HEAD_BYTES = 4 * 2**20 - 4096  # just under bin/serve's 4 MiB head limit: held, not refused


async def request(http: httpx.AsyncClient, base: str, kind: int):
    started = time.perf_counter()
    try:
        if kind % 2 == 0:
            reply = await http.get(base + "/generate?start_text=the%20ship%20drifted&n=3")
        else:
            reply = await http.post(base + "/v1/generate", json={"start_text": "ROMEO:", "num_new_chars": 60,
                                                                 "num_samples": 3})
        status = reply.status_code
    except httpx.HTTPError as e:
        status = type(e).__name__
    return time.perf_counter() - started, status


# The writers' mix: (method, path, body); streamed ones are read to their end.
WRITERS = [
    ("POST", "/v1/completions", {"prompt": "ROMEO:", "max_tokens": 60, "n": 3, "temperature": 0.8, "stream": True}),
    ("POST", "/v1/chat/completions", {"messages": [{"role": "user", "content": "ROMEO:"}], "max_tokens": 60,
                                      "stream": True}),
    ("POST", "/api/chat", {"messages": [{"role": "user", "content": "ROMEO:"}], "options": {"num_predict": 60}}),
    ("POST", "/api/extra/generate/stream", {"prompt": "ROMEO:", "max_length": 60, "rep_pen": 1.05,
                                            "rep_pen_range": 360, "top_k": 100, "top_p": 0.92}),
    ("POST", "/completion", {"prompt": "ROMEO:", "n_predict": 60, "stream": True, "n_probs": 10,
                             "repeat_penalty": 1.1}),
    ("GET", "/generate?start_text=the%20ship%20drifted&n=3", None),
    ("POST", "/v1/generate", {"start_text": "ROMEO:", "num_new_chars": 60, "num_samples": 3}),
]


async def writers_request(http: httpx.AsyncClient, base: str, kind: int, model: str):
    method, path, body = WRITERS[kind % len(WRITERS)]
    if body is not None and "/api/" in path and "extra" not in path or path.startswith("/v1/c"):
        body = dict(body, model=model)
    started = time.perf_counter()
    try:
        async with http.stream(method, base + path, json=body) as reply:
            async for _ in reply.aiter_bytes():
                pass
            status = reply.status_code
    except httpx.HTTPError as e:
        status = type(e).__name__
    return time.perf_counter() - started, status


async def normal_client(base: str, count: int) -> List[tuple]:
    async with httpx.AsyncClient(timeout=120) as http:
        return [await request(http, base, i) for i in range(count)]


async def load(base: str, clients: int, requests: int, mix: str = "v02", model: str = "") -> tuple:
    async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=clients)) as http:
        async def client(c):
            if mix == "writers":
                return [await writers_request(http, base, c + i, model) for i in range(requests)]
            return [await request(http, base, c + i) for i in range(requests)]

        started = time.perf_counter()
        results = await asyncio.gather(*(client(c) for c in range(clients)))
        return [r for rs in results for r in rs], time.perf_counter() - started


def slow_clients(port: int, count: int, stop: threading.Event) -> List[socket.socket]:
    """`count` sockets with most of a 4 MB head sent, and `count` slowloris sockets fed a byte every 2 s."""
    heavy, trickle = [], []
    for _ in range(count):
        try:
            sock = socket.create_connection(("127.0.0.1", port), timeout=30)
            sock.sendall(b"GET /generate?start_text=" + b"a" * HEAD_BYTES)
            heavy.append(sock)
        except OSError:
            break  # the server refused or closed: that is an answer too
    for _ in range(count):
        try:
            sock = socket.create_connection(("127.0.0.1", port), timeout=30)
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            trickle.append(sock)
        except OSError:
            break

    def feed():
        while not stop.wait(2.0):
            for sock in trickle:
                try:
                    sock.sendall(b"X")
                except OSError:
                    pass

    threading.Thread(target=feed, daemon=True).start()
    return heavy + trickle


def still_open(sockets: List[socket.socket]) -> int:
    alive = 0
    for sock in sockets:
        sock.settimeout(0.01)
        try:
            alive += sock.recv(1) != b""
        except (TimeoutError, BlockingIOError):
            alive += 1
        except OSError:
            pass
    return alive


def summary(results: List[tuple]) -> str:
    times = np.array([t for t, _ in results]) * 1000
    bad = [s for _, s in results if s != 200]
    server_errors = [s for s in bad if isinstance(s, int) and s >= 500]
    kinds = ", ".join(f"{s}: {bad.count(s)}" for s in sorted(set(map(str, bad))))
    return (f"p50 {np.percentile(times, 50):.0f} ms, p99 {np.percentile(times, 99):.0f} ms, {len(results)} requests,"
            f" non-200 {len(bad)}{f' ({kinds})' if bad else ''}, 5xx {len(server_errors)}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--repo", default=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    parser.add_argument("--slow", type=int, default=200, help="Sockets of each slow kind.")
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--wait", type=float, default=15.0, help="Seconds the slow clients are given.")
    parser.add_argument("--mix", choices=("v02", "writers"), default="v02", help="The mixed load's requests.")
    args = parser.parse_args()
    logging.getLogger("httpx").setLevel(logging.WARNING)
    with tempfile.NamedTemporaryFile("w+", suffix=".log") as log:
        process, base = serve(args.checkpoint, log, args.repo)
        port = int(base.rsplit(":", 1)[1])
        try:
            asyncio.run(normal_client(base, 5))  # warm-up
            memory = {"before": resident_mib(process.pid)}
            print(f"{args.repo} serving {os.path.basename(args.checkpoint)}")
            print("  quiet, one normal client:", summary(asyncio.run(normal_client(base, 40))))
            stop = threading.Event()
            sockets = slow_clients(port, args.slow, stop)
            memory["with slow clients"] = resident_mib(process.pid)
            during = asyncio.run(normal_client(base, 40))
            time.sleep(max(0.0, args.wait - 5))
            print(f"  {len(sockets)} slow sockets opened; a normal client meanwhile:", summary(during))
            print(f"  after {args.wait:g} s, slow sockets the server still holds open: {still_open(sockets)}")
            memory["after the slow clients"] = resident_mib(process.pid)
            stop.set()
            for sock in sockets:
                sock.close()
            model = httpx.get(base + "/v1/models", timeout=30).json()["data"][0]["id"]
            results, seconds = asyncio.run(load(base, args.clients, args.requests, args.mix, model))
            print(f"  mixed load ({args.mix}), {args.clients} clients x {args.requests}: {summary(results)},"
                  f" {len(results) / seconds:.1f} requests/s")
            memory["after the load"] = resident_mib(process.pid)
            print("  server memory: " + ", ".join(f"{k} {v:.0f} MiB" for k, v in memory.items()))
        finally:
            process.terminate()
            process.wait(timeout=60)


if __name__ == "__main__":
    main()
