"""Reads torch-rnn checkpoints (the .t7 files train.lua writes) without Torch, as Keras weights.

train.lua saves `torch.save(name .. '.t7', checkpoint)` with checkpoint a Lua table
{model = nn.LanguageModel, opt = its flags, i = iteration, train_loss_history, val_loss_history,
val_loss_history_it, forward_backward_times, memory_usage}. The model holds the vocabulary
(`idx_to_token`, byte strings) and `net`, an nn.Sequential:

    LookupTable(V, D)
    per layer: nn.LSTM | nn.VanillaRNN, [View, BatchNormalization(H), View], [Dropout(p)]
    View, Linear(H -> V), View

nn.LSTM keeps `weight` (D+H, 4H) with rows [Wx; Wh] and `bias` (4H), gates in the order i, f, o, g;
Keras's LSTM wants kernel (D, 4H), recurrent_kernel (H, 4H), bias (4H) in the order i, f, c(=g), o.
nn.VanillaRNN: weight (D+H, H), h = tanh(x Wx + h Wh + b), which is Keras's SimpleRNN.

The file's object tree comes from io/torch_file.py; this module finds the model in it, checks it and
converts its weights. Only numpy (and torchfile, through torch_file): no TensorFlow.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from kerascharrnn.config import RECURRENT_KINDS, ModelConfig
from kerascharrnn.errors import UserError
from kerascharrnn.io import torch_file
from kerascharrnn.vocab import BYTES, Vocabulary

# keras.layers.BatchNormalization's default epsilon, which build_model keeps. torch's nn.BatchNormalization
# adds its own `eps` (1e-5 by default); the conversion folds the difference into the weights. A caller
# holding the built model can pass `layer.epsilon` instead.
KERAS_BN_EPSILON = 1e-3
TORCH_BN_EPSILON = 1e-5  # nn.BatchNormalization's default, for modules that do not store theirs

LANGUAGE_MODEL = "nn.LanguageModel"
_RECURRENT = {"nn.LSTM": "lstm", "nn.VanillaRNN": "rnn"}  # torch-rnn's only two model types
_NET_MODULES = ("nn.LookupTable", "nn.LSTM", "nn.VanillaRNN", "nn.View", "nn.BatchNormalization",
                "nn.Dropout", "nn.Linear")


@dataclasses.dataclass(frozen=True, eq=False)
class TorchRNNCheckpoint:
    """A torch-rnn checkpoint converted for `kerascharrnn.model.build_model(model_config, N)`.

    Attributes:
      path: the file read.
      model_config: the architecture.
      vocab: the tokens, model id i = torch-rnn id i + 1.
      weights: float32 arrays in the order `keras_model.get_weights()` lists them.
      weight_names: a "layer/variable" name for each array (build_model's names), for messages.
      iteration: train.lua's `i` when the file was written (None for a bare model).
      train_loss_history, val_loss_history, val_loss_history_it: train.lua's loss records.
      options: train.lua's command-line options (`opt`), as plain Python values.
      extras: any other entries of the checkpoint table (forward_backward_times, memory_usage, ...).
    """

    path: str
    model_config: ModelConfig
    vocab: Vocabulary
    weights: List[np.ndarray]
    weight_names: Tuple[str, ...]
    iteration: Optional[int] = None
    train_loss_history: Tuple[float, ...] = ()
    val_loss_history: Tuple[float, ...] = ()
    val_loss_history_it: Tuple[int, ...] = ()
    options: Dict[str, Any] = dataclasses.field(default_factory=dict)
    extras: Dict[str, Any] = dataclasses.field(default_factory=dict)


def read_t7(path: str, keras_bn_epsilon: float = KERAS_BN_EPSILON) -> TorchRNNCheckpoint:
    """Reads a torch-rnn .t7 checkpoint. Raises UserError (one line naming the file) for anything else.

    Args:
      path: the .t7 file train.lua wrote.
      keras_bn_epsilon: the epsilon of the Keras BatchNormalization layers the weights are for.
    """
    root = torch_file.load(path)
    table, model = _find_model(root, path)
    converted = _convert_model(model, path, keras_bn_epsilon)
    info = _checkpoint_info(table, path)
    return TorchRNNCheckpoint(path=path, **converted, **info)


# --- the object tree -----------------------------------------------------------------------------------

def _class_name(obj) -> Optional[str]:
    """The torch class of a torch object (TorchObject), else None."""
    typename = getattr(type(obj), "torch_typename", None)
    if typename is None:
        return None
    name = obj.torch_typename()
    return name.decode("utf-8", "replace") if isinstance(name, bytes) else str(name)


def _fields(obj) -> dict:
    """A torch object's fields (its Lua table); {} if it has none."""
    fields = getattr(obj, "_obj", None)
    return fields if isinstance(fields, dict) else {}


def _get(table: dict, name: str, default=None):
    """table[name] whether torchfile gave the keys as bytes (its default) or str (utf8_decode_strings)."""
    for key in (name.encode("utf-8"), name):
        if key in table:
            return table[key]
    return default


def _describe(obj) -> str:
    name = _class_name(obj)
    if name:
        return f"a {name}"
    if isinstance(obj, dict):
        return "a table"
    if isinstance(obj, np.ndarray):
        return "a tensor"
    if isinstance(obj, (bytes, str)):
        return "a string"
    if obj is None:
        return "nil"
    if isinstance(obj, bool):
        return "a boolean"
    if isinstance(obj, (int, float)):
        return f"a number ({obj!r})"
    return f"a {type(obj).__name__}"


def _as_list(value, what: str, path: str) -> list:
    """A Lua sequence (a table with keys 1..n, or a list) as a Python list."""
    if isinstance(value, (list, tuple)):
        return list(value)
    if isinstance(value, dict):
        keys = list(value)
        if all(isinstance(k, int) and not isinstance(k, bool) for k in keys) and sorted(keys) == list(
                range(1, len(keys) + 1)):
            return [value[k] for k in range(1, len(keys) + 1)]
    raise UserError(f"{path}: {what} is {_describe(value)}, not a list (a table with keys 1..n)")


def _text(value) -> Optional[str]:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value if isinstance(value, str) else None


def _find_model(root, path: str):
    """(checkpoint table or {}, the nn.LanguageModel)."""
    want = "not a torch-rnn checkpoint (want a table with a 'model' that is a nn.LanguageModel)"
    if _class_name(root) == LANGUAGE_MODEL:  # a bare model, saved by hand
        return {}, root
    if not isinstance(root, dict):
        raise UserError(f"{path}: holds {_describe(root)}, {want}")
    model = _get(root, "model")
    if model is None:
        keys = ", ".join(sorted(str(_text(k) or k) for k in root)[:8]) or "none"
        raise UserError(f"{path}: holds a table without 'model' (keys: {keys}), {want}")
    if _class_name(model) != LANGUAGE_MODEL:
        raise UserError(f"{path}: 'model' holds {_describe(model)}, not a torch-rnn nn.LanguageModel")
    return root, model


def _plain(value, depth: int = 0):
    """Lua values as plain Python: str for strings, dicts with str keys, lists for sequences."""
    if depth > 20:
        return None
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (list, tuple)):
        return [_plain(v, depth + 1) for v in value]
    if isinstance(value, dict):
        keys = list(value)  # a sequence (keys 1..n; an empty table too, as torchfile's own heuristic has it)
        if all(isinstance(k, int) and not isinstance(k, bool) for k in keys) and sorted(keys) == list(
                range(1, len(keys) + 1)):
            return [_plain(value[k], depth + 1) for k in range(1, len(keys) + 1)]
        return {str(_plain(k, depth + 1)): _plain(v, depth + 1) for k, v in value.items()}
    if _class_name(value):
        return f"<{_class_name(value)}>"
    return value


