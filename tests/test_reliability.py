"""No lost training: signals, kills at fixed points, NaN, failed writes; and property tests of the
preprocess -> data pipeline path (hypothesis, derandomized, no deadline)."""

import errno
import json
import os
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest
from conftest import REPO, run_cli, run_process, shakespeare_text
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kerascharrnn.data import batches
from kerascharrnn.data.preprocess import preprocess, split_sizes
from kerascharrnn.errors import UserError
from kerascharrnn.io import checkpoint as ckpt
from kerascharrnn.vocab import Vocabulary

PROPERTY = settings(max_examples=40, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

# --- properties -----------------------------------------------------------------------------------


@PROPERTY
@given(text=st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), min_size=2,
                    max_size=300),
       encoding=st.sampled_from(["utf-8", "bytes"]))
def test_preprocess_then_decode_gives_the_text_back(tmp_path, text, encoding):
    path = tmp_path / "t.txt"
    path.write_bytes(text.encode("utf-8"))
    preprocess(str(path), str(tmp_path / "t.h5"), str(tmp_path / "t.json"), val_frac=0.1, test_frac=0.1,
               quiet=True, encoding=encoding)
    vocab = Vocabulary.load(str(tmp_path / "t.json"))
    with h5py.File(tmp_path / "t.h5", "r") as f:
        ids = np.concatenate([f["train"][:], f["val"][:], f["test"][:]]).astype(np.int64) - 1
        lengths = [len(f[s]) for s in ("train", "val", "test")]
    assert vocab.decode(ids) == text
    assert sum(lengths) == (len(text.encode("utf-8")) if encoding == "bytes" else len(text))


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(total=st.integers(0, 10**7), val_frac=st.floats(0, 0.5), test_frac=st.floats(0, 0.5))
def test_split_sizes_sum_to_the_corpus(total, val_frac, test_frac):
    sizes = split_sizes(total, val_frac, test_frac)
    assert sizes.train + sizes.val + sizes.test == total
    assert sizes.val == int(val_frac * total) and sizes.test == int(test_frac * total)


@settings(max_examples=150, deadline=None, derandomize=True, database=None)
@given(num_tokens=st.integers(2, 3000), batch_size=st.integers(1, 9), seq_length=st.integers(1, 40),
       fewer=st.booleans())
def test_each_covered_token_comes_once_per_epoch_in_stream_order(num_tokens, batch_size, seq_length, fewer):
    layout = batches.stream_layout(num_tokens, batch_size, seq_length, allow_fewer_streams=fewer)
    tokens = np.arange(1, num_tokens + 1)  # 1-based ids, each token its own position + 1
    windows = list(batches.batch_arrays(tokens, layout))
    assert len(windows) == layout.num_batches
    if not windows:
        assert num_tokens - 1 < batch_size * seq_length
        return
    inputs = np.concatenate([b[0] for b in windows], axis=1)[:layout.num_streams]  # (streams, stream_length)
    targets = np.concatenate([b[1] for b in windows], axis=1)[:layout.num_streams]
    seen = inputs.reshape(-1)
    np.testing.assert_array_equal(seen, np.arange(layout.tokens_covered))  # once each, in stream order
    np.testing.assert_array_equal(targets, inputs + 1)
    dropped = (num_tokens - 1) - layout.tokens_covered
    assert 0 <= dropped < layout.num_streams * layout.seq_length  # only a remainder smaller than one batch


# --- faults during training, through bin/train ----------------------------------------------------

FAULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "faults")


def crash_at(point: str) -> dict:
    """Environment for a bin/train that SIGKILLs itself at `point` (see tests/faults/sitecustomize.py)."""
    return {"PYTHONPATH": os.pathsep.join(filter(None, [FAULTS, os.environ.get("PYTHONPATH")])),
            "KERASCHARRNN_TEST_CRASH_AT": point}

TINY = ["--batch_size", 4, "--seq_length", 16, "--rnn_size", 16, "--wordvec_size", 8, "--num_layers", 1,
        "--print_every", 1, "--seed", 5]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    (root / "in.txt").write_text(shakespeare_text()[:8_000], encoding="utf-8")
    assert run_cli("preprocess", "--input_txt", root / "in.txt", "--output_h5", root / "in.h5", "--output_json",
                   root / "in.json", "--quiet").returncode == 0
    return root


