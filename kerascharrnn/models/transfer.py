"""Fine-tuning a trained model on text with another vocabulary: its weights moved onto the new one.

A writer's text never has exactly the characters of the corpus a base model learnt from. The weights that
have a vocabulary axis (the embedding's rows, the copy attention's value embeddings, the logits' kernel
columns and biases) are rebuilt for the new vocabulary; every other weight is copied as it is:

  shared  a character both know keeps the base's row;
  added   a character only the new text has starts from a similar character the base knows (the same
          letter without its accent, a straight quote for a curly one: `similar_character`), else from the
          mean of the base's rows; on the output side it starts as unlikely as the base's rarest character
          (the characters a base lacks are rare ones), and learns its frequency in the first iterations;
  dropped a character only the base knew is dropped: the model's vocabulary is its data's (the ids of the
          HDF5 file index its rows directly, and bin/sample, bin/eval and the exports read the vocabulary
          from the checkpoint), and a fine-tune would only teach the model never to write them.

Text and byte vocabularies map onto each other where they agree: an ASCII character is its byte.
`vocabulary_map` is the pure part (no TensorFlow); `fine_tune_start` builds the model.
"""

from __future__ import annotations

import dataclasses
import unicodedata
from typing import Dict, List, Optional, Tuple

import numpy as np

from kerascharrnn.config import ModelConfig
from kerascharrnn.errors import UserError
from kerascharrnn.vocab import Token, Vocabulary, byte_token_key

# Typographic characters a base trained on plain ASCII text lacks, and the one it knows in their place
# (NFKD, in similar_character, folds accents and ligatures but not these).
_TYPOGRAPHIC = {"\u2018": "'", "\u2019": "'", "\u201a": "'", "\u201b": "'", "\u2032": "'",
                "\u201c": '"', "\u201d": '"', "\u201e": '"', "\u00ab": '"', "\u00bb": '"', "\u2033": '"',
                "\u2013": "-", "\u2014": "-", "\u2012": "-", "\u2212": "-", "\u2010": "-", "\u2011": "-",
                "\u2026": ".", "\u00a0": " ", "\u2009": " ", "\u202f": " ", "\u2022": "*"}


def _key(token: Token) -> object:
    """What a token is compared by: an ASCII byte is its character, so text and byte vocabularies meet there."""
    return chr(token) if isinstance(token, int) and token < 128 else token


def similar_character(char: object, known: Dict[object, int]) -> Optional[int]:
    """The row of a character `known` has that stands in for `char` (None: none does): its typographic plain
    form, or its first character after compatibility decomposition (é -> e, ﬁ -> f, ２ -> 2)."""
    if not isinstance(char, str):
        return None
    plain = _TYPOGRAPHIC.get(char) or unicodedata.normalize("NFKD", char)[:1]
    return known.get(plain) if plain != char else None


@dataclasses.dataclass(frozen=True)
class VocabularyMap:
    """Where each row of the new vocabulary comes from.

    Attributes:
      sources: for each new id, the base id it copies, or None (an added character with nothing similar).
      similar: the added characters that start from a similar one: new id -> base id.
      added: the new ids the base does not know.
      dropped: the base's tokens the new vocabulary lacks.
    """

    sources: Tuple[Optional[int], ...]
    similar: Dict[int, int]
    added: Tuple[int, ...]
    dropped: Tuple[Token, ...]

    @property
    def mapped(self) -> int:
        return len(self.sources) - len(self.added)

    @property
    def identity(self) -> bool:
        return not self.added and not self.dropped and self.sources == tuple(range(len(self.sources)))

    def summary(self, base: Vocabulary, new: Vocabulary) -> str:
        """One line: mapped, added (and from what), dropped."""
        def shown(tokens):
            text = " ".join(_shown_token(t) for t in tokens[:12])
            return text + (f" and {len(tokens) - 12} more" if len(tokens) > 12 else "")
        added = [new.tokens[i] for i in self.added]
        line = f"{self.mapped} characters mapped, {len(self.added)} added"
        if added:
            line += f" ({shown(added)}"
            if self.similar:
                line += f"; {len(self.similar)} starting from a similar one: " + ", ".join(
                    f"{_shown_token(new.tokens[n])}<-{_shown_token(base.tokens[b])}"
                    for n, b in list(self.similar.items())[:6]) + ("..." if len(self.similar) > 6 else "")
            line += ")"
        line += f", {len(self.dropped)} dropped"
        return line + (f" ({shown(list(self.dropped))})" if self.dropped else "")


def _shown_token(token: Token) -> str:
    """As the vocabulary's JSON names it: a character, or a byte above 127 as "[195]"."""
    return repr(byte_token_key(token) if isinstance(token, int) else token)


