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