def _numbers(value, kind, what: str, path: str) -> tuple:
    if value is None:
        return ()
    items = _plain(value)
    if not isinstance(items, list) or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in items):
        raise UserError(f"{path}: '{what}' is not a list of numbers")
    return tuple(kind(v) for v in items)


def _checkpoint_info(table: dict, path: str) -> dict:
    iteration = _get(table, "i")
    if iteration is not None and not (isinstance(iteration, int) and not isinstance(iteration, bool)):
        raise UserError(f"{path}: the iteration 'i' is {_describe(iteration)}, not an integer")
    known = ("model", "i", "opt", "train_loss_history", "val_loss_history", "val_loss_history_it")
    options = _plain(_get(table, "opt", {}))
    return dict(
        iteration=iteration,
        train_loss_history=_numbers(_get(table, "train_loss_history"), float, "train_loss_history", path),
        val_loss_history=_numbers(_get(table, "val_loss_history"), float, "val_loss_history", path),
        val_loss_history_it=_numbers(_get(table, "val_loss_history_it"), int, "val_loss_history_it", path),
        options=options if isinstance(options, dict) else {},
        extras={str(_plain(k)): _plain(v) for k, v in table.items() if _text(k) not in known},
    )


# --- the model -----------------------------------------------------------------------------------------

