"""bin/benchmark: torch-rnn's speed benchmark, with a PyTorch peer measured in the same run.

--what train: the median train-step time (B=50, T=50, after warm-up; with its quartiles) of 1/2/3-layer x
    64/128/256/512 models on tiny-shakespeare, each configuration in a subprocess of its own, ours and
    (with --peer torch) PyTorch's nn.LSTM/GRU/RNN, --repeats times, the two frameworks alternating row by
    row (and which goes first alternating too) so that drift on the machine hits both; the ratio per row is
    peer median / our median (> 1: we are faster). One table per --model_type.
--what calibrate: our two CPU training paths (fused and the Keras layers) on the same grid; the times are
    recorded for this machine, and `bin/train --fused auto` follows them (calibration.py).
--what sample: chars/s of a 2x128 LSTM at batch 1 and 50, from a checkpoint (bin/sample's compiled
    path), the SavedModel `generate` signature (no XLA, as TF Serving runs it by default, and exported with
    --xla) and the TFLite file (its `steps` signature).
--what preprocess: MB/s and peak RSS of the whole bin/preprocess process (`python -m
    kerascharrnn.cli.preprocess`) on a generated file.
"""

import dataclasses
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional

from kerascharrnn.io import files


@dataclasses.dataclass
class Timing:
    """One framework's runs of one configuration: step times pooled over the repeats, worst memory."""

    runs: List[dict]

    def _times(self):
        return [t for run in self.runs for t in run["times_ms"]]

    def percentile(self, q: float) -> float:
        times = sorted(self._times())
        position = q / 100 * (len(times) - 1)
        low = math.floor(position)
        high = min(low + 1, len(times) - 1)
        return times[low] + (times[high] - times[low]) * (position - low)

    @property
    def median_ms(self) -> float:
        return self.percentile(50)

    @property
    def tokens_per_s(self) -> float:
        return self.runs[0]["tokens_per_step"] / self.median_ms * 1000

    def memory(self) -> dict:
        return {key: max(run[key] for run in self.runs) if self.runs[0].get(key) is not None else None
                for key in ("peak_growth_mb", "steady_growth_mb", "gpu_peak_mb")}

    def cell(self) -> str:
        return f"{self.median_ms:.1f} [{self.percentile(25):.1f}–{self.percentile(75):.1f}]"


@dataclasses.dataclass
class Row:
    num_layers: int
    rnn_size: int
    ours: Timing
    peer: Optional[Timing] = None

    @property
    def ratio(self) -> Optional[float]:
        return self.peer.median_ms / self.ours.median_ms if self.peer else None


def parse_grid(text: str) -> List[tuple]:
    """'1x64,2x128' -> [(1, 64), (2, 128)]; 'torch-rnn' -> the 12-row grid."""
    if text == "torch-rnn":
        return [(layers, size) for layers in (1, 2, 3) for size in (64, 128, 256, 512)]
    return [tuple(int(v) for v in item.split("x")) for item in text.split(",") if item]


