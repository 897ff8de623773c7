"""Ollama's API, for the tools that speak it (the `ollama` client, Open WebUI, Continue, SillyTavern, editor
plug-ins).

    POST /api/generate   model, prompt, suffix, stream (default true: NDJSON lines), options (temperature,
                         top_p, top_k, min_p, typical_p, repeat_penalty, repeat_last_n, presence_penalty,
                         frequency_penalty, seed, num_predict, stop), logprobs, top_logprobs, and Ollama's other
                         fields (system, template, context, raw, keep_alive, images, think: no effect here). An
                         empty prompt loads the model and answers at once (done_reason "load").
    POST /api/chat       the same for a conversation (`messages`: chat.py); the reply's `message`
    GET  /api/tags       the served model, as "NAME:latest"; GET /api/ps the same, as loaded
    POST /api/show       its details (a completion model; its chat transcript as the template)
    GET  /api/version    the Ollama API version this follows

Temperature, top-p, top-k and the length default to Ollama's defaults; penalties are off unless asked (Ollama's
repeat_penalty 1.1 is a default of its models' files, not of the API). A token is a character (or a byte, for a
byte-level model). As in the OpenAI API a suffix cannot shape a left-to-right model's text. `format` (JSON
output) is refused: a character model cannot promise JSON. Errors are Ollama's: {"error": "..."}.
"""

import datetime
import json
import time
from typing import Any, AsyncIterator, Callable, Dict, List, Optional, Union

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

import kerascharrnn
from kerascharrnn.serving import chat, request
from kerascharrnn.serving.completion import Completion, Delta, Token, failure, token_bytes, token_text
from kerascharrnn.serving.context import Serving, WireModel, request_schema
from kerascharrnn.serving.llamacpp_api import Samplers
from kerascharrnn.serving.errors import ClientError

OLLAMA_API_VERSION = "0.12.0"  # the Ollama release whose API this follows
# Ollama's own defaults, which its clients expect when they send no options
DEFAULT_OPTIONS = {"temperature": 0.8, "top_p": 0.9, "top_k": 40, "num_predict": 128}
NAMES = {"max_new": "num_predict", "stops": "stop", "repetition_penalty": "repeat_penalty",
         "penalty_range": "repeat_last_n", "typical_p": "typical_p", "prompts": "prompt", "logprobs": "top_logprobs"}


class Options(Samplers):  # llama.cpp's sampler names
    num_predict: Optional[int] = None


class Shared(WireModel):
    """What /api/generate and /api/chat share."""

    model: str
    stream: Optional[bool] = True
    options: Optional[Options] = None
    format: Optional[Union[str, Dict[str, Any]]] = None
    logprobs: Optional[bool] = None
    top_logprobs: Optional[int] = None


class GenerateRequest(Shared):
    prompt: Optional[str] = ""
    suffix: Optional[str] = None


class Message(WireModel):
    role: str
    content: Optional[str] = ""


class ChatRequest(Shared):
    messages: Optional[List[Message]] = None


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat().replace("+00:00", "Z")