def test_kill_after_state_before_json_is_ignored_and_resume_continues(corpus, tmp_path):
    name = tmp_path / "cv" / "ck"
    killed = run_process("train", "--input_h5", corpus / "in.h5", *TINY, "--max_iters", 20, "--checkpoint_every", 5,
                     "--checkpoint_name", name, env=crash_at("after_state:10"))
    assert killed.returncode == -signal.SIGKILL
    assert (tmp_path / "cv" / "ck_10.keras").exists() and (tmp_path / "cv" / "ck_10.state.npz").exists()
    assert not (tmp_path / "cv" / "ck_10.json").exists()
    assert ckpt.find_latest(str(name)) == str(tmp_path / "cv" / "ck_5.json")

    resumed = run_cli("train", "--resume_from", "latest", "--checkpoint_name", name)
    assert resumed.returncode == 0, resumed.stderr
    assert "i = 6 / 20" in resumed.stdout
    record = json.load(open(tmp_path / "cv" / "ck_20.json"))
    assert len(record["train_loss_history"]) == 20  # the whole run, not only the resumed part
    first_five = json.load(open(tmp_path / "cv" / "ck_5.json"))["train_loss_history"]
    assert record["train_loss_history"][:5] == first_five
    assert ckpt.find_latest(str(name)) == str(tmp_path / "cv" / "ck_20.json")


def test_kill_while_overwriting_best_leaves_no_half_best(corpus, tmp_path):
    name = tmp_path / "cv" / "ck"
    killed = run_process("train", "--input_h5", corpus / "in.h5", *TINY, "--max_iters", 10, "--checkpoint_every", 5,
                     "--checkpoint_name", name, env=crash_at("after_model:best"))
    assert killed.returncode == -signal.SIGKILL
    assert not (tmp_path / "cv" / "ck_best.json").exists()  # an incomplete set is never marked complete


