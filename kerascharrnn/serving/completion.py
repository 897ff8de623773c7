"""A SamplingRequest run on the batch worker, and its result in the terms every API translates back from: each
choice's text (cut before a stop string) and tokens with their log-probabilities, whole or as they are made.

A token is one unit of the vocabulary: a character, or a byte for a byte-level model. Log-probabilities are the
model's own (temperature 1, before any penalty or filter), of each token and of its most likely alternatives.
Characters of a prompt the model lacks are left out of the priming (the log says so); echoed, they are kept,
with no log-probability.
"""

from __future__ import annotations

import codecs
import dataclasses
from typing import AsyncIterator, List, Optional, Sequence, Tuple, Union

from starlette.requests import Request

from kerascharrnn.inference.generation import Piece
from kerascharrnn.serving.batcher import Expired, Job, ModelFailed
from kerascharrnn.serving.context import Serving, client_of, finished_rows, started_pieces
from kerascharrnn.serving.request import SamplingRequest
from kerascharrnn.vocab import Vocabulary

__all__ = ["Choice", "Completion", "Delta", "Expired", "ModelFailed", "StopCut", "Token", "failure", "token_bytes",
           "token_text"]


@dataclasses.dataclass(frozen=True)
class Token:
    """One token of a choice's text.

    Attributes:
      id: its vocabulary id (None: a prompt character the model lacks, echoed).
      unit: the character, or the byte (an int) of a byte-level model.
      logprob: its log-probability given what came before (None: unknown, or the very first token).
      top: (id, log-probability) of the most likely tokens there, best first (empty: none asked).
    """

    id: Optional[int]
    unit: Union[str, int]
    logprob: Optional[float] = None
    top: Tuple[Tuple[int, float], ...] = ()


@dataclasses.dataclass
class Delta:
    """What one choice adds to its text: the text, the tokens it covers, and (on its last delta) why it ended.

    Attributes:
      index: the choice's index.
      text: the new text.
      tokens: the tokens of that text (the echoed prompt's first).
      finish_reason: None until the end; then "stop" (a stop string) or "length".
      stop: the stop string that ended it, if one did.
    """

    index: int
    text: str
    tokens: List[Token]
    finish_reason: Optional[str] = None
    stop: Optional[str] = None


class StopCut:
    """Cuts a text that arrives in pieces before the first of some stop strings.

    feed() gives back what can be sent now, holding back an end that could still grow into a stop string;
    flush() gives what is held once the text is complete. After a stop string (`matched`), nothing more.
    """

    def __init__(self, stops: Sequence[str]):
        self._stops = [s for s in stops if s]
        self._longest = max(map(len, self._stops), default=0)
        self._held = ""
        self.matched: Optional[str] = None

    @property
    def stopped(self) -> bool:
        return self.matched is not None

    def feed(self, piece: str) -> str:
        if self.stopped:
            return ""
        text = self._held + piece
        found = min(((i, s) for s in self._stops for i in (text.find(s),) if i >= 0), default=None)
        if found:
            self._held, self.matched = "", found[1]
            return text[:found[0]]
        keep = self._partial(text)
        self._held = text[len(text) - keep:]
        return text[:len(text) - keep]

    def _partial(self, text: str) -> int:
        """The length of the longest end of `text` that begins a stop string (0: none)."""
        tail = text[len(text) - min(len(text), self._longest - 1):] if self._longest > 1 else ""
        for start in range(len(tail)):  # longest first
            if any(stop.startswith(tail[start:]) for stop in self._stops):
                return len(tail) - start
        return 0

    def flush(self) -> str:
        held, self._held = self._held, ""
        return "" if self.stopped else held


def cut_at_stop(text: str, stops: Sequence[str]):
    """(text before the first stop string, "stop") or (text, "length")."""
    cut = StopCut(stops)
    kept = cut.feed(text) + cut.flush()
    return kept, "stop" if cut.stopped else "length"


