"""What a model or a sampling run will need, estimated from its config before anything is built.

A model too large for the machine is refused with the estimate, in a second, instead of swapping or
dying in TensorFlow minutes later; a single weight matrix beyond what TensorFlow's int32-indexed
kernels take is refused too. No TensorFlow here.
"""

from __future__ import annotations

import os
import sys
from typing import Optional, Tuple

from kerascharrnn.config import RECURRENT_KINDS, ModelConfig
from kerascharrnn.errors import UserError
from kerascharrnn.errors import setting as ref

_FLOAT_BYTES = 4
_INT32_MAX = 2**31 - 1
# Adam training holds each weight 4 times: the weight, its gradient and the two moment slots.
_TRAINING_COPIES = 4


def parameter_count(config: ModelConfig) -> int:
    """Exactly what the Keras model built from `config` holds (model.build_model's layers)."""
    V, D, H, g = config.vocab_size, config.wordvec_size, config.rnn_size, RECURRENT_KINDS[config.model_type].gates
    biases = 2 * g * H if config.model_type == "gru" else g * H  # Keras GRU: reset_after, two bias rows
    total = V * D
    for layer in range(config.num_layers):
        inputs = D if layer == 0 else H
        total += g * H * (inputs + H) + biases
        if config.batchnorm:
            total += 4 * H  # gamma, beta, moving mean, moving variance
    if config.copy_memory:  # copy_attention.py: query and key (H, W), value embeddings (V, W), output (W, H)
        width = config.copy_heads * config.copy_head_size
        total += 3 * H * width + V * width
    return total + H * V + V


def training_state_bytes(config: ModelConfig, batch_size: int) -> int:
    """The most a checkpoint's .state.npz can hold for this model and batch: Adam's two moments per weight, the
    step counters, and each stream's carried state (every layer's h and c, the copy memory), with room to spare."""
    H = config.rnn_size
    carried = 4 * H * config.num_layers
    if config.copy_memory:
        carried += config.copy_memory * (2 * config.copy_heads * config.copy_head_size + 2)
    return 2 * 4 * (3 * parameter_count(config) + batch_size * carried) + (1 << 20)


def largest_tensor(config: ModelConfig, batch_size: int, seq_length: int) -> int:
    """Elements of the largest single tensor of a training step (a weight or the (N, T, V) logits)."""
    V, D, H, g = config.vocab_size, config.wordvec_size, config.rnn_size, RECURRENT_KINDS[config.model_type].gates
    return max(V * D, max(D, H) * g * H, H * V, batch_size * seq_length * max(V, g * H))


def training_bytes(config: ModelConfig, batch_size: int, seq_length: int) -> int:
    """A lower bound of a training run's memory: weights with gradients and Adam slots, and the
    activations back-propagation keeps for one (N, T) minibatch, with their gradients."""
    V, D, H, g = config.vocab_size, config.wordvec_size, config.rnn_size, RECURRENT_KINDS[config.model_type].gates
    per_token = D + config.num_layers * (g + 2) * H + 2 * V  # embedding, gates + h + c per layer, logits
    activations = 2 * batch_size * seq_length * per_token  # and, in the backward pass, their gradients
    return _FLOAT_BYTES * (_TRAINING_COPIES * parameter_count(config) + activations)


def available_memory() -> Optional[int]:
    """Bytes the kernel says can be allocated without swapping (MemAvailable), or None if unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def peak_rss_bytes() -> int:
    """This process's peak resident memory in bytes (0 where the platform does not say)."""
    try:
        import resource
    except ImportError:  # pragma: no cover - Windows
        return 0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def cpu_cores() -> int:
    """The CPU cores this process may run on (its affinity mask, not the machine's count)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _gib(n: int) -> str:
    return f"{n / 2**30:,.1f} GiB"


def check_training_fits(config: ModelConfig, batch_size: int, seq_length: int,
                        available: Optional[int] = None) -> None:
    """Raises UserError, with the estimate, if training `config` cannot fit this machine's memory."""
    params = parameter_count(config)
    largest = largest_tensor(config, batch_size, seq_length)
    size = f"{config.model_type} {config.num_layers} x {config.rnn_size} (embedding {config.wordvec_size})"
    if largest > _INT32_MAX:
        raise UserError(f"{size}, {ref('batch_size')} {batch_size}, {ref('seq_length')} {seq_length}: one tensor"
                        f" would hold {largest:,} elements, beyond the {_INT32_MAX:,} TensorFlow's kernels index;"
                        f" lower {ref('rnn_size')} / {ref('wordvec_size')} / {ref('batch_size')} / {ref('seq_length')}")
    need = training_bytes(config, batch_size, seq_length)
    available = available_memory() if available is None else available
    if available is not None and need > available:
        raise UserError(f"{size}: {params:,} parameters; training needs at least {_gib(need)} of memory"
                        f" (weights, gradients, Adam slots, activations of one minibatch), and {_gib(available)}"
                        f" is available; lower {ref('rnn_size')}, {ref('num_layers')}, {ref('batch_size')} or"
                        f" {ref('seq_length')}")


def inference_bytes(config: ModelConfig, rows: int, steps: int) -> int:
    """A lower bound of the memory of running `config` forward over (rows, steps) tokens: the weights
    and each token's embedding, gates, states and logits."""
    V, D, H, g = config.vocab_size, config.wordvec_size, config.rnn_size, RECURRENT_KINDS[config.model_type].gates
    per_token = D + config.num_layers * (g + 2) * H + 2 * V
    return _FLOAT_BYTES * (parameter_count(config) + rows * steps * per_token)


def check_inference_fits(config: ModelConfig, rows: int, steps: int, what: str,
                         available: Optional[int] = None) -> None:
    """Raises UserError, with the estimate, if running the model over (rows, steps) cannot fit in memory."""
    need = inference_bytes(config, rows, steps)
    available = available_memory() if available is None else available
    if available is not None and need > available:
        raise UserError(f"{what}: {rows:,} rows x {steps:,} steps of this model ({parameter_count(config):,}"
                        f" parameters, embedding {config.wordvec_size}, vocabulary {config.vocab_size}) need at least"
                        f" {_gib(need)} of memory and {_gib(available)} is available")


def check_sampling_fits(num_samples: int, length: int, available: Optional[int] = None,
                        flags: Tuple[str, str] = (ref("num_samples"), ref("length"))) -> None:
    """Raises UserError if num_samples texts of `length` characters cannot be held in memory.

    The sampler keeps every row's ids (int32) and the decoded text (up to 4 bytes a character, plus
    Python's str), so about 12 bytes a character in all. `flags` name the two numbers in the message.
    """
    need = 12 * num_samples * length
    available = available_memory() if available is None else available
    if available is not None and need > available // 2:
        raise UserError(f"{flags[0]} {num_samples} x {flags[1]} {length} needs about {_gib(need)} of memory;"
                        f" {_gib(available)} is available (at most half is used); lower {flags[1]} or {flags[0]}")
