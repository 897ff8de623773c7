"""llama.cpp server's own API (Mikupad's default, Tabby, llama.vim and llama.vscode, SillyTavern's llama.cpp
source).

    POST /completion (/completions)  prompt (a string, token ids, or a list of prompts: then a list of results),
                                     n_predict (-1: as many as the server allows), temperature (0.8), top_k (40),
                                     top_p (0.95), min_p (0.05), typical_p, repeat_penalty, repeat_last_n (64; -1:
                                     the whole text, as far back as the sampler looks), presence_penalty,
                                     frequency_penalty, logit_bias ([[id or text, bias or false]] or {id: bias}),
                                     n_probs (with post_sampling_probs: probabilities), seed (-1: random), stop,
                                     stream, n_cmpl (completions), response_fields
    POST /infill                     input_prefix (+ prompt) continued; input_suffix cannot shape a left-to-right
                                     model's text
    POST /tokenize, /detokenize      {content} -> {tokens} (with_pieces: [{id, piece}]); {tokens} -> {content}
    POST /apply-template             {messages} -> {prompt}: the chat transcript (chat.py)
    GET  /props, /health (/v1/health)

The reply is llama.cpp's (content, stop, stop_type, tokens_predicted, tokens_evaluated, generation_settings,
timings, completion_probabilities in its current form: id, token, bytes, logprob, top_logprobs); a stream is
`data: {...}` events, each with `content` and `stop`, and no [DONE]. The log-probabilities are the model's own,
before the sampling filters (also with post_sampling_probs). Its other samplers (mirostat, dry, xtc,
dynatemp, grammar, samplers order) and its cache and slot settings are ignored, named once in the log. Errors are
llama.cpp's shape: {"error": {"code", "message", "type"}}.
"""

import json
import math
import time
from typing import Any, Dict, List, Optional, Union

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from kerascharrnn.sampling_settings import MAX_PENALTY_RANGE
from kerascharrnn.serving import chat, request
from kerascharrnn.serving.completion import Completion, Delta, Expired, Token, failure, token_bytes, token_text
from kerascharrnn.serving.context import Serving, WireModel, request_schema
from kerascharrnn.serving.errors import ClientError

# llama-server's defaults for the fields a client leaves out
DEFAULTS = {"temperature": 0.8, "top_k": 40, "top_p": 0.95, "min_p": 0.05, "repeat_last_n": 64}
NAMES = {"max_new": "n_predict", "stops": "stop", "repetition_penalty": "repeat_penalty",
         "penalty_range": "repeat_last_n", "prompts": "prompt", "logprobs": "n_probs", "n": "n_cmpl"}


class Samplers(WireModel):
    """llama.cpp's sampler fields (Ollama's options take them by the same names)."""

    temperature: Optional[float] = None
    top_k: Optional[int] = None
    top_p: Optional[float] = None
    min_p: Optional[float] = None
    typical_p: Optional[float] = None
    repeat_penalty: Optional[float] = None
    repeat_last_n: Optional[int] = None
    presence_penalty: Optional[float] = None
    frequency_penalty: Optional[float] = None
    seed: Optional[int] = None
    stop: Optional[List[str]] = None


class CompletionRequest(Samplers):
    prompt: Union[str, List[Union[str, int, List[Union[str, int]]]], Dict[str, Any]] = ""
    n_predict: Optional[int] = None
    max_tokens: Optional[int] = None  # llama.cpp takes OpenAI's name too
    logit_bias: Optional[Any] = None
    n_probs: Optional[int] = None
    post_sampling_probs: Optional[bool] = False
    stream: Optional[bool] = False
    n_cmpl: Optional[int] = None
    response_fields: Optional[List[str]] = None


class InfillRequest(CompletionRequest):
    input_prefix: Optional[str] = ""
    input_suffix: Optional[str] = ""


class TokenizeRequest(WireModel):
    content: Optional[str] = ""
    with_pieces: Optional[bool] = False


class DetokenizeRequest(WireModel):
    tokens: List[int] = []


class TemplateRequest(WireModel):
    messages: List[Dict[str, Any]]


def _picked(result: dict, fields: Optional[List[str]]) -> dict:
    """llama.cpp's response_fields: only these fields, a nested one ("timings/prompt_n") at the top under its path."""
    if not fields:
        return result
    picked = {}
    for path in fields:
        value: Any = result
        for key in path.split("/"):
            value = value.get(key) if isinstance(value, dict) else None
        if value is not None:
            picked[path] = value
    return picked