def measure(framework: str, config: dict) -> dict:
    """One configuration in a fresh process (so memory is per framework and per run)."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run([sys.executable, "-m", "kerascharrnn.speed.worker", framework, json.dumps(config)],
                            capture_output=True, text=True, env=env)
    lines = [l for l in result.stdout.splitlines() if l.startswith("{")]
    if result.returncode != 0 or not lines:
        raise RuntimeError(f"{framework} worker failed for {config}:\n{result.stderr[-2000:]}")
    return json.loads(lines[-1])


def train_table(rows: List[Row], model_type: str) -> str:
    has_peer = any(r.peer for r in rows)
    header = ["model", "ours ms/step median [quartiles]", "ours tokens/s", "ours peak MB (steady)"]
    if has_peer:
        header += ["PyTorch ms/step median [quartiles]", "PyTorch peak MB (steady)", "speed ratio (PyTorch / ours)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        cells = [f"{r.num_layers} x {r.rnn_size} {model_type}", r.ours.cell(), f"{r.ours.tokens_per_s:,.0f}",
                 _memory(r.ours)]
        if has_peer:
            cells += [r.peer.cell(), _memory(r.peer), f"{r.ratio:.2f}x"]
        lines.append("| " + " | ".join(cells) + " |")
    if has_peer:
        geomean = math.exp(sum(math.log(r.ratio) for r in rows) / len(rows))
        lines.append(f"\nGeometric mean speed ratio (PyTorch time / ours): {geomean:.2f}x; lowest row"
                     f" {min(r.ratio for r in rows):.2f}x.")
    lines.append("\nPeak MB: peak RSS growth above the idle framework (after its import) over the whole run,"
                 " warm-up (tracing, XLA compilation) included; in brackets, over the timed steps only.")
    return "\n".join(lines)


def _memory(timing: Timing) -> str:
    result = timing.memory()
    text = f"{result['peak_growth_mb']:.0f} ({result['steady_growth_mb']:.0f})"
    if result.get("gpu_peak_mb") is not None:
        text += f", GPU {result['gpu_peak_mb']:.0f}"
    return text


def plot(rows: List[Row], path: str, model_type: str) -> None:
    """torch-rnn's figure: time per step against hidden size, one line per layer count; speed-up panel."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    has_peer = any(r.peer for r in rows)
    fig, axes = plt.subplots(1, 2 if has_peer else 1, figsize=(11 if has_peer else 6, 4.2), squeeze=False)
    for layers in sorted({r.num_layers for r in rows}):
        chosen = [r for r in rows if r.num_layers == layers]
        sizes = [r.rnn_size for r in chosen]
        line, = axes[0][0].plot(sizes, [r.ours.median_ms for r in chosen], "o-",
                                label=f"kerascharrnn {layers} layer(s)")
        if has_peer:
            axes[0][0].plot(sizes, [r.peer.median_ms for r in chosen], "s--", color=line.get_color(),
                            label=f"PyTorch {layers} layer(s)")
            axes[0][1].plot(sizes, [r.ratio for r in chosen], "o-", label=f"{layers} layer(s)")
    axes[0][0].set(xscale="log", yscale="log", xlabel="rnn_size", ylabel="ms per train step (B=50, T=50)",
                   title=f"{model_type.upper()} train step")
    axes[0][0].legend(fontsize=7)
    if has_peer:
        axes[0][1].axhline(1.0, color="gray", lw=0.8)
        axes[0][1].set(xscale="log", xlabel="rnn_size", ylabel="PyTorch time / ours", title="speed-up vs PyTorch")
        axes[0][1].legend(fontsize=7)
    fig.tight_layout()
    with files.atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110)


def measure_row(config: dict, peer: bool, repeats: int, first: int) -> tuple:
    """Our runs and the peer's of one configuration, alternating (which goes first alternates too)."""
    frameworks = ["tf", "torch"] if peer else ["tf"]
    runs = {name: [] for name in frameworks}
    for repeat in range(repeats):
        order = frameworks if (repeat + first) % 2 == 0 else frameworks[::-1]
        for name in order:
            runs[name].append(measure(name, config))
    return Timing(runs["tf"]), Timing(runs["torch"]) if peer else None


def run_train(args) -> str:
    from kerascharrnn.data import corpus

    h5 = args.input_h5 or corpus.corpus_files(args.corpus)[0]
    tables = []
    for model_type in args.model_type:
        rows = []
        for index, (layers, size) in enumerate(parse_grid(args.grid)):
            config = {"h5": h5, "model_type": model_type, "num_layers": layers, "rnn_size": size,
                      "batch_size": args.batch_size, "seq_length": args.seq_length, "iters": args.iters,
                      "warmup": args.warmup, "fused": args.fused}
            row = Row(layers, size, *measure_row(config, args.peer == "torch", args.repeats, index))
            rows.append(row)
            ratio = f", PyTorch {row.peer.median_ms:.1f} ms, ratio {row.ratio:.2f}x" if row.peer else ""
            print(f"{layers} x {size} {model_type}: ours {row.ours.median_ms:.1f} ms{ratio}", file=sys.stderr,
                  flush=True)
        tables.append(train_table(rows, model_type))
        if args.output_png:
            stem, ext = os.path.splitext(args.output_png)
            plot(rows, args.output_png if len(args.model_type) == 1 else f"{stem}_{model_type}{ext}", model_type)
    return "\n\n".join(tables)


