"""The char-RNN as stock Keras layers, and the one place that knows how each layer of it runs.

Model: Embedding [-> Dropout] -> num_layers x (LSTM | GRU | SimpleRNN [-> BatchNormalization] [-> Dropout])
[-> CopyAttention] -> Dense, the stack of torch-rnn's LanguageModel (plus an optional dropout on the
embeddings, and the optional copy attention of copy_attention.py). Without copy attention only stock
layers, so `keras.models.load_model(path)` needs no custom objects. LSTM/GRU keep Keras's defaults, which
are exactly cuDNN's conditions on a GPU.

`layer_stack(model)` reads the model as a list of `Stage`s, one class per role (embedding, recurrent,
batch normalisation, dropout, copy attention, logits). Each role says how its layer runs in every form
the package uses, so a new layer kind is added here, once (a new recurrent kind: config.RECURRENT_KINDS, with its
arithmetic in recurrence.py and export/runtime.js):

  window   the Keras layer's own call over (N, T, ...) windows; stateful layers update their variables
  step     one character with explicit state tensors (sampling, export, serving): no stateful
           variables, any batch size, and no whole-sequence RNN op (a whole-sequence LSTM traced on a
           GPU bakes in CudnnRNNV3, which has no CPU kernel; the cells are plain matmuls)
  fused    training through training/fused.py: recurrent layers as models/recurrence.py runs them over
           time-major sequences, the random draws of a batch split in parts made for the whole batch
  replica  training under a tf.distribute strategy, with the carried state explicit per replica
  portable the step form's weights and settings as plain arrays, for a runtime without TensorFlow (the
           browser's, export/runtime.js, which implements each role's `kind` once more, tested against `step`)
A layer of any other type, or in another order, is refused when the stack is read.
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Callable, ClassVar, Dict, List, Optional, Sequence, Tuple

import keras
import numpy as np
import tensorflow as tf

from kerascharrnn import upstream
from kerascharrnn.config import RECURRENT_KINDS, ModelConfig, RecurrentKind
from kerascharrnn.errors import UserError
from kerascharrnn.errors import setting as ref
from kerascharrnn.models import recurrence
from kerascharrnn.models.copy_attention import MEMORY_PARTS as COPY_MEMORY_PARTS
from kerascharrnn.models.copy_attention import STATE_PARTS as COPY_STATE_PARTS
from kerascharrnn.models.copy_attention import CopyAttention

# each recurrent kind's Keras class (config.RECURRENT_KINDS names them)
RECURRENT_LAYERS = {getattr(keras.layers, kind.layer): kind for kind in RECURRENT_KINDS.values()}


@dataclasses.dataclass(frozen=True)
class PendingLookup:
    """The fused form's embedding output, not computed yet: a recurrent layer right after the embedding
    looks its input projection up in a (V, G*H) table (embeddings @ kernel + bias) instead; any other
    layer gets `layer(ids)`."""

    layer: keras.layers.Embedding
    ids: tf.Tensor

    def embedded(self):
        return self.layer(self.ids)


# the activations a portable runtime implements (Keras's names)
PORTABLE_ACTIVATIONS = ("tanh", "sigmoid", "linear")


def _activation(layer, setting: str) -> str:
    name = layer.get_config()[setting]
    if name not in PORTABLE_ACTIVATIONS:
        raise UserError(f"layer {layer.name!r}: {setting} {name!r} has no portable form (it has"
                        f" {', '.join(PORTABLE_ACTIVATIONS)})")
    return name


def _array(variable):
    return np.asarray(keras.ops.convert_to_numpy(variable), np.float32)


def _positionwise_step(layer, x):
    """A layer built on (N, T, ...) inputs, run on one position (N, ...)."""
    return layer(x[:, None], training=False)[:, 0]


class Stage(abc.ABC):
    """One layer of the stack in its role; the forms are described in the module docstring.

    Attributes:
      layer: the Keras layer.
      role: the role's name.
    """

    role: ClassVar[str]
    carried_prefix: ClassVar[str] = ""  # names its carried variables in a checkpoint's training state

    def __init__(self, layer: keras.layers.Layer):
        self.layer = layer

    # --- state ---

    @property
    def state_parts(self) -> Tuple[str, ...]:
        """The step form's state tensors (none for stateless layers)."""
        return ()

    @property
    def state_names(self) -> List[str]:
        return [f"{self.layer.name} {part}" for part in self.state_parts]

    @property
    def state_sizes(self) -> List[int]:
        """The width of each of the step form's state tensors."""
        return []

    @property
    def carries_state(self) -> bool:
        return bool(self.state_parts)

    def carried_variables(self) -> Dict[str, tf.Variable]:
        """The window form's carried state (not weights, never in the .keras file), by the name a
        checkpoint's training state stores it under."""
        return {}

    def output_width(self, input_width: int) -> int:
        """The width of the last axis after this layer."""
        return input_width

    # --- the forms ---

    @abc.abstractmethod
    def window(self, x, ids, training: bool):
        """(N, T, ...) -> (N, T, ...): the Keras layer's call."""

    @abc.abstractmethod
    def step(self, x, ids, states: Sequence) -> Tuple[object, tuple]:
        """One position: (x (N, ...), states) -> (x, new states); ids (N,) the characters fed."""

    @abc.abstractmethod
    def fused(self, x, ids, state: tuple, draw, training: bool) -> Tuple[object, tuple]:
        """-> (x, new state to carry, () if none). x is time-major for a recurrent layer (training/fused.py
        turns it), batch-major for the others; state is the layer's carried state where the fused form takes
        it explicitly (recurrent layers), else (); draw is what `draw` made for the whole batch when the
        batch runs in parts, else None (the layer draws for itself)."""

    @abc.abstractmethod
    def replica(self, x, ids, states: tuple, seed, training: bool) -> Tuple[object, tuple]:
        """One replica's (n, T, ...) window with explicit state -> (x, new states); seed: a stateless seed
        pair for this layer, replica and iteration."""

    def replica_state(self) -> Dict[str, int]:
        """The replica form's state: the checkpoint name and width of each (n, width) tensor; UserError
        where the layer has no replica form."""
        return {}

    def draw(self, inputs, width: int):
        """What this layer draws at random for a whole (N, T) batch in the fused form (None: nothing)."""
        return None

    def portable(self) -> Optional[Dict[str, object]]:
        """The step form as {"kind", settings..., "weights": {name: float32 array}} (None: the step form does
        nothing, as Dropout's); UserError for settings the portable runtimes do not implement."""
        return None

    fused_time_major: ClassVar[bool] = False  # the fused form takes and gives (T, N, ...)
    spans_batch: ClassVar[bool] = False  # its computation mixes the streams of a batch


