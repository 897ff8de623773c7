"""Checkpoint files: `{name}_{iter}.keras` (model, vocabulary, model config), `.state.npz` (training
state), `.json` (the run's record).

Each file is written to a temporary name and renamed. The `.json` is written last and marks the
checkpoint complete: a `.keras` or `.state.npz` without its `.json` (a run killed mid-write) is ignored.
The checks on these files need no TensorFlow, so the CLIs can reject a bad file before importing it.
"""

from __future__ import annotations

import dataclasses
import functools
import glob
import hashlib
import json
import math
import os
import zipfile
from typing import Dict, List, Optional

import numpy as np

import kerascharrnn
from kerascharrnn import config as config_lib
from kerascharrnn import resources
from kerascharrnn.config import ModelConfig, TrainConfig
from kerascharrnn.errors import UserError
from kerascharrnn.io import files
from kerascharrnn.io.series import CheckpointPaths, Series
from kerascharrnn.vocab import Vocabulary

# Extra entries inside the .keras zip; keras.models.load_model ignores them. v0.1.0 wrote only the first.
VOCAB_ENTRY = "vocab.json"
MODEL_CONFIG_ENTRY = "model_config.json"
FORMAT_KEY = "kerascharrnn_checkpoint"
# The record's own layout version (its FORMAT_KEY), apart from the package's: raised only when a change would make
# an older release misread a record (fields added with a default, as fine_tuned_from, keep it). A record of a
# newer format is refused in one line rather than half understood.
RECORD_FORMAT = 1
_KERAS_ENTRIES = ("config.json", "model.weights.h5")
HISTORY_KEYS = ("train_loss_history", "val_loss_history", "val_loss_history_it", "forward_backward_times",
                "memory_usage", "learning_rate_history")


def save_keras(model, vocab: Vocabulary, model_config: ModelConfig, path: str) -> None:
    """model.save() plus the vocabulary and the model config as extra zip entries, atomically."""
    with files.atomic_path(path, suffix=".keras") as tmp:
        model.save(tmp)
        with zipfile.ZipFile(tmp, "a") as archive:
            archive.writestr(VOCAB_ENTRY, vocab.to_json())
            archive.writestr(MODEL_CONFIG_ENTRY, json.dumps(dataclasses.asdict(model_config)))


def save_state(path: str, arrays: Dict[str, np.ndarray]) -> None:
    with files.atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())


def load_state(path: str, max_bytes: Optional[int] = None) -> Dict[str, np.ndarray]:
    """The training state's arrays: numbers only, finite (optimizer moments, RNN state, counters). With
    `max_bytes` (resources.training_state_bytes of the model), a file that declares more is refused unread."""
    try:
        if max_bytes is not None:
            declared = _declared_state_bytes(path)
            if declared > max_bytes:
                raise UserError(f"{path}: the training state declares {declared:,} bytes; this model's holds at most"
                                f" {max_bytes:,}; refused unread")
        with np.load(path, allow_pickle=False) as data:  # never unpickle
            arrays = {k: data[k] for k in data.files}
    except FileNotFoundError:
        raise UserError(f"{path}: no such file (the checkpoint's training state)") from None
    except (OSError, ValueError, zipfile.BadZipFile, MemoryError):
        raise UserError(f"{path}: training state is unreadable (truncated or corrupt)") from None
    for name, value in arrays.items():
        if value.dtype.kind not in "biuf":
            raise UserError(f"{path}: training state {name!r} holds {value.dtype} values, not numbers")
        if value.dtype.kind == "f" and not np.all(np.isfinite(value)):
            raise UserError(f"{path}: training state {name!r} holds NaN or infinite values")
        if value.dtype.kind in "iu" and value.size and value.min() < 0 and name.endswith("iterations"):
            raise UserError(f"{path}: training state {name!r} is below zero")
    return arrays


_NPY_HEADERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


def _declared_state_bytes(path: str) -> int:
    """What a .state.npz's arrays take once loaded, from each member's declared size and its .npy header (the
    shape numpy would allocate), read without loading any array."""
    total = 0
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            total += info.file_size
            with archive.open(info) as member:
                read_header = _NPY_HEADERS.get(np.lib.format.read_magic(member))
                if read_header is None:
                    raise ValueError(f"{info.filename}: not a .npy array numpy writes")
                shape, _, dtype = read_header(member)
            total += math.prod(shape) * dtype.itemsize
    return total


