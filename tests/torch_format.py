"""A small writer of Torch7's binary serialization (what `torch.save` writes and `torchfile` reads), and
builders that lay out torch-rnn checkpoints the way train.lua saves them. For tests only.

The format (torch7 File.lua writeObject, generic/Tensor.c and generic/Storage.c), little-endian as on x86:
  int32 type: 0 nil, 1 number (float64 follows), 2 string (int32 length + bytes), 3 table, 4 torch object,
  5 boolean (int32 0/1).
  table: int32 reference index, int32 number of pairs, then key, value objects.
  torch object: int32 reference index, string "V <version>", string class name, then the class's data:
    a tensor: int32 nDimension, int64 size[n], int64 stride[n], int64 storageOffset (1-based), then its
      storage object (nil for an empty tensor);
    a storage: int64 size, then the raw numbers;
    anything else (an nn module): its fields, written as one table object.
  An object met again (same table, module, tensor or storage) is written as its type and index only.

The builders mirror /work/shared/data/torch-rnn-shakespeare-2x128.t7 as torchfile reads it: every
module's fields after train.lua's model:clearState() and model:float(), parameters viewing one flat
storage (model:getParameters()), the LanguageModel's `rnns`, `view1`, `view2` shared with `net`.
"""

from __future__ import annotations

import functools
import struct
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

NIL, NUMBER, STRING, TABLE, TORCH, BOOLEAN = 0, 1, 2, 3, 4, 5

_DTYPES = {"Byte": np.uint8, "Char": np.int8, "Short": np.int16, "Int": np.int32, "Long": np.int64,
           "Float": np.float32, "Double": np.float64, "Half": np.float16, "Cuda": np.float32,
           "CudaDouble": np.float64, "CudaHalf": np.float16, "CudaLong": np.int64, "Cl": np.float32}


def dtype_of(class_name: str):
    """numpy dtype of 'torch.<X>Tensor' / 'torch.<X>Storage'."""
    prefix = class_name[len("torch."):].replace("Tensor", "").replace("Storage", "")
    return np.dtype(_DTYPES[prefix])


class TorchObject:
    """An instance of a torch class whose data is its fields table (an nn module)."""

    def __init__(self, class_name: str, fields: Optional[Dict[str, Any]] = None, version: int = 1):
        self.class_name, self.fields, self.version = class_name, dict(fields or {}), version


class Storage:
    def __init__(self, class_name: str, data: np.ndarray):
        self.class_name, self.data = class_name, np.ascontiguousarray(data, dtype=dtype_of(class_name)).ravel()


class Tensor:
    """A tensor viewing `storage` (None: an empty tensor) from a 1-based offset."""

    def __init__(self, class_name: str, storage: Optional[Storage], size=(), stride=None, offset: int = 1):
        self.class_name, self.storage, self.size, self.offset = class_name, storage, tuple(size), offset
        if stride is None:  # contiguous
            stride, step = [], 1
            for n in reversed(self.size):
                stride.insert(0, step)
                step *= n
        self.stride = tuple(stride)

    @classmethod
    def empty(cls, class_name: str = "torch.FloatTensor") -> "Tensor":
        return cls(class_name, None)

    @classmethod
    def of(cls, array, class_name: str = "torch.FloatTensor") -> "Tensor":
        """A contiguous tensor with a storage of its own."""
        array = np.asarray(array)
        storage = Storage(class_name.replace("Tensor", "Storage"), array)
        return cls(class_name, storage, array.shape)


# --- serialization ---------------------------------------------------------------------------------------