class EmbeddingStage(Stage):
    role = "embedding"

    def output_width(self, input_width: int) -> int:
        return self.layer.output_dim

    def window(self, x, ids, training):
        return self.layer(x)

    def step(self, x, ids, states):
        return _positionwise_step(self.layer, x), ()

    def fused(self, x, ids, state, draw, training):
        return PendingLookup(self.layer, x), ()

    def replica(self, x, ids, states, seed, training):
        return self.layer(x, training=training), ()

    def portable(self):
        return {"kind": "embedding", "weights": {"embeddings": _array(self.layer.embeddings)}}


class RecurrentStage(Stage):
    role = "recurrent"
    carried_prefix = "rnn_state"
    fused_time_major = True

    def __init__(self, layer, kind: RecurrentKind):
        super().__init__(layer)
        self.kind = kind

    @property
    def state_parts(self):
        return self.kind.state_parts

    @property
    def state_sizes(self):
        return [self.layer.cell.units] * len(self.kind.state_parts)

    def carried_variables(self):
        return {f"{self.carried_prefix}/{self.layer.name}/{part}": v
                for part, v in zip(self.kind.state_parts, self.layer.states)}

    def output_width(self, input_width):
        return self.layer.cell.units

    def window(self, x, ids, training):
        return self.layer(x, training=training)

    def step(self, x, ids, states):
        x, states = self.layer.cell(x, states, training=False)
        return x, tuple(states)

    def fused(self, x, ids, state, draw, training):
        cell = self.layer.cell
        kernel = tf.convert_to_tensor(cell.kernel)
        input_bias, recurrent_bias = recurrence.input_and_recurrent_bias(cell)
        if isinstance(x, PendingLookup):
            # ids -> rows of (embeddings @ kernel + bias): a (V, G*H) table replaces the (N*T, D) matmul
            table = tf.matmul(tf.convert_to_tensor(x.layer.embeddings), kernel) + input_bias
            projected = tf.gather(table, tf.transpose(x.ids))
        else:
            projected = recurrence.project(x, kernel, input_bias)
        return recurrence.recurrence(recurrence.CELL_MATH[self.kind.name], projected, state,
                                     tf.convert_to_tensor(cell.recurrent_kernel), recurrent_bias)

    def replica(self, x, ids, states, seed, training):
        x, new_states = upstream.rnn_inner_loop(self.layer, x, states, training)
        return x, tuple(new_states)

    def replica_state(self):
        return {name: self.layer.cell.units for name in self.carried_variables()}

    def portable(self):
        cell = self.layer.cell
        settings = {"kind": self.kind.name, "units": cell.units,
                    "activation": _activation(self.layer, "activation")}
        if self.kind.name != "rnn":
            settings["recurrent_activation"] = _activation(self.layer, "recurrent_activation")
        if self.kind.name == "gru" and not cell.reset_after:  # Keras's and cuDNN's form is the one bin/train builds
            raise UserError(f"layer {self.layer.name!r}: a GRU with reset_after=False has no portable form")
        weights = {"kernel": _array(cell.kernel), "recurrent_kernel": _array(cell.recurrent_kernel)}
        if cell.use_bias:
            weights["bias"] = _array(cell.bias)
        return {**settings, "weights": weights}