def routes(ctx: Serving) -> APIRouter:
    """The llama.cpp-compatible endpoints over the app's model."""
    router = APIRouter()
    config, vocab = ctx.config, ctx.vocab

    def prompt_texts(prompt) -> List[str]:
        """llama.cpp's prompt forms: a string, token ids (mixed with strings), {prompt_string}, or a list of
        prompts (each a string or a list of ids and strings)."""
        def one(items) -> str:
            return "".join(x if isinstance(x, str) else ctx.decode_ids([x], "prompt") for x in items)

        if isinstance(prompt, dict):
            text = prompt.get("prompt_string", "")
            if not isinstance(text, str):
                raise ClientError(400, "prompt.prompt_string: a string", param="prompt")
            return [text]
        if isinstance(prompt, str):
            return [prompt]
        if any(isinstance(p, int) for p in prompt) and all(isinstance(p, (int, str)) for p in prompt):
            return [one(prompt)]  # one prompt of ids (and strings)
        if all(isinstance(p, (str, list)) for p in prompt):
            return [p if isinstance(p, str) else one(p) for p in prompt] or [""]
        raise ClientError(400, "prompt: a string, token ids, or a list of prompts (strings or lists of ids)",
                          param="prompt")

    def sampling_request(body: CompletionRequest, prompts: List[str]) -> request.SamplingRequest:
        value = {name: getattr(body, name) if getattr(body, name) is not None else default
                 for name, default in DEFAULTS.items()}
        top_k = value["top_k"] if value["top_k"] > 0 else 0  # llama.cpp: top_k <= 0 is off
        max_new = body.n_predict if body.n_predict is not None else body.max_tokens
        seed = None if body.seed is None or body.seed == -1 else body.seed
        penalty_range = MAX_PENALTY_RANGE if value["repeat_last_n"] == -1 else value["repeat_last_n"]
        if penalty_range < -1:
            raise ClientError(400, "repeat_last_n must be >= -1", param="repeat_last_n")
        return request.build(
            config, vocab, NAMES, prompts=prompts, n=body.n_cmpl, max_new=max_new, stops=body.stop or [],
            seed=seed, logprobs=body.n_probs if body.n_probs else None, stream=bool(body.stream),
            logit_bias=body.logit_bias, temperature=value["temperature"], top_k=top_k, top_p=value["top_p"],
            min_p=value["min_p"], typical_p=body.typical_p, repetition_penalty=body.repeat_penalty,
            penalty_range=penalty_range, presence_penalty=body.presence_penalty,
            frequency_penalty=body.frequency_penalty)

    def probabilities(tokens: List[Token], as_probs: bool) -> List[dict]:
        """completion_probabilities in llama.cpp's current form (with post_sampling_probs: probabilities)."""
        def entry(token_id, unit, logprob):
            item = {"id": token_id, "token": token_text(unit), "bytes": token_bytes(unit)}
            if as_probs:
                item["prob"] = 0.0 if logprob is None else math.exp(logprob)
            else:
                item["logprob"] = -3.4028234663852886e38 if logprob is None else logprob  # llama.cpp's lowest
            return item

        top = "top_probs" if as_probs else "top_logprobs"
        return [dict(entry(t.id, t.unit, t.logprob), **{top: [entry(i, vocab.tokens[i], v) for i, v in t.top]})
                for t in tokens]

    def settings_of(sampling: request.SamplingRequest) -> dict:
        s = sampling.settings
        return {"n_ctx": config.max_start_text, "n_predict": sampling.max_new, "temperature": s.temperature,
                "top_k": s.top_k, "top_p": s.top_p, "min_p": s.min_p, "typical_p": s.typical_p,
                "repeat_penalty": s.repetition_penalty, "repeat_last_n": s.penalty_range,
                "presence_penalty": s.presence_penalty, "frequency_penalty": s.frequency_penalty,
                "seed": -1 if sampling.seed is None else sampling.seed, "stop": list(sampling.stops),
                "n_probs": sampling.logprobs or 0, "stream": sampling.stream,
                "logit_bias": [{"token": t, "bias": b if math.isfinite(b) else False} for t, b in s.logit_bias]}

    async def complete(http_request: Request, body: CompletionRequest, prompts: List[str]):
        started = time.perf_counter()
        sampling = sampling_request(body, prompts)
        completion = Completion(ctx, sampling, http_request)
        wanted = sampling.logprobs is not None
        as_probs = bool(body.post_sampling_probs)
        prompt_lengths = [len(vocab.to_units(p)) for p in sampling.prompts]
        made = [0] * sampling.rows

        def final(delta: Delta, streamed: bool) -> dict:
            seconds = time.perf_counter() - started
            prompt_n = prompt_lengths[delta.index // sampling.n]
            result = {"index": delta.index, "content": "" if streamed else delta.text, "tokens": [], "id_slot": 0,
                      "stop": True, "model": ctx.model_name, "tokens_predicted": made[delta.index],
                      "tokens_evaluated": prompt_n, "generation_settings": settings_of(sampling),
                      "prompt": sampling.prompts[delta.index // sampling.n], "has_new_line": "\n" in delta.text,
                      "truncated": False, "stop_type": "word" if delta.stop else "limit",
                      "stopping_word": delta.stop or "", "tokens_cached": 0,
                      "timings": {"prompt_n": prompt_n, "prompt_ms": 0.0, "prompt_per_token_ms": 0.0,
                                  "prompt_per_second": 0.0, "predicted_n": made[delta.index],
                                  "predicted_ms": seconds * 1000,
                                  "predicted_per_token_ms": seconds * 1000 / max(made[delta.index], 1),
                                  "predicted_per_second": made[delta.index] / max(seconds, 1e-9)}}
            if wanted and not streamed:
                result["completion_probabilities"] = probabilities(delta.tokens, as_probs)
            return _picked(result, body.response_fields)

        if not sampling.stream:
            results = []
            for delta in await completion.result():
                made[delta.index] = len(delta.tokens)
                results.append(final(delta, streamed=False))
            return JSONResponse(results[0] if len(results) == 1 else results)
        deltas = await completion.deltas()

        async def events():
            try:
                async for delta in deltas:
                    made[delta.index] += len(delta.tokens)
                    if delta.text:
                        event = {"index": delta.index, "content": delta.text, "tokens": [t.id for t in delta.tokens],
                                 "stop": False, "id_slot": 0, "tokens_predicted": made[delta.index],
                                 "tokens_evaluated": prompt_lengths[delta.index // sampling.n]}
                        if wanted:
                            event["completion_probabilities"] = probabilities(delta.tokens, as_probs)
                        yield f"data: {json.dumps(event, ensure_ascii=False)}\n\n"
                    if delta.finish_reason:
                        yield f"data: {json.dumps(final(delta, streamed=True), ensure_ascii=False)}\n\n"
            except Exception as e:  # noqa: BLE001 - the reply is under way: the stream says why it ends
                code, kind = (503, "unavailable_error") if isinstance(e, Expired) else (500, "server_error")
                yield f"error: {json.dumps({'code': code, 'message': failure(e), 'type': kind})}\n\n"

        return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    @router.post("/completion", openapi_extra=request_schema(CompletionRequest))
    @router.post("/completions", include_in_schema=False)
    async def completion(http_request: Request):
        """llama.cpp's completion (see the module docstring)."""
        body = await ctx.parse(http_request, CompletionRequest)
        prompts = [request.continued(p) for p in prompt_texts(body.prompt)]
        return await complete(http_request, body, prompts)

    @router.post("/infill", openapi_extra=request_schema(InfillRequest))
    async def infill(http_request: Request):
        """Fill-in-the-middle as a left-to-right model can: the text before the gap (and the start of the middle,
        `prompt`) continued."""
        body = await ctx.parse(http_request, InfillRequest)
        middle = prompt_texts(body.prompt)[0] if body.prompt else ""
        return await complete(http_request, body, [(body.input_prefix or "") + middle])

    @router.post("/tokenize")
    async def tokenize(http_request: Request):
        body = await ctx.parse(http_request, TokenizeRequest)
        ids = [int(i) for i in vocab.encode_known(body.content or "")[0]]
        if body.with_pieces:
            return {"tokens": [{"id": i, "piece": vocab.tokens[i] if not vocab.is_bytes else [vocab.tokens[i]]}
                               for i in ids]}
        return {"tokens": ids}

    @router.post("/detokenize")
    async def detokenize(http_request: Request):
        body = await ctx.parse(http_request, DetokenizeRequest)
        return {"content": ctx.decode_ids(body.tokens, "tokens")}

    @router.post("/apply-template")
    async def apply_template(http_request: Request):
        body = await ctx.parse(http_request, TemplateRequest)
        messages = [(str(m.get("role", "")), str(m.get("name") or ""),
                     chat.message_text(m.get("content"), f"messages.{i}.content")) for i, m in enumerate(body.messages)]
        return {"prompt": chat.transcript(messages)[0]}

    @router.get("/props")
    async def props():
        defaults = {"n_ctx": config.max_start_text, "params": {**DEFAULTS, "n_predict": -1, "typical_p": 1.0,
                                                               "repeat_penalty": 1.0, "n_probs": 0}}
        return {"default_generation_settings": defaults, "total_slots": ctx.batcher.max_rows,
                "model_path": ctx.model_name, "chat_template": chat.TEMPLATE, "modalities": {"vision": False},
                "build_info": "kerascharrnn"}

    @router.get("/health")
    @router.get("/v1/health")
    async def health():
        return {"status": "ok"}

    return router
