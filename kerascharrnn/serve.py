"""bin/serve's web application: torch-rnn-server's API, which rnn-writer calls, plus a JSON API.

    GET  /                 {"message": ...}: rnn-writer's "is the server up" check
    GET  /generate         ?start_text=<percent-encoded>&n=<int>: torch-rnn-server's sentence completions
    GET  /healthz          liveness and the model's vocabulary size
    POST /v1/generate      explicit sampling parameters in a JSON body
    GET  /openapi.json, /docs   the schema, from FastAPI

Every error reply is JSON with a "message" key (rnn-writer shows it to the writer and silently ignores
a body without one), 4xx for client mistakes, and a log line with the request; never a traceback.

Model runs happen on one worker thread. It merges the jobs waiting at the same moment (same length
and filters, no fixed seed) into one batched run, so the event loop never blocks and concurrent clients
share the model's batch dimension instead of queueing for it.

(No `from __future__ import annotations` here: FastAPI must see the request model classes, which are
built per app from the configured caps, as classes rather than strings.)
"""


import asyncio
import collections
import dataclasses
import json
import logging
import queue
import random
import re
import threading
import time
import urllib.parse
from typing import List, Literal, Optional, Sequence

import numpy as np
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException

from kerascharrnn.config import ServeConfig
from kerascharrnn.engines import Engine
from kerascharrnn.vocab import Vocabulary

log = logging.getLogger("kerascharrnn.serve")

TEMPERATURES = (0.5, 0.6, 0.7, 0.8, 0.9)  # torch-rnn-server draws one per completion
_BAD_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")
_SENTENCE_END = re.compile(r"[.!?]")
_INTEGER = re.compile(r"[+-]?\d{1,18}")
_N_LIMIT = 2**31 - 1  # beyond this an n is a client bug, not a request for "as many as allowed"


class ClientError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


# --- torch-rnn-server's rules, as pure functions ---------------------------------------------------


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


def cut_at_stop(text: str, stops: Sequence[str]):
    """(text before the first stop string, "stop") or (text, "length")."""
    hits = [i for i in (text.find(s) for s in stops if s) if i >= 0]
    return (text[:min(hits)], "stop") if hits else (text, "length")


def bucket(rows: int) -> int:
    """Rows rounded up to a power of two: a handful of batch shapes, each traced once."""
    return 1 << max(rows - 1, 0).bit_length()


# --- batching -------------------------------------------------------------------------------------


@dataclasses.dataclass
class _Job:
    prompts: List[np.ndarray]
    temperatures: List[float]
    num_new: int
    top_k: int
    top_p: float
    seed: Optional[int]
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop

    @property
    def key(self):
        return (self.num_new, self.top_k, self.top_p)


class BatchingSampler:
    """Runs generation on one worker thread; jobs queued together run as one batch."""

    def __init__(self, engine: Engine, max_rows: int = 64):
        self._engine = engine
        self._max_rows = max_rows
        self._queue = queue.Queue()
        threading.Thread(target=self._work, name="kerascharrnn-sampler", daemon=True).start()

    def warm_up(self) -> None:
        """Traces the batch shapes a server uses, so no client pays for it."""
        rows = 1
        while rows <= self._max_rows:
            self._engine.sample_ids([np.zeros(0, np.int32)] * rows, 2, temperature=1.0)
            rows *= 2

    async def sample_ids(self, prompts: List[np.ndarray], num_new: int, temperatures: List[float], top_k: int = 0,
                       top_p: float = 1.0, seed: Optional[int] = None) -> List[np.ndarray]:
        loop = asyncio.get_running_loop()
        job = _Job(list(prompts), list(temperatures), num_new, top_k, top_p, seed, loop.create_future(), loop)
        self._queue.put(job)
        return await job.future

    def _work(self) -> None:
        backlog = collections.deque()
        while True:
            job = backlog.popleft() if backlog else self._queue.get()
            batch, rows = [job], len(job.prompts)
            if job.seed is None:  # a fixed seed runs alone, so the same request gives the same text
                waiting = list(backlog)
                backlog.clear()
                while True:
                    try:
                        waiting.append(self._queue.get_nowait())
                    except queue.Empty:
                        break
                for other in waiting:
                    if other.seed is None and other.key == job.key and rows + len(other.prompts) <= self._max_rows:
                        batch.append(other)
                        rows += len(other.prompts)
                    else:
                        backlog.append(other)
            self._run(batch)

    def _run(self, batch: List[_Job]) -> None:
        prompts = [p for job in batch for p in job.prompts]
        temperatures = [t for job in batch for t in job.temperatures]
        padding = bucket(len(prompts)) - len(prompts)
        job = batch[0]
        try:
            sequences = self._engine.sample_ids(
                prompts + [np.zeros(0, np.int32)] * padding, job.num_new,
                temperature=np.array(temperatures + [1.0] * padding, np.float32), top_k=job.top_k, top_p=job.top_p,
                seed=job.seed)
        except Exception as e:  # reaches the request as a 500, logged there
            for job in batch:
                job.loop.call_soon_threadsafe(_settle, job.future, None, e)
            return
        start = 0
        for job in batch:
            rows = sequences[start:start + len(job.prompts)]
            start += len(job.prompts)
            job.loop.call_soon_threadsafe(_settle, job.future, rows, None)


