"""devices: XLA's CPU flags (set without overriding the user's, and taken by this TensorFlow's XLA)."""

import os
import subprocess
import sys

import numpy as np

from kerascharrnn import devices


def test_configure_xla_adds_the_flags_and_keeps_the_users(monkeypatch):
    monkeypatch.setattr(devices.tf, "__version__", devices.XLA_CPU_FLAGS_CHECKED_IN[0] + ".3")
    environ = {}
    assert devices.configure_xla(environ)
    assert environ["XLA_FLAGS"] == "--xla_cpu_use_fusion_emitters=false"
    assert devices.configure_xla(environ) and environ["XLA_FLAGS"] == "--xla_cpu_use_fusion_emitters=false"
    environ = {"XLA_FLAGS": "--xla_dump_to=/tmp/x --xla_cpu_use_fusion_emitters=true"}
    assert devices.configure_xla(environ)
    assert environ["XLA_FLAGS"] == "--xla_dump_to=/tmp/x --xla_cpu_use_fusion_emitters=true"  # the user's
    environ = {"XLA_FLAGS": "--xla_dump_to=/tmp/x"}
    devices.configure_xla(environ)
    assert environ["XLA_FLAGS"] == "--xla_dump_to=/tmp/x --xla_cpu_use_fusion_emitters=false"


def test_configure_xla_leaves_an_unchecked_tensorflow_alone(monkeypatch):
    monkeypatch.setattr(devices.tf, "__version__", "9.99.0")  # its XLA might end the process on the flag
    environ = {"XLA_FLAGS": "--xla_dump_to=/tmp/x"}
    assert not devices.configure_xla(environ)
    assert environ == {"XLA_FLAGS": "--xla_dump_to=/tmp/x"}


COMPILE_UNDER_THE_FLAGS = """
import os, sys
import numpy as np
import tensorflow as tf
from kerascharrnn import devices
applied = devices.configure_xla()
x = tf.constant(np.linspace(-2, 2, 64, dtype=np.float32).reshape(4, 16))
w = tf.constant(np.linspace(-1, 1, 16 * 64, dtype=np.float32).reshape(16, 64))
step = tf.function(lambda x: tf.sigmoid(tf.matmul(x, w)[:, :16]) * tf.tanh(tf.matmul(x, w)[:, 16:32]),
                   jit_compile=True)
np.save(sys.argv[1], step(x).numpy())
print(applied, os.environ.get("XLA_FLAGS", ""))
"""


def test_this_tensorflows_xla_compiles_under_the_flags(tmp_path):
    """XLA aborts the process on a flag it does not know: a fresh process sets them and compiles."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    done = subprocess.run([sys.executable, "-c", COMPILE_UNDER_THE_FLAGS, str(tmp_path / "out.npy")],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    applied, *flags = done.stdout.split()
    if applied == "True":
        assert flags == ["--xla_cpu_use_fusion_emitters=false"]
    x = np.linspace(-2, 2, 64, dtype=np.float32).reshape(4, 16)
    z = x @ np.linspace(-1, 1, 16 * 64, dtype=np.float32).reshape(16, 64)
    expected = 1 / (1 + np.exp(-z[:, :16])) * np.tanh(z[:, 16:32])
    np.testing.assert_allclose(np.load(tmp_path / "out.npy"), expected, rtol=1e-5, atol=1e-6)


SAMPLING_SET_UP = """
import sys
import tensorflow as tf
from kerascharrnn import devices
if sys.argv[1] == "first":
    devices.configure(-1, sampling=True)
tf.constant(1.0) + 1.0  # TensorFlow starts: its thread pools are fixed from here on
print(tf.config.threading.get_intra_op_parallelism_threads(), devices.configure_sampling_threads())
"""


def test_sampling_processes_run_ops_on_one_intra_op_thread():
    def run(when):
        done = subprocess.run([sys.executable, "-c", SAMPLING_SET_UP, when], capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        return done.stdout.split()

    assert run("first") == ["1", "True"]
    # TensorFlow already running with its default pools (a caller's): left as they are, no exception
    assert run("late") == ["0", "False"]