def _decoder(vocab: Vocabulary):
    """ids -> the text they add (a byte-level model's characters may span pieces); None: the end."""
    if not vocab.is_bytes:
        return lambda ids: "" if ids is None else vocab.decode(ids)
    incremental = codecs.getincrementaldecoder("utf-8")(errors="replace")
    return lambda ids: incremental.decode(b"", final=True) if ids is None else incremental.decode(
        vocab.decode_bytes(ids))


class Choice:
    """One choice of a completion, built from the pieces its row makes: its text (cut before a stop string) and
    its tokens. Emits what can be sent so far, for a stream, or all of it at the end.

    Args:
      index: the choice's index in the reply.
      vocab: the model's vocabulary.
      prompt: the prompt as sent.
      echo: the text starts with the prompt.
      stops: the stop strings.
      logprobs: None, or how many alternatives to report with each token.
    """

    def __init__(self, index: int, vocab: Vocabulary, prompt: str, echo: bool, stops: Sequence[str],
                 logprobs: Optional[int]):
        self.index = index
        self._vocab = vocab
        self._prompt = prompt
        self._units = vocab.to_units(prompt)
        known = set(vocab.tokens)
        self._known = [unit in known for unit in self._units]
        self._primed = sum(self._known)  # the prompt ids the model was fed
        self._cut = StopCut(stops)
        self._logprobs = logprobs
        self._decoder = _decoder(vocab)
        self._pending: List[Token] = []  # completion tokens not sent yet
        self._prompt_tokens: List[Token] = []
        self._echo_pending = echo
        self._held = ""
        self.completion_tokens = 0

    @property
    def stopped(self) -> bool:
        return self._cut.stopped

    @property
    def primed(self) -> int:
        """How many of the prompt's units the model was fed (the others it lacks)."""
        return self._primed

    def feed(self, piece: Piece) -> Optional[Delta]:
        """What this piece of the choice's row adds (None if nothing can be sent yet)."""
        in_prompt = max(min(self._primed - piece.position, len(piece.ids)), 0)
        self._prompt_tokens += self._tokens(piece, 0, in_prompt)
        self._pending += self._tokens(piece, in_prompt, len(piece.ids))
        return self._emit(self._cut.feed(self._decoder(piece.ids[in_prompt:])))

    def finish(self) -> Delta:
        """The choice's last delta: what was held back, and the finish reason."""
        delta = self._emit(self._cut.feed(self._decoder(None)) + self._cut.flush(), last=True)
        delta = delta or Delta(self.index, "", [])
        delta.finish_reason = "stop" if self._cut.stopped else "length"
        delta.stop = self._cut.matched
        return delta

    def _tokens(self, piece: Piece, start: int, stop: int) -> List[Token]:
        ids = [int(i) for i in piece.ids[start:stop]]
        if piece.logprobs is None or self._logprobs is None:
            return [Token(i, self._vocab.tokens[i]) for i in ids]
        chosen, top_values, top_ids = piece.logprobs

        def token(i: int, k: int) -> Token:
            if piece.position + k == 0:  # the very first token has no context: no log-probabilities (OpenAI's too)
                return Token(i, self._vocab.tokens[i])
            return Token(i, self._vocab.tokens[i], float(chosen[k]),
                         tuple((int(t), float(v)) for t, v in zip(top_ids[k][:self._logprobs], top_values[k])))

        return [token(i, k) for i, k in zip(ids, range(start, stop))]

    def _emit(self, text: str, last: bool = False) -> Optional[Delta]:
        """The delta to send: the prompt first if echoed (with log-probabilities: once its tokens are known), then
        the completion's text, with the tokens it covers."""
        prefix, tokens = "", []
        if self._echo_pending:
            if self._logprobs is not None and not last and len(self._prompt_tokens) < self._primed:
                self._held += text  # behind the echo, which waits for its tokens
                return None
            self._echo_pending = False
            primed = iter(self._prompt_tokens)
            tokens = [next(primed, Token(None, unit)) if known else Token(None, unit)
                      for unit, known in zip(self._units, self._known)]
            prefix, text, self._held = self._prompt, self._held + text, ""
        count = len(self._vocab.to_units(text))
        sent, self._pending = self._pending[:count], self._pending[count:]
        self.completion_tokens += len(sent)
        if not prefix and not text:
            return None
        return Delta(self.index, prefix + text, tokens + sent)


