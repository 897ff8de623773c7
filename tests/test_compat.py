"""Files written by v0.1.0 (tests/fixtures/v0.1.0, see its README) still load, sample, evaluate, export
and resume exactly, and a seeded run from scratch gives v0.1.0's numbers."""

import json
import os
import re
import shutil

import numpy as np
import pytest
from conftest import run_cli

from kerascharrnn import resources
from kerascharrnn.config import SampleConfig
from kerascharrnn.data import batches
from kerascharrnn.inference import engines
from kerascharrnn.io import artifacts
from kerascharrnn.io import checkpoint as ckpt
from kerascharrnn.models.charrnn import CharRNN
from kerascharrnn.training import evaluate

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "v0.1.0")
RELATIVE = os.path.join("tests", "fixtures", "v0.1.0")  # how the fixtures' JSON names its files
KINDS = ("lstm", "gru")
TRAIN_FLAGS = ["--batch_size", "4", "--seq_length", "16", "--rnn_size", "16", "--wordvec_size", "8", "--num_layers",
               "2", "--dropout", "0.1", "--max_iters", "100", "--checkpoint_every", "50", "--lr_decay_every", "1",
               "--learning_rate", "0.01", "--print_every", "0", "--seed", "3"]

with open(os.path.join(FIXTURES, "expected.json"), encoding="utf-8") as f:
    EXPECTED = json.load(f)


def fixture(name: str) -> str:
    return os.path.join(FIXTURES, name)


@pytest.mark.parametrize("kind", KINDS)
def test_v010_checkpoint_loads_with_its_config(kind):
    record = ckpt.read_record(fixture(f"{kind}_100.json"))
    assert ckpt.stored_model_config(fixture(f"{kind}_100.keras")) is None  # v0.1.0 stored no config entry
    charrnn = CharRNN.from_checkpoint(fixture(f"{kind}_100.json"))
    assert charrnn.config == record.model_config
    assert charrnn.vocab == record.vocab
    # v0.1.0 recorded no path: its LSTMs ran the size rule, its GRUs the Keras layers
    assert record.train_config.fused == ("auto" if kind == "lstm" else "off")


@pytest.mark.parametrize("kind", KINDS)
def test_v010_checkpoint_samples_and_evaluates_as_v010_did(kind):
    engine = engines.open_engine("checkpoint", fixture(f"{kind}_100.keras"))
    greedy = engines.sample_texts(engine, SampleConfig(length=120, start_text="ROMEO:", sample=False))
    seeded = engines.sample_texts(engine, SampleConfig(length=120, temperature=0.9, top_k=10, seed=7))
    assert greedy == [json.loads(EXPECTED[kind]["greedy"])]
    assert seeded == [json.loads(EXPECTED[kind]["seeded"])]
    charrnn = CharRNN.from_checkpoint(fixture(f"{kind}_100.keras"))
    h5 = fixture("corpus.h5")
    layout = batches.stream_layout(batches.split_lengths(h5)["val"], charrnn.batch_size, 50, allow_fewer_streams=True)
    loss = evaluate.split_loss(charrnn.model, h5, "val", layout)
    assert f"val loss: {loss:.6f} nats/char" in EXPECTED[kind]["eval_val"]


def test_v010_checkpoint_exports_and_the_saved_model_samples_the_same(tmp_path):
    from kerascharrnn.export import saved_model as export

    charrnn = CharRNN.from_checkpoint(fixture("lstm_100.keras"))
    version_dir = str(tmp_path / "m" / "1")
    export.export(charrnn, version_dir, source=fixture("lstm_100.keras"), tflite=True)
    for kind, path in (("saved_model", version_dir), ("tflite", os.path.join(version_dir, "tflite", "model.tflite"))):
        engine = engines.open_engine(kind, path, charrnn.vocab)
        greedy = engines.sample_texts(engine, SampleConfig(length=120, start_text="ROMEO:", sample=False))
        assert greedy == [json.loads(EXPECTED["lstm"]["greedy"])], kind