def _tensor(fields: dict, name: str, what: str, path: str, shape=None, required=True) -> Optional[np.ndarray]:
    """A float parameter as a float32 copy, checked for shape and finiteness."""
    value = _get(fields, name)
    if value is None and not required:
        return None
    if not isinstance(value, np.ndarray) or value.dtype.kind != "f":
        raise UserError(f"{path}: {what} '{name}' is {_describe(value)}, not a float tensor")
    if value.size == 0 and required:
        raise UserError(f"{path}: {what} '{name}' is empty")
    if shape is not None and tuple(value.shape) != tuple(shape):
        raise UserError(f"{path}: inconsistent shapes: {what} '{name}' is {_shape(value.shape)},"
                        f" expected {_shape(shape)}")
    if not np.all(np.isfinite(value)):
        raise UserError(f"{path}: {what} '{name}' holds NaN or infinite values (the training run diverged?)")
    return np.array(value, dtype=np.float32)


def _shape(shape) -> str:
    return "x".join(str(int(n)) for n in shape) if len(shape) else "a scalar"


def _number(fields: dict, name: str, what: str, path: str, default=None):
    value = _get(fields, name, default)
    if isinstance(value, bool):
        return int(value)
    if value is not None and not isinstance(value, (int, float)):
        raise UserError(f"{path}: {what} '{name}' is {_describe(value)}, not a number")
    return value


def _ifog_to_ifco(a: np.ndarray, hidden: int) -> np.ndarray:
    """torch-rnn's gate blocks (i, f, o, g) along the last axis -> Keras's (i, f, c, o), c being g."""
    i, f, o, g = (a[..., k * hidden:(k + 1) * hidden] for k in range(4))
    return np.concatenate([i, f, g, o], axis=-1)


def _convert_bn(fields: dict, version: int, hidden: int, what: str, path: str, keras_eps: float):
    """nn.BatchNormalization (evaluation mode) -> Keras gamma, beta, moving_mean, moving_variance.

    torch: y = w (x - mean) / sqrt(var + eps_t) + b;  Keras: y = gamma (x - mean) / sqrt(var' + eps_k) + beta.
    var' = var + eps_t - eps_k keeps gamma = w where that is >= 0;
    else var' = 0 and gamma = w sqrt(eps_k / (var + eps_t)).
    """
    eps = float(_number(fields, "eps", what, path, TORCH_BN_EPSILON))
    mean = _tensor(fields, "running_mean", what, path, (hidden,)).astype(np.float64)
    var = _tensor(fields, "running_var", what, path, (hidden,), required=False)
    if var is None:
        running_std = _tensor(fields, "running_std", what, path, (hidden,), required=False)
        if running_std is None or version >= 2:
            raise UserError(f"{path}: {what} has no 'running_var'")
        # nn.BatchNormalization:read for files of version < 2: running_var = running_std^-2 - eps
        with np.errstate(divide="ignore"):
            var = running_std.astype(np.float64) ** -2 - eps
    var = var.astype(np.float64)
    if not np.all(var + eps > 0):
        raise UserError(f"{path}: {what} has running variances <= -eps ({eps:g}): not a valid BatchNormalization")
    affine = _get(fields, "affine")
    weight = _tensor(fields, "weight", what, path, (hidden,), required=False)
    bias = _tensor(fields, "bias", what, path, (hidden,), required=False)
    if affine is False or weight is None:
        weight, bias = np.ones(hidden), np.zeros(hidden)
    elif bias is None:
        bias = np.zeros(hidden)
    moving_var = var + eps - keras_eps
    gamma = weight.astype(np.float64)
    small = moving_var < 0
    gamma = np.where(small, gamma * np.sqrt(keras_eps / (var + eps)), gamma)
    moving_var = np.where(small, 0.0, moving_var)
    return [np.float32(gamma), np.float32(bias), np.float32(mean), np.float32(moving_var)]