def failure(error: BaseException) -> str:
    """What a reply already under way says when its request fails: it ran out of time, or the model failed on it
    (the server's log has the details)."""
    if isinstance(error, Expired):
        return f"the server is overloaded: the request was {error}"
    return "the model failed on this request (logged on the server)"


def token_text(unit: Union[str, int]) -> str:
    """A token as OpenAI (and the servers that copy it) names it: the character, or "bytes:\\xNN" for a byte of a
    byte-level model that is not ASCII."""
    if isinstance(unit, int):
        return chr(unit) if unit < 128 else f"bytes:\\x{unit:02x}"
    return unit


def token_bytes(unit: Union[str, int]) -> List[int]:
    """A token's UTF-8 bytes (OpenAI's and Ollama's `bytes`)."""
    return [unit] if isinstance(unit, int) else list(unit.encode("utf-8"))


def joined(deltas: Sequence[Delta]) -> Delta:
    """A choice's deltas as one (a reply that is not streamed)."""
    last = deltas[-1]
    return Delta(last.index, "".join(d.text for d in deltas), [t for d in deltas for t in d.tokens],
                 last.finish_reason, last.stop)


class Completion:
    """A SamplingRequest submitted to the batch worker (a 429 or 400 if it cannot be), its choices, and its
    result: whole (`result`) or as it is made (`deltas`).

    Args:
      ctx: the server.
      request: what to make.
      http_request: the request it came in (who asked, where, and whether the client is still there).
    """

    def __init__(self, ctx: Serving, request: SamplingRequest, http_request: Request):
        where = f"{http_request.method} {http_request.url.path}"
        self._http_request = http_request
        ids = [ctx.prompt_ids(prompt, where) for prompt in request.prompts]
        self.request = request
        self.prompt_tokens = sum(len(i) for i in ids)
        self.choices = [Choice(i, ctx.vocab, request.prompts[i // request.n], request.echo, request.stops,
                               request.logprobs) for i in range(request.rows)]
        self.job = ctx.submit(Job([prompt for prompt in ids for _ in range(request.n)], request.max_new,
                                  request.settings, seed=request.seed,
                                  logprobs=0 if request.logprobs is None else max(request.logprobs, 1),
                                  include_prompt=request.echo and request.logprobs is not None,
                                  stream=request.stream, client=client_of(http_request)))

    @property
    def completion_tokens(self) -> int:
        return sum(choice.completion_tokens for choice in self.choices)

    async def result(self) -> List[Delta]:
        """Each choice's whole delta, once every row is made (a 503 if the time limit passed first)."""
        rows = await finished_rows(self.job, self._http_request)
        results = []
        for choice, (row_ids, logprobs) in zip(self.choices, rows):
            first = 0 if self.job.include_prompt else choice.primed  # the rows hold the prompt's ids if echoed
            results.append(joined([d for d in (choice.feed(Piece(row_ids, first, logprobs, True)), choice.finish())
                                   if d]))
        return results

    async def deltas(self) -> AsyncIterator[Delta]:
        """The choices' deltas as they are made, then each choice's last one (with its finish reason). The first
        piece is awaited before this returns, so that a request that expires while it waits is a 503, not a
        reply that has started; past that, an expiry raises Expired from the iterator (each API says so in its
        stream's own way). A client that leaves cancels the job (its rows leave the batch)."""
        pieces = await started_pieces(self.job, self._http_request)

        async def each() -> AsyncIterator[Delta]:
            try:
                async for own, piece in pieces:
                    choice = self.choices[own]
                    delta = choice.feed(piece)
                    if choice.stopped:
                        self.job.cancel_row(own)
                    if delta:
                        yield delta
                for choice in self.choices:
                    yield choice.finish()
            finally:
                self.job.cancel()

        return each()
