"""End to end through bin/: preprocess -> train -> sample -> eval, and one-line errors."""

import json
import os

import pytest
from conftest import run_cli, shakespeare_text

TRACEBACK = "Traceback (most recent call last)"
TINY = ["--batch_size", 4, "--seq_length", 16, "--rnn_size", 16, "--wordvec_size", 8, "--num_layers", 1]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    (root / "in.txt").write_text(shakespeare_text()[:20_000], encoding="utf-8")
    return root


@pytest.mark.slow
def test_preprocess_train_sample_eval(workdir):
    w = workdir
    result = run_cli("preprocess", "--input_txt", w / "in.txt", "--output_h5", w / "d.h5", "--output_json", w / "d.json")
    assert result.returncode == 0, result.stderr
    assert "Total vocabulary size:" in result.stdout and "  Training size: 16000" in result.stdout

    result = run_cli("train", "--input_h5", w / "d.h5", "--input_json", w / "d.json", *TINY, "--max_iters", 24,
                     "--checkpoint_every", 12, "--checkpoint_name", w / "cv/ck", "--seed", 1, "--print_every", 6)
    assert result.returncode == 0, result.stderr
    assert "Epoch 1.02 / 50, i = 6 / 24, loss = " in result.stdout
    assert "parameters" in result.stdout and "val_loss" in result.stdout
    assert os.path.exists(w / "cv/ck_24.keras") and os.path.exists(w / "cv/ck_best.json")

    result = run_cli("sample", "--checkpoint", w / "cv/ck_24.keras", "--length", 60, "--start_text", "First",
                     "--num_samples", 3, "--seed", 2, "--jsonl")
    assert result.returncode == 0, result.stderr
    samples = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(samples) == 3 and all(s.startswith("First") and len(s) == 60 for s in samples)

    result = run_cli("sample", "--checkpoint", w / "cv/ck_24.json", "--length", 40, "--sample", 0,
                     "--num_samples", 2)
    assert result.returncode == 0, result.stderr
    first, second = result.stdout.rstrip("\n").split("\n----\n")
    assert first == second and len(first) == 40  # argmax: identical samples

    result = run_cli("train", "--input_h5", w / "d.h5", "--init_from", w / "cv/ck_24.json", "--reset_iterations", 0,
                     "--batch_size", 2, "--seq_length", 8, "--max_iters", 27, "--checkpoint_name", w / "cv/init",
                     "--tensorboard_dir", w / "tb", "--speed_benchmark=1", "--print_every", 1)
    assert result.returncode == 0, result.stderr
    assert "i = 25 / 27" in result.stdout and "Forward / backward pass took" in result.stdout
    record = json.load(open(w / "cv/init_27.json"))
    assert record["model_config"]["rnn_size"] == 16 and len(record["forward_backward_times"]) == 3
    assert os.listdir(w / "tb")

    result = run_cli("eval", "--checkpoint", w / "cv/ck_24.keras", "--input_h5", w / "d.h5", "--split", "test")
    assert result.returncode == 0, result.stderr
    assert "test loss:" in result.stdout and "bits/char" in result.stdout


@pytest.mark.slow
def test_builtin_corpora(keras_home, tmp_path):
    result = run_cli("train", *TINY, "--max_iters", 2, "--checkpoint_name", tmp_path / "std", "--seed", 1)
    assert result.returncode == 0, result.stderr
    assert os.path.exists(os.path.join(keras_home, "datasets", "kerascharrnn"))
    result = run_cli("train", "--corpus", "tiny_shakespeare", *TINY, "--max_iters", 2,
                     "--checkpoint_name", tmp_path / "ts", "--seed", 1)
    assert result.returncode == 0, result.stderr
    record = json.load(open(tmp_path / "ts_2.json"))
    assert len(record["vocab"]["idx_to_token"]) == 65


def _expect_one_line_error(result, pattern):
    assert result.returncode != 0
    assert TRACEBACK not in result.stderr
    lines = [l for l in result.stderr.splitlines() if l.strip()]
    assert len(lines) == 1, result.stderr
    assert pattern in lines[0], lines[0]


def test_corpus_smaller_than_one_batch_names_flags(tmp_path):
    (tmp_path / "t.txt").write_text("tiny corpus " * 20)
    assert run_cli("preprocess", "--input_txt", tmp_path / "t.txt", "--output_h5", tmp_path / "t.h5",
                   "--output_json", tmp_path / "t.json", "--quiet").returncode == 0
    _expect_one_line_error(run_cli("train", "--input_h5", tmp_path / "t.h5"), "lower --batch_size")


def test_h5_json_from_different_corpora(small_corpus, tmp_path):
    (tmp_path / "other.txt").write_text("xyz" * 100)
    run_cli("preprocess", "--input_txt", tmp_path / "other.txt", "--output_h5", tmp_path / "o.h5",
            "--output_json", tmp_path / "o.json", "--quiet")
    _, h5, _ = small_corpus
    _expect_one_line_error(run_cli("train", "--input_h5", h5, "--input_json", tmp_path / "o.json"), "do not match")
