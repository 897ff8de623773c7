"""How fast a writer sees a suggestion: bin/serve's streamed completions at 1 and at 32 writers (not a test).

    python3 benchmarks/writers_latency.py --checkpoint cv/default.keras --checkpoint cv/cpu_15min.keras
    python3 benchmarks/writers_latency.py --checkpoint cv/default.keras --baseline /tmp/before \
        --extra '{"repetition_penalty": 1.1}'
    python3 benchmarks/writers_latency.py --tflite export/models/default --python .venv-lite/bin/python

For each checkpoint (or exported model.tflite, served by --python: the lite install's, say), starts `bin/serve`
on 127.0.0.1 (a real process), warms it up, then has each number of
writers (--writers, default 1 and 32) ask at once, --rounds times each, for what the writing page asks for:
3 suggestions of 60 characters after a 48-character prompt (POST /v1/completions, stream: true, n 3,
temperature 0.8). Prints, per model and number of writers, the time to the first streamed character and to
the whole suggestion (p50 and p99 over every request), the errors (any non-200 or malformed stream), and the
server's resident memory after the warm-up and after each load (flat memory: the server keeps nothing).

The writers run in this process (asyncio + httpx) on the same machine as the server: at 32 writers they
share its cores, as they would if a small team's editors and the server shared one machine. --baseline runs the
same loads against another checkout's bin/serve (an earlier commit, say `git worktree add /tmp/before HEAD~1`)
in the same run, one server after the other; --extra adds fields to every request (a sampler setting, to see
what it costs).
"""

import argparse
import asyncio
import json
import logging
import os
import socket
import subprocess
import sys
import tempfile
import time
from typing import Dict, List

import httpx
import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROMPT_LENGTH, SUGGESTION_LENGTH, SUGGESTIONS = 48, 60, 3
TEXT = ("It was the best of times, it was the worst of times, it was the age of wisdom, it was the age of "
        "foolishness, it was the epoch of belief, it was the epoch of incredulity, it was the season of Light, "
        "it was the season of Darkness, it was the spring of hope, it was the winter of despair.")


def prompts(count: int) -> List[str]:
    """`count` different 48-character prompts: windows of TEXT, as a writer's last characters."""
    return [TEXT[(7 * i) % (len(TEXT) - PROMPT_LENGTH):][:PROMPT_LENGTH] for i in range(count)]


def resident_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:")) / 1024


async def suggestion(http: httpx.AsyncClient, base: str, model: str, prompt: str, extra: Dict) -> Dict:
    """One writer's Tab: times to the first streamed character and to the end of the stream."""
    body = {"model": model, "prompt": prompt, "max_tokens": SUGGESTION_LENGTH, "n": SUGGESTIONS,
            "temperature": 0.8, "stream": True, **extra}
    started = time.perf_counter()
    first, texts = None, [""] * SUGGESTIONS
    async with http.stream("POST", base + "/v1/completions", json=body) as reply:
        if reply.status_code != 200:
            return {"error": f"{reply.status_code}: {(await reply.aread())[:200]!r}"}
        async for line in reply.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            for choice in json.loads(line[6:])["choices"]:
                if choice["text"] and first is None:
                    first = time.perf_counter() - started
                texts[choice["index"]] += choice["text"]
    whole = time.perf_counter() - started
    if any(len(text) != SUGGESTION_LENGTH for text in texts):
        return {"error": f"suggestions of {[len(t) for t in texts]} characters"}
    return {"first": first, "whole": whole}


async def writers(base: str, model: str, count: int, rounds: int, extra: Dict) -> List[Dict]:
    async def writer(index: int) -> List[Dict]:
        own = prompts(count * rounds)[index::count]
        return [await suggestion(http, base, model, prompt, extra) for prompt in own]

    async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=count)) as http:
        results = await asyncio.gather(*(writer(i) for i in range(count)))
    return [result for own in results for result in own]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(source: List[str], log, repo: str = REPO, python: str = sys.executable) -> (subprocess.Popen, str):
    """bin/serve of `repo` (this checkout, or an older one) run by `python`, of the model the flags `source` name
    (["--checkpoint", path] or ["--tflite", path]), on a free port of 127.0.0.1, once it answers."""
    port = free_port()
    process = subprocess.Popen([python, os.path.join(repo, "bin", "serve"), *source, "--port", str(port)],
                               stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONPATH=repo))
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 300
    while True:
        try:
            if httpx.get(base + "/healthz", timeout=2).status_code == 200:
                return process, base
        except httpx.HTTPError:
            pass
        if process.poll() is not None or time.time() > deadline:
            process.kill()
            log.seek(0)
            sys.exit(f"bin/serve did not come up for {' '.join(source)}: {log.read()[-2000:]}")
        time.sleep(0.3)


