"""Ollama's generation API, for the `ollama` client and the editor plug-ins that talk to a local Ollama.

    POST /api/generate   model, prompt, suffix, stream (default true: newline-delimited JSON chunks
                         {model, created_at, response, done}, the last with done_reason and counts), options:
                         temperature (0.8), top_p (0.9), top_k (40), seed, num_predict (128; -1: as many as the
                         server allows), stop; other options and fields Ollama knows are accepted and have no
                         effect (the log names them). An empty prompt answers at once, done_reason "load".
    GET  /api/tags       the served model, as "NAME:latest"
    POST /api/show       its details (a completion model: no chat template)
    GET  /api/version    the Ollama API version this follows

The defaults are Ollama's. A token is a character (or a byte, for a byte-level model). As in the OpenAI API
(openai_api.py) a suffix cannot shape a left-to-right model's text. Errors are Ollama's: {"error": "..."}.
"""

import datetime
import json
import time
from typing import Any, Dict, List, Optional, Union

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

import kerascharrnn
from kerascharrnn.inference.sampling import Piece
from kerascharrnn.serving.batcher import Expired, Job
from kerascharrnn.serving.context import Serving, finished_rows, log, parse_body, started_pieces
from kerascharrnn.serving.errors import ClientError
from kerascharrnn.serving.openai_api import Choice

OLLAMA_API_VERSION = "0.12.0"  # the Ollama release whose /api/generate, /api/tags and /api/version this follows
# Ollama's own defaults, which its clients expect when they send no options
DEFAULT_OPTIONS = {"temperature": 0.8, "top_p": 0.9, "top_k": 40, "num_predict": 128}


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat().replace("+00:00", "Z")


def routes(ctx: Serving) -> APIRouter:
    """The Ollama-compatible endpoints over the app's model."""
    router = APIRouter()
    config = ctx.config

    class Options(BaseModel):
        model_config = ConfigDict(extra="allow", strict=True)
        temperature: Optional[float] = Field(None, ge=0, le=100, allow_inf_nan=False)
        top_p: Optional[float] = Field(None, ge=0, le=1, allow_inf_nan=False)
        top_k: Optional[int] = Field(None, ge=0, le=1_000_000)
        seed: Optional[int] = Field(None, ge=-2**63, le=2**63 - 1)
        num_predict: Optional[int] = Field(None, ge=-2, le=config.max_num_new_chars)
        stop: Optional[List[str]] = Field(None, max_length=16)

    class GenerateRequest(BaseModel):
        model_config = ConfigDict(extra="allow", strict=True)
        model: str
        prompt: Optional[str] = ""
        suffix: Optional[str] = None
        stream: Optional[bool] = True
        options: Optional[Options] = None
        # Ollama's other fields: accepted, no effect on a char-RNN
        system: Optional[str] = None
        template: Optional[str] = None
        context: Optional[List[int]] = None
        raw: Optional[bool] = None
        format: Optional[Union[str, Dict[str, Any]]] = None
        keep_alive: Optional[Union[str, int, float]] = None
        think: Optional[Union[bool, str]] = None

    schema = {"requestBody": {"required": True, "content": {"application/json": {
        "schema": GenerateRequest.model_json_schema()}}}}
    tagged = f"{ctx.model_name}:latest"

    def check_model(name: str) -> None:
        if name not in (ctx.model_name, tagged):
            raise ClientError(404, f"model '{name}' not found")

    @router.post("/api/generate", openapi_extra=schema)
    async def generate(request: Request):
        """Ollama's generate (see the module docstring)."""
        started = time.perf_counter_ns()
        body = await parse_body(request, GenerateRequest)
        check_model(body.model)
        options = body.options or Options()
        ignored = sorted({*(body.model_extra or {}), *(options.model_extra or {})})
        if ignored:
            log.info("POST /api/generate: no effect on this model: %s", ", ".join(ignored)[:300])
        prompt = body.prompt or ""
        base = {"model": body.model}
        if not prompt:  # Ollama: an empty prompt loads the model and answers at once
            return JSONResponse(dict(base, created_at=_now(), response="", done=True, done_reason="load"))
        ctx.check_prompt_length(prompt, "prompt")
        ids = ctx.prompt_ids(prompt, "POST /api/generate")
        value = {name: getattr(options, name) if getattr(options, name) is not None else default
                 for name, default in DEFAULT_OPTIONS.items()}
        num_predict = value["num_predict"] if value["num_predict"] >= 0 else config.max_num_new_chars
        seed = None if options.seed is None else options.seed % (2**62) + 1
        job = ctx.submit(Job([ids], num_predict, [value["temperature"]], top_k=value["top_k"],
                             top_p=value["top_p"], seed=seed,
                             stream=body.stream is not False))
        choice = Choice(0, ctx.vocab, prompt, False, list(options.stop or []), None)

        def last(text: str, reason: str) -> dict:
            duration = time.perf_counter_ns() - started
            return dict(base, created_at=_now(), response=text, done=True, done_reason=reason,
                        context=[], total_duration=duration, load_duration=0, prompt_eval_count=len(ids),
                        prompt_eval_duration=0, eval_count=choice.completion_tokens, eval_duration=duration)

        if body.stream is False:
            (row_ids, _), = await finished_rows(job, request)
            parts = [p for p in (choice.feed(Piece(row_ids, choice.primed, None, True)), choice.finish()) if p]
            return JSONResponse(last("".join(p["text"] for p in parts), parts[-1]["finish_reason"]))

        pieces = await started_pieces(job, request)

        async def stream():
            try:
                try:
                    async for _, piece in pieces:
                        part = choice.feed(piece)
                        if choice.stopped:
                            job.cancel_row(0)
                        if part:
                            yield json.dumps(dict(base, created_at=_now(), response=part["text"], done=False),
                                             ensure_ascii=False) + "\n"
                except Expired as e:
                    yield json.dumps({"error": f"the server is overloaded: the request was {e}"}) + "\n"
                    return
                part = choice.finish()
                yield json.dumps(last(part["text"], part["finish_reason"]), ensure_ascii=False) + "\n"
            finally:
                job.cancel()

        return StreamingResponse(stream(), media_type="application/x-ndjson")

    details = {"format": "keras", "family": "charrnn", "families": ["charrnn"],
               "parameter_size": f"{ctx.parameters / 1e6:.1f}M", "quantization_level": "F32"}

    @router.get("/api/tags")
    async def tags():
        return {"models": [{"name": tagged, "model": tagged, "modified_at": _now(), "size": 4 * int(ctx.parameters),
                            "digest": ctx.digest, "details": details}]}

    class ShowRequest(BaseModel):
        model_config = ConfigDict(extra="allow", strict=True)
        model: Optional[str] = None
        name: Optional[str] = None  # the older clients' field

    @router.post("/api/show")
    async def show(request: Request):
        """What a plug-in asks before it generates: the model's details (a completion model, no template)."""
        body = await parse_body(request, ShowRequest)
        check_model(body.model or body.name or "")
        return {"modelfile": "", "parameters": "", "template": "{{ .Prompt }}", "details": details,
                "model_info": {"general.architecture": "charrnn", "general.parameter_count": int(ctx.parameters)},
                "capabilities": ["completion"], "modified_at": _now()}

    @router.get("/api/version")
    async def version():
        return {"version": OLLAMA_API_VERSION, "kerascharrnn": kerascharrnn.__version__}

    return router
