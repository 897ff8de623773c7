"""torch-rnn-server's rules as pure functions: how GET /generate reads its query, primes the model and
cuts its completions."""

import re
import urllib.parse
from typing import List, Optional, Sequence

from kerascharrnn.serving.errors import ClientError
from kerascharrnn.vocab import Vocabulary

TEMPERATURES = (0.5, 0.6, 0.7, 0.8, 0.9)  # torch-rnn-server draws one per completion
_BAD_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")
_SENTENCE_END = re.compile(r"[.!?]")
_INTEGER = re.compile(r"[+-]?\d{1,18}")
_N_LIMIT = 2**31 - 1  # beyond this an n is a client bug, not a request for "as many as allowed"


def raw_query_value(query_string: bytes, name: str) -> Optional[str]:
    """The first value of `name` exactly as it appears in the query string (still percent-encoded)."""
    try:
        query = query_string.decode("utf-8")
    except UnicodeDecodeError:
        raise ClientError(400, "the query string is not valid UTF-8") from None
    for part in query.split("&"):
        key, _, value = part.partition("=")
        if urllib.parse.unquote_plus(key) == name:
            return value
    return None


def decode_component(raw: str, name: str) -> str:
    """Form decoding ('+' is a space, %XX a byte), strict: bad escapes or bad UTF-8 are errors."""
    if _BAD_PERCENT.search(raw):
        raise ClientError(400, f"{name}: invalid percent-encoding (a '%' must be followed by two hex digits)")
    try:
        return urllib.parse.unquote_to_bytes(raw.replace("+", " ")).decode("utf-8")
    except UnicodeDecodeError:
        raise ClientError(400, f"{name}: not valid UTF-8 once percent-decoded") from None


def parse_n(raw: Optional[str], cap: int) -> int:
    """n defaults to 1 and is clamped to `cap`, as torch-rnn-server does; junk is an error."""
    if raw is None or raw == "":
        return 1
    value = decode_component(raw, "n").strip()
    if not _INTEGER.fullmatch(value):
        raise ClientError(400, f"n must be a whole number, got {value[:40]!r}")
    n = int(value)
    if n < 1:
        raise ClientError(400, f"n must be at least 1, got {n}")
    if n > _N_LIMIT:
        raise ClientError(400, f"n is out of range (at most {cap} completions are returned)")
    return min(n, cap)


def normalize_start_text(text: str, lowercase: bool) -> str:
    """torch-rnn-server's priming text: lower-cased, each run of whitespace one space."""
    return re.sub(r"\s+", " ", text.lower() if lowercase else text)


def lowercase_for(setting: str, vocab: Vocabulary) -> bool:
    """--lowercase: "1" / "0" force it; "auto" lower-cases only for a vocabulary without upper-case
    letters (a model trained on lower-cased text would not know them)."""
    if setting == "auto":
        return not vocab.has_uppercase_letters()
    return setting == "1"


def unknown_in(text: str, vocab: Vocabulary, lowercase: Optional[bool] = None) -> List[str]:
    """The characters of the text *as the client sent it* that the priming has to leave out.

    Args:
      text: what the client sent.
      vocab: the model's vocabulary.
      lowercase: None when the text primes the model as it is (JSON API); else GET /generate's
        normalisation with or without lower-casing. Named from the original text: lower-casing "İ"
        gives "i" + U+0307, and the client never sent U+0307.
    """
    def primed(c):
        return c if lowercase is None else normalize_start_text(c, lowercase)

    return [c for c in dict.fromkeys(text) if vocab.unknown(primed(c))]


def describe_characters(chars: Sequence[str], limit: int = 10) -> str:
    shown = ", ".join(f"{c!r} (U+{ord(c):04X})" if len(c) == 1 else repr(c) for c in chars[:limit])
    return shown + (f" and {len(chars) - limit} more" if len(chars) > limit else "")


def cut_completion(text: str, max_chars: int, min_words: int = 3) -> str:
    """Up to the first '.', '!' or '?' after which the text has more than `min_words` words; at most
    `max_chars` characters."""
    text = text[:max_chars]
    for match in _SENTENCE_END.finditer(text):
        if len(text[:match.end()].split()) > min_words:
            return text[:match.end()]
    return text
