"""A recurrent layer over a whole sequence the way PyTorch and cuDNN run one, with a hand-written gradient.

Keras runs a recurrent layer on the CPU as a loop of per-step cell calls, and its gradient as a loop of
per-step gradients, each step doing small matmuls for the input, the recurrence and every weight
gradient. Here the inputs of all time steps are projected in one big matmul (by the caller: `project`,
or a table lookup after an embedding), the loop runs only the recurrence, and the weight gradients are
formed after the backward loop in one big matmul each. Meant to run under XLA, which fuses each step's
elementwise gate math.

One driver (`recurrence`) runs every kind; what differs per kind is its cell arithmetic and that
arithmetic's gradient for one step (`CellMath`), each written exactly as the Keras cell computes it.
Sequences are time-major, (T, N, ...). training/fused.py runs a whole model through this.
"""

import dataclasses
from typing import Callable, Tuple

import tensorflow as tf

from kerascharrnn.config import RECURRENT_KINDS


@dataclasses.dataclass(frozen=True)
class CellMath:
    """One recurrent kind's step arithmetic, as the Keras cell does it, and its hand-written gradient.

    A step sees x_t = inputs_t @ kernel + input bias (hoisted out of the loop) and
    m_t = h_{t-1} @ recurrent_kernel (+ the GRU's recurrent bias), both (N, gates * H).

    step(x_t, m_t, carry) -> (new carry, saved): carry is the layer's state tuple, h first; saved holds
      the per-step values the gradient needs, of widths `saved_widths` (in units of H).
    step_grad(d_h, d_rest, saved, carry_before, carry_after) -> (d_x, d_m, d_h_before, d_rest_before):
      d_h is the loss gradient reaching this step's h (output and next step), d_rest that reaching the
      other state parts; d_m is None where it equals d_x (`separate_d_m` False, so it is stored once);
      d_h_before is the part of h_{t-1}'s gradient not through m_t (None if none).
    """

    gates: int
    saved_widths: Tuple[int, ...]
    separate_d_m: bool
    step: Callable
    step_grad: Callable


def _lstm_step(x, m, carry):
    _, c = carry
    i, f, g, o = tf.split(x + m, 4, axis=1)
    i, f, g, o = tf.sigmoid(i), tf.sigmoid(f), tf.tanh(g), tf.sigmoid(o)
    c = f * c + i * g
    tanh_c = tf.tanh(c)
    return (o * tanh_c, c), (tf.concat([i, f, g, o], axis=1), tanh_c)


def _lstm_step_grad(d_h, d_rest, saved, carry_before, carry_after):
    del carry_after
    (d_c_next,), (gates, tanh_c), c_before = d_rest, saved, carry_before[1]
    i, f, g, o = tf.split(gates, 4, axis=1)
    d_c = d_c_next + d_h * o * (1.0 - tanh_c * tanh_c)
    d_z = tf.concat([d_c * g * i * (1.0 - i), d_c * c_before * f * (1.0 - f), d_c * i * (1.0 - g * g),
                     d_h * tanh_c * o * (1.0 - o)], axis=1)
    return d_z, None, None, (d_c * f,)


def _gru_step(x, m, carry):
    """Keras's GRU with reset_after=True (its default): the reset gate scales the recurrent product."""
    (h,) = carry
    x_z, x_r, x_h = tf.split(x, 3, axis=1)
    m_z, m_r, m_h = tf.split(m, 3, axis=1)
    z, r = tf.sigmoid(x_z + m_z), tf.sigmoid(x_r + m_r)
    hh = tf.tanh(x_h + r * m_h)
    return (z * h + (1 - z) * hh,), (tf.concat([z, r, hh], axis=1), m_h)


def _gru_step_grad(d_h, d_rest, saved, carry_before, carry_after):
    del d_rest, carry_after
    (gates, m_h), (h_before,) = saved, carry_before
    z, r, hh = tf.split(gates, 3, axis=1)
    d_z = d_h * (h_before - hh) * z * (1.0 - z)
    d_hh = d_h * (1.0 - z) * (1.0 - hh * hh)
    d_r = d_hh * m_h * r * (1.0 - r)
    return tf.concat([d_z, d_r, d_hh], axis=1), tf.concat([d_z, d_r, d_hh * r], axis=1), d_h * z, ()


def _rnn_step(x, m, carry):
    del carry
    return (tf.tanh(x + m),), ()


def _rnn_step_grad(d_h, d_rest, saved, carry_before, carry_after):
    del d_rest, saved, carry_before
    (h,) = carry_after
    d_z = d_h * (1.0 - h * h)
    return d_z, None, None, ()


