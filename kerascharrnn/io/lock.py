"""One training run per checkpoint name: an OS file lock on `{checkpoint_name}.lock`, held for the run.

Two runs writing one checkpoint series interleave their files (and one of them later dies over a file
the other replaced). flock is released by the kernel when the holder exits, however it exits, so a
lock file left by a dead process is simply locked again: no stale-lock guessing from pids. The file
holds the holder's pid, host and command, for the message the second run prints.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import stat
import sys
import time
from typing import Iterator, Optional

from kerascharrnn.errors import UserError
from kerascharrnn.errors import setting as ref
from kerascharrnn.io.series import Series

# Descriptors of the locks this process holds, kept open (closing one releases its lock).
_held = {}


def describe_holder(text: str) -> str:
    """The holder as the lock file records it, for the refusal."""
    try:
        info = json.loads(text)
        return f"pid {info['pid']} on {info['host']}, started {info['started']}: {info['command']}"
    except (ValueError, KeyError, TypeError, RecursionError):
        return "another process (its lock file names no holder)"


def acquire(checkpoint_name: str, command: Optional[str] = None) -> str:
    """Takes the lock for `checkpoint_name` for the rest of this process, or raises UserError naming the
    process that holds it. Taking it again in the same process is a no-op. Returns the lock file's path.
    """
    path = Series(checkpoint_name).lock
    key = os.path.realpath(path)
    if key in _held:
        return path
    try:
        # never through a symlink: a planted one would have us truncate and write the file it points to
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o666)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise UserError(f"the lock file {path} is a symbolic link; remove it (a lock file is a plain file that"
                            " bin/train creates)") from None
        raise UserError(f"cannot create the lock file {path}: {e.strerror or e}") from None
    status = os.fstat(fd)
    if not stat.S_ISREG(status.st_mode):
        os.close(fd)
        raise UserError(f"the lock file {path} is not a regular file (a pipe or a device?); remove it")
    if status.st_nlink > 1:  # a planted hard link: writing our pid into it would overwrite another file
        os.close(fd)
        raise UserError(f"the lock file {path} is a hard link to another file ({status.st_nlink} names); remove it"
                        " (a lock file is a plain file that bin/train creates)")
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 4096, 0).decode("utf-8", errors="replace")
        os.close(fd)
        raise UserError(f"{ref('checkpoint_name')} {checkpoint_name} is in use by another training run"
                        f" ({describe_holder(holder)}); wait for it or choose another {ref('checkpoint_name')}") \
            from None
    except OSError as e:  # a file system without locks
        os.close(fd)
        raise UserError(f"cannot lock {path}: {e.strerror or e}") from None
    info = {"pid": os.getpid(), "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "command": command if command is not None else " ".join(sys.argv)}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(info).encode("utf-8"), 0)
    _held[key] = fd
    return path


def release(checkpoint_name: str) -> None:
    """Gives the lock back before the process ends."""
    fd = _held.pop(os.path.realpath(Series(checkpoint_name).lock), None)
    if fd is not None:
        os.close(fd)


@contextlib.contextmanager
def held(checkpoint_name: str, command: Optional[str] = None) -> Iterator[str]:
    """The lock for the block (bin/train holds it for its run; a caller running several trainings in one
    process gets it back after each). Yields the lock file's path."""
    already = os.path.realpath(Series(checkpoint_name).lock) in _held
    path = acquire(checkpoint_name, command)
    try:
        yield path
    finally:
        if not already:
            release(checkpoint_name)