def _vocabulary(model_fields: dict, path: str) -> Vocabulary:
    raw = _as_list(_get(model_fields, "idx_to_token"), "model.idx_to_token", path)
    if not raw:
        raise UserError(f"{path}: model.idx_to_token is empty")
    tokens = []
    for i, token in enumerate(raw, start=1):
        if isinstance(token, str):
            token = token.encode("utf-8")
        if not isinstance(token, bytes):
            raise UserError(f"{path}: model.idx_to_token[{i}] is {_describe(token)}, not a string")
        tokens.append(token)

    def one_char(token: bytes) -> Optional[str]:
        try:
            text = token.decode("utf-8")
        except UnicodeDecodeError:
            return None
        return text if len(text) == 1 else None

    def one_byte(token: bytes) -> Optional[int]:
        if len(token) == 1:
            return token[0]
        # torch-rnn's preprocess.py --encoding bytes writes bytes above 127 as "[195]"
        match = re.fullmatch(rb"\[(\d+)\]", token)
        return int(match.group(1)) if match and 127 < int(match.group(1)) < 256 else None

    chars = [one_char(t) for t in tokens]
    if all(c is not None for c in chars):
        return Vocabulary(tuple(chars), "utf-8")
    values = [one_byte(t) for t in tokens]
    if all(v is not None for v in values):
        return Vocabulary(tuple(values), BYTES)
    neither = [i for i, (c, v) in enumerate(zip(chars, values)) if c is None and v is None]
    if neither:
        raise UserError(f"{path}: model.idx_to_token[{neither[0] + 1}] = {tokens[neither[0]]!r} is neither one"
                        " UTF-8 character nor one byte")
    multi = values.index(None)
    lone = chars.index(None)
    raise UserError(f"{path}: model.idx_to_token mixes multi-byte characters (idx_to_token[{multi + 1}] ="
                    f" {tokens[multi]!r}) with single bytes that are not UTF-8 characters"
                    f" (idx_to_token[{lone + 1}] = {tokens[lone]!r})")


