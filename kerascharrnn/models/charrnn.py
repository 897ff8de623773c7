"""CharRNN: a trained model as one object (the Keras model, its Vocabulary and its ModelConfig).

torch-rnn's LanguageModel holds its `idx_to_token` and samples itself; keras-hub's CausalLM owns its
preprocessor and sampler. Here the same: whatever loads, trains, samples, exports or serves a model
takes a CharRNN, never a (model, vocab) pair. The Keras model inside stays stock layers, so the
`.keras` file it saves loads with plain `keras.models.load_model`.
"""

from __future__ import annotations

from typing import List, Optional

import keras

from kerascharrnn import upstream
from kerascharrnn.config import ModelConfig
from kerascharrnn.errors import UserError
from kerascharrnn.io import checkpoint as ckpt
from kerascharrnn.models import stack
from kerascharrnn.vocab import Vocabulary


class CharRNN:
    """A char-RNN language model: `model` (keras.Model), `vocab` (Vocabulary), `config` (ModelConfig).

    Build one with `CharRNN.build` (untrained) or `CharRNN.from_checkpoint`.
    """

    def __init__(self, model: keras.Model, vocab: Vocabulary, config: ModelConfig, source: str = "model"):
        described = stack.config_of(model)
        if described.canonical() != config.canonical():
            raise UserError(f"{source}: the stored model config does not match the model's layers")
        output_size = model.outputs[0].shape[-1]
        if vocab.size != config.vocab_size or output_size != vocab.size:
            raise UserError(f"{source}: the vocabulary has {vocab.size} tokens but the model's input has"
                            f" {config.vocab_size} and its output {output_size}")
        self.model = model
        self.vocab = vocab
        self.config = config

    @classmethod
    def build(cls, config: ModelConfig, vocab: Vocabulary, batch_size: int) -> "CharRNN":
        """A freshly initialised model for `vocab`, stateful over `batch_size` streams."""
        return cls(stack.build_model(config, batch_size), vocab, config)

    @classmethod
    def from_checkpoint(cls, path: str, batch_size: Optional[int] = None) -> "CharRNN":
        """Loads a checkpoint: a `.keras` file or its `.json`, or a torch-rnn `.t7`.

        Args:
          path: the file.
          batch_size: rebuild the stateful model for this many streams (None: use it as saved). The
            rebuild happens even at the saved size, so a run's RNG draws do not depend on the file's batch.
        """
        if ckpt.is_t7(path):
            return cls.from_t7(path, batch_size)
        model_path = ckpt.model_path_for(path)
        vocab = ckpt.read_vocab(model_path)
        stored_config = ckpt.stored_model_config(model_path)
        model = load_keras(model_path)
        config = stored_config or stack.config_of(model)  # v0.1.0 files store no config
        charrnn = cls(model, vocab, config, source=model_path)
        if batch_size is not None:
            charrnn = charrnn.with_batch_size(batch_size)
        return charrnn

    @classmethod
    def from_t7(cls, path: str, batch_size: Optional[int] = None) -> "CharRNN":
        """A torch-rnn checkpoint (train.lua's .t7) as a CharRNN: same math, stock Keras layers.

        Args:
          path: the .t7 file.
          batch_size: streams of the stateful model (None: the run's --batch_size recorded in the file).
        """
        t7 = ckpt.read_t7(path)
        recorded = t7.options.get("batch_size")
        charrnn = cls.build(t7.model_config, t7.vocab, batch_size or (recorded if isinstance(recorded, int) and
                                                                      recorded > 0 else 1))
        charrnn.model.set_weights(t7.weights)
        return charrnn

    @property
    def batch_size(self) -> int:
        return self.model.inputs[0].shape[0]

    def with_batch_size(self, batch_size: int) -> "CharRNN":
        """A copy whose stateful layers carry `batch_size` streams; same weights, state zero."""
        copy = CharRNN.build(self.config, self.vocab, batch_size)
        copy.model.set_weights(self.model.get_weights())
        return copy

    def save(self, path: str) -> None:
        """Writes a `.keras` file (atomically) holding the model, the vocabulary and the config."""
        ckpt.save_keras(self.model, self.vocab, self.config, path)

    def step_fn(self) -> stack.StepFn:
        """step(ids (N,), states) -> (logits (N, V), states): one character, explicit state, any N."""
        return stack.make_step_fn(self.model)

    @property
    def state_sizes(self) -> List[int]:
        return stack.state_sizes(self.model)

    @property
    def state_names(self) -> List[str]:
        return stack.state_names(self.model)

    def count_params(self) -> int:
        return int(self.model.count_params())


def load_keras(path: str) -> keras.Model:
    """keras.models.load_model in safe mode (a Lambda layer is refused), CopyAttention known (models/stack.py
    imports it); the file checked first (io/checkpoint.read_keras_file) and errors UserError."""
    ckpt.read_keras_file(path)
    try:
        model = keras.models.load_model(path, compile=False, safe_mode=True)
    except upstream.damaged_file_errors() as e:
        if upstream.is_safe_mode_refusal(e):
            raise UserError(f"{path}: refused: it contains code (a Lambda layer); not loaded in safe mode") from None
        detail = str(e).splitlines()[0][:200] if isinstance(e, ValueError) and str(e) else type(e).__name__
        raise UserError(f"{path}: not a loadable Keras model ({detail})") from None
    ckpt.check_finite_weights(model, path)
    return model
