"""Atomic file writes and input-file checks shared by the tools (no TensorFlow here)."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import stat
import tempfile
from typing import Iterator, Optional

from kerascharrnn import stopping, upstream
from kerascharrnn.errors import UserError
from kerascharrnn.errors import setting as ref

# mkstemp's random part, and the dots around it.
_TEMP_OVERHEAD = 8 + 2
# Linux's NAME_MAX; os.pathconf tells the real one where the directory exists.
_DEFAULT_NAME_MAX = 255


def shown(path: str) -> str:
    """A path as text for a person (a plot's title, say): a file name that is not UTF-8 (surrogates in Python)
    with U+FFFD for its bytes that are not."""
    return os.fsencode(path).decode("utf-8", errors="replace")


def name_max(directory: str) -> int:
    """The longest file name (in bytes) the file system holding `directory` allows."""
    while directory and not os.path.isdir(directory):
        directory = os.path.dirname(directory)
    try:
        return int(os.pathconf(directory or ".", "PC_NAME_MAX"))
    except (OSError, ValueError):
        return _DEFAULT_NAME_MAX


def current_umask() -> int:
    """The process umask, read without changing it (os.umask would, for a moment, for every thread)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def target_mode(path: str, directory: bool = False) -> int:
    """The permission bits a replacement of `path` gets: those of the file it replaces, else what
    open() would give a new file under the umask (0666 or 0777 minus the umask). mkstemp's 0600 would
    make a corpus shared with a group, or an export read by a server under another user, unreadable."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        return (0o777 if directory else 0o666) & ~current_umask()


def temp_prefix(path: str, suffix: str = "") -> str:
    """"." + the file name, shortened so the temporary name fits the file system's name limit (a legal
    250-byte name plus our additions would not)."""
    name = os.path.basename(os.path.abspath(path))
    room = name_max(os.path.dirname(os.path.abspath(path))) - _TEMP_OVERHEAD - len(os.fsencode(suffix)) - 1
    while len(os.fsencode(name)) > room:
        name = name[:-1]
    return "." + name + "."


def _disk_full(code: Optional[int], path: str) -> bool:
    if code in (errno.ENOSPC, errno.EDQUOT):
        return True
    if code is None:  # some of h5py's write errors carry no errno; the free space tells
        try:
            return shutil.disk_usage(os.path.dirname(os.path.abspath(path))).free < (1 << 20)
        except OSError:
            return False
    return False


def write_reason(path: str, e: BaseException) -> str:
    """Why a write failed (an OSError, or h5py's: upstream.h5py_write_errors), in a few words."""
    code = upstream.errno_of(e)
    if code == errno.EFBIG:
        return "File too large (past the file-size limit, `ulimit -f`, or the file system's)"
    if _disk_full(code, path):
        return "no space left on the device"
    return getattr(e, "strerror", None) or (str(e).splitlines() or [type(e).__name__])[0][:300]


def write_error(path: str, e: BaseException) -> UserError:
    """A failed write as one line; the file it was to replace is intact (the caller wrote a temporary)."""
    return UserError(f"could not write {path}: {write_reason(path, e)}; any existing {os.path.basename(path)} is"
                     " unchanged")


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a directory")):
        if test(mode):
            return name
    return "not a regular file"


def require_replaceable(path: str, what: str = "output") -> None:
    """Raises UserError if `path` exists (through a symlink too) as anything but a regular file: an output
    written by renaming a new file onto it would replace a device, a pipe or a socket (as root, /dev/null)."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return  # not there (or a dangling link): nothing to replace
    if not stat.S_ISREG(mode):
        raise UserError(f"{what} {path}: is {_kind(mode)}; an output must be a regular file or not exist yet"
                        " (it is left untouched)")


@contextlib.contextmanager
def atomic_path(path: str, suffix: str = "") -> Iterator[str]:
    """Yields a temporary path beside `path`; renames it onto `path` only if the block succeeds.

    A crash or an exception leaves any existing `path` untouched (os.replace is atomic on POSIX). The
    new file keeps the mode of the one it replaces (a new one gets the umask's). `suffix` keeps an
    extension that a writer insists on (Keras wants ".keras"). A `path` that is a device, a pipe or a socket
    is refused (UserError) and left as it is.
    """
    require_replaceable(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    mode = target_mode(path)
    tmp_suffix = ".tmp" + suffix
    fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path, tmp_suffix), suffix=tmp_suffix, dir=directory)
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, mode)
        require_replaceable(path)  # again: it may have appeared while the file was written
        stopping.raise_if_stop_requested()  # a stop that C code swallowed while the file was written
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_text_atomic(path: str, text: str) -> None:
    """Writes UTF-8 text atomically; a full disk is a UserError and the old file stays."""
    try:
        with atomic_path(path) as tmp:
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
    except OSError as e:
        raise write_error(path, e) from None


def require_file(path: str, what: str = "file") -> str:
    """Raises UserError unless `path` is an existing, non-empty regular file."""
    if not path:
        raise UserError(f"no {what} given")
    if not os.path.exists(path):
        raise UserError(f"{path}: no such file")
    if os.path.isdir(path):
        raise UserError(f"{path}: is a directory, not a {what}")
    if not os.path.isfile(path):
        raise UserError(f"{path}: not a regular file (a device, pipe or socket), not a {what}")
    if not os.access(path, os.R_OK):
        raise UserError(f"{path}: permission denied")
    if os.path.getsize(path) == 0:
        raise UserError(f"{path}: is empty")
    return path


def read_small_json(path: str, limit: int, what: str):
    """The JSON a small file of ours holds (a per-machine table), or None if there is no file. Never opens a
    pipe or a device (it would wait for a writer for ever) nor reads past `limit` bytes; UserError otherwise,
    naming the file as `what`."""
    if not os.path.lexists(path):
        return None
    if not os.path.isfile(path):
        raise UserError(f"{path}: not a regular file (a pipe, a device, or a link to nothing), not a {what}; delete"
                        " it")
    try:
        with open(path, "rb") as f:
            data = f.read(limit + 1)
        if len(data) > limit:
            raise UserError(f"{path}: larger than a {what} can be ({limit:,} bytes); delete it")
        return json.loads(data.decode("utf-8"))
    except (OSError, ValueError, RecursionError) as e:
        raise UserError(f"{path}: not a {what} ({type(e).__name__}); delete it") from None


def require_writable_dir(directory: str, what: str = "directory") -> None:
    """Creates `directory` if needed; raises UserError if it cannot be created or written (`what` names it)."""
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create {what} {directory}: {e.strerror or e}") from None
    if not os.access(directory, os.W_OK | os.X_OK):
        raise UserError(f"{what} {directory} is not writable")


def require_writable_dir_for(path: str) -> None:
    """Raises UserError if the directory that will hold `path` cannot be created or written."""
    require_writable_dir(os.path.dirname(os.path.abspath(path)))


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
    mode = target_mode(path, directory=True)
    tmp = tempfile.mkdtemp(prefix=temp_prefix(path, ".tmp"), suffix=".tmp", dir=parent)
    try:
        yield tmp
        os.chmod(tmp, mode)  # mkdtemp's 0700 would hide the export from a server running as another user
        stopping.raise_if_stop_requested()  # a stop that C code swallowed while the directory was written
        if os.path.exists(path):
            if not overwrite:
                raise UserError(f"{path} already exists (pass {ref('overwrite')} to replace it)")
            old = tempfile.mkdtemp(prefix=temp_prefix(path, ".old"), suffix=".old", dir=parent)
            os.replace(path, os.path.join(old, "previous"))
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