def percentile_ms(values: List[float], q: float) -> float:
    return 1000 * float(np.percentile(values, q))


def measure(source: List[str], counts: List[int], rounds: int, repo: str = REPO, extra: Dict = None,
            python: str = sys.executable) -> Dict:
    """Prints the figures of bin/serve of `source` (see serve) and returns them: {"memory": resident MiB after the
    warm-up, writers: (first char p50 ms, p99, whole p50, p99, errors)}."""
    extra = extra or {}
    figures = {}
    with tempfile.TemporaryFile("w+") as log:
        process, base = serve(source, log, repo, python)
        try:
            model = httpx.get(base + "/v1/models", timeout=30).json()["data"][0]["id"]
            for count in sorted(set(counts)):  # warm-up: every batch size the loads will use
                asyncio.run(writers(base, model, count, 1, extra))
            memory = [resident_mib(process.pid)]
            figures["memory"] = memory[0]
            print(f"{source[0]} {os.path.basename(source[1])} served by {repo} ({python})"
                  f"{' with ' + json.dumps(extra) if extra else ''}: server resident memory after warm-up"
                  f" {memory[0]:.0f} MiB")
            for count in counts:
                results = asyncio.run(writers(base, model, count, rounds, extra))
                memory.append(resident_mib(process.pid))
                good = [r for r in results if "error" not in r]
                errors = [r["error"] for r in results if "error" in r]
                first = [r["first"] for r in good]
                whole = [r["whole"] for r in good]
                figures[count] = (percentile_ms(first, 50), percentile_ms(first, 99), percentile_ms(whole, 50),
                                  percentile_ms(whole, 99), len(errors))
                print(f"  {count:>2} writer(s) x {rounds} suggestions ({SUGGESTIONS} x {SUGGESTION_LENGTH} chars "
                      f"after {PROMPT_LENGTH}): first char p50 {percentile_ms(first, 50):.0f} ms p99 "
                      f"{percentile_ms(first, 99):.0f} ms; whole p50 {percentile_ms(whole, 50):.0f} ms p99 "
                      f"{percentile_ms(whole, 99):.0f} ms; errors {len(errors)}; server memory {memory[-1]:.0f} MiB")
                for error in errors[:3]:
                    print("    error:", error)
        finally:
            process.terminate()
            process.wait(timeout=60)
    return figures


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", action="append", default=[], help="A model to serve (repeatable).")
    parser.add_argument("--tflite", action="append", default=[], help="An exported model.tflite (or its export's"
                        " directory) to serve (repeatable).")
    parser.add_argument("--python", default=sys.executable, help="The interpreter that runs bin/serve (default: this"
                        " one); .venv-lite/bin/python serves a --tflite without TensorFlow.")
    parser.add_argument("--writers", default="1,32", help="Numbers of concurrent writers, comma-separated.")
    parser.add_argument("--rounds", type=int, default=20, help="Suggestions each writer asks for, one after another.")
    parser.add_argument("--baseline", default="", help="Another checkout whose bin/serve runs the same loads first.")
    parser.add_argument("--extra", default="{}", help="JSON object of fields added to every request.")
    args = parser.parse_args()
    counts = [int(c) for c in args.writers.split(",")]
    if args.rounds < 1 or min(counts) < 1:
        parser.error("--rounds and --writers must be at least 1")
    if not args.checkpoint and not args.tflite:
        parser.error("give a --checkpoint or a --tflite to serve")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    extra = json.loads(args.extra)
    sources = [["--checkpoint", path] for path in args.checkpoint] + [["--tflite", path] for path in args.tflite]
    for source in sources:
        if args.baseline:
            measure(source, counts, args.rounds, os.path.abspath(args.baseline), extra, args.python)
        measure(source, counts, args.rounds, REPO, extra, args.python)


if __name__ == "__main__":
    main()
