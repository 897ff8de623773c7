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
from typing import Optional

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

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
from kerascharrnn.serving.batcher import BatchingSampler, ModelFailed
from kerascharrnn.serving.context import Serving, authorized, log, short
from kerascharrnn.serving.cors import OriginPolicy
from kerascharrnn.serving.errors import MESSAGE, ClientError, dialect_for, error_reply
from kerascharrnn.serving.guard import Guard, HostPolicy
from kerascharrnn.serving.rules import lowercase_for

# Endpoints open without the API key: liveness (ours and llama.cpp's), rnn-writer's "is the server up" (it cannot
# send a key), and the writing page's own files (a browser cannot send the key for a page load; the page sends it
# itself).
OPEN_ENDPOINTS = (("GET", "/healthz"), ("GET", "/health"), ("GET", "/"), ("GET", page.PAGE))
_OPEN_PREFIXES = (page.PAGE + "/",)


def create_app(engine: Engine, config: ServeConfig, model_name: str = "charrnn",
               batcher: Optional[BatchingSampler] = None, api_key: Optional[str] = None,
               parameters: int = 0, bound_to: Optional[str] = None) -> FastAPI:
    """The FastAPI app over an engine (kerascharrnn.inference.engines).

    Args:
      engine: the model.
      config: the server's settings and limits (its pages: config.cors_origins, cors.py).
      model_name: the name the APIs list the model under.
      batcher: the worker to run requests on (default: a new one).
      api_key: if given, required from every client (see OPEN_ENDPOINTS).
      parameters: the model's parameter count, for the listings (0: unknown).
      bound_to: the address the server listens on: on a loopback one, requests must name this machine
        (guard.HostPolicy; None: no check).
    """
    vocab = engine.vocab
    batcher = batcher or BatchingSampler(engine, config.max_batch_rows, config.max_waiting)
    digest = hashlib.sha256((model_name + "\n" + vocab.to_json()).encode("utf-8")).hexdigest()
    ctx = Serving(engine, config, batcher, model_name, lowercase_for(config.lowercase, vocab), parameters,
                  f"sha256:{digest}", protected=bool(api_key))
    # FastAPI's /docs page loads its script and styles from a CDN: off unless asked for (/openapi.json stays)
    app = FastAPI(title="kerascharrnn", version="1", docs_url="/docs" if config.docs else None, redoc_url=None,
                  description="Character-level RNN text generation for writers' tools: torch-rnn-server's GET"
                              " /generate, OpenAI's, Ollama's, KoboldCpp's and llama.cpp's APIs, and a writing page"
                              " at /write.")
    app.add_middleware(Guard, max_body_bytes=config.max_body_bytes, body_timeout=config.body_timeout,
                       api_key=api_key, pages=OriginPolicy.parse(config.cors_origins, keyed=bool(api_key)),
                       hosts=HostPolicy.for_address(bound_to, config.allowed_hosts), is_open=_open)

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

    @app.exception_handler(ModelFailed)
    async def model_failed(request: Request, exc: ModelFailed):
        # (the batch worker logged the failure; a handler of its own, not Exception's: the connection lives on)
        log.warning("%s %s -> 500: the model failed on this request (%s)", request.method,
                    short(request.url.path), short(str(exc), 200))
        reply = error_reply(dialect_for(request.url.path), ClientError(500, "the model failed on this request"
                                                                            " (logged on the server)"))
        return JSONResponse(reply.body, status_code=500)

    @app.exception_handler(ClientDisconnect)
    async def client_left(request: Request, exc: ClientDisconnect):
        log.info("%s %s: the client left before its request arrived whole", request.method, short(request.url.path))
        return Response(status_code=400)  # (nobody reads it)

    @app.exception_handler(Exception)
    async def server_error(request: Request, exc: Exception):
        log.error("%s %s -> 500", request.method, short(str(request.url)), exc_info=exc)
        reply = error_reply(dialect_for(request.url.path), ClientError(500, "internal server error (logged on the"
                                                                            " server)"))
        return JSONResponse(reply.body, status_code=500)

    @app.get("/healthz")
    async def healthz(request: Request):
        """Liveness; with the API key (or on a server without one), the model and the queue too."""
        if not authorized(request):
            return {"status": "ok"}
        return {"status": "ok", "model": model_name, "vocab_size": vocab.size, "waiting": batcher.waiting}

    for api in (rnn_writer, openai_api, ollama_api, koboldcpp_api, llamacpp_api, json_api, page):
        app.include_router(api.routes(ctx))
    return app


def _open(method: str, path: str) -> bool:
    return (method, path) in OPEN_ENDPOINTS or (method == "GET" and path.startswith(_OPEN_PREFIXES))