def routes(ctx: Serving) -> APIRouter:
    """The Ollama-compatible endpoints over the app's model."""
    router = APIRouter()
    vocab = ctx.vocab
    tagged = f"{ctx.model_name}:latest"
    details = {"format": "keras", "family": "charrnn", "families": ["charrnn"],
               "parameter_size": f"{ctx.parameters / 1e6:.1f}M", "quantization_level": "F32"}

    def check_model(name: str) -> None:
        if name not in (ctx.model_name, tagged):
            raise ClientError(404, f"model '{name}' not found")

    def sampling_request(body: Shared, prompt: str, stops=()) -> request.SamplingRequest:
        if body.format not in (None, ""):
            raise ClientError(400, "format: a character model writes free text; it cannot promise JSON")
        options = body.options or Options()
        value = {name: getattr(options, name) if getattr(options, name) is not None else default
                 for name, default in DEFAULT_OPTIONS.items()}
        wanted = (body.top_logprobs or 0) if body.logprobs else None
        return request.build(
            ctx.config, vocab, NAMES, prompts=[prompt], max_new=value["num_predict"],
            stops=list(options.stop or []) + list(stops), seed=options.seed, logprobs=wanted,
            stream=body.stream is not False, temperature=value["temperature"], top_p=value["top_p"],
            top_k=value["top_k"], min_p=options.min_p, typical_p=options.typical_p,
            repetition_penalty=options.repeat_penalty, penalty_range=options.repeat_last_n,
            presence_penalty=options.presence_penalty, frequency_penalty=options.frequency_penalty)

    def logprobs_of(tokens: List[Token]) -> List[dict]:
        def entry(unit, logprob):
            return {"token": token_text(unit), "logprob": logprob, "bytes": token_bytes(unit)}

        return [dict(entry(t.unit, t.logprob), top_logprobs=[entry(vocab.tokens[i], v) for i, v in t.top])
                for t in tokens]

    async def reply(http_request: Request, completion: Completion, started: int, model: str,
                    content: Callable[[str], dict]):
        """The answer in Ollama's shape: NDJSON lines as the text is made (then the last, with the counts), or one
        object; `content(text)` is the fields that carry text (generate's `response`, chat's `message`)."""
        wanted = completion.request.logprobs is not None

        def line(delta: Delta, **extra) -> dict:
            body = dict(model=model, created_at=_now(), **content(delta.text), done=False, **extra)
            if wanted:
                body["logprobs"] = logprobs_of(delta.tokens)
            return body

        def last(delta: Delta) -> dict:
            duration = time.perf_counter_ns() - started
            return line(delta, context=[], total_duration=duration, load_duration=0,
                        prompt_eval_count=completion.prompt_tokens, prompt_eval_duration=0,
                        eval_count=completion.completion_tokens, eval_duration=duration) | \
                {"done": True, "done_reason": delta.finish_reason}

        if not completion.request.stream:
            (delta,) = await completion.result()
            return JSONResponse(last(delta))
        deltas = await completion.deltas()

        async def lines() -> AsyncIterator[str]:
            try:
                async for delta in deltas:
                    yield json.dumps(last(delta) if delta.finish_reason else line(delta), ensure_ascii=False) + "\n"
            except Exception as e:  # noqa: BLE001 - the reply is under way: the stream says why it ends
                yield json.dumps({"error": failure(e)}) + "\n"

        return StreamingResponse(lines(), media_type="application/x-ndjson")

    def loaded(model: str, **content) -> JSONResponse:
        return JSONResponse(dict(model=model, created_at=_now(), **content, done=True, done_reason="load"))

    @router.post("/api/generate", openapi_extra=request_schema(GenerateRequest))
    async def generate(http_request: Request):
        """Ollama's generate (see the module docstring)."""
        started = time.perf_counter_ns()
        body = await ctx.parse(http_request, GenerateRequest)
        check_model(body.model)
        prompt = body.prompt or ""
        if not prompt:  # Ollama: an empty prompt loads the model and answers at once
            return loaded(body.model, response="")
        completion = Completion(ctx, sampling_request(body, request.continued(prompt)), http_request)
        return await reply(http_request, completion, started, body.model, lambda text: {"response": text})

    @router.post("/api/chat", openapi_extra=request_schema(ChatRequest))
    async def chat_reply(http_request: Request):
        """Ollama's chat, over a transcript of the messages (chat.py)."""
        started = time.perf_counter_ns()
        body = await ctx.parse(http_request, ChatRequest)
        check_model(body.model)
        if not body.messages:  # Ollama: no messages loads the model
            return loaded(body.model, message={"role": "assistant", "content": ""})
        prompt, stops = chat.transcript([(m.role, "", m.content or "") for m in body.messages])
        completion = Completion(ctx, sampling_request(body, prompt, stops), http_request)
        return await reply(http_request, completion, started, body.model,
                           lambda text: {"message": {"role": "assistant", "content": text}})

    def listing() -> dict:
        return {"name": tagged, "model": tagged, "modified_at": _now(), "size": 4 * int(ctx.parameters),
                "digest": ctx.digest, "details": details}

    @router.get("/api/tags")
    async def tags():
        return {"models": [listing()]}

    @router.get("/api/ps")
    async def running():
        return {"models": [dict(listing(), expires_at="2999-01-01T00:00:00Z", size_vram=0)]}

    class ShowRequest(WireModel):
        model: Optional[str] = None
        name: Optional[str] = None  # the older clients' field

    @router.post("/api/show")
    async def show(http_request: Request):
        """What a plug-in asks before it generates: the model's details (a completion model, whose chat is a
        transcript: the template)."""
        body = await ctx.parse(http_request, ShowRequest)
        check_model(body.model or body.name or "")
        return {"modelfile": "", "parameters": "", "template": chat.TEMPLATE, "details": details,
                "model_info": {"general.architecture": "charrnn", "general.parameter_count": int(ctx.parameters)},
                "capabilities": ["completion"], "modified_at": _now()}

    @router.get("/api/version")
    async def version():
        return {"version": OLLAMA_API_VERSION, "kerascharrnn": kerascharrnn.__version__}

    return router
