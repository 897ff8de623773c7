#!/usr/bin/env python3
"""Times one recurrent layer's training step (forward + backward) through each kernel TensorFlow offers
on a CPU, against the fused XLA path of kerascharrnn/training/fused.py and the stock Keras layers.

Paths (one layer, input width = hidden width, the loss a sum of squares of the outputs):
  fused_xla / fused     models/recurrence.py (hoisted input projection, hand-written gradient),
                        compiled with XLA (what bin/train runs) or not
  keras_lstm, keras_gru the Keras layers (tf.function, no XLA)
  BlockLSTMV2           tf.raw_ops.BlockLSTMV2 over the whole sequence (Keras gate order, registered
                        gradient; no XLA kernel exists for it)
Not timed: tf.raw_ops.LSTMBlockCell and GRUBlockCell have no registered gradient in TensorFlow 2
(their *Grad ops exist, but the Python registrations went with tf.contrib), so they cannot train as they are.
Medians of --repeats timed calls after one warm-up call; run it on a quiet machine.

    python3 benchmarks/rnn_kernels.py --sizes 64,128,256,384,512 --batch 50 --steps 50
"""

from __future__ import annotations

import argparse
import time

import keras
import numpy as np
import tensorflow as tf

from kerascharrnn.models.recurrence import CELL_MATH, recurrence


def paths(H, B, T):
    rng = np.random.default_rng(0)
    W = tf.Variable(rng.standard_normal((H, 4 * H)).astype("float32") * 0.05)
    U = tf.Variable(rng.standard_normal((H, 4 * H)).astype("float32") * 0.05)
    b = tf.Variable(np.zeros(4 * H, "float32"))
    zeros = tf.zeros((B, H))
    keras_lstm = keras.layers.LSTM(H, return_sequences=True)
    keras_gru = keras.layers.GRU(H, return_sequences=True)
    keras_lstm.build((B, T, H))
    keras_gru.build((B, T, H))

    def fused(x):
        projected = tf.reshape(tf.matmul(tf.reshape(tf.transpose(x, [1, 0, 2]), [-1, H]), W) + b, [T, B, 4 * H])
        return tf.transpose(recurrence(CELL_MATH["lstm"], projected, (zeros, zeros), U)[0], [1, 0, 2])

    def block_lstm(x):
        outputs = tf.raw_ops.BlockLSTMV2(
            seq_len_max=tf.constant(T, tf.int64), x=tf.transpose(x, [1, 0, 2]), cs_prev=zeros, h_prev=zeros,
            w=tf.concat([W, U], 0), wci=tf.zeros(H), wcf=tf.zeros(H), wco=tf.zeros(H), b=b, cell_clip=-1.0,
            use_peephole=False)
        return outputs[-1]

    lstm_vars = [W, U, b]
    return [("fused_xla", fused, lstm_vars, True), ("fused", fused, lstm_vars, False),
            ("keras_lstm", keras_lstm, keras_lstm.trainable_variables, False),
            ("BlockLSTMV2", block_lstm, lstm_vars, False),
            ("keras_gru", keras_gru, keras_gru.trainable_variables, False)]


def time_path(forward, variables, jit_compile, x, repeats):
    @tf.function(jit_compile=jit_compile)
    def step(x):
        with tf.GradientTape() as tape:
            y = forward(x)
            loss = tf.reduce_sum(y * y)
        return tape.gradient(loss, variables)

    step(x)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        [g.numpy() for g in step(x)]
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="64,128,256,384,512")
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    print("| H | " + " | ".join(name for name, *_ in paths(8, 2, 2)) + " |")
    print("|---" * 6 + "|")
    for H in map(int, args.sizes.split(",")):
        x = tf.constant(np.random.default_rng(1).standard_normal((args.batch, args.steps, H)).astype("float32"))
        row = [f"{time_path(f, v, jit, x, args.repeats) * 1000:.1f}" for _, f, v, jit in paths(H, args.batch, args.steps)]
        print(f"| {H} | " + " | ".join(row) + " |", flush=True)


if __name__ == "__main__":
    main()
