"""TensorFlow Serving's warm-up file: requests the server replays when it loads a model version.

TF Serving reads `assets.extra/tf_serving_warmup_requests`, a TFRecord file of serialized
`tensorflow.serving.PredictionLog` messages, and runs each before it serves the version, so whatever a
first request would pay for (here: XLA compiling an `--xla` export's loop) is paid at load time.

The messages are written here in protobuf's wire format by hand: the Python package holding their
classes (tensorflow-serving-api) requires an older protobuf than TensorFlow's own. Only the fields a
warm-up uses are written, with the field numbers of tensorflow_serving/apis/*.proto:

    PredictionLog { PredictLog predict_log = 6; }
    PredictLog    { PredictRequest request = 1; }
    PredictRequest { ModelSpec model_spec = 1; map<string, TensorProto> inputs = 2; }
    ModelSpec     { string signature_name = 3; }

The tensors are TensorFlow's own TensorProto (tensorflow/core/framework/tensor.proto), serialized by
TensorFlow. tests/test_export.py reads the file back through protobuf descriptors of those messages.
"""

from typing import Dict, Iterable

import numpy as np
import tensorflow as tf

FILE_NAME = "tf_serving_warmup_requests"  # in assets.extra/

_LENGTH_DELIMITED = 2  # protobuf wire type of strings and messages


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        out.append(low | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """One length-delimited field (a string or an embedded message)."""
    return _varint(number << 3 | _LENGTH_DELIMITED) + _varint(len(payload)) + payload


def predict_log(signature_name: str, inputs: Dict[str, np.ndarray]) -> bytes:
    """A serialized PredictionLog holding one PredictRequest for `signature_name`."""
    model_spec = _field(3, signature_name.encode("utf-8"))
    entries = b"".join(_field(2, _field(1, name.encode("utf-8")) + _field(2, tf.make_tensor_proto(value)
                                                                             .SerializeToString()))
                       for name, value in inputs.items())
    request = _field(1, model_spec) + entries
    return _field(6, _field(1, request))


def write(path: str, logs: Iterable[bytes]) -> None:
    with tf.io.TFRecordWriter(path) as writer:
        for log in logs:
            writer.write(log)
