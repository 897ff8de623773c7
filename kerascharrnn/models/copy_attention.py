"""Copy attention: the top recurrent layer's output attends over a memory of recent (state, next character) pairs.

Why: a recurrent state cannot copy a word it saw a few lines up. In tiny-shakespeare's last 10% (The
Taming of the Shrew) the speakers' names never head a speech in the training text, and a static LSTM pays
3.4 nats per character of speaker headings there against 1.45 on the speeches (docs/quality.md). A
transformer copies such names from its context; this layer gives the LSTM the same mechanism cheaply.

For every earlier position j the memory holds a key, computed from the top layer's output h_{j-1}
(which summarises the text before j), and a value, an embedding of the character x_j that followed it.
At position t the query from h_t scores the last `memory_size` keys: where the text before t resembles the
text before some j (a name's first letters after a blank line), the layer adds "x_j comes next" to h_t.
The layer's output is h_t + attention @ output_kernel, its output kernel starts at zero (the layer starts as
the identity). A sentinel slot with key and value 0 is always present, so the attention can attend to
nothing (a stream's first character has no memory yet). Keys carry no position: a memory slot is a
set member, which lets the step form keep it as a ring buffer.

Two forms, the same numbers:
  - call([outputs (N, T, H), ids (N, T)]): training and evaluation over windows, stateful like the
    recurrent layers (the memory of the last `memory_size` outputs and ids carries across calls; its
    variables are not weights and are not saved in the .keras file);
  - step(output (N, H), ids (N,), states): one character with explicit float states (previous output,
    step count, keys and values ring buffers), for sampling, export and serving.
Each position sees exactly the last `memory_size` pairs in both forms, so a loss does not depend on the
window length it was computed with.

In training a stream's memory is short only at the stream's start, a few times an epoch; sampling after a
short prompt lives there, and a model that never learnt it repeats words ("God God God"). `reset_rate`
empties each stream's memory at the start of a training window with that chance (like dropout: training
only, from the layer's seed generator, so a seeded run and its resume repeat it exactly).

The layer is registered with Keras under "kerascharrnn": loading a model that has it needs
`import kerascharrnn.copy_attention` first (plain char-RNNs keep loading with keras.models.load_model alone).
"""

from __future__ import annotations

import math
from typing import List, Sequence, Tuple

import keras
import tensorflow as tf

STATE_PARTS = ("previous_output", "count", "keys", "values")  # the step form's states
MEMORY_PARTS = ("outputs", "ids", "count")  # the window form's carried variables, CopyAttention.states


