"""A faster CPU training forward pass for the same stock Keras model.

Keras runs a recurrent layer on the CPU as a loop of per-step cell calls, and its gradient as a loop of
per-step gradients, each step doing small matmuls. Here each layer runs in its fused form
(models/stack.py): recurrent layers as models/recurrence.py runs them (all input projections in one
matmul, the first layer's as a lookup in a (V, G*H) table, embeddings @ kernel + bias; a hand-written
gradient whose weight gradients are one matmul each), meant to run under XLA, which fuses each step's
elementwise gate math. The weights, their layout and the saved model are untouched: the layers are still
stock Keras layers (cuDNN-eligible on a GPU, where the Keras call is used instead).

The sequence stays time-major ((T, N, ...)) from one recurrent layer to the next, so that the wide
(N, T, G*H) projections and their gradients are never transposed (only the H-wide outputs, where another
layer needs them batch-major); every other layer, dropout included, gets (N, T, ...) as Keras gives it, so
dropout draws the masks it always drew, and seeded runs and resumes keep their numbers.

One XLA computation runs its small per-step matmuls on one core, so `split_loss_and_grads` computes two
halves of the batch as two XLA computations that TensorFlow runs at once (the streams of a batch are
independent within a step; what the layers draw at random is drawn for the whole batch first).
path_choice.py decides whether a model trains this way. Measured on a 2-core CPU (B=50, T=50):
docs/benchmarks.md.
"""

from typing import Callable, List, Optional, Sequence

import keras
import tensorflow as tf

from kerascharrnn.models import recurrence, stack


def run_stages(stages: Sequence[stack.Stage], inputs, states: Sequence[tuple], draws: Optional[Sequence] = None,
               training: bool = True):
    """The model's computation with every layer in its fused form; changes no variable of its own.

    Args:
      stages: the model's layer_stack.
      inputs: (N, T) int32 ids.
      states: one tuple per stage: a recurrent layer's carried state, () for the others.
      draws: one per stage, what Stage.draw made for the whole batch (when it runs in parts), or None:
        the layers draw for themselves.
      training: as in a Keras call.
    Returns:
      (logits (N, T, V), one tuple per stage: the state it carries on, () for none).
    """
    x, time_major, new_states = inputs, False, []
    for index, stage in enumerate(stages):
        if isinstance(x, stack.PendingLookup) and not isinstance(stage, stack.RecurrentStage):
            x = x.embedded()
        if not isinstance(x, stack.PendingLookup) and stage.fused_time_major != time_major:
            x = recurrence.swap_batch_and_time(x)
        x, new_state = stage.fused(x, inputs, tuple(states[index]), None if draws is None else draws[index], training)
        time_major = stage.fused_time_major
        new_states.append(tuple(new_state))
    return (recurrence.swap_batch_and_time(x) if time_major else x), new_states


def _carried(stages: Sequence[stack.Stage]) -> List[tuple]:
    """What each stage's fused form takes as its state: a recurrent layer's state variables, now."""
    return [tuple(tf.convert_to_tensor(v) for v in stage.layer.states) if isinstance(stage, stack.RecurrentStage)
            else () for stage in stages]


def _assign(stages: Sequence[stack.Stage], new_states: Sequence[tuple]) -> None:
    """Writes the states that run_stages carried on back into the layers' state variables."""
    for stage, values in zip(stages, new_states):
        for variable, value in zip(stage.carried_variables().values(), values):
            variable.assign(value)


def forward(model: keras.Model, inputs, training: bool = True):
    """model(inputs, training) for a stateful model, its layers in their fused form: each recurrent layer's
    carried state is read from and written back to its state variables, as the stateful Keras layer does."""
    stages = stack.layer_stack(model)
    logits, new_states = run_stages(stages, inputs, _carried(stages), training=training)
    _assign(stages, new_states)
    return logits


def split_loss_and_grads(model: keras.Model, loss_fn: Callable, parts: int = 2) -> Callable:
    """(inputs, targets) -> (loss, gradients of model.trainable_variables), as `forward` under a tape
    gives them (the carried states updated the same way), computed as `parts` independent pieces of
    the batch, each one XLA computation: TensorFlow runs them at once, one per core, where one XLA
    computation's small per-step matmuls keep a single core busy (docs/benchmarks.md).

    What a layer draws at random (dropout masks, the copy attention's memory resets) is drawn for the
    whole batch first, the same draws as `forward` makes, and sliced. A gathered weight's gradient (the
    copy attention's value embeddings, the embeddings behind an embedding dropout) stays the
    tf.IndexedSlices the tape gives, one row per gathered id: Keras's optimizers apply one with repeated
    rows otherwise than its dense sum (Adam adds each row's squares to its second moment, not the square of
    their sum), so a dense gradient would train otherwise than the whole batch does. Call inside a
    tf.function that is not XLA-compiled itself; needs path_choice.split_unsupported_reason(model) None.
    """
    stages = stack.layer_stack(model)
    variables = model.trainable_variables

    @tf.function(jit_compile=True, autograph=False)
    def piece(inputs, targets, states, draws):
        with tf.GradientTape() as tape:
            logits, new_states = run_stages(stages, inputs, states, draws)
            loss = loss_fn(targets, logits)
        return loss, list(tape.gradient(loss, variables)), new_states  # IndexedSlices kept: see above

    # compiled as the whole-batch path is, so that the layers draw the same numbers (TensorFlow's
    # stateless RNG gives other numbers under XLA than without it)
    draw = tf.function(lambda inputs: _random_draws(stages, inputs), jit_compile=True, autograph=False)

    @tf.function(jit_compile=True, autograph=False)  # one launch for what would be dozens of small ops
    def combine(results, weights):
        loss = tf.add_n([w * r[0] for w, r in zip(weights, results)])
        grads = [_weighted_sum([r[1][i] for r in results], weights) for i in range(len(variables))]
        _assign(stages, [tuple(tf.concat(parts, axis=0) for parts in zip(*stage_states))
                         for stage_states in zip(*(r[2] for r in results))])
        return loss, grads

    def loss_and_grads(inputs, targets):
        batch = inputs.shape[0]
        bounds = [batch * k // parts for k in range(parts + 1)]
        spans = list(zip(bounds[:-1], bounds[1:]))
        carried = (_carried(stages), draw(inputs))
        results = [piece(inputs[a:b], targets[a:b], *tf.nest.map_structure(lambda t, a=a, b=b: t[a:b], carried))
                   for a, b in spans]
        return combine(results, [(b - a) / batch for a, b in spans])

    return loss_and_grads


def _weighted_sum(grads: Sequence, weights: Sequence[float]):
    """The whole batch's gradient from its pieces'. An IndexedSlices stays one, the pieces' rows one after the
    other (in batch order, as the whole batch's tape lists them), weighted, never summed into a dense tensor."""
    if isinstance(grads[0], tf.IndexedSlices):
        return tf.IndexedSlices(tf.concat([w * g.values for w, g in zip(weights, grads)], axis=0),
                                tf.concat([g.indices for g in grads], axis=0), grads[0].dense_shape)
    return tf.add_n([w * g for w, g in zip(weights, grads)])


def _random_draws(stages: Sequence[stack.Stage], inputs) -> list:
    """What each stage draws for the whole (N, T) batch (Stage.draw; () for the stages that draw nothing)."""
    draws, width = [], None
    for stage in stages:
        made = stage.draw(inputs, width)
        draws.append(() if made is None else made)
        width = stage.output_width(width)
    return draws
