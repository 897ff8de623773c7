"""A writer's own small text: from scratch beside fine-tuned from a base model (not a test).

    python3 benchmarks/fine_tune.py --base cv/base_best.json --target mine.txt --work /tmp/ft \
        --sizes 100000 300000 --minutes 5 15 --seeds 1 2 3

For each size, the first SIZE characters of --target become a corpus of their own (`bin/preprocess
--val_frac 0.1 --test_frac 0.1`: the test split is the slice's last 10%). On each, for each budget and seed,
one after the other (time only a quiet machine):
  scratch    bin/train --preset auto --max_minutes M --seed S
  fine-tune  bin/train --preset auto --max_minutes M --seed S --init_from BASE
then `bin/eval --split test` on each run's best checkpoint (NAME_best.json: the lowest val loss), on its own
slice's last 10% and on one text every run is scored on: the largest slice's last 10%, which no run trained
on (the smaller slices are its beginning), under each model's own vocabulary (a character it lacks is left
out, and counted). Prints a
markdown table (test loss per side, mean and spread over the seeds, iterations, and the base itself on the
test split before any fine-tune), writes every figure to WORK/results.jsonl (a rerun skips what is there, so
a long grid can be run in parts) and a sample of each side after one prompt to WORK/samples.md.
--shuffle_records SEP first shuffles --target's records (e.g. "\\n%\\n" for a fortune file) with a fixed
seed, so that a slice is a mixture rather than one topic.
"""

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time

import h5py
import numpy as np

from kerascharrnn.io import checkpoint as ckpt

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIDES = ("scratch", "fine-tune")


def tool(name, *args, timeout=None):
    """Runs bin/NAME; returns its stdout (stderr shown on failure)."""
    done = subprocess.run([sys.executable, os.path.join(REPO, "bin", name), *map(str, args)], capture_output=True,
                          text=True, timeout=timeout)
    if done.returncode != 0:
        sys.exit(f"bin/{name} {' '.join(map(str, args))} failed:\n{done.stderr[-3000:]}")
    return done.stdout


def test_loss(checkpoint, h5):
    return float(tool("eval", "--checkpoint", checkpoint, "--input_h5", h5, "--split", "test")
                 .split("test loss: ")[1].split()[0])


def test_text(h5):
    """The text of a slice's test split (its last characters, as bin/preprocess split it)."""
    with open(h5[:-3] + ".txt", encoding="utf-8") as f:
        text = f.read()
    with h5py.File(h5, "r") as f:
        return text[len(text) - len(f["test"]):]


def common_test_loss(checkpoint, text, work):
    """(test loss on `text` under the checkpoint's vocabulary, characters of `text` it lacks, left out)."""
    vocab = ckpt.read_vocab(ckpt.model_path_for(checkpoint))
    ids, _ = vocab.encode_known(text)
    os.makedirs(work, exist_ok=True)
    stem = os.path.join(work, "common_" + os.path.splitext(os.path.basename(checkpoint))[0])
    with h5py.File(stem + ".h5", "w") as f:  # every split the same text: only "test" is read
        for split in ("train", "val", "test"):
            f.create_dataset(split, data=(ids + 1).astype(np.uint8 if vocab.size <= 255 else np.uint32))
    with open(stem + ".json", "w", encoding="utf-8") as f:
        f.write(vocab.to_json())
    return test_loss(checkpoint, stem + ".h5"), len(vocab.to_units(text)) - len(ids)


def prepared_slices(target, sizes, work, separator):
    with open(target, encoding="utf-8") as f:
        text = f.read()
    if separator:
        records = text.split(separator)
        random.Random(0).shuffle(records)
        text = separator.join(records)
    slices = {}
    for size in sizes:
        if size > len(text):
            sys.exit(f"--target has {len(text):,} characters, fewer than the slice of {size:,}")
        stem = os.path.join(work, f"slice{size}")
        if not os.path.exists(stem + ".h5"):
            with open(stem + ".txt", "w", encoding="utf-8") as f:
                f.write(text[:size])
            tool("preprocess", "--input_txt", stem + ".txt", "--output_h5", stem + ".h5", "--output_json",
                 stem + ".json", "--val_frac", 0.1, "--test_frac", 0.1, "--quiet")
        slices[size] = stem + ".h5"
    return slices


def run_one(side, h5, minutes, seed, base, work):
    name = os.path.join(work, "cv", f"{os.path.basename(h5)[:-3]}_{minutes:g}min_s{seed}_{side}")
    args = ["--input_h5", h5, "--preset", "auto", "--max_minutes", minutes, "--seed", seed, "--checkpoint_name",
            name, "--print_every", 0] + (["--init_from", base] if side == "fine-tune" else [])
    started = time.perf_counter()
    log = tool("train", *args)
    wall = time.perf_counter() - started
    with open(name + "_best.json", encoding="utf-8") as f:
        best = json.load(f)
    plan = next((line for line in log.splitlines() if line.startswith("--preset auto")), "")
    return {"side": side, "size": int(os.path.basename(h5)[5:-3]), "minutes": minutes, "seed": seed,
            "test": test_loss(name + "_best.json", h5), "best_val": best["best_val_loss"],
            "best_iteration": best["iteration"], "last_iteration": int(log.split("Done: iteration ")[1].split(",")[0]),
            "stopped_early": "Early stopping" in log, "wall_s": round(wall, 1), "plan": plan,
            "checkpoint": name + "_best.json"}


