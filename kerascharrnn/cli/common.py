"""What every tool shares: its own flags, one-line errors and exit codes, quiet TensorFlow.

A tool is a module with `define_flags(flag_values)`, `run(flag_values, argv) -> exit code or None` (argv:
the program name, then any positional arguments), and `main(argv=None) -> int`, which calls
`common.main`. Each call parses into a FlagValues of its own (never absl's global FLAGS), so every tool
can be imported, and called, in one process: the console scripts and bin/ wrappers call main(); a test
calls it with an argv and reads the exit code it returns.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import json
import os
import signal
import sys
import tempfile
import time
import traceback
import typing
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

from absl import flags

from kerascharrnn import config as config_lib
from kerascharrnn import stopping
from kerascharrnn.errors import UserError

# Exit codes: 1 bad input, 2 bad flags, 70 (sysexits.h's EX_SOFTWARE) an internal error, 128 + n a signal.
USER_ERROR_EXIT, FLAGS_EXIT, INTERNAL_ERROR_EXIT = 1, 2, 70
_HELP_FLAGS = ("help", "helpfull", "helpshort")


def flag_name(setting: str) -> str:
    """How a tool spells a setting: its flag."""
    return f"--{setting}"


def _prog(argv: Sequence[str]) -> str:
    return os.path.basename(argv[0]) if argv else "kerascharrnn"


def _fail(prog: str, message: str, code: int = USER_ERROR_EXIT) -> int:
    print(f"{prog}: error: {message}", file=sys.stderr)
    return code


def describe(error: UserError, prog: Optional[str] = None) -> str:
    """A UserError as this tool's error line (its settings named as flags)."""
    return f"{prog or _prog(sys.argv)}: error: {error.render(flag_name)}"


