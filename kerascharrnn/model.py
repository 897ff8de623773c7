"""The char-RNN as stock Keras layers, the one walker over its layer stack, and a single-step function.

Model: Embedding [-> Dropout] -> num_layers x (LSTM | GRU | SimpleRNN [-> BatchNormalization] [-> Dropout])
[-> CopyAttention] -> Dense, the stack of torch-rnn's LanguageModel (plus an optional dropout on the
embeddings, and the optional copy attention of copy_attention.py). Without copy attention only stock
layers, so `keras.models.load_model(path)` needs no custom objects. LSTM/GRU keep Keras's defaults, which
are exactly cuDNN's conditions on a GPU.

`layer_stack(model)` is the only code that looks at layer types: the step function, the fused training
path, the state helpers and `config_of` all read its `Stage`s, so a new layer kind is added here once.

The step function `(ids, states) -> (logits, states)` calls each recurrent layer's *cell* with explicit
state tensors: no stateful variables (concurrent callers do not share state), any batch size, and no
whole-sequence RNN op (a whole-sequence LSTM traced on a GPU bakes in CudnnRNNV3, which has no CPU
kernel; the cells are plain matmuls).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, List, Optional, Sequence, Tuple

import keras
import tensorflow as tf

from kerascharrnn.config import ModelConfig
from kerascharrnn.copy_attention import STATE_PARTS as COPY_STATE_PARTS
from kerascharrnn.copy_attention import CopyAttention
from kerascharrnn.errors import UserError


@dataclasses.dataclass(frozen=True)
class RecurrentKind:
    """A recurrent layer type: its --model_type name, Keras class and explicit state tensors."""

    name: str
    layer_class: type
    state_parts: Tuple[str, ...]


RECURRENT_KINDS = {kind.name: kind for kind in (
    RecurrentKind("lstm", keras.layers.LSTM, ("h", "c")),
    RecurrentKind("gru", keras.layers.GRU, ("h",)),
    RecurrentKind("rnn", keras.layers.SimpleRNN, ("h",)),
)}

# What each stock layer is in a char-RNN. Exact types: a subclass could compute something else.
_ROLES = {keras.layers.Embedding: "embedding", keras.layers.BatchNormalization: "batchnorm",
          keras.layers.Dropout: "dropout", keras.layers.Dense: "logits", CopyAttention: "copy",
          **{kind.layer_class: "recurrent" for kind in RECURRENT_KINDS.values()}}


@dataclasses.dataclass(frozen=True)
class Stage:
    """One layer of the stack and its role: embedding, recurrent, batchnorm, dropout, copy or logits."""

    role: str
    layer: keras.layers.Layer
    kind: Optional[RecurrentKind] = None  # recurrent stages only

    @property
    def carries_state(self) -> bool:
        return self.role in ("recurrent", "copy")

    @property
    def state_names(self) -> List[str]:
        """The step function's state tensors of this layer (none for stateless layers)."""
        parts = self.kind.state_parts if self.kind else COPY_STATE_PARTS if self.role == "copy" else ()
        return [f"{self.layer.name} {part}" for part in parts]

    @property
    def state_sizes(self) -> List[int]:
        """The width of each of this layer's step-function state tensors."""
        if self.role == "copy":
            return self.layer.state_sizes()
        return [self.layer.cell.units] * len(self.kind.state_parts) if self.kind else []


def layer_stack(model: keras.Model) -> List[Stage]:
    """The model's layers in order (input layer left out), each with its role.

    Raises UserError for a model that is not a char-RNN of stock layers.
    """
    stages = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        role = _ROLES.get(type(layer))
        if role is None:
            raise UserError(f"not a char-RNN model: layer {layer.name!r} is a {type(layer).__name__}")
        kind = next((k for k in RECURRENT_KINDS.values() if type(layer) is k.layer_class), None)
        stages.append(Stage(role, layer, kind))
    roles = [s.role for s in stages]
    last_recurrent = max((i for i, role in enumerate(roles) if role == "recurrent"), default=-1)
    # at most one copy attention, on the top recurrent layer's output
    misplaced_copy = roles.count("copy") > 1 or any(role == "copy" and i < last_recurrent
                                                    for i, role in enumerate(roles))
    if not roles or roles[0] != "embedding" or roles[-1] != "logits" or last_recurrent < 0 or misplaced_copy:
        raise UserError(f"not a char-RNN model: layers are {', '.join(roles) or 'none'}"
                        " (want embedding, recurrent layers, [copy attention,] logits)")
    return stages


def recurrent_stages(model: keras.Model) -> List[Stage]:
    return [s for s in layer_stack(model) if s.role == "recurrent"]


def stateful_stages(model: keras.Model) -> List[Stage]:
    """The layers that carry state from window to window: the recurrent layers and the copy attention."""
    return [s for s in layer_stack(model) if s.carries_state]


