"""Everything kerascharrnn takes from other projects beyond their public API, in one place.

Each piece is checked by tests/test_upstream.py, so an upgrade that moves or changes one fails there,
naming it, instead of deep inside a training run or a server:

- TensorFlow: freezing a function's variables into constants (for TFLite); the coordination service
  that multi-worker training sets up (its heartbeat timeout); the message by which a collective says
  it lost its peer; the errors its loaders raise for a damaged artifact.
- Keras: the message by which safe mode refuses a Lambda layer; `keras.utils.get_file` raising a plain
  `Exception` for a failed download.
- uvicorn: its h11 protocol class, which bin/serve extends to answer malformed HTTP in JSON.
- torchfile: the reader class whose methods io/torch_file.py overrides to bound every read.

Importing this module imports none of them; each function imports what it needs.
"""

from __future__ import annotations

import json
import re
import sys
import zipfile
from typing import Callable, List, Optional, Tuple

# --- TensorFlow --------------------------------------------------------------------------------------


def freeze_variables(concrete_function):
    """The function with its variables replaced by constants (TensorFlow's non-public
    convert_variables_to_constants_v2): TFLite's converter drops un-frozen Keras 3 weights."""
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    return convert_variables_to_constants_v2(concrete_function)


def configure_coordination_service(jobs: List[Tuple[str, int]], leader: str, heartbeat_timeout_ms: int) -> None:
    """Sets up, before MultiWorkerMirroredStrategy does, the coordination service it would set up, but with
    our heartbeat timeout (the strategy keeps a service configured before it: collective_all_reduce_strategy.py).

    Args:
      jobs: (job name, task count) of every job of the cluster.
      leader: the task that runs the service, e.g. "/job:worker/replica:0/task:0".
      heartbeat_timeout_ms: how long a silent task may stay silent before it is declared lost.
    """
    from tensorflow.compiler.xla.tsl.protobuf import coordination_config_pb2
    from tensorflow.python.eager import context

    coordinated = [coordination_config_pb2.CoordinatedJob(name=name, num_tasks=count) for name, count in jobs]
    context.context().configure_coordination_service(
        service_type="standalone", service_leader=leader, heartbeat_timeout_in_ms=heartbeat_timeout_ms,
        coordinated_jobs=coordinated)


def lost_peer_errors() -> tuple:
    """The tf.errors types a collective raises when a peer dies or stops answering."""
    import tensorflow as tf

    return (tf.errors.UnavailableError, tf.errors.DeadlineExceededError, tf.errors.CancelledError,
            tf.errors.AbortedError)


def is_lost_peer(error: BaseException) -> bool:
    """Whether a TensorFlow error says a collective lost its peer: one of lost_peer_errors(), or an
    InternalError whose message speaks of the collective or its peer (TensorFlow gives no type for it)."""
    import tensorflow as tf

    if isinstance(error, lost_peer_errors()):
        return True
    text = str(error).lower()
    return isinstance(error, tf.errors.InternalError) and ("collective" in text or "peer" in text)


def damaged_file_errors() -> tuple:
    """What Keras, TensorFlow and LiteRT raise when they load a damaged or foreign model file: they
    raise many types, none of them for this alone. TensorFlow's own only where it is loaded (nothing else
    raises them; the lite install has no TensorFlow)."""
    from google.protobuf.message import DecodeError

    tf = sys.modules.get("tensorflow")
    return (OSError, ValueError, TypeError, KeyError, IndexError, AttributeError, RuntimeError, EOFError,
            zipfile.BadZipFile, json.JSONDecodeError, DecodeError) + ((tf.errors.OpError,) if tf else ())


# --- Keras -------------------------------------------------------------------------------------------


def is_safe_mode_refusal(error: BaseException) -> bool:
    """Whether keras.models.load_model(safe_mode=True) refused the file because it holds code (a Lambda
    layer): Keras says so only in a ValueError's message."""
    return isinstance(error, ValueError) and ("safe_mode" in str(error) or "Lambda" in str(error))