def _convert_model(model, path: str, keras_eps: float) -> dict:
    fields = _fields(model)
    net = _get(fields, "net")
    if _class_name(net) != "nn.Sequential":
        raise UserError(f"{path}: model.net is {_describe(net)}, not the nn.Sequential torch-rnn builds")
    modules = _as_list(_get(_fields(net), "modules"), "model.net.modules", path)
    names = [_class_name(m) for m in modules]
    for index, name in enumerate(names, start=1):
        if name not in _NET_MODULES:
            raise UserError(f"{path}: model.net module {index} is {_describe(modules[index - 1])}, which torch-rnn's"
                            f" LanguageModel never holds (it has {', '.join(_NET_MODULES)})")

    model_type_value = _get(fields, "model_type")
    model_type = _text(model_type_value)
    if model_type not in ("lstm", "rnn"):
        shown = repr(model_type) if model_type is not None else _describe(model_type_value)
        raise UserError(f"{path}: model_type {shown} is not supported: torch-rnn has only 'lstm' and 'rnn'")

    # The layer sequence, Views left out: LookupTable, (RNN [BN] [Dropout])+, Linear.
    stack = [(i, name, modules[i]) for i, name in enumerate(names) if name != "nn.View"]
    shape_error = (f"{path}: model.net is {' -> '.join(n for _, n, _ in stack) or 'empty'}, not torch-rnn's"
                   " LookupTable -> (LSTM|VanillaRNN [BatchNormalization] [Dropout])+ -> Linear")
    if len(stack) < 3 or stack[0][1] != "nn.LookupTable" or stack[-1][1] != "nn.Linear":
        raise UserError(shape_error)
    layers, position = [], 1
    while position < len(stack) - 1:
        _, name, module = stack[position]
        if name not in _RECURRENT:
            raise UserError(shape_error)
        layer = {"rnn": module, "class": name, "bn": None, "dropout": None}
        position += 1
        if stack[position][1] == "nn.BatchNormalization":
            layer["bn"] = stack[position][2]
            position += 1
        if stack[position][1] == "nn.Dropout":
            layer["dropout"] = stack[position][2]
            position += 1
        layers.append(layer)
    if not layers:
        raise UserError(shape_error)
    wrong = [layer["class"] for layer in layers if _RECURRENT[layer["class"]] != model_type]
    if wrong:
        raise UserError(f"{path}: inconsistent model: model_type is {model_type!r} but model.net has a {wrong[0]}")

    weights, names_out = [], []

    def add(name, array):
        names_out.append(name)
        weights.append(np.ascontiguousarray(array, dtype=np.float32))

    embedding_fields = _fields(stack[0][2])
    embedding = _tensor(embedding_fields, "weight", "the LookupTable", path)
    if embedding.ndim != 2:
        raise UserError(f"{path}: inconsistent shapes: the LookupTable 'weight' is {_shape(embedding.shape)}, not VxD")
    vocab_size, wordvec = embedding.shape
    add("embedding/embeddings", embedding)

    hidden = None
    input_dim = wordvec
    scale = 1.0  # inference-time factor of an old (v1) Dropout, folded into the next layer's input weights
    dropouts, batchnorm_flags = [], []
    for number, layer in enumerate(layers):
        what = f"layer {number + 1} ({layer['class']})"
        rnn_fields = _fields(layer["rnn"])
        weight = _tensor(rnn_fields, "weight", what, path)
        gates = RECURRENT_KINDS[model_type].gates
        if weight.ndim != 2 or weight.shape[1] % gates or weight.shape[1] == 0:
            raise UserError(f"{path}: inconsistent shapes: {what} 'weight' is {_shape(weight.shape)}")
        units = weight.shape[1] // gates
        if hidden is None:
            hidden = units
        if units != hidden:
            raise UserError(f"{path}: inconsistent shapes: {what} has {units} units, layer 1 has {hidden}"
                            " (this converter needs one rnn_size for all layers, as torch-rnn builds them)")
        if weight.shape[0] != input_dim + hidden:
            raise UserError(f"{path}: inconsistent shapes: {what} 'weight' is {_shape(weight.shape)}, expected"
                            f" {input_dim + hidden}x{gates * hidden} (input {input_dim} + hidden {hidden} rows)")
        for field, expected in (("input_dim", input_dim), ("hidden_dim", hidden)):
            value = _number(rnn_fields, field, what, path)
            if value is not None and value != expected:
                raise UserError(f"{path}: inconsistent shapes: {what} has {field} {value} but its weight implies"
                                f" {expected}")
        bias = _tensor(rnn_fields, "bias", what, path, (gates * hidden,))
        kernel, recurrent = weight[:input_dim] * scale, weight[input_dim:]
        if model_type == "lstm":
            kernel, recurrent, bias = (_ifog_to_ifco(a, hidden) for a in (kernel, recurrent, bias))
        prefix = f"{model_type}_{number}"
        add(f"{prefix}/kernel", kernel)
        add(f"{prefix}/recurrent_kernel", recurrent)
        add(f"{prefix}/bias", bias)
        scale = 1.0
        batchnorm_flags.append(layer["bn"] is not None)
        if layer["bn"] is not None:
            bn = layer["bn"]
            bn_values = _convert_bn(_fields(bn), getattr(bn, "_version_number", 2) or 0, hidden,
                                    f"layer {number + 1}'s BatchNormalization", path, keras_eps)
            for name, value in zip(("gamma", "beta", "moving_mean", "moving_variance"), bn_values):
                add(f"batchnorm_{number}/{name}", value)
        p = 0.0
        if layer["dropout"] is not None:
            dropout_fields = _fields(layer["dropout"])
            p = float(_number(dropout_fields, "p", f"layer {number + 1}'s Dropout", path, 0.5))
            if not 0 <= p < 1:
                raise UserError(f"{path}: layer {number + 1}'s Dropout has p = {p:g}, not in [0, 1)")
            if not _get(dropout_fields, "v2", False):  # nn.Dropout v1 scales by 1 - p when evaluating
                scale = 1.0 - p
        dropouts.append(p)
        input_dim = hidden

    linear_fields = _fields(stack[-1][2])
    linear = _tensor(linear_fields, "weight", "the Linear layer", path, (vocab_size, hidden))
    linear_bias = _tensor(linear_fields, "bias", "the Linear layer", path, (vocab_size,), required=False)
    add("logits/kernel", linear.T * scale)
    add("logits/bias", np.zeros(vocab_size) if linear_bias is None else linear_bias)

    if len(set(dropouts)) != 1 or len(set(batchnorm_flags)) != 1:
        raise UserError(f"{path}: layers differ in dropout {dropouts} or batchnorm {batchnorm_flags};"
                        " torch-rnn gives every layer the same")
    vocab = _vocabulary(fields, path)
    if vocab.size != vocab_size:
        raise UserError(f"{path}: inconsistent shapes: model.idx_to_token has {vocab.size} tokens but the"
                        f" LookupTable has {vocab_size} rows")
    found = {"vocab_size": vocab_size, "wordvec_dim": wordvec, "rnn_size": hidden, "num_layers": len(layers),
             "batchnorm": int(batchnorm_flags[0]), "dropout": dropouts[0]}
    for field, value in found.items():
        stored = _number(fields, field, "model", path)
        if stored is not None and not math.isclose(stored, value, rel_tol=1e-6, abs_tol=1e-9):
            raise UserError(f"{path}: inconsistent model: model.{field} is {stored} but model.net has {value}")
    try:
        config = ModelConfig(vocab_size=vocab_size, model_type=model_type, wordvec_size=wordvec, rnn_size=hidden,
                             num_layers=len(layers), dropout=dropouts[0], batchnorm=batchnorm_flags[0])
    except UserError as e:
        raise UserError(f"{path}: {e}") from None
    return dict(model_config=config, vocab=vocab, weights=weights, weight_names=tuple(names_out))