def build_model(config: ModelConfig, batch_size: int) -> keras.Model:
    """Builds the stateful training model.

    Args:
      config: the architecture.
      batch_size: N, fixed because stateful layers keep one state row per stream.

    Returns:
      A keras.Model mapping int32 ids (N, T) to logits (N, T, V); T may vary between calls.
    """
    ids = keras.Input(batch_shape=(batch_size, None), dtype="int32", name="ids")
    x = keras.layers.Embedding(config.vocab_size, config.wordvec_size, name="embedding")(ids)  # (N, T, D)
    if config.embedding_dropout > 0:
        x = keras.layers.Dropout(config.embedding_dropout, name="embedding_dropout")(x)
    rnn_class = RECURRENT_KINDS[config.model_type].layer_class
    for i in range(config.num_layers):
        # The defaults (tanh/sigmoid, use_bias, no recurrent dropout, unroll=False and GRU reset_after)
        # are exactly what cuDNN needs; they are left alone on purpose.
        x = rnn_class(config.rnn_size, return_sequences=True, stateful=True, name=f"{config.model_type}_{i}")(x)
        if config.batchnorm:
            x = keras.layers.BatchNormalization(name=f"batchnorm_{i}")(x)
        if config.dropout > 0:
            x = keras.layers.Dropout(config.dropout, name=f"dropout_{i}")(x)
    if config.copy_memory > 0:
        x = CopyAttention(config.vocab_size, config.copy_memory, config.copy_heads, config.copy_head_size,
                          reset_rate=config.copy_reset, name="copy_attention")([x, ids])
    logits = keras.layers.Dense(config.vocab_size, name="logits")(x)  # (N, T, V)
    return keras.Model(ids, logits, name="charrnn")


def config_of(model: keras.Model) -> ModelConfig:
    """The ModelConfig a model's layers describe (for files that do not store it: v0.1.0's)."""
    stages = layer_stack(model)
    recurrent = [s for s in stages if s.role == "recurrent"]
    embedding = stages[0].layer
    embedding_dropout = stages[1].layer.rate if stages[1].role == "dropout" else 0.0
    dropouts = [s.layer.rate for s in stages[2 if embedding_dropout else 1:] if s.role == "dropout"]
    copy = next((s.layer for s in stages if s.role == "copy"), None)
    return ModelConfig(
        vocab_size=embedding.input_dim,
        model_type=recurrent[0].kind.name,
        wordvec_size=embedding.output_dim,
        rnn_size=recurrent[0].layer.cell.units,
        num_layers=len(recurrent),
        dropout=dropouts[0] if dropouts else 0.0,
        batchnorm=any(s.role == "batchnorm" for s in stages),
        embedding_dropout=embedding_dropout,
        copy_memory=copy.memory_size if copy else 0,
        copy_heads=copy.num_heads if copy else ModelConfig.copy_heads,
        copy_head_size=copy.head_size if copy else ModelConfig.copy_head_size,
        copy_reset=copy.reset_rate if copy else ModelConfig.copy_reset,
    )


def reset_states(model: keras.Model) -> None:
    """keras.Model has no reset_states(); each stateful layer has reset_state()."""
    for stage in stateful_stages(model):
        stage.layer.reset_state()


def state_variables(model: keras.Model) -> List:
    """The carried-state variables of the stateful model: each recurrent layer's (LSTM: h then c), then the
    copy attention's memory (which differs from its step-function states)."""
    return [v for stage in stateful_stages(model) for v in stage.layer.states]


def get_states(model: keras.Model) -> List:
    """The carried state of every recurrent layer, as numpy arrays (copies)."""
    return [v.numpy() for v in state_variables(model)]


def set_states(model: keras.Model, values: Sequence) -> None:
    variables = state_variables(model)
    if len(variables) != len(values):
        raise ValueError(f"expected {len(variables)} state arrays, got {len(values)}")
    for variable, value in zip(variables, values):
        variable.assign(value)


def state_names(model: keras.Model) -> List[str]:
    """A description of each state tensor, in step-function order, e.g. 'lstm_0 h', 'lstm_0 c'."""
    return [name for stage in stateful_stages(model) for name in stage.state_names]


def state_sizes(model: keras.Model) -> List[int]:
    """Width of each explicit state tensor, in step-function order."""
    return [size for stage in stateful_stages(model) for size in stage.state_sizes]


StepFn = Callable[[tf.Tensor, Tuple[tf.Tensor, ...]], Tuple[tf.Tensor, Tuple[tf.Tensor, ...]]]


def make_step_fn(model: keras.Model) -> StepFn:
    """Returns step(ids (N,) int32, states tuple of (N, H_k)) -> (logits (N, V), new states tuple).

    Built from the layers in model order; recurrent layers run their cell once, the copy attention its
    step, Dropout is skipped and BatchNormalization uses its moving statistics (inference).
    """
    stages = layer_stack(model)

    def step(ids, states):
        x = ids
        states = list(states)
        new_states = []
        for stage in stages:
            if stage.carries_state:
                count = len(stage.state_names)
                layer_states, states = states[:count], states[count:]
                if stage.role == "copy":
                    x, updated = stage.layer.step(x, ids, layer_states)
                else:
                    x, updated = stage.layer.cell(x, layer_states, training=False)
                new_states.extend(updated)
            elif stage.role == "dropout":
                continue
            else:  # layers built on (N, T, ...) inputs: give them a time axis of one
                x = stage.layer(x[:, None], training=False)[:, 0]
        return x, tuple(new_states)

    return step
