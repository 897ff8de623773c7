#!/usr/bin/env python3
"""Where a CPU train step's time goes (fused LSTM path under XLA): an ablation profile.

    python3 scripts/profile_train_step.py --layers 2 --rnn_size 128

Times, each as its own XLA-compiled function on the same shapes (B=50, T=50): the whole train step;
forward + loss only; the LSTM recurrences alone (forward, then forward + backward); and a bare loop of
the per-step recurrent matmuls, the sequential core no implementation can batch away.
"""

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import tensorflow as tf  # noqa: E402

from kerascharrnn.config import ModelConfig, TrainConfig  # noqa: E402
from kerascharrnn.data import batches  # noqa: E402
from kerascharrnn.models import recurrence  # noqa: E402
from kerascharrnn.models.charrnn import CharRNN  # noqa: E402
from kerascharrnn.training import fused, trainer  # noqa: E402
from kerascharrnn.vocab import Vocabulary  # noqa: E402


def timed(fn, *args, repeats=30):
    for _ in range(3):
        fn(*args)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        tf.nest.map_structure(lambda t: t.numpy(), fn(*args))
        times.append(time.perf_counter() - started)
    return 1000 * float(np.median(times))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--rnn_size", type=int, default=128)
    args = parser.parse_args()
    B, T, H, L = 50, 50, args.rnn_size, args.layers
    config = ModelConfig(vocab_size=65, num_layers=L, rnn_size=H)
    charrnn = CharRNN.build(config, Vocabulary(tuple(chr(32 + i) for i in range(65))), B)
    model = charrnn.model
    one_device = trainer.Trainer(TrainConfig(batch_size=B, seq_length=T, fused="on"), charrnn,
                                 {"train": batches.StreamLayout(B, B, T, 1000)})
    rng = np.random.default_rng(0)
    x = rng.integers(0, 65, (B, T)).astype(np.int32)
    y = rng.integers(0, 65, (B, T)).astype(np.int32)
    loss_fn = one_device._loss

    forward_loss = tf.function(lambda x, y: loss_fn(y, fused.forward(model, x)), jit_compile=True)
    # distinct inputs per layer, so that XLA cannot merge the layers' identical computations
    projected = [tf.constant(rng.standard_normal((T, B, 4 * H)).astype(np.float32)) for _ in range(L)]  # time-major
    zeros = tf.zeros([B, H])
    kernels = [tf.Variable(rng.standard_normal((H, 4 * H)).astype(np.float32) * 0.05) for _ in range(L)]

    @tf.function(jit_compile=True)
    def recurrences_forward():
        return [recurrence.recurrence(recurrence.CELL_MATH["lstm"], p, (zeros, zeros), k)[0] for p, k in zip(projected, kernels)]

    @tf.function(jit_compile=True)
    def recurrences_forward_backward():
        with tf.GradientTape() as tape:
            tape.watch(projected)
            total = tf.add_n([tf.reduce_sum(recurrence.recurrence(recurrence.CELL_MATH["lstm"], p, (zeros, zeros), k)[0])
                              for p, k in zip(projected, kernels)])
        return tape.gradient(total, projected + kernels)

    @tf.function(jit_compile=True)
    def bare_matmul_loop():
        def step(h, _, kernel):
            return tf.tanh(tf.matmul(h, kernel)[:, :H])
        # 2 T per layer: the forward and the backward pass each do one such matmul per step
        return [tf.scan(lambda h, x, k=k: step(h, x, k), tf.zeros([2 * T]), initializer=zeros) for k in kernels]

    rows = [("whole train step (fused, XLA)", timed(one_device.train_step, x, y)),
            ("forward + loss only", timed(forward_loss, x, y)),
            (f"{L} LSTM recurrence(s), forward", timed(recurrences_forward)),
            (f"{L} LSTM recurrence(s), forward + backward", timed(recurrences_forward_backward)),
            (f"bare loop: {2 * T * L} sequential ({B}x{H})@({H}x{4 * H}) matmuls", timed(bare_matmul_loop))]
    rows_trace = trace_breakdown(one_device, x, y)
    flops = 2 * B * H * 4 * H * 2 * T * L
    print(f"{L} x {H} LSTM, B={B}, T={T}, {os.cpu_count()} CPUs")
    print("| part | ms |\n|---|---|")
    for name, ms in rows:
        print(f"| {name} | {ms:.1f} |")
    print(f"The bare loop does {flops / 1e9:.2f} GFLOP: {flops / rows[-1][1] / 1e6:.1f} GFLOP/s.")
    print("\nTF profiler trace of the whole step (XLA CPU runtime; ms per step, summed over threads):")
    print("| where | ms |\n|---|---|")
    for name, ms in rows_trace:
        print(f"| {name} | {ms:.1f} |")


def trace_breakdown(one_device, x, y, steps=10):
    """Kernel time by kind vs the XLA runtime's own time (ThunkExecutor), from a TF profiler trace."""
    import collections
    import glob
    import tempfile

    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    logdir = tempfile.mkdtemp()
    tf.profiler.experimental.start(logdir)
    for _ in range(steps):
        float(one_device.train_step(x, y))
    tf.profiler.experimental.stop()
    space = xplane_pb2.XSpace()
    with open(glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True)[-1], "rb") as f:
        space.ParseFromString(f.read())
    totals = collections.Counter()
    for plane in space.planes:
        for line in plane.lines:
            if "Eigen" not in line.name:  # the XLA runtime's worker threads
                continue
            for event in line.events:
                name = plane.event_metadata[event.metadata_id].name
                if name.startswith("ThunkExecutor::Execute"):
                    kind = "runtime: ThunkExecutor::Execute (includes the kernels below)"
                elif name.startswith("MatMul"):
                    kind = "kernels: matmuls"
                elif "fusion" in name or name.startswith(("concat", "wrapped", "copy")):
                    kind = "kernels: elementwise fusions, copies"
                elif "Await" in name:
                    kind = "runtime: thread-pool waits"
                else:
                    kind = "kernels: other"
                totals[kind] += event.duration_ps / 1e9 / steps
    return sorted(totals.items())


if __name__ == "__main__":
    main()
