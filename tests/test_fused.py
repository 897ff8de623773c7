"""The fused CPU training path computes what the Keras layers compute: same outputs, carried states
and gradients, over consecutive stateful batches."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from helpers import cudnn_eligible
from kerascharrnn import data, fused, train
from kerascharrnn import model as model_lib
from kerascharrnn.charrnn import CharRNN
from kerascharrnn.config import ModelConfig, TrainConfig
from kerascharrnn.errors import UserError
from kerascharrnn.vocab import Vocabulary


def build(model_type="lstm", **kwargs):
    config = ModelConfig(vocab_size=11, model_type=model_type, wordvec_size=6, rnn_size=9, num_layers=2, **kwargs)
    return model_lib.build_model(config, batch_size=3)


@pytest.mark.parametrize("jit_compile", [False, True])
@pytest.mark.parametrize("batchnorm,copy_memory", [(False, 0), (True, 0), (False, 5)])
def test_outputs_states_and_gradients_match_keras(batchnorm, copy_memory, jit_compile):
    """Eagerly, and compiled with XLA as Trainer compiles its fused step; with copy attention the fused
    path runs that layer as Keras does (its memory is among the states compared)."""
    model = build(batchnorm=batchnorm, copy_memory=copy_memory, copy_heads=2, copy_head_size=3)
    if copy_memory:  # its output kernel starts at zero: give it weight, so every attention weight has a gradient
        kernel = model.get_layer("copy_attention").output_kernel
        kernel.assign(np.random.default_rng(1).normal(size=kernel.shape).astype(np.float32))
    rng = np.random.default_rng(0)
    batches = [rng.integers(0, 11, (3, 7)).astype(np.int32) for _ in range(2)]
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    results = {}
    for name, call in (("keras", lambda x: model(x, training=True)), ("fused", lambda x: fused.forward(model, x))):

        def loss_and_grads(x, call=call):
            with tf.GradientTape() as tape:
                logits = call(x)
                loss = loss_fn(tf.roll(x, -1, axis=1), logits)
            return logits, [tf.convert_to_tensor(g) for g in tape.gradient(loss, model.trainable_variables)]

        if name == "fused" and jit_compile:
            loss_and_grads = tf.function(loss_and_grads, jit_compile=True)
        model_lib.reset_states(model)
        outs = []
        for x in batches:  # the second batch starts from the state the first left
            logits, grads = loss_and_grads(tf.constant(x))
            outs.append((logits.numpy(), model_lib.get_states(model), [g.numpy() for g in grads]))
        results[name] = outs
    for (k_logits, k_states, k_grads), (f_logits, f_states, f_grads) in zip(results["keras"], results["fused"]):
        np.testing.assert_allclose(f_logits, k_logits, atol=1e-5)
        for a, b in zip(f_states, k_states):
            np.testing.assert_allclose(a, b, atol=1e-5)
        for a, b in zip(f_grads, k_grads):
            np.testing.assert_allclose(a, b, atol=1e-5)


def trainer(model_type="lstm", fused_setting="auto", rnn_size=9, **kwargs):
    config = ModelConfig(vocab_size=11, model_type=model_type, wordvec_size=6, rnn_size=rnn_size, num_layers=2,
                         **kwargs)
    charrnn = CharRNN.build(config, Vocabulary(tuple("abcdefghijk")), 3)
    layout = {"train": data.StreamLayout(3, 3, 7, 10)}
    return train.Trainer(TrainConfig(batch_size=3, seq_length=7, fused=fused_setting), charrnn, layout)


def test_one_decision_for_the_training_path():
    assert trainer("lstm", dropout=0.2).fused
    assert trainer("lstm").config.fused == "on"  # resolved, so checkpoints record the choice
    assert not trainer("gru").fused and trainer("gru").config.fused == "off"
    assert not trainer("lstm", rnn_size=128).fused  # the plain Keras loop measured faster there
    assert trainer("lstm", "on", rnn_size=128).fused
    assert not trainer("lstm", "off").fused
    with pytest.raises(UserError, match="--fused on.*gru_0 is a gru"):
        trainer("gru", "on")
    model = build("lstm")
    assert all(cudnn_eligible(s.layer) for s in model_lib.recurrent_stages(model))  # layers untouched
    assert fused.unsupported_reason(build("rnn")) is not None


def test_unsupported_reason_checks_stateful():
    ids = keras.Input(batch_shape=(3, None), dtype="int32")
    x = keras.layers.Embedding(11, 6)(ids)
    x = keras.layers.LSTM(9, return_sequences=True, stateful=False)(x)
    model = keras.Model(ids, keras.layers.Dense(11)(x))
    assert "stateful" in fused.unsupported_reason(model)


def test_trainer_compiles_the_fused_step_with_xla():
    rng = np.random.default_rng(1)
    x, y = rng.integers(0, 11, (3, 7)).astype(np.int32), rng.integers(0, 11, (3, 7)).astype(np.int32)
    losses = {}
    initial = None
    for setting in ("off", "on"):
        t = trainer("lstm", setting)
        initial = initial or t.model.get_weights()
        t.model.set_weights(initial)
        losses[setting] = float(t.train_step(x, y))
        assert t.train_step._jit_compile is (setting == "on")
    assert losses["on"] == pytest.approx(losses["off"], abs=1e-5)
