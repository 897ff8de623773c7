"""--copy_memory: the copy attention layer (kerascharrnn/copy_attention.py) in every form the package runs it:
over windows (training, evaluation), one character at a time (sampling, export, TFLite), saved and
resumed (the fused XLA path: tests/test_fused.py)."""

import dataclasses
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import TINY_TRAIN_FLAGS, run_cli, train_in_process

from kerascharrnn.config import ModelConfig, TrainConfig
from kerascharrnn.export import saved_model as export
from kerascharrnn.inference import engines
from kerascharrnn.io import checkpoint as ckpt
from kerascharrnn.models import stack
from kerascharrnn.models.charrnn import CharRNN
from kerascharrnn.models.copy_attention import CopyAttention
from kerascharrnn.vocab import Vocabulary

VOCAB = Vocabulary(tuple("abcdefghijk"))


def copy_charrnn(model_type="lstm", batch_size=3, memory=6, seed=0):
    config = ModelConfig(vocab_size=VOCAB.size, model_type=model_type, wordvec_size=6, rnn_size=9, num_layers=2,
                         copy_memory=memory, copy_heads=2, copy_head_size=4)
    keras.utils.set_random_seed(seed)
    charrnn = CharRNN.build(config, VOCAB, batch_size)
    layer = charrnn.model.get_layer("copy_attention")
    # its output kernel starts at zero (the layer starts as the identity): give it weight to test
    layer.output_kernel.assign(np.random.default_rng(seed).normal(size=layer.output_kernel.shape).astype(np.float32))
    return charrnn


def window_logits(charrnn, ids, window):
    stack.reset_states(charrnn.model)
    return np.concatenate([charrnn.model(ids[:, i:i + window]).numpy() for i in range(0, ids.shape[1], window)], 1)


@pytest.mark.parametrize("model_type", ["lstm", "gru"])
def test_window_lengths_and_the_step_form_agree(model_type):
    """Each position sees exactly the last M pairs, so any window length and the one-character step
    (sampling, export) give the same logits; the memory carries across windows and past M."""
    charrnn = copy_charrnn(model_type)
    ids = np.random.default_rng(1).integers(0, VOCAB.size, (3, 20)).astype(np.int32)
    whole = window_logits(charrnn, ids, 20)
    for window in (1, 4, 7):
        np.testing.assert_allclose(window_logits(charrnn, ids, window), whole, atol=1e-5)
    step = charrnn.step_fn()
    states = tuple(tf.zeros((3, size)) for size in charrnn.state_sizes)
    for t in range(20):
        logits, states = step(tf.constant(ids[:, t]), states)
        np.testing.assert_allclose(logits.numpy(), whole[:, t], atol=1e-5)
    assert charrnn.state_names[-4:] == ["copy_attention previous_output", "copy_attention count",
                                        "copy_attention keys", "copy_attention values"]
    assert charrnn.state_sizes[-4:] == [9, 1, 6 * 8, 6 * 8]


def test_the_memory_reaches_back_exactly_memory_size_pairs():
    """Changing the text at position p changes the attention's output at p + 1 ... p + M and no later."""
    memory = 5
    layer = CopyAttention(vocab_size=4, memory_size=memory, num_heads=1, head_size=3)
    outputs = np.random.default_rng(2).normal(size=(1, 16, 6)).astype(np.float32)
    ids = np.random.default_rng(3).integers(0, 4, (1, 16)).astype(np.int32)
    layer.build([(1, None, 6), (1, None)])
    layer.output_kernel.assign(np.ones((3, 6), np.float32))
    layer.reset_state()
    before = layer([outputs, ids]).numpy()
    changed = outputs.copy()
    changed[0, 4] += 1.0  # the key of pair (output 4, id 5)
    layer.reset_state()
    after = layer([changed, ids]).numpy()
    differs = np.abs(after - before).max(axis=2)[0] > 1e-6
    assert differs[4]  # the output itself (residual and query)
    assert differs[5:5 + memory].all() and not differs[5 + memory:].any()


