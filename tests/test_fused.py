"""The fused CPU training path computes what the Keras layers compute: same outputs, carried states
and gradients, over consecutive stateful batches."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf
from helpers import cudnn_eligible

from kerascharrnn.config import ModelConfig, TrainConfig
from kerascharrnn.data import batches
from kerascharrnn.errors import UserError
from kerascharrnn.models import stack
from kerascharrnn.models.charrnn import CharRNN
from kerascharrnn.training import calibration, fused, path_choice
from kerascharrnn.training.trainer import Trainer
from kerascharrnn.vocab import Vocabulary


def build(model_type="lstm", **kwargs):
    config = ModelConfig(vocab_size=11, model_type=model_type, wordvec_size=6, rnn_size=9, num_layers=2, **kwargs)
    return stack.build_model(config, batch_size=3)


@pytest.mark.parametrize("jit_compile", [False, True])
@pytest.mark.parametrize("model_type,batchnorm,copy_memory", [("lstm", False, 0), ("lstm", True, 0),
                                                              ("lstm", False, 5), ("gru", False, 0),
                                                              ("gru", True, 5), ("rnn", False, 0)])
def test_outputs_states_and_gradients_match_keras(model_type, batchnorm, copy_memory, jit_compile):
    """Eagerly, and compiled with XLA as Trainer compiles its fused step, for every recurrent kind; with
    copy attention the fused path runs that layer as Keras does (its memory is among the states compared)."""
    model = build(model_type, batchnorm=batchnorm, copy_memory=copy_memory, copy_heads=2, copy_head_size=3)
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
        stack.reset_states(model)
        outs = []
        for x in batches:  # the second batch starts from the state the first left
            logits, grads = loss_and_grads(tf.constant(x))
            outs.append((logits.numpy(), stack.get_states(model), [g.numpy() for g in grads]))
        results[name] = outs
    for (k_logits, k_states, k_grads), (f_logits, f_states, f_grads) in zip(results["keras"], results["fused"]):
        np.testing.assert_allclose(f_logits, k_logits, atol=1e-5)
        for a, b in zip(f_states, k_states):
            np.testing.assert_allclose(a, b, atol=1e-5)
        for a, b in zip(f_grads, k_grads):
            np.testing.assert_allclose(a, b, atol=1e-5)


def trainer(model_type="lstm", fused_setting="auto", rnn_size=9, batch_size=3, **kwargs):
    config = ModelConfig(vocab_size=11, model_type=model_type, wordvec_size=6, rnn_size=rnn_size, num_layers=2,
                         **kwargs)
    charrnn = CharRNN.build(config, Vocabulary(tuple("abcdefghijk")), batch_size)
    layout = {"train": batches.StreamLayout(batch_size, batch_size, 7, 10)}
    return Trainer(TrainConfig(batch_size=batch_size, seq_length=7, fused=fused_setting), charrnn, layout)


def chosen_path(kind="lstm", setting="auto", cores=2, rnn_size=9, on_gpu=False, **kwargs):
    config = ModelConfig(vocab_size=11, model_type=kind, wordvec_size=6, rnn_size=rnn_size, num_layers=2, **kwargs)
    return path_choice.choose(stack.build_model(config, batch_size=3), setting, on_gpu=on_gpu, cpu_cores=cores).path


def test_one_decision_for_the_training_path():
    for kind in ("lstm", "gru", "rnn"):  # split in two halves measured faster than Keras at every size
        assert chosen_path(kind) == chosen_path(kind, rnn_size=128) == chosen_path(kind, dropout=0.2) == "split"
        assert chosen_path(kind, "off") == chosen_path(kind, on_gpu=True) == "off"
    # in one piece (one core; batch norm or copy attention span the batch), an LSTM of ~128 trains faster
    # through the Keras layers
    assert chosen_path(copy_memory=4, copy_heads=1, copy_head_size=2, copy_reset=0.5) == "split"
    assert chosen_path(cores=1) == chosen_path(batchnorm=True) == "on"
    assert chosen_path(cores=1, rnn_size=128) == chosen_path(batchnorm=True, rnn_size=128) == "off"
    assert chosen_path("gru", cores=1, rnn_size=128) == "on"
    assert chosen_path(setting="on", rnn_size=128) == "on" and chosen_path(setting="split", cores=1) == "split"
    with pytest.raises(UserError, match=r"^fused split: .*batchnorm_0 \(batchnorm\) spans the batch"):
        chosen_path(setting="split", batchnorm=True)
    assert trainer("lstm").recorded_config().fused == trainer("lstm").path_choice.path  # as checkpoints record it
    for kind in ("lstm", "gru"):
        model = build(kind)
        assert all(cudnn_eligible(s.layer) for s in stack.recurrent_stages(model))  # layers untouched


def assert_same_gradient(a, b):
    """Dense, or an IndexedSlices (a gathered weight's) row for row: Adam applies its repeated rows apart."""
    assert isinstance(a, tf.IndexedSlices) == isinstance(b, tf.IndexedSlices)
    if isinstance(b, tf.IndexedSlices):
        np.testing.assert_array_equal(a.indices.numpy(), b.indices.numpy())
        a, b = a.values, b.values
    np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-6)


