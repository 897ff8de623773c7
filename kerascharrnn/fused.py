"""A faster CPU training forward pass for the same stock Keras model.

Keras runs a recurrent layer on the CPU as a loop of per-step cell calls, and its gradient as a loop of
per-step gradients, each step doing small matmuls for the input, the recurrence and every weight
gradient. PyTorch (and cuDNN) instead project the inputs of all time steps in one big matmul, loop only
over the recurrence, and form the weight gradients after the backward loop in one big matmul each. This
module does the same for the model's LSTM, GRU and SimpleRNN layers, with a hand-written gradient, and is
meant to run under XLA (which fuses each step's elementwise gate math). The first layer's input
projection becomes a lookup in a (V, G*H) table, embeddings @ kernel + bias, instead of an
(N*T, D) @ (D, G*H) matmul. The weights, their layout and the saved model are untouched: the layers are
still stock Keras layers (cuDNN-eligible on a GPU, where the Keras call is used instead).

One recurrence driver (`recurrence`) runs every kind; what differs per kind is its cell arithmetic and
that arithmetic's gradient for one step (`CellMath`), each written exactly as the Keras cell computes it.
The loops run time-major, and the sequence stays time-major ((T, N, ...)) from one recurrent layer to the
next, so that the wide (N, T, G*H) projections and their gradients are never transposed (only the H-wide
outputs, where another layer needs them batch-major).

One XLA computation runs its small per-step matmuls on one core, so `split_loss_and_grads` computes two
halves of the batch as two XLA computations that TensorFlow runs at once (the streams of a batch are
independent within a step; what the layers draw at random is drawn for the whole batch first).

Measured on a 2-core CPU (B=50, T=50), see docs/benchmarks.md.
"""

import dataclasses
from typing import Callable, Optional, Tuple

import keras
import tensorflow as tf

from kerascharrnn import calibration
from kerascharrnn import model as model_lib
from kerascharrnn.errors import UserError


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


CELL_MATH = {"lstm": CellMath(4, (4, 1), False, _lstm_step, _lstm_step_grad),
             "gru": CellMath(3, (3, 1), True, _gru_step, _gru_step_grad),
             "rnn": CellMath(1, (), False, _rnn_step, _rnn_step_grad)}


def unsupported_reason(model: keras.Model):
    """Why this module cannot reproduce the model's recurrent layers exactly, or None if it can.

    It reproduces stateful, sequence-returning stock LSTM, GRU (reset_after) and SimpleRNN layers with
    Keras's default math only.
    """
    for stage in model_lib.recurrent_stages(model):
        layer, cell = stage.layer, stage.layer.cell
        default_math = (cell.activation is keras.activations.tanh and cell.use_bias
                        and cell.recurrent_dropout == 0 and cell.dropout == 0
                        and getattr(cell, "recurrent_activation", keras.activations.sigmoid)
                        is keras.activations.sigmoid and getattr(cell, "reset_after", True))
        if not default_math:
            return f"{layer.name} is not a default {stage.kind.name} (activations, bias or cell dropout differ)"
        if not (layer.stateful and layer.return_sequences and not layer.go_backwards):
            return f"{layer.name} is not a stateful, forward, sequence-returning layer"
    return None


# rnn_size ranges where the plain Keras layer beat the fused path in one piece ("on") on the 2-core CPU
# they were measured on (B=50, T=50, docs/benchmarks.md): an LSTM around 128, where the Keras loop's
# threaded small matmuls win (2x128: 22.7 vs 25.2 ms); fused won at 64 (1x64: 5.0 vs 7.7 ms) and from
# 256 up (1x256: 27.3 vs 42.3 ms, 2x512: 150 vs 278 ms). GRU and SimpleRNN: fused won at every size
# (GRU 1x128 7.4 vs 12.6 ms, 3x512 185 vs 321 ms; SimpleRNN 1x128 2.9 vs 4.9 ms, 1x512 15.5 vs 33.3 ms).
# Split in two halves, fused won everywhere (LSTM 1x64 3.1, 1x128 6.6, 2x128 15.0, 1x256 19.0, 2x512
# 141.5 ms; GRU 1x128 6.5 ms).
_KERAS_FASTER = {"lstm": range(97, 192)}


def pays_off(model: keras.Model, path: str) -> bool:
    """Whether the fused path in this form ("split" or "on") measured faster than the plain Keras
    layers for this model's size and kind."""
    stage = model_lib.recurrent_stages(model)[0]
    return path == "split" or stage.layer.cell.units not in _KERAS_FASTER.get(stage.kind.name, ())


@dataclasses.dataclass(frozen=True)
class PathChoice:
    path: str  # "split", "on" (fused, the batch in one piece) or "off" (the Keras layers)
    why: str  # for the run's log

    @property
    def fused(self) -> bool:
        return self.path != "off"