def _open_crash_log(prog: str):
    """A new file $TMPDIR/kerascharrnn-crash-<tool>-<time>-<random>.log, created exclusively (mkstemp):
    a predictable name in a shared /tmp could be a symlink planted by someone else."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    fd, path = tempfile.mkstemp(prefix=f"kerascharrnn-crash-{prog}-{stamp}-", suffix=".log")
    return os.fdopen(fd, "w", encoding="utf-8", errors="replace"), path


def report_internal_error(prog: str, argv: Sequence[str], error: BaseException) -> int:
    """The last line of defence: one line on stderr, the traceback in a log file, exit 70.

    Every known bad input has its own UserError; this only keeps a bug from scrolling a traceback at
    the user while still keeping the details for a bug report.
    """
    summary = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}".rstrip(": ")[:300]
    try:
        f, path = _open_crash_log(prog)
        with f:
            f.write(f"{' '.join(argv)}\n\n")
            traceback.print_exception(type(error), error, error.__traceback__, file=f)
        where = f"details in {path}"
    except OSError as e:  # nowhere to write: the summary alone still beats a traceback
        where = f"no log written ({e.strerror or e})"
    return _fail(prog, f"internal error: {summary}; {where}", INTERNAL_ERROR_EXIT)


def _out_of_memory(error: BaseException) -> Optional[str]:
    """The one-line reason if `error` is TensorFlow running out of memory, past every estimate."""
    tf = sys.modules.get("tensorflow")
    if tf is None or not isinstance(error, tf.errors.ResourceExhaustedError):
        return None
    detail = next((line.strip() for line in str(error).strip().splitlines() if line.strip().startswith("OOM")), "")
    return f"out of memory{f' ({detail[:200]})' if detail else ''}; lower the batch size, the number of samples," \
           " the sequence length or the model's size"


# The optional dependencies a tool may reach, by module: (its name, the extra that installs it). The base install
# has neither TensorFlow nor the server's libraries: [tf] gives every tool, [lite] bin/sample and bin/serve --tflite.
EXTRAS = {"tensorflow": ("TensorFlow", "tf"), "keras": ("Keras", "tf"), "h5py": ("h5py", "tf"),
          "fastapi": ("FastAPI", "serve"), "starlette": ("FastAPI", "serve"), "pydantic": ("FastAPI", "serve"),
          "uvicorn": ("uvicorn", "serve"), "ai_edge_litert": ("LiteRT", "lite")}


def lacking(module: str, needed_by: str = "this tool") -> str:
    """The one line that says an install lacks `module` (a key of EXTRAS), and how to get it."""
    name, extra = EXTRAS[module]
    brings = ", ".join(dict.fromkeys(other for other, its in EXTRAS.values() if its == extra))
    hint = "; the lite install samples and serves exported .tflite models only" if extra == "tf" else ""
    return f"{needed_by} needs {name}, which this install lacks: pip install 'kerascharrnn[{extra}]' ({brings}{hint})"


def require(module: str, needed_by: str) -> None:
    """UserError (lacking's line) unless `module` can be imported; found without importing it."""
    if importlib.util.find_spec(module) is None:
        raise UserError(lacking(module, needed_by))


def require_engine(kind: str) -> None:
    """UserError unless this install runs an engine of `kind` (inference.engines.KINDS): a .tflite runs on LiteRT
    alone, the others on TensorFlow."""
    if kind == "tflite":
        if importlib.util.find_spec("ai_edge_litert") is None and importlib.util.find_spec("tensorflow") is None:
            raise UserError(lacking("ai_edge_litert", "--tflite"))
    else:
        require("tensorflow", f"--{kind}")


def load_framework(kind: str, gpu: int) -> None:
    """Loads what an engine of `kind` runs on, quietly: TensorFlow on the device --gpu picks for sampling; a .tflite
    engine nothing here (LiteRT runs on the CPU, and TensorFlow is never imported for it)."""
    if kind == "tflite":
        return
    quiet_tensorflow()
    from kerascharrnn import devices

    devices.configure(gpu, sampling=True)


def _missing_dependency(error: BaseException) -> Optional[str]:
    """The one-line reason if `error` is the import of an optional dependency this install lacks."""
    if not isinstance(error, ModuleNotFoundError) or not error.name:
        return None
    module = error.name.split(".")[0]
    return lacking(module) if module in EXTRAS else None


def _help(flag_values: flags.FlagValues, doc: str) -> str:
    lines = [doc.strip(), "", "flags:"]
    for name in sorted(flag_values):
        flag = flag_values[name]
        if name != flag.name or name in _HELP_FLAGS:  # short names; the help flags themselves
            continue
        default = "" if flag.default in (None, "") else f" (default: {flag.default_as_str})"
        lines.append(f"  --{name}: {flag.help}{default}")
    return "\n".join(lines)


def _stdout_gone() -> None:
    """`tool ... | head` closed our standard output: point it at /dev/null, so that the flush at exit
    does not fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # not a real file (a test's capture): nothing to flush
        pass


def main(argv: Optional[Sequence[str]], define_flags: Callable[[flags.FlagValues], None],
         run: Callable[[flags.FlagValues, List[str]], Optional[int]], doc: str, positional: bool = False) -> int:
    """Parses argv into a FlagValues of the tool's own and runs it; returns the exit code.

    A UserError is `prog: error: message` on stderr (settings named as flags) and exit 1; a flag that does
    not parse, exit 2; Ctrl-C exit 130; an optional dependency this install lacks (TensorFlow in the lite
    install), one line naming the extra that brings it, exit 1; anything else `prog: error: internal error: ...;
    details in <log>` and exit 70.

    Args:
      argv: the command line, program name first (None: sys.argv).
      define_flags: defines the tool's flags on the FlagValues it is given.
      run: the tool, given the parsed flags and the program name followed by the positional arguments.
      doc: the tool's description, for --help.
      positional: the tool takes positional arguments (else one is an error: absl's boolean flags do not
        take a value after a space, so `--quiet 0` must not pass silently).
    """
    argv = list(sys.argv if argv is None else argv)
    utf8_stdio()
    prog = _prog(argv)
    flag_values = flags.FlagValues()
    define_flags(flag_values)
    for name in _HELP_FLAGS:
        flags.DEFINE_bool(name, False, "Show the flags and exit.", short_name="h" if name == "help" else None,
                          flag_values=flag_values)
    try:
        rest = flag_values(argv)
    except flags.Error as e:
        return _fail(prog, str(e).splitlines()[0], FLAGS_EXIT)
    if any(flag_values[name].value for name in _HELP_FLAGS):
        print(_help(flag_values, doc))
        return 0
    if len(rest) > 1 and not positional:
        return _fail(prog, f"unexpected argument(s): {' '.join(rest[1:])} (flags take --name=value or --name value)",
                     FLAGS_EXIT)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ info lines are noise here
    problem = environment_problem(flag_values)
    if problem:
        return _fail(prog, problem)
    stop = None
    try:
        with stopping.stop_raised_on_signals() as stop:
            code = run(flag_values, rest)
    except BaseException as e:  # noqa: BLE001 - sorted below; what is not ours to handle is raised again
        if stop is not None and stop.signum is not None:  # whatever came out: a stop raised inside C code can
            return _stopped(prog, stop.signum, finished=False)  # come out as another exception (stopping.py)
        return _failed(prog, argv, e)
    if stop.signum is not None:  # C code swallowed the stop after the last write (stopping.py)
        return _stopped(prog, stop.signum, finished=True)
    return 0 if code is None else code


def _stopped(prog: str, signum: int, finished: bool) -> int:
    """Says that a stop signal ended the tool, and what became of its work; the exit code 128 + the signal's."""
    what = "interrupted" if signum == signal.SIGINT else f"stopped by {signal.Signals(signum).name}"
    if finished:
        what += " (after it had finished: what it wrote is complete)"
    elif signum != signal.SIGINT:  # Ctrl-C's line says only that, as every tool's does
        what += " (what it was writing is removed)"
    print(f"{prog}: {what}", file=sys.stderr)
    return 128 + signum


def _failed(prog: str, argv: Sequence[str], error: BaseException) -> int:
    """The exit code for what came out of a tool's run, after one line on stderr."""
    if isinstance(error, UserError):
        return _fail(prog, error.render(flag_name))
    if isinstance(error, KeyboardInterrupt):
        return _stopped(prog, signal.SIGINT, finished=False)
    if isinstance(error, stopping.Stopped):
        return _stopped(prog, error.signum, finished=False)
    if isinstance(error, BrokenPipeError):  # e.g. `bin/sample ... | head`
        _stdout_gone()
        return 0
    if not isinstance(error, Exception):  # SystemExit and the like: not ours
        raise error
    reason = _missing_dependency(error) or _out_of_memory(error)
    if reason:
        return _fail(prog, reason)
    return report_internal_error(prog, argv, error)


# Flags that name files or directories: their values are paths as the OS has them (any bytes; a name that is not
# UTF-8 reaches Python as surrogates, and goes back to the OS unchanged). Every other text flag is text.
PATH_FLAGS = frozenset({"input_txt", "output_h5", "output_json", "input_h5", "input_json", "checkpoint_name",
                        "init_from", "resume_from", "checkpoint", "saved_model", "tflite", "export_dir",
                        "api_key_file", "output", "output_md", "output_png", "tensorboard_dir"})
_NOT_PATHS = {"resume_from": ("latest", "auto")}


def environment_problem(flag_values: flags.FlagValues) -> Optional[str]:
    """What in the process's surroundings would otherwise end in an internal error, as one line (or None); and
    the process set up for the tools: Keras on TensorFlow, and a file-size limit an error instead of a kill.

    - a current directory that was deleted: the tool runs with absolute paths (from the root), and a relative
      one is named (it would resolve nowhere);
    - a text flag whose bytes are not UTF-8 (a locale that is not UTF-8 decodes every argument byte by byte:
      its UTF-8 is read back; paths are the OS's, any bytes);
    - KERAS_BACKEND naming another backend (the tools are TensorFlow programs; keras.json's backend is
      overridden by the environment, which is set here, and said so).
    """
    for name in flag_values:
        flag = flag_values[name]
        if name in PATH_FLAGS or not isinstance(flag.value, str):
            continue
        try:
            flag.value.encode("utf-8")
        except UnicodeEncodeError:
            try:
                flag.value = os.fsencode(flag.value).decode("utf-8")
            except UnicodeDecodeError:
                return f"--{name}: {os.fsencode(flag.value)!r} is not UTF-8 text"
    try:
        os.getcwd()
    except FileNotFoundError:
        relative = [f"--{name} {flag_values[name].value}" for name in sorted(PATH_FLAGS & set(flag_values))
                    if isinstance(flag_values[name].value, str) and flag_values[name].value
                    and flag_values[name].value not in _NOT_PATHS.get(name, ())
                    and not os.path.isabs(flag_values[name].value)]
        if relative:
            return (f"the current directory no longer exists (deleted?), and {', '.join(relative)} is relative to it;"
                    " give absolute paths, or change to a directory that exists")
        os.chdir("/")  # every path is absolute: nothing is looked up in the directory that is gone
    backend = os.environ.get("KERAS_BACKEND") or "tensorflow"  # (empty: unset, for Keras too)
    if backend != "tensorflow":
        return (f"KERAS_BACKEND={backend[:40]} is set: kerascharrnn runs on Keras's TensorFlow backend; unset it or"
                " set KERAS_BACKEND=tensorflow")
    configured = configured_backend()
    if configured not in (None, "tensorflow"):
        print(f"note: keras.json names the {configured[:40]} backend; kerascharrnn runs on TensorFlow (set for this"
              " run only)", file=sys.stderr)
    os.environ["KERAS_BACKEND"] = "tensorflow"
    try:  # past `ulimit -f`, a write fails with EFBIG (an error naming the file) instead of SIGXFSZ killing us
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    except (ValueError, AttributeError):  # not the main thread, or no such signal here
        pass
    return None


def configured_backend() -> Optional[str]:
    """The backend keras.json names (under $KERAS_HOME, else ~/.keras, as Keras reads it), if it names one."""
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    try:
        with open(os.path.join(home, "keras.json"), "rb") as f:
            backend = json.loads(f.read(1 << 16).decode("utf-8")).get("backend")
    except (OSError, ValueError, AttributeError, RecursionError):
        return None  # (Keras itself says what is wrong with a keras.json it cannot read)
    return backend if isinstance(backend, str) else None


def utf8_stdio() -> None:
    """Standard output and error in UTF-8 whatever the locale (LC_ALL=C without Python's UTF-8 mode would make
    them ASCII: a sample's first non-ASCII character would end the run), and file names that are not UTF-8
    written as their bytes."""
    for stream in (sys.stdout, sys.stderr):
        encoding = (getattr(stream, "encoding", None) or "utf-8").lower().replace("-", "").replace("_", "")
        if encoding != "utf8" and hasattr(stream, "reconfigure"):
            stream.reconfigure(encoding="utf-8", errors="surrogateescape")


@contextlib.contextmanager
def stderr_silenced():
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


def define_flags(flag_values: flags.FlagValues, cls, skip: Sequence[str] = ()) -> None:
    """Defines one flag per field of config dataclass `cls`: default, help and bounds from the field."""
    for field in dataclasses.fields(cls):
        meta = field.metadata
        if not meta.get("flag", False) or field.name in skip:
            continue
        kind = meta.get("flag_type") or _field_type(cls, field)
        default = field.default
        bounds = {"lower_bound": meta.get("lower"), "upper_bound": meta.get("upper")}
        options = dict(flag_values=flag_values)
        if meta.get("choices"):
            flags.DEFINE_enum(field.name, default, list(meta["choices"]), meta["help"], **options)
        elif kind is int:
            if bounds["upper_bound"] is None:  # the config refuses beyond int32 anyway; say so in --help
                bounds["upper_bound"] = config_lib.INT32_MAX
            if _field_type(cls, field) is bool:  # torch-rnn's 0/1 options
                default, bounds = int(default), {"lower_bound": 0, "upper_bound": 1}
            flags.DEFINE_integer(field.name, default, meta["help"], **bounds, **options)
        elif kind is float:
            flags.DEFINE_float(field.name, default, meta["help"], **bounds, **options)
        elif kind is str:
            flags.DEFINE_string(field.name, default, meta["help"], **options)
        else:
            raise TypeError(f"{cls.__name__}.{field.name}: no flag type for {kind}")


def given(flag_values: flags.FlagValues) -> Dict[str, Any]:
    """The flags the command line set, with their values."""
    return {name: flag_values[name].value for name in flag_values if flag_values[name].present}


def config_from_flags(flag_values: flags.FlagValues, cls, defaults: Mapping[str, Any] = (), **values):
    """An instance of `cls` from the flags define_flags made: a flag's value where the command line gave it,
    else `defaults` (a preset's values), else the flag's default; `values` set the other fields."""
    defaults = dict(defaults)
    for field in dataclasses.fields(cls):
        if field.name in values or not field.metadata.get("flag", False) or field.name not in flag_values:
            continue
        flag = flag_values[field.name]
        value = defaults[field.name] if field.name in defaults and not flag.present else flag.value
        if _field_type(cls, field) is bool:
            value = bool(value)
        values[field.name] = value
    return cls(**values)


def define_gpu_flag(flag_values: flags.FlagValues) -> None:
    flags.DEFINE_integer("gpu", 0, "GPU index to use when TensorFlow sees one; -1 = CPU only.", lower_bound=-1,
                         flag_values=flag_values)
