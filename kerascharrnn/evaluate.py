"""Mean cross-entropy of a stateful model over a whole split (torch-rnn's eval.lua), the state carried
from zero across the split's minibatches."""

from __future__ import annotations

import keras
import tensorflow as tf

from kerascharrnn import data
from kerascharrnn import model as model_lib


def make_eval_step(model: keras.Model):
    """A compiled (inputs, targets, row_weights) -> (summed loss, token count) for a stateful model."""

    @tf.function
    def eval_step(inputs, targets, row_weights):
        logits = model(inputs, training=False)
        per_token = keras.losses.sparse_categorical_crossentropy(targets, logits, from_logits=True)  # (N, T)
        weights = tf.broadcast_to(row_weights[:, None], tf.shape(per_token))
        return tf.reduce_sum(per_token * weights), tf.reduce_sum(weights)

    return eval_step


def split_loss(model: keras.Model, h5_path: str, split: str, layout: data.StreamLayout, eval_step=None) -> float:
    """Mean cross-entropy (nats per token) over a whole split, the state carried from zero.

    Leaves the model's carried state changed; callers that care save and restore it.
    """
    eval_step = eval_step or make_eval_step(model)
    model_lib.reset_states(model)
    weights = tf.constant(data.row_weights(layout))
    total, count = 0.0, 0.0
    for inputs, targets in data.make_dataset(h5_path, split, layout):
        loss_sum, n = eval_step(inputs, targets, weights)
        total += float(loss_sum)
        count += float(n)
    return total / count
