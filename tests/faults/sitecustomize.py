"""Fault injection for the kill tests, from the test side: a subprocess started with this directory on
PYTHONPATH imports it at start-up (Python's `sitecustomize` hook).

KERASCHARRNN_TEST_CRASH_AT=POINT:TAG SIGKILLs the process, as a power cut would, while it writes the
checkpoint whose tag is TAG (an iteration number or "best"):
  after_model  the .keras is written, the .state.npz not yet;
  after_state  the .state.npz is written, the .json not yet.
"""

import os
import signal

_WANTED = os.environ.get("KERASCHARRNN_TEST_CRASH_AT")

if _WANTED:
    from kerascharrnn.io import checkpoint as _ckpt

    _point, _, _tag = _WANTED.partition(":")
    _save_state = _ckpt.save_state

    def _matches(path):
        return path.endswith(f"_{_tag}.state.npz")

    def save_state(path, arrays):
        if _point == "after_model" and _matches(path):
            os.kill(os.getpid(), signal.SIGKILL)
        _save_state(path, arrays)
        if _point == "after_state" and _matches(path):
            os.kill(os.getpid(), signal.SIGKILL)

    _ckpt.save_state = save_state

# KERASCHARRNN_TEST_RAISE=MODULE:FUNCTION makes that library function raise an exception no code
# expects (a bug, as far as the CLI can tell), to test the CLIs' last line of defence.
_RAISE = os.environ.get("KERASCHARRNN_TEST_RAISE")

if _RAISE:
    import importlib

    _module_name, _, _function = _RAISE.partition(":")
    _module = importlib.import_module(_module_name)

    def _injected(*args, **kwargs):
        raise RuntimeError("injected fault for the test")

    setattr(_module, _function, _injected)

# KERASCHARRNN_TEST_KILL_IN=MODULE:FUNCTION SIGKILLs the process when that function is first called
# (after it has done nothing), as a power cut in the middle of the work would.
_KILL = os.environ.get("KERASCHARRNN_TEST_KILL_IN")

if _KILL:
    import importlib

    _kill_module_name, _, _kill_function = _KILL.partition(":")
    _kill_module = importlib.import_module(_kill_module_name)
    _kill_original = getattr(_kill_module, _kill_function)

    def _killed(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGKILL)

    setattr(_kill_module, _kill_function, _killed)
