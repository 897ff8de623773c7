"""Serving without TensorFlow, beside serving with it (not a test): install size, server memory, and the writers'
latency at 1 and 32 writers, for one checkpoint served by the TensorFlow install (bin/serve --checkpoint) and its
export served by the lite install (bin/serve --tflite, pip install 'kerascharrnn[lite]'), on this machine, in one run.

    python3 benchmarks/lite_serving.py --checkpoint cv/default.keras [--lite_python .venv-lite/bin/python]

Exports the checkpoint with --tflite (this interpreter's TensorFlow), then:
- install size: the bytes of every distribution each install pulls in (the requirement closure of kerascharrnn[tf,serve]
  in this interpreter's environment, of kerascharrnn[lite] in the lite one), as pip lays them out;
- for each install: benchmarks/writers_latency.py's loads (3 streamed suggestions of 60 characters after a
  48-character prompt, per writer, --rounds times), with the server's resident memory after its warm-up.
The lite venv is the one scripts/setup_tests.sh makes (.venv-lite/ in the checkout).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Run by each install's interpreter: the bytes of the distributions kerascharrnn[EXTRAS] needs there (pip's own
# vendored `packaging` where the environment has none).
CLOSURE = r"""
import importlib.metadata as md, json, os, re, sys
try:
    from packaging.requirements import Requirement
except ImportError:
    from pip._vendor.packaging.requirements import Requirement
norm = lambda name: re.sub(r"[-_.]+", "-", name).lower()
todo, seen, size = [("kerascharrnn", frozenset(sys.argv[1].split(",")))], set(), 0
while todo:
    name, extras = todo.pop()
    if (norm(name), extras) in seen:
        continue
    first = not any(n == norm(name) for n, _ in seen)
    seen.add((norm(name), extras))
    dist = md.distribution(name)
    if first:
        size += sum(os.path.getsize(f.locate()) for f in dist.files or () if os.path.isfile(f.locate()))
    for line in dist.requires or ():
        req = Requirement(line)
        if req.marker is None or any(req.marker.evaluate({"extra": e}) for e in extras or {""}):
            todo.append((req.name, frozenset(req.extras)))
print(json.dumps({"bytes": size, "distributions": len({n for n, _ in seen})}))
"""


def install_size(python: str, extras: str) -> dict:
    done = subprocess.run([python, "-c", CLOSURE, extras], capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="The model (.keras) to serve both ways.")
    parser.add_argument("--lite_python", default=os.path.join(REPO, ".venv-lite", "bin", "python"),
                        help="The lite install's interpreter (default: the checkout's .venv-lite).")
    parser.add_argument("--writers", default="1,32", help="Numbers of concurrent writers, comma-separated.")
    parser.add_argument("--rounds", type=int, default=10, help="Suggestions each writer asks for, one after another.")
    args = parser.parse_args()
    if not os.access(args.lite_python, os.X_OK):
        parser.error(f"no lite install at {args.lite_python}: run scripts/setup_tests.sh")
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import writers_latency

    counts = [int(c) for c in args.writers.split(",")]
    with tempfile.TemporaryDirectory() as export_dir:
        subprocess.run([sys.executable, os.path.join(REPO, "bin", "export"), "--checkpoint", args.checkpoint,
                        "--export_dir", export_dir, "--model_name", "model", "--tflite"], check=True,
                       stdout=subprocess.DEVNULL)
        tflite = os.path.join(export_dir, "model", "1", "tflite", "model.tflite")
        sizes = {"TensorFlow": install_size(sys.executable, "tf,serve"), "LiteRT": install_size(args.lite_python,
                                                                                              "lite")}
        figures = {"TensorFlow": writers_latency.measure(["--checkpoint", args.checkpoint], counts, args.rounds),
                   "LiteRT": writers_latency.measure(["--tflite", tflite], counts, args.rounds,
                                                     python=args.lite_python)}
        model_bytes = os.path.getsize(tflite)
    print(f"\n{os.path.basename(args.checkpoint)} (model.tflite {model_bytes / 1e6:.1f} MB), {args.rounds} suggestions"
          " per writer; times in ms (first character p50 / p99, whole suggestion p50 / p99)")
    print("| install | size | server memory | " + " | ".join(f"{c} writer(s)" for c in counts) + " |")
    print("|---|---|---|" + "---|" * len(counts))
    for name in ("TensorFlow", "LiteRT"):
        cells = [f"{f[0]:.0f} / {f[1]:.0f}, {f[2]:.0f} / {f[3]:.0f}" + (f" ({f[4]} errors)" if f[4] else "")
                 for f in (figures[name][c] for c in counts)]
        print(f"| {name} ({sizes[name]['distributions']} distributions) | {sizes[name]['bytes'] / 1e6:.0f} MB | "
              f"{figures[name]['memory']:.0f} MiB | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
