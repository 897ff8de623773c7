"""Issue 25, item 3: does a recurrent layer that trains like a transformer beat the LSTM recipe here?

    python3 benchmarks/mingru_trial.py ts.h5 --minutes 15 --layers 4 --width 384 [--seed 1]

A minGRU language model (Feng et al. 2024, "Were RNNs All We Needed?", their language-model block): each
layer is `x + minGRU(LayerNorm(x))` then `x + MLP(LayerNorm(x))`, where minGRU's gate and candidate depend
on the layer's input only (z = sigmoid(W_z x), h~ = W_h x, h_t = (1 - z_t) h_{t-1} + z_t h~_t), so training
runs its matmuls over all B x T positions at once and the recurrence is an elementwise scan (here a
Hillis-Steele scan, log2(T) rounds). Trained as the budgeted preset trains the LSTM: streams carried across
windows (truncated BPTT), B 32, T 100, the preset's AdamW, clipping and schedule (training/schedule.py:
warm-up 100, then a cosine 3e-3 -> 1e-4 whose end is fitted to the budget from the speed of iterations
10-60), dropout 0.1; the best validation is kept and scored on the test split as one stream, every
position (what bin/eval --split test reports).

A trial, not a model kind: docs/quality.md (round 5) records what it measured and why it was not kept.
"""

import argparse
import dataclasses
import sys
import time

import h5py
import keras
import numpy as np
import tensorflow as tf

from kerascharrnn.config import TrainConfig
from kerascharrnn.presets import PRESETS
from kerascharrnn.training.schedule import TrainingSchedule


def scan(decay, inputs, state):
    """h_t = decay_t * h_{t-1} + inputs_t over axis 1 from `state` (B, H), in log2(T) rounds."""
    length = decay.shape[1]
    shift = 1
    while shift < length:
        pad = [[0, 0], [shift, 0], [0, 0]]
        inputs = inputs + decay * tf.pad(inputs[:, :-shift], pad)
        decay = decay * tf.pad(decay[:, :-shift], pad, constant_values=1.0)
        shift *= 2
    return decay * state[:, None, :] + inputs


class MinGRULM(keras.Model):
    def __init__(self, vocab_size, width, layers, mlp_ratio, dropout):
        super().__init__()
        self.embed = keras.layers.Embedding(vocab_size, width)
        self.gru_norms = [keras.layers.LayerNormalization() for _ in range(layers)]
        self.gates = [keras.layers.Dense(2 * width) for _ in range(layers)]
        self.mlp_norms = [keras.layers.LayerNormalization() for _ in range(layers)]
        self.ups = [keras.layers.Dense(mlp_ratio * width, activation="gelu") for _ in range(layers)]
        self.downs = [keras.layers.Dense(width) for _ in range(layers)]
        self.drop = keras.layers.Dropout(dropout)
        self.out_norm = keras.layers.LayerNormalization()
        self.head = keras.layers.Dense(vocab_size)

    def call(self, ids, states, training=False):
        x = self.drop(self.embed(ids), training=training)
        final = []
        for norm, gate, mlp_norm, up, down, state in zip(self.gru_norms, self.gates, self.mlp_norms, self.ups,
                                                          self.downs, tf.unstack(states)):
            z, candidate = tf.split(gate(norm(x)), 2, axis=-1)
            z = tf.sigmoid(z)
            h = scan(1.0 - z, z * candidate, state)
            final.append(h[:, -1])
            x = x + self.drop(h, training=training)
            x = x + self.drop(down(up(mlp_norm(x))), training=training)
        return self.head(self.out_norm(x)), tf.stack(final)