@dataclasses.dataclass(frozen=True)
class CheckpointRecord:
    """A checkpoint's .json: what the run was and how far it got. Read with `read_record`.

    Attributes:
      path: where the .json is (not stored in it).
      iteration: iterations done.
      model_file, state_file: the .keras and .state.npz beside it (base names).
      model_config, train_config: the resolved configs of the run (train_config.fused is "on"/"off"
        in files written since v0.2; v0.1.0 files say "auto", the static rule they ran with).
      vocab: the vocabulary.
      history: the loss histories, and times/memory under --speed_benchmark/--memory_benchmark.
      best_val_loss: the lowest val loss so far, or None.
      elapsed_seconds: wall time spent training so far, resumes included (--max_minutes counts it).
      digests: SHA-256 of the .keras and .state.npz it was written with, and of the training data ({"model",
        "state", "data"}; empty in records before v0.3), so that a resume never pairs it with another
        checkpoint's files, nor, unknowingly, with other data.
      fine_tuned_from: for a run started with --init_from, its base model (`base_provenance`); None otherwise.
    """

    path: str
    iteration: int
    model_file: str
    state_file: str
    model_config: ModelConfig
    train_config: TrainConfig
    vocab: Vocabulary
    history: Dict[str, List[float]]
    best_val_loss: Optional[float] = None
    elapsed_seconds: float = 0.0
    digests: Dict[str, str] = dataclasses.field(default_factory=dict)
    fine_tuned_from: Optional[dict] = None

    @property
    def model_path(self) -> str:
        return sibling(self.path, self.model_file)

    @property
    def state_path(self) -> str:
        return sibling(self.path, self.state_file)

    def to_json_dict(self, num_train_batches: int) -> dict:
        return {
            **self.history,
            "iteration": self.iteration,
            "epoch": self.iteration / num_train_batches,
            "model_config": dataclasses.asdict(self.model_config),
            "train_config": dataclasses.asdict(self.train_config),
            "best_val_loss": self.best_val_loss,
            "elapsed_seconds": self.elapsed_seconds,
            FORMAT_KEY: RECORD_FORMAT,
            "model_file": self.model_file,
            "state_file": self.state_file,
            "vocab": self.vocab.to_json_dict(),
            **({"digests": self.digests} if self.digests else {}),
            **({"fine_tuned_from": self.fine_tuned_from} if self.fine_tuned_from else {}),
        }

    def check_files(self) -> None:
        """The record, its .keras and its .state.npz are one checkpoint: UserError if a file is missing or is
        not the one the record was written with (its digest, where the record has one)."""
        for kind, path in (("model", self.model_path), ("state", self.state_path)):
            files.require_file(path, "checkpoint file")
            if kind in self.digests and file_digest(path) != self.digests[kind]:
                raise UserError(f"{path} is not the file {self.path} was written with (from another iteration or"
                                " run?); the checkpoint's files disagree, so it cannot be resumed")


def file_digest(path: str) -> str:
    """SHA-256 of a regular file (UserError for a missing file, a directory, a pipe, ...)."""
    files.require_file(path)
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    except OSError as e:
        raise UserError(f"{path}: cannot be read: {e.strerror or e}") from None
    return digest.hexdigest()


def save_checkpoint(paths: CheckpointPaths, charrnn, state: Dict[str, np.ndarray], record: CheckpointRecord,
                    num_train_batches: int) -> None:
    """Writes the three files; the .json (which marks the checkpoint complete) goes last.

    Overwriting a checkpoint (`_best`) first removes its .json: until the new one lands, the set is
    incomplete and ignored, never a new model paired with an old record.
    """
    if os.path.exists(paths.json):
        os.remove(paths.json)
    charrnn.save(paths.model)
    save_state(paths.state, state)
    record = dataclasses.replace(record, path=paths.json, model_file=os.path.basename(paths.model),
                                 state_file=os.path.basename(paths.state),
                                 digests={**record.digests, "model": file_digest(paths.model),
                                          "state": file_digest(paths.state)})
    files.write_text_atomic(paths.json, json.dumps(record.to_json_dict(num_train_batches), indent=1))