@pytest.mark.parametrize("model_type,copy_memory", [("lstm", 0), ("gru", 0), ("rnn", 0), ("lstm", 5)])
def test_split_batch_gives_the_whole_batchs_loss_gradients_and_states(model_type, copy_memory):
    """Two pieces computed apart give the loss, gradients and carried states (copy memory included) of
    the whole batch through `forward`, over consecutive batches; what the layers draw at random (dropout
    masks, copy memory resets) is drawn for the whole batch, the same draws."""
    model = build(model_type, dropout=0.3, embedding_dropout=0.2, copy_memory=copy_memory, copy_heads=2,
                  copy_head_size=3, copy_reset=0.5 if copy_memory else 0.0)
    if copy_memory:  # its output kernel starts at zero: give it weight, so every attention weight has a gradient
        kernel = model.get_layer("copy_attention").output_kernel
        kernel.assign(np.random.default_rng(1).normal(size=kernel.shape).astype(np.float32))
    seeds = [v for v in model.non_trainable_variables if "seed" in v.path]
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    @tf.function(jit_compile=True)
    def whole(x, y):
        with tf.GradientTape() as tape:
            loss = loss_fn(y, fused.forward(model, x))
        return loss, tape.gradient(loss, model.trainable_variables)  # as the optimizer gets them

    split = tf.function(fused.split_loss_and_grads(model, loss_fn))
    rng = np.random.default_rng(2)
    batches = [(rng.integers(0, 11, (3, 7)).astype(np.int32), rng.integers(0, 11, (3, 7)).astype(np.int32))
               for _ in range(3)]
    start = [v.numpy() for v in seeds]
    results = {}
    for name, call in (("whole", whole), ("split", split)):
        for variable, value in zip(seeds, start):
            variable.assign(value)
        stack.reset_states(model)
        results[name] = [(call(x, y), stack.get_states(model)) for x, y in batches]  # odd batch: 1 + 2 rows
    for ((w_loss, w_grads), w_states), ((s_loss, s_grads), s_states) in zip(results["whole"], results["split"]):
        assert float(s_loss) == pytest.approx(float(w_loss), abs=1e-6)
        for a, b in zip(s_grads, w_grads):
            assert_same_gradient(a, b)
        for a, b in zip(s_states, w_states):
            np.testing.assert_allclose(a, b, atol=1e-6)


