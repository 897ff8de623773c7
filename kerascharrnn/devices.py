"""Device and seed set-up shared by every tool that runs TensorFlow."""

from __future__ import annotations

import os
from typing import Optional

import keras
import tensorflow as tf

from kerascharrnn import resources
from kerascharrnn.errors import UserError
from kerascharrnn.errors import setting as ref


def configure(gpu: int, seed: Optional[int] = None, sampling: bool = False) -> None:
    """--gpu -1 hides GPUs, --gpu k keeps only GPU k; --seed seeds every RNG and makes ops deterministic;
    XLA's CPU compiler gets the settings measured best for these models (`configure_xla`); `sampling`
    (a process that runs the model a character at a time: bin/sample, bin/serve) runs each op
    single-threaded (`configure_sampling_threads`)."""
    check_floatx()
    configure_xla()
    if sampling:
        configure_sampling_threads()
    if gpu < 0:
        tf.config.set_visible_devices([], "GPU")
    else:
        gpus = tf.config.list_physical_devices("GPU")
        if gpus and gpu >= len(gpus):
            raise UserError(f"{ref('gpu')} {gpu}: TensorFlow sees {len(gpus)} GPU(s)")
        if gpus:
            tf.config.set_visible_devices(gpus[gpu], "GPU")
    if seed is not None:
        seed_everything(seed)
        tf.config.experimental.enable_op_determinism()


def seed_everything(value: int) -> None:
    """Seeds every RNG (Python's, NumPy's, TensorFlow's, Keras's), as at the start of a seeded run."""
    keras.utils.set_random_seed(value)


def check_floatx() -> None:
    """The models train, sample and export in float32; a keras.json saying otherwise is named (not the
    learning rate blamed for the NaN that float16 gives)."""
    floatx = keras.config.floatx()
    if floatx != "float32":
        raise UserError(f"Keras's floatx is {floatx} (\"floatx\" in keras.json, under $KERAS_HOME or ~/.keras):"
                        " kerascharrnn runs in float32; set it to \"float32\" there")


def configure_sampling_threads() -> bool:
    """One intra-op thread: a sampling step's ops are too small to share ((N, H) @ (H, 4H) at N = 1..50),
    and handing each to a pool thread cost more than it saved: on a 2-core CPU (2 x 128 LSTM) the graph
    loop without XLA (bin/serve's) ran ~2x faster, bin/sample's XLA loop 10-15% at batch 1 and 25-40% at
    batch 50 (docs/benchmarks.md, round 3; training keeps the default, which it needs). Returns False
    where TensorFlow had already started in this process (its thread pools are fixed by then)."""
    try:
        tf.config.threading.set_intra_op_parallelism_threads(1)
    except RuntimeError:  # a caller's TensorFlow is running: its pools stay as they are
        return False
    return True


def on_gpu() -> bool:
    return bool(tf.config.list_logical_devices("GPU"))


def peak_memory_bytes() -> int:
    """The peak memory of what trains: the first GPU's, where there is one, else this process's RSS."""
    if on_gpu():
        return int(tf.config.experimental.get_memory_info("GPU:0")["peak"])
    return resources.peak_rss_bytes()


# XLA's CPU code generation for these models' small recurrent loops, measured on a 2-core CPU
# (docs/benchmarks.md, round 3): with XLA's legacy fusion emitters instead of its newer MLIR-based ones,
# the training step ran as fast or up to ~15% faster, sampling at batch 50 ~20-35% faster, and the
# process grew 70-90 MB less (most of it the compiler's own memory, which the process keeps).
XLA_CPU_FLAGS = {"xla_cpu_use_fusion_emitters": "false"}
# XLA ends the process on a flag its build does not know, so the flags are set only where they were
# checked to exist (tests/test_devices.py compiles under them in a fresh process).
XLA_CPU_FLAGS_CHECKED_IN = ("2.21",)


def configure_xla(environ=os.environ) -> bool:
    """Adds XLA_CPU_FLAGS to XLA_FLAGS, where this TensorFlow's XLA is known to take them, without
    overriding a value the user set. XLA reads XLA_FLAGS at its first compilation, so call this before
    anything is compiled. Returns whether the flags are in XLA_FLAGS now."""
    if ".".join(tf.__version__.split(".")[:2]) not in XLA_CPU_FLAGS_CHECKED_IN:
        return False
    current = environ.get("XLA_FLAGS", "")
    given = {word.lstrip("-").split("=")[0] for word in current.split()}
    added = [f"--{name}={value}" for name, value in XLA_CPU_FLAGS.items() if name not in given]
    if added:
        environ["XLA_FLAGS"] = " ".join([current, *added]).strip()
    return True