def _train(workdir, *args):
    result = run_cli("train", *args, cwd=workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.fixture
def workdir(tmp_path):
    """A copy of the fixtures at the relative path their JSON names, so a resumed run writes there."""
    shutil.copytree(FIXTURES, tmp_path / RELATIVE)
    return tmp_path


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_v010_checkpoint_resumes_exactly(workdir, kind):
    """Resuming v0.1.0's checkpoint at 50 reproduces v0.1.0's uninterrupted run to 100 (a learning-rate
    decay at 75, dropout RNG and carried state in between)."""
    os.remove(workdir / RELATIVE / f"{kind}_100.json")
    _train(workdir, "--resume_from", os.path.join(RELATIVE, f"{kind}_50.json"))
    record = ckpt.read_record(str(workdir / RELATIVE / f"{kind}_100.json"))
    assert record.iteration == 100
    np.testing.assert_allclose(record.history["train_loss_history"], EXPECTED[kind]["train_loss_history"],
                               rtol=1e-6, atol=0)
    np.testing.assert_allclose(record.history["val_loss_history"], EXPECTED[kind]["val_loss_history"],
                               rtol=1e-6, atol=0)


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_seeded_run_from_scratch_gives_v010_numbers(workdir, kind):
    """v0.1.0's seeded command on v0.1.0's training path gives its numbers. Models now train through the
    fused kernel with the batch split in two by default (its rounding differs), so the command asks for
    the path v0.1.0 took: the fused kernel in one piece for this LSTM, the Keras layers for a GRU."""
    name = str(workdir / "cv" / kind)
    v010_path = {"lstm": "on", "gru": "off"}[kind]
    _train(workdir, "--input_h5", os.path.join(RELATIVE, "corpus.h5"), "--model_type", kind, *TRAIN_FLAGS,
           "--checkpoint_name", name, "--fused", v010_path)
    record = ckpt.read_record(name + "_100.json")
    np.testing.assert_allclose(record.history["train_loss_history"], EXPECTED[kind]["train_loss_history"],
                               rtol=1e-6, atol=0)
    assert record.train_config.fused == v010_path  # the choice, recorded


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_the_default_path_trains_near_v010_numbers(workdir, kind):
    """The same seeded command without --fused: the split fused path, recorded, and v0.1.0's loss curve up
    to the drift that rounding differences (~1e-7 in the gradients, tests/test_fused.py) grow into over
    100 Adam steps at learning rate 0.01 on batches of 4 (4% at most here)."""
    name = str(workdir / "cv" / kind)
    _train(workdir, "--input_h5", os.path.join(RELATIVE, "corpus.h5"), "--model_type", kind, *TRAIN_FLAGS,
           "--checkpoint_name", name)
    record = ckpt.read_record(name + "_100.json")
    assert record.train_config.fused == ("split" if resources.cpu_cores() >= 2 else "on")
    np.testing.assert_allclose(record.history["train_loss_history"], EXPECTED[kind]["train_loss_history"],
                               rtol=0.1, atol=0)


def test_a_tflite_file_without_steps_samples_as_before():
    """A model.tflite exported before the `steps` signature (tests/fixtures/tflite_v0.2): sampled one
    character per call, the same texts as then (greedy and seeded)."""
    path = os.path.join(os.path.dirname(FIXTURES), "tflite_v0.2", "model.tflite")
    with open(os.path.join(os.path.dirname(path), "expected.json"), encoding="utf-8") as f:
        expected = json.load(f)
    engine = engines.open_engine("tflite", path, artifacts.tflite_vocab(path))
    assert engine.sampler.multi_step is None
    assert engines.sample_texts(engine, SampleConfig(length=120, start_text="ROMEO:", sample=False)) == [expected["greedy"]]
    assert engines.sample_texts(engine, SampleConfig(length=120, seed=7, temperature=0.9)) == [expected["seeded"]]


V03 = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "v0.3")


def test_a_v03_record_with_digests_resumes_and_its_digests_still_guard_it(tmp_path):
    """tests/fixtures/v0.3 (see its README): a record with the digests of its files and data resumes in the
    series it belongs to; a swapped state file is refused by its digest."""
    for name in os.listdir(V03):
        shutil.copy(os.path.join(V03, name), tmp_path / name)
    record = ckpt.read_record(str(tmp_path / "lstm_50.json"))
    assert set(record.digests) == {"model", "state", "data"}
    record.check_files()
    corpus = os.path.join(FIXTURES, "corpus.h5")
    assert ckpt.file_digest(corpus) == record.digests["data"]  # the data it names, wherever it now lies
    resumed = run_cli("train", "--resume_from", tmp_path / "lstm_50.json", "--input_h5", corpus, "--max_iters", 60)
    assert resumed.returncode == 0 and "iteration 60" in resumed.stdout, resumed.stderr
    assert ckpt.read_record(str(tmp_path / "lstm_60.json")).iteration == 60
    shutil.copy(tmp_path / "lstm_60.state.npz", tmp_path / "lstm_50.state.npz")
    refused = run_cli("train", "--resume_from", tmp_path / "lstm_50.json", "--input_h5", corpus, "--max_iters", 70)
    assert refused.returncode == 1 and "lstm_50.state.npz is not the file" in refused.stderr