def split_unsupported_reason(model: keras.Model) -> Optional[str]:
    """Why the batch cannot train as independent pieces (`split_loss_and_grads`), or None: batch
    normalization's statistics span the whole batch."""
    batch = model.inputs[0].shape[0]
    if batch is None or batch < 2:
        return "a batch of one stream"
    for stage in model_lib.layer_stack(model):
        if stage.role == "batchnorm":
            return f"{stage.layer.name} (batchnorm) spans the batch"
    return None


def choose(model: keras.Model, setting: str, on_gpu: bool, cpu_cores: int = 1) -> PathChoice:
    """The one place that decides how training runs: "split" (`split_loss_and_grads`), "on" (`forward`)
    or "off" (the Keras layers).

    Args:
      model: the training model.
      setting: --fused: "split", "on", "off" or "auto": the path this machine measured faster for the
        nearest configuration (calibration.py, written by bin/benchmark --what calibrate), else the static
        rule of `pays_off`; never a timing at start-up, so a seeded run takes the same path every time.
        A fused auto choice splits the batch where the model allows it and the machine has two cores.
      on_gpu: a GPU is visible; the Keras layers then run cuDNN, which auto always prefers.
      cpu_cores: the cores this process may use.

    Returns:
      The choice and why; the caller records the path so that a resumed run keeps it.
    """
    reason = unsupported_reason(model)
    if setting in ("on", "split"):
        reason = reason or (split_unsupported_reason(model) if setting == "split" else None)
        if reason:
            raise UserError(f"--fused {setting}: this model cannot use that path: {reason}")
        return PathChoice(setting, f"--fused {setting}")
    if setting == "off":
        return PathChoice("off", "--fused off")
    if reason or on_gpu:
        return PathChoice("off", reason or "a GPU: the Keras layers run cuDNN")
    split_reason = split_unsupported_reason(model) or (None if cpu_cores >= 2 else "one CPU core")
    path = "on" if split_reason else "split"
    stage = model_lib.recurrent_stages(model)[0]
    measured = calibration.measured_choice(stage.kind.name, len(model_lib.recurrent_stages(model)),
                                           stage.layer.cell.units, path)
    if measured:
        fused = measured["fused_ms"] < measured["keras_ms"]
        why = (f"measured on this machine at {measured['num_layers']}x{measured['rnn_size']}: fused ({path})"
               f" {measured['fused_ms']:.1f} ms, Keras {measured['keras_ms']:.1f} ms per step")
    else:
        fused = pays_off(model, path)
        why = "the rule measured on a 2-core CPU (bin/benchmark --what calibrate measures this machine)"
    why += f"; not split: {split_reason}" if split_reason else "; the batch in two halves, one per core"
    return PathChoice(path if fused else "off", why)


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


def _input_and_recurrent_bias(cell):
    """The bias added to the input projection, and the one added to h @ recurrent_kernel (GRU) or None."""
    bias = _tensor(cell.bias)
    if len(bias.shape) == 2:  # GRU, reset_after: (2, 3H) = input bias, recurrent bias
        return bias[0], bias[1]
    return bias, None


def _project(x, kernel, bias):
    """(T, N, D) @ (D, G*H) + bias as one matmul over all steps (autodiff: one matmul per gradient too)."""
    flat = tf.matmul(tf.reshape(x, [-1, x.shape[2]]), kernel) + bias
    return tf.reshape(flat, tf.concat([tf.shape(x)[:2], [kernel.shape[1]]], 0))


def _swap_batch_and_time(x):
    return tf.transpose(x, [1, 0, 2])


def forward(model: keras.Model, inputs, training: bool = True):
    """model(inputs, training) for a stateful model whose recurrent layers run through `recurrence`.

    Other layers are called as Keras calls them; each recurrent layer's carried state is read from and
    written back to its state variables, exactly as the stateful Keras layer does.
    """
    stages = model_lib.recurrent_stages(model)
    states = [tuple(_tensor(v) for v in stage.layer.states) for stage in stages]
    logits, final = _forward(model, inputs, states, lambda stage, x: stage.layer(
        [x, inputs] if stage.role == "copy" else x, training=training), training)
    for stage, values in zip(stages, final):
        for variable, value in zip(stage.layer.states, values):
            variable.assign(value)
    return logits


