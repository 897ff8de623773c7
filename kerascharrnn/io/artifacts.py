"""Where exported artifacts live and how to find their vocabulary (no TensorFlow here).

    export_dir/NAME/V/                  one version, the layout TensorFlow Serving watches
        saved_model.pb, variables/      signatures `generate` (= serving_default), `generate_top_p`, `step`
        assets.extra/vocab.json         the vocabulary (torch-rnn JSON), for clients of `step`
        assets.extra/export.json        model config, state tensor names, source checkpoint
        tflite/model.tflite             with --tflite: the `step` and `steps` signatures for LiteRT
        tflite/vocab.json               the vocabulary again, so tflite/ alone goes onto a device
"""

from __future__ import annotations

import json
import os
import re
from typing import Dict, Optional

from kerascharrnn import config as config_lib
from kerascharrnn.config import ModelConfig
from kerascharrnn.errors import UserError
from kerascharrnn.errors import setting as ref
from kerascharrnn.io import files
from kerascharrnn.vocab import Vocabulary

EXTRA_DIR = "assets.extra"  # TensorFlow Serving's place for files beside a SavedModel
VOCAB_FILE = "vocab.json"
INFO_FILE = "export.json"
TFLITE_DIR = "tflite"
TFLITE_FILE = "model.tflite"
QUANTIZE_MODES = ("none", "float16", "dynamic")
_TFLITE_MAGIC = b"TFL3"  # flatbuffer file identifier, bytes 4..8


def version_dirs(model_dir: str) -> Dict[int, str]:
    """The integer-named version directories under `model_dir` (what TensorFlow Serving serves)."""
    if not os.path.isdir(model_dir):
        return {}
    return {int(name): os.path.join(model_dir, name) for name in os.listdir(model_dir)
            if re.fullmatch(r"\d+", name) and os.path.isdir(os.path.join(model_dir, name))}


def next_version(model_dir: str) -> int:
    return max(version_dirs(model_dir), default=0) + 1


def default_model_name(checkpoint_path: str) -> str:
    """cv/shakespeare_5000.keras -> 'shakespeare'."""
    stem = os.path.splitext(os.path.basename(checkpoint_path))[0]
    return re.sub(r"_(\d+|best)$", "", stem) or "charrnn"


def check_model_name(name: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        raise UserError(f"{ref('model_name')} {name!r}: use letters, digits, '_', '-' or '.' (it becomes a directory"
                        " name)")
    return name


def resolve_saved_model(path: str) -> str:
    """A version directory, or a model directory holding versions (the highest is taken)."""
    if not os.path.exists(path):
        raise UserError(f"{path}: no such directory")
    if not os.path.isdir(path):
        raise UserError(f"{path}: not a directory ({ref('saved_model')} takes an exported SavedModel directory)")
    if os.path.isfile(os.path.join(path, "saved_model.pb")):
        return path
    versions = {v: d for v, d in version_dirs(path).items() if os.path.isfile(os.path.join(d, "saved_model.pb"))}
    if not versions:
        raise UserError(f"{path}: no saved_model.pb here nor in any integer version directory under it")
    return versions[max(versions)]


def saved_model_vocab(version_dir: str) -> Vocabulary:
    path = os.path.join(version_dir, EXTRA_DIR, VOCAB_FILE)
    if not os.path.isfile(path):
        raise UserError(f"{version_dir}: no {EXTRA_DIR}/{VOCAB_FILE}; was it written by bin/export?")
    return Vocabulary.load(path)


def saved_model_config(version_dir: str) -> Optional[ModelConfig]:
    """The architecture an export records in its export.json (None if it records none, or cannot be read:
    it only feeds the listings of bin/serve)."""
    try:
        with open(os.path.join(version_dir, EXTRA_DIR, INFO_FILE), encoding="utf-8") as f:
            values = json.load(f).get("model_config")
        return config_lib.from_dict(ModelConfig, values, INFO_FILE)
    except (OSError, ValueError, AttributeError, RecursionError, UserError):
        return None


def check_tflite_file(path: str) -> None:
    files.require_file(path, "TFLite model")
    with open(path, "rb") as f:
        head = f.read(8)
    if head[4:8] != _TFLITE_MAGIC:
        raise UserError(f"{path}: not a TFLite model (no TFL3 identifier)")


def resolve_tflite(path: str) -> str:
    """A .tflite file as given; or the model.tflite of a directory: an export's tflite/ directory, its version
    directory, or its model directory (the highest version that has one)."""
    if not os.path.isdir(path):
        return path  # (check_tflite_file says what is wrong with it)
    for candidate in (os.path.join(path, TFLITE_FILE), os.path.join(path, TFLITE_DIR, TFLITE_FILE)):
        if os.path.isfile(candidate):
            return candidate
    versions = {v: os.path.join(d, TFLITE_DIR, TFLITE_FILE) for v, d in version_dirs(path).items()
                if os.path.isfile(os.path.join(d, TFLITE_DIR, TFLITE_FILE))}
    if not versions:
        raise UserError(f"{path}: no {TFLITE_FILE} here, in {TFLITE_DIR}/, nor in any version directory under it"
                        " (bin/export --tflite writes one)")
    return versions[max(versions)]


def tflite_vocab(tflite_path: str) -> Vocabulary:
    """The vocab.json beside a .tflite file (bin/export writes it there)."""
    check_tflite_file(tflite_path)
    path = os.path.join(os.path.dirname(os.path.abspath(tflite_path)), VOCAB_FILE)
    if not os.path.isfile(path):
        raise UserError(f"{tflite_path}: no {VOCAB_FILE} beside it (bin/export writes one next to model.tflite)")
    return Vocabulary.load(path)


def _version_dir_of(tflite_path: str) -> Optional[str]:
    """The version directory of NAME/V/tflite/model.tflite (bin/export's layout), or None for a file elsewhere."""
    tflite_dir = os.path.dirname(os.path.abspath(tflite_path))
    version_dir = os.path.dirname(tflite_dir)
    if os.path.basename(tflite_dir) == TFLITE_DIR and re.fullmatch(r"\d+", os.path.basename(version_dir)):
        return version_dir
    return None


def tflite_model_name(tflite_path: str) -> str:
    """export/models/NAME/1/tflite/model.tflite -> 'NAME'; a file elsewhere: its name without .tflite."""
    version_dir = _version_dir_of(tflite_path)
    if version_dir is not None:
        return os.path.basename(os.path.dirname(version_dir))
    return os.path.splitext(os.path.basename(tflite_path))[0] or "charrnn"


def tflite_model_config(tflite_path: str) -> Optional[ModelConfig]:
    """The architecture the export.json of a .tflite's version directory records (None for a file elsewhere: it
    only feeds the listings of bin/serve)."""
    version_dir = _version_dir_of(tflite_path)
    return None if version_dir is None else saved_model_config(version_dir)
