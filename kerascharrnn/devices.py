"""Device and seed set-up shared by every tool that runs TensorFlow."""

from __future__ import annotations

from typing import Optional

import keras
import tensorflow as tf

from kerascharrnn.errors import UserError


def configure(gpu: int, seed: Optional[int] = None) -> None:
    """--gpu -1 hides GPUs, --gpu k keeps only GPU k; --seed seeds every RNG and makes ops deterministic."""
    if gpu < 0:
        tf.config.set_visible_devices([], "GPU")
    else:
        gpus = tf.config.list_physical_devices("GPU")
        if gpus and gpu >= len(gpus):
            raise UserError(f"--gpu {gpu}: TensorFlow sees {len(gpus)} GPU(s)")
        if gpus:
            tf.config.set_visible_devices(gpus[gpu], "GPU")
    if seed is not None:
        keras.utils.set_random_seed(seed)
        tf.config.experimental.enable_op_determinism()


def on_gpu() -> bool:
    return bool(tf.config.list_logical_devices("GPU"))