V04 = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "v0.4")


def test_a_v04_record_of_a_budgeted_preset_resumes_with_its_choice(tmp_path):
    """tests/fixtures/v0.4 (see its README): a record that says what --preset auto chose resumes that model
    (a resume is never sized again) and keeps the reason in its next records."""
    for name in os.listdir(V04):
        shutil.copy(os.path.join(V04, name), tmp_path / name)
    record = ckpt.read_record(str(tmp_path / "auto_50.json"))
    assert record.train_config.sized_by.startswith("2 x 16 ") and record.model_config.dropout == 0.46
    corpus = os.path.join(FIXTURES, "corpus.h5")
    resumed = run_cli("train", "--resume_from", tmp_path / "auto_50.json", "--input_h5", corpus, "--max_iters", 60,
                      "--preset", "auto")
    assert resumed.returncode == 0 and "iteration 60" in resumed.stdout, resumed.stderr
    assert "not sized for the budget: the model comes from the checkpoint" in resumed.stdout
    assert ckpt.read_record(str(tmp_path / "auto_60.json")).train_config.sized_by == record.train_config.sized_by


V05 = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "v0.5")


def test_a_v05_record_of_a_fine_tune_resumes_and_keeps_saying_where_it_came_from(tmp_path):
    """tests/fixtures/v0.5 (see its README): a fine-tune of a v0.1.0 base on another vocabulary, planned by
    --preset auto, resumes with its plan (early stopping included) and its base's provenance."""
    for name in os.listdir(V05):
        shutil.copy(os.path.join(V05, name), tmp_path / name)
    record = ckpt.read_record(str(tmp_path / "ft_30.json"))
    base = record.fine_tuned_from
    assert base["sha256"] == ckpt.file_digest(os.path.join(FIXTURES, "lstm_100.keras")) and base["iteration"] == 100
    assert base["mapped"] == 51 and "é" in base["added"] and "z" in base["dropped"]
    assert record.train_config.early_stopping == 5 and record.train_config.sized_by.startswith("fine-tuning")
    resumed = run_cli("train", "--resume_from", tmp_path / "ft_30.json", "--input_h5", os.path.join(V05, "corpus.h5"),
                      "--max_iters", 40)
    assert resumed.returncode == 0 and "iteration 40" in resumed.stdout, resumed.stderr
    again = ckpt.read_record(str(tmp_path / "ft_40.json"))
    assert again.fine_tuned_from == base and again.train_config.early_stopping == 5
    sampled = run_cli("sample", "--checkpoint", tmp_path / "ft_40.json", "--start_text", "“é", "--length", 30,
                      "--seed", 1)
    assert sampled.returncode == 0 and sampled.stdout.startswith("“é"), sampled.stderr


def test_one_version_and_a_changelog_that_names_it():
    from conftest import REPO

    import kerascharrnn

    setup = open(os.path.join(REPO, "setup.cfg"), encoding="utf-8").read()
    assert re.search(r"^version = attr: kerascharrnn.__version__$", setup, re.M)  # read from the package, not copied
    changelog = open(os.path.join(REPO, "CHANGELOG.md"), encoding="utf-8").read()
    assert re.search(r"^## (\S+)", changelog, re.M).group(1) == kerascharrnn.__version__


@pytest.mark.parametrize("value, message", [(2, "written by a newer kerascharrnn (record format 2"),
                                            ("1", "must be a record format number"), (True, "record format number")])
def test_a_record_of_a_newer_or_unknown_format_is_refused_in_one_line(tmp_path, value, message):
    from kerascharrnn.errors import UserError

    source = os.path.join(os.path.dirname(FIXTURES), "v0.4", "auto_50.json")
    record = json.load(open(source, encoding="utf-8"))
    record[ckpt.FORMAT_KEY] = value
    path = tmp_path / "auto_50.json"
    path.write_text(json.dumps(record))
    with pytest.raises(UserError, match=re.escape(message)):
        ckpt.read_record(str(path))