def sample(checkpoint, prompt):
    return tool("sample", "--checkpoint", checkpoint, "--start_text", prompt, "--length", 400, "--temperature", 0.8,
                "--seed", 1)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", required=True, help="the base model: a checkpoint .json/.keras or a .t7")
    parser.add_argument("--target", required=True, help="the writer's text (UTF-8)")
    parser.add_argument("--work", required=True)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 300_000])
    parser.add_argument("--minutes", type=float, nargs="+", default=[5, 15])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--sides", nargs="+", default=list(SIDES), choices=SIDES)
    parser.add_argument("--shuffle_records", default="", help="a record separator to shuffle --target by")
    args = parser.parse_args()
    os.makedirs(os.path.join(args.work, "cv"), exist_ok=True)
    slices = prepared_slices(args.target, args.sizes, args.work, args.shuffle_records.encode().decode("unicode_escape"))
    results_path = os.path.join(args.work, "results.jsonl")
    done = []
    if os.path.exists(results_path):
        with open(results_path, encoding="utf-8") as f:
            done = [json.loads(line) for line in f if line.strip()]
    for size, h5 in slices.items():
        for minutes in args.minutes:
            for seed in args.seeds:
                for side in args.sides:
                    key = (side, size, minutes, seed)
                    if any((r["side"], r["size"], r["minutes"], r["seed"]) == key for r in done):
                        continue
                    result = run_one(side, h5, minutes, seed, args.base, args.work)
                    print(json.dumps({k: v for k, v in result.items() if k != "plan"}), flush=True)
                    done.append(result)
                    with open(results_path, "a", encoding="utf-8") as f:
                        f.write(json.dumps(result) + "\n")
    tests = {size: test_text(h5) for size, h5 in slices.items()}
    # the base has its own vocabulary: scored as the common text is, its missing characters left out
    base_test = {size: common_test_loss(args.base, tests[size], os.path.join(args.work, f"base{size}"))[0]
                 for size in slices}
    common = tests[max(slices)]
    for r in done:
        if "common_test" not in r:
            r["common_test"], r["left_out"] = common_test_loss(r["checkpoint"], common, args.work)
    base_common = common_test_loss(args.base, common, args.work)[0]
    print(f"\nCPU: {cpu_name()}; base {args.base}; test loss = bin/eval --split test on each run's _best\n")
    print("| text | budget | scratch test (mean, seeds) | fine-tuned test (mean, seeds) | base alone |"
          f" on the common text ({len(common):,} characters): scratch / fine-tuned (base {base_common:.3f}) |"
          " iterations scratch / fine-tune (best at) |")
    print("|---|---|---|---|---|---|---|")
    for size in slices:
        for minutes in args.minutes:
            cell = {}
            for side in SIDES:
                rows = [r for r in done if (r["side"], r["size"], r["minutes"]) == (side, size, minutes)]
                tests = [r["test"] for r in rows]
                commons = [r["common_test"] for r in rows]
                left_out = max((r["left_out"] for r in rows), default=0)
                cell[side] = ((f"**{statistics.mean(tests):.3f}** ({' / '.join(f'{t:.3f}' for t in tests)})"
                               if tests else "-"),
                              " ".join(f"{r['last_iteration']} ({r['best_iteration']})" for r in rows) or "-",
                              f"{statistics.mean(commons):.3f}" + (f" ({left_out} left out)" if left_out else "")
                              if commons else "-")
            print(f"| {size // 1000} KB | {minutes:g} min | {cell['scratch'][0]} | {cell['fine-tune'][0]} |"
                  f" {base_test[size]:.3f} | {cell['scratch'][2]} / {cell['fine-tune'][2]} |"
                  f" {cell['scratch'][1]} / {cell['fine-tune'][1]} |")
    with open(os.path.join(args.work, "samples.md"), "w", encoding="utf-8") as out:
        for size, h5 in slices.items():
            with open(h5[:-3] + ".txt", encoding="utf-8") as f:
                text = f.read()
            prompt = text[int(len(text) * 0.9):][:40]  # the test split's first characters
            for minutes in args.minutes:
                out.write(f"## {size // 1000} KB, {minutes:g} minutes, seed {args.seeds[0]}, prompt {prompt!r}\n\n")
                for side in SIDES:
                    rows = [r for r in done if (r["side"], r["size"], r["minutes"], r["seed"]) ==
                            (side, size, minutes, args.seeds[0])]
                    if rows:
                        text = sample(rows[0]["checkpoint"], prompt)
                        out.write(f"### {side} (test {rows[0]['test']:.3f})\n\n```\n{text}\n```\n\n")
    print(f"\nsamples: {os.path.join(args.work, 'samples.md')}")


def cpu_name():
    with open("/proc/cpuinfo") as f:
        info = f.read()
    name = next(line.split(": ", 1)[1] for line in info.splitlines() if line.startswith("model name"))
    flags = [f for f in ("avx2", "avx512f") if f" {f} " in info]
    return f"{name}, {os.cpu_count()} cores, {'+'.join(flags)}"


if __name__ == "__main__":
    main()