def test_training_resets_empty_a_streams_memory_with_the_reset_rate():
    """reset_rate: in training a stream's window starts from an empty memory with that chance, as a
    stream's first window does; evaluation and sampling never reset."""
    rng = np.random.default_rng(6)
    first, second = ([rng.normal(size=(64, 4, 5)).astype(np.float32), rng.integers(0, 4, (64, 4)).astype(np.int32)]
                     for _ in range(2))
    weights = None

    def second_window(reset_rate, training, carry=True):
        nonlocal weights
        keras.utils.set_random_seed(5)
        layer = CopyAttention(vocab_size=4, memory_size=6, num_heads=1, head_size=3, reset_rate=reset_rate)
        layer.build([(64, None, 5), (64, None)])
        weights = weights or [np.random.default_rng(7).normal(size=w.shape).astype(np.float32)
                              for w in layer.weights]
        layer.set_weights(weights)
        if carry:
            layer(first, training=training)
        return layer(second, training=training).numpy(), layer

    carried, _ = second_window(0.0, training=True)
    empty, _ = second_window(0.0, training=False, carry=False)
    assert np.abs(empty - carried).max() > 1e-3
    np.testing.assert_allclose(second_window(1.0, training=True)[0], empty, atol=1e-6)  # every stream reset
    np.testing.assert_allclose(second_window(1.0, training=False)[0], carried, atol=1e-6)  # never outside training
    half, layer = second_window(0.5, training=True)
    reset = np.abs(half - empty).max(axis=(1, 2)) < 1e-6
    kept = np.abs(half - carried).max(axis=(1, 2)) < 1e-6
    assert (reset | kept).all() and 16 < reset.sum() < 48  # whole streams, about half of them
    np.testing.assert_allclose(second_window(0.5, training=True)[0], half)  # seeded: the same streams again
    assert layer.get_config()["reset_rate"] == 0.5


@pytest.fixture(scope="module")
def copy_trained(small_corpus, tmp_path_factory):
    _, h5, js = small_corpus
    prefix = str(tmp_path_factory.mktemp("copy_cv") / "copy")
    config = TrainConfig(input_h5=h5, input_json=js, checkpoint_name=prefix,
                         **dict(TINY_TRAIN_FLAGS, max_iters=30, checkpoint_every=10))
    vocab = Vocabulary.load(js)
    model_config = ModelConfig(vocab_size=vocab.size, rnn_size=24, wordvec_size=16, num_layers=2, copy_memory=12,
                               copy_heads=2, copy_head_size=8, copy_reset=0.3, dropout=0.1)
    result = train_in_process(config, model_config)
    return {"result": result, "prefix": prefix, "config": config, "model_config": model_config, "vocab": vocab,
            "h5": h5, "keras": prefix + "_30.keras"}


def test_checkpoint_loads_and_resume_is_exact(copy_trained, tmp_path):
    """The memory (and its resets' seed generator) is training state: a run stopped at 10 and resumed
    matches the uninterrupted one."""
    charrnn = CharRNN.from_checkpoint(copy_trained["keras"])
    assert charrnn.config == copy_trained["model_config"]
    loaded = keras.models.load_model(copy_trained["keras"])  # with the package imported, plain Keras loads it
    assert stack.config_of(loaded) == copy_trained["model_config"]
    fresh = subprocess.run([sys.executable, "-c", "import sys, keras, kerascharrnn.copy_attention; "
                            "print(keras.models.load_model(sys.argv[1]).layers[-2].memory_size)",
                            copy_trained["keras"]], capture_output=True, text=True, timeout=120)
    assert fresh.returncode == 0 and fresh.stdout.strip() == "12", fresh.stderr[-500:]
    record = ckpt.read_record(copy_trained["prefix"] + "_10.json")
    resumed_from = CharRNN.from_checkpoint(record.model_path, batch_size=copy_trained["config"].batch_size)
    resumed = train_in_process(dataclasses.replace(record.train_config, max_iters=30,
                                                   checkpoint_name=str(tmp_path / "resumed")),
                               copy_trained["model_config"], charrnn=resumed_from, resume=record)
    np.testing.assert_allclose(resumed.train_loss_history, copy_trained["result"].train_loss_history, atol=1e-6,
                               rtol=0)