def run_calibrate(args) -> str:
    """Times our two CPU training paths (fused and the Keras layers) on every grid row, alternating, and
    records them in this machine's calibration file (calibration.py), which `--fused auto` then follows."""
    from kerascharrnn import resources
    from kerascharrnn.data import corpus
    from kerascharrnn.training import calibration

    h5 = args.input_h5 or corpus.corpus_files(args.corpus)[0]
    # the fused form --fused auto would take for these (plain) models on this machine
    fused_path = "split" if args.batch_size >= 2 and resources.cpu_cores() >= 2 else "on"
    lines = [f"| model | fused ({fused_path}) ms/step median [quartiles] | Keras ms/step median [quartiles] |"
             " auto takes |", "|---|---|---|---|"]
    rows = []
    for model_type in args.model_type:
        for index, (layers, size) in enumerate(parse_grid(args.grid)):
            config = {"h5": h5, "model_type": model_type, "num_layers": layers, "rnn_size": size,
                      "batch_size": args.batch_size, "seq_length": args.seq_length, "iters": args.iters,
                      "warmup": args.warmup}
            runs = {fused_path: [], "off": []}
            for repeat in range(args.repeats):
                for setting in (fused_path, "off") if (repeat + index) % 2 == 0 else ("off", fused_path):
                    runs[setting].append(measure("tf", dict(config, fused=setting)))
            fused, keras = Timing(runs[fused_path]), Timing(runs["off"])
            rows.append({"kind": model_type, "fused_path": fused_path, "num_layers": layers, "rnn_size": size,
                         "fused_ms": round(fused.median_ms, 3), "keras_ms": round(keras.median_ms, 3)})
            winner = "fused" if fused.median_ms < keras.median_ms else "Keras"
            lines.append(f"| {layers} x {size} {model_type} | {fused.cell()} | {keras.cell()} | {winner} |")
            print(f"{layers} x {size} {model_type}: fused {fused.median_ms:.1f} ms, Keras {keras.median_ms:.1f} ms",
                  file=sys.stderr, flush=True)
    path = calibration.record(rows)
    lines.append(f"\nRecorded for this machine in {path}: `bin/train --fused auto` now takes the path measured"
                 " faster at the nearest rnn_size of the same kind.")
    return "\n".join(lines)


def _chars_per_second(generate, batch: int, length: int) -> float:
    generate(batch, 64)  # compile / warm up at this batch size
    started = time.perf_counter()
    generate(batch, length)
    return batch * length / (time.perf_counter() - started)


