"""Vocabulary: token <-> id, and torch-rnn's JSON format in and out.

Ids have two conventions, converted only at the file boundary:
- torch-rnn files (HDF5 splits, JSON) use 1-based ids;
- inside the model an id is 0-based (torch-rnn id - 1): the index into the logits.
"""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Dict, Iterable, Sequence, Tuple, Union

import numpy as np

from kerascharrnn.errors import UserError

BYTES = "bytes"
_BYTE_KEY = re.compile(r"^\[(\d+)\]$")
_CANONICAL_ID = re.compile(r"^[1-9][0-9]*$")  # "1", not "01", " 1", "+1" or "1_0" (all of which int() takes)

Token = Union[str, int]  # a character in text mode, a byte value in bytes mode


def byte_token_key(byte: int) -> str:
    """torch-rnn's JSON key for a byte token: the ASCII character, or "[195]" above 127."""
    return chr(byte) if byte <= 127 else f"[{byte}]"


def unencodable_token(tokens, encoding: str) -> str:
    """Why a vocabulary could not be written into a checkpoint (its JSON is UTF-8), or "" if it can.

    Checked when a vocabulary is made, so a training never dies at its first checkpoint over it.
    """
    if encoding == BYTES:
        bad = [t for t in tokens if not (isinstance(t, int) and 0 <= t <= 255)]
        return f"vocabulary token {bad[0]!r} is not a byte value 0..255" if bad else ""
    for token in tokens:
        try:
            token.encode("utf-8")
        except UnicodeEncodeError:
            return (f"vocabulary token U+{ord(token[0]):04X} cannot be encoded as UTF-8 (a lone surrogate);"
                    " a checkpoint could not store it")
        except AttributeError:
            return f"vocabulary token {token!r} is not a string"
    return ""