@dataclasses.dataclass(frozen=True)
class KerasFile:
    """What a `.keras` checkpoint holds besides its weights, read without TensorFlow.

    Attributes:
      path: the file.
      vocab: its vocabulary (checked against the sizes of the model's input and output).
      model_config: the stored ModelConfig; None for v0.1.0 files, which store none.
    """

    path: str
    vocab: Vocabulary
    model_config: Optional[ModelConfig]


# One KerasFile per file version: the tools check a checkpoint before TensorFlow loads and then load it,
# and checking means reading the whole archive (every member's CRC).
_KERAS_FILES: Dict[tuple, KerasFile] = {}


def read_keras_file(path: str) -> KerasFile:
    """Checks a .keras checkpoint (a zip with Keras's entries, intact, with our vocabulary) and reads what
    it holds besides the weights; opens the archive once per version of the file. UserError otherwise."""
    files.require_file(path, ".keras checkpoint")
    status = os.stat(path)
    key = (os.path.abspath(path), status.st_ino, status.st_mtime_ns, status.st_size)
    if key not in _KERAS_FILES:
        _KERAS_FILES.clear()  # a tool reads one or two checkpoints; never hold on to old ones
        _KERAS_FILES[key] = _read_keras_file(path)
    return dataclasses.replace(_KERAS_FILES[key], path=path)


# The members a checkpoint holds (Keras's, then ours), and how large each small one can be: what a file
# declares is checked before anything is read or expanded (a zip of a few MB can expand to GBs).
_MEMBER_LIMITS = {"metadata.json": 1 << 20, "config.json": 16 << 20, VOCAB_ENTRY: 64 << 20,
                  MODEL_CONFIG_ENTRY: 1 << 20}
_WEIGHTS = "model.weights.h5"


def _check_members(infos: Dict[str, zipfile.ZipInfo], path: str) -> None:
    for name, info in infos.items():
        if name not in _MEMBER_LIMITS and name != _WEIGHTS:
            raise UserError(f"{path}: holds a member {name[:100]!r} that no checkpoint has; refused unread")
        if name in _MEMBER_LIMITS and info.file_size > _MEMBER_LIMITS[name]:
            raise UserError(f"{path}: its {name} declares {info.file_size:,} bytes, more than a checkpoint's"
                            f" {name} can be ({_MEMBER_LIMITS[name]:,}); refused unread")
        if info.compress_size > info.file_size + (info.file_size >> 6) + 1024:  # deflate never grows data so much
            raise UserError(f"{path}: its {name} declares {info.file_size:,} bytes and holds {info.compress_size:,}"
                            " compressed: its sizes are false; refused unread")


def _read_member(archive: zipfile.ZipFile, name: str) -> bytes:
    """A small member, never more than its limit, whatever its header claims."""
    with archive.open(name) as member:
        data = member.read(_MEMBER_LIMITS[name] + 1)
    if len(data) > _MEMBER_LIMITS[name]:
        raise UserError(f"{archive.filename}: its {name} holds more than a checkpoint's can ({_MEMBER_LIMITS[name]:,}"
                        " bytes)")
    return data


def _weights_limit(model_config: ModelConfig) -> int:
    """The most bytes the weights of a model of this config can take, with room for HDF5's own."""
    return 2 * 4 * resources.parameter_count(model_config) + (1 << 20)


