"""The char-RNN as stock Keras layers, and a single-step function built from the same layers' cells.

Model: Embedding -> num_layers x (LSTM | GRU | SimpleRNN [-> BatchNormalization] [-> Dropout]) -> Dense,
the stack of torch-rnn's LanguageModel. Only stock layers, so `keras.models.load_model(path)` needs no
custom objects. LSTM/GRU keep Keras's cuDNN conditions (see `cudnn_eligible`).

The step function `(ids, states) -> (logits, states)` calls each recurrent layer's *cell* with explicit
state tensors: no stateful variables (concurrent callers do not share state), any batch size, and no
whole-sequence RNN op (a whole-sequence LSTM traced on a GPU bakes in CudnnRNNV3, which has no CPU
kernel; the cells are plain matmuls).
"""

from __future__ import annotations

from typing import Callable, List, Sequence, Tuple

import keras
import tensorflow as tf

from kerascharrnn.config import ModelConfig

_RNN_CLASSES = {"lstm": keras.layers.LSTM, "gru": keras.layers.GRU, "rnn": keras.layers.SimpleRNN}


def build_model(config: ModelConfig, batch_size: int) -> keras.Model:
    """Builds the stateful training model.

    Args:
      config: the architecture.
      batch_size: N, fixed because stateful layers keep one state row per stream.

    Returns:
      A keras.Model mapping int32 ids (N, T) to logits (N, T, V); T may vary between calls.
    """
    config.validate()
    ids = keras.Input(batch_shape=(batch_size, None), dtype="int32", name="ids")
    x = keras.layers.Embedding(config.vocab_size, config.wordvec_size, name="embedding")(ids)  # (N, T, D)
    for i in range(config.num_layers):
        rnn_class = _RNN_CLASSES[config.model_type]
        # The defaults (tanh/sigmoid, use_bias, no recurrent dropout, unroll=False and GRU reset_after)
        # are exactly what cuDNN needs; they are left alone on purpose.
        x = rnn_class(config.rnn_size, return_sequences=True, stateful=True, name=f"{config.model_type}_{i}")(x)
        if config.batchnorm:
            x = keras.layers.BatchNormalization(name=f"batchnorm_{i}")(x)
        if config.dropout > 0:
            x = keras.layers.Dropout(config.dropout, name=f"dropout_{i}")(x)
    logits = keras.layers.Dense(config.vocab_size, name="logits")(x)  # (N, T, V)
    return keras.Model(ids, logits, name="charrnn")


def rnn_layers(model: keras.Model) -> List[keras.layers.RNN]:
    return [layer for layer in model.layers if isinstance(layer, keras.layers.RNN)]


def reset_states(model: keras.Model) -> None:
    """keras.Model has no reset_states(); each stateful layer has reset_state()."""
    for layer in rnn_layers(model):
        layer.reset_state()


def get_states(model: keras.Model) -> List:
    """The carried state of every recurrent layer, as numpy arrays (copies)."""
    return [v.numpy() for layer in rnn_layers(model) for v in layer.states]


def set_states(model: keras.Model, values: Sequence) -> None:
    variables = [v for layer in rnn_layers(model) for v in layer.states]
    if len(variables) != len(values):
        raise ValueError(f"expected {len(variables)} state arrays, got {len(values)}")
    for variable, value in zip(variables, values):
        variable.assign(value)


def cudnn_eligible(layer) -> bool:
    """Keras's conditions for running an LSTM/GRU on the cuDNN kernel when a GPU is present."""
    if not isinstance(layer, (keras.layers.LSTM, keras.layers.GRU)):
        return False
    conditions = [
        layer.use_cudnn in ("auto", True),
        layer.cell.activation is keras.activations.tanh,
        layer.cell.recurrent_activation is keras.activations.sigmoid,
        layer.cell.recurrent_dropout == 0,
        not layer.unroll,
        layer.cell.use_bias,
    ]
    if isinstance(layer, keras.layers.GRU):
        conditions.append(layer.cell.reset_after)
    return all(conditions)


def model_config_of(model: keras.Model) -> ModelConfig:
    """Recovers the ModelConfig from a (loaded) model's layers."""
    rnns = rnn_layers(model)
    kinds = {keras.layers.LSTM: "lstm", keras.layers.GRU: "gru", keras.layers.SimpleRNN: "rnn"}
    embedding = next(l for l in model.layers if isinstance(l, keras.layers.Embedding))
    dropouts = [l.rate for l in model.layers if isinstance(l, keras.layers.Dropout)]
    return ModelConfig(
        vocab_size=embedding.input_dim,
        model_type=kinds[type(rnns[0])],
        wordvec_size=embedding.output_dim,
        rnn_size=rnns[0].cell.units,
        num_layers=len(rnns),
        dropout=dropouts[0] if dropouts else 0.0,
        batchnorm=any(isinstance(l, keras.layers.BatchNormalization) for l in model.layers),
    )


def _num_states(layer) -> int:
    size = layer.cell.state_size
    return len(size) if isinstance(size, (list, tuple)) else 1


def state_sizes(model: keras.Model) -> List[int]:
    """Width of each explicit state tensor, in step-function order (LSTM: h then c per layer)."""
    sizes = []
    for layer in rnn_layers(model):
        size = layer.cell.state_size
        sizes.extend(size if isinstance(size, (list, tuple)) else [size])
    return sizes


def state_names(model: keras.Model) -> List[str]:
    """A description of each state tensor, e.g. 'lstm_0 h', 'lstm_0 c'."""
    names = []
    for layer in rnn_layers(model):
        parts = ["h", "c"] if isinstance(layer, keras.layers.LSTM) else ["h"]
        names.extend(f"{layer.name} {p}" for p in parts)
    return names


StepFn = Callable[[tf.Tensor, Tuple[tf.Tensor, ...]], Tuple[tf.Tensor, Tuple[tf.Tensor, ...]]]


def make_step_fn(model: keras.Model) -> StepFn:
    """Returns step(ids (N,) int32, states tuple of (N, H_k)) -> (logits (N, V), new states tuple).

    Built from the layers in model order; recurrent layers run their cell once, Dropout is skipped
    and BatchNormalization uses its moving statistics (inference).
    """
    layers = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]

    def step(ids, states):
        x = ids
        states = list(states)
        new_states = []
        for layer in layers:
            if isinstance(layer, keras.layers.RNN):
                count = _num_states(layer)
                layer_states, states = states[:count], states[count:]
                x, updated = layer.cell(x, layer_states, training=False)
                new_states.extend(updated)
            elif isinstance(layer, keras.layers.Dropout):
                continue
            else:  # layers built on (N, T, ...) inputs: give them a time axis of one
                x = layer(x[:, None], training=False)[:, 0]
        return x, tuple(new_states)

    return step


def zero_states(model: keras.Model, batch: int) -> Tuple[tf.Tensor, ...]:
    return tuple(tf.zeros((batch, size), tf.float32) for size in state_sizes(model))


def count_params(model: keras.Model) -> int:
    return int(model.count_params())
