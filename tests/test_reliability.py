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


@pytest.mark.parametrize("signum,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
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
    with pytest.raises(UserError, match="No space left on device.*previous checkpoint is intact"):
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
