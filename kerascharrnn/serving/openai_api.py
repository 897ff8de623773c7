"""OpenAI's (legacy) completions API, for the tools that speak it: the `openai` client, `llm`, editor plug-ins.

    POST /v1/completions   model, prompt (a string or a list), suffix, max_tokens (16), temperature (0-2,
                           0 = argmax), top_p, n, stream (server-sent events), stream_options, stop (up to 4),
                           logprobs (0-5), echo, seed, user
    GET  /v1/models        the served model; GET /v1/models/{id}

A token is one unit of the vocabulary: a character, or a byte for a byte-level model (max_tokens, usage,
logprobs and text_offset count those). The model reads left to right, so a `suffix` is accepted and cannot
shape the completion: it continues the prompt as if nothing followed. Log-probabilities are the model's own
(temperature 1, no top-p), of each token and of its `logprobs` most likely alternatives. Characters of a
prompt the model lacks are left out of the priming (and the log says so); echoed, they are kept, with a
null log-probability. Errors are OpenAI's shape: {"error": {"message", "type", "param", "code"}}.
"""

import json
import time
import uuid
from typing import AsyncIterator, Dict, List, Optional, Tuple, Union

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator

from kerascharrnn.inference.sampling import Piece
from kerascharrnn.serving.batcher import Expired, Job
from kerascharrnn.serving.context import Serving, finished_rows, parse_body, started_pieces
from kerascharrnn.serving.errors import ClientError
from kerascharrnn.serving.rules import StopCut
from kerascharrnn.vocab import Vocabulary

MAX_STOPS = 4
MAX_LOGPROBS = 5


