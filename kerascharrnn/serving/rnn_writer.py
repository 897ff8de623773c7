"""torch-rnn-server's API, which rnn-writer calls: GET / (is the server up) and GET /generate.

    GET /           {"message": ...}
    GET /generate   ?start_text=<percent-encoded>&n=<int>: n sentence completions, the continuation only

The rules (how the query is read, how completions are cut and which are redrawn) are in rules.py.
"""

import random
import time
from typing import List, Optional

import numpy as np
from fastapi import APIRouter, Query, Request

from kerascharrnn.sampling_settings import SamplingSettings
from kerascharrnn.serving.batcher import Job
from kerascharrnn.serving.context import Serving, authorized, client_of, finished_rows, log
from kerascharrnn.serving.rules import (
    TEMPERATURES,
    cut_completion,
    decode_component,
    describe_characters,
    normalize_start_text,
    parse_n,
    raw_query_value,
    unknown_in,
)


def routes(ctx: Serving) -> APIRouter:
    router = APIRouter()
    config, vocab = ctx.config, ctx.vocab

    async def sentences(prompt: np.ndarray, n: int, request: Request) -> List[str]:
        """torch-rnn-server's completions: n sentences of acceptable length, redrawn a bounded number of times."""
        accepted, rejected = [], 0
        started = time.monotonic()  # one time limit for the request, whatever the rounds
        for _ in range(config.max_redraw_rounds):
            # oversample: a trained model passes about half its draws
            rows = min(2 * (n - len(accepted)), ctx.batcher.max_rows)
            left = config.request_timeout - (time.monotonic() - started)
            settings = [SamplingSettings(temperature=random.choice(TEMPERATURES)) for _ in range(rows)]
            job = ctx.submit(Job([prompt] * rows, config.completion_chars, settings, client=client_of(request)),
                             time_limit=max(left, 0.0))
            for ids, _ in await finished_rows(job, request):
                text = cut_completion(vocab.decode(ids), config.completion_chars)
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

    @router.get("/")
    async def root(request: Request):
        # (without the server's API key: that it is up, not what it serves)
        serving = f"serving {ctx.model_name}" if authorized(request) else "up"
        return {"message": f"kerascharrnn is {serving}: GET /generate?start_text=...&n=3, or write at /write"}

    @router.get("/generate")
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
        ctx.check_prompt_length(text, "start_text")
        count = parse_n(raw_query_value(query, "n"), config.max_n)
        # rnn-writer sends whatever the writer typed: characters the model lacks are left out of the
        # priming, never refused (an error would show instead of suggestions)
        prompt, _ = vocab.encode_known(normalize_start_text(text, ctx.lowercase))
        unknown = unknown_in(text, vocab, ctx.lowercase)
        if unknown:
            log.info("GET /generate: left out of the priming (not in the vocabulary): %s", describe_characters(unknown))
        completions = await sentences(prompt, count, request)
        return {"start_text": raw_start_text, "completions": completions,
                "time": f"{time.perf_counter() - started:.2f}"}

    return router
