"""What every kerascharrnn tool shares: one-line errors, strict flag parsing, quiet TensorFlow."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
import tempfile
import time
import traceback
import typing
from typing import Callable, Iterator, List, Sequence

from absl import app, flags

from kerascharrnn import config as config_lib
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


# sysexits.h's EX_SOFTWARE: an internal error, as opposed to 1 (bad input) and 2 (bad flags).
INTERNAL_ERROR_EXIT = 70


def _open_crash_log(prog: str):
    """A new file $TMPDIR/kerascharrnn-crash-<tool>-<time>-<random>.log, created exclusively (mkstemp):
    a predictable name in a shared /tmp could be a symlink planted by someone else."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    fd, path = tempfile.mkstemp(prefix=f"kerascharrnn-crash-{prog}-{stamp}-", suffix=".log")
    return os.fdopen(fd, "w", encoding="utf-8", errors="replace"), path


def report_internal_error(prog: str, error: BaseException) -> None:
    """The last line of defence: one line on stderr, the traceback in a log file, exit 70.

    Every known bad input has its own UserError; this only keeps a bug from scrolling a traceback at
    the user while still keeping the details for a bug report.
    """
    summary = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}".rstrip(": ")[:300]
    try:
        f, path = _open_crash_log(prog)
        with f:
            f.write(f"{' '.join(sys.argv)}\n\n")
            traceback.print_exception(type(error), error, error.__traceback__, file=f)
        where = f"details in {path}"
    except OSError as e:  # nowhere to write: the summary alone still beats a traceback
        where = f"no log written ({e.strerror or e})"
    _fail(prog, f"internal error: {summary}; {where}", INTERNAL_ERROR_EXIT)


def run_main(main: Callable[[List[str]], None], flags_parser: Callable = parse_flags) -> None:
    """app.run(main) where UserError becomes `prog: error: message` on stderr and exit 1, and any other
    exception `prog: error: internal error: ...; details in <log>` and exit 70.

    flags_parser: parse_flags, or a parser of a tool that takes positional arguments (bin/novelty).
    """
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
        except Exception as e:  # noqa: BLE001 - the one place that catches everything; see report_internal_error
            if type(e).__name__ == "ResourceExhaustedError":  # TensorFlow out of memory, past every estimate
                first = str(e).strip().splitlines()
                detail = next((line.strip() for line in first if line.strip().startswith("OOM")), "")[:200]
                _fail(_prog(argv), f"out of memory{f' ({detail})' if detail else ''}; lower --batch_size,"
                      " --num_samples, --seq_length or the model's size")
            report_internal_error(_prog(argv), e)

    app.run(guarded, flags_parser=flags_parser)


@contextlib.contextmanager
def stderr_silenced() -> Iterator[None]:
    """Points file descriptor 2 at /dev/null: TensorFlow's C++ start-up lines bypass Python logging."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def quiet_tensorflow() -> None:
    """Imports TensorFlow without its start-up chatter (set KERASCHARRNN_TF_LOGS=1 to see it) and
    silences Python-side TensorFlow/absl warnings."""
    import logging

    from absl import logging as absl_logging

    if os.environ.get("KERASCHARRNN_TF_LOGS") == "1":
        import tensorflow as tf
    else:
        with stderr_silenced():
            import tensorflow as tf

            tf.config.list_physical_devices()  # device discovery logs too (e.g. "failed call to cuInit")
    tf.get_logger().setLevel(logging.ERROR)
    absl_logging.set_verbosity(absl_logging.ERROR)


# --- flags generated from the config dataclasses (kerascharrnn.config.setting) ---------------------


def _field_type(cls, field) -> type:
    hint = typing.get_type_hints(cls)[field.name]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if args else hint  # Optional[int] -> int


def define_flags(cls, skip: Sequence[str] = ()) -> None:
    """Defines one absl flag per field of config dataclass `cls`: default, help and bounds from the field."""
    for field in dataclasses.fields(cls):
        meta = field.metadata
        if not meta.get("flag", False) or field.name in skip:
            continue
        kind = meta.get("flag_type") or _field_type(cls, field)
        default = field.default
        bounds = {"lower_bound": meta.get("lower"), "upper_bound": meta.get("upper")}
        if meta.get("choices"):
            flags.DEFINE_enum(field.name, default, list(meta["choices"]), meta["help"])
        elif kind is int:
            if bounds["upper_bound"] is None:  # the config refuses beyond int32 anyway; say so in --help
                bounds["upper_bound"] = config_lib.INT32_MAX
            if _field_type(cls, field) is bool:  # torch-rnn's 0/1 options
                default, bounds = int(default), {"lower_bound": 0, "upper_bound": 1}
            flags.DEFINE_integer(field.name, default, meta["help"], **bounds)
        elif kind is float:
            flags.DEFINE_float(field.name, default, meta["help"], **bounds)
        elif kind is str:
            flags.DEFINE_string(field.name, default, meta["help"])
        else:
            raise TypeError(f"{cls.__name__}.{field.name}: no flag type for {kind}")


def config_from_flags(cls, **values):
    """An instance of `cls` from the flags define_flags made (and `values` for the other fields)."""
    for field in dataclasses.fields(cls):
        if field.name in values or not field.metadata.get("flag", False) or field.name not in flags.FLAGS:
            continue
        value = flags.FLAGS[field.name].value
        if _field_type(cls, field) is bool:
            value = bool(value)
        values[field.name] = value
    return cls(**values)


def define_gpu_flag() -> None:
    flags.DEFINE_integer("gpu", 0, "GPU index to use when TensorFlow sees one; -1 = CPU only.", lower_bound=-1)