class BatchNormStage(Stage):
    role = "batchnorm"
    spans_batch = True  # its statistics come from the whole batch

    def window(self, x, ids, training):
        return self.layer(x, training=training)

    def step(self, x, ids, states):
        return _positionwise_step(self.layer, x), ()  # the moving statistics (inference)

    def fused(self, x, ids, state, draw, training):
        return self.layer(x, training=training), ()

    def replica(self, x, ids, states, seed, training):
        return self.layer(x, training=training), ()

    def portable(self):
        layer = self.layer
        if layer.axis not in (-1, len(layer.input.shape) - 1):
            raise UserError(f"layer {layer.name!r}: batch normalisation over axis {layer.axis} has no portable form")
        weights = {"moving_mean": _array(layer.moving_mean), "moving_variance": _array(layer.moving_variance)}
        weights.update({name: _array(getattr(layer, name)) for name in ("gamma", "beta")
                        if getattr(layer, name) is not None})
        return {"kind": "batchnorm", "epsilon": float(layer.epsilon), "weights": weights}


class DropoutStage(Stage):
    role = "dropout"

    def window(self, x, ids, training):
        return self.layer(x, training=training)

    def step(self, x, ids, states):
        return x, ()

    def fused(self, x, ids, state, draw, training):
        return (self.layer(x, training=training) if draw is None else x * draw), ()

    def draw(self, inputs, width):
        # the layer applied to ones: its own RNG, advanced once as in a whole-batch call, so x * mask is its output
        return self.layer(tf.ones([inputs.shape[0], tf.shape(inputs)[1], width]), training=True)

    def replica(self, x, ids, states, seed, training):
        # Keras's Dropout draws from a seed-generator variable, which a replica cannot update; a stateless
        # draw keyed by (layer, iteration, replica) is as random, and repeats on resume.
        if training and self.layer.rate > 0:
            x = tf.nn.experimental.stateless_dropout(x, self.layer.rate, seed=seed)
        return x, ()


