import dataclasses
import json
import math
import os
import zipfile

import keras
import numpy as np

from conftest import train_in_process
from kerascharrnn import checkpoint as ckpt
from kerascharrnn import data, train
from kerascharrnn import model as model_lib
from kerascharrnn.charrnn import CharRNN
from kerascharrnn.vocab import Vocabulary


def test_loss_falls(trained):
    history = trained["result"].train_loss_history
    assert len(history) == 40
    assert np.mean(history[-5:]) < np.mean(history[:5]) - 0.5
    assert trained["result"].val_loss_history[-1] < math.log(trained["vocab"].size)


def test_checkpoint_files_and_json_fields(trained):
    prefix = trained["prefix"]
    for tag in (20, 40, "best"):
        for ext in (".keras", ".state.npz", ".json"):
            assert os.path.exists(f"{prefix}_{tag}{ext}"), (tag, ext)
    record = json.load(open(prefix + "_40.json"))
    assert record["iteration"] == 40
    assert len(record["train_loss_history"]) == 40
    assert record["val_loss_history_it"] == [20, 40]
    assert len(record["val_loss_history"]) == 2
    assert record["model_config"]["rnn_size"] == 32 and record["train_config"]["batch_size"] == 4
    assert record["vocab"]["idx_to_token"]["1"] == trained["vocab"].tokens[0]
    best = json.load(open(prefix + "_best.json"))
    assert best["model_file"] == os.path.basename(prefix) + "_best.keras"
    assert min(record["val_loss_history"]) == best["val_loss_history"][-1]
    assert ckpt.find_latest(prefix) == prefix + "_40.json"


def test_checkpoint_loads_in_plain_keras_and_carries_vocab(trained):
    model = keras.models.load_model(trained["keras"])
    assert model.inputs[0].shape == (4, None)
    assert model(np.zeros((4, 1), np.int32)).shape == (4, 1, trained["vocab"].size)
    with zipfile.ZipFile(trained["keras"]) as archive:
        assert ckpt.VOCAB_ENTRY in archive.namelist()
    assert ckpt.read_vocab(trained["keras"]) == trained["vocab"]
    assert ckpt.read_model_config(trained["keras"]) == trained["model_config"]
    charrnn = CharRNN.from_checkpoint(trained["keras"])
    assert (charrnn.config, charrnn.vocab, charrnn.batch_size) == (trained["model_config"], trained["vocab"], 4)
    single = charrnn.with_batch_size(1)
    assert single.batch_size == 1 and single.config == charrnn.config
    for a, b in zip(single.model.get_weights(), charrnn.model.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_model_without_json_is_ignored(trained, tmp_path):
    prefix = str(tmp_path / "c")
    for ext in (".keras", ".state.npz", ".json"):
        with open(trained["prefix"] + "_20" + ext, "rb") as src, open(f"{prefix}_20{ext}", "wb") as dst:
            dst.write(src.read().replace(b"checkpoint_20", b"c_20") if ext == ".json" else src.read())
    with open(trained["keras"], "rb") as src, open(prefix + "_40.keras", "wb") as dst:
        dst.write(src.read())  # a run killed before its .json: incomplete
    assert ckpt.find_latest(prefix) == prefix + "_20.json"


def test_validation_leaves_training_state_untouched(trained):
    config = trained["config"]
    layouts = data.layouts_for(data.split_lengths(config.input_h5), config.batch_size, config.seq_length)
    charrnn = CharRNN.build(trained["model_config"], trained["vocab"], config.batch_size)
    model = charrnn.model
    trainer = train.Trainer(config, charrnn, layouts)
    inputs, targets = next(iter(data.make_dataset(config.input_h5, "train", layouts["train"])))
    trainer.train_step(inputs, targets)
    before = model_lib.get_states(model)
    assert trainer.evaluate(config.input_h5, "val") > 0
    for a, b in zip(before, model_lib.get_states(model)):
        np.testing.assert_array_equal(a, b)


def test_interrupted_and_resumed_run_matches_uninterrupted(trained, tmp_path):
    from kerascharrnn.preprocess import preprocess

    with open(trained["config"].input_h5.replace(".h5", ".txt"), encoding="utf-8") as f:
        (tmp_path / "mini.txt").write_text(f.read()[:3000], encoding="utf-8")
    preprocess(str(tmp_path / "mini.txt"), str(tmp_path / "mini.h5"), str(tmp_path / "mini.json"), quiet=True)
    base = dataclasses.replace(trained["config"], max_iters=0, max_epochs=2, checkpoint_every=7,
                               checkpoint_name=str(tmp_path / "full"), lr_decay_every=1,
                               input_h5=str(tmp_path / "mini.h5"), input_json=str(tmp_path / "mini.json"))
    model_config = dataclasses.replace(trained["model_config"], dropout=0.2)
    vocab = Vocabulary.load(base.input_json)
    model_config = dataclasses.replace(model_config, vocab_size=vocab.size)
    lengths = data.split_lengths(base.input_h5)
    layouts = data.layouts_for(lengths, base.batch_size, base.seq_length)
    num_train = layouts["train"].num_batches
    full = train_in_process(base, model_config)
    assert len(full.train_loss_history) == 2 * num_train

    stop_at = num_train + 3  # mid-way through the second epoch, after a learning-rate decay
    part = dataclasses.replace(base, checkpoint_name=str(tmp_path / "part"), max_iters=stop_at)
    train_in_process(part, model_config)
    record = ckpt.read_record(str(tmp_path / f"part_{stop_at}.json"))
    charrnn = CharRNN.from_checkpoint(record.model_path, batch_size=base.batch_size)
    resumed = train_in_process(dataclasses.replace(record.train_config, max_iters=0), model_config, charrnn=charrnn,
                               resume=record)
    assert len(resumed.train_loss_history) == len(full.train_loss_history)
    np.testing.assert_allclose(resumed.train_loss_history, full.train_loss_history, atol=1e-6, rtol=0)
    np.testing.assert_allclose(resumed.val_loss_history[-1], full.val_loss_history[-1], atol=1e-6)
