"""bin/serve's web application: the APIs writers' tools speak, over one model.

    GET  /, /generate                   torch-rnn-server's API, which rnn-writer calls (rnn_writer.py)
    POST /v1/completions, /v1/chat/completions, GET /v1/models   OpenAI's, as local servers speak it (openai_api.py)
    POST /api/generate, /api/chat; GET /api/tags, ...            Ollama's (ollama_api.py)
    POST /api/v1/generate, /api/extra/generate/stream, ...       KoboldCpp's (koboldcpp_api.py)
    POST /completion, /infill, /tokenize; GET /props, /health    llama.cpp server's (llamacpp_api.py)
    POST /v1/generate                   our JSON API: explicit sampling parameters (json_api.py)
    GET  /write                         a writing page for a browser (page.py)
    GET  /healthz                       liveness and the model's vocabulary size
    GET  /openapi.json, /docs           the schema, from FastAPI

Every API is a translation of its wire format into one SamplingRequest (request.py) and of the result back
(completion.py). Every error reply is in the shape of the API that was called (errors.py), 4xx for a client's
mistake, with a log line (bounded: no client can fill the disk through the log); never a traceback. In front of
every request (Guard): the page it comes from (cors.py: a page the server does not answer gets 403 before any
work), the API key, and the body's size (refused before it is read); bodies are parsed off the event loop. With
an API key, every endpoint but the health checks, rnn-writer's GET / and the writing page's files needs
`Authorization: Bearer KEY` (401 otherwise). The model runs on one worker thread (batcher.py).
"""

import hashlib
import hmac
import json
from typing import Optional

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from kerascharrnn.config import ServeConfig
from kerascharrnn.inference.engines import Engine
from kerascharrnn.serving import (
    json_api,
    koboldcpp_api,
    llamacpp_api,
    ollama_api,
    openai_api,
    page,
    rnn_writer,
)
from kerascharrnn.serving.batcher import BatchingSampler
from kerascharrnn.serving.context import Serving, log, short
from kerascharrnn.serving.cors import OriginPolicy, same_origin
from kerascharrnn.serving.errors import MESSAGE, ClientError, dialect_for, error_reply
from kerascharrnn.serving.rules import lowercase_for

# Endpoints open without the API key: liveness (ours and llama.cpp's), rnn-writer's "is the server up" (it cannot
# send a key), and the writing page's own files (a browser cannot send the key for a page load; the page sends it
# itself).
OPEN_ENDPOINTS = (("GET", "/healthz"), ("GET", "/health"), ("GET", "/"), ("GET", page.PAGE))
_OPEN_PREFIXES = (page.PAGE + "/",)
_PREFLIGHT_SECONDS = "600"  # how long a browser may keep a preflight's answer


def create_app(engine: Engine, config: ServeConfig, model_name: str = "charrnn",
               batcher: Optional[BatchingSampler] = None, api_key: Optional[str] = None,
               parameters: int = 0) -> FastAPI:
    """The FastAPI app over an engine (kerascharrnn.inference.engines).

    Args:
      engine: the model.
      config: the server's settings and limits (its pages: config.cors_origins, cors.py).
      model_name: the name the APIs list the model under.
      batcher: the worker to run requests on (default: a new one).
      api_key: if given, required from every client (see OPEN_ENDPOINTS).
      parameters: the model's parameter count, for the listings (0: unknown).
    """
    vocab = engine.vocab
    batcher = batcher or BatchingSampler(engine, config.max_batch_rows, config.max_waiting)
    digest = hashlib.sha256((model_name + "\n" + vocab.to_json()).encode("utf-8")).hexdigest()
    ctx = Serving(engine, config, batcher, model_name, lowercase_for(config.lowercase, vocab), parameters,
                  f"sha256:{digest}", protected=bool(api_key))
    app = FastAPI(title="kerascharrnn", version="1",
                  description="Character-level RNN text generation for writers' tools: torch-rnn-server's GET"
                              " /generate, OpenAI's, Ollama's, KoboldCpp's and llama.cpp's APIs, and a writing page"
                              " at /write.")
    app.add_middleware(Guard, max_body_bytes=config.max_body_bytes, api_key=api_key,
                       pages=OriginPolicy.parse(config.cors_origins, keyed=bool(api_key)))

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

    for api in (rnn_writer, openai_api, ollama_api, koboldcpp_api, llamacpp_api, json_api, page):
        app.include_router(api.routes(ctx))
    return app


class Guard:
    """ASGI middleware in front of every request, before a byte of its body is read: the page it comes from
    (cors.py), the API key (when set) and the body's size. Answers in the shape of the API the path belongs to;
    every answer to a page it allows, refusals included, carries Access-Control-Allow-Origin (a frontend can read
    why it was refused)."""

    def __init__(self, app, max_body_bytes: int, api_key: Optional[str], pages: OriginPolicy = OriginPolicy()):
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.api_key = api_key.encode("utf-8") if api_key else None
        self.pages = pages

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path, method = scope.get("path", ""), scope.get("method", "")
        headers = dict(scope.get("headers") or [])
        origin = headers.get(b"origin")
        if origin is not None:
            page = origin.decode("latin-1")
            if not (same_origin(page, headers.get(b"host", b"").decode("latin-1")) or self.pages.allows(page)):
                return await self._refuse(scope, send, self._foreign(page))
            send = _with_headers(send, [(b"access-control-allow-origin", origin), (b"vary", b"Origin"),
                                        (b"access-control-expose-headers", b"Retry-After")])
        if method == "OPTIONS":  # a preflight (or a plain OPTIONS): no key needed, nothing to run
            return await self._preflight(send, headers)
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

    def _foreign(self, page: str) -> ClientError:
        if page.strip().lower() == "null" and self.pages.local:
            why = ("a page opened from a file (Origin: null) cannot be told from a sandboxed frame on any website:"
                   " start bin/serve with --api_key and give the page the key, or --cors_origins local,null to let"
                   " every such page use the model")
        else:
            why = f"start bin/serve with --cors_origins naming it (now: {self.pages.describe()})"
        return ClientError(403, f"this server does not answer pages from {short(page, 100)}: {why}")

    @staticmethod
    async def _preflight(send, headers) -> None:
        reply = [(b"allow", b"GET, POST, OPTIONS"), (b"content-length", b"0")]
        if b"access-control-request-method" in headers:
            reply += [(b"access-control-allow-methods", b"GET, POST, OPTIONS"),
                      (b"access-control-allow-headers",
                       headers.get(b"access-control-request-headers") or b"Content-Type, Authorization"),
                      (b"access-control-max-age", _PREFLIGHT_SECONDS.encode()),
                      (b"vary", b"Access-Control-Request-Method, Access-Control-Request-Headers")]
            if headers.get(b"access-control-request-private-network", b"").lower() == b"true":
                reply.append((b"access-control-allow-private-network", b"true"))
        await send({"type": "http.response.start", "status": 204, "headers": reply})
        await send({"type": "http.response.body", "body": b""})

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


def _with_headers(send, extra):
    """`send` with headers added to the reply's start."""
    async def sending(message):
        if message.get("type") == "http.response.start":
            message = dict(message, headers=list(message.get("headers") or []) + extra)
        await send(message)

    return sending


def _open(method: str, path: str) -> bool:
    return (method, path) in OPEN_ENDPOINTS or (method == "GET" and path.startswith(_OPEN_PREFIXES))
