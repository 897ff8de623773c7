"""Minibatches over the HDF5 splits, laid out as torch-rnn's DataLoader lays them out.

A split of n tokens is cut into `num_streams` contiguous streams of equal length; minibatch b holds
window b of every stream (inputs, and targets shifted by one token), so the RNN state carried from
one minibatch to the next continues each stream (truncated BPTT). Tokens that do not fill a last
minibatch are dropped. The geometry and the HDF5 checks are numpy/h5py only; `minibatches` reads the
file block by block and hands the minibatches to TensorFlow.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Dict, Iterator, Optional, Tuple

import numpy as np

from kerascharrnn.errors import UserError
from kerascharrnn.errors import setting as ref
from kerascharrnn.vocab import Vocabulary

SPLITS = ("train", "val", "test")
_READ_BLOCK_TOKENS = 1 << 20  # tokens per stream read at once; bounds memory for huge splits


@dataclasses.dataclass(frozen=True)
class StreamLayout:
    """Where each minibatch of a split comes from.

    Attributes:
      batch_size: N, rows of every minibatch (rows beyond num_streams are padding, weight 0).
      num_streams: rows that carry data.
      seq_length: T, tokens per row.
      num_batches: minibatches per pass over the split.
    """

    batch_size: int
    num_streams: int
    seq_length: int
    num_batches: int

    @property
    def stream_length(self) -> int:
        return self.num_batches * self.seq_length

    @property
    def tokens_covered(self) -> int:
        return self.num_streams * self.stream_length


def stream_layout(num_tokens: int, batch_size: int, seq_length: int, allow_fewer_streams: bool) -> StreamLayout:
    """torch-rnn's layout; a split too small for one full minibatch may use fewer/shorter streams.

    One token is held back at the end so every input has a target (torch-rnn's `extra` rule).
    """
    usable = max(num_tokens - 1, 0)
    if usable >= batch_size * seq_length or not allow_fewer_streams:
        return StreamLayout(batch_size, batch_size, seq_length, usable // (batch_size * seq_length))
    if usable == 0:
        return StreamLayout(batch_size, 0, seq_length, 0)
    length = min(seq_length, usable)
    streams = min(batch_size, usable // length)
    return StreamLayout(batch_size, streams, length, usable // (streams * length))


def batch_arrays(tokens, layout: StreamLayout, start_batch: int = 0,
                 rows: Optional[range] = None) -> Iterator[Tuple[np.ndarray, np.ndarray]]:
    """Yields (inputs, targets), each (N, T) int32 0-based ids, for batches start_batch..end.

    `tokens` is any 1-D array-like holding torch-rnn 1-based ids (an h5py dataset or numpy array);
    it is read one block of consecutive windows per stream at a time. `rows` (default: all N) picks the
    streams to read, e.g. one replica's share of a distributed run; the arrays then have len(rows) rows.
    """
    T, L = layout.seq_length, layout.stream_length
    rows = range(layout.batch_size) if rows is None else rows
    per_block = max(1, _READ_BLOCK_TOKENS // T)
    for block_start in range(start_batch, layout.num_batches, per_block):
        block_batches = min(per_block, layout.num_batches - block_start)
        width = block_batches * T + 1
        block = np.zeros((len(rows), width), dtype=np.int32)
        for row, i in enumerate(rows):
            if i >= layout.num_streams:  # padding rows stay 0 (their weight is 0)
                continue
            start = i * L + block_start * T
            block[row] = np.asarray(tokens[start:start + width], dtype=np.int32) - 1
        for b in range(block_batches):
            window = block[:, b * T:b * T + T + 1]
            yield window[:, :-1], window[:, 1:]


def row_weights(layout: StreamLayout) -> np.ndarray:
    """(N,) float32: 1 for rows that carry data, 0 for padding rows."""
    weights = np.zeros(layout.batch_size, dtype=np.float32)
    weights[:layout.num_streams] = 1.0
    return weights


def minibatches(h5_path: str, split: str, layout: StreamLayout,
                start_batch: int = 0) -> Iterator[Tuple["tf.Tensor", "tf.Tensor"]]:
    """(inputs, targets) minibatches of a split as int32 tensors, read from the HDF5 file in blocks.

    The whole split is never copied into memory: each stream is read in blocks. A plain generator, not
    tf.data: a minibatch is a few kilobytes read from a block in memory, so there is nothing to prefetch,
    and a `Dataset.from_generator` iterator, made and dropped at every epoch and validation pass, now and
    then took 6-50 s to drop during training (TF 2.21, a 15-minute run lost ~150 s to it; its prefetch
    threads also cost ~4% of the step speed on two cores).
    """
    import h5py
    import tensorflow as tf

    with h5py.File(h5_path, "r") as f:
        for inputs, targets in batch_arrays(f[split], layout, start_batch):
            yield tf.constant(inputs), tf.constant(targets)


def vocab_path_for(h5_path: str) -> str:
    """The vocabulary bin/preprocess (and torch-rnn's preprocess.py) writes beside an HDF5 file, by default."""
    return os.path.splitext(h5_path)[0] + ".json"


def split_lengths(h5_path: str) -> Dict[str, int]:
    """Checks the HDF5 file is a torch-rnn corpus and returns each split's token count."""
    import h5py

    try:
        f = h5py.File(h5_path, "r")
    except FileNotFoundError:
        raise UserError(f"{h5_path}: no such file") from None
    except (OSError, ValueError):
        raise UserError(f"{h5_path}: not a readable HDF5 file (truncated or another format?)") from None
    with f:
        names = set(f.keys())  # the file's own names: nothing followed yet
        missing = [s for s in SPLITS if s not in names]
        if missing:
            raise UserError(f"{h5_path}: no {', '.join(missing)} dataset; make it with bin/preprocess")
        lengths = {}
        for split in SPLITS:
            link = f.get(split, getlink=True)
            if not isinstance(link, h5py.HardLink):  # a soft or external link: followed, it could name any file
                target = getattr(link, "path", "")
                if getattr(link, "filename", None):
                    target = f"{link.filename}:{target}"
                raise UserError(f"{h5_path}: dataset {split!r} is a {type(link).__name__} to {target}, not data stored"
                                " here (bin/preprocess writes the splits themselves; copy the data in, or point at"
                                " the file that holds it; a dangling link cannot be read at all)")
            dataset = f[split]
            if not hasattr(dataset, "shape") or len(dataset.shape) != 1 or dataset.dtype.kind not in "iu":
                raise UserError(f"{h5_path}: dataset {split!r} is not a 1-D integer array")
            _check_storage(h5_path, split, dataset)
            lengths[split] = int(dataset.shape[0])
    return lengths


# A real corpus's ids compress a few times at most; beyond this, the declared size is not data the file holds.
_MAX_DECLARED_PER_FILE_BYTE = 100


def _check_storage(h5_path: str, split: str, dataset) -> None:
    """The split's tokens must be stored in this file, all of them: data in another file (external storage, a
    virtual dataset; links are refused by the caller) would train on a file the command never named (or hang on a pipe),
    and a declared size that the file does not hold (unwritten chunks read as the fill value) would be
    scanned for hours. Reads only metadata."""
    import h5py

    where = f"{h5_path}: dataset {split!r}"
    plist = dataset.id.get_create_plist()
    if dataset.is_virtual or plist.get_external_count() > 0:
        raise UserError(f"{where} is stored outside the file (external or virtual storage); a corpus must be"
                        " stored in the file itself (bin/preprocess writes one)")
    declared = dataset.shape[0] * dataset.dtype.itemsize
    file_size = os.path.getsize(h5_path)
    if declared > _MAX_DECLARED_PER_FILE_BYTE * max(file_size, 1) + (1 << 20):
        raise UserError(f"{where} declares {dataset.shape[0]:,} tokens in a file of {file_size:,} bytes: more than"
                        " the file can hold; it is not a corpus written by bin/preprocess")
    if plist.get_layout() == h5py.h5d.CHUNKED:
        chunk = dataset.chunks[0]
        expected = -(-dataset.shape[0] // chunk)
        if dataset.id.get_num_chunks() < expected:
            raise UserError(f"{where} declares {dataset.shape[0]:,} tokens and stores {dataset.id.get_num_chunks()}"
                            f" of their {expected} chunks (the rest would read as its fill value); it is incomplete")
    elif dataset.shape[0] and dataset.id.get_storage_size() < declared:
        raise UserError(f"{where} declares {dataset.shape[0]:,} tokens and stores"
                        f" {dataset.id.get_storage_size():,} of their {declared:,} bytes; it is incomplete")


def check_ids_match(h5_path: str, vocab: Vocabulary, json_path: str) -> None:
    """Every id in the HDF5 splits must be a token of the vocabulary (1..V). Scans in chunks."""
    import h5py

    try:
        with h5py.File(h5_path, "r") as f:
            for split in SPLITS:
                dataset = f[split]
                for start in range(0, dataset.shape[0], _READ_BLOCK_TOKENS * 8):
                    chunk = dataset[start:start + _READ_BLOCK_TOKENS * 8]
                    if chunk.size and (chunk.min() < 1 or chunk.max() > vocab.size):
                        raise UserError(
                            f"{h5_path} and {json_path} do not match: split {split!r} has id"
                            f" {int(chunk.max() if chunk.max() > vocab.size else chunk.min())}"
                            f" outside the vocabulary's 1..{vocab.size}"
                        )
    except OSError:
        raise UserError(f"{h5_path}: cannot be read to the end (truncated?)") from None


def layouts_for(lengths: Dict[str, int], batch_size: int, seq_length: int) -> Dict[str, StreamLayout]:
    """Layouts of all splits; raises UserError (naming the flags to lower) if training cannot run."""
    layouts = {split: stream_layout(n, batch_size, seq_length, allow_fewer_streams=(split != "train"))
               for split, n in lengths.items()}
    if layouts["train"].num_batches < 1:
        raise UserError(
            f"the training split has {lengths['train']} tokens, fewer than one minibatch needs"
            f" (batch_size * seq_length + 1 = {batch_size * seq_length + 1}); lower {ref('batch_size')}"
            f" and/or {ref('seq_length')}, or use a larger corpus"
        )
    return layouts