@dataclasses.dataclass(frozen=True)
class Vocabulary:
    """An ordered set of tokens; position i holds the token with model id i (torch-rnn id i + 1).

    Attributes:
      tokens: characters (text mode) or byte values 0..255 (bytes mode).
      encoding: the text encoding the corpus was read with, or "bytes".
    """

    tokens: Tuple[Token, ...]
    encoding: str = "utf-8"

    def __post_init__(self):
        if len(set(self.tokens)) != len(self.tokens):
            raise UserError("vocabulary has duplicate tokens")
        problem = unencodable_token(self.tokens, self.encoding)
        if problem:
            raise UserError(problem)

    @property
    def size(self) -> int:  # V
        return len(self.tokens)

    @property
    def is_bytes(self) -> bool:
        return self.encoding == BYTES

    def _index(self) -> Dict[Token, int]:
        return {t: i for i, t in enumerate(self.tokens)}

    def to_units(self, text: Union[str, bytes]) -> Sequence[Token]:
        """Splits text into the units this vocabulary's tokens are made of."""
        if self.is_bytes:
            return list(text.encode("utf-8") if isinstance(text, str) else text)
        return list(text)

    def unknown(self, text: Union[str, bytes]) -> list:
        """The distinct characters of `text` that have no token, in order of appearance."""
        index = self._index()
        missing = dict.fromkeys(u for u in self.to_units(text) if u not in index)
        return [chr(u) if isinstance(u, int) else u for u in missing]

    def encode(self, text: Union[str, bytes]) -> np.ndarray:
        """Text -> 0-based model ids (int32). Raises UserError naming unknown characters."""
        missing = self.unknown(text)
        if missing:
            shown = ", ".join(repr(c) for c in missing[:10])
            more = f" and {len(missing) - 10} more" if len(missing) > 10 else ""
            raise UserError(f"characters not in the model's vocabulary: {shown}{more}")
        index = self._index()
        return np.array([index[u] for u in self.to_units(text)], dtype=np.int32)

    def encode_known(self, text: Union[str, bytes]) -> Tuple[np.ndarray, list]:
        """Text -> (0-based ids of the units this vocabulary has, the distinct characters it lacks).

        For callers that must answer whatever the text holds (an editor plug-in's prompt): unknown
        characters are left out rather than refused.
        """
        index = self._index()
        units = self.to_units(text)
        ids = np.array([index[u] for u in units if u in index], dtype=np.int32)
        return ids, self.unknown(text)

    def has_uppercase_letters(self) -> bool:
        """Whether any token is an upper-case letter (a model trained on lower-cased text has none)."""
        return any((chr(t) if isinstance(t, int) else t).isupper() for t in self.tokens)

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """0-based ids -> raw bytes (bytes mode) or encoded text."""
        if self.is_bytes:
            return bytes(self.tokens[int(i)] for i in ids)
        return self.decode(ids).encode("utf-8")

    def decode(self, ids: Iterable[int]) -> str:
        """0-based ids -> text. In bytes mode, invalid UTF-8 sequences become U+FFFD."""
        if self.is_bytes:
            return self.decode_bytes(ids).decode("utf-8", errors="replace")
        return "".join(self.tokens[int(i)] for i in ids)

    def token_strings(self) -> list:
        """Each token as the string stored in torch-rnn's JSON."""
        if self.is_bytes:
            return [byte_token_key(b) for b in self.tokens]
        return list(self.tokens)

    def to_json_dict(self) -> dict:
        """torch-rnn's vocabulary JSON (1-based ids), plus the encoding it was read with."""
        keys = self.token_strings()
        return {
            "token_to_idx": {k: i + 1 for i, k in enumerate(keys)},
            "idx_to_token": {str(i + 1): k for i, k in enumerate(keys)},
            "encoding": self.encoding,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_json_dict(), ensure_ascii=False)

    @classmethod
    def from_json_dict(cls, data: dict, source: str = "vocabulary") -> "Vocabulary":
        """Reads torch-rnn's JSON (ours or torch-rnn's own preprocess.py output)."""
        if not isinstance(data, dict) or not isinstance(data.get("idx_to_token"), dict):
            raise UserError(f"{source}: not a vocabulary JSON (no 'idx_to_token' object)")
        raw = data["idx_to_token"]
        bad = [k for k in raw if not _CANONICAL_ID.match(k)]
        if bad:
            raise UserError(f"{source}: 'idx_to_token' key {bad[0]!r} is not a plain integer id (1, 2, ...)")
        ids = sorted(int(k) for k in raw)
        if ids != list(range(1, len(ids) + 1)) or not ids:
            raise UserError(f"{source}: 'idx_to_token' ids must be 1..V with none missing")
        keys = [raw[str(i)] for i in ids]
        if not all(isinstance(k, str) and k for k in keys):
            raise UserError(f"{source}: every token must be a non-empty string")
        encoding = data.get("encoding")
        if encoding is not None and not isinstance(encoding, str):
            raise UserError(f"{source}: 'encoding' must be a string, got {type(encoding).__name__}")
        if encoding is None:  # torch-rnn's own files: bytes mode is the one with "[n]" keys
            encoding = BYTES if any(len(k) > 1 for k in keys) else "utf-8"
        if encoding == BYTES:
            tokens = []
            for k in keys:
                match = _BYTE_KEY.match(k)
                if match and int(match.group(1)) > 127:
                    tokens.append(int(match.group(1)))
                elif len(k) == 1 and ord(k) <= 127:
                    tokens.append(ord(k))
                else:
                    raise UserError(f"{source}: {k!r} is not a byte token")
            return cls(tuple(tokens), BYTES)
        if any(len(k) != 1 for k in keys):
            raise UserError(f"{source}: text-mode tokens must be single characters")
        problem = unencodable_token(keys, encoding)
        if problem:
            raise UserError(f"{source}: {problem}")
        return cls(tuple(keys), encoding)

    @classmethod
    def load(cls, path: str) -> "Vocabulary":
        try:
            with open(path, "rb") as f:
                data = json.loads(f.read().decode("utf-8"))
        except FileNotFoundError:
            raise UserError(f"{path}: no such file") from None
        except IsADirectoryError:
            raise UserError(f"{path}: is a directory, not a JSON file") from None
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):  # (RecursionError: absurd nesting)
            raise UserError(f"{path}: not a JSON file") from None
        return cls.from_json_dict(data, source=path)