def streams(data, batch, length):
    """torch-rnn's layout: `batch` contiguous streams, windows of `length` (inputs, next-character targets)."""
    per_stream = (len(data) - 1) // batch // length * length
    x = data[:batch * per_stream].reshape(batch, per_stream)
    y = data[1:batch * per_stream + 1].reshape(batch, per_stream)
    return [(x[:, i:i + length], y[:, i:i + length]) for i in range(0, per_stream, length)]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("input_h5")
    parser.add_argument("--minutes", type=float, default=15)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--width", type=int, default=384)
    parser.add_argument("--mlp_ratio", type=int, default=2)
    parser.add_argument("--dropout", type=float, default=0.1)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--seq_length", type=int, default=100)
    parser.add_argument("--checkpoints", type=int, default=6)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--xla", type=int, default=1, help="1: compile the steps with XLA; 0: TensorFlow's graph")
    args = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)  # progress shows in a log file as it happens
    started = time.perf_counter()
    keras.utils.set_random_seed(args.seed)
    with h5py.File(args.input_h5, "r") as f:
        splits = {name: f[name][:].astype(np.int32) - 1 for name in ("train", "val", "test")}
    vocab_size = int(max(s.max() for s in splits.values())) + 1
    model = MinGRULM(vocab_size, args.width, args.layers, args.mlp_ratio, args.dropout)
    zeros = lambda b: tf.zeros((args.layers, b, args.width))  # noqa: E731
    model(tf.zeros((1, 1), tf.int32), zeros(1))
    params = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    # the budgeted preset's optimizer and schedule (warm-up, then a cosine whose end is set once the speed is known)
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    recipe = TrainConfig(**{k: v for k, v in PRESETS["auto"].items() if k in fields})
    windows = streams(splits["train"], args.batch_size, args.seq_length)
    schedule = TrainingSchedule(recipe, len(windows))
    optimizer = keras.optimizers.AdamW(learning_rate=schedule, weight_decay=recipe.weight_decay,
                                       global_clipnorm=recipe.grad_clip)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    @tf.function(jit_compile=bool(args.xla))
    def train_step(x, y, states):
        with tf.GradientTape() as tape:
            logits, states = model(x, states, training=True)
            loss = loss_fn(y, logits)
        optimizer.apply_gradients(zip(tape.gradient(loss, model.trainable_weights), model.trainable_weights))
        return loss, states

    @tf.function(jit_compile=bool(args.xla))
    def eval_step(x, y, states):
        logits, states = model(x, states)
        return loss_fn(y, logits) * tf.cast(tf.size(y), tf.float32), states

    def split_loss(name, window=1000):
        data, total, count, states = splits[name], 0.0, 0, zeros(1)
        for i in range(0, len(data) - 1, window):
            x, y = data[i:i + window][None], data[i + 1:i + window + 1][None]
            x = x[:, :y.shape[1]]
            loss, states = eval_step(tf.constant(x), tf.constant(y), states)
            total, count = total + float(loss), count + y.shape[1]
        return total / count

    budget = args.minutes * 60
    step, states, best, best_weights, tick = 0, zeros(args.batch_size), float("inf"), None, started
    loop_started = time.perf_counter()
    print(f"minGRU {args.layers} x {args.width} (MLP x{args.mlp_ratio}): {params:,} parameters, "
          f"{len(splits['train']):,} training characters")
    while time.perf_counter() - started < budget:
        x, y = windows[step % len(windows)]
        if step % len(windows) == 0:
            states = zeros(args.batch_size)
        loss, states = train_step(tf.constant(x), tf.constant(y), states)
        step += 1
        if step == 10:
            tick = time.perf_counter()
        if step == 60:  # the speed of iterations 10-60 fits the cosine to the budget
            per_step = (time.perf_counter() - tick) / 50
            total = step + int((budget - (time.perf_counter() - started)) / per_step * 0.97)
            schedule.total.assign(total)
            checkpoint_every = max(100, total // args.checkpoints)
            print(f"{1 / per_step * args.batch_size * args.seq_length:,.0f} characters/s; "
                  f"cosine to {total} iterations, validating every {checkpoint_every}")
        ends = step >= int(schedule.total) > 0 or time.perf_counter() - started >= budget
        if ends or (step > 60 and step % checkpoint_every == 0):
            val = split_loss("val")
            print(f"iteration {step}: train {float(loss):.3f} val {val:.4f} ({time.perf_counter() - started:.0f} s)")
            if val < best:
                best, best_weights = val, [w.numpy() for w in model.weights]
        if ends:
            break
    model.set_weights(best_weights)
    print(f"done: {step} iterations in {time.perf_counter() - loop_started:.0f} s of training; best val {best:.4f};"
          f" test {split_loss('test'):.4f} (wall {time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
