"""Text files as arrays of units, the way bin/preprocess reads a corpus: Unicode code points decoded strictly
with a Python codec (no newline translation), or raw byte values with the encoding "bytes". Streaming, in
fixed-size chunks; NUL bytes mean a binary file. bin/novelty reads its samples the same way."""

from __future__ import annotations

import codecs
from typing import BinaryIO, Iterator

import numpy as np

from kerascharrnn.errors import UserError
from kerascharrnn.errors import setting as ref
from kerascharrnn.vocab import BYTES

CHUNK_BYTES = 1 << 22


def check_encoding(encoding: str) -> str:
    """The codec's canonical name, or BYTES; UserError for an unknown codec or one that is not a text encoding."""
    if encoding == BYTES:
        return encoding
    try:
        info = codecs.lookup(encoding)
    except LookupError:
        raise UserError(f"unknown {ref('encoding')} {encoding!r}; use a Python codec name or 'bytes'") from None
    # base64, zlib, rot13...: codecs that map bytes to bytes or str to str, not a file's text encoding.
    if not getattr(info, "_is_text_encoding", True) or info.incrementaldecoder is None:
        raise UserError(f"{ref('encoding')} {encoding!r} is a {info.name} transform, not a text encoding;"
                        " use e.g. utf-8, latin-1, or 'bytes'")
    return info.name


def code_points(text: str) -> np.ndarray:
    """The code points of `text`: uint8 when it is ASCII, else uint32."""
    if text.isascii():
        return np.frombuffer(text.encode("ascii"), dtype=np.uint8)
    return np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)


def iter_units(path: str, encoding: str, chunk_bytes: int = CHUNK_BYTES) -> Iterator[np.ndarray]:
    """Yields the file as arrays of units: byte values (bytes mode) or Unicode code points.

    Text is decoded with no newline translation ('\\r' is kept, as torch-rnn keeps it).
    """
    with open(path, "rb") as f:
        yield from iter_stream_units(f, path, encoding, chunk_bytes)


def iter_stream_units(f: BinaryIO, path: str, encoding: str, chunk_bytes: int = CHUNK_BYTES) -> Iterator[np.ndarray]:
    """iter_units over an open binary stream (standard input, say); `path` names it in errors."""
    if encoding == BYTES:
        while block := f.read(chunk_bytes):
            yield np.frombuffer(block, dtype=np.uint8)
        return
    decoder = codecs.getincrementaldecoder(encoding)(errors="strict")
    wide = encoding.startswith(("utf-16", "utf-32"))  # these encode ASCII with NUL bytes
    offset = 0
    while True:
        block = f.read(chunk_bytes)
        if b"\0" in block and not wide:  # before decoding: a binary file gets the clearer message
            raise UserError(f"{path}: looks like a binary file (it contains NUL bytes), not text")
        try:
            text = decoder.decode(block, final=not block)
        except UnicodeDecodeError as e:
            position = offset + len(block) - len(e.object) + e.start
            raise UserError(
                f"{path}: not valid {encoding} text (byte {position});"
                f" pass {ref('encoding')} with the file's encoding, or {ref('encoding')} bytes"
            ) from None
        except ValueError as e:  # e.g. utf-16 with no byte-order mark (UnicodeError): no position to report
            raise UserError(f"{path}: not valid {encoding} text ({e}); pass {ref('encoding')} with the file's"
                            f" encoding, or {ref('encoding')} bytes") from None
        if "\0" in text:
            raise UserError(f"{path}: looks like a binary file (it contains NUL characters), not text")
        offset += len(block)
        if text:
            yield code_points(text)
        if not block:
            return
