"""What every kerascharrnn tool shares: one-line errors, strict flag parsing, quiet TensorFlow."""

from __future__ import annotations

import os
import sys
from typing import Callable, List

from absl import app, flags

from kerascharrnn.errors import UserError


def _prog(argv: List[str]) -> str:
    return os.path.basename(argv[0]) if argv else "kerascharrnn"


def _fail(prog: str, message: str, code: int = 1):
    print(f"{prog}: error: {message}", file=sys.stderr)
    sys.exit(code)


def parse_flags(argv: List[str]) -> List[str]:
    """absl parsing, but a bad flag is one line, and a leftover positional argument is an error
    (absl bool flags do not take a value after a space, so `--quiet 0` must not pass silently)."""
    try:
        rest = flags.FLAGS(argv)
    except flags.Error as e:
        _fail(_prog(argv), str(e).splitlines()[0], 2)
    if len(rest) > 1:
        _fail(_prog(argv), f"unexpected argument(s): {' '.join(rest[1:])} (flags take --name=value or --name value)", 2)
    return rest


def run_main(main: Callable[[List[str]], None]) -> None:
    """app.run(main) where UserError becomes `prog: error: message` on stderr and exit 1."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ info lines are noise here

    def guarded(argv):
        try:
            main(argv)
        except UserError as e:
            _fail(_prog(argv), str(e))
        except KeyboardInterrupt:
            print(f"{_prog(argv)}: interrupted", file=sys.stderr)
            sys.exit(130)
        except BrokenPipeError:  # e.g. `bin/sample ... | head`
            sys.stderr.close()
            sys.exit(0)

    app.run(guarded, flags_parser=parse_flags)


def quiet_tensorflow() -> None:
    """Silences Python-side TensorFlow/absl warnings once TensorFlow is imported."""
    import logging

    import tensorflow as tf

    tf.get_logger().setLevel(logging.ERROR)
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.ERROR)
