import json
import os

import numpy as np
import pytest

from kerascharrnn.data import batches
from kerascharrnn.errors import UserError


def test_exact_stream_order_for_a_toy_array():
    tokens = np.arange(1, 28)  # torch-rnn ids 1..27 -> model ids 0..26
    layout = batches.stream_layout(27, batch_size=2, seq_length=3, allow_fewer_streams=False)
    # usable = 26 tokens -> 4 minibatches of 2 streams x 3; stream length 12
    assert (layout.num_streams, layout.num_batches, layout.stream_length) == (2, 4, 12)
    windows = list(batches.batch_arrays(tokens, layout))
    assert len(windows) == 4
    x0, y0 = windows[0]
    assert x0.tolist() == [[0, 1, 2], [12, 13, 14]]
    assert y0.tolist() == [[1, 2, 3], [13, 14, 15]]
    x1, y1 = windows[1]
    assert x1.tolist() == [[3, 4, 5], [15, 16, 17]]  # each stream continues where it stopped
    assert y1.tolist() == [[4, 5, 6], [16, 17, 18]]
    assert windows[3][1].tolist() == [[10, 11, 12], [22, 23, 24]]
    assert all(x.dtype == np.int32 for x, _ in windows)


def test_start_batch_resumes_mid_epoch():
    tokens = np.arange(1, 28)
    layout = batches.stream_layout(27, 2, 3, allow_fewer_streams=False)
    full = list(batches.batch_arrays(tokens, layout))
    tail = list(batches.batch_arrays(tokens, layout, start_batch=2))
    for (a, b), (c, d) in zip(full[2:], tail):
        np.testing.assert_array_equal(a, c)
        np.testing.assert_array_equal(b, d)


def test_exact_multiple_drops_one_batch_like_torch_rnn():
    # 24 tokens = 4 x (2*3): torch-rnn drops a whole batch so the last target exists
    assert batches.stream_layout(24, 2, 3, allow_fewer_streams=False).num_batches == 3
    assert batches.stream_layout(25, 2, 3, allow_fewer_streams=False).num_batches == 4


def test_small_split_uses_fewer_streams_and_padding_rows():
    layout = batches.stream_layout(10, batch_size=4, seq_length=3, allow_fewer_streams=True)
    assert (layout.num_streams, layout.seq_length, layout.num_batches) == (3, 3, 1)
    (x, y), = list(batches.batch_arrays(np.arange(1, 11), layout))
    assert x.tolist() == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [0, 0, 0]]
    assert y.tolist() == [[1, 2, 3], [4, 5, 6], [7, 8, 9], [0, 0, 0]]
    assert batches.row_weights(layout).tolist() == [1, 1, 1, 0]
    shorter = batches.stream_layout(3, batch_size=4, seq_length=5, allow_fewer_streams=True)
    assert (shorter.num_streams, shorter.seq_length, shorter.num_batches) == (1, 2, 1)
    assert batches.stream_layout(1, 4, 5, allow_fewer_streams=True).num_batches == 0


def test_training_split_smaller_than_a_batch_names_the_settings():
    """The library names the settings; a tool shows them as its flags."""
    with pytest.raises(UserError, match="lower batch_size and/or seq_length") as error:
        batches.layouts_for({"train": 100, "val": 10, "test": 10}, batch_size=50, seq_length=50)
    assert "lower --batch_size and/or --seq_length" in error.value.render(lambda name: "--" + name)


def test_tf_dataset_reads_the_same_batches(small_corpus):
    import h5py

    _, h5, _ = small_corpus
    with h5py.File(h5) as f:
        tokens = f["train"][()]
    layout = batches.stream_layout(tokens.size, 4, 16, allow_fewer_streams=False)
    expected = list(batches.batch_arrays(tokens, layout, start_batch=5))
    got = list(batches.minibatches(h5, "train", layout, start_batch=5))
    assert len(got) == len(expected) == layout.num_batches - 5
    np.testing.assert_array_equal(got[-1][0].numpy(), expected[-1][0])
    np.testing.assert_array_equal(got[0][1].numpy(), expected[0][1])


