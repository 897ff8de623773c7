#!/usr/bin/env python3
"""Predict cos(t) from its past with a stateful LSTM: the cos(t) regression of the Element-Research
`rnn` tutorial, rewritten in Keras 3 (TensorFlow backend).

This example shows how to use the same building blocks as kerascharrnn -- stateful Keras RNN layers,
parallel streams carried across batches, truncated BPTT -- for sequences other than text. It uses only
Keras and TensorFlow (not the kerascharrnn package), so it can be read on its own.

The original is Part 2 of Christopher Bourez's "Element-Research Torch RNN Tutorial for recurrent
neural nets" (2016), written for https://github.com/Element-Research/rnn and its nn.NormStabilizer:
https://christopher5106.github.io/deep/learning/2016/07/14/element-research-torch-rnn-tutorial.html
Like it:
  * the series is cos(t) sampled on torch.linspace(0, 200, 2000) (a step of 200/1999);
  * 80 streams, each starting at a random offset of the wave, advance rho = 10 steps per batch;
  * the norm-stabiliser of Krueger and Memisevic (2015), "Regularizing RNNs by Stabilizing
    Activations" (arXiv:1511.08400), can regularise the LSTM's hidden state;
  * after 2000 iterations the model is seeded with the first 10 true values and predicts the rest
    on its own, each prediction fed back as the next input.
Where it differs, and why:
  * the LSTM state is carried from batch to batch (stateful=True), as torch-rnn and kerascharrnn do;
    the Lua script advanced its streams but called forget() every batch. The closed-loop prediction
    carries its state for 200 steps, and a model that never saw a state older than 10 steps goes
    astray there (try --restart_every 1, which resets every batch: an mse near 1);
  * but a stream also restarts, from a zero state at a new random offset, about once every
    --restart_every batches: the prediction starts from a zero state and 10 values, a situation that
    streams carried forever would show the model only once;
  * because most steps then have context, the loss is the MSE over all rho steps, not the last one;
  * Adam at --lr (decaying) instead of plain SGD at 1e-4, and 64 units instead of 300, so that 2000
    iterations take seconds on a CPU;
  * the input goes straight into the LSTM: the Lua nn.Linear(1, hidden) in front of it is an affine
    map of a scalar, which the LSTM's own input kernel and bias already represent exactly;
  * the wave is computed as the streams advance instead of read from a 2000-sample table that wraps
    around (200 is not a multiple of 2*pi, so the wrap put a jump into the training data);
  * the closed-loop prediction carries the state forward instead of re-reading a sliding window,
    and predicts --predict_steps values after the 10 seed values (the Lua predicted 190).

Usage:
  python3 examples/cos_regression.py                       # 2000 iterations, prints "prediction mse: ..."
  python3 examples/cos_regression.py --norm_stabilizer 1 --output_png cos.png
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import sys
import time
from typing import Iterator, List, Optional, Sequence, Tuple

import keras
import numpy as np
import tensorflow as tf

# The tutorial's sampling: torch.linspace(0, 200, 2000), about 63 samples per period.
TIME_STEP = 200.0 / 1999.0
TABLE_LENGTH = 2000


@dataclasses.dataclass
class Result:
    """What run() measured: the prediction error and everything needed to plot or test it."""

    mse: float  # closed-loop prediction against the truth, predicted steps only
    times: np.ndarray  # t of every plotted sample: seed values, then predicted ones
    truth: np.ndarray  # cos(times)
    prediction: np.ndarray  # the model's closed-loop values for times[rho:]
    train_mse: List[float]  # per iteration
    norm_penalty: List[float]  # per iteration, measured even when --norm_stabilizer is 0
    train_seconds: float
    png: Optional[str] = None  # the plot written, if any


def cos_streams(streams: int, rho: int, rng: np.random.Generator,
                restart_every: float = 0) -> Iterator[Tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Yields (inputs, targets, carry) batches forever: inputs and targets of shape (streams, rho, 1),
    carry of shape (streams,).

    Row i of a batch continues row i of the batch before, which is what lets a stateful layer carry
    its state across batches; targets are the inputs one step ahead. With restart_every > 0 each
    stream jumps, on average once every restart_every batches, to a new random offset, and its carry
    is 0 there (the state row must be zeroed) instead of 1.
    """
    # As the Lua: a random starting sample of the 2000-sample table for each stream.
    offsets = rng.integers(0, TABLE_LENGTH - rho, size=streams).astype(np.int64)
    carry = np.ones(streams, np.float32)
    window = np.arange(rho + 1)
    while True:
        values = np.cos((offsets[:, None] + window) * TIME_STEP).astype(np.float32)
        yield values[:, :-1, None], values[:, 1:, None], carry
        offsets += rho
        if restart_every > 0:
            restart = rng.random(streams) < 1.0 / restart_every
            offsets[restart] = rng.integers(0, TABLE_LENGTH - rho, size=int(restart.sum()))
            carry = (~restart).astype(np.float32)