def _read_keras_file(path: str) -> KerasFile:
    try:
        with zipfile.ZipFile(path) as archive:
            infos = {info.filename: info for info in archive.infolist()}
            names = set(infos)
            _check_members(infos, path)
            # the small entries first (each read checks its own CRC), then the weights' declared size against
            # the config, and only then the whole archive's CRCs (which reads the weights)
            try:
                entries = {name: _read_member(archive, name) for name in ("config.json", VOCAB_ENTRY,
                                                                          MODEL_CONFIG_ENTRY) if name in names}
            except zipfile.BadZipFile as e:  # a member that fails its CRC
                raise UserError(f"{path}: corrupt .keras checkpoint ({e})") from None
            model_config = _stored_config(entries, path)
            if model_config is not None and _WEIGHTS in infos and \
                    infos[_WEIGHTS].file_size > _weights_limit(model_config):
                raise UserError(f"{path}: its weights declare {infos[_WEIGHTS].file_size:,} bytes; a model of its"
                                f" config holds at most {_weights_limit(model_config):,}; refused unread")
            bad = archive.testzip()
    except zipfile.BadZipFile:
        raise UserError(f"{path}: not a .keras checkpoint (not a zip archive; truncated or another format?)") \
            from None
    except (OSError, EOFError, zipfile.LargeZipFile):
        raise UserError(f"{path}: corrupt .keras checkpoint") from None
    if bad is not None:
        raise UserError(f"{path}: corrupt .keras checkpoint (entry {bad} fails its CRC)")
    missing = [n for n in _KERAS_ENTRIES if n not in names]
    if missing:
        raise UserError(f"{path}: not a Keras model file (missing {', '.join(missing)})")
    if VOCAB_ENTRY not in names:
        raise UserError(f"{path}: a Keras model without a vocabulary; not a kerascharrnn checkpoint")

    def entry(name):
        try:
            return json.loads(entries[name].decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):  # (nested beyond any real config)
            raise UserError(f"{path}: its {name} entry is not JSON") from None

    vocab = Vocabulary.from_json_dict(entry(VOCAB_ENTRY), source=f"{path}:{VOCAB_ENTRY}")
    layers = entry("config.json")
    for field, size in _model_io_sizes(layers, path).items():
        if size != vocab.size:
            layer = "Embedding input_dim (input)" if field == "input_dim" else "Dense units (output)"
            raise UserError(f"{path}: its {VOCAB_ENTRY} has {vocab.size} tokens but the model's {layer} is {size}")
    if model_config is not None:
        if model_config.vocab_size != vocab.size:
            raise UserError(f"{path}: its {MODEL_CONFIG_ENTRY} says vocab_size {model_config.vocab_size} and its"
                            f" {VOCAB_ENTRY} has {vocab.size} tokens")
        _check_layers_agree(layers, model_config, path)
    return KerasFile(path, vocab, model_config)