class Choice:
    """One choice of a completion, built from the pieces its row makes: its text (cut before a stop string),
    and its log-probabilities. Emits what can be sent so far, for a stream, or all of it at the end.

    Args:
      index: the choice's index in the reply.
      vocab: the model's vocabulary.
      prompt: the prompt as sent.
      echo: the text starts with the prompt.
      stops: the stop strings.
      logprobs: None, or how many alternatives to report with each token.
    """

    def __init__(self, index: int, vocab: Vocabulary, prompt: str, echo: bool, stops: List[str],
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
        self._pending: List[tuple] = []  # (token, logprob, top) of completion tokens not sent yet
        self._prompt_records: List[tuple] = []
        self._offset = 0 if echo else len(self._units)  # text_offset of the next token sent
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

    def feed(self, piece: Piece) -> Optional[dict]:
        """The choice's part of a stream chunk for this piece of its row (None if nothing can be sent yet)."""
        in_prompt = max(min(self._primed - piece.position, len(piece.ids)), 0)
        self._prompt_records += self._records(piece, 0, in_prompt)
        self._pending += self._records(piece, in_prompt, len(piece.ids))
        return self._emit(self._cut.feed(self._decoder(piece.ids[in_prompt:])))

    def finish(self) -> dict:
        """The choice's last part: what was held back, and the finish reason."""
        part = self._emit(self._cut.feed(self._decoder(None)) + self._cut.flush(), last=True)
        part = part or {"text": "", "index": self.index, "logprobs": None}
        part["finish_reason"] = "stop" if self._cut.stopped else "length"
        return part

    def _records(self, piece: Piece, start: int, stop: int) -> List[tuple]:
        tokens = [self._token(self._vocab.tokens[int(i)]) for i in piece.ids[start:stop]]
        if piece.logprobs is None:
            return [(token, None, None) for token in tokens]
        chosen, top_values, top_ids = piece.logprobs
        return [(token, None if piece.position + k == 0 else float(chosen[k]),  # the first: no context
                 {self._token(self._vocab.tokens[int(i)]): float(v) for i, v in zip(top_ids[k], top_values[k])})
                for token, k in zip(tokens, range(start, stop))]

    def _token(self, unit) -> str:
        """A unit as OpenAI names a token: the character, or "bytes:\\xNN" for a byte that is not ASCII."""
        if self._vocab.is_bytes:
            return chr(unit) if unit < 128 else f"bytes:\\x{unit:02x}"
        return unit

    def _emit(self, text: str, last: bool = False) -> Optional[dict]:
        """The part to send: the prompt first if echoed (with log-probabilities: once its tokens are known),
        then the completion's text, with the tokens it covers."""
        prefix, records = "", []
        if self._echo_pending:
            if self._logprobs is not None and not last and len(self._prompt_records) < self._primed:
                self._held += text  # behind the echo, which waits for its tokens
                return None
            self._echo_pending = False
            primed = iter(self._prompt_records)
            records = [next(primed, (self._token(unit), None, None)) if known else (self._token(unit), None, None)
                       for unit, known in zip(self._units, self._known)]
            prefix, text, self._held = self._prompt, self._held + text, ""
        count = len(self._vocab.to_units(text))
        sent, self._pending = self._pending[:count], self._pending[count:]
        self.completion_tokens += len(sent)
        if not prefix and not text:
            return None
        logprobs = self._logprob_block(records + sent) if self._logprobs is not None else None
        return {"text": prefix + text, "index": self.index, "logprobs": logprobs, "finish_reason": None}

    def _logprob_block(self, records: List[tuple]) -> dict:
        offsets = list(range(self._offset, self._offset + len(records)))
        self._offset += len(records)
        return {"tokens": [r[0] for r in records], "token_logprobs": [r[1] for r in records],
                "top_logprobs": [None if r[2] is None else dict(sorted(r[2].items(), key=lambda kv: -kv[1])
                                                                [:self._logprobs]) for r in records],
                "text_offset": offsets}


def _decoder(vocab: Vocabulary):
    """ids -> the text they add (a byte-level model's characters may span pieces); None: the end."""
    import codecs

    if not vocab.is_bytes:
        return lambda ids: "" if ids is None else vocab.decode(ids)
    incremental = codecs.getincrementaldecoder("utf-8")(errors="replace")
    return lambda ids: incremental.decode(b"", final=True) if ids is None else incremental.decode(
        vocab.decode_bytes(ids))


def routes(ctx: Serving) -> APIRouter:
    """The OpenAI-compatible endpoints over the app's model."""
    router = APIRouter()
    config = ctx.config

    class StreamOptions(BaseModel):
        model_config = ConfigDict(extra="forbid", strict=True)
        include_usage: bool = False

    class CompletionRequest(BaseModel):
        model_config = ConfigDict(extra="forbid", strict=True)
        model: str = Field(description="The served model's id (GET /v1/models).")
        prompt: Union[str, List[str]] = Field("", description="Text to continue, or a list of texts.")
        suffix: Optional[str] = Field(None, description="Accepted; a left-to-right model cannot use it.")
        max_tokens: Optional[int] = Field(16, ge=0, le=config.max_num_new_chars,
                                          description="Tokens (characters, or bytes) to generate.")
        temperature: Optional[float] = Field(1.0, ge=0, le=2, allow_inf_nan=False, description="0 = argmax.")
        top_p: Optional[float] = Field(1.0, ge=0, le=1, allow_inf_nan=False)
        n: Optional[int] = Field(1, ge=1, le=config.max_num_samples)
        stream: Optional[bool] = False
        stream_options: Optional[StreamOptions] = None
        logprobs: Optional[int] = Field(None, ge=0, le=MAX_LOGPROBS)
        echo: Optional[bool] = False
        stop: Optional[Union[str, List[str]]] = None
        seed: Optional[int] = Field(None, ge=-2**63, le=2**63 - 1)
        user: Optional[str] = None
        best_of: Optional[int] = Field(None, ge=1, le=1, description="Only 1.")
        presence_penalty: Optional[float] = Field(None, ge=0, le=0, description="Only 0.")
        frequency_penalty: Optional[float] = Field(None, ge=0, le=0, description="Only 0.")
        logit_bias: Optional[Dict[str, int]] = Field(None, max_length=0, description="Only {}.")

        @field_validator("stop")
        @classmethod
        def _stops(cls, value):
            if isinstance(value, list) and len(value) > MAX_STOPS:
                raise ValueError(f"at most {MAX_STOPS} stop sequences")
            return value

    schema = {"requestBody": {"required": True, "content": {"application/json": {
        "schema": CompletionRequest.model_json_schema()}}}}

    def check_model(name: str) -> None:
        if name != ctx.model_name:
            raise ClientError(404, f"The model `{name}` does not exist; this server serves `{ctx.model_name}`",
                              param="model", code="model_not_found")

    @router.post("/v1/completions", openapi_extra=schema)
    async def completions(request: Request):
        """OpenAI's legacy completions (see the module docstring)."""
        body = await parse_body(request, CompletionRequest)
        check_model(body.model)
        prompts = [body.prompt] if isinstance(body.prompt, str) else list(body.prompt)
        n = body.n or 1
        if not prompts:
            raise ClientError(400, "prompt: an empty list", param="prompt")
        if len(prompts) * n > config.max_num_samples:
            raise ClientError(400, f"{len(prompts)} prompts x n {n} completions: at most {config.max_num_samples}",
                              param="n")
        for prompt in prompts:
            ctx.check_prompt_length(prompt, "prompt")
        ids = [ctx.prompt_ids(p, "POST /v1/completions") for p in prompts]
        temperature = 1.0 if body.temperature is None else body.temperature
        top_p = 1.0 if body.top_p is None else body.top_p  # (0, or one float32 makes 0: the most likely token)
        stops = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
        max_tokens = 16 if body.max_tokens is None else body.max_tokens
        seed = None if body.seed is None else body.seed % (2**62) + 1
        echo = bool(body.echo)
        job = ctx.submit(Job([p for p in ids for _ in range(n)], max_tokens, [temperature] * len(prompts) * n,
                             top_p=top_p, seed=seed,
                             logprobs=0 if body.logprobs is None else max(body.logprobs, 1),
                             include_prompt=echo and body.logprobs is not None, stream=bool(body.stream)))
        choices = [Choice(i, ctx.vocab, prompts[i // n], echo, stops, body.logprobs)
                   for i in range(len(prompts) * n)]
        reply = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
                 "model": ctx.model_name}
        prompt_tokens = sum(len(p) for p in ids)
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            pieces = await started_pieces(job, request)
            return StreamingResponse(_stream(job, pieces, choices, reply, prompt_tokens, include_usage),
                                     media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        rows = await finished_rows(job, request)
        parts = []
        for choice, (row_ids, logprobs) in zip(choices, rows):
            first = 0 if job.include_prompt else choice.primed  # the rows hold the prompt's ids only if echoed
            parts.append([p for p in (choice.feed(Piece(row_ids, first, logprobs, True)), choice.finish()) if p])
        reply["choices"] = [_joined(p) for p in parts]
        completion_tokens = sum(c.completion_tokens for c in choices)
        reply["usage"] = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                          "total_tokens": prompt_tokens + completion_tokens}
        return JSONResponse(reply)

    @router.get("/v1/models")
    async def models():
        return {"object": "list", "data": [_model_card(ctx)]}

    @router.get("/v1/models/{model_id}")
    async def model(model_id: str):
        check_model(model_id)
        return _model_card(ctx)

    return router


def _model_card(ctx: Serving) -> dict:
    return {"id": ctx.model_name, "object": "model", "created": 0, "owned_by": "kerascharrnn"}


def _joined(parts: List[dict]) -> dict:
    """A choice's stream parts as one (the reply that is not streamed)."""
    text = "".join(p["text"] for p in parts)
    blocks = [p["logprobs"] for p in parts if p.get("logprobs")]
    logprobs = {key: [v for b in blocks for v in b[key]] for key in ("tokens", "token_logprobs", "top_logprobs",
                                                                      "text_offset")} if blocks else None
    return {"text": text, "index": parts[-1]["index"], "logprobs": logprobs,
            "finish_reason": parts[-1]["finish_reason"]}


async def _stream(job: Job, pieces: AsyncIterator[Tuple[int, Piece]], choices: List[Choice], reply: dict,
                  prompt_tokens: int, include_usage: bool) -> AsyncIterator[str]:
    """Server-sent events: a chunk per piece of text as it is made, a last chunk per choice with its finish
    reason, the usage if asked, then [DONE]. A client that leaves cancels the job (its rows leave the batch)."""
    def event(choice_parts: List[dict], **extra) -> str:
        chunk = dict(reply, choices=choice_parts, **extra)
        if include_usage and "usage" not in extra:
            chunk["usage"] = None
        return f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n"

    try:
        try:
            async for own, piece in pieces:
                choice = choices[own]
                part = choice.feed(piece)
                if choice.stopped:
                    job.cancel_row(own)
                if part:
                    yield event([part])
        except Expired as e:
            error = {"message": f"the server is overloaded: the request was {e}", "type": "server_error",
                     "param": None, "code": "timeout"}
            yield f"data: {json.dumps({'error': error})}\n\n"
            return
        for choice in choices:
            yield event([choice.finish()])
        if include_usage:
            completion_tokens = sum(c.completion_tokens for c in choices)
            yield event([], usage={"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                                   "total_tokens": prompt_tokens + completion_tokens})
        yield "data: [DONE]\n\n"
    finally:
        job.cancel()  # done, or the client left: either way its rows leave the batch
