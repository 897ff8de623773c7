"""Atomic file writes and input-file checks shared by the tools (no TensorFlow here)."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from typing import Iterator

from kerascharrnn.errors import UserError


@contextlib.contextmanager
def atomic_path(path: str, suffix: str = "") -> Iterator[str]:
    """Yields a temporary path beside `path`; renames it onto `path` only if the block succeeds.

    A crash or an exception leaves any existing `path` untouched (os.replace is atomic on POSIX).
    `suffix` keeps an extension that a writer insists on (Keras wants ".keras").
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp" + suffix, dir=directory)
    os.close(fd)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_text_atomic(path: str, text: str) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())


def require_file(path: str, what: str = "file") -> str:
    """Raises UserError unless `path` is an existing, non-empty regular file."""
    if not path:
        raise UserError(f"no {what} given")
    if not os.path.exists(path):
        raise UserError(f"{path}: no such file")
    if os.path.isdir(path):
        raise UserError(f"{path}: is a directory, not a {what}")
    if os.path.getsize(path) == 0:
        raise UserError(f"{path}: is empty")
    return path


def require_writable_dir_for(path: str) -> None:
    """Raises UserError if the directory that will hold `path` cannot be created or written."""
    directory = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create directory {directory}: {e.strerror}") from None
    if not os.access(directory, os.W_OK | os.X_OK):
        raise UserError(f"directory {directory} is not writable")


@contextlib.contextmanager
def atomic_dir(path: str, overwrite: bool = False) -> Iterator[str]:
    """Yields an empty temporary directory beside `path`; it becomes `path` only if the block succeeds.

    The temporary name starts with a dot, so a watcher of the parent (TensorFlow Serving polls for
    integer-named version directories) never sees a half-written directory. With `overwrite`, an
    existing `path` is swapped out and deleted after the new one is in place; without it, an existing
    `path` is an error and stays untouched.
    """
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=parent)
    try:
        yield tmp
        if os.path.exists(path):
            if not overwrite:
                raise UserError(f"{path} already exists (pass --overwrite to replace it)")
            old = tempfile.mkdtemp(prefix="." + os.path.basename(path) + ".", suffix=".old", dir=parent)
            os.replace(path, os.path.join(old, "previous"))
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
