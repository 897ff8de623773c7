"""Which CPU training path is faster on this machine, as measured here rather than on ours.

`bin/benchmark --what calibrate` times the fused path (fused.py) and the plain Keras layers for each
configuration of its grid and records both times in a small JSON file, keyed by the machine (CPU model,
core count, TensorFlow version). `--fused auto` then takes, for a model of the same recurrent kind and
fused form (split in two halves or not), the path that was faster at the nearest measured rnn_size (the
same layer count preferred); without a measurement for this machine it keeps path_choice.py's static
rule. The choice is stored in the checkpoint, so a resumed run keeps it, and the same machine with the
same file gives the same choice, so `--seed` repeats.

The file: $KERASCHARRNN_CALIBRATION, else calibration.json beside Keras's own cache ($KERAS_HOME or
~/.keras, under kerascharrnn/). Beside it, step_speeds.json keeps the training speeds a budgeted preset
measured (step_speed.py, sizing.py), under the same machine key, so that a machine measures each model once
and a seeded run chooses the same model every time. No TensorFlow import here.
"""

import dataclasses
import importlib.metadata
import json
import math
import os
import platform
from typing import Dict, List, Optional

from kerascharrnn import resources
from kerascharrnn.errors import UserError
from kerascharrnn.io import files

_FILE_LIMIT = 16 << 20  # bytes: a machine's tables are kilobytes
# A timing (milliseconds) or a speed (characters/s) at or past this is no measurement: no machine trains a
# trillion characters a second
_MAX_MEASURE = 1e12


def default_path() -> str:
    explicit = os.environ.get("KERASCHARRNN_CALIBRATION")
    if explicit:
        return explicit
    keras_home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return os.path.join(keras_home, "kerascharrnn", "calibration.json")


def speeds_path() -> str:
    return os.path.join(os.path.dirname(default_path()), "step_speeds.json")


def machine_key() -> str:
    """What a timing depends on besides the model: the CPU, how many cores we may use, TensorFlow."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return f"{cpu} | {resources.cpu_cores()} cores | tensorflow {importlib.metadata.version('tensorflow')}"


def load(path: Optional[str] = None) -> Dict[str, List[dict]]:
    """{machine key: [{"kind", "fused_path", "num_layers", "rnn_size", "fused_ms", "keras_ms"}, ...]}; {}
    if there is no file.

    Raises UserError naming the file if it is not a calibration file.
    """
    path = path or default_path()
    table = files.read_small_json(path, _FILE_LIMIT, "kerascharrnn calibration file")
    if table is None:
        return {}
    try:
        for rows in table.values():
            for row in rows:
                _ = (str(row["kind"]), str(row["fused_path"]), int(row["num_layers"]), int(row["rnn_size"]),
                     _timing(row["fused_ms"]), _timing(row["keras_ms"]))
    except (ValueError, TypeError, KeyError, AttributeError) as e:
        raise UserError(f"{path}: not a kerascharrnn calibration file ({type(e).__name__}); delete it or run"
                        " bin/benchmark --what calibrate again") from None
    return table


def _timing(value) -> float:
    """A measured time or speed: a finite positive number, below what no machine reaches (JSON true is none)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < _MAX_MEASURE:
        raise ValueError(value)
    return float(value)


def record(rows: List[dict], path: Optional[str] = None) -> str:
    """Adds (or replaces) this machine's timings of these configurations; returns the file's path."""
    path = path or default_path()
    table = load(path)
    mine = table.setdefault(machine_key(), [])
    key = lambda r: (r["kind"], r["fused_path"], r["num_layers"], r["rnn_size"])  # noqa: E731
    new_keys = {key(r) for r in rows}
    mine[:] = sorted([r for r in mine if key(r) not in new_keys] + rows, key=key)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    files.write_text_atomic(path, json.dumps(table, indent=1) + "\n")
    return path


def measured_choice(kind: str, num_layers: int, rnn_size: int, fused_path: str,
                    path: Optional[str] = None) -> Optional[dict]:
    """This machine's timing of the measured configuration nearest to this one (same kind and fused form,
    "split" or "on"; nearest rnn_size on a log scale, then nearest layer count), or None if this machine
    measured none."""
    rows = [r for r in load(path).get(machine_key(), []) if r["kind"] == kind and r["fused_path"] == fused_path]
    if not rows:
        return None
    return min(rows, key=lambda r: (abs(math.log(r["rnn_size"] / rnn_size)), abs(r["num_layers"] - num_layers)))


def _speeds() -> Dict[str, Dict[str, float]]:
    path = speeds_path()
    table = files.read_small_json(path, _FILE_LIMIT, "kerascharrnn speeds file")
    if table is None:
        return {}
    try:
        for speeds in table.values():
            for value in speeds.values():
                _timing(value)
    except (ValueError, TypeError, AttributeError) as e:
        raise UserError(f"{path}: not a kerascharrnn speeds file ({type(e).__name__}); delete it, and the next"
                        " budgeted run measures again") from None
    return table


def config_key(model_config, train_config) -> str:
    """What a training step's speed depends on besides the machine (a ModelConfig and a TrainConfig)."""
    train = {k: getattr(train_config, k) for k in ("batch_size", "seq_length", "fused", "weight_decay")}
    return json.dumps({**dataclasses.asdict(model_config), **train}, sort_keys=True)


def measured_speed(config_key: str) -> Optional[float]:
    """Training tokens per second this machine measured for a configuration (config_key), or None."""
    return _speeds().get(machine_key(), {}).get(config_key)


def record_speed(config_key: str, tokens_per_s: float) -> None:
    table = _speeds()
    table.setdefault(machine_key(), {})[config_key] = float(tokens_per_s)
    path = speeds_path()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    files.write_text_atomic(path, json.dumps(table, indent=1, sort_keys=True) + "\n")