def _settle(future: asyncio.Future, result, error) -> None:
    if future.done():  # the client went away
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


# --- the application ------------------------------------------------------------------------------


def create_app(engine: Engine, config: ServeConfig, model_name: str = "charrnn",
               batcher: Optional[BatchingSampler] = None) -> FastAPI:
    """The FastAPI app over an engine (kerascharrnn.engines: vocab + sample_ids)."""
    vocab: Vocabulary = engine.vocab
    batcher = batcher or BatchingSampler(engine, config.max_batch_rows)
    lowercase = lowercase_for(config.lowercase, vocab)
    app = FastAPI(title="kerascharrnn", version="1",
                  description="Character-level RNN text generation; torch-rnn-server compatible at GET /generate.")

    def encode(text: str, field: str, unknown_chars: str = "error") -> np.ndarray:
        """The prompt's ids; characters the vocabulary lacks are refused (400) or left out ("skip")."""
        ids, _ = vocab.encode_known(text)
        unknown = unknown_in(text, vocab)
        if unknown and unknown_chars == "error":
            raise ClientError(400, f"{field}: characters not in the model's vocabulary: {describe_characters(unknown)}"
                              " (send unknown_chars: \"skip\" to leave them out)")
        return ids

    def check_start_text(text: str) -> None:
        if len(text) > config.max_start_text:
            raise ClientError(413, f"start_text is {len(text)} characters; the limit is {config.max_start_text}")

    async def sentences(prompt: np.ndarray, n: int) -> List[str]:
        """torch-rnn-server's completions: n sentences of acceptable length, redrawn a bounded number of times."""
        accepted, rejected = [], 0
        for _ in range(config.max_redraw_rounds):
            rows = 2 * (n - len(accepted))  # oversample: a trained model passes about half its draws
            sequences = await batcher.sample_ids([prompt] * rows, config.completion_chars,
                                                 [random.choice(TEMPERATURES) for _ in range(rows)])
            for ids in sequences:
                text = cut_completion(vocab.decode(ids[len(prompt):]), config.completion_chars)
                if len(accepted) < n and config.word_limit_short <= len(text.split()) <= config.word_limit_long:
                    accepted.append(text)
                else:
                    rejected += 1
            if len(accepted) == n:
                break
        else:
            log.warning("only %d of %d completions passed the word limits after %d rounds (%d rejected)",
                        len(accepted), n, config.max_redraw_rounds, rejected)
        return accepted

    @app.exception_handler(ClientError)
    async def client_error(request: Request, exc: ClientError):
        log.warning("%s %s -> %d: %s", request.method, request.url, exc.status, exc.message)
        return JSONResponse({"message": exc.message}, status_code=exc.status)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):
        log.warning("%s %s -> %d: %s", request.method, request.url, exc.status_code, exc.detail)
        return JSONResponse({"message": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        problems = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ()) if p != 'body') or 'body'}: {e.get('msg')}"
                             for e in exc.errors())
        log.warning("%s %s -> 422: %s", request.method, request.url, problems)
        return JSONResponse({"message": problems[:500]}, status_code=422)

    @app.exception_handler(Exception)
    async def server_error(request: Request, exc: Exception):
        log.error("%s %s -> 500", request.method, request.url, exc_info=exc)
        return JSONResponse({"message": "internal server error (logged on the server)"}, status_code=500)

    @app.get("/")
    async def root():
        return {"message": f"kerascharrnn is serving {model_name}: GET /generate?start_text=...&n=3"}

    @app.get("/healthz")
    async def healthz():
        return {"status": "ok", "model": model_name, "vocab_size": vocab.size}

    @app.get("/generate")
    async def generate_completions(
        request: Request,
        start_text: Optional[str] = Query(None, description="Percent-encoded text to complete (may be empty)."),
        n: Optional[str] = Query(None, description=f"Completions wanted (default 1, at most {config.max_n})."),
    ):
        """torch-rnn-server's endpoint: n sentence completions, continuation only."""
        del start_text, n  # declared for the schema; read raw below, since the reply echoes the raw value
        started = time.perf_counter()
        query = request.scope.get("query_string", b"")
        raw_start_text = raw_query_value(query, "start_text") or ""
        text = decode_component(raw_start_text, "start_text")
        check_start_text(text)
        count = parse_n(raw_query_value(query, "n"), config.max_n)
        # rnn-writer sends whatever the writer typed: characters the model lacks are left out of the
        # priming, never refused (an error would show instead of suggestions)
        prompt, _ = vocab.encode_known(normalize_start_text(text, lowercase))
        unknown = unknown_in(text, vocab, lowercase)
        if unknown:
            log.info("GET /generate: left out of the priming (not in the vocabulary): %s", describe_characters(unknown))
        completions = await sentences(prompt, count)
        return {"start_text": raw_start_text, "completions": completions,
                "time": f"{time.perf_counter() - started:.2f}"}

    class GenerateRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        start_text: str = Field("", description="Text to continue (not lower-cased here).")
        num_new_chars: int = Field(200, ge=0, le=config.max_num_new_chars)
        temperature: float = Field(1.0, ge=0, le=100, allow_inf_nan=False, description="0 = argmax.")
        top_k: int = Field(0, ge=0, le=1_000_000, description="0 = off.")
        top_p: float = Field(1.0, gt=0, le=1, allow_inf_nan=False, description="1 = off.")
        num_samples: int = Field(1, ge=1, le=config.max_num_samples)
        seed: Optional[int] = Field(None, ge=1, le=2**62, description="Same seed, same text; omit for random.")
        stop: List[str] = Field(default_factory=list, max_length=16,
                                description="Cut each completion before the first of these strings.")
        unknown_chars: Literal["error", "skip"] = Field(
            "error", description="Characters of start_text the model lacks: error (400) or skip (left out of the"
                                 " priming, kept in nothing else).")

    class GenerateReply(BaseModel):
        start_text: str
        completions: List[str]
        finish_reasons: List[str]
        time: float

    @app.post("/v1/generate", response_model=GenerateReply)
    async def generate_v1(body: GenerateRequest):
        """Continuations of start_text (without it), each cut at the first stop string if any."""
        started = time.perf_counter()
        check_start_text(body.start_text)
        prompt = encode(body.start_text, "start_text", body.unknown_chars)
        sequences = await batcher.sample_ids([prompt] * body.num_samples, body.num_new_chars,
                                             [body.temperature] * body.num_samples, top_k=body.top_k,
                                             top_p=body.top_p, seed=body.seed)
        cut = [cut_at_stop(vocab.decode(ids[len(prompt):]), body.stop) for ids in sequences]
        return GenerateReply(start_text=body.start_text, completions=[c for c, _ in cut],
                             finish_reasons=[r for _, r in cut], time=round(time.perf_counter() - started, 4))

    return app