def _stored_config(entries: Dict[str, bytes], path: str) -> Optional[ModelConfig]:
    if MODEL_CONFIG_ENTRY not in entries:
        return None  # v0.1.0 files store none
    try:
        values = json.loads(entries[MODEL_CONFIG_ENTRY].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise UserError(f"{path}: its {MODEL_CONFIG_ENTRY} entry is not JSON") from None
    return config_lib.from_dict(ModelConfig, values, f"{path}:{MODEL_CONFIG_ENTRY}")


# config.json's layer sizes that model_config.json also states: Keras builds from the one, the checks read the
# other, so they must agree (a 5,000,000-wide layer declared in one alone would be built before any error)
_LAYER_SIZES = {"Embedding": {"output_dim": "wordvec_size"},
                **{kind.layer: {"units": "rnn_size"} for kind in config_lib.RECURRENT_KINDS.values()},
                "CopyAttention": {"memory_size": "copy_memory", "num_heads": "copy_heads",
                                  "head_size": "copy_head_size"}}


# The layer classes a checkpoint's model is built of (models/stack.py), and the largest batch a saved model
# may declare (bin/convert's cap): Keras allocates each stateful layer's (batch, H) state as it builds.
_LAYER_CLASSES = {"InputLayer", "Embedding", "Dropout", "BatchNormalization", "CopyAttention", "Dense",
                  *(kind.layer for kind in config_lib.RECURRENT_KINDS.values())}
_MAX_SAVED_BATCH = 65536
MAX_ITERATION = 2**53  # far past any run (a billion years at a step a millisecond), and exact in a float64


def _check_layers_agree(values: dict, model_config: ModelConfig, path: str) -> None:
    recurrent = 0
    for layer in values["config"]["layers"]:
        kind = layer.get("class_name") if isinstance(layer, dict) else None
        if kind not in _LAYER_CLASSES:
            raise UserError(f"{path}: its config.json holds a {str(kind)[:60]} layer, which no checkpoint has")
        if kind == "InputLayer":
            shape = (layer.get("config") or {}).get("batch_shape") or [None]
            if not isinstance(shape, list) or (shape[0] is not None and not (
                    isinstance(shape[0], int) and 0 < shape[0] <= _MAX_SAVED_BATCH)):
                raise UserError(f"{path}: its config.json declares an input of shape {str(shape)[:60]}; a checkpoint's"
                                f" batch is at most {_MAX_SAVED_BATCH}")
        config = layer.get("config") if isinstance(layer, dict) else None
        sizes = _LAYER_SIZES.get(layer.get("class_name") if isinstance(layer, dict) else None, {})
        for key, field in sizes.items():
            if not isinstance(config, dict) or config.get(key) != getattr(model_config, field):
                raise UserError(f"{path}: its config.json and {MODEL_CONFIG_ENTRY} disagree: a {layer['class_name']}"
                                f" layer's {key} is {config.get(key) if isinstance(config, dict) else None!r}, the"
                                f" model's {field} {getattr(model_config, field)}")
        recurrent += layer.get("class_name") in ("LSTM", "GRU", "SimpleRNN") if isinstance(layer, dict) else 0
    if recurrent != model_config.num_layers:
        raise UserError(f"{path}: its config.json has {recurrent} recurrent layers and {MODEL_CONFIG_ENTRY} says"
                        f" num_layers {model_config.num_layers}")


def _model_io_sizes(values, path: str) -> Dict[str, int]:
    """From a .keras file's own config.json: the Embedding's input_dim and the last Dense layer's units,
    i.e. the vocabulary sizes the model's input and output were built for (those found)."""
    layers = values.get("config", {}).get("layers") if isinstance(values, dict) and \
        isinstance(values.get("config"), dict) else None
    if not isinstance(layers, list):
        raise UserError(f"{path}: its config.json has no layer list; not a Keras functional model")
    sizes = {}
    for layer in layers:
        config = layer.get("config") if isinstance(layer, dict) else None
        if not isinstance(config, dict):
            continue
        if layer.get("class_name") == "Embedding" and "input_dim" not in sizes:
            sizes["input_dim"] = config.get("input_dim")
        elif layer.get("class_name") == "Dense":
            sizes["units"] = config.get("units")
    for field, value in sizes.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UserError(f"{path}: config.json: the {'Embedding' if field == 'input_dim' else 'Dense'} layer's"
                            f" {field} is {value!r}, not a positive integer")
    return sizes


def is_t7(path: str) -> bool:
    """A torch-rnn checkpoint (train.lua's .t7), read through kerascharrnn.torch_checkpoint."""
    return path.lower().endswith(".t7")


def read_t7(path: str):
    """torch_checkpoint.read_t7, parsed once per file version: the CLIs check a .t7's vocabulary before
    TensorFlow loads and then load the weights, and a torch-rnn model can be hundreds of MB."""
    from kerascharrnn.io import torch_checkpoint

    files.require_file(path, "torch-rnn .t7 checkpoint")
    status = os.stat(path)
    return _read_t7_version(os.path.abspath(path), status.st_mtime_ns, status.st_size, torch_checkpoint.read_t7)


@functools.lru_cache(maxsize=2)
def _read_t7_version(path, mtime_ns, size, reader):
    del mtime_ns, size  # part of the cache key only
    return reader(path)


def read_vocab(path: str) -> Vocabulary:
    """The vocabulary of a checkpoint: a .keras file's (see read_keras_file), or a torch-rnn .t7's."""
    return read_t7(path).vocab if is_t7(path) else read_keras_file(path).vocab


def stored_model_config(path: str) -> Optional[ModelConfig]:
    """The architecture a checkpoint file records (.keras or .t7), read without TensorFlow; None for
    v0.1.0 .keras files, which record none."""
    return read_t7(path).model_config if is_t7(path) else read_keras_file(path).model_config


def check_finite_weights(model, path: str) -> None:
    """A weight holding NaN or Inf (a run that diverged, a damaged file) would sample, evaluate, export and
    serve garbage without a word: refused, naming the layer, as torch_checkpoint refuses such a .t7."""
    for variable in model.weights:
        value = np.asarray(variable.numpy() if hasattr(variable, "numpy") else variable)
        if value.dtype.kind == "f" and not np.all(np.isfinite(value)):
            bad = int(np.size(value) - np.count_nonzero(np.isfinite(value)))
            raise UserError(f"{path}: weight {variable.path} holds {bad} NaN or infinite values (the training run"
                            " diverged, or the file is damaged); not loaded")


def _read_json_object(path: str) -> dict:
    files.require_file(path, "checkpoint .json")
    try:
        with open(path, "rb") as f:
            record = json.loads(f.read().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise UserError(f"{path}: not JSON (truncated or another kind of file)") from None
    except OSError as e:
        raise UserError(f"{path}: cannot be read: {e.strerror or e}") from None
    if not isinstance(record, dict) or FORMAT_KEY not in record:
        raise UserError(f"{path}: JSON, but not a kerascharrnn checkpoint")
    record_format = record[FORMAT_KEY]
    if isinstance(record_format, bool) or not isinstance(record_format, int) or record_format < 1:
        raise UserError(f"{path}: its {FORMAT_KEY!r} field must be a record format number (1, 2, ...)")
    if record_format > RECORD_FORMAT:
        raise UserError(f"{path}: written by a newer kerascharrnn (record format {record_format}; this one,"
                        f" {kerascharrnn.__version__}, reads up to {RECORD_FORMAT}): upgrade to read it")
    return record


def _field(values: dict, key: str, kinds, path: str, default=None):
    """values[key], checked to be of one of `kinds` (bool never passes for a number)."""
    if key not in values:
        if default is not None:
            return default
        raise UserError(f"{path}: checkpoint JSON lacks {key!r}")
    value = values[key]
    if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
        raise UserError(f"{path}: checkpoint JSON field {key!r} has the wrong type ({type(value).__name__})")
    return value


def _file_name(values: dict, key: str, path: str) -> str:
    name = _field(values, key, (str,), path)
    if not name or os.path.basename(name) != name or name in (".", ".."):
        raise UserError(f"{path}: checkpoint JSON field {key!r} must be a file name beside it, got {name!r}")
    return name


def read_record(path: str) -> CheckpointRecord:
    """Reads and checks a checkpoint .json (ours from any release); every field is type-checked."""
    values = _read_json_object(path)
    history = {}
    for key in HISTORY_KEYS:
        series = _field(values, key, (list,), path, default=[])
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in series):
            raise UserError(f"{path}: checkpoint JSON field {key!r} must be a list of numbers")
        history[key] = [float(v) if key != "val_loss_history_it" else int(v) for v in series]
    losses = history["train_loss_history"]
    if losses and not any(math.isfinite(v) for v in losses):
        raise UserError(f"{path}: checkpoint JSON field 'train_loss_history' holds no finite loss ({len(losses)}"
                        " NaN or infinite values): the run it records diverged, or the record is damaged; resume an"
                        " earlier checkpoint of the series")
    if len(history["val_loss_history"]) != len(history["val_loss_history_it"]):
        raise UserError(f"{path}: checkpoint JSON fields 'val_loss_history' and 'val_loss_history_it' differ in"
                        f" length ({len(history['val_loss_history'])} and {len(history['val_loss_history_it'])})")
    best = values.get("best_val_loss")
    # (a diverging run records an infinite loss, and the histories keep what happened: NaN and Infinity stay
    # there; but no loss is below zero, nor NaN at best)
    if best is not None and (isinstance(best, bool) or not isinstance(best, (int, float)) or math.isnan(best)
                             or best < 0):
        raise UserError(f"{path}: checkpoint JSON field 'best_val_loss' must be a number >= 0 or null")
    elapsed = _field(values, "elapsed_seconds", (int, float), path, default=0.0)
    if not math.isfinite(elapsed) or elapsed < 0:
        raise UserError(f"{path}: checkpoint JSON field 'elapsed_seconds' must be a number >= 0")
    iteration = _field(values, "iteration", (int,), path)
    if not 0 <= iteration <= MAX_ITERATION:
        raise UserError(f"{path}: checkpoint JSON field 'iteration' is {iteration:.3g}: no run gets there (0 to"
                        f" {MAX_ITERATION:,}); the record is damaged")
    if any(not 0 <= it <= iteration for it in history["val_loss_history_it"]):
        raise UserError(f"{path}: checkpoint JSON field 'val_loss_history_it' holds an iteration outside"
                        f" 0..{iteration}")
    digests = _field(values, "digests", (dict,), path, default={})
    if not all(k in ("model", "state", "data") and isinstance(v, str) for k, v in digests.items()):
        raise UserError(f"{path}: checkpoint JSON field 'digests' must map 'model', 'state' and 'data' to SHA-256"
                        " texts")
    train_values = dict(_field(values, "train_config", (dict,), path))
    model_values = _field(values, "model_config", (dict,), path)
    if "fused" not in train_values:
        # v0.1.0 recorded no choice: its "auto" trained LSTMs by the size rule that "auto" still applies
        # without a calibration (calibration.py), and GRU / SimpleRNN layers always through Keras
        train_values["fused"] = "auto" if model_values.get("model_type", "lstm") == "lstm" else "off"
    return CheckpointRecord(
        path=path,
        iteration=iteration,
        model_file=_file_name(values, "model_file", path),
        state_file=_file_name(values, "state_file", path),
        model_config=config_lib.from_dict(ModelConfig, model_values, f"{path}: model_config"),
        train_config=config_lib.from_dict(TrainConfig, train_values, f"{path}: train_config"),
        vocab=Vocabulary.from_json_dict(_field(values, "vocab", (dict,), path), source=f"{path}: vocab"),
        history=history,
        best_val_loss=best,
        elapsed_seconds=float(elapsed),
        digests=dict(digests),
        fine_tuned_from=_provenance_field(values, path),
    )


# What a record keeps of the base model a fine-tune started from (JSON types; the tokens as the vocabulary's
# JSON writes them).
PROVENANCE_FIELDS = {"path": str, "sha256": str, "iteration": int, "mapped": int, "added": list, "dropped": list}


def base_provenance(path: str, iteration: int, mapped: int, added: list, dropped: list) -> dict:
    """The `fine_tuned_from` of a run started from the base model file `path` (a .keras or a .t7)."""
    return {"path": os.path.abspath(path), "sha256": file_digest(path), "iteration": iteration, "mapped": mapped,
            "added": list(added), "dropped": list(dropped)}


def _provenance_field(values: dict, path: str) -> Optional[dict]:
    base = _field(values, "fine_tuned_from", (dict,), path, default={})
    if not base:
        return None
    if set(base) != set(PROVENANCE_FIELDS) or not all(
            isinstance(base[k], kind) and not isinstance(base[k], bool) for k, kind in PROVENANCE_FIELDS.items()):
        raise UserError(f"{path}: checkpoint JSON field 'fine_tuned_from' must hold "
                        + ", ".join(f"{k} ({kind.__name__})" for k, kind in PROVENANCE_FIELDS.items()))
    return dict(base)


def sibling(json_path: str, name: str) -> str:
    return os.path.join(os.path.dirname(os.path.abspath(json_path)), name)


def record_path_for(model_path: str) -> str:
    """The record (.json) a checkpoint's model file (.keras) has beside it."""
    return os.path.splitext(model_path)[0] + ".json"


def model_path_for(path: str) -> str:
    """--checkpoint may name the .keras file or its .json (or a torch-rnn .t7); returns the model file."""
    if path.endswith(".json"):
        return sibling(path, _file_name(_read_json_object(path), "model_file", path))
    return path


def find_latest(checkpoint_name: str) -> Optional[str]:
    """The highest-iteration complete checkpoint (.json with its model and state present), or None."""
    series = Series(checkpoint_name)
    best = None
    for path in glob.glob(series.json_glob()):
        iteration = series.iteration_of_record(path)
        if iteration is None or (best is not None and iteration <= best[0]):
            continue
        try:
            record = read_record(path)
        except UserError:
            continue
        if os.path.exists(record.model_path) and os.path.exists(record.state_path):
            best = (iteration, path)
    return best[1] if best else None
