"""A faster CPU training forward pass for the same stock Keras model.

Keras runs an LSTM on the CPU as a loop of per-step cell calls, and its gradient as a loop of per-step
gradients, each step doing small matmuls for the input, the recurrence and every weight gradient.
PyTorch (and cuDNN) instead project the inputs of all time steps in one big matmul, loop only over
the recurrence, and form the weight gradients after the backward loop in one big matmul each. This
module does the same for the model's LSTM layers, with a hand-written gradient, and is meant to run
under XLA (which fuses each step's elementwise gate math). The first layer's input projection becomes a
lookup in a (V, 4H) table, embeddings @ kernel + bias, instead of an (N*T, D) @ (D, 4H) matmul. The
weights, their layout and the saved model are untouched: the layers are still stock keras.layers.LSTM (cuDNN-eligible on a GPU, where the
Keras call is used instead).

Measured on a 2-core CPU (B=50, T=50), see docs/benchmarks.md.
"""

import keras
import tensorflow as tf

from kerascharrnn import model as model_lib
from kerascharrnn.errors import UserError


def unsupported_reason(model: keras.Model):
    """Why this module cannot reproduce the model's recurrent layers exactly, or None if it can.

    It reproduces stateful, sequence-returning stock LSTMs with Keras's default math only.
    """
    for stage in model_lib.recurrent_stages(model):
        layer, cell = stage.layer, stage.layer.cell
        if stage.kind.name != "lstm":
            return f"{layer.name} is a {stage.kind.name}, not an LSTM"
        if not (cell.activation is keras.activations.tanh and cell.recurrent_activation is keras.activations.sigmoid
                and cell.use_bias and cell.recurrent_dropout == 0 and cell.dropout == 0):
            return f"{layer.name} is not a default LSTM (activations, bias or cell dropout differ)"
        if not (layer.stateful and layer.return_sequences and not layer.go_backwards):
            return f"{layer.name} is not a stateful, forward, sequence-returning layer"
    return None


def pays_off(model: keras.Model) -> bool:
    """Whether the fused path beat the plain Keras layer on the 2-core CPU it was measured on
    (B=50, T=50, docs/benchmarks.md): yes at rnn_size 64 (1x64: 10.6 vs 14.0 ms) and from 256 up
    (2x256: 127 vs 186 ms, 2x512: 330 vs 631 ms); no around 128, where the Keras loop's threaded small
    matmuls win (2x128: 45.0 vs 39.6 ms, 1x128: 24.7 vs 21.4 ms)."""
    size = model_lib.recurrent_stages(model)[0].layer.cell.units
    return size <= 96 or size >= 192


def choose(model: keras.Model, setting: str, on_gpu: bool) -> bool:
    """The one place that decides whether training runs through `forward` (True) or the Keras layers.

    Args:
      model: the training model.
      setting: --fused: "on", "off" or "auto" (on where it measured faster: a static rule rather than a
        timing at start-up, so a seeded run takes the same path every time).
      on_gpu: a GPU is visible; the Keras layers then run cuDNN, which auto always prefers.

    Returns:
      Whether to use the fused path; the caller records the answer so that a resumed run keeps it.
    """
    reason = unsupported_reason(model)
    if setting == "on":
        if reason:
            raise UserError(f"--fused on: this model cannot use the fused path: {reason}")
        return True
    if setting == "off":
        return False
    return reason is None and not on_gpu and pays_off(model)