class _Writer:
    def __init__(self):
        self.out: List[bytes] = []
        self.index: Dict[int, int] = {}  # id(object) -> reference index
        self.keep: List[Any] = []  # the objects indexed, kept alive while ids are in use

    def int(self, value: int):
        self.out.append(struct.pack("<i", value))

    def long(self, value: int):
        self.out.append(struct.pack("<q", value))

    def raw_string(self, value):
        data = value.encode("utf-8") if isinstance(value, str) else bytes(value)
        self.int(len(data))
        self.out.append(data)

    def reference(self, kind: int, obj) -> bool:
        """Writes the type and reference index; True if the object was written before."""
        self.int(kind)
        seen = id(obj) in self.index
        if not seen:
            self.index[id(obj)] = len(self.index) + 1
            self.keep.append(obj)
        self.int(self.index[id(obj)])
        return seen

    def obj(self, value):
        if value is None:
            self.int(NIL)
        elif isinstance(value, (bool, np.bool_)):
            self.int(BOOLEAN)
            self.int(int(value))
        elif isinstance(value, (int, float, np.integer, np.floating)):
            self.int(NUMBER)
            self.out.append(struct.pack("<d", float(value)))
        elif isinstance(value, (str, bytes)):
            self.int(STRING)
            self.raw_string(value)
        elif isinstance(value, (dict, list, tuple)):
            if self.reference(TABLE, value):
                return
            pairs = value.items() if isinstance(value, dict) else enumerate(value, start=1)
            pairs = list(pairs)
            self.int(len(pairs))
            for key, item in pairs:
                self.obj(key)
                self.obj(item)
        elif isinstance(value, (TorchObject, Tensor, Storage)):
            if self.reference(TORCH, value):
                return
            self.raw_string(f"V {getattr(value, 'version', 1)}")
            self.raw_string(value.class_name)
            if isinstance(value, Tensor):
                self.int(len(value.size) if value.storage is not None else 0)
                if value.storage is not None:
                    for n in value.size:
                        self.long(n)
                    for s in value.stride:
                        self.long(s)
                self.long(value.offset)
                self.obj(value.storage)
            elif isinstance(value, Storage):
                self.long(value.data.size)
                self.out.append(value.data.astype(value.data.dtype.newbyteorder("<")).tobytes())
            else:
                self.obj(value.fields)
        else:
            raise TypeError(f"cannot serialize {type(value).__name__}")


def dumps(value) -> bytes:
    writer = _Writer()
    writer.obj(value)
    return b"".join(writer.out)


def save(path, value) -> None:
    with open(path, "wb") as f:
        f.write(dumps(value))


# --- torch-rnn's modules, as train.lua saves them ----------------------------------------------------------

class Params:
    """model:getParameters(): parameters (and their gradients) as views of one flat storage each, in the
    order the modules list them. flat=False gives every tensor a storage of its own (a model converted
    with model:float() after training on a GPU)."""

    def __init__(self, tensor_type: str = "torch.FloatTensor", flat: bool = True):
        self.tensor_type, self.flat = tensor_type, flat
        self.arrays: List[np.ndarray] = []
        self.tensors: List[Tensor] = []
        self.grads: List[Tensor] = []

    def add(self, array) -> tuple:
        array = np.asarray(array, dtype=np.float64)
        param = Tensor(self.tensor_type, None, array.shape)
        grad = Tensor(self.tensor_type, None, array.shape)
        self.arrays.append(array)
        self.tensors.append(param)
        self.grads.append(grad)
        return param, grad

    def finish(self):
        """Fills in the storages (after every module has added its parameters)."""
        storage_type = self.tensor_type.replace("Tensor", "Storage")
        if self.flat:
            flat = np.concatenate([a.ravel() for a in self.arrays]) if self.arrays else np.zeros(0)
            values, grads = Storage(storage_type, flat), Storage(storage_type, np.zeros_like(flat))
            offset = 1
            for array, param, grad in zip(self.arrays, self.tensors, self.grads):
                param.storage, param.offset = values, offset
                grad.storage, grad.offset = grads, offset
                offset += array.size
        else:
            for array, param, grad in zip(self.arrays, self.tensors, self.grads):
                param.storage = Storage(storage_type, array)
                grad.storage = Storage(storage_type, np.zeros_like(array))


def _common(tensor_type: str) -> dict:
    return {"output": Tensor.empty(tensor_type), "gradInput": Tensor.empty(tensor_type), "_type": tensor_type,
            "train": True}


def lookup_table(params: Params, weight) -> TorchObject:
    tt = params.tensor_type
    w, g = params.add(weight)
    return TorchObject("nn.LookupTable", {
        **_common(tt), "gradWeight": g, "copiedInput": True, "_input": Tensor.empty("torch.LongTensor"),
        "paddingValue": 0, "_count": Tensor.empty("torch.IntTensor"), "shouldScaleGradByFreq": False,
        "weight": w}, version=4)


