"""bin/serve's web application: the APIs writers' tools speak, over one model.

    GET  /, /generate          torch-rnn-server's API, which rnn-writer calls (rnn_writer.py)
    POST /v1/completions       OpenAI's completions API; GET /v1/models (openai_api.py)
    POST /api/generate         Ollama's; GET /api/tags, /api/version (ollama_api.py)
    GET  /write                a writing page for a browser (page.py)
    POST /v1/generate          our JSON API: explicit sampling parameters
    GET  /healthz              liveness and the model's vocabulary size
    GET  /openapi.json, /docs  the schema, from FastAPI

Every error reply is in the shape of the API that was called (errors.py), 4xx for a client's mistake, with a
log line (bounded: no client can fill the disk through the log); never a traceback. A body larger than
config.max_body_bytes is refused before it is read, and bodies are parsed off the event loop. With an API
key, every endpoint but the health check, rnn-writer's GET / and the writing page's files needs
`Authorization: Bearer KEY` (401 otherwise). The model runs on one worker thread (batcher.py).

(No `from __future__ import annotations` here: FastAPI must see the request model classes, which are
built per app from the configured caps, as classes rather than strings.)
"""

import hashlib
import hmac
import json
import time
from typing import List, Literal, Optional

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException

from kerascharrnn.config import ServeConfig
from kerascharrnn.inference.engines import Engine
from kerascharrnn.serving import ollama_api, openai_api, page, rnn_writer
from kerascharrnn.serving.batcher import BatchingSampler, Job
from kerascharrnn.serving.context import Serving, finished_rows, log, short
from kerascharrnn.serving.errors import MESSAGE, ClientError, dialect_for, error_reply
from kerascharrnn.serving.rules import cut_at_stop, describe_characters, lowercase_for, unknown_in

# Endpoints open without the API key: liveness, rnn-writer's "is the server up" (it cannot send a key), and
# the writing page's own files (a browser cannot send the key for a page load; the page sends it itself).
OPEN_ENDPOINTS = (("GET", "/healthz"), ("GET", "/"), ("GET", page.PAGE))
_OPEN_PREFIXES = (page.PAGE + "/",)