def lstm_recurrence(projected, h0, c0, recurrent_kernel):
    """Keras LSTM math (gates i, f, c, o) over a sequence whose input projection is already done.

    Args:
      projected: (N, T, 4H) = inputs @ kernel + bias for every step.
      h0, c0: (N, H) initial state; recurrent_kernel: (H, 4H).
    Returns:
      (outputs (N, T, H), h_T, c_T); the gradient is hand-written: one loop back over time, then the
      recurrent kernel's gradient in one matmul.
    """

    @tf.custom_gradient
    def run(projected, h0, c0, recurrent_kernel):
        units = recurrent_kernel.shape[0]
        projected_time_major = tf.transpose(projected, [1, 0, 2])  # (T, N, 4H)

        def forward_step(carry, projected_t):
            h, c = carry[0], carry[1]
            z = projected_t + tf.matmul(h, recurrent_kernel)
            i, f, g, o = tf.split(z, 4, axis=1)
            i, f, g, o = tf.sigmoid(i), tf.sigmoid(f), tf.tanh(g), tf.sigmoid(o)
            c = f * c + i * g
            tanh_c = tf.tanh(c)
            return o * tanh_c, c, tf.concat([i, f, g, o], axis=1), tanh_c

        no_gates = tf.zeros_like(projected_time_major[0])
        hs, cs, gates, tanh_cs = tf.scan(forward_step, projected_time_major, initializer=(h0, c0, no_gates, h0))

        def grad(d_outputs, d_h_last, d_c_last, variables=None):
            del variables
            recurrent_t = tf.transpose(recurrent_kernel)  # once, not per step
            d_hs = tf.transpose(d_outputs, [1, 0, 2])
            d_hs = tf.concat([d_hs[:-1], d_hs[-1:] + d_h_last[None]], axis=0)
            c_prev = tf.concat([c0[None], cs[:-1]], axis=0)

            def backward_step(carry, inputs):
                d_h_next, d_c_next = carry[0], carry[1]
                d_h_t, gates_t, tanh_c, c_before = inputs
                i, f, g, o = tf.split(gates_t, 4, axis=1)
                d_h = d_h_t + d_h_next
                d_c = d_c_next + d_h * o * (1.0 - tanh_c * tanh_c)
                d_z = tf.concat([d_c * g * i * (1.0 - i), d_c * c_before * f * (1.0 - f), d_c * i * (1.0 - g * g),
                                 d_h * tanh_c * o * (1.0 - o)], axis=1)
                return tf.matmul(d_z, recurrent_t), d_c * f, d_z

            d_h0, d_c0, d_z = tf.scan(backward_step, (d_hs, gates, tanh_cs, c_prev),
                                      initializer=(tf.zeros_like(h0), d_c_last, no_gates), reverse=True)
            h_prev = tf.reshape(tf.concat([h0[None], hs[:-1]], axis=0), [-1, units])
            d_recurrent = tf.matmul(h_prev, tf.reshape(d_z, [-1, 4 * units]), transpose_a=True)
            return tf.transpose(d_z, [1, 0, 2]), d_h0[0], d_c0[0], d_recurrent

        return (tf.transpose(hs, [1, 0, 2]), hs[-1], cs[-1]), grad

    return run(projected, h0, c0, recurrent_kernel)


def _project(x, kernel, bias):
    """(N, T, D) @ (D, 4H) + bias as one matmul over all steps (autodiff: one matmul per gradient too)."""
    batch, steps = tf.shape(x)[0], tf.shape(x)[1]
    flat = tf.matmul(tf.reshape(x, [-1, x.shape[2]]), kernel) + bias
    return tf.reshape(flat, [batch, steps, kernel.shape[1]])


def forward(model: keras.Model, inputs, training: bool = True):
    """model(inputs, training) for a stateful model whose LSTMs run through lstm_recurrence.

    Other layers are called as Keras calls them; each LSTM's carried state is read from and written back
    to its state variables, exactly as the stateful Keras layer does.
    """
    x, previous = inputs, None
    for stage in model_lib.layer_stack(model):
        layer = stage.layer
        if stage.role == "embedding":
            previous = stage  # looked up together with the next layer's input projection
            continue
        after_embedding = previous is not None and previous.role == "embedding"
        if stage.role == "recurrent":
            cell = layer.cell
            if after_embedding:
                # ids -> rows of (embeddings @ kernel + bias): a (V, 4H) table replaces the (N*T, D) matmul
                table = tf.matmul(_tensor(previous.layer.embeddings), _tensor(cell.kernel)) + _tensor(cell.bias)
                projected = tf.gather(table, x)
            else:
                projected = _project(x, _tensor(cell.kernel), _tensor(cell.bias))
            h_var, c_var = layer.states
            x, h, c = lstm_recurrence(projected, _tensor(h_var), _tensor(c_var), _tensor(cell.recurrent_kernel))
            h_var.assign(h)
            c_var.assign(c)
        else:
            if after_embedding:
                x = previous.layer(x)
            x = layer([x, inputs] if stage.role == "copy" else x, training=training)
        previous = stage
    return x


def _tensor(variable) -> tf.Tensor:
    return tf.convert_to_tensor(variable)