def lstm(params: Params, weight, bias) -> TorchObject:
    """nn.LSTM: weight (D+H, 4H) rows [Wx; Wh], bias (4H), gates i, f, o, g."""
    tt = params.tensor_type
    hidden = np.shape(bias)[0] // 4
    w, gw = params.add(weight)
    b, gb = params.add(bias)
    e = functools.partial(Tensor.empty, tt)
    return TorchObject("nn.LSTM", {
        "_return_grad_c0": False, **_common(tt), "cell": e(), "buffer1": e(),
        "input_dim": np.shape(weight)[0] - hidden, "grad_x": e(), "hidden_dim": hidden, "buffer3": e(),
        "gradBias": gb, "recompute_backward": True, "bias": b, "c0": e(), "grad_c0": e(), "remember_states": True,
        "h0": e(), "grad_h0": e(), "weight": w, "gradWeight": gw, "gates": e(), "buffer2": e(),
        "grad_a_buffer": e(), "_return_grad_h0": False})


def vanilla_rnn(params: Params, weight, bias) -> TorchObject:
    """nn.VanillaRNN: weight (D+H, H) rows [Wx; Wh], bias (H)."""
    tt = params.tensor_type
    hidden = np.shape(bias)[0]
    w, gw = params.add(weight)
    b, gb = params.add(bias)
    e = functools.partial(Tensor.empty, tt)
    return TorchObject("nn.VanillaRNN", {
        **_common(tt), "input_dim": np.shape(weight)[0] - hidden, "hidden_dim": hidden, "weight": w,
        "gradWeight": gw, "bias": b, "gradBias": gb, "h0": e(), "remember_states": True, "buffer1": e(),
        "buffer2": e(), "grad_h0": e(), "grad_x": e(), "recompute_backward": True, "_return_grad_h0": False})


def view(size: Sequence[int], num_input_dims: int, tensor_type: str = "torch.FloatTensor") -> TorchObject:
    elements = int(np.prod([n for n in size if n >= 0]))
    return TorchObject("nn.View", {
        "numElements": elements, **_common(tensor_type),
        "size": Storage("torch.LongStorage", np.array(size, np.int64)), "numInputDims": num_input_dims})


def batch_norm(params: Params, running_mean, running_var, weight=None, bias=None, eps: float = 1e-5,
               momentum: float = 0.1, version: int = 2) -> TorchObject:
    """nn.BatchNormalization(H, eps, momentum, affine = weight is not None). version=1 stores
    running_std = 1/sqrt(running_var + eps), as nn did before BatchNormalization.__version 2."""
    tt = params.tensor_type
    fields = {**_common(tt), "eps": eps, "momentum": momentum, "affine": weight is not None,
              "running_mean": Tensor.of(running_mean, tt), "save_mean": Tensor.empty(tt),
              "save_std": Tensor.empty(tt)}
    if version >= 2:
        fields["running_var"] = Tensor.of(running_var, tt)
    else:
        fields["running_std"] = Tensor.of(1.0 / np.sqrt(np.asarray(running_var, np.float64) + eps), tt)
        del fields["affine"]  # absent before version 2: affine came from the weight being there
    if weight is not None:
        fields["weight"], fields["gradWeight"] = params.add(weight)
        fields["bias"], fields["gradBias"] = params.add(bias)
    return TorchObject("nn.BatchNormalization", fields, version=version)


def dropout(p: float, v2: bool = True, tensor_type: str = "torch.FloatTensor") -> TorchObject:
    fields = {**_common(tensor_type), "p": p, "noise": Tensor.empty(tensor_type), "stochastic_inference": False}
    if v2:
        fields["v2"] = True
    return TorchObject("nn.Dropout", fields)


def linear(params: Params, weight, bias) -> TorchObject:
    tt = params.tensor_type
    w, gw = params.add(weight)
    b, gb = params.add(bias)
    return TorchObject("nn.Linear", {"gradBias": gb, **_common(tt), "weight": w, "gradWeight": gw,
                                     "addBuffer": Tensor.empty(tt), "bias": b})


