"""Path safety, in one place: a command's outputs never land on its inputs or on each other.

Every output of a command is resolved to its real path (symlinks in the directories on the way and in
the file itself followed) and compared with the real path of every input and every other output, and
for files that already exist with their identity (device, inode: a hard link is the same file too). A
collision is refused with one line before anything is written. No TensorFlow here.
"""

from __future__ import annotations

import os
from typing import Iterable, Optional, Sequence, Tuple

from kerascharrnn.errors import UserError
from kerascharrnn.errors import setting as ref
from kerascharrnn.io import files
from kerascharrnn.io.series import LOCK_SUFFIX, Series

Named = Tuple[str, str]  # (what the user called it (a flag, or errors.setting(name) in the library), the path)



def real(path: str) -> str:
    """The path with every symlink resolved (also where the last parts do not exist yet)."""
    return os.path.realpath(os.path.abspath(path))


def _identity(path: str) -> Optional[Tuple[int, int]]:
    try:
        status = os.stat(path)
    except OSError:
        return None
    return status.st_dev, status.st_ino


def _same(a: str, b: str) -> bool:
    if real(a) == real(b):
        return True
    ia, ib = _identity(a), _identity(b)
    return ia is not None and ia == ib


def check_name_length(path: str, what: str) -> None:
    name = os.path.basename(os.path.abspath(path))
    limit = files.name_max(os.path.dirname(os.path.abspath(path)))
    if len(os.fsencode(name)) > limit:
        raise UserError(f"{what} {path}: the file name is {len(os.fsencode(name))} bytes; this file system allows"
                        f" {limit}")


def check_outputs(inputs: Iterable[Named], outputs: Sequence[Named], directories: Sequence[Named] = ()) -> None:
    """Refuses (UserError) an output that is, or resolves to, an input or another output.

    Args:
      inputs: (name, path) of every file the command reads; empty paths are skipped.
      outputs: (name, path) of every file the command writes; each must be a regular file or not exist.
      directories: (name, path) of output directories the command fills (or replaces): no input may lie
        inside one, and no other output either.
    """
    inputs = [(name, path) for name, path in inputs if path]
    for name, path in outputs:
        if not path:
            raise UserError(f"{name} is empty; give a file name")
        if path.endswith((os.sep, "/.", "/..")) or path in (".", ".."):
            raise UserError(f"{name} {path}: names a directory; give a file name")
        if os.path.isdir(path):
            raise UserError(f"{name} {path}: is a directory; give a file name")
        files.require_replaceable(path, name)
        check_name_length(path, name)
    for i, (name, path) in enumerate(outputs):
        for in_name, in_path in inputs:
            if _same(path, in_path):
                raise UserError(_collision(name, path, in_name, in_path, "would overwrite the input"))
        for other_name, other in outputs[i + 1:]:
            if _same(path, other):
                raise UserError(_collision(name, path, other_name, other, "is the same file as"))
    for name, directory in directories:
        root = real(directory) + os.sep
        for in_name, in_path in list(inputs) + list(outputs):
            if real(in_path).startswith(root) or real(in_path) == root[:-1]:
                raise UserError(f"{name} {directory}: would hold or replace {in_name} {in_path}"
                                f" ({real(in_path)}); choose another place")


def _collision(name: str, path: str, other_name: str, other: str, verb: str) -> str:
    via = f" (both are {real(path)})" if os.path.abspath(path) != os.path.abspath(other) else ""
    return f"{name} {path} {verb} {other_name} {other}{via}; choose another output path"


def check_checkpoint_name(checkpoint_name: str, inputs: Iterable[Named]) -> None:
    """Refuses a checkpoint name whose series (io/series.py) would overwrite an input of the same run."""
    if not checkpoint_name:
        raise UserError(f"{ref('checkpoint_name')} is empty")
    prefix = real(checkpoint_name)
    pattern = Series(prefix).file_pattern()
    for name, path in inputs:
        if not path:
            continue
        if pattern.match(real(path)) or real(path) == prefix:
            raise UserError(f"{ref('checkpoint_name')} {checkpoint_name} would overwrite {name} {path}"
                            f" ({real(path)}); choose another {ref('checkpoint_name')}")
    check_name_length(Series(checkpoint_name).longest_file_name, ref("checkpoint_name"))
    directory = os.path.dirname(prefix)
    if os.path.isdir(directory):  # a series file that is a pipe or a device: refused now, not at a checkpoint
        for entry in os.scandir(directory):
            if pattern.match(entry.path) and not entry.name.endswith(LOCK_SUFFIX):  # io/lock.py checks its own
                files.require_replaceable(entry.path, f"{ref('checkpoint_name')} {checkpoint_name}: its file")


def check_output_dir(name: str, directory: str) -> None:
    """Refuses a directory to write into that is a file, or that cannot be created or written."""
    if os.path.exists(directory) and not os.path.isdir(directory):
        raise UserError(f"{name} {directory}: is a file, not a directory")
    files.require_writable_dir(directory, f"{name} directory")