class CopyStage(Stage):
    role = "copy"
    carried_prefix = "copy_memory"

    @property
    def state_parts(self):
        return COPY_STATE_PARTS

    @property
    def state_sizes(self):
        return self.layer.state_sizes()

    def carried_variables(self):
        return {f"{self.carried_prefix}/{self.layer.name}/{part}": v
                for part, v in zip(COPY_MEMORY_PARTS, self.layer.states)}

    def window(self, x, ids, training):
        return self.layer([x, ids], training=training)

    def step(self, x, ids, states):
        x, states = self.layer.step(x, ids, states)
        return x, tuple(states)

    def fused(self, x, ids, state, draw, training):
        if draw is None:
            return self.layer([x, ids], training=training), ()  # the stateful layer updates its own memory
        x, memory = self.layer.attend_window(x, ids, *draw)
        return x, tuple(memory)

    def draw(self, inputs, width):
        # the memory this window starts from, with this window's resets applied
        return self.layer.memory_for_window(training=True)

    def replica(self, x, ids, states, seed, training):
        raise self._no_replica_form()

    def replica_state(self):
        raise self._no_replica_form()

    def portable(self):
        layer = self.layer
        return {"kind": "copy", "memory_size": layer.memory_size, "num_heads": layer.num_heads,
                "head_size": layer.head_size,
                "weights": {name: _array(getattr(layer, name))
                            for name in ("query_kernel", "key_kernel", "value_embeddings", "output_kernel")}}

    @staticmethod
    def _no_replica_form() -> UserError:
        # its memory is (N, M, H) state that the per-replica state code does not split yet
        return UserError(f"copy attention ({ref('copy_memory')}) trains on one device: a distribution strategy"
                         f" ({ref('strategy')}) does not support it yet")


class LogitsStage(Stage):
    role = "logits"

    def portable(self):
        weights = {"kernel": _array(self.layer.kernel)}
        if self.layer.use_bias:
            weights["bias"] = _array(self.layer.bias)
        return {"kind": "dense", "activation": _activation(self.layer, "activation"), "weights": weights}

    def window(self, x, ids, training):
        return self.layer(x, training=training)

    def step(self, x, ids, states):
        return _positionwise_step(self.layer, x), ()

    def fused(self, x, ids, state, draw, training):
        return self.layer(x, training=training), ()

    def replica(self, x, ids, states, seed, training):
        return self.layer(x, training=training), ()


# Which role each stock layer plays. Exact types: a subclass could compute something else.
ROLES = {keras.layers.Embedding: EmbeddingStage, keras.layers.BatchNormalization: BatchNormStage,
         keras.layers.Dropout: DropoutStage, keras.layers.Dense: LogitsStage, CopyAttention: CopyStage,
         **{layer_class: RecurrentStage for layer_class in RECURRENT_LAYERS}}


def layer_stack(model: keras.Model) -> List[Stage]:
    """The model's layers in order (input layer left out), each as the Stage of its role.

    Raises UserError for a model that is not a char-RNN of these layers, in this order.
    """
    stages = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        role = ROLES.get(type(layer))
        if role is None:
            raise UserError(f"not a char-RNN model: layer {layer.name!r} is a {type(layer).__name__}")
        if role is RecurrentStage:
            stages.append(RecurrentStage(layer, RECURRENT_LAYERS[type(layer)]))
        else:
            stages.append(role(layer))
    roles = [s.role for s in stages]
    last_recurrent = max((i for i, role in enumerate(roles) if role == "recurrent"), default=-1)
    # at most one copy attention, on the top recurrent layer's output
    misplaced_copy = roles.count("copy") > 1 or any(role == "copy" and i < last_recurrent
                                                    for i, role in enumerate(roles))
    if not roles or roles[0] != "embedding" or roles[-1] != "logits" or last_recurrent < 0 or misplaced_copy:
        raise UserError(f"not a char-RNN model: layers are {', '.join(roles) or 'none'}"
                        " (want embedding, recurrent layers, [copy attention,] logits)")
    return stages


