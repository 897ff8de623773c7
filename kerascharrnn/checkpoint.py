"""Checkpoint files: `{name}_{iter}.keras` (model + vocabulary), `.state.npz` (training state), `.json`.

Each file is written to a temporary name and renamed. The `.json` is written last and marks the
checkpoint complete: a `.keras` or `.state.npz` without its `.json` (a run killed mid-write) is ignored.
The checks on these files need no TensorFlow, so the CLIs can reject a bad file before importing it.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import re
import signal
import zipfile
from typing import Dict, Optional

import numpy as np

from kerascharrnn import files
from kerascharrnn.errors import UserError
from kerascharrnn.vocab import Vocabulary

VOCAB_ENTRY = "vocab.json"  # inside the .keras zip; keras.models.load_model ignores extra entries
FORMAT_KEY = "kerascharrnn_checkpoint"
_KERAS_ENTRIES = ("config.json", "model.weights.h5")


@dataclasses.dataclass(frozen=True)
class CheckpointPaths:
    model: str
    state: str
    json: str

    @classmethod
    def for_tag(cls, checkpoint_name: str, tag) -> "CheckpointPaths":
        base = f"{checkpoint_name}_{tag}"
        return cls(model=base + ".keras", state=base + ".state.npz", json=base + ".json")


def save_model(model, vocab: Vocabulary, path: str) -> None:
    """model.save() plus the vocabulary as an extra zip entry, atomically."""
    with files.atomic_path(path, suffix=".keras") as tmp:
        model.save(tmp)
        with zipfile.ZipFile(tmp, "a") as archive:
            archive.writestr(VOCAB_ENTRY, vocab.to_json())


def save_state(path: str, arrays: Dict[str, np.ndarray]) -> None:
    with files.atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())


def load_state(path: str) -> Dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as data:  # never unpickle
            return {k: data[k] for k in data.files}
    except FileNotFoundError:
        raise UserError(f"{path}: no such file (the checkpoint's training state)") from None
    except (OSError, ValueError, zipfile.BadZipFile):
        raise UserError(f"{path}: training state is unreadable (truncated or corrupt)") from None


CRASH_ENV = "KERASCHARRNN_CRASH_AT"


def _crash_point(name: str, paths: CheckpointPaths) -> None:
    """Fault injection for the kill tests: KERASCHARRNN_CRASH_AT=NAME or NAME:TAG (e.g. after_state:10)
    SIGKILLs the process here, as a power cut would."""
    wanted = os.environ.get(CRASH_ENV)
    if not wanted:
        return
    point, _, tag = wanted.partition(":")
    if point == name and (not tag or paths.json.endswith(f"_{tag}.json")):
        os.kill(os.getpid(), signal.SIGKILL)


def save_checkpoint(paths: CheckpointPaths, model, vocab: Vocabulary, state: Dict[str, np.ndarray], info: dict) -> None:
    """Writes the three files; the .json (which marks the checkpoint complete) goes last.

    Overwriting a checkpoint (`_best`) first removes its .json: until the new one lands, the set is
    incomplete and ignored, never a new model paired with an old record.
    """
    if os.path.exists(paths.json):
        os.remove(paths.json)
    save_model(model, vocab, paths.model)
    _crash_point("after_model", paths)
    save_state(paths.state, state)
    _crash_point("after_state", paths)
    record = dict(info)
    record.update({
        FORMAT_KEY: 1,
        "model_file": os.path.basename(paths.model),
        "state_file": os.path.basename(paths.state),
        "vocab": vocab.to_json_dict(),
    })
    files.write_text_atomic(paths.json, json.dumps(record, indent=1))


def check_keras_file(path: str) -> None:
    """Cheap structural check of a .keras file, before TensorFlow is imported."""
    files.require_file(path, ".keras checkpoint")
    if not zipfile.is_zipfile(path):
        raise UserError(f"{path}: not a .keras checkpoint (not a zip archive; truncated or another format?)")
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError):
        raise UserError(f"{path}: corrupt .keras checkpoint") from None
    if bad is not None:
        raise UserError(f"{path}: corrupt .keras checkpoint (entry {bad} fails its CRC)")
    missing = [n for n in _KERAS_ENTRIES if n not in names]
    if missing:
        raise UserError(f"{path}: not a Keras model file (missing {', '.join(missing)})")
    if VOCAB_ENTRY not in names:
        raise UserError(f"{path}: a Keras model without a vocabulary; not a kerascharrnn checkpoint")


def read_vocab(path: str) -> Vocabulary:
    """The vocabulary stored inside a .keras checkpoint."""
    check_keras_file(path)
    with zipfile.ZipFile(path) as archive:
        try:
            data = json.loads(archive.read(VOCAB_ENTRY).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise UserError(f"{path}: its vocabulary entry is not JSON") from None
    return Vocabulary.from_json_dict(data, source=f"{path}:{VOCAB_ENTRY}")


def load_model(path: str):
    """keras.models.load_model in safe mode (a Lambda layer is refused); errors become UserError."""
    import keras

    check_keras_file(path)
    try:
        return keras.models.load_model(path, compile=False, safe_mode=True)
    except ValueError as e:
        if "safe_mode" in str(e) or "Lambda" in str(e):
            raise UserError(f"{path}: refused: it contains code (a Lambda layer); not loaded in safe mode") from None
        raise UserError(f"{path}: not a loadable Keras model ({str(e).splitlines()[0][:200]})") from None
    except Exception as e:  # Keras raises many types for a damaged archive
        raise UserError(f"{path}: not a loadable Keras model ({type(e).__name__})") from None


def read_json(path: str) -> dict:
    """Reads and checks a checkpoint .json."""
    files.require_file(path, "checkpoint .json")
    try:
        with open(path, "rb") as f:
            record = json.loads(f.read().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise UserError(f"{path}: not JSON (truncated or another kind of file)") from None
    if not isinstance(record, dict) or FORMAT_KEY not in record:
        raise UserError(f"{path}: JSON, but not a kerascharrnn checkpoint")
    for key in ("model_file", "state_file", "iteration", "model_config", "train_config"):
        if key not in record:
            raise UserError(f"{path}: checkpoint JSON lacks {key!r}")
    return record


def sibling(json_path: str, name: str) -> str:
    return os.path.join(os.path.dirname(os.path.abspath(json_path)), name)


def model_path_for(path: str) -> str:
    """--checkpoint may name the .keras file or its .json; returns the .keras path."""
    if path.endswith(".json"):
        return sibling(path, read_json(path)["model_file"])
    return path


def find_latest(checkpoint_name: str) -> Optional[str]:
    """The highest-iteration complete checkpoint (.json with its model and state present), or None."""
    pattern = re.compile(re.escape(os.path.basename(checkpoint_name)) + r"_(\d+)\.json$")
    best = None
    for path in glob.glob(glob.escape(checkpoint_name) + "_*.json"):
        match = pattern.search(os.path.basename(path))
        if not match:
            continue
        try:
            record = read_json(path)
        except UserError:
            continue
        if not (os.path.exists(sibling(path, record["model_file"])) and os.path.exists(sibling(path, record["state_file"]))):
            continue
        iteration = int(match.group(1))
        if best is None or iteration > best[0]:
            best = (iteration, path)
    return best[1] if best else None
