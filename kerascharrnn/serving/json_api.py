"""Our own JSON API: explicit sampling parameters, and a choice about the characters the model lacks.

    POST /v1/generate   start_text, num_new_chars, temperature, top_k, top_p, num_samples, seed, stop,
                        unknown_chars ("error": 400, or "skip") -> completions, finish_reasons

Its errors are {"message": "..."} (422 for a body that does not fit the schema), as torch-rnn-server's.
"""

import time
from typing import List, Literal, Optional

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from kerascharrnn.sampling_settings import BOUNDS, SEED_MAX
from kerascharrnn.serving import request
from kerascharrnn.serving.completion import Completion
from kerascharrnn.serving.context import Serving, WireModel, request_schema
from kerascharrnn.serving.errors import ClientError
from kerascharrnn.serving.rules import describe_characters, unknown_in

NAMES = {"max_new": "num_new_chars", "n": "num_samples", "prompts": "start_text"}


def routes(ctx: Serving) -> APIRouter:
    router = APIRouter()
    config = ctx.config

    class GenerateRequest(WireModel):
        start_text: str = Field("", description="Text to continue (not lower-cased here).")
        num_new_chars: int = Field(200, ge=0, le=config.max_num_new_chars)
        temperature: float = Field(1.0, description=f"0 = argmax; {BOUNDS['temperature'].describe()}.")
        top_k: int = Field(0, description="0 = off.")
        top_p: float = Field(1.0, description="1 = off.")
        num_samples: int = Field(1, ge=1, le=config.max_num_samples)
        seed: Optional[int] = Field(None, ge=1, le=SEED_MAX, description="Same seed, same text; omit for random.")
        stop: List[str] = Field(default_factory=list, description="Cut each completion before the first of these.")
        unknown_chars: Literal["error", "skip"] = Field(
            "error", description="Characters of start_text the model lacks: error (400) or skip (left out of the"
                                 " priming, kept in nothing else).")

    class GenerateReply(BaseModel):
        start_text: str
        completions: List[str]
        finish_reasons: List[str]
        time: float

    @router.post("/v1/generate", response_model=GenerateReply, openapi_extra=request_schema(GenerateRequest))
    async def generate(http_request: Request):
        """Continuations of start_text (without it), each cut at the first stop string if any."""
        started = time.perf_counter()
        body = await ctx.parse(http_request, GenerateRequest, invalid_status=422)
        ctx.check_prompt_length(body.start_text, "start_text")
        unknown = unknown_in(body.start_text, ctx.vocab)
        if unknown and body.unknown_chars == "error":
            raise ClientError(400, f"start_text: characters not in the model's vocabulary:"
                                   f" {describe_characters(unknown)} (send unknown_chars: \"skip\" to leave them out)")
        sampling = request.build(config, ctx.vocab, NAMES, prompts=[body.start_text], n=body.num_samples,
                                 max_new=body.num_new_chars, stops=body.stop, seed=body.seed,
                                 temperature=body.temperature, top_k=body.top_k, top_p=body.top_p)
        results = await Completion(ctx, sampling, http_request).result()
        return GenerateReply(start_text=body.start_text, completions=[d.text for d in results],
                             finish_reasons=[d.finish_reason for d in results],
                             time=round(time.perf_counter() - started, 4))

    return router