# --- HDF5 whose tokens are not (all) in the file: refused from metadata, before any read ----------------------


def _splits(path, make_train):
    import h5py

    with h5py.File(path, "w") as f:
        make_train(f)
        for name in ("val", "test"):
            f.create_dataset(name, data=np.ones(100, np.uint8))


def _bad_files(tmp_path):
    """(what, path) of HDF5 files whose train split a user never meant: each made with h5py as someone might."""
    import h5py

    other = tmp_path / "other.bin"
    other.write_bytes(bytes([1]) * 5000)
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "elsewhere.h5").unlink(missing_ok=True)
    _splits(tmp_path / "elsewhere.h5", lambda f: f.create_dataset("train", data=np.ones(1000, np.uint8)))
    layout = h5py.VirtualLayout(shape=(1000,), dtype=np.uint8)
    layout[:] = h5py.VirtualSource(str(tmp_path / "elsewhere.h5"), "train", shape=(1000,))
    cases = {
        "external storage": lambda f: f.create_dataset("train", (5000,), np.uint8, external=[(str(other), 0, 5000)]),
        "external storage in a pipe": lambda f: f.create_dataset("train", (5000,), np.uint8,
                                                                 external=[(str(tmp_path / "fifo"), 0, 5000)]),
        "a virtual dataset": lambda f: f.create_virtual_dataset("train", layout),
        "an external link": lambda f: f.__setitem__("train", h5py.ExternalLink(str(tmp_path / "elsewhere.h5"),
                                                                              "train")),
        "an external link to a pipe": lambda f: f.__setitem__("train", h5py.ExternalLink(str(tmp_path / "fifo"), "x")),
        "a soft link to an external link": lambda f: (
            f.__setitem__("outside", h5py.ExternalLink(str(tmp_path / "elsewhere.h5"), "train")),
            f.__setitem__("train", h5py.SoftLink("/outside"))),
        "2^40 tokens as a compressed fill value": lambda f: f.create_dataset(
            "train", (2**40,), np.uint8, chunks=(2**20,), compression="gzip", fillvalue=1),
        "chunks never written": lambda f: f.create_dataset("train", (10**6,), np.uint8, chunks=(1000,),
                                                           fillvalue=1).__setitem__(slice(0, 1000), 1),
        "contiguous, never written": lambda f: f.create_dataset("train", (10**6,), np.uint8, fillvalue=1),
    }
    paths = {}
    for what, make in cases.items():
        path = tmp_path / (what.replace(" ", "_").replace("^", "") + ".h5")
        _splits(path, make)
        paths[what] = path
    return paths


def test_hdf5_tokens_stored_elsewhere_or_not_at_all_are_refused_without_reading(tmp_path):
    for what, path in _bad_files(tmp_path).items():
        with pytest.raises(UserError, match="outside the file|not data stored here|more than the file can hold"
                                            "|incomplete"):
            batches.split_lengths(str(path))
    assert os.path.getsize(tmp_path / "240_tokens_as_a_compressed_fill_value.h5") < 100_000


def test_train_refuses_such_a_file_in_one_line(tmp_path):
    from conftest import run_cli

    path = _bad_files(tmp_path)["external storage in a pipe"]
    (tmp_path / "v.json").write_text(json.dumps({"token_to_idx": {"a": 1}, "idx_to_token": {"1": "a"}}))
    result = run_cli("train", "--input_h5", path, "--input_json", tmp_path / "v.json", "--checkpoint_name",
                     tmp_path / "ck", "--max_iters", 1)
    assert result.returncode == 1 and "outside the file" in result.stderr and len(result.stderr.splitlines()) == 1


def test_a_preprocessed_corpus_passes_the_storage_checks(small_corpus):
    lengths = batches.split_lengths(small_corpus[1])
    assert sum(lengths.values()) == 40_000