def run_sample(args) -> str:
    import tensorflow as tf

    from kerascharrnn.config import ModelConfig
    from kerascharrnn.inference import engines
    from kerascharrnn.models.charrnn import CharRNN
    from kerascharrnn.export import saved_model as export
    from kerascharrnn.vocab import Vocabulary

    if args.checkpoint:
        charrnn = CharRNN.from_checkpoint(args.checkpoint)
    else:  # speed does not depend on the weights: a fresh 2x128 LSTM over a 65-character vocabulary
        vocab = Vocabulary(tuple(chr(c) for c in range(32, 97)))
        charrnn = CharRNN.build(ModelConfig(vocab_size=vocab.size), vocab, 1)
    vocab = charrnn.vocab
    prompt = vocab.encode(vocab.tokens[0])
    keras_engine = engines.charrnn_engine(charrnn)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        export.export(charrnn, os.path.join(tmp, "1"), source="benchmark", tflite=True)
        export.export(charrnn, os.path.join(tmp, "2"), source="benchmark", xla=True)
        tflite_engine = engines.tflite_engine(os.path.join(tmp, "1", "tflite", "model.tflite"), vocab)

        def saved_model(version):
            signature = tf.saved_model.load(os.path.join(tmp, version)).signatures["generate"]

            def generate(batch, length):
                signature(start_text=tf.constant([vocab.tokens[0]] * batch), num_new_chars=tf.constant(length),
                          temperature=tf.constant([1.0]), top_k=tf.constant(0), seed=tf.constant(1, tf.int64))

            return generate

        candidates = [("checkpoint (bin/sample, XLA)", lambda b, n: keras_engine.sample_ids([prompt] * b, n, seed=1)),
                      ("SavedModel `generate` (no XLA)", saved_model("1")),
                      ("SavedModel `generate`, `bin/export --xla`", saved_model("2")),
                      (f"TFLite `steps` ({export.TFLITE_STEPS} characters per call)",
                       lambda b, n: tflite_engine.sample_ids([prompt] * b, n, seed=1))]
        for name, fn in candidates:
            rows.append((name, _chars_per_second(fn, 1, args.sample_length),
                         _chars_per_second(fn, 50, max(args.sample_length // 10, 100))))
    lines = ["| engine (2 x 128 LSTM) | chars/s, batch 1 | chars/s in total, batch 50 |", "|---|---|---|"]
    lines += [f"| {name} | {b1:,.0f} | {b50:,.0f} |" for name, b1, b50 in rows]
    return "\n".join(lines)


_TIMED_RUN = """
import json, os, subprocess, sys, time
started = time.perf_counter()
process = subprocess.Popen(json.loads(sys.argv[1]))
_, status, usage = os.wait4(process.pid, 0)
if os.waitstatus_to_exitcode(status):
    sys.exit(1)
print(json.dumps([time.perf_counter() - started, usage.ru_maxrss]))
"""


def run_preprocess(args) -> str:
    from kerascharrnn.data import corpus

    source = corpus.tiny_shakespeare_text() if args.corpus == "tiny_shakespeare" else corpus.stdlib_text_path()
    with open(source, "rb") as f:
        unit = f.read()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for megabytes in args.preprocess_mb:
            path = os.path.join(tmp, f"corpus_{megabytes}mb.txt")
            with open(path, "wb") as f:
                written = 0
                while written < megabytes * 2**20:
                    piece = unit[:megabytes * 2**20 - written]
                    f.write(piece)
                    written += len(piece)
            command = [sys.executable, "-m", "kerascharrnn.cli.preprocess", "--input_txt", path,
                       "--output_h5", path + ".h5", "--output_json", path + ".json", "--quiet"]
            # Timed from a small launcher: a child forked from this (TensorFlow-sized) process would
            # report this process's pages in its peak RSS.
            result = subprocess.run([sys.executable, "-c", _TIMED_RUN, json.dumps(command)], capture_output=True,
                                    text=True)
            if result.returncode != 0:
                raise RuntimeError(f"bin/preprocess failed on {path}: {result.stderr[-1000:]}")
            seconds, peak_kb = json.loads(result.stdout)
            rows.append((megabytes, seconds, written / 2**20 / seconds, peak_kb / 1024))
            os.remove(path)
    lines = ["| file | wall s (whole process) | MB/s | peak RSS MB |", "|---|---|---|---|"]
    lines += [f"| {mb} MB | {s:.2f} | {rate:.1f} | {rss:.0f} |" for mb, s, rate, rss in rows]
    return "\n".join(lines)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} CPUs, Python {platform.python_version()}"


def run(args) -> Dict[str, str]:
    sections = {"train": run_train, "calibrate": run_calibrate, "sample": run_sample, "preprocess": run_preprocess}
    return {what: sections[what](args) for what in args.what}
