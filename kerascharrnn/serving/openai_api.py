"""OpenAI's API as OpenAI-compatible local servers speak it (vLLM, llama.cpp's, text-generation-webui, tabbyAPI),
for the tools that use it: the `openai` client, `llm`, LangChain, KoboldAI Lite, Mikupad, SillyTavern, editor
plug-ins.

    POST /v1/completions        model, prompt (a string, a list of them, or token ids), suffix, max_tokens (left
                                out or -1: as many as the server allows, as llama.cpp's server reads it),
                                temperature, top_p, n, stream, stream_options,
                                stop, logprobs (up to the vocabulary's size), echo, seed, user, presence_penalty,
                                frequency_penalty, logit_bias; and the local servers' samplers: top_k, min_p,
                                typical_p, repetition_penalty (repeat_penalty), repetition_penalty_range
                                (0: the whole text, as text-generation-webui reads it) or repeat_last_n
                                (llama.cpp's: 0 off, -1 the whole text)
    POST /v1/chat/completions   the same settings for a conversation (`messages`: chat.py), logprobs (true/false)
                                with top_logprobs, max_completion_tokens
    GET  /v1/models             the served model; GET /v1/models/{id} (and tabbyAPI's /v1/model/list,
                                text-generation-webui's /v1/internal/model/info)
    POST /v1/token/encode, /v1/internal/encode, /v1/internal/token-count: a text's tokens (tabbyAPI's and
                                text-generation-webui's, which frontends call to count tokens)

Fields these servers accept that mean nothing for a character model are ignored (named once in the log). The
model's name may be left out or empty (llama.cpp ignores it); another model's name is a 404. Errors are OpenAI's
shape: {"error": {"message", "type", "param", "code"}}.
"""

import json
import time
import uuid
from typing import Any, AsyncIterator, Dict, List, Optional, Union

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from kerascharrnn.serving import chat, request
from kerascharrnn.serving.completion import Completion, Delta, Expired, Token, failure, token_bytes, token_text
from kerascharrnn.serving.context import Serving, WireModel, request_schema
from kerascharrnn.serving.errors import ClientError



class StreamOptions(WireModel):
    include_usage: Optional[bool] = False


class Sampling(WireModel):
    """The settings both endpoints take."""

    model: Optional[str] = None
    temperature: Optional[float] = None
    top_p: Optional[float] = None
    top_k: Optional[int] = None
    min_p: Optional[float] = None
    typical_p: Optional[float] = None
    repetition_penalty: Optional[float] = None
    repeat_penalty: Optional[float] = None  # llama.cpp's name
    repetition_penalty_range: Optional[int] = None
    repeat_last_n: Optional[int] = None  # llama.cpp's name
    presence_penalty: Optional[float] = None
    frequency_penalty: Optional[float] = None
    logit_bias: Optional[Any] = None
    n: Optional[int] = None
    stream: Optional[bool] = False
    stream_options: Optional[StreamOptions] = None
    stop: Optional[Union[str, List[str]]] = None
    seed: Optional[int] = None
    user: Optional[str] = None


class CompletionRequest(Sampling):
    prompt: Union[str, List[str], List[int], List[List[int]]] = ""
    suffix: Optional[str] = None
    max_tokens: Optional[int] = None
    logprobs: Optional[int] = None
    echo: Optional[bool] = False


class Message(WireModel):
    role: str
    content: Optional[Union[str, List[Any]]] = None
    name: Optional[str] = None


class ChatRequest(Sampling):
    messages: List[Message]
    max_tokens: Optional[int] = None
    max_completion_tokens: Optional[int] = None
    logprobs: Optional[bool] = False
    top_logprobs: Optional[int] = None
    response_format: Optional[Dict[str, Any]] = None


def _given(body: WireModel, *names: str):
    """(the first of `names` the client sent, its value), or (names[0], None)."""
    for name in names:
        if getattr(body, name) is not None:
            return name, getattr(body, name)
    return names[0], None


