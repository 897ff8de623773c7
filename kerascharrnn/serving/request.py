"""One request for text, whatever API it came through: every API of bin/serve translates its wire format into a
SamplingRequest (`build`), which holds the one set of bounds (sampling_settings.py) and this server's caps, and
translates the result back (completion.py). What the translations share is here too: a logit bias in any of
the wire forms, stop strings, and fill-in-the-middle markup meant for another model.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
from typing import Any, List, Mapping, Optional, Sequence, Tuple

from kerascharrnn.config import ServeConfig
from kerascharrnn.sampling_settings import SamplingSettings, SettingError, fold_seed
from kerascharrnn.serving.errors import ClientError
from kerascharrnn.vocab import Vocabulary

log = logging.getLogger("kerascharrnn.serve")
# Log-probabilities one reply may hold (each token's, and its alternatives): rows x tokens x (1 + alternatives);
# beyond, one request's reply would take hundreds of MB to build and send
MAX_LOGPROB_VALUES = 500_000
MAX_STOPS = 64  # stop strings a request may give (KoboldCpp took 32, OpenAI 4; llama.cpp any number)
MAX_STOP_LENGTH = 256  # characters of one stop string


@dataclasses.dataclass(frozen=True)
class SamplingRequest:
    """What a client asked for, checked and with every default resolved.

    Attributes:
      prompts: the texts to continue (after a chat's transcript is rendered, fill-in-the-middle markup read).
      n: completions per prompt (choices are prompt-major: prompt 0's n, then prompt 1's...).
      max_new: tokens to make after each prompt.
      settings: how each row draws (temperature, filters, penalties, logit bias).
      stops: a completion ends before the first of these.
      seed: fixes the draws (folded into the samplers' range); None = random.
      logprobs: None = no log-probabilities; K = each token's, and the K most likely alternatives.
      echo: the prompt is part of each completion's text (and log-probabilities).
      stream: the text is sent as it is made.
    """

    prompts: Tuple[str, ...]
    n: int = 1
    max_new: int = 16
    settings: SamplingSettings = SamplingSettings()
    stops: Tuple[str, ...] = ()
    seed: Optional[int] = None
    logprobs: Optional[int] = None
    echo: bool = False
    stream: bool = False

    @property
    def rows(self) -> int:
        return len(self.prompts) * self.n


def build(config: ServeConfig, vocab: Vocabulary, names: Mapping[str, str], *, prompts: Sequence[str],
          n: Optional[int] = 1, max_new: Optional[int] = None, stops: Sequence[str] = (), seed: Optional[int] = None,
          logprobs: Optional[int] = None, echo: bool = False, stream: bool = False, logit_bias: Any = None,
          **settings) -> SamplingRequest:
    """The SamplingRequest for what a client sent, or a ClientError naming the field as its API calls it.

    Args:
      config: the server's caps.
      vocab: the model's vocabulary (logit bias keys, the log-probabilities' cap).
      names: this API's name for each of our fields where they differ ("max_new": "max_tokens", ...).
      prompts: the texts to continue; one longer than the server's --max_start_text keeps its end (a character
        model's state hardly depends on text further back).
      n: completions per prompt.
      max_new: tokens to make; None or below 0: as many as the server allows (llama.cpp's -1); more than that:
        the server's cap.
      stops, seed, logprobs, echo, stream: as SamplingRequest (seed: any integer; logprobs: capped at the
        vocabulary's size).
      logit_bias: a logit bias in any wire form (logit_bias_pairs).
      **settings: SamplingSettings fields; None leaves the neutral value.
    """
    def error(field: str, message: str) -> ClientError:
        name = names.get(field, field)
        return ClientError(400, f"{name}: {message}", param=name)

    if not prompts:
        raise error("prompts", "an empty list")
    longest = max(map(len, prompts))
    if longest > config.max_start_text:  # as KoboldCpp and llama.cpp keep what fits their context
        log.info("a prompt of %d characters is read from its last %d (--max_start_text)", longest,
                 config.max_start_text)
    prompts = tuple(prompt[len(prompt) - min(len(prompt), config.max_start_text):] for prompt in prompts)
    n = 1 if n is None else n
    if not 1 <= n <= config.max_num_samples:
        raise error("n", f"must be between 1 and {config.max_num_samples}, got {n}")
    if len(prompts) * n > config.max_num_samples:
        raise error("n", f"{len(prompts)} prompts x {n} completions: at most {config.max_num_samples}")
    if max_new is None or max_new < 0 or max_new > config.max_num_new_chars:
        max_new = config.max_num_new_chars
    try:
        chosen = SamplingSettings(**{k: v for k, v in settings.items() if v is not None},
                                  logit_bias=logit_bias_pairs(logit_bias, vocab, names.get("logit_bias", "logit_bias")))
    except SettingError as e:
        raise error(e.field, e.message) from None
    if logprobs is not None and logprobs < 0:
        raise error("logprobs", f"must be >= 0, got {logprobs}")
    if logprobs is not None:
        tokens = max_new + (max(len(vocab.to_units(p)) for p in prompts) if echo else 0)
        values = len(prompts) * n * tokens * (1 + min(logprobs, vocab.size))
        if values > MAX_LOGPROB_VALUES:
            raise error("logprobs", f"{len(prompts) * n} completions x {tokens} tokens x {1 + min(logprobs, vocab.size)}"
                                    f" log-probabilities is {values:,}: at most {MAX_LOGPROB_VALUES:,} in one reply"
                                    " (ask for fewer alternatives, tokens or completions)")
    return SamplingRequest(prompts, n, max_new, chosen, checked_stops(stops, names.get("stops", "stop")),
                           None if seed is None else fold_seed(seed),
                           None if logprobs is None else min(logprobs, vocab.size), echo, stream)


def checked_stops(stops: Sequence[str], name: str = "stop") -> Tuple[str, ...]:
    """The stop strings to cut at (empty ones mean nothing: dropped), within the server's bounds."""
    kept = tuple(dict.fromkeys(s for s in stops if s))
    if len(kept) > MAX_STOPS:
        raise ClientError(400, f"{name}: {len(kept)} stop strings; at most {MAX_STOPS}", param=name)
    longest = max(kept, key=len, default="")
    if len(longest) > MAX_STOP_LENGTH:
        raise ClientError(400, f"{name}: a stop string of {len(longest)} characters; at most {MAX_STOP_LENGTH}",
                          param=name)
    return kept


def logit_bias_pairs(raw: Any, vocab: Vocabulary, name: str = "logit_bias") -> Tuple[Tuple[int, float], ...]:
    """(id, bias) pairs from a logit bias in the forms clients send: OpenAI's and KoboldCpp's {"id": bias},
    llama.cpp's [[id, bias], ...]. A key is a vocabulary id (an integer, or its decimal string) or a text whose
    characters all get the bias (llama.cpp tokenizes such a key); a bias of `false` bans the id (llama.cpp).
    Ids the vocabulary does not have and characters it lacks are left out (llama.cpp does the same)."""
    if raw is None:
        return ()
    if isinstance(raw, dict):
        entries = list(raw.items())
    elif isinstance(raw, list) and all(isinstance(e, list) and len(e) == 2 for e in raw):
        entries = [tuple(e) for e in raw]
    else:
        raise ClientError(400, f"{name}: an object {{id: bias}} or a list [[id, bias], ...]", param=name)
    pairs: List[Tuple[int, float]] = []
    for key, value in entries:
        if value is False:
            value = -math.inf
        elif isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ClientError(400, f"{name}: the bias of {str(key)[:40]!r} must be a number or false", param=name)
        if isinstance(key, bool) or not isinstance(key, (int, str)):
            raise ClientError(400, f"{name}: keys are vocabulary ids or text, got {str(key)[:40]!r}", param=name)
        if isinstance(key, int) or re.fullmatch(r"[+-]?\d{1,18}", key):
            ids = [int(key)]
        else:
            ids = [int(i) for i in vocab.encode_known(key)[0]]
        pairs += [(i, float(value)) for i in ids if 0 <= i < vocab.size]
    if pairs and len({i for i, b in pairs if b == -math.inf}) == vocab.size:
        raise ClientError(400, f"{name}: bans every token of the vocabulary", param=name)
    return tuple(pairs)


# Fill-in-the-middle markup that editor plug-ins send to a model they take for a code model: (the prefix's
# marker, the suffix's, the middle's), in prefix-suffix-middle order (Continue's templates: StarCoder, Qwen,
# CodeGemma, CodeLlama, DeepSeek).
_FIM_MARKERS = (
    ("<fim_prefix>", "<fim_suffix>", "<fim_middle>"),
    ("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"),
    ("<PRE>", "<SUF>", "<MID>"),
    ("<\uff5cfim\u2581begin\uff5c>", "<\uff5cfim\u2581hole\uff5c>", "<\uff5cfim\u2581end\uff5c>"),
)
_FIM = [re.compile(f"(?s).*?{re.escape(pre)}(?P<prefix>.*?){re.escape(suf)}.*?{re.escape(mid)}(?P<middle>.*)")
        for pre, suf, mid in _FIM_MARKERS]
_SUFFIX_FIRST = re.compile(r"(?s)\s*\[SUFFIX\].*?\[PREFIX\](?P<prefix>.*)")  # Codestral's: suffix, then prefix


def without_fill_in_the_middle(prompt: str) -> Optional[str]:
    """What a left-to-right model continues when a prompt is fill-in-the-middle markup (the text before the gap,
    and the start of the middle if given); None if the prompt is not such markup. The text after the gap
    cannot shape a left-to-right model's continuation: it is left out."""
    for pattern, (pre, _, _) in zip(_FIM, _FIM_MARKERS):
        match = pattern.fullmatch(prompt)
        if match:
            prefix = match["prefix"]
            if pre == "<PRE>":  # CodeLlama's "<PRE> {prefix} <SUF>{suffix} <MID>"
                prefix = prefix[1:] if prefix.startswith(" ") else prefix
                prefix = prefix[:-1] if prefix.endswith(" ") else prefix
            return prefix + match["middle"]
    match = _SUFFIX_FIRST.fullmatch(prompt)
    return match["prefix"] if match else None


def continued(prompt: str) -> str:
    """The text a prompt asks the model to continue: the prompt, or the text before the gap of
    fill-in-the-middle markup."""
    inner = without_fill_in_the_middle(prompt)
    return prompt if inner is None else inner
