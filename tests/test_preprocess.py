import codecs
import json
import os

import h5py
import numpy as np
import pytest
from conftest import shared_file

from kerascharrnn.data.preprocess import preprocess, split_sizes
from kerascharrnn.errors import UserError


def torch_rnn_reference(raw: bytes, encoding, val_frac=0.1, test_frac=0.1):
    """torch-rnn's scripts/preprocess.py algorithm, one character at a time (the slow original)."""
    units = list(raw) if encoding == "bytes" else list(codecs.decode(raw, encoding))
    token_to_idx = {}
    for u in units:
        token_to_idx.setdefault(u, len(token_to_idx) + 1)
    n = len(units)
    val, test = int(val_frac * n), int(test_frac * n)
    train = n - val - test
    ids = np.array([token_to_idx[u] for u in units])
    dtype = np.uint8 if len(token_to_idx) <= 255 else np.uint32
    if encoding == "bytes":
        token_to_idx = {(chr(u) if u <= 127 else "[%d]" % u): i for u, i in token_to_idx.items()}
    splits = {"train": ids[:train], "val": ids[train:train + val], "test": ids[train + val:]}
    return splits, dtype, {"token_to_idx": token_to_idx, "idx_to_token": {str(i): t for t, i in token_to_idx.items()}}


def run(tmp_path, raw: bytes, encoding="utf-8", chunk_bytes=1 << 22, **kwargs):
    src = tmp_path / "in.txt"
    src.write_bytes(raw)
    preprocess(str(src), str(tmp_path / "out.h5"), str(tmp_path / "out.json"), encoding=encoding,
               quiet=True, chunk_bytes=chunk_bytes, **kwargs)
    with h5py.File(tmp_path / "out.h5") as f:
        splits = {k: f[k][()] for k in ("train", "val", "test")}
        order = list(f.keys())
    return splits, json.loads((tmp_path / "out.json").read_text(encoding="utf-8")), order


def test_literal_ids_for_a_small_string(tmp_path):
    splits, vocab, _ = run(tmp_path, b"abcab\r\nba" * 2, val_frac=0.2, test_frac=0.1)
    # 18 tokens: val = int(3.6) = 3, test = int(1.8) = 1, train = 14; ids by first appearance, '\r' kept.
    assert vocab["idx_to_token"] == {"1": "a", "2": "b", "3": "c", "4": "\r", "5": "\n"}
    assert splits["train"].tolist() == [1, 2, 3, 1, 2, 4, 5, 2, 1, 1, 2, 3, 1, 2]
    assert splits["val"].tolist() == [4, 5, 2]
    assert splits["test"].tolist() == [1]
    assert splits["train"].dtype == np.uint8


@pytest.mark.parametrize("encoding", ["utf-8", "bytes"])
@pytest.mark.parametrize("chunk_bytes", [1, 3, 7, 1 << 22])
def test_matches_torch_rnn_rules_streaming(tmp_path, encoding, chunk_bytes):
    raw = ("Ünïcödé text\r\nwith ✓ marks and 日本語.\n" * 7).encode("utf-8")
    splits, vocab, order = run(tmp_path, raw, encoding=encoding, chunk_bytes=chunk_bytes)
    expected, dtype, expected_vocab = torch_rnn_reference(raw, encoding)
    for name in ("train", "val", "test"):
        np.testing.assert_array_equal(splits[name], expected[name])
        assert splits[name].dtype == dtype
    assert vocab["idx_to_token"] == expected_vocab["idx_to_token"]
    assert vocab["token_to_idx"] == expected_vocab["token_to_idx"]


def test_bytes_mode_writes_bracket_keys(tmp_path):
    _, vocab, _ = run(tmp_path, "é".encode("utf-8") * 10, encoding="bytes")
    assert vocab["idx_to_token"] == {"1": "[195]", "2": "[169]"}


def test_uint32_when_vocabulary_exceeds_255(tmp_path):
    raw = "".join(chr(0x4E00 + i) for i in range(300)).encode("utf-8") * 2
    splits, vocab, _ = run(tmp_path, raw)
    assert len(vocab["idx_to_token"]) == 300
    assert splits["train"].dtype == np.uint32
    raw = "".join(chr(0x4E00 + i) for i in range(255)).encode("utf-8") * 2
    splits, _, _ = run(tmp_path, raw)
    assert splits["train"].dtype == np.uint8