def build_model(batch_size: int, hidden: int, seq_len: Optional[int] = None) -> keras.Model:
    """A stateful LSTM -> Dense(1, hard_tanh) model returning (predictions, hidden sequence).

    The hidden sequence is an output so that the norm-stabiliser can be computed in the training step
    without a custom layer. hard_tanh is the tutorial's nn.HardTanh: cos never leaves [-1, 1], and
    clipping keeps a closed-loop prediction from running away.
    """
    # Stateful layers keep one state row per stream, so the batch size is part of the model.
    inputs = keras.Input(batch_shape=(batch_size, seq_len, 1), name="x")
    hidden_seq = keras.layers.LSTM(hidden, return_sequences=True, stateful=True, name="lstm")(inputs)
    outputs = keras.layers.Dense(1, activation="hard_tanh", name="y")(hidden_seq)
    return keras.Model(inputs, [outputs, hidden_seq], name="cos_lstm")


def norm_stabilizer_penalty(prev_hidden: tf.Tensor, hidden_seq: tf.Tensor) -> tf.Tensor:
    """Krueger and Memisevic's cost without beta: mean over streams and steps of (||h_t|| - ||h_t-1||)^2.

    prev_hidden (batch, hidden) is the state carried in from the previous batch, so the first step of
    a batch is compared with the last step of the one before, as in an unbroken sequence; no gradient
    flows into it (truncated BPTT). Unlike rnn's NormStabilizer.lua, whose gradient is not divided by
    the number of steps, this is a plain mean, so beta means the same for any rho.
    """
    states = tf.concat([tf.stop_gradient(prev_hidden)[:, None, :], hidden_seq], axis=1)
    # The epsilon keeps the gradient of the norm finite at h = 0 (the first batch starts from zeros).
    norms = tf.sqrt(tf.reduce_sum(tf.square(states), axis=-1) + 1e-12)
    return tf.reduce_mean(tf.square(norms[:, 1:] - norms[:, :-1]))


def train(model: keras.Model, batches: Iterator[Tuple[np.ndarray, np.ndarray, np.ndarray]], iters: int,
          lr: float, beta: float, print_every: int = 0) -> Tuple[List[float], List[float]]:
    """Truncated BPTT: one Adam step per batch, the LSTM state carried between batches.

    The learning rate decays to 1% of lr along a cosine: the closed-loop prediction compounds every
    small one-step error, so the last iterations should settle rather than jitter around the minimum.

    Returns the per-iteration training MSE and norm-stabiliser penalty (beta not applied).
    """
    lstm = model.get_layer("lstm")
    schedule = keras.optimizers.schedules.CosineDecay(lr, decay_steps=max(iters, 1), alpha=0.01)
    optimizer = keras.optimizers.Adam(learning_rate=schedule)

    @tf.function
    def step(x, y, carry):
        for state in lstm.states:
            state.assign(state.value * carry[:, None])
        # Read before the call: the stateful layer overwrites its state variables with h_T, c_T.
        prev_hidden = tf.identity(lstm.states[0].value)
        with tf.GradientTape() as tape:
            pred, hidden_seq = model(x, training=True)
            mse = tf.reduce_mean(tf.square(pred - y))
            penalty = norm_stabilizer_penalty(prev_hidden, hidden_seq)
            loss = mse + beta * penalty
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return mse, penalty

    mses, penalties = [], []
    for i in range(1, iters + 1):
        x, y, carry = next(batches)
        mse, penalty = step(tf.constant(x), tf.constant(y), tf.constant(carry))
        mses.append(float(mse))
        penalties.append(float(penalty))
        if print_every and (i % print_every == 0 or i == iters):
            recent = slice(-min(print_every, len(mses)), None)
            print(f"iter {i}/{iters}  train mse {np.mean(mses[recent]):.6f}"
                  f"  norm penalty {np.mean(penalties[recent]):.6f}", flush=True)
    return mses, penalties


def predict_closed_loop(model: keras.Model, seed_values: np.ndarray, steps: int) -> np.ndarray:
    """Feeds seed_values, then each prediction back as the next input; returns `steps` predictions.

    `model` is a batch-1 stateful model: the state carries the whole history, so every call needs
    only the newest value.
    """
    model.get_layer("lstm").reset_state()
    call = tf.function(lambda x: model(x, training=False)[0], reduce_retracing=True)
    out = call(tf.constant(seed_values.reshape(1, -1, 1), tf.float32))
    predictions = np.empty(steps, np.float32)
    for k in range(steps):
        predictions[k] = float(out[0, -1, 0])
        out = call(tf.constant(predictions[k:k + 1].reshape(1, 1, 1)))
    return predictions


