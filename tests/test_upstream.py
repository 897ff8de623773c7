"""What kerascharrnn.upstream takes from other projects' internals still holds in the versions installed.
Each test fails with a message naming the piece that moved, so an upgrade that breaks one says so here."""

import inspect
import socket

import keras
import numpy as np
import pytest
import tensorflow as tf

from kerascharrnn import upstream


def _upstream_changed(piece: str) -> str:
    return f"upstream changed: {piece}; kerascharrnn/upstream.py must follow it"


def test_freeze_variables_turns_variables_into_constants():
    weight = tf.Variable([[2.0, 0.5]])
    concrete = tf.function(lambda x: tf.matmul(x, weight)).get_concrete_function(tf.TensorSpec([None, 1]))
    frozen = upstream.freeze_variables(concrete)
    assert not frozen.captured_inputs, _upstream_changed("convert_variables_to_constants_v2 left variables")
    np.testing.assert_allclose(frozen(tf.constant([[3.0]]))[0].numpy(), [[6.0, 1.5]])


def test_the_coordination_service_call_takes_our_arguments():
    from tensorflow.compiler.xla.tsl.protobuf import coordination_config_pb2
    from tensorflow.python.eager import context

    job = coordination_config_pb2.CoordinatedJob(name="worker", num_tasks=2)
    assert (job.name, job.num_tasks) == ("worker", 2), _upstream_changed("CoordinatedJob")
    parameters = inspect.signature(context.Context.configure_coordination_service).parameters
    wanted = {"service_type", "service_leader", "heartbeat_timeout_in_ms", "coordinated_jobs"}
    assert wanted <= set(parameters), _upstream_changed(f"configure_coordination_service lacks {wanted - set(parameters)}")


def test_lost_peer_errors_are_recognised():
    assert upstream.is_lost_peer(tf.errors.UnavailableError(None, None, "Socket closed"))
    assert upstream.is_lost_peer(tf.errors.InternalError(None, None, "Collective ops is aborted by: peer lost"))
    assert not upstream.is_lost_peer(tf.errors.InternalError(None, None, "a kernel failed"))
    assert not upstream.is_lost_peer(ValueError("collective"))


def test_damaged_artifacts_raise_one_of_the_expected_errors(tmp_path):
    (tmp_path / "saved_model.pb").write_bytes(b"\x0a\xff\xff garbage")
    with pytest.raises(upstream.damaged_file_errors()):
        tf.saved_model.load(str(tmp_path))
    (tmp_path / "m.keras").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(upstream.damaged_file_errors()):
        keras.models.load_model(tmp_path / "m.keras")


def test_safe_mode_refuses_a_lambda_layer_in_words_we_recognise(tmp_path):
    inputs = keras.Input((2,))
    keras.Model(inputs, keras.layers.Lambda(lambda x: x * 2)(inputs)).save(tmp_path / "lambda.keras")
    with pytest.raises(ValueError) as error:
        keras.models.load_model(tmp_path / "lambda.keras", safe_mode=True)
    assert upstream.is_safe_mode_refusal(error.value), _upstream_changed(f"Keras safe mode says: {error.value}")


def test_get_file_failures_become_download_errors(tmp_path):
    with socket.socket() as s:  # a port with nobody listening: the download fails at once, no network needed
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}/corpus.txt"
    with pytest.raises(Exception) as raw:
        keras.utils.get_file("corpus.txt", url, cache_dir=str(tmp_path), cache_subdir="raw")
    assert type(raw.value) is Exception, _upstream_changed(f"get_file now raises {type(raw.value).__name__}")
    with pytest.raises(upstream.DownloadError, match="127.0.0.1"):
        upstream.get_file("corpus.txt", url, None, str(tmp_path), "ours")


def test_uvicorn_h11_protocol_has_what_bin_serve_extends():
    import h11

    protocol = upstream.h11_protocol_class()
    assert list(inspect.signature(protocol.send_400_response).parameters) == ["self", "msg"], \
        _upstream_changed("H11Protocol.send_400_response")
    source = inspect.getsource(protocol)
    for attribute in ("self.conn", "self.transport", "self.client", "self.loop"):
        assert attribute in source, _upstream_changed(f"H11Protocol no longer has {attribute}")
    assert callable(getattr(h11.Connection, "next_event", None)), _upstream_changed("h11.Connection.next_event")
    seen = []
    conn = h11.Connection(h11.SERVER)
    upstream.keep_h11_error_reason(conn, seen.append)
    conn.receive_data(b"GARBAGE\r\n\r\n")
    with pytest.raises(h11.RemoteProtocolError):
        conn.next_event()
    assert seen and isinstance(seen[0], h11.RemoteProtocolError)


def test_torchfile_reader_has_what_torch_file_overrides():
    reader, reader_error, type_torch = upstream.torchfile_reader()
    for method in ("read_obj", "read_int", "read_long", "read_long_array", "read_string", "_read"):
        assert callable(getattr(reader, method, None)), _upstream_changed(f"torchfile.T7Reader.{method}")
    assert issubclass(reader_error, Exception) and isinstance(type_torch, int), _upstream_changed("torchfile constants")
    assert "self.objects" in inspect.getsource(reader) and "self.f" in inspect.getsource(reader), \
        _upstream_changed("T7Reader's f / objects attributes")


def test_errno_of_h5py_and_os_write_errors():
    """h5py raises RuntimeError with HDF5's text when a file cannot grow; the errno in that text is what tells a
    file-size limit from a full disk (tests/test_crafted.py drives the real one under `ulimit -f`)."""
    import errno

    assert upstream.errno_of(OSError(errno.ENOSPC, "No space left on device")) == errno.ENOSPC
    text = "Can't decrement id ref count (unable to extend file properly, errno = 27, error message = 'File too large')"
    assert upstream.errno_of(RuntimeError(text)) == errno.EFBIG
    assert upstream.errno_of(RuntimeError("something else")) is None
    assert RuntimeError in upstream.h5py_write_errors() and OSError in upstream.h5py_write_errors()


def test_a_recurrent_layers_inner_loop_is_its_stateful_call():
    layer = keras.layers.LSTM(3, return_sequences=True, stateful=True)
    x = np.random.default_rng(0).normal(size=(2, 4, 5)).astype(np.float32)
    called = np.asarray(layer(x))  # from zero state
    outputs, states = upstream.rnn_inner_loop(layer, x, [np.zeros((2, 3), np.float32)] * 2, training=False)
    np.testing.assert_allclose(np.asarray(outputs), called, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(states[0]), np.asarray(layer.states[0]), rtol=1e-5, atol=1e-6)


def test_optimizer_slots_are_named_without_the_optimizers_name():
    weight = keras.Variable(np.zeros((2, 2), "float32"), name="kernel")
    optimizer = keras.optimizers.Adam()
    optimizer.build([weight])
    names = upstream.optimizer_variable_names(optimizer)
    assert "iteration" in names and any(n.endswith("kernel_momentum") for n in names)
    assert not any(n.startswith(optimizer.name + "/") for n in names)
