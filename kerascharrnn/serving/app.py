"""bin/serve's web application: torch-rnn-server's API, which rnn-writer calls, plus a JSON API.

    GET  /                 {"message": ...}: rnn-writer's "is the server up" check
    GET  /generate         ?start_text=<percent-encoded>&n=<int>: torch-rnn-server's sentence completions
    GET  /healthz          liveness and the model's vocabulary size
    POST /v1/generate      explicit sampling parameters in a JSON body
    GET  /openapi.json, /docs   the schema, from FastAPI

Every error reply is JSON with a "message" key (rnn-writer shows it to the writer and silently ignores
a body without one), 4xx for client mistakes, and a log line with the request; never a traceback.

Model runs happen on one worker thread (batcher.py); torch-rnn-server's rules are in rules.py, the HTTP
layer in http.py.

(No `from __future__ import annotations` here: FastAPI must see the request model classes, which are
built per app from the configured caps, as classes rather than strings.)
"""

import logging
import random
import time
from typing import List, Literal, Optional

import numpy as np
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException

from kerascharrnn.config import ServeConfig
from kerascharrnn.inference.engines import Engine
from kerascharrnn.serving.batcher import BatchingSampler
from kerascharrnn.serving.rules import (
    TEMPERATURES,
    ClientError,
    cut_at_stop,
    cut_completion,
    decode_component,
    describe_characters,
    lowercase_for,
    normalize_start_text,
    parse_n,
    raw_query_value,
    unknown_in,
)
from kerascharrnn.vocab import Vocabulary

log = logging.getLogger("kerascharrnn.serve")


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