def test_tiny_shakespeare_figures(tmp_path):
    preprocess(shared_file("data/tiny-shakespeare.txt"), str(tmp_path / "ts.h5"), str(tmp_path / "ts.json"), quiet=True)
    with h5py.File(tmp_path / "ts.h5") as f:
        assert [f[k].shape[0] for k in ("train", "val", "test")] == [892316, 111539, 111539]
    assert len(json.loads((tmp_path / "ts.json").read_text())["idx_to_token"]) == 65


def test_split_sizes_sum():
    assert split_sizes(1115394, 0.1, 0.1).train == 892316


def test_summary_lines(tmp_path):
    src = tmp_path / "in.txt"
    src.write_text("hello world\n" * 10)
    lines = []
    preprocess(str(src), str(tmp_path / "o.h5"), str(tmp_path / "o.json"), log=lines.append)
    assert lines[:2] == ["Total vocabulary size: 9", "Total tokens in file: 120"]
    assert lines[2:5] == ["  Training size: 96", "  Val size: 12", "  Test size: 12"]


@pytest.mark.parametrize("raw,encoding,message", [
    (b"", "utf-8", "is empty"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00", "utf-8", "not valid utf-8|binary"),
    (b"ok text\x00\x00 more", "utf-8", "binary"),
    (b"caf\xe9 latin-1", "utf-8", r"not valid utf-8 text \(byte 3\)"),
    (b"tiny", "nope-codec", "unknown encoding"),
])
def test_bad_input_is_one_clear_error_and_keeps_outputs(tmp_path, raw, encoding, message):
    (tmp_path / "out.h5").write_bytes(b"precious")
    with pytest.raises(UserError, match=message):
        run(tmp_path, raw, encoding=encoding)
    assert (tmp_path / "out.h5").read_bytes() == b"precious"


def test_latin1_file_reads_with_its_encoding(tmp_path):
    splits, vocab, _ = run(tmp_path, b"caf\xe9 " * 20, encoding="latin-1")
    assert vocab["idx_to_token"]["4"] == "é"


def test_fractions_that_leave_no_training_data(tmp_path):
    with pytest.raises(UserError, match="leaves no training data"):
        run(tmp_path, b"abc" * 100, val_frac=0.5, test_frac=0.5)
    with pytest.raises(UserError, match="for training"):
        run(tmp_path, b"abc", val_frac=0.34, test_frac=0.34)


@pytest.mark.parametrize("change", ["append new characters", "same size and time, other text", "truncate",
                                    "grow past a chunk"])
def test_a_corpus_that_changes_between_the_passes_is_refused_and_nothing_written(tmp_path, change):
    """The file changes after the first pass (the summary lines come between the passes: the change is made
    there, on the real file), as when an editor saves or a download is still running."""
    corpus, h5, js = tmp_path / "in.txt", tmp_path / "out.h5", tmp_path / "out.json"
    corpus.write_text("the cat sat on the mat. " * 400, encoding="utf-8")
    h5.write_bytes(b"old h5")
    js.write_text("old json")
    before = os.stat(corpus)

    def edit(line):
        if not line.startswith("Using dtype"):
            return
        if change == "append new characters":
            with open(corpus, "a", encoding="utf-8") as f:
                f.write("QXZ\u00e9")
        elif change == "same size and time, other text":
            corpus.write_text("the dog sat on the mat. " * 400, encoding="utf-8")
            os.utime(corpus, ns=(before.st_atime_ns, before.st_mtime_ns))
        elif change == "truncate":
            corpus.write_text("the cat", encoding="utf-8")
        else:
            with open(corpus, "a", encoding="utf-8") as f:
                f.write("the cat sat on the mat. " * 400)

    with pytest.raises(UserError, match="changed while it was read"):
        preprocess(str(corpus), str(h5), str(js), chunk_bytes=1000, log=edit)
    assert h5.read_bytes() == b"old h5" and js.read_text() == "old json"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.txt", "out.h5", "out.json"]
