import keras
import numpy as np
import pytest
import tensorflow as tf

from helpers import cudnn_eligible, zero_states
from kerascharrnn import model as model_lib
from kerascharrnn.config import ModelConfig
from kerascharrnn.errors import UserError

N, T, D, H, V = 2, 3, 4, 5, 6


def tiny(model_type="lstm", **kwargs):
    config = ModelConfig(vocab_size=V, model_type=model_type, wordvec_size=D, rnn_size=H, num_layers=2, **kwargs)
    return model_lib.build_model(config, batch_size=N)


@pytest.mark.parametrize("model_type", ["lstm", "gru", "rnn"])
def test_output_shapes_and_stock_layers(model_type):
    model = tiny(model_type, batchnorm=True, dropout=0.1)
    ids = np.arange(N * T).reshape(N, T) % V
    assert model(ids).shape == (N, T, V)
    assert model(ids[:, :1]).shape == (N, 1, V)  # one step at a time works too
    assert all(type(l).__module__.startswith("keras.src.layers") for l in model.layers)


@pytest.mark.parametrize("model_type", ["lstm", "gru"])
def test_recurrent_layers_meet_cudnn_conditions(model_type):
    for stage in model_lib.recurrent_stages(tiny(model_type, dropout=0.2)):
        layer = stage.layer
        assert cudnn_eligible(layer)
        assert layer.cell.recurrent_dropout == 0 and not layer.unroll and layer.cell.use_bias
        assert layer.cell.activation is keras.activations.tanh
        assert layer.cell.recurrent_activation is keras.activations.sigmoid
        assert layer.stateful
    gru = keras.layers.GRU(4, reset_after=False)
    assert not cudnn_eligible(gru)
    assert not cudnn_eligible(keras.layers.LSTM(4, recurrent_dropout=0.1))


def test_save_load_same_logits(tmp_path):
    model = tiny("gru", batchnorm=True)
    ids = np.array([[1, 2, 3], [4, 5, 0]])
    expected = model(ids).numpy()
    model_lib.reset_states(model)
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")  # plain Keras, no custom objects
    np.testing.assert_allclose(loaded(ids).numpy(), expected, atol=1e-6)


@pytest.mark.parametrize("model_type", ["lstm", "gru", "rnn"])
def test_step_function_matches_whole_sequence_model(model_type):
    model = tiny(model_type, batchnorm=True, dropout=0.3)
    for layer in model.layers:  # non-trivial batch-norm statistics
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.moving_mean.assign(np.linspace(-0.5, 0.5, H))
            layer.moving_variance.assign(np.linspace(0.5, 2.0, H))
    ids = np.array([[1, 2, 3, 4], [5, 0, 1, 2]], dtype=np.int32)
    expected = model(ids, training=False).numpy()  # (N, T, V)
    step = model_lib.make_step_fn(model)
    states = zero_states(model, N)
    for t in range(ids.shape[1]):
        logits, states = step(tf.constant(ids[:, t]), states)
        np.testing.assert_allclose(logits.numpy(), expected[:, t], atol=1e-5)


def test_state_helpers():
    model = tiny("lstm")
    assert model_lib.state_sizes(model) == [H, H, H, H]
    assert model_lib.state_names(model) == ["lstm_0 h", "lstm_0 c", "lstm_1 h", "lstm_1 c"]
    model(np.ones((N, T), np.int32))
    saved = model_lib.get_states(model)
    assert any(np.abs(s).sum() > 0 for s in saved)
    model_lib.reset_states(model)
    assert all(np.abs(s).sum() == 0 for s in model_lib.get_states(model))
    model_lib.set_states(model, saved)
    np.testing.assert_array_equal(model_lib.get_states(model)[1], saved[1])
    config = ModelConfig(vocab_size=V, model_type="gru", wordvec_size=D, rnn_size=H, num_layers=3, dropout=0.25,
                         batchnorm=True)
    assert model_lib.config_of(model_lib.build_model(config, N)) == config
    for embedding_dropout, dropout in ((0.1, 0.0), (0.1, 0.3), (0.0, 0.3)):
        config = ModelConfig(vocab_size=V, wordvec_size=D, rnn_size=H, dropout=dropout,
                             embedding_dropout=embedding_dropout)
        assert model_lib.config_of(model_lib.build_model(config, N)) == config


@pytest.mark.parametrize("model_type", ["lstm", "gru", "rnn"])
def test_layer_stack_roles(model_type):
    stages = model_lib.layer_stack(tiny(model_type, batchnorm=True, dropout=0.1))
    assert [s.role for s in stages] == ["embedding"] + ["recurrent", "batchnorm", "dropout"] * 2 + ["logits"]
    parts = ["h", "c"] if model_type == "lstm" else ["h"]
    assert stages[1].state_names == [f"{model_type}_0 {p}" for p in parts]


def test_layer_stack_refuses_a_foreign_model():
    ids = keras.Input(batch_shape=(N, None), dtype="int32")
    x = keras.layers.Embedding(V, D)(ids)
    x = keras.layers.Conv1D(H, 2, padding="causal")(x)
    foreign = keras.Model(ids, keras.layers.Dense(V)(x))
    with pytest.raises(UserError, match="Conv1D"):
        model_lib.layer_stack(foreign)
    dense_only = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    with pytest.raises(UserError, match="not a char-RNN"):
        model_lib.layer_stack(dense_only)
