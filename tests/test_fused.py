"""The fused CPU training path computes what the Keras layers compute: same outputs, carried states
and gradients, over consecutive stateful batches."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from kerascharrnn import data, fused, train
from kerascharrnn import model as model_lib
from kerascharrnn.config import ModelConfig, TrainConfig


def build(model_type="lstm", **kwargs):
    config = ModelConfig(vocab_size=11, model_type=model_type, wordvec_size=6, rnn_size=9, num_layers=2, **kwargs)
    return model_lib.build_model(config, batch_size=3)


@pytest.mark.parametrize("batchnorm", [False, True])
def test_outputs_states_and_gradients_match_keras(batchnorm):
    model = build(batchnorm=batchnorm)
    rng = np.random.default_rng(0)
    batches = [rng.integers(0, 11, (3, 7)).astype(np.int32) for _ in range(2)]
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    results = {}
    for name, call in (("keras", lambda x: model(x, training=True)), ("fused", lambda x: fused.forward(model, x))):
        model_lib.reset_states(model)
        outs = []
        for x in batches:  # the second batch starts from the state the first left
            with tf.GradientTape() as tape:
                logits = call(x)
                loss = loss_fn(np.roll(x, -1, axis=1), logits)
            grads = tape.gradient(loss, model.trainable_variables)
            outs.append((logits.numpy(), model_lib.get_states(model), [tf.convert_to_tensor(g).numpy() for g in grads]))
        results[name] = outs
    for (k_logits, k_states, k_grads), (f_logits, f_states, f_grads) in zip(results["keras"], results["fused"]):
        np.testing.assert_allclose(f_logits, k_logits, atol=1e-5)
        for a, b in zip(f_states, k_states):
            np.testing.assert_allclose(a, b, atol=1e-5)
        for a, b in zip(f_grads, k_grads):
            np.testing.assert_allclose(a, b, atol=1e-5)


def test_trainer_uses_it_for_lstm_on_cpu_only():
    layout = {"train": data.StreamLayout(3, 3, 7, 10)}
    config = TrainConfig(input_h5="", input_json="", batch_size=3, seq_length=7)
    assert train.Trainer(config, build("lstm", dropout=0.2), layout).fused
    assert not train.Trainer(config, build("gru"), layout).fused
    size_128 = model_lib.build_model(ModelConfig(vocab_size=11, rnn_size=128), batch_size=3)
    assert not train.Trainer(config, size_128, layout).fused  # the plain Keras loop measured faster there
    assert train.Trainer(config, size_128, layout, use_fused=True).fused
    assert not fused.supports(build("rnn"))
    assert all(model_lib.cudnn_eligible(l) for l in model_lib.rnn_layers(build("lstm")))  # layers untouched