def recurrent_stages(model: keras.Model) -> List[RecurrentStage]:
    return [s for s in layer_stack(model) if isinstance(s, RecurrentStage)]


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
    rnn_class = getattr(keras.layers, RECURRENT_KINDS[config.model_type].layer)
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
    recurrent = [s for s in stages if isinstance(s, RecurrentStage)]
    embedding = stages[0].layer
    embedding_dropout = stages[1].layer.rate if isinstance(stages[1], DropoutStage) else 0.0
    dropouts = [s.layer.rate for s in stages[2 if embedding_dropout else 1:] if isinstance(s, DropoutStage)]
    copy = next((s.layer for s in stages if isinstance(s, CopyStage)), None)
    return ModelConfig(
        vocab_size=embedding.input_dim,
        model_type=recurrent[0].kind.name,
        wordvec_size=embedding.output_dim,
        rnn_size=recurrent[0].layer.cell.units,
        num_layers=len(recurrent),
        dropout=dropouts[0] if dropouts else 0.0,
        batchnorm=any(isinstance(s, BatchNormStage) for s in stages),
        embedding_dropout=embedding_dropout,
        copy_memory=copy.memory_size if copy else 0,
        copy_heads=copy.num_heads if copy else ModelConfig.copy_heads,
        copy_head_size=copy.head_size if copy else ModelConfig.copy_head_size,
        copy_reset=copy.reset_rate if copy else ModelConfig.copy_reset,
    )


# --- the window form's carried state -------------------------------------------------------------------


def carried_variables(model: keras.Model) -> Dict[str, tf.Variable]:
    """Every stateful layer's carried state, by its checkpoint name (recurrent layers: h then c; then the
    copy attention's memory, which differs from its step-function states)."""
    return {name: v for stage in layer_stack(model) for name, v in stage.carried_variables().items()}


def reset_states(model: keras.Model) -> None:
    """keras.Model has no reset_states(); each stateful layer has reset_state()."""
    for stage in layer_stack(model):
        if stage.carried_variables():
            stage.layer.reset_state()


def get_states(model: keras.Model) -> List:
    """The carried state, as numpy arrays (copies), in carried_variables' order."""
    return [v.numpy() for v in carried_variables(model).values()]


def set_states(model: keras.Model, values: Sequence) -> None:
    variables = list(carried_variables(model).values())
    if len(variables) != len(values):
        raise ValueError(f"expected {len(variables)} state arrays, got {len(values)}")
    for variable, value in zip(variables, values):
        variable.assign(value)


# --- the step form -------------------------------------------------------------------------------------


def state_names(model: keras.Model) -> List[str]:
    """A description of each step-function state tensor, in order, e.g. 'lstm_0 h', 'lstm_0 c'."""
    return [name for stage in layer_stack(model) for name in stage.state_names]


def state_sizes(model: keras.Model) -> List[int]:
    """Width of each step-function state tensor, in order."""
    return [size for stage in layer_stack(model) for size in stage.state_sizes]


StepFn = Callable[[tf.Tensor, Tuple[tf.Tensor, ...]], Tuple[tf.Tensor, Tuple[tf.Tensor, ...]]]


def portable_layers(model: keras.Model) -> List[Dict[str, object]]:
    """The step form of every layer that does something in it, in order, as plain arrays (Stage.portable)."""
    return [form for form in (stage.portable() for stage in layer_stack(model)) if form is not None]


def make_step_fn(model: keras.Model) -> StepFn:
    """Returns step(ids (N,) int32, states tuple of (N, H_k)) -> (logits (N, V), new states tuple), each
    layer in its step form (Dropout is skipped, BatchNormalization uses its moving statistics)."""
    stages = layer_stack(model)

    def step(ids, states):
        x, states, new_states = ids, list(states), []
        for stage in stages:
            count = len(stage.state_parts)
            own, states = states[:count], states[count:]
            x, updated = stage.step(x, ids, own)
            new_states.extend(updated)
        return x, tuple(new_states)

    return step