def rnn_inner_loop(layer, x, states, training: bool):
    """A Keras recurrent layer's loop over (N, T, D) with its state given, not its variables:
    `layer.inner_loop(sequences, initial_state, mask, training)` (Keras 3's RNN, not public API), the code its
    stateful call runs. Returns (outputs (N, T, H), new states)."""
    _, outputs, new_states = layer.inner_loop(x, list(states), mask=None, training=training)
    return outputs, new_states


def optimizer_variable_names(optimizer) -> dict:
    """The optimizer's variables by a name that holds across processes and Keras versions' own prefixes: the
    variable's path without the optimizer's name ("adam/lstm_0_lstm_cell_kernel_momentum" ->
    "lstm_0_lstm_cell_kernel_momentum"; Keras 3 names its slots so, not public API)."""
    return {v.path.split("/", 1)[-1]: v for v in optimizer.variables}


class DownloadError(OSError):
    """A download that failed (keras.utils.get_file's plain Exception, given a type)."""


def get_file(name: str, origin: str, file_hash: str, cache_dir: str, cache_subdir: str) -> str:
    """keras.utils.get_file, whose failed downloads (no network, HTTP errors) raise a plain `Exception`:
    those become DownloadError. A hash that does not match is Keras's ValueError, as it is."""
    import keras

    try:
        return keras.utils.get_file(name, origin, file_hash=file_hash, cache_dir=cache_dir, cache_subdir=cache_subdir)
    except ValueError:
        raise
    except Exception as e:  # noqa: BLE001 - Keras raises this very type; see the docstring
        if type(e) is not Exception:
            raise
        raise DownloadError(str(e)) from None


# --- uvicorn -----------------------------------------------------------------------------------------


def h5py_write_errors() -> tuple:
    """What h5py raises when a write fails: OSError, and RuntimeError from HDF5's C library when the file cannot
    grow or be flushed (e.g. "unable to extend file properly, errno = 27, error message = 'File too large'",
    raised as the file closes)."""
    return OSError, RuntimeError


def errno_of(error: BaseException) -> Optional[int]:
    """The errno of a failed write: an OSError's own, or the one HDF5 writes into its RuntimeError's text."""
    if isinstance(error, OSError):
        return error.errno
    match = re.search(r"errno = (\d+)", str(error))
    return int(match.group(1)) if match else None


def h11_protocol_class() -> type:
    """uvicorn's h11 HTTP protocol class (not public API), for bin/serve's subclass, which uses its
    `conn` (an h11.Connection), `transport`, `loop` and `client` attributes, and `send_400_response(msg)`,
    which uvicorn calls with a plain-text reason for a request h11 cannot parse."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    return H11Protocol


def keep_h11_error_reason(conn, on_error: Callable[[Exception], None]) -> None:
    """Calls on_error(h11's RemoteProtocolError) before uvicorn handles it: uvicorn drops the reason
    (which bin/serve puts in its JSON 400). Wraps the connection's next_event."""
    import h11

    next_event = conn.next_event

    def next_event_keeping_the_reason():
        try:
            return next_event()
        except h11.RemoteProtocolError as e:
            on_error(e)
            raise

    conn.next_event = next_event_keeping_the_reason


# --- torchfile ---------------------------------------------------------------------------------------


def torchfile_reader() -> tuple:
    """(torchfile.T7Reader, torchfile.T7ReaderException, torchfile.TYPE_TORCH). io/torch_file.py subclasses
    the reader and overrides read_obj, read_long, read_long_array, read_string and _read, using its `f`
    (the file) and `objects` (the back-reference table) attributes and read_int; ImportError if torchfile
    is missing."""
    import torchfile

    return torchfile.T7Reader, torchfile.T7ReaderException, torchfile.TYPE_TORCH