def test_export_step_and_tflite_match_keras(copy_trained, tmp_path):
    charrnn = CharRNN.from_checkpoint(copy_trained["keras"])
    version_dir = str(tmp_path / "1")
    info = export.export(charrnn, version_dir, source=copy_trained["keras"], tflite=True)
    assert [s["part"] for s in info["states"]][-4:] == ["previous_output", "count", "keys", "values"]
    ids = np.random.default_rng(4).integers(0, charrnn.vocab.size, 60).astype(np.int32)
    model = charrnn.model
    stack.reset_states(model)
    batch = model.inputs[0].shape[0]
    expected = model(np.tile(ids[None], (batch, 1))).numpy()
    loaded = tf.saved_model.load(version_dir)
    runner = engines.load_interpreter(os.path.join(version_dir, "tflite", "model.tflite")).get_signature_runner("step")
    for call in (loaded.signatures["step"], runner):
        states = {f"state_{k}": np.zeros((batch, h), np.float32) for k, h in enumerate(charrnn.state_sizes)}
        for t in range(len(ids)):
            out = call(ids=np.full(batch, ids[t], np.int32), **states)
            np.testing.assert_allclose(np.asarray(out["logits"]), expected[:, t], atol=1e-4)
            states = {k: np.asarray(out[k]) for k in states}


def test_sample_eval_and_refusals_through_the_cli(copy_trained, tmp_path):
    keras_path = copy_trained["keras"]
    base = tmp_path / "models"
    assert run_cli("export", "--checkpoint", keras_path, "--export_dir", base, "--model_name", "c",
                   "--tflite").returncode == 0
    outputs = []
    for source in (["--checkpoint", keras_path], ["--saved_model", base / "c"],
                   ["--tflite", base / "c" / "1" / "tflite" / "model.tflite"]):
        result = run_cli("sample", *source, "--sample", 0, "--length", 300, "--start_text", "ROMEO:")
        assert result.returncode == 0, result.stderr
        outputs.append(result.stdout)
    assert len(outputs[0]) == 301 and outputs[0] == outputs[1] == outputs[2]
    evaluated = run_cli("eval", "--checkpoint", keras_path, "--input_h5", copy_trained["h5"], "--split", "val")
    assert evaluated.returncode == 0 and "nats/char" in evaluated.stdout, evaluated.stderr
    refused = run_cli("train", "--input_h5", copy_trained["h5"], "--copy_memory", 8, "--strategy", "mirrored",
                      "--max_iters", 2, "--checkpoint_name", tmp_path / "x")
    assert refused.returncode != 0 and "copy attention (--copy_memory) trains on one device" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1 and "Traceback" not in refused.stderr


COPY_FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "copy_attention")


def test_fixture_written_when_the_layer_landed_still_loads_samples_and_evaluates():
    """tests/fixtures/copy_attention (see its README): the first release's --copy_memory checkpoint keeps
    loading and giving the numbers it gave then."""
    with open(os.path.join(COPY_FIXTURES, "expected.json"), encoding="utf-8") as f:
        expected = json.load(f)
    path = os.path.join(COPY_FIXTURES, "copy_30.keras")
    charrnn = CharRNN.from_checkpoint(path)
    assert charrnn.config.copy_memory == 24 and charrnn.config.copy_heads == 2
    greedy = run_cli("sample", "--checkpoint", path, "--sample", 0, "--length", 120, "--start_text", "ROMEO:",
                     "--jsonl")
    assert greedy.returncode == 0 and greedy.stdout == expected["greedy"], greedy.stderr
    evaluated = run_cli("eval", "--checkpoint", path, "--input_h5", os.path.join(COPY_FIXTURES, "..", "v0.1.0",
                                                                                  "corpus.h5"), "--split", "val")
    assert evaluated.returncode == 0 and evaluated.stdout == expected["eval_val"], evaluated.stderr
