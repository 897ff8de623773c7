import keras
import numpy as np
import pytest
import tensorflow as tf
from helpers import cudnn_eligible, zero_states

from kerascharrnn.config import ModelConfig
from kerascharrnn.errors import UserError
from kerascharrnn.models import stack

N, T, D, H, V = 2, 3, 4, 5, 6


def tiny(model_type="lstm", **kwargs):
    config = ModelConfig(vocab_size=V, model_type=model_type, wordvec_size=D, rnn_size=H, num_layers=2, **kwargs)
    return stack.build_model(config, batch_size=N)


@pytest.mark.parametrize("model_type", ["lstm", "gru", "rnn"])
def test_output_shapes_and_stock_layers(model_type):
    model = tiny(model_type, batchnorm=True, dropout=0.1)
    ids = np.arange(N * T).reshape(N, T) % V
    assert model(ids).shape == (N, T, V)
    assert model(ids[:, :1]).shape == (N, 1, V)  # one step at a time works too
    assert all(type(l).__module__.startswith("keras.src.layers") for l in model.layers)


@pytest.mark.parametrize("model_type", ["lstm", "gru"])
def test_recurrent_layers_meet_cudnn_conditions(model_type):
    for stage in stack.recurrent_stages(tiny(model_type, dropout=0.2)):
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
    stack.reset_states(model)
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
    step = stack.make_step_fn(model)
    states = zero_states(model, N)
    for t in range(ids.shape[1]):
        logits, states = step(tf.constant(ids[:, t]), states)
        np.testing.assert_allclose(logits.numpy(), expected[:, t], atol=1e-5)


def test_state_helpers():
    model = tiny("lstm")
    assert stack.state_sizes(model) == [H, H, H, H]
    assert stack.state_names(model) == ["lstm_0 h", "lstm_0 c", "lstm_1 h", "lstm_1 c"]
    model(np.ones((N, T), np.int32))
    saved = stack.get_states(model)
    assert any(np.abs(s).sum() > 0 for s in saved)
    stack.reset_states(model)
    assert all(np.abs(s).sum() == 0 for s in stack.get_states(model))
    stack.set_states(model, saved)
    np.testing.assert_array_equal(stack.get_states(model)[1], saved[1])
    config = ModelConfig(vocab_size=V, model_type="gru", wordvec_size=D, rnn_size=H, num_layers=3, dropout=0.25,
                         batchnorm=True)
    assert stack.config_of(stack.build_model(config, N)) == config
    for embedding_dropout, dropout in ((0.1, 0.0), (0.1, 0.3), (0.0, 0.3)):
        config = ModelConfig(vocab_size=V, wordvec_size=D, rnn_size=H, dropout=dropout,
                             embedding_dropout=embedding_dropout)
        assert stack.config_of(stack.build_model(config, N)) == config


@pytest.mark.parametrize("model_type", ["lstm", "gru", "rnn"])
def test_layer_stack_roles(model_type):
    stages = stack.layer_stack(tiny(model_type, batchnorm=True, dropout=0.1))
    assert [s.role for s in stages] == ["embedding"] + ["recurrent", "batchnorm", "dropout"] * 2 + ["logits"]
    parts = ["h", "c"] if model_type == "lstm" else ["h"]
    assert stages[1].state_names == [f"{model_type}_0 {p}" for p in parts]


def test_layer_stack_refuses_a_foreign_model():
    ids = keras.Input(batch_shape=(N, None), dtype="int32")
    x = keras.layers.Embedding(V, D)(ids)
    x = keras.layers.Conv1D(H, 2, padding="causal")(x)
    foreign = keras.Model(ids, keras.layers.Dense(V)(x))
    with pytest.raises(UserError, match="Conv1D"):
        stack.layer_stack(foreign)
    dense_only = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    with pytest.raises(UserError, match="not a char-RNN"):
        stack.layer_stack(dense_only)


FORMS = ("window", "step", "fused", "replica")


def test_every_role_has_every_form():
    """One place knows how each role runs in each form: a role without one of them cannot be built (ABC),
    and this fails naming it, before a model with that layer ever gets there."""
    import abc
    import inspect

    assert set(FORMS) <= set(stack.Stage.__abstractmethods__)  # the forms are the base's abstract methods
    roles = set(stack.ROLES.values())
    assert {role.role for role in roles} == {"embedding", "recurrent", "batchnorm", "dropout", "copy", "logits"}
    for role in roles:
        missing = [form for form in FORMS if getattr(getattr(role, form), "__isabstractmethod__", False)]
        assert not missing and not inspect.isabstract(role), (role.__name__, missing)

    class Incomplete(stack.Stage):  # what a new role without its replica form would be
        role = "new"

        def window(self, x, ids, training):
            return x

        def step(self, x, ids, states):
            return x, ()

        def fused(self, x, ids, state, draw, training):
            return x, ()

    assert inspect.isabstract(Incomplete)
    with pytest.raises(TypeError, match="replica"):
        Incomplete(keras.layers.Dense(2))
    assert isinstance(stack.Stage, abc.ABCMeta)


def test_each_form_runs_a_role_as_the_window_form_does():
    """The step, fused and replica forms of every role in a model with all of them give the window form's
    numbers (no dropout draws: inference; batch-norm with moving statistics)."""
    from kerascharrnn.training import fused

    model = tiny("gru", batchnorm=True, dropout=0.3, embedding_dropout=0.1, copy_memory=4, copy_heads=1,
                 copy_head_size=2)
    stages = stack.layer_stack(model)
    assert [s.role for s in stages][-2:] == ["copy", "logits"]
    ids = np.array([[1, 2, 3, 4], [5, 0, 1, 2]], dtype=np.int32)
    expected = model(ids, training=False).numpy()
    stack.reset_states(model)
    states = [tuple(tf.zeros([N, H]) for _ in s.layer.states) if isinstance(s, stack.RecurrentStage) else ()
              for s in stages]
    logits, _ = fused.run_stages(stages, tf.constant(ids), states, training=False)
    np.testing.assert_allclose(logits.numpy(), expected, atol=1e-5)
    with pytest.raises(UserError, match="copy attention .* trains on one device"):
        stages[-2].replica_state()
    x, carried = tf.constant(ids), []
    for stage in stages:  # the replica form, without the copy layer's (it has none): up to the copy layer
        if isinstance(stage, stack.CopyStage):
            break
        own = tuple(tf.zeros([N, H]) for _ in stage.replica_state())
        x, new = stage.replica(x, tf.constant(ids), own, None, training=False)
        carried.extend(new)
    window = tf.constant(ids)
    stack.reset_states(model)
    for stage in stages[:-2]:
        window = stage.window(window, tf.constant(ids), training=False)
    np.testing.assert_allclose(x.numpy(), window.numpy(), atol=1e-5)
    assert len(carried) == 2