# each kind's arithmetic: (saved_widths, separate_d_m, step, step_grad); its gates are config.RECURRENT_KINDS'
_ARITHMETIC = {"lstm": ((4, 1), False, _lstm_step, _lstm_step_grad),
               "gru": ((3, 1), True, _gru_step, _gru_step_grad),
               "rnn": ((), False, _rnn_step, _rnn_step_grad)}
CELL_MATH = {name: CellMath(RECURRENT_KINDS[name].gates, *_ARITHMETIC[name]) for name in RECURRENT_KINDS}


def recurrence(math: CellMath, projected, states, recurrent_kernel, recurrent_bias=None):
    """A recurrent layer over a sequence whose input projection is already done.

    Args:
      math: the layer kind's cell arithmetic.
      projected: (T, N, G*H), time-major = inputs @ kernel + input bias for every step.
      states: the initial state tuple, each (N, H), h first; recurrent_kernel: (H, G*H);
      recurrent_bias: (G*H,) added to h @ recurrent_kernel (the GRU's), or None.
    Returns:
      (outputs (T, N, H), time-major, final states tuple); the gradient is hand-written: one loop back
      over time, then the recurrent kernel's (and bias's) gradient in one matmul (sum).
    """
    with_bias = recurrent_bias is not None
    weights = (recurrent_kernel, recurrent_bias) if with_bias else (recurrent_kernel,)
    num_states = len(states)

    @tf.custom_gradient
    def run(projected, *args):
        states, (recurrent_kernel, *bias) = args[:num_states], args[num_states:]
        units = recurrent_kernel.shape[0]

        def recurrent_product(h):
            product = tf.matmul(h, recurrent_kernel)
            return product + bias[0] if bias else product

        def forward_step(scanned, x_t):
            carry = scanned[:num_states]
            new_carry, saved = math.step(x_t, recurrent_product(carry[0]), carry)
            return (*new_carry, *saved)

        batch_zeros = tf.zeros_like(states[0][:, :1])
        no_saved = tuple(tf.tile(batch_zeros, [1, width * units]) for width in math.saved_widths)
        scanned = tf.scan(forward_step, projected, initializer=(*states, *no_saved))
        carries, saved = scanned[:num_states], scanned[num_states:]

        def grad(d_outputs, *d_last, variables=None):
            del variables
            recurrent_t = tf.transpose(recurrent_kernel)  # once, not per step
            d_hs = tf.concat([d_outputs[:-1], d_outputs[-1:] + d_last[0][None]], axis=0)
            carries_before = tuple(tf.concat([s[None], c[:-1]], axis=0) for s, c in zip(states, carries))
            no_gates = tf.zeros_like(projected[0])

            def backward_step(carry, inputs):
                d_h_next, d_rest = carry[0], carry[1:num_states]
                d_h_t, saved_t, before_t, after_t = inputs
                d_x, d_m, d_h_before, d_rest_before = math.step_grad(d_h_t + d_h_next, d_rest, saved_t,
                                                                     before_t, after_t)
                d_m = d_x if d_m is None else d_m
                d_h_prev = tf.matmul(d_m, recurrent_t)
                if d_h_before is not None:
                    d_h_prev = d_h_prev + d_h_before
                return (d_h_prev, *d_rest_before, d_x, *([d_m] if math.separate_d_m else []))

            initial = (tf.zeros_like(states[0]), *d_last[1:], no_gates, *([no_gates] if math.separate_d_m else []))
            back = tf.scan(backward_step, (d_hs, saved, carries_before, carries), initializer=initial,
                           reverse=True)
            d_states, d_x, d_m = back[:num_states], back[num_states], back[-1]
            d_m_flat = tf.reshape(d_m, [-1, math.gates * units])
            h_before = tf.reshape(carries_before[0], [-1, units])
            d_weights = [tf.matmul(h_before, d_m_flat, transpose_a=True)]
            if bias:
                d_weights.append(tf.reduce_sum(d_m_flat, axis=0))
            return (d_x, *(d[0] for d in d_states), *d_weights)

        return (carries[0], *(c[-1] for c in carries)), grad

    outputs, *final = run(projected, *states, *weights)
    return outputs, tuple(final)


def input_and_recurrent_bias(cell):
    """The bias added to the input projection, and the one added to h @ recurrent_kernel (GRU) or None."""
    bias = tf.convert_to_tensor(cell.bias)
    if len(bias.shape) == 2:  # GRU, reset_after: (2, 3H) = input bias, recurrent bias
        return bias[0], bias[1]
    return bias, None


def project(x, kernel, bias):
    """(T, N, D) @ (D, G*H) + bias as one matmul over all steps (autodiff: one matmul per gradient too)."""
    flat = tf.matmul(tf.reshape(x, [-1, x.shape[2]]), kernel) + bias
    return tf.reshape(flat, tf.concat([tf.shape(x)[:2], [kernel.shape[1]]], 0))


def swap_batch_and_time(x):
    return tf.transpose(x, [1, 0, 2])