def test_split_steps_update_the_weights_as_the_whole_batch_does():
    """Optimizer steps through the split path leave the weights, carried memory and RNG where the fused
    whole-batch steps leave them, with no dropout layer (the copy attention's memory resets the only draw).
    The copy attention's value embeddings are gathered: the whole batch's gradient reaches Adam as an
    IndexedSlices with a row per gathered id, whose repeated rows Adam counts apart in its second moment. A
    split path that summed the pieces into a dense gradient trained otherwise (with dropout 0 and copy
    resets, a 2 x 256 that the whole batch trains stalled at a loss of ~3.0 on the standard library)."""
    settings = {"copy_memory": 5, "copy_heads": 2, "copy_head_size": 3, "copy_reset": 0.5, "dropout": 0.0,
                "embedding_dropout": 0.0, "batch_size": 4}  # even halves: one XLA compilation of a piece
    whole, split = trainer("lstm", "on", **settings), trainer("lstm", "split", **settings)
    split.model.set_weights(whole.model.get_weights())
    seeds = [[v for v in t.model.non_trainable_variables if "seed" in v.path] for t in (whole, split)]
    for a, b in zip(*seeds):
        b.assign(a)
    rng = np.random.default_rng(3)
    steps = [(rng.integers(0, 11, (4, 7)).astype(np.int32), rng.integers(0, 11, (4, 7)).astype(np.int32))
             for _ in range(3)]
    results = {}
    for name, t in (("whole", whole), ("split", split)):
        t.reset_states()
        losses = [float(t.train_step(tf.constant(x), tf.constant(y))) for x, y in steps]
        results[name] = losses, t.model.get_weights(), stack.get_states(t.model)
    (w_losses, w_weights, w_states), (s_losses, s_weights, s_states) = results["whole"], results["split"]
    np.testing.assert_allclose(s_losses, w_losses, atol=1e-6)
    for variable, a, b in zip(whole.model.weights, s_weights, w_weights):
        np.testing.assert_allclose(a, b, atol=1e-6, err_msg=variable.path)
    for a, b in zip(s_states, w_states):
        np.testing.assert_allclose(a, b, atol=1e-6)
    for a, b in zip(*seeds):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_non_default_cells_are_refused():
    """Cells whose math the fused path does not reproduce: auto keeps Keras, --fused on says why."""
    for layer in (keras.layers.GRU(9, reset_after=False, return_sequences=True, stateful=True),
                  keras.layers.SimpleRNN(9, activation="relu", return_sequences=True, stateful=True),
                  keras.layers.LSTM(9, recurrent_dropout=0.1, return_sequences=True, stateful=True)):
        ids = keras.Input(batch_shape=(3, None), dtype="int32")
        model = keras.Model(ids, keras.layers.Dense(11)(layer(keras.layers.Embedding(11, 6)(ids))))
        assert "not a default" in path_choice.unsupported_reason(model)
        assert not path_choice.choose(model, "auto", on_gpu=False).fused
        with pytest.raises(UserError, match="^fused on.*not a default"):
            path_choice.choose(model, "on", on_gpu=False)


def test_unsupported_reason_checks_stateful():
    ids = keras.Input(batch_shape=(3, None), dtype="int32")
    x = keras.layers.Embedding(11, 6)(ids)
    x = keras.layers.LSTM(9, return_sequences=True, stateful=False)(x)
    model = keras.Model(ids, keras.layers.Dense(11)(x))
    assert "stateful" in path_choice.unsupported_reason(model)


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


def test_auto_follows_this_machines_calibration(tmp_path, monkeypatch):
    """With timings for this machine, auto takes the faster path of the nearest measured configuration
    (same kind); another machine's timings, or none, leave the static rule."""
    path = str(tmp_path / "calibration.json")
    monkeypatch.setenv("KERASCHARRNN_CALIBRATION", path)
    assert trainer("lstm", rnn_size=128).path_choice.why.startswith("the rule")
    calibration.record([{"kind": "lstm", "fused_path": "on", "num_layers": 2, "rnn_size": 128, "fused_ms": 9.0,
                         "keras_ms": 12.0},
                        {"kind": "lstm", "fused_path": "on", "num_layers": 2, "rnn_size": 512, "fused_ms": 99.0,
                         "keras_ms": 90.0}])
    choice = trainer("lstm", rnn_size=128, batchnorm=True).path_choice  # batch norm: fused "on", not split
    assert choice.path == "on" and "measured on this machine at 2x128" in choice.why
    assert trainer("lstm", rnn_size=150, batchnorm=True).path_choice.fused  # nearest measured size: 128
    assert not trainer("lstm", rnn_size=400, batchnorm=True).path_choice.fused  # nearest: 512, where Keras won
    assert trainer("lstm", "off", rnn_size=128).path_choice.why == "--fused off"
    assert trainer("gru", batchnorm=True).path_choice.fused  # no GRU timings: the static rule
    assert chosen_path(rnn_size=512) == "split"  # timings of the other form ("on") do not count for a split run
    with open(path) as f:
        table = json.load(f)
    table["another CPU | 64 cores | tensorflow 9"] = table.pop(calibration.machine_key())
    with open(path, "w") as f:
        json.dump(table, f)
    assert not trainer("lstm", rnn_size=128, batchnorm=True).path_choice.fused  # not this machine's: the static rule
    with open(path, "w") as f:
        f.write("{not json")
    with pytest.raises(UserError, match="not a kerascharrnn calibration file"):
        trainer("lstm", rnn_size=128, batchnorm=True)
