"""Text file -> HDF5 splits + JSON vocabulary, byte-for-byte the layout of torch-rnn's preprocess.py.

Streaming: the file is read twice in fixed-size chunks (once to build the vocabulary and count tokens,
once to write ids), so memory is bounded by the vocabulary and the chunk, not the corpus. Each chunk
is handled with numpy (a code-point lookup table), never a Python loop per character.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from typing import Iterator, List, Optional, Tuple

import numpy as np

from kerascharrnn import upstream
from kerascharrnn.data.text import CHUNK_BYTES, check_encoding, iter_units
from kerascharrnn.errors import UserError
from kerascharrnn.errors import setting as ref
from kerascharrnn.io import files, paths
from kerascharrnn.vocab import BYTES, Vocabulary

_MAX_CODE_POINT = 0x110000


@dataclasses.dataclass(frozen=True)
class SplitSizes:
    train: int
    val: int
    test: int


def split_sizes(total: int, val_frac: float, test_frac: float) -> SplitSizes:
    """torch-rnn's rule: val and test are int(frac * N); train is the rest (and comes first)."""
    val = int(val_frac * total)
    test = int(test_frac * total)
    return SplitSizes(train=total - val - test, val=val, test=test)


def _hashed(chunks: Iterator[np.ndarray], digest: Optional["hashlib._Hash"]) -> Iterator[np.ndarray]:
    for units in chunks:
        if digest is not None:
            digest.update(units.tobytes())
        yield units


def _stamp(path: str) -> Tuple[int, int]:
    status = os.stat(path)
    return status.st_size, status.st_mtime_ns


def build_vocabulary(path: str, encoding: str, chunk_bytes: int = CHUNK_BYTES, digest=None):
    """First pass: tokens in order of first appearance, the id lookup table and the token count (and the
    text's units into `digest`, a hashlib object, when given)."""
    table = np.zeros(256 if encoding == BYTES else _MAX_CODE_POINT, dtype=np.uint32)  # unit -> 1-based id
    tokens: List[int] = []
    total = 0
    for units in _hashed(iter_units(path, encoding, chunk_bytes), digest):
        total += units.size
        unseen = units[table[units] == 0]
        if unseen.size:
            values, first = np.unique(unseen, return_index=True)
            for value in values[np.argsort(first)]:
                tokens.append(int(value))
                table[value] = len(tokens)
    if encoding != BYTES:
        tokens = [chr(t) for t in tokens]
    try:
        vocab = Vocabulary(tuple(tokens), encoding)
    except UserError as e:  # e.g. unicode_escape turned "\ud800" into a lone surrogate
        raise UserError(f"{path}: {e}") from None
    return vocab, table, total


def preprocess(
    input_txt: str,
    output_h5: str,
    output_json: str,
    val_frac: float = 0.1,
    test_frac: float = 0.1,
    encoding: str = "utf-8",
    quiet: bool = False,
    chunk_bytes: int = CHUNK_BYTES,
    log=print,
) -> SplitSizes:
    """Writes torch-rnn's HDF5 (train/val/test 1-D id arrays) and JSON vocabulary for a text file.

    Args:
      input_txt: the corpus.
      output_h5, output_json: where to write; each is written to a temporary file and renamed, so an
        existing file survives any failure.
      val_frac, test_frac: fractions of the tokens for the validation and test splits.
      encoding: a Python codec name, or "bytes" for a byte-level vocabulary.
      quiet: suppress torch-rnn's summary lines.
      chunk_bytes: how much of the file is held in memory at once.

    Returns:
      The split sizes.
    """
    import h5py  # only here: keeps `import kerascharrnn.preprocess` light

    encoding = check_encoding(encoding)
    for name, frac in ((ref("val_frac"), val_frac), (ref("test_frac"), test_frac)):
        if not (0.0 <= frac < 1.0):
            raise UserError(f"{name} must be in [0, 1), got {frac}")
    if val_frac + test_frac >= 1.0:
        raise UserError(f"{ref('val_frac')} + {ref('test_frac')} = {val_frac + test_frac:g} leaves no training data")
    files.require_file(input_txt, "text file")
    paths.check_outputs(inputs=[(ref("input_txt"), input_txt)],
                        outputs=[(ref("output_h5"), output_h5), (ref("output_json"), output_json)])
    files.require_writable_dir_for(output_h5)
    files.require_writable_dir_for(output_json)

    # The file is read twice: a corpus that changes in between (an editor saving, a download still running)
    # would give ids of a vocabulary it no longer has (0s) or splits of the wrong size. The two passes' text
    # and the file's size and time must agree, or nothing is written.
    stamp, first_pass = _stamp(input_txt), hashlib.sha256()
    vocab, table, total = build_vocabulary(input_txt, encoding, chunk_bytes, digest=first_pass)
    sizes = split_sizes(total, val_frac, test_frac)
    if sizes.train < 2:
        raise UserError(
            f"{input_txt}: {total} tokens leave {sizes.train} for training; use a larger file"
            f" or lower {ref('val_frac')} / {ref('test_frac')}"
        )
    dtype = np.uint8 if vocab.size <= 255 else np.uint32
    if not quiet:
        log(f"Total vocabulary size: {vocab.size}")
        log(f"Total tokens in file: {total}")
        log(f"  Training size: {sizes.train}")
        log(f"  Val size: {sizes.val}")
        log(f"  Test size: {sizes.test}")
        log(f"Using dtype  {np.dtype(dtype).name}")

    try:
        with files.atomic_path(output_h5) as tmp_h5:
            with h5py.File(tmp_h5, "w") as f:
                splits = [(f.create_dataset(name, (size,), dtype=dtype), size)
                          for name, size in (("train", sizes.train), ("val", sizes.val), ("test", sizes.test))]
                second_pass = hashlib.sha256()
                _write_ids(_hashed(iter_units(input_txt, encoding, chunk_bytes), second_pass), table, dtype, splits)
            if second_pass.digest() != first_pass.digest() or _stamp(input_txt) != stamp:
                raise UserError(f"{input_txt} changed while it was read (its two passes differ); nothing was"
                                " written: run again once the file is complete")
            files.write_text_atomic(output_json, vocab.to_json())
    except upstream.h5py_write_errors() as e:  # a full disk, mostly: the temporary is gone, the old outputs intact
        raise files.write_error(output_h5, e) from None
    return sizes


def _write_ids(chunks, table: np.ndarray, dtype, splits) -> None:
    """Second pass: maps each chunk to ids and writes it across the split boundaries, in order."""
    split_index, position = 0, 0
    for units in chunks:
        ids = table[units].astype(dtype, copy=False)
        while ids.size:
            while splits[split_index][1] == position:
                split_index, position = split_index + 1, 0
                if split_index == len(splits):  # more text than the first pass counted: the caller refuses
                    return
            dataset, size = splits[split_index]
            take = min(size - position, ids.size)
            dataset[position:position + take] = ids[:take]
            position += take
            ids = ids[take:]