@pytest.mark.parametrize("signum,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143), (signal.SIGHUP, 129)])
def test_signal_writes_checkpoint_and_says_how_to_resume(corpus, tmp_path, signum, code):
    name = tmp_path / "cv" / "ck"
    process = subprocess.Popen(
        [sys.executable, os.path.join(REPO, "bin", "train"), "--input_h5", str(corpus / "in.h5"),
         *map(str, TINY), "--max_iters", "100000", "--checkpoint_every", "100000", "--checkpoint_name", str(name)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in process.stdout:  # wait until training runs
        if line.startswith("Epoch"):
            break
    process.send_signal(signum)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == code, stderr
    lines = [l for l in stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and "Resume with:" in lines[0] and "--resume_from" in lines[0]
    checkpoint_json = lines[0].split("checkpoint ")[1].split(". Resume")[0]
    record = ckpt.read_record(checkpoint_json)
    assert record.iteration == len(record.history["train_loss_history"]) >= 1


def test_nan_loss_stops_and_names_the_last_good_checkpoint(corpus, tmp_path):
    # an absurd step size: the weights overflow on the second update
    result = run_cli("train", "--input_h5", corpus / "in.h5", *TINY, "--max_iters", 10, "--checkpoint_every", 1,
                     "--learning_rate", "1e38", "--grad_clip", "1e38", "--checkpoint_name", tmp_path / "ck")
    assert result.returncode == 1
    lines = [l for l in result.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and "loss became nan" in lines[0].lower() and "--learning_rate" in lines[0], result.stderr
    good = lines[0].split("last good checkpoint is ")[1].split(";")[0]
    assert ckpt.read_record(good).iteration == 1 and ckpt.find_latest(str(tmp_path / "ck")) == good


def test_failed_checkpoint_write_keeps_the_previous_one(trained, tmp_path, monkeypatch):
    from kerascharrnn.config import TrainConfig
    from kerascharrnn.models.charrnn import CharRNN
    from kerascharrnn.training import loop

    calls = []

    def disk_full_on_second_write(path, arrays, _real=ckpt.save_state):
        calls.append(path)
        if len(calls) > 2:  # the first checkpoint and its _best copy succeed
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        _real(path, arrays)

    monkeypatch.setattr(ckpt, "save_state", disk_full_on_second_write)
    config = TrainConfig(input_h5=trained["h5"], input_json=trained["json"], batch_size=4, seq_length=16,
                         max_iters=10, checkpoint_every=5, print_every=0, seed=1,
                         checkpoint_name=str(tmp_path / "ck"))
    layouts = batches.layouts_for(batches.split_lengths(trained["h5"]), 4, 16)
    with pytest.raises(UserError, match="no space left on the device.*previous checkpoint is intact"):
        loop.train_and_evaluate(config, CharRNN.build(trained["model_config"], trained["vocab"], 4), layouts,
                                 log=lambda *_: None)
    assert ckpt.find_latest(str(tmp_path / "ck")) == str(tmp_path / "ck_5.json")
    CharRNN.from_checkpoint(str(tmp_path / "ck_5.keras"))
    assert not (tmp_path / "ck_10.json").exists()


def test_resume_from_latest_of_a_finished_run_is_a_no_op(corpus, tmp_path):
    name = tmp_path / "ck"
    assert run_cli("train", "--input_h5", corpus / "in.h5", *TINY, "--max_iters", 4,
                   "--checkpoint_name", name).returncode == 0
    before = os.path.getmtime(tmp_path / "ck_4.json")
    time.sleep(0.01)
    again = run_cli("train", "--resume_from", "latest", "--checkpoint_name", name)
    assert again.returncode == 0 and "iteration 4" in again.stdout
    assert os.path.getmtime(tmp_path / "ck_4.json") == before


def test_resume_from_auto_starts_a_new_run_then_resumes_it(corpus, tmp_path):
    """The same command, started and started again (a container's): a new run the first time, after that
    the newest checkpoint, which the second start continues to the new --max_iters."""
    name = tmp_path / "ck"
    command = ["train", "--input_h5", corpus / "in.h5", *TINY, "--checkpoint_name", name, "--resume_from", "auto",
               "--seed", 1]
    first = run_cli(*command, "--max_iters", 4)
    assert first.returncode == 0 and "no checkpoint" in first.stderr and "a new run" in first.stderr
    assert ckpt.find_latest(str(name)) == str(tmp_path / "ck_4.json")
    second = run_cli(*command, "--max_iters", 6)
    assert second.returncode == 0 and "a new run" not in second.stderr and "iteration 6" in second.stdout
    assert f"Resuming {tmp_path / 'ck_4.json'} at iteration 4" in second.stdout
    assert ckpt.read_record(str(tmp_path / "ck_6.json")).iteration == 6


def test_one_command_runs_every_tool(corpus, tmp_path):
    from kerascharrnn.cli.__main__ import TOOLS, main

    assert main(["kerascharrnn"]) == 2 and main(["kerascharrnn", "--help"]) == 0
    assert main(["kerascharrnn", "trian"]) == 2
    assert set(TOOLS) == {path[:-3] for path in os.listdir(os.path.dirname(main.__code__.co_filename))
                          if path.endswith(".py") and not path.startswith("_") and path != "common.py"}
    out = tmp_path / "x.json"
    assert main(["kerascharrnn", "preprocess", "--input_txt", str(corpus / "in.txt"), "--output_h5",
                 str(tmp_path / "x.h5"), "--output_json", str(out), "--quiet"]) == 0 and out.exists()


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_a_checkpoint_with_non_finite_weights_is_refused_by_every_tool(trained, tmp_path, bad):
    import keras

    model = keras.models.load_model(trained["keras"], compile=False)  # plain Keras still loads it
    layer = model.layers[-1] if np.isnan(bad) else model.layers[2]  # the logits, or a recurrent layer
    weights = layer.get_weights()
    weights[0][0, 0] = bad
    layer.set_weights(weights)
    path = str(tmp_path / "diverged.keras")
    ckpt.save_keras(model, trained["vocab"], trained["model_config"], path)
    fine_tune = ["--init_from", path, "--input_h5", trained["h5"], "--checkpoint_name", tmp_path / "c"]
    for tool, args in (("sample", ["--length", 5]), ("eval", ["--input_h5", trained["h5"]]),
                       ("export", ["--export_dir", tmp_path / "export"]), ("serve", ["--port", 1]),
                       ("train", fine_tune)):
        result = run_cli(tool, *(["--checkpoint", path] if tool != "train" else []), *args)
        assert result.returncode == 1, (tool, result.stderr)
        assert f"weight {layer.weights[0].path} holds 1 NaN or infinite values" in result.stderr, (tool, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1
    assert not list(tmp_path.glob("export/**/saved_model.pb"))


@pytest.fixture(scope="module")
def series(corpus, tmp_path_factory):
    """A run checkpointed at iterations 2 and 4 (one per test copies it before damaging it)."""
    root = tmp_path_factory.mktemp("series")
    assert run_cli("train", "--input_h5", corpus / "in.h5", *TINY, "--max_iters", 4, "--checkpoint_every", 2,
                   "--seed", 1, "--checkpoint_name", root / "ck").returncode == 0
    return root


def _damaged(series, tmp_path, damage):
    import shutil

    for path in series.iterdir():
        shutil.copy(path, tmp_path / path.name)
    damage(tmp_path)
    return tmp_path / "ck_4.json"


def _edit_record(path, **changes):
    record = json.loads(path.read_text())
    record.update(changes)
    path.write_text(json.dumps(record))


def _v02_record(path, **changes):  # a record as v0.2 wrote it: no digests
    record = json.loads(path.read_text())
    record.pop("digests")
    record.update(changes)
    path.write_text(json.dumps(record))


@pytest.mark.parametrize("case,damage,message", [
    ("the .keras of another iteration", lambda d: os.replace(d / "ck_2.keras", d / "ck_4.keras"),
     "ck_4.keras is not the file"),
    ("the .state.npz of another iteration", lambda d: os.replace(d / "ck_2.state.npz", d / "ck_4.state.npz"),
     "ck_4.state.npz is not the file"),
    ("v0.2 record, the state of another iteration",
     lambda d: (os.replace(d / "ck_2.state.npz", d / "ck_4.state.npz"), _v02_record(d / "ck_4.json")),
     "holds the optimizer of iteration 2"),
    ("an optimizer iteration below zero",
     lambda d: (np.savez(d / "ck_4.state.npz", **{**dict(np.load(d / "ck_4.state.npz")),
                                                  "optimizer/iterations": np.array(-3)}),
                _v02_record(d / "ck_4.json")), "'optimizer/iterations' is below zero"),
    ("a string in the state", lambda d: (np.savez(d / "ck_4.state.npz", **{**dict(np.load(d / "ck_4.state.npz")),
                                                                         "optimizer/iterations": np.array("four")}),
                                         _v02_record(d / "ck_4.json")), "holds <U4 values, not numbers"),
    ("NaN in the state", lambda d: (np.savez(d / "ck_4.state.npz", **{
        k: (np.full_like(v, np.nan) if v.dtype.kind == "f" else v) for k, v in np.load(d / "ck_4.state.npz").items()}),
        _v02_record(d / "ck_4.json")), "holds NaN or infinite values"),
    ("best_val_loss of -Infinity", lambda d: _edit_record(d / "ck_4.json", best_val_loss=float("-inf")),
     "'best_val_loss' must be a number >= 0"),
    ("a negative iteration", lambda d: _edit_record(d / "ck_4.json", iteration=-1), "'iteration' is -1: no run gets there"),
    ("histories of mismatched lengths", lambda d: _edit_record(d / "ck_4.json", val_loss_history_it=[2]),
     "differ in length"),
    ("a validation after the record's iteration", lambda d: _edit_record(d / "ck_4.json", val_loss_history_it=[2, 40]),
     "outside 0..4"),
    ("digests that are not text", lambda d: _edit_record(d / "ck_4.json", digests={"model": 1}),
     "'digests' must map"),
])
def test_a_checkpoint_set_that_disagrees_with_itself_is_refused_before_training(series, tmp_path, case, damage,
                                                                                 message):
    record = _damaged(series, tmp_path, damage)
    before = {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir() if p.suffix != ".lock"}
    result = run_cli("train", "--resume_from", record, "--max_iters", 6)
    assert result.returncode == 1 and message in result.stderr, (case, result.stderr)
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and message in errors[0] and "Traceback" not in result.stderr
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir() if p.suffix != ".lock"} == before  # no write


def test_an_intact_set_and_a_v02_record_without_digests_resume(series, tmp_path):
    record = _damaged(series, tmp_path, lambda d: _v02_record(d / "ck_4.json"))
    result = run_cli("train", "--resume_from", record, "--max_iters", 6)
    assert result.returncode == 0 and "iteration 6" in result.stdout
    assert "continuing the series it belongs to, " + str(tmp_path / "ck") in result.stderr  # the copy's own
    assert set(ckpt.read_record(str(tmp_path / "ck_6.json")).digests) == {"model", "state", "data"}
    assert not (series / "ck_6.json").exists()  # the original run is untouched


def test_a_resume_writes_only_in_its_own_series_and_on_its_own_data(series, corpus, tmp_path):
    """A record names its run's series and data; copied elsewhere, or read from another directory, it must
    neither write into that run's series nor train on whatever its relative paths name from here."""
    (tmp_path / "copy").mkdir()
    record = _damaged(series, tmp_path / "copy", lambda d: None)
    other = tmp_path / "elsewhere"
    other.mkdir()
    refused = run_cli("train", "--resume_from", record, "--checkpoint_name", other / "ck", "--max_iters", 6)
    assert refused.returncode == 1 and "continues the series" in refused.stderr and "--init_from" in refused.stderr
    # a record of v0.2 stored the data's path as given, relative: from another directory it names other data
    # (here: the same text split otherwise, so the same vocabulary)
    _edit_record(record, train_config={**json.loads(record.read_text())["train_config"], "input_h5": "in.h5",
                                       "input_json": "in.json"})
    assert run_cli("preprocess", "--input_txt", corpus / "in.txt", "--output_h5", other / "in.h5", "--output_json",
                   other / "in.json", "--val_frac", "0.3", "--quiet").returncode == 0
    refused = run_cli("train", "--resume_from", record, "--max_iters", 6, cwd=other)
    assert refused.returncode == 1 and "is not the data" in refused.stderr and "--input_h5" in refused.stderr
    chosen = run_cli("train", "--resume_from", record, "--max_iters", 6, "--input_h5", other / "in.h5", cwd=other)
    assert chosen.returncode == 0, chosen.stderr  # other data, asked for: that is fine
    assert (tmp_path / "copy" / "ck_6.json").exists() and not (series / "ck_6.json").exists()
    assert not list(other.glob("ck*"))


def test_a_resume_whose_data_moved_says_so_and_odd_series_names_still_resume(series, corpus, tmp_path):
    (tmp_path / "moved").mkdir()
    record = _damaged(series, tmp_path / "moved", lambda d: None)
    gone = {"input_h5": str(tmp_path / "gone.h5"), "input_json": str(tmp_path / "gone.json")}
    _edit_record(record, train_config={**json.loads(record.read_text())["train_config"], **gone})
    result = run_cli("train", "--resume_from", record, "--max_iters", 6)
    assert result.returncode == 1 and "is no longer there" in result.stderr and "--input_h5" in result.stderr
    name = f"{tmp_path}/odd dir/"  # a name that is a directory: its files are "odd dir/_2.json", ...
    assert run_cli("train", "--input_h5", corpus / "in.h5", *TINY, "--max_iters", 2, "--checkpoint_every", 2,
                   "--checkpoint_name", name).returncode == 0
    resumed = run_cli("train", "--resume_from", "latest", "--checkpoint_name", name, "--max_iters", 4)
    assert resumed.returncode == 0 and "iteration 4" in resumed.stdout, resumed.stderr


def test_a_state_whose_array_header_declares_a_huge_shape_is_refused_unread(series, tmp_path):
    import io
    import zipfile

    def bomb(d):
        header = io.BytesIO()
        np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": (10**12,)})
        with zipfile.ZipFile(d / "ck_4.state.npz", "a") as archive:
            archive.writestr("huge.npy", header.getvalue())
        _v02_record(d / "ck_4.json")

    record = _damaged(series, tmp_path, bomb)
    result = run_cli("train", "--resume_from", record, "--max_iters", 6)
    assert result.returncode == 1 and "the training state declares" in result.stderr, result.stderr
