"""Helpers that only tests need (kept out of the library)."""

import json
import os

import keras
import tensorflow as tf

from kerascharrnn.io import artifacts
from kerascharrnn.models import stack


def zero_states(model: keras.Model, batch: int):
    """Zero state tensors for the model's step function."""
    return tuple(tf.zeros((batch, size), tf.float32) for size in stack.state_sizes(model))


def cudnn_eligible(layer) -> bool:
    """Keras's conditions for running an LSTM/GRU on the cuDNN kernel when a GPU is present
    (keras/src/layers/rnn/lstm.py and gru.py, TensorFlow backend; see ../shared/TF-NOTES.md)."""
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


def graph_ops(saved_model_dir: str) -> set:
    """Every op type in a SavedModel's graph, its function library included."""
    from tensorflow.core.protobuf import saved_model_pb2

    proto = saved_model_pb2.SavedModel()
    with open(os.path.join(saved_model_dir, "saved_model.pb"), "rb") as f:
        proto.ParseFromString(f.read())
    ops = set()
    for meta_graph in proto.meta_graphs:
        ops.update(node.op for node in meta_graph.graph_def.node)
        for function in meta_graph.graph_def.library.function:
            ops.update(node.op for node in function.node_def)
    return ops


def read_export_info(version_dir: str) -> dict:
    with open(os.path.join(version_dir, artifacts.EXTRA_DIR, artifacts.INFO_FILE), encoding="utf-8") as f:
        return json.load(f)