def sampling_request(ctx: Serving, body: Sampling, prompts: List[str], max_new: Optional[int], names: Dict[str, str],
                     **more) -> request.SamplingRequest:
    """The SamplingRequest of either endpoint's body."""
    penalty_name, penalty = _given(body, "repetition_penalty", "repeat_penalty")
    range_name, penalty_range = _given(body, "repetition_penalty_range", "repeat_last_n")
    if range_name == "repetition_penalty_range" and penalty_range == 0:
        penalty_range = -1  # text-generation-webui's 0: the whole text (llama.cpp's repeat_last_n 0: none)
    stops = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    return request.build(
        ctx.config, ctx.vocab, dict(names, repetition_penalty=penalty_name, penalty_range=range_name),
        prompts=prompts, n=body.n, max_new=max_new, stops=stops, seed=body.seed, stream=bool(body.stream),
        logit_bias=body.logit_bias, temperature=body.temperature, top_p=body.top_p, top_k=body.top_k,
        min_p=body.min_p, typical_p=body.typical_p, repetition_penalty=penalty, penalty_range=penalty_range,
        presence_penalty=body.presence_penalty, frequency_penalty=body.frequency_penalty, **more)


def routes(ctx: Serving) -> APIRouter:
    """The OpenAI-compatible endpoints over the app's model."""
    router = APIRouter()
    vocab = ctx.vocab

    def check_model(name: Optional[str]) -> None:
        if name and name != ctx.model_name:
            raise ClientError(404, f"The model `{name}` does not exist; this server serves `{ctx.model_name}`",
                              param="model", code="model_not_found")

    def completion_prompts(prompt) -> List[str]:
        if isinstance(prompt, str):
            return [prompt]
        if prompt and all(isinstance(p, int) for p in prompt):
            prompt = [prompt]  # one prompt of token ids
        return [p if isinstance(p, str) else ctx.decode_ids(p, "prompt") for p in prompt]

    def legacy_logprobs(tokens: List[Token], offset: int, wanted: int) -> dict:
        names = [token_text(t.unit) for t in tokens]
        return {"tokens": names, "token_logprobs": [t.logprob for t in tokens],
                "top_logprobs": [{token_text(vocab.tokens[i]): v for i, v in t.top[:wanted]}
                                 if t.logprob is not None else None for t in tokens],
                "text_offset": list(range(offset, offset + len(tokens)))}

    def chat_logprobs(tokens: List[Token]) -> dict:
        def entry(unit, logprob):
            return {"token": token_text(unit), "logprob": -9999.0 if logprob is None else logprob,
                    "bytes": token_bytes(unit)}

        return {"content": [dict(entry(t.unit, t.logprob), top_logprobs=[entry(vocab.tokens[i], v) for i, v in t.top])
                            for t in tokens]}

    def usage(completion: Completion) -> dict:
        return {"prompt_tokens": completion.prompt_tokens, "completion_tokens": completion.completion_tokens,
                "total_tokens": completion.prompt_tokens + completion.completion_tokens}

    def event(chunk: dict) -> str:
        return f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n"

    async def stream(completion: Completion, deltas: AsyncIterator[Delta], base: dict, part,
                     options: Optional[StreamOptions], first_parts=()):
        """Server-sent events: `first_parts` (a chat's role), a chunk per delta as it is made, the usage if asked,
        then [DONE]."""
        include_usage = bool(options and options.include_usage)

        def chunk(parts: List[dict], **extra) -> str:
            body = dict(base, choices=parts, **extra)
            if include_usage and "usage" not in extra:
                body["usage"] = None
            return event(body)

        for first in first_parts:
            yield chunk([first])
        try:
            async for delta in deltas:
                yield chunk([part(delta)])
        except Exception as e:  # noqa: BLE001 - the reply is under way: the stream says why it ends
            yield event({"error": {"message": failure(e), "type": "server_error", "param": None,
                                   "code": "timeout" if isinstance(e, Expired) else None}})
            return
        if include_usage:
            yield chunk([], usage=usage(completion))
        yield "data: [DONE]\n\n"

    def streaming(generator) -> StreamingResponse:
        return StreamingResponse(generator, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    @router.post("/v1/completions", openapi_extra=request_schema(CompletionRequest))
    async def completions(http_request: Request):
        """OpenAI's (legacy) completions (see the module docstring)."""
        body = await ctx.parse(http_request, CompletionRequest)
        check_model(body.model)
        prompts = [request.continued(p) for p in completion_prompts(body.prompt)]
        wanted = body.logprobs
        # no max_tokens, or -1: as many as the server allows, as llama.cpp's server reads it (OpenAI's 16 would cut
        # a writing frontend's continuation short)
        sampling = sampling_request(ctx, body, prompts, body.max_tokens, {"max_new": "max_tokens", "prompts": "prompt"},
                                    logprobs=wanted, echo=bool(body.echo))
        completion = Completion(ctx, sampling, http_request)
        base = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
                "model": ctx.model_name}
        offsets = {}

        def part(delta: Delta) -> dict:
            if delta.index not in offsets:  # text_offset counts from the start of the prompt (its echo or not)
                offsets[delta.index] = 0 if sampling.echo else len(vocab.to_units(prompts[delta.index // sampling.n]))
            logprobs = None
            if wanted is not None and delta.tokens:
                logprobs = legacy_logprobs(delta.tokens, offsets[delta.index], wanted)
            offsets[delta.index] += len(delta.tokens)
            return {"text": delta.text, "index": delta.index, "logprobs": logprobs,
                    "finish_reason": delta.finish_reason}

        if sampling.stream:
            deltas = await completion.deltas()
            return streaming(stream(completion, deltas, base, part, body.stream_options))
        base["choices"] = [part(delta) for delta in await completion.result()]
        base["usage"] = usage(completion)
        return JSONResponse(base)

    @router.post("/v1/chat/completions", openapi_extra=request_schema(ChatRequest))
    async def chat_completions(http_request: Request):
        """OpenAI's chat completions over a transcript of the messages (chat.py)."""
        body = await ctx.parse(http_request, ChatRequest)
        check_model(body.model)
        kind = (body.response_format or {}).get("type", "text")
        if kind != "text":
            raise ClientError(400, f"response_format: {str(kind)[:40]!r}: a character model writes free text; it cannot"
                                   " promise JSON", param="response_format")
        messages = [(m.role, m.name or "", chat.message_text(m.content, f"messages.{i}.content"))
                    for i, m in enumerate(body.messages)]
        prompt, stops = chat.transcript(messages)
        stop_name = "stop"
        max_name, max_tokens = _given(body, "max_completion_tokens", "max_tokens")
        wanted = (body.top_logprobs or 0) if body.logprobs else None
        given = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
        body = body.model_copy(update={"stop": given + stops})
        sampling = sampling_request(ctx, body, [prompt], max_tokens, {"max_new": max_name, "prompts": "messages",
                                                                      "stops": stop_name, "logprobs": "top_logprobs"},
                                    logprobs=wanted)
        completion = Completion(ctx, sampling, http_request)
        base = {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
                "model": ctx.model_name}

        def logprobs_of(delta: Delta):
            return chat_logprobs(delta.tokens) if wanted is not None else None

        if sampling.stream:
            deltas = await completion.deltas()
            base["object"] = "chat.completion.chunk"

            def part(delta: Delta) -> dict:
                content = {"content": delta.text} if delta.text else {}
                return {"index": delta.index, "delta": content, "logprobs": logprobs_of(delta) if delta.text else None,
                        "finish_reason": delta.finish_reason}

            roles = [{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                      "finish_reason": None} for i in range(sampling.rows)]
            return streaming(stream(completion, deltas, base, part, body.stream_options, roles))
        base["choices"] = [{"index": d.index, "message": {"role": "assistant", "content": d.text},
                            "logprobs": logprobs_of(d), "finish_reason": d.finish_reason}
                           for d in await completion.result()]
        base["usage"] = usage(completion)
        return JSONResponse(base)

    @router.get("/v1/models")
    @router.get("/v1/model/list")  # tabbyAPI's
    async def models():
        return {"object": "list", "data": [_model_card(ctx)]}

    @router.get("/v1/internal/model/info")  # text-generation-webui's
    async def model_info():
        return {"model_name": ctx.model_name, "lora_names": []}

    @router.get("/v1/models/{model_id:path}")
    async def model(model_id: str):
        check_model(model_id)
        return _model_card(ctx)

    class EncodeRequest(WireModel):
        text: Optional[str] = None
        prompt: Optional[str] = None

    async def encoded(http_request: Request) -> List[int]:
        body = await ctx.parse(http_request, EncodeRequest)
        text = body.text if body.text is not None else body.prompt or ""
        return [int(i) for i in vocab.encode_known(text)[0]]

    @router.post("/v1/token/encode")
    @router.post("/v1/internal/encode")
    async def encode(http_request: Request):
        """A text's token ids (characters the vocabulary lacks are left out, as a prompt's are)."""
        tokens = await encoded(http_request)
        return {"tokens": tokens, "length": len(tokens)}

    @router.post("/v1/internal/token-count")
    async def token_count(http_request: Request):
        return {"length": len(await encoded(http_request))}

    return router


def _model_card(ctx: Serving) -> dict:
    return {"id": ctx.model_name, "object": "model", "created": 0, "owned_by": "kerascharrnn"}
