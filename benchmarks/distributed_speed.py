#!/usr/bin/env python3
"""Training speed and memory of each --strategy on this host: one device, mirrored over 1 and 2 logical CPU
devices, multi_worker with 1 and 2 local worker processes (docs/distributed.md has the table).

Every configuration is a real bin/train run of the same model and global batch, timed by train.py's own
--speed_benchmark (synchronised per-step times; the first steps, which trace and compile, are left out) and
--memory_benchmark (peak RSS per process). Prints a Markdown table.

  python3 benchmarks/distributed_speed.py [--input_h5 data.h5] [--iters 40]
"""

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAKESPEARE = os.path.join(os.path.dirname(REPO), "shared", "data", "tiny-shakespeare.txt")
WARMUP_STEPS = 5


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _corpus(workdir: str) -> str:
    h5 = os.path.join(workdir, "corpus.h5")
    subprocess.run([sys.executable, os.path.join(REPO, "bin", "preprocess"), "--input_txt", SHAKESPEARE,
                    "--output_h5", h5, "--output_json", os.path.join(workdir, "corpus.json"), "--quiet"], check=True)
    return h5


def _run(workdir, name, common, extra, workers=0, timeout=900):
    """Runs one configuration; returns (steps/s-derived tokens/s, peak RSS MiB per process)."""
    prefix = os.path.join(workdir, name, "c")
    args = [sys.executable, os.path.join(REPO, "bin", "train"), *common, *extra, "--checkpoint_name", prefix]
    if not workers:
        subprocess.run(args, check=True, capture_output=True, timeout=timeout)
        chief_json = prefix + f"_{common[common.index('--max_iters') + 1]}.json"
        records = [json.load(open(chief_json))]
    else:
        ports = [_free_port() for _ in range(workers)]
        processes = []
        try:
            for i in range(workers):
                tf_config = {"cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
                             "task": {"type": "worker", "index": i}}
                # each worker its own checkpoint name: only the chief writes, the others' records come from the log
                worker_args = args[:-1] + [prefix + f"_w{i}"] if i else args
                processes.append(subprocess.Popen(worker_args, env=dict(
                    os.environ, TF_CONFIG=json.dumps(tf_config)), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                    text=True))
            outputs = [p.communicate(timeout=timeout) for p in processes]
        finally:
            for p in processes:
                if p.poll() is None:
                    p.kill()
        if any(p.returncode for p in processes):
            raise SystemExit(f"{name} failed:\n" + "\n".join(err[-2000:] for _, err in outputs))
        chief_json = prefix + f"_{common[common.index('--max_iters') + 1]}.json"
        records = [json.load(open(chief_json))]
        for out, _ in outputs[1:]:  # the other workers' peaks, from their --memory_benchmark lines
            peaks = [float(line.split()[3]) for line in out.splitlines() if line.startswith("Peak memory use:")]
            records.append({"memory_usage": [max(peaks) * 2**20], "forward_backward_times": []})
    times = records[0]["forward_backward_times"][WARMUP_STEPS:]
    batch, seq = int(common[common.index("--batch_size") + 1]), int(common[common.index("--seq_length") + 1])
    tokens_per_s = batch * seq * len(times) / sum(times)
    return tokens_per_s, [max(r["memory_usage"]) / 2**20 for r in records]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input_h5", default="", help="corpus (default: tiny-shakespeare from ../shared)")
    parser.add_argument("--iters", type=int, default=40)
    parser.add_argument("--batch_size", type=int, default=50)
    parser.add_argument("--rnn_size", type=int, default=128)
    options = parser.parse_args()
    workdir = tempfile.mkdtemp(prefix="kerascharrnn-dist-bench-")
    h5 = options.input_h5 or _corpus(workdir)
    common = ["--input_h5", h5, "--batch_size", str(options.batch_size), "--seq_length", "50", "--rnn_size",
              str(options.rnn_size), "--num_layers", "2", "--max_iters", str(options.iters), "--checkpoint_every", "0",
              "--print_every", "0", "--speed_benchmark", "1", "--memory_benchmark", "1", "--gpu", "-1", "--seed", "1",
              "--fused", "off"]
    configs = [
        ("one_device", [], 0),
        ("mirrored, 1 logical CPU device", ["--strategy", "mirrored", "--cpu_replicas", "1"], 0),
        ("mirrored, 2 logical CPU devices", ["--strategy", "mirrored", "--cpu_replicas", "2"], 0),
        ("multi_worker, 1 worker", ["--strategy", "multi_worker"], 1),
        ("multi_worker, 2 workers", ["--strategy", "multi_worker"], 2),
    ]
    print(f"2x{options.rnn_size} LSTM, global batch {options.batch_size} x 50, {options.iters} iterations"
          f" (first {WARMUP_STEPS} left out), {os.cpu_count()} CPU cores\n")
    print("| configuration | tokens/s | peak RSS per process (MiB) |")
    print("|---|---:|---|")
    for index, (name, extra, workers) in enumerate(configs):
        tokens_per_s, memory = _run(workdir, f"run{index}", common, extra, workers)
        print(f"| {name} | {tokens_per_s:,.0f} | {' + '.join(f'{m:,.0f}' for m in memory)} |", flush=True)


if __name__ == "__main__":
    main()
