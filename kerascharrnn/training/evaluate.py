"""Mean cross-entropy of a stateful model over a whole split: static (torch-rnn's eval.lua, the state
carried from zero across the split's minibatches) or dynamic (the model adapting as it reads)."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from kerascharrnn.data import batches
from kerascharrnn.errors import UserError
from kerascharrnn.errors import setting as ref
from kerascharrnn.models import stack


def make_eval_step(model: keras.Model):
    """A compiled (inputs, targets, row_weights) -> (summed loss, token count) for a stateful model."""

    @tf.function(autograph=False)
    def eval_step(inputs, targets, row_weights):
        logits = model(inputs, training=False)
        per_token = keras.losses.sparse_categorical_crossentropy(targets, logits, from_logits=True)  # (N, T)
        weights = tf.broadcast_to(row_weights[:, None], tf.shape(per_token))
        return tf.reduce_sum(per_token * weights), tf.reduce_sum(weights)

    return eval_step


def split_loss(model: keras.Model, h5_path: str, split: str, layout: batches.StreamLayout, eval_step=None) -> float:
    """Mean cross-entropy (nats per token) over a whole split, the state carried from zero.

    Leaves the model's carried state changed; callers that care save and restore it.
    """
    eval_step = eval_step or make_eval_step(model)
    stack.reset_states(model)
    weights = tf.constant(batches.row_weights(layout))
    total, count = 0.0, 0.0
    for inputs, targets in batches.minibatches(h5_path, split, layout):
        loss_sum, n = eval_step(inputs, targets, weights)
        total += float(loss_sum)
        count += float(n)
    return total / count


def dynamic_split_loss(charrnn, h5_path: str, split: str, num_tokens: int, seq_length: int,
                       learning_rate: float) -> tuple:
    """Dynamic evaluation (Mikolov, 2010; Krause et al., 2018): the split is read as one stream, and after
    predicting each segment of `seq_length` characters the model takes one SGD step on that segment, so
    it adapts to the text it has read (a new play's speaker names, a writer's own characters). Every
    character is predicted before the model has trained on it. With learning_rate 0 this is the static
    loss of the same single stream.

    Adapts a batch-1 copy of the model (CharRNN.with_batch_size): `charrnn` itself is left as it was.

    Returns:
      (mean cross-entropy in nats per token, tokens scored).
    """
    model = charrnn.with_batch_size(1).model
    layout = batches.stream_layout(num_tokens, 1, seq_length, allow_fewer_streams=True)
    optimizer = keras.optimizers.SGD(learning_rate)

    @tf.function(autograph=False)
    def predict_then_adapt(inputs, targets):
        with tf.GradientTape() as tape:
            per_token = keras.losses.sparse_categorical_crossentropy(targets, model(inputs, training=False),
                                                                     from_logits=True)
            loss = tf.reduce_mean(per_token)
        if learning_rate > 0:
            grads = tape.gradient(loss, model.trainable_variables)
            optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return tf.reduce_sum(per_token), tf.cast(tf.size(per_token), tf.float32)

    # far worse than a uniform guess over the vocabulary: the steps are too large, not the text hard
    diverged_above = 10 * np.log(max(charrnn.vocab.size, 2))
    stack.reset_states(model)
    total, count = 0.0, 0.0
    for inputs, targets in batches.minibatches(h5_path, split, layout):
        loss_sum, n = predict_then_adapt(inputs, targets)
        if not float(loss_sum) <= diverged_above * float(n):  # also NaN
            raise UserError(f"dynamic evaluation diverged after {int(count)} characters; try a lower"
                            f" {ref('dynamic_lr')}")
        total += float(loss_sum)
        count += float(n)
    return total / max(count, 1.0), int(count)