def vocabulary_map(base: Vocabulary, new: Vocabulary) -> VocabularyMap:
    """How the rows of a model of vocabulary `base` become rows for `new`; UserError if they share nothing."""
    known = {_key(t): i for i, t in enumerate(base.tokens)}
    sources, similar, added = [], {}, []
    for new_id, token in enumerate(new.tokens):
        base_id = known.get(_key(token))
        if base_id is None:
            added.append(new_id)
            base_id = similar_character(_key(token), known)
            if base_id is not None:
                similar[new_id] = base_id
        sources.append(base_id)
    if len(added) == new.size:
        raise UserError("the base model and the data share no character: there is nothing to fine-tune from")
    wanted = {_key(t) for t in new.tokens}
    dropped = tuple(t for t in base.tokens if _key(t) not in wanted)
    return VocabularyMap(tuple(sources), similar, tuple(added), dropped)


# The weights with a vocabulary axis: (Keras layer class name, weight name) -> the axis. Everything else in
# the stack (models/stack.py) is the same shape whatever the vocabulary.
VOCABULARY_AXES = {("Embedding", "embeddings"): 0, ("CopyAttention", "value_embeddings"): 0,
                   ("Dense", "kernel"): 1, ("Dense", "bias"): 0}


def remap_axis(values: np.ndarray, axis: int, mapping: VocabularyMap, fill: np.ndarray) -> np.ndarray:
    """`values` with its vocabulary axis rebuilt: shared rows copied, added ones from a similar row or `fill`
    (the value of an added row with nothing similar, shaped as one row)."""
    rows = np.moveaxis(values, axis, 0)
    out = np.stack([rows[source] if source is not None else fill for source in mapping.sources])
    return np.moveaxis(out, 0, axis).astype(values.dtype)


def _remapped(layer_class: str, name: str, values: np.ndarray, mapping: VocabularyMap) -> np.ndarray:
    axis = VOCABULARY_AXES[(layer_class, name)]
    if layer_class == "Dense" and name == "bias":
        fill = values.min()  # as unlikely as the base's rarest character
        out = remap_axis(values, axis, mapping, np.asarray(fill, values.dtype))
        out[list(mapping.similar)] = fill  # a similar character's contexts, not its frequency
        return out
    return remap_axis(values, axis, mapping, np.moveaxis(values, axis, 0).mean(axis=0))


def _weighted_layers(model) -> List:
    return [layer for layer in model.layers if layer.weights]


def transferred_weights(base_model, new_model, mapping: VocabularyMap) -> List[np.ndarray]:
    """The base's weights in the order of new_model.get_weights(), each vocabulary axis remapped. The two
    models are the same stack (models/stack.py) but for the vocabulary and the dropout layers."""
    base_layers, new_layers = _weighted_layers(base_model), _weighted_layers(new_model)
    if [type(layer) for layer in base_layers] != [type(layer) for layer in new_layers]:
        raise ValueError("the base and the new model are not the same stack")
    out = []
    for base_layer, new_layer in zip(base_layers, new_layers):
        for base_weight, new_weight in zip(base_layer.weights, new_layer.weights):
            values = np.asarray(base_weight.numpy())
            key = (type(new_layer).__name__, new_weight.name)
            if key in VOCABULARY_AXES:
                values = _remapped(*key, values, mapping)
            if values.shape != tuple(new_weight.shape):
                raise ValueError(f"{new_weight.path}: {values.shape} does not fit {tuple(new_weight.shape)}")
            out.append(values)
    return out


# Settings a fine-tune may change on a base model: what training regularises with, no weight's shape.
REGULARISATION = ("dropout", "embedding_dropout", "copy_reset")


def fine_tune_config(base: ModelConfig, vocab: Vocabulary, changes: Dict[str, object]) -> ModelConfig:
    """The base's architecture for `vocab`, with the regularisation in `changes` (the rest of it ignored)."""
    kept = {k: v for k, v in changes.items() if k in REGULARISATION}
    if not base.copy_memory:
        kept.pop("copy_reset", None)
    return dataclasses.replace(base, vocab_size=vocab.size, **kept)


def fine_tune_start(base, vocab: Vocabulary, mapping: VocabularyMap, changes: Dict[str, object], batch_size: int):
    """A CharRNN for `vocab` starting from `base` (a CharRNN at `batch_size`) through `mapping` (vocabulary_map of
    their vocabularies, worked out before TensorFlow loads), with the regularisation in `changes`: `base` itself
    where neither changes it (a fine-tune on the base's own vocabulary, as before)."""
    from kerascharrnn.models.charrnn import CharRNN

    config = fine_tune_config(base.config, vocab, changes)
    if base.vocab == vocab and config == base.config and base.batch_size == batch_size:
        return base
    charrnn = CharRNN.build(config, vocab, batch_size)
    charrnn.model.set_weights(transferred_weights(base.model, charrnn.model, mapping))
    return charrnn