def sequential(modules: List[TorchObject], tensor_type: str = "torch.FloatTensor") -> TorchObject:
    return TorchObject("nn.Sequential", {**_common(tensor_type), "modules": list(modules)})


def language_model(idx_to_token: Sequence[bytes], model_type: str, embedding, rnns: Sequence[tuple],
                   linear_weight, linear_bias, batchnorms: Optional[Sequence[dict]] = None, dropout_p: float = 0,
                   dropout_v2: bool = True, tensor_type: str = "torch.FloatTensor", flat: bool = True,
                   batch_size: int = 50, seq_length: int = 50) -> TorchObject:
    """nn.LanguageModel as LanguageModel.lua builds it, from torch-layout arrays.

    rnns: (weight (D+H, 4H or H), bias) per layer; batchnorms: keyword arguments of batch_norm per layer.
    """
    params = Params(tensor_type, flat)
    vocab_size, wordvec = np.shape(embedding)
    hidden = np.shape(rnns[0][1])[0] // (4 if model_type == "lstm" else 1)
    n_t = batch_size * seq_length
    modules, rnn_modules, bn_in, bn_out = [lookup_table(params, embedding)], [], [], []
    for i, (weight, bias) in enumerate(rnns):
        rnn = (lstm if model_type == "lstm" else vanilla_rnn)(params, weight, bias)
        rnn_modules.append(rnn)
        modules.append(rnn)
        if batchnorms:
            bn_in.append(view([n_t, -1], 3, tensor_type))
            bn_out.append(view([batch_size, seq_length, -1], 2, tensor_type))
            modules += [bn_in[-1], batch_norm(params, **batchnorms[i]), bn_out[-1]]
        if dropout_p > 0:
            modules.append(dropout(dropout_p, dropout_v2, tensor_type))
    view1, view2 = view([n_t, -1], 3, tensor_type), view([batch_size, seq_length, -1], 2, tensor_type)
    modules += [view1, linear(params, linear_weight, linear_bias), view2]
    params.finish()
    return TorchObject("nn.LanguageModel", {
        "wordvec_dim": wordvec, "rnns": rnn_modules, "view2": view2, "view1": view1, "_type": tensor_type,
        "vocab_size": vocab_size, "model_type": model_type, "num_layers": len(rnns), "rnn_size": hidden,
        "bn_view_in": bn_in, "batchnorm": 1 if batchnorms else 0, "bn_view_out": bn_out, "dropout": dropout_p,
        "idx_to_token": list(idx_to_token), "train": True,
        "token_to_idx": {token: i for i, token in enumerate(idx_to_token, start=1)},
        "net": sequential(modules, tensor_type)})


def train_options(model: TorchObject, **overrides) -> dict:
    """train.lua's `opt` table (cmd:parse with its defaults), matching the model."""
    f = model.fields
    opt = {"max_epochs": 50, "checkpoint_every": 1000, "batch_size": 50, "memory_benchmark": 0, "init_from": "",
           "grad_clip": 5, "model_type": f["model_type"], "lr_decay_every": 5, "print_every": 1,
           "wordvec_size": f["wordvec_dim"], "seq_length": 50, "input_json": "data/input.json",
           "num_layers": f["num_layers"], "input_h5": "data/input.h5", "reset_iterations": 1,
           "rnn_size": f["rnn_size"], "dropout": f["dropout"], "checkpoint_name": "cv/checkpoint",
           "batchnorm": f["batchnorm"], "learning_rate": 2e-3, "speed_benchmark": 0, "gpu_backend": "cuda",
           "lr_decay_factor": 0.5, "gpu": -1}
    opt.update(overrides)
    return opt


def checkpoint(model: TorchObject, i: int = 1000, train_loss_history: Sequence[float] = (),
               val_loss_history: Sequence[float] = (), val_loss_history_it: Sequence[int] = ()) -> dict:
    """The table train.lua saves: torch.save(checkpoint_name .. '_' .. i .. '.t7', checkpoint)."""
    return {"model": model, "i": i, "val_loss_history": list(val_loss_history),
            "val_loss_history_it": list(val_loss_history_it), "forward_backward_times": [],
            "opt": train_options(model), "train_loss_history": list(train_loss_history), "memory_usage": []}