def create_app(engine: Engine, config: ServeConfig, model_name: str = "charrnn",
               batcher: Optional[BatchingSampler] = None, api_key: Optional[str] = None,
               parameters: int = 0) -> FastAPI:
    """The FastAPI app over an engine (kerascharrnn.inference.engines).

    Args:
      engine: the model.
      config: the server's settings and limits.
      model_name: the name the APIs list the model under.
      batcher: the worker to run requests on (default: a new one).
      api_key: if given, required from every client (see OPEN_ENDPOINTS).
      parameters: the model's parameter count, for the listings (0: unknown).
    """
    vocab = engine.vocab
    batcher = batcher or BatchingSampler(engine, config.max_batch_rows, config.max_waiting)
    digest = hashlib.sha256((model_name + "\n" + vocab.to_json()).encode("utf-8")).hexdigest()
    ctx = Serving(engine, config, batcher, model_name, lowercase_for(config.lowercase, vocab), parameters,
                  f"sha256:{digest}")
    app = FastAPI(title="kerascharrnn", version="1",
                  description="Character-level RNN text generation: torch-rnn-server's GET /generate, OpenAI's"
                              " /v1/completions, Ollama's /api/generate, and a writing page at /write.")
    app.add_middleware(Guard, max_body_bytes=config.max_body_bytes, api_key=api_key)

    def answer(request: Request, error: ClientError) -> JSONResponse:
        dialect = dialect_for(request.url.path)
        log.warning("%s %s -> %d: %s", request.method, short(str(request.url)), error.status, short(error.message))
        reply = error_reply(dialect, error)
        return JSONResponse(reply.body, status_code=reply.status, headers=reply.headers)

    @app.exception_handler(ClientError)
    async def client_error(request: Request, exc: ClientError):
        return answer(request, exc)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):
        return answer(request, ClientError(exc.status_code, str(exc.detail), headers=exc.headers))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        problems = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ()) if p != 'body') or 'body'}: {e.get('msg')}"
                             for e in exc.errors())
        status = 422 if dialect_for(request.url.path) == MESSAGE else 400
        return answer(request, ClientError(status, problems[:500]))

    @app.exception_handler(Exception)
    async def server_error(request: Request, exc: Exception):
        log.error("%s %s -> 500", request.method, short(str(request.url)), exc_info=exc)
        reply = error_reply(dialect_for(request.url.path), ClientError(500, "internal server error (logged on the"
                                                                            " server)"))
        return JSONResponse(reply.body, status_code=500)

    @app.get("/healthz")
    async def healthz():
        return {"status": "ok", "model": model_name, "vocab_size": vocab.size, "waiting": batcher.waiting}

    class GenerateRequest(BaseModel):
        model_config = ConfigDict(extra="forbid", strict=True)  # JSON true is not a number, "5" not an int
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
    async def generate_v1(body: GenerateRequest, request: Request):
        """Continuations of start_text (without it), each cut at the first stop string if any."""
        started = time.perf_counter()
        ctx.check_prompt_length(body.start_text, "start_text")
        unknown = unknown_in(body.start_text, vocab)
        if unknown and body.unknown_chars == "error":
            raise ClientError(400, f"start_text: characters not in the model's vocabulary:"
                                   f" {describe_characters(unknown)} (send unknown_chars: \"skip\" to leave them out)")
        prompt = ctx.prompt_ids(body.start_text, "POST /v1/generate")
        job = ctx.submit(Job([prompt] * body.num_samples, body.num_new_chars, [body.temperature] * body.num_samples,
                             top_k=body.top_k, top_p=body.top_p, seed=body.seed))
        cut = [cut_at_stop(vocab.decode(ids), body.stop) for ids, _ in await finished_rows(job, request)]
        return GenerateReply(start_text=body.start_text, completions=[c for c, _ in cut],
                             finish_reasons=[r for _, r in cut], time=round(time.perf_counter() - started, 4))

    for api in (rnn_writer, openai_api, ollama_api, page):
        app.include_router(api.routes(ctx))
    return app


class Guard:
    """ASGI middleware in front of every request: the API key (when set) and the body's size, checked before a
    byte of the body is read. Answers in the shape of the API the path belongs to."""

    def __init__(self, app, max_body_bytes: int, api_key: Optional[str]):
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.api_key = api_key.encode("utf-8") if api_key else None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path, method = scope.get("path", ""), scope.get("method", "")
        headers = dict(scope.get("headers") or [])
        if self.api_key and not _open(method, path) and not self._authorized(headers.get(b"authorization", b"")):
            return await self._refuse(scope, send, ClientError(
                401, "Incorrect API key provided: send Authorization: Bearer <the server's --api_key>",
                code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"}))
        declared = headers.get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_body_bytes:
            return await self._refuse(scope, send, self._too_large())
        received = 0

        async def bounded_receive():
            nonlocal received
            message = await receive()
            if message.get("type") == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    raise self._too_large()
            return message

        return await self.app(scope, bounded_receive, send)

    def _authorized(self, header: bytes) -> bool:
        scheme, _, key = header.partition(b" ")
        return scheme.lower() == b"bearer" and hmac.compare_digest(key.strip(), self.api_key)

    def _too_large(self) -> ClientError:
        return ClientError(413, f"the request body is larger than the server's limit of {self.max_body_bytes}"
                                " bytes (--max_body_bytes)")

    @staticmethod
    async def _refuse(scope, send, error: ClientError) -> None:
        log.warning("%s %s -> %d: %s", scope.get("method"), short(scope.get("path", "")), error.status, error.message)
        reply = error_reply(dialect_for(scope.get("path", "")), error)
        body = json.dumps(reply.body).encode("utf-8")
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                   (b"connection", b"close")] + [(k.lower().encode(), v.encode()) for k, v in reply.headers.items()]
        await send({"type": "http.response.start", "status": reply.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def _open(method: str, path: str) -> bool:
    return (method, path) in OPEN_ENDPOINTS or (method == "GET" and path.startswith(_OPEN_PREFIXES))
