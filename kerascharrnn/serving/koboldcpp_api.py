"""KoboldCpp's API (the KoboldAI United API with KoboldCpp's extras), for KoboldAI Lite's "KoboldAI Remote API"
endpoint and SillyTavern's KoboldCpp source.

    POST /api/v1/generate              prompt, memory (put before it), max_length (100), max_context_length (the
                                       prompt keeps its last that many characters), temperature, top_k, top_p,
                                       min_p, typical, rep_pen (repetition_penalty, repeat_penalty), rep_pen_range,
                                       presence_penalty, logit_bias, sampler_seed (-1: random), stop_sequence,
                                       trim_stop (false: the text ends with the stop sequence it met), genkey, n,
                                       logprobs -> {"results": [{"text", "finish_reason"}]}
    POST /api/extra/generate/stream    the same, as server-sent events `event: message` / `data: {"token",
                                       "finish_reason"}`
    POST /api/extra/generate/check     {genkey}: the text made so far; POST /api/extra/abort {genkey}: stop it
    POST /api/extra/tokencount         {prompt}: {"value": tokens, "ids": [...]}
    GET  /api/v1/model, /api/v1/info/version, /api/extra/version, /api/v1/config/max_context_length,
         /api/v1/config/max_length, /api/extra/true_max_context_length, /api/extra/preloadstory

KoboldCpp's other samplers (tfs, top_a, rep_pen_slope, sampler_order, mirostat, dry, xtc, dynatemp, smoothing)
and its EOS switches (a character model has no end-of-text token) are ignored, named once in the log. Errors are
KoboldCpp's shape: {"detail": {"msg", "type"}}.
"""

import collections
import json
from typing import Any, Dict, List, Optional, Union

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from kerascharrnn.serving import request
from kerascharrnn.serving.completion import Completion, Delta, failure, token_bytes, token_text
from kerascharrnn.serving.context import Serving, WireModel, log, request_schema

KOBOLD_API_VERSION = "1.2.5"  # the KoboldAI United API version KoboldCpp reports
KOBOLDCPP_VERSION = "1.102"  # the KoboldCpp release whose API this follows (frontends switch features by it)
DEFAULT_MAX_LENGTH = 100
NAMES = {"max_new": "max_length", "stops": "stop_sequence", "penalty_range": "rep_pen_range",
         "typical_p": "typical", "prompts": "prompt", "seed": "sampler_seed"}
_KEPT_GENERATIONS = 256  # genkeys whose text /api/extra/generate/check can still give


class GenerateRequest(WireModel):
    prompt: str = ""
    memory: Optional[str] = None
    max_length: Optional[int] = None
    max_context_length: Optional[int] = None
    temperature: Optional[float] = None
    top_k: Optional[int] = None
    top_p: Optional[float] = None
    min_p: Optional[float] = None
    typical: Optional[float] = None
    rep_pen: Optional[float] = None
    repetition_penalty: Optional[float] = None
    repeat_penalty: Optional[float] = None
    rep_pen_range: Optional[int] = None
    presence_penalty: Optional[float] = None
    logit_bias: Optional[Any] = None
    sampler_seed: Optional[int] = None
    stop_sequence: Optional[List[str]] = None
    trim_stop: Optional[bool] = False
    genkey: Optional[str] = None
    n: Optional[int] = None
    logprobs: Optional[bool] = False


class KeyRequest(WireModel):
    genkey: Optional[str] = None


class CountRequest(WireModel):
    prompt: Union[str, None] = ""


