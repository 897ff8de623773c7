#!/usr/bin/env python3
"""kill -9 bin/train at random moments, again and again; after every kill the latest complete checkpoint
must load, and the run must finally resume to its end with an unbroken loss history.

    python3 scripts/kill_resume_loop.py --kills 20 --workdir /tmp/killloop

A script, not a test: it takes minutes and its kill times are random (seeded by --seed).
"""

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from kerascharrnn.data import corpus  # noqa: E402
from kerascharrnn.io import checkpoint as ckpt  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--workdir", default="/tmp/kerascharrnn-killloop")
    parser.add_argument("--min_s", type=float, default=4.0, help="earliest kill after start (TF import ~5 s)")
    parser.add_argument("--max_s", type=float, default=14.0)
    parser.add_argument("--max_iters", type=int, default=600)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    os.makedirs(args.workdir, exist_ok=True)
    h5, _ = corpus.corpus_files("stdlib")
    name = os.path.join(args.workdir, "cv", "ck")
    train = [sys.executable, os.path.join(REPO, "bin", "train")]
    fresh = train + ["--input_h5", h5, "--batch_size", "16", "--seq_length", "32", "--rnn_size", "64",
                     "--num_layers", "2", "--dropout", "0.1", "--max_iters", str(args.max_iters),
                     "--checkpoint_every", "15", "--print_every", "0", "--seed", "1", "--checkpoint_name", name]
    outcomes = []
    for k in range(args.kills):
        latest = ckpt.find_latest(name)
        command = train + ["--resume_from", "latest", "--checkpoint_name", name] if latest else fresh
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        delay = rng.uniform(args.min_s, args.max_s)
        time.sleep(delay)
        process.send_signal(signal.SIGKILL)
        process.wait()
        latest = ckpt.find_latest(name)
        verdict = "no checkpoint yet"
        if latest:
            record = ckpt.read_record(latest)
            ckpt.load_keras(record.model_path)
            ckpt.load_state(record.state_path)
            assert len(record.history["train_loss_history"]) == record.iteration, "history has gaps"
            verdict = f"latest {os.path.basename(latest)} loads (iteration {record.iteration})"
        outcomes.append(verdict)
        print(f"kill {k + 1:2d} after {delay:4.1f} s: {verdict}", flush=True)
    final = subprocess.run(train + ["--resume_from", "latest", "--checkpoint_name", name], capture_output=True,
                           text=True)
    latest = ckpt.find_latest(name)
    record = json.load(open(latest))
    ok = final.returncode == 0 and record["iteration"] == args.max_iters == len(record["train_loss_history"])
    loaded = sum(o.startswith("latest") for o in outcomes)
    print(f"{args.kills} kills: {loaded} left a loadable latest checkpoint, {args.kills - loaded} came before the"
          f" first one; final resume {'succeeded' if ok else 'FAILED'}: iteration {record['iteration']},"
          f" {len(record['train_loss_history'])} losses in the history")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
