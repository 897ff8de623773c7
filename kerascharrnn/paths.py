"""Path safety, in one place: a command's outputs never land on its inputs or on each other.

Every output of a command is resolved to its real path (symlinks in the directories on the way and in
the file itself followed) and compared with the real path of every input and every other output, and
for files that already exist with their identity (device, inode: a hard link is the same file too). A
collision is refused with one line before anything is written. No TensorFlow here.
"""

from __future__ import annotations

import os
import re
from typing import Iterable, Optional, Sequence, Tuple

from kerascharrnn import files
from kerascharrnn.errors import UserError

Named = Tuple[str, str]  # (what the user called it: a flag name, the path)

# Linux's NAME_MAX; os.pathconf tells the real one where the directory exists.
_DEFAULT_NAME_MAX = 255


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


def name_max(directory: str) -> int:
    """The longest file name (in bytes) the file system holding `directory` allows."""
    while directory and not os.path.isdir(directory):
        directory = os.path.dirname(directory)
    try:
        return int(os.pathconf(directory or ".", "PC_NAME_MAX"))
    except (OSError, ValueError):
        return _DEFAULT_NAME_MAX


def check_name_length(path: str, what: str) -> None:
    name = os.path.basename(os.path.abspath(path))
    limit = name_max(os.path.dirname(os.path.abspath(path)))
    if len(os.fsencode(name)) > limit:
        raise UserError(f"{what} {path}: the file name is {len(os.fsencode(name))} bytes; this file system allows"
                        f" {limit}")


def check_outputs(inputs: Iterable[Named], outputs: Sequence[Named], directories: Sequence[Named] = ()) -> None:
    """Refuses (UserError) an output that is, or resolves to, an input or another output.

    Args:
      inputs: (flag, path) of every file the command reads; empty paths are skipped.
      outputs: (flag, path) of every file the command writes; each must not be an existing directory.
      directories: (flag, path) of output directories the command fills (or replaces): no input may lie
        inside one, and no other output either.
    """
    inputs = [(flag, path) for flag, path in inputs if path]
    for flag, path in outputs:
        if not path:
            raise UserError(f"{flag} is empty; give a file name")
        if path.endswith((os.sep, "/.", "/..")) or path in (".", ".."):
            raise UserError(f"{flag} {path}: names a directory; give a file name")
        if os.path.isdir(path):
            raise UserError(f"{flag} {path}: is a directory; give a file name")
        check_name_length(path, flag)
    for i, (flag, path) in enumerate(outputs):
        for in_flag, in_path in inputs:
            if _same(path, in_path):
                raise UserError(_collision(flag, path, in_flag, in_path, "would overwrite the input"))
        for other_flag, other in outputs[i + 1:]:
            if _same(path, other):
                raise UserError(_collision(flag, path, other_flag, other, "is the same file as"))
    for flag, directory in directories:
        root = real(directory) + os.sep
        for in_flag, in_path in list(inputs) + list(outputs):
            if real(in_path).startswith(root) or real(in_path) == root[:-1]:
                raise UserError(f"{flag} {directory}: would hold or replace {in_flag} {in_path}"
                                f" ({real(in_path)}); choose another place")


def _collision(flag: str, path: str, other_flag: str, other: str, verb: str) -> str:
    via = f" (both are {real(path)})" if os.path.abspath(path) != os.path.abspath(other) else ""
    return f"{flag} {path} {verb} {other_flag} {other}{via}; choose another output path"


def checkpoint_series_pattern(checkpoint_name: str) -> "re.Pattern":
    """The real paths bin/train writes for a --checkpoint_name: {name}_{iter|best}.keras/.state.npz/.json,
    .tmp files beside them, and {name}.lock."""
    base = re.escape(real(checkpoint_name))
    return re.compile(base + r"(_(\d+|best)\.(keras|state\.npz|json)|\.lock)$")


def check_checkpoint_name(checkpoint_name: str, inputs: Iterable[Named]) -> None:
    """Refuses a --checkpoint_name whose files would overwrite an input of the same run."""
    if not checkpoint_name:
        raise UserError("--checkpoint_name is empty")
    pattern = checkpoint_series_pattern(checkpoint_name)
    prefix = real(checkpoint_name)
    for flag, path in inputs:
        if not path:
            continue
        if pattern.match(real(path)) or real(path) == prefix:
            raise UserError(f"--checkpoint_name {checkpoint_name} would overwrite {flag} {path}"
                            f" ({real(path)}); choose another --checkpoint_name")
    # the longest name of the series for up to 10-digit iteration counts
    check_name_length(checkpoint_name + "_" + "9" * 10 + ".state.npz", "--checkpoint_name")


def check_output_dir(flag: str, directory: str) -> None:
    """Refuses a directory to write into that is a file, or that cannot be created or written."""
    if os.path.exists(directory) and not os.path.isdir(directory):
        raise UserError(f"{flag} {directory}: is a file, not a directory")
    files.require_writable_dir(directory, f"{flag} directory")
