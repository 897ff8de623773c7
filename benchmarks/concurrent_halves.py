"""Do two halves of a batch train faster at once than one after the other on this CPU? (the split path)

    python3 benchmarks/concurrent_halves.py 25 512          # N rows per half, H units
    python3 benchmarks/concurrent_halves.py 25 512 --one_intra_op_thread

Times one LSTM recurrence's forward + backward (models/recurrence.py, XLA-compiled, T = 50) for one half,
then for two halves in one tf.function (TensorFlow runs the two XLA computations at once, as
`fused.split_loss_and_grads` does), alternating, and prints the medians. Two at once taking twice one
means the halves gain nothing from the second core (docs/benchmarks.md, round 4).
"""

import argparse
import time

import numpy as np
import tensorflow as tf

from kerascharrnn.models.recurrence import CELL_MATH, recurrence


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("rows", type=int)
    parser.add_argument("units", type=int)
    parser.add_argument("--one_intra_op_thread", action="store_true")
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    if args.one_intra_op_thread:
        tf.config.threading.set_intra_op_parallelism_threads(1)
    rng = np.random.default_rng(0)
    units, steps = args.units, 50
    kernel = tf.Variable(rng.standard_normal((units, 4 * units)).astype("float32") * 0.05)
    zeros = tf.zeros((args.rows, units))

    @tf.function(jit_compile=True)
    def half(projected):
        with tf.GradientTape() as tape:
            tape.watch(projected)
            outputs = recurrence(CELL_MATH["lstm"], projected, (zeros, zeros), kernel)[0]
            loss = tf.reduce_sum(outputs * outputs)
        return tape.gradient(loss, [projected, kernel])

    @tf.function
    def two_halves(first, second):
        return half(first), half(second)

    first, second = (tf.constant(rng.standard_normal((steps, args.rows, 4 * units)).astype("float32"))
                     for _ in range(2))
    calls = {"one half": lambda: half(first), "two halves at once": lambda: two_halves(first, second)}
    times = {name: [] for name in calls}
    for _ in range(args.repeats + 1):
        for name, call in calls.items():
            started = time.perf_counter()
            tf.nest.map_structure(lambda t: t.numpy(), call())
            times[name].append(time.perf_counter() - started)
    for name, values in times.items():
        print(f"N={args.rows} H={units} {name}: {1000 * np.median(values[1:]):.1f} ms")


if __name__ == "__main__":
    main()