def routes(ctx: Serving) -> APIRouter:
    """The KoboldCpp-compatible endpoints over the app's model."""
    router = APIRouter()
    config, vocab = ctx.config, ctx.vocab
    # genkey -> (the completion, the text made so far): for check and abort, the latest few only
    generations: "collections.OrderedDict[str, List]" = collections.OrderedDict()

    def sampling_request(body: GenerateRequest, stream: bool) -> request.SamplingRequest:
        prompt = (body.memory or "") + body.prompt
        if body.max_context_length is not None and body.max_context_length > 0:
            prompt = prompt[-body.max_context_length:]  # KoboldCpp keeps the end that fits its context
        penalties = [p for p in (body.rep_pen, body.repetition_penalty, body.repeat_penalty) if p is not None]
        seed = None if body.sampler_seed is None or body.sampler_seed < 0 else body.sampler_seed
        return request.build(
            config, vocab, NAMES, prompts=[request.continued(prompt)], n=1 if stream else body.n,
            max_new=DEFAULT_MAX_LENGTH if body.max_length is None else body.max_length,
            stops=body.stop_sequence or [], seed=seed, logprobs=5 if body.logprobs else None, stream=stream,
            logit_bias=body.logit_bias or None, temperature=body.temperature, top_k=body.top_k, top_p=body.top_p,
            min_p=body.min_p, typical_p=body.typical, repetition_penalty=max(penalties) if penalties else None,
            penalty_range=body.rep_pen_range, presence_penalty=body.presence_penalty)

    def remember(genkey: Optional[str], completion: Completion) -> List:
        entry = [completion, ""]
        if genkey:
            generations[genkey] = entry
            generations.move_to_end(genkey)
            while len(generations) > _KEPT_GENERATIONS:
                generations.popitem(last=False)
        return entry

    def text_of(delta: Delta, trim_stop: bool) -> str:
        # KoboldCpp's text ends with the stop sequence it met, unless trim_stop
        return delta.text + (delta.stop if delta.stop and not trim_stop else "")

    def logprobs_of(delta: Delta) -> dict:
        def entry(unit, logprob):
            return {"token": token_text(unit), "logprob": logprob, "bytes": token_bytes(unit)}

        return {"content": [dict(entry(t.unit, t.logprob), top_logprobs=[entry(vocab.tokens[i], v) for i, v in t.top])
                            for t in delta.tokens]}

    @router.post("/api/v1/generate", openapi_extra=request_schema(GenerateRequest))
    async def generate(http_request: Request):
        """KoboldCpp's generate (see the module docstring)."""
        body = await ctx.parse(http_request, GenerateRequest)
        completion = Completion(ctx, sampling_request(body, stream=False), http_request)
        entry = remember(body.genkey, completion)
        results = []
        for delta in await completion.result():
            result = {"text": text_of(delta, bool(body.trim_stop)), "finish_reason": delta.finish_reason,
                      "prompt_tokens": completion.prompt_tokens, "completion_tokens": len(delta.tokens)}
            if body.logprobs:
                result["logprobs"] = logprobs_of(delta)
            results.append(result)
        entry[1] = results[0]["text"]
        return {"results": results}

    @router.post("/api/extra/generate/stream", openapi_extra=request_schema(GenerateRequest))
    async def generate_stream(http_request: Request):
        """The same, as KoboldCpp's server-sent events."""
        body = await ctx.parse(http_request, GenerateRequest)
        completion = Completion(ctx, sampling_request(body, stream=True), http_request)
        entry = remember(body.genkey, completion)
        deltas = await completion.deltas()

        async def events():
            try:
                async for delta in deltas:
                    text = text_of(delta, bool(body.trim_stop))
                    entry[1] += text
                    yield "event: message\ndata: " + json.dumps({"token": text, "finish_reason": delta.finish_reason},
                                                               ensure_ascii=False) + "\n\n"
            except Exception as e:  # noqa: BLE001 - the reply is under way: the stream says why it ends
                log.warning("POST /api/extra/generate/stream: %s", failure(e))
                yield "event: message\ndata: " + json.dumps({"token": "", "finish_reason": "length",
                                                             "error": failure(e)}) + "\n\n"

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def genkey_of(http_request: Request) -> Optional[str]:
        if http_request.method == "GET":
            return None
        return (await ctx.parse(http_request, KeyRequest)).genkey

    @router.get("/api/extra/generate/check")
    @router.post("/api/extra/generate/check")
    async def check(http_request: Request):
        """The text a generation (by its genkey) has made so far."""
        entry = generations.get(await genkey_of(http_request) or "")
        return {"results": [{"text": entry[1] if entry else ""}]}

    @router.post("/api/extra/abort")
    async def abort(http_request: Request):
        """Stops the generation of a genkey (another writer's generation, without it, goes on)."""
        entry = generations.get(await genkey_of(http_request) or "")
        if entry is None:
            return {"success": "false", "done": "false"}
        entry[0].job.cancel()
        return {"success": "true", "done": "true"}

    @router.post("/api/extra/tokencount")
    async def token_count(http_request: Request):
        body = await ctx.parse(http_request, CountRequest)
        ids = [int(i) for i in vocab.encode_known(body.prompt or "")[0]]
        return {"value": len(ids), "ids": ids}

    @router.get("/api/v1/model")
    async def model():
        return {"result": f"koboldcpp/{ctx.model_name}"}

    @router.get("/api/v1/info/version")
    async def api_version():
        return {"result": KOBOLD_API_VERSION}

    @router.get("/api/extra/version")
    async def version():
        return {"result": "KoboldCpp", "version": KOBOLDCPP_VERSION, "protected": ctx.protected, "txt2img": False,
                "vision": False, "audio": False, "transcribe": False, "multiplayer": False, "websearch": False,
                "tts": False, "embeddings": False, "admin": 0}

    @router.get("/api/v1/config/max_context_length")
    @router.get("/api/extra/true_max_context_length")
    async def max_context_length():
        return {"value": config.max_start_text}

    @router.get("/api/v1/config/max_length")
    async def max_length():
        return {"value": config.max_num_new_chars}

    @router.get("/api/extra/preloadstory")
    async def preloaded_story() -> Dict:
        return {}

    return router