def plot(result: Result, rho: int, path: str) -> Optional[str]:
    """Writes prediction against truth (top) and the training curves (bottom) to a PNG at `path`.

    Returns the path, or None (after one line saying so) if matplotlib is not installed.
    """
    try:
        import matplotlib
        matplotlib.use("Agg")  # no display needed
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"matplotlib is not installed: no plot written to {path}")
        return None
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 7), gridspec_kw={"height_ratios": [3, 2]})
    top.plot(result.times, result.truth, "-", color="0.6", label="cos(t)")
    top.plot(result.times[:rho], result.truth[:rho], "o", color="C0", label=f"{rho} seed values")
    top.plot(result.times[rho:], result.prediction, "+", color="C3", label="closed-loop prediction")
    top.set_xlabel("t")
    top.set_ylim(-1.5, 1.25)  # room under the wave for the legend
    top.set_title(f"LSTM predicting cos(t) from its own output: mse {result.mse:.4g}")
    top.legend(loc="lower center", ncol=3, fontsize="small")
    iters = np.arange(1, len(result.train_mse) + 1)
    bottom.semilogy(iters, result.train_mse, label="train mse")
    bottom.semilogy(iters, result.norm_penalty, label="norm penalty (before beta)")
    bottom.set_xlabel("iteration")
    bottom.legend(loc="upper right", fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def run(iters: int = 2000, rho: int = 10, streams: int = 80, hidden: int = 64, lr: float = 0.003,
        seed: int = 0, predict_steps: int = 200, norm_stabilizer: float = 0.0,
        restart_every: float = 5, output_png: Optional[str] = None, print_every: int = 0) -> Result:
    """Trains on cos(t), predicts predict_steps values after the first rho, and returns the Result.

    The arguments are the command-line flags (see parse_args). iters=0 gives the untrained model's
    prediction, a baseline for the trained one.
    """
    # Seeds Python, NumPy and TensorFlow; with deterministic ops a seeded CPU run repeats exactly.
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()
    rng = np.random.default_rng(seed)

    model = build_model(streams, hidden, seq_len=rho)
    start = time.perf_counter()
    batches = cos_streams(streams, rho, rng, restart_every)
    mses, penalties = train(model, batches, iters, lr, norm_stabilizer, print_every)
    train_seconds = time.perf_counter() - start

    # The training model's batch size is `streams`; prediction needs one stream of any length.
    predictor = build_model(1, hidden)
    predictor.set_weights(model.get_weights())
    times = np.arange(rho + predict_steps) * TIME_STEP
    truth = np.cos(times).astype(np.float32)
    prediction = predict_closed_loop(predictor, truth[:rho], predict_steps)
    mse = float(np.mean(np.square(prediction - truth[rho:])))

    result = Result(mse, times, truth, prediction, mses, penalties, train_seconds)
    if output_png:
        result.png = plot(result, rho, output_png)
    return result


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """The command line; defaults are run()'s, so the two cannot drift apart."""
    d = {name: param.default for name, param in inspect.signature(run).parameters.items()}
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--iters", type=int, default=d["iters"], help="training iterations (batches)")
    p.add_argument("--rho", type=int, default=d["rho"], help="steps per batch: the truncated-BPTT length")
    p.add_argument("--streams", type=int, default=d["streams"],
                   help="parallel streams (the batch size), each from a random offset of the wave")
    p.add_argument("--hidden", type=int, default=d["hidden"], help="LSTM units (the tutorial used 300)")
    p.add_argument("--lr", type=float, default=d["lr"],
                   help="initial Adam learning rate (cosine decay to 1%% of it)")
    p.add_argument("--seed", type=int, default=d["seed"],
                   help="seeds every RNG; with deterministic ops a CPU run repeats exactly")
    p.add_argument("--predict_steps", type=int, default=d["predict_steps"],
                   help="values predicted in closed loop after the first rho true ones")
    p.add_argument("--norm_stabilizer", type=float, default=d["norm_stabilizer"], metavar="BETA",
                   help="weight of the norm-stabiliser penalty (0 = off; the tutorial used 1)")
    p.add_argument("--restart_every", type=float, default=d["restart_every"],
                   help="a stream restarts from zero state at a new offset once per this many batches"
                        " on average (0 = never)")
    p.add_argument("--output_png", default=None, help="write a plot of prediction against truth here")
    p.add_argument("--print_every", type=int, default=100,
                   help="print training progress every N iterations (0 = never)")
    return p.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> float:
    """Runs the example from the command line; prints and returns the prediction MSE."""
    args = parse_args(argv)
    result = run(**vars(args))
    print(f"trained {args.iters} iterations in {result.train_seconds:.1f} s")
    if result.png:
        print(f"plot: {result.png}")
    # One line in a fixed format, for scripts that grep for it.
    print(f"prediction mse: {result.mse:.6g}")
    return result.mse


if __name__ == "__main__":
    main(sys.argv[1:])