def _forward(model: keras.Model, inputs, states, other_layer: Callable, training: bool = True):
    """(logits, final states) from the given states, one tuple per recurrent layer; changes no variable
    of its own. `other_layer(stage, x)` applies the dropout and copy-attention stages (the whole batch
    calls the Keras layers; a split batch applies what was drawn for it); the rest are called as Keras
    calls them.

    From one recurrent layer straight to the next the sequence stays time-major (T, N, ...); every other
    layer, dropout included, gets (N, T, ...) as Keras gives it (so dropout draws the masks it always drew,
    and seeded runs and resumes keep their numbers)."""
    x, previous, time_major = inputs, None, False
    states, final = list(states), []
    for stage in model_lib.layer_stack(model):
        layer = stage.layer
        if stage.role == "embedding":
            previous = stage  # looked up together with the next layer's input projection
            continue
        after_embedding = previous is not None and previous.role == "embedding"
        if after_embedding and stage.role != "recurrent":
            x = previous.layer(x)
        if stage.role == "recurrent":
            cell = layer.cell
            input_bias, recurrent_bias = _input_and_recurrent_bias(cell)
            if after_embedding:
                # ids -> rows of (embeddings @ kernel + bias): a (V, G*H) table replaces the (N*T, D) matmul
                table = tf.matmul(_tensor(previous.layer.embeddings), _tensor(cell.kernel)) + input_bias
                projected = tf.gather(table, tf.transpose(x))
            else:
                projected = _project(x if time_major else _swap_batch_and_time(x), _tensor(cell.kernel), input_bias)
            x, layer_final = recurrence(CELL_MATH[stage.kind.name], projected, states.pop(0),
                                        _tensor(cell.recurrent_kernel), recurrent_bias)
            final.append(layer_final)
            time_major = True
        else:
            if time_major:
                x, time_major = _swap_batch_and_time(x), False
            x = other_layer(stage, x) if stage.role in ("dropout", "copy") else layer(x, training=training)
        previous = stage
    return (_swap_batch_and_time(x) if time_major else x), final


def split_loss_and_grads(model: keras.Model, loss_fn: Callable, parts: int = 2) -> Callable:
    """(inputs, targets) -> (loss, gradients of model.trainable_variables), as `forward` under a tape
    gives them (the carried states updated the same way), computed as `parts` independent pieces of
    the batch, each one XLA computation: TensorFlow runs them at once, one per core, where one XLA
    computation's small per-step matmuls keep a single core busy (docs/benchmarks.md).

    What a layer draws at random (dropout masks, the copy attention's memory resets) is drawn for the
    whole batch first, the same draws as `forward` makes, and sliced. Call inside a tf.function that is
    not XLA-compiled itself; needs split_unsupported_reason(model) None.
    """
    recurrent = model_lib.recurrent_stages(model)
    copy = next((s.layer for s in model_lib.layer_stack(model) if s.role == "copy"), None)
    variables = model.trainable_variables

    @tf.function(jit_compile=True)
    def piece(inputs, targets, states, draws):
        draws, copy_memory = list(draws), []

        def other_layer(stage, x):
            if stage.role == "dropout":
                return x * draws.pop(0)
            result, new_memory = stage.layer.attend_window(x, inputs, *draws.pop(0))
            copy_memory.extend(new_memory)
            return result

        with tf.GradientTape() as tape:
            logits, final = _forward(model, inputs, states, other_layer)
            loss = loss_fn(targets, logits)
        return loss, [tf.convert_to_tensor(g) for g in tape.gradient(loss, variables)], final + [tuple(copy_memory)]

    # compiled as the whole-batch path is, so that the layers draw the same numbers (TensorFlow's
    # stateless RNG gives other numbers under XLA than without it)
    draw = tf.function(lambda inputs: _random_draws(model, inputs), jit_compile=True)
    state_variables = [stage.layer.states for stage in recurrent] + [copy.states if copy else []]

    @tf.function(jit_compile=True)  # one launch for what would be dozens of small ops
    def combine(results, weights):
        loss = tf.add_n([w * r[0] for w, r in zip(weights, results)])
        grads = [tf.add_n([w * r[1][i] for w, r in zip(weights, results)]) for i in range(len(variables))]
        for k, layer_variables in enumerate(state_variables):
            for j, variable in enumerate(layer_variables):
                variable.assign(tf.concat([r[2][k][j] for r in results], axis=0))
        return loss, grads

    def loss_and_grads(inputs, targets):
        batch = inputs.shape[0]
        bounds = [batch * k // parts for k in range(parts + 1)]
        spans = list(zip(bounds[:-1], bounds[1:]))
        carried = ([tuple(_tensor(v) for v in stage.layer.states) for stage in recurrent], draw(inputs))
        results = [piece(inputs[a:b], targets[a:b], *tf.nest.map_structure(lambda t, a=a, b=b: t[a:b], carried))
                   for a, b in spans]
        return combine(results, [(b - a) / batch for a, b in spans])

    return loss_and_grads


def _random_draws(model: keras.Model, inputs) -> list:
    """What the dropout and copy stages draw for the whole batch, in order: a dropout layer applied to
    ones (its own RNG, advanced once as in a whole-batch call), so x * mask is its output; the copy
    layer's memory with this window's resets applied (memory outputs, ids, valid count)."""
    draws, width = [], None
    for stage in model_lib.layer_stack(model):
        if stage.role == "embedding":
            width = stage.layer.output_dim
        elif stage.role == "recurrent":
            width = stage.layer.cell.units
        elif stage.role == "dropout":
            draws.append(stage.layer(tf.ones([inputs.shape[0], tf.shape(inputs)[1], width]), training=True))
        elif stage.role == "copy":
            draws.append(stage.layer.memory_for_window(training=True))
    return draws


def _tensor(variable) -> tf.Tensor:
    return tf.convert_to_tensor(variable)
