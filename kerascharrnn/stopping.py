"""What a stop signal does: Ctrl-C (SIGINT), a kill (SIGTERM: a container stop) or a closed terminal (SIGHUP).

Two policies, one per kind of work:
- `StopSignals` (training): the signal only sets a flag, which the loop checks between steps, so that it can
  write a checkpoint before it stops.
- `stop_raised_on_signals` (every other tool): the signal raises where the process is (KeyboardInterrupt for
  Ctrl-C, `Stopped` otherwise), so that what it holds (a temporary directory, a lock) is given back on the way out.

Raising from a handler is not always safe. Python runs a handler between two bytecodes of the main thread,
wherever they are: also inside a callback that C code made (TensorFlow's tracing calls back into Python, the
garbage collector runs weakref callbacks). There the exception can be swallowed ("Exception ignored in ...")
or come out as another one (SystemError: "returned a result with an exception set"). So the handler records
the stop before it raises; an atomic write asks `raise_if_stop_requested()` before it commits, so a swallowed
stop never lets a write through; and the tool reads `StopRequest.signum` to say what stopped it, whatever
exception came out.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Any, Dict, Iterator, Optional

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Stopped(BaseException):
    """A SIGTERM or SIGHUP, raised where the process was (a BaseException: no `except Exception` keeps it)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


class StopRequest:
    """The stop signal received in a `stop_raised_on_signals` block, if any (the first one)."""

    def __init__(self):
        self.signum: Optional[int] = None


# The innermost `stop_raised_on_signals` block's request (None outside any).
_active: Optional[StopRequest] = None


def _exception_for(signum: int) -> BaseException:
    return KeyboardInterrupt() if signum == signal.SIGINT else Stopped(signum)


def raise_if_stop_requested() -> None:
    """Raises the stop's exception if a stop signal came in the current block (its own raise may have been
    swallowed by C code); nothing otherwise."""
    if _active is not None and _active.signum is not None:
        raise _exception_for(_active.signum)


def _raise_for(signum, frame) -> None:
    if _active is not None and _active.signum is None:
        _active.signum = signum  # recorded first: the raise below may never get out
    raise _exception_for(signum)


def _install(handler) -> Dict[int, Any]:
    """Sets `handler` for each of STOP_SIGNALS but those the process ignores (as `nohup` ignores SIGHUP, and a
    shell SIGINT for a background job: Python keeps those too); returns the handlers it replaced. On the main
    thread only."""
    previous = {}
    for signum in STOP_SIGNALS:
        if signal.getsignal(signum) != signal.SIG_IGN:
            previous[signum] = signal.signal(signum, handler)
    return previous


def _restore(previous: Dict[int, Any]) -> None:
    for signum, handler in previous.items():
        signal.signal(signum, handler)


@contextlib.contextmanager
def stop_raised_on_signals() -> Iterator[StopRequest]:
    """STOP_SIGNALS raise for the block (see the module's docstring) and are recorded in the StopRequest it yields.
    On the main thread only (elsewhere the handlers stay as they are); the handlers before it come back after."""
    global _active
    request, outer = StopRequest(), _active
    if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
        yield request
        return
    _active = request
    previous = _install(_raise_for)
    try:
        yield request
    finally:
        _restore(previous)
        _active = outer


class StopSignals:
    """Turns STOP_SIGNALS into a flag checked between training steps, so that a checkpoint can be written."""

    def __init__(self):
        self.signum = None
        self._previous = {}

    def __enter__(self):
        self._previous = _install(self._handle)
        return self

    def _handle(self, signum, frame):
        if self.signum is not None:  # a second Ctrl-C: give up at once
            raise KeyboardInterrupt
        self.signum = signum

    def __exit__(self, *exc):
        _restore(self._previous)