# --- the HTTP layer: malformed requests answered in JSON too ------------------------------------------

# Request line plus headers that h11 buffers before giving up (its default is 16 KiB). Larger, so that
# a long query string (a 1 MB start_text) reaches the application, which answers it with a JSON 413
# naming the limit; beyond this the connection gets the JSON 400 below.
MAX_REQUEST_HEAD_BYTES = 4 * 2**20
_LINGER_SECONDS = 2.0


def http_protocol_class():
    """uvicorn's h11 protocol, with its plain-text "Invalid HTTP request received." 400 replaced by a
    JSON body with a "message" (rnn-writer shows `{}` for a body without one). h11 is chosen explicitly:
    uvicorn's "auto" would take httptools where installed, whose limits and replies differ."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class JsonErrorH11Protocol(H11Protocol):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self._reason = ""
            next_event = self.conn.next_event

            def next_event_keeping_the_reason():  # uvicorn drops h11's reason; the client should see it
                try:
                    return next_event()
                except h11.RemoteProtocolError as e:
                    self._reason = str(e)
                    raise

            self.conn.next_event = next_event_keeping_the_reason

        def send_400_response(self, msg: str) -> None:
            reason = self._reason or msg
            message = f"malformed HTTP request ({reason}); the server reads HTTP/1.1 with a request line and" \
                      f" headers of at most {MAX_REQUEST_HEAD_BYTES // 2**20} MiB"
            log.warning("malformed request from %s: %s", (self.client or ("?",))[0], reason)
            body = json.dumps({"message": message}).encode("utf-8")
            headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                       (b"connection", b"close")]
            self.transport.write(self.conn.send(h11.Response(status_code=400, headers=headers, reason=b"Bad Request")))
            self.transport.write(self.conn.send(h11.Data(data=body)))
            self.transport.write(self.conn.send(h11.EndOfMessage()))
            # A lingering close (as nginx does): closing with the client's bytes still unread makes the
            # kernel send a reset, which can destroy the reply before the client reads it. So stop
            # writing, discard what still arrives, and close when the client is done (or in 2 s).
            self._discarding = True
            if self.transport.can_write_eof():
                self.transport.write_eof()
            self.loop.call_later(_LINGER_SECONDS, self.transport.close)

        def data_received(self, data: bytes) -> None:
            if not getattr(self, "_discarding", False):
                super().data_received(data)

        def eof_received(self):
            if getattr(self, "_discarding", False):
                self.transport.close()

    return JsonErrorH11Protocol