@keras.saving.register_keras_serializable(package="kerascharrnn")
class CopyAttention(keras.layers.Layer):
    """Attention over a carried memory of (top-layer output, next character) pairs; see the module docstring.

    Args:
      vocab_size: V, for the value embeddings.
      memory_size: M, pairs attended to at every position.
      num_heads, head_size: the attention's heads and their width (keys, queries and values).
      reset_rate: in training, the chance that a stream's memory starts a window empty.
      seed: for the resets' seed generator (None: from keras.utils.set_random_seed, as Dropout).
    """

    def __init__(self, vocab_size: int, memory_size: int, num_heads: int = 4, head_size: int = 32,
                 reset_rate: float = 0.0, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.vocab_size = vocab_size
        self.memory_size = memory_size
        self.num_heads = num_heads
        self.head_size = head_size
        self.reset_rate = reset_rate
        self.seed = seed
        # only when used: layers saved without resets keep exactly their variables
        self.seed_generator = keras.random.SeedGenerator(seed) if reset_rate > 0 else None
        self._memory = None  # tf.Variables, not Keras weights: carried state, never saved

    @property
    def width(self) -> int:
        """C = num_heads * head_size."""
        return self.num_heads * self.head_size

    def build(self, input_shape):
        outputs_shape, _ = input_shape
        batch_size, units = outputs_shape[0], outputs_shape[-1]
        self.units = units
        self.query_kernel = self.add_weight(shape=(units, self.width), initializer="glorot_uniform",
                                            name="query_kernel")
        self.key_kernel = self.add_weight(shape=(units, self.width), initializer="glorot_uniform", name="key_kernel")
        self.value_embeddings = self.add_weight(shape=(self.vocab_size, self.width),
                                                initializer=keras.initializers.RandomNormal(stddev=0.1),
                                                name="value_embeddings")
        self.output_kernel = self.add_weight(shape=(self.width, units), initializer="zeros", name="output_kernel")
        if batch_size is not None:
            self._memory = (tf.Variable(tf.zeros([batch_size, self.memory_size, units]), trainable=False),
                            tf.Variable(tf.zeros([batch_size, self.memory_size], tf.int32), trainable=False),
                            tf.Variable(tf.zeros([batch_size], tf.int32), trainable=False))

    @property
    def states(self) -> List[tf.Variable]:
        """The carried memory: outputs (N, M, H), ids (N, M), valid count (N,); as a stateful RNN's states."""
        return list(self._memory) if self._memory is not None else []

    def reset_state(self) -> None:
        for variable in self.states:
            variable.assign(tf.zeros_like(variable))

    def call(self, inputs, training=False):
        outputs, ids = inputs
        result, new_memory = self.attend_window(outputs, tf.cast(ids, tf.int32), *self.memory_for_window(training))
        for variable, value in zip(self._memory, new_memory):
            variable.assign(value)
        return result

    def memory_for_window(self, training=False):
        """The carried memory a window starts from: (outputs, ids, count), the count set to 0 in the
        streams whose memory this window empties (in training, with chance reset_rate each)."""
        if self._memory is None:
            raise ValueError("CopyAttention carries memory across calls: build it with a fixed batch size")
        memory_outputs, memory_ids, count = (tf.convert_to_tensor(v) for v in self._memory)
        if training and self.seed_generator is not None:
            kept = keras.random.uniform(tf.shape(count), seed=self.seed_generator) >= self.reset_rate
            count = tf.where(kept, count, tf.zeros_like(count))
        return memory_outputs, memory_ids, count

    def attend_window(self, outputs, ids, memory_outputs, memory_ids, count):
        """The window form with explicit memory: returns (outputs + attention, (memory_outputs, memory_ids, count))."""
        memory_size = self.memory_size
        steps = tf.shape(outputs)[1]
        all_outputs = tf.concat([memory_outputs, outputs], axis=1)  # (N, M+T, H)
        all_ids = tf.concat([memory_ids, ids], axis=1)
        # pair i: key from all_outputs[i], value the character after it, all_ids[i + 1]
        keys = self._heads(tf.matmul(all_outputs[:, :-1], self.key_kernel))  # (N, M+T-1, heads, size)
        values = self._heads(tf.gather(self.value_embeddings, all_ids[:, 1:]))
        queries = self._heads(tf.matmul(outputs, self.query_kernel))  # (N, T, heads, size)
        scores = tf.einsum("nthd,nihd->nhti", queries, keys) / math.sqrt(self.head_size)
        pair = tf.range(memory_size + steps - 1)[None, :]
        position = tf.range(steps)[:, None]
        # query t sees the last M pairs before it (i in [t, M+t-1]) whose key output exists
        in_band = (pair >= position) & (pair <= memory_size + position - 1)  # (T, M+T-1)
        exists = pair >= memory_size - count[:, None]  # (N, M+T-1)
        visible = in_band[None, None] & exists[:, None, None, :]
        context = self._attend(scores, visible, values, "nhti,nihd->nthd")
        result = outputs + tf.matmul(tf.reshape(context, tf.concat([tf.shape(outputs)[:2], [self.width]], 0)),
                                     self.output_kernel)
        new_memory = (tf.stop_gradient(all_outputs[:, -memory_size:]), all_ids[:, -memory_size:],
                      tf.minimum(count + steps, memory_size))
        return result, new_memory

    # --- the one-character form ---

    def state_sizes(self) -> List[int]:
        return [self.units, 1, self.memory_size * self.width, self.memory_size * self.width]

    def step(self, output, ids, states: Sequence[tf.Tensor]) -> Tuple[tf.Tensor, List[tf.Tensor]]:
        """One character: output (N, H) of the top layer at t, ids (N,) the character fed at t.

        States (all float32, zeros to start): previous_output (N, H) = the top output at t-1; count (N, 1)
        = characters seen before t (kept below 2M); keys and values (N, M * C), ring buffers of the pairs.
        """
        previous, count, keys, values = states
        memory_size = self.memory_size
        batch = tf.shape(output)[0]
        seen = tf.cast(count[:, 0], tf.int32)  # characters before this one
        # store the pair (output at t-1, character at t) in slot (seen - 1) mod M, if there was a t-1
        slot = tf.math.floormod(seen - 1, memory_size)
        write = tf.one_hot(slot, memory_size) * tf.cast(seen >= 1, tf.float32)[:, None]  # (N, M)
        write = write[:, :, None]
        new_key = tf.matmul(previous, self.key_kernel)[:, None, :]  # (N, 1, C)
        new_value = tf.gather(self.value_embeddings, ids)[:, None, :]
        keys = tf.reshape(keys, [batch, memory_size, self.width]) * (1.0 - write) + write * new_key
        values = tf.reshape(values, [batch, memory_size, self.width]) * (1.0 - write) + write * new_value
        stored = tf.minimum(seen, memory_size)
        visible = (tf.range(memory_size)[None, :] < stored[:, None])[:, None, None, :]  # (N, 1, 1, M)
        queries = self._heads(tf.matmul(output, self.query_kernel)[:, None, :])  # (N, 1, heads, size)
        scores = tf.einsum("nthd,nihd->nhti", queries, self._heads(keys)) / math.sqrt(self.head_size)
        context = self._attend(scores, visible, self._heads(values), "nhti,nihd->nthd")
        result = output + tf.matmul(tf.reshape(context, [batch, self.width]), self.output_kernel)
        # count + 1, brought back into [M, 2M) once past it: slots only need count mod M and count >= M
        after = seen + 1
        after = tf.where(after >= 2 * memory_size, after - memory_size, after)
        flat = [batch, memory_size * self.width]
        return result, [output, tf.cast(after, tf.float32)[:, None], tf.reshape(keys, flat), tf.reshape(values, flat)]

    def _heads(self, x):
        """(..., C) -> (..., heads, size)."""
        return tf.reshape(x, tf.concat([tf.shape(x)[:-1], [self.num_heads, self.head_size]], 0))

    @staticmethod
    def _attend(scores, visible, values, equation):
        """Softmax over the visible pairs plus the sentinel (score 0, value 0), then the weighted values."""
        scores = tf.where(visible, scores, tf.constant(-1e30, scores.dtype))
        top = tf.maximum(tf.reduce_max(scores, axis=-1, keepdims=True), 0.0)  # the sentinel's score is 0
        weights = tf.exp(scores - top)
        weights = weights / (tf.reduce_sum(weights, axis=-1, keepdims=True) + tf.exp(-top))
        return tf.einsum(equation, weights, values)

    def compute_output_shape(self, input_shape):
        return input_shape[0]

    def get_config(self):
        return {**super().get_config(), "vocab_size": self.vocab_size, "memory_size": self.memory_size,
                "num_heads": self.num_heads, "head_size": self.head_size, "reset_rate": self.reset_rate,
                "seed": self.seed}
