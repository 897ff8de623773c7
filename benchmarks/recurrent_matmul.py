"""Throughput of a recurrent loop's per-step matmul under XLA on this CPU (the bound of the big rows).

    python3 benchmarks/recurrent_matmul.py 25 512      # N, H: 50 steps of h = f((N, H) @ (H, 4H))

Prints the median time of the 50-step loop (10 runs) and GFLOP/s of its matmuls. Run it with and
without XLA_FLAGS to compare XLA's CPU settings (docs/benchmarks.md, round 3).
"""

import sys
import time

import numpy as np
import tensorflow as tf


def main(batch: int, units: int):
    kernel = tf.constant(np.random.default_rng(0).random((units, 4 * units), np.float32) * 0.01)

    @tf.function(jit_compile=True)
    def run(h):
        def body(i, h):
            z = tf.matmul(h, kernel)
            return i + 1, tf.tanh(z[:, :units]) * tf.sigmoid(z[:, units:2 * units])

        return tf.while_loop(lambda i, h: i < 50, body, (0, h))[1]

    h = tf.ones([batch, units])
    run(h)
    times = []
    for _ in range(10):
        started = time.perf_counter()
        run(h).numpy()
        times.append(time.perf_counter() - started)
    median = float(np.median(times))
    print(f"N={batch} H={units}: {median * 1000:.2f} ms per 50 steps, "
          f"{50 * 2 * batch * units * 4 * units / median / 1e9:.1f} GFLOP/s")


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]))
