"""What every API of bin/serve shares: the model, its settings and the batch worker (`Serving`), and the steps
each request takes: its body parsed off the event loop (fields the API does not use named once in the log), its
prompt turned into ids, its job run while the client is still there.
"""

import asyncio
import dataclasses
import json
import logging
import re
from typing import AsyncIterator, List, Optional, Tuple, Type

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from kerascharrnn.config import ServeConfig
from kerascharrnn.inference.engines import Engine
from kerascharrnn.inference.generation import Piece
from kerascharrnn.serving.batcher import BatchingSampler, Expired, Job, Overloaded
from kerascharrnn.serving.errors import ClientError
from kerascharrnn.serving.rules import describe_characters, unknown_in
from kerascharrnn.vocab import Vocabulary

log = logging.getLogger("kerascharrnn.serve")
LOGGED_CHARACTERS = 300  # of any one thing a client sent: the log stays bounded whatever the request
_NAMED_FIELDS = 200  # ignored fields named in the log, per endpoint (each once): clients cannot fill the log
_FIELD_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]{0,63}")  # names a client's code would use


def short(text: str, limit: int = LOGGED_CHARACTERS) -> str:
    """`text` for a log line: cut to `limit` characters, saying how much was left out."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text) - limit:,} more characters)"


@dataclasses.dataclass
class Serving:
    """The app's shared parts.

    Attributes:
      engine: the model; vocab its vocabulary.
      config: the server's settings and limits.
      batcher: the worker that runs every request's rows.
      model_name: the name the APIs list the model under.
      lowercase: whether torch-rnn-server's GET /generate lower-cases the start text.
      parameters: the model's parameter count (0: unknown); digest: a name for this model and vocabulary.
      protected: the server asks for an API key.
    """

    engine: Engine
    config: ServeConfig
    batcher: BatchingSampler
    model_name: str
    lowercase: bool
    parameters: int = 0
    digest: str = ""
    protected: bool = False
    ignored: dict = dataclasses.field(default_factory=dict)  # endpoint -> the fields already named in the log

    @property
    def vocab(self) -> Vocabulary:
        return self.engine.vocab

    def prompt_ids(self, text: str, where: str) -> np.ndarray:
        """The ids of a prompt; characters the model lacks are left out of the priming, and the log says so
        (a writer's text holds whatever they typed: it is never refused for that)."""
        ids, _ = self.vocab.encode_known(text)
        unknown = unknown_in(text, self.vocab)
        if unknown:
            log.info("%s: left out of the priming (not in the vocabulary): %s", where, describe_characters(unknown))
        return ids

    def decode_ids(self, ids: List[int], field: str) -> str:
        """The text of token ids a client sent (a prompt as ids); ids the vocabulary lacks are a 400."""
        bad = [i for i in ids if not 0 <= i < self.vocab.size]
        if bad:
            raise ClientError(400, f"{field}: token id {bad[0]} is not in the vocabulary (0 to {self.vocab.size - 1})",
                              param=field)
        return self.vocab.decode(np.asarray(ids, np.int32))

    def check_prompt_length(self, text: str, field: str) -> None:
        if len(text) > self.config.max_start_text:
            raise ClientError(413, f"{field} is {len(text)} characters; the limit is {self.config.max_start_text}",
                              param=field)

    def note_ignored(self, where: str, fields) -> None:
        """Names, once per endpoint and field, the fields of a request that have no effect here (up to
        _NAMED_FIELDS per endpoint; names no program would use are counted, not written)."""
        fields = [str(f) for f in fields]
        named = self.ignored.setdefault(where, set())
        new = sorted(f for f in fields if _FIELD_NAME.fullmatch(f) and f not in named)[:_NAMED_FIELDS - len(named)]
        odd = sum(1 for f in fields if not _FIELD_NAME.fullmatch(f))
        named.update(new)
        if new or odd:
            log.info("%s: ignored (no effect on this model): %s", where,
                     short(", ".join(new + ([f"{odd} field(s) with names no client uses"] if odd else []))))

    async def parse(self, request: Request, model: Type[BaseModel], invalid_status: int = 400) -> BaseModel:
        """The request's JSON body as `model` (parse_body), with the fields it does not declare named once in
        the log."""
        body = await parse_body(request, model, invalid_status)
        self.note_ignored(f"{request.method} {request.url.path}", undeclared_fields(body))
        return body

    def submit(self, job: Job, time_limit: Optional[float] = None) -> Job:
        """Queues a job (with the request's time limit, or what is left of it), or answers 429 when the queue
        is full, 400 when the job has more rows than the batch holds."""
        job.time_limit = self.config.request_timeout if time_limit is None else time_limit
        if len(job.prompts) > self.batcher.max_rows:
            raise ClientError(400, f"{len(job.prompts)} completions at once; this server makes at most"
                              f" {self.batcher.max_rows} at a time", param="n")
        try:
            return self.batcher.submit(job)
        except Overloaded as e:
            raise ClientError(429, f"the server is busy ({e}); try again in a second", code="rate_limit_exceeded",
                              headers={"Retry-After": "1"}) from None


async def parse_body(request: Request, model: Type[BaseModel], invalid_status: int = 400) -> BaseModel:
    """The request's JSON body as `model`; parsed and checked on a worker thread, never on the event loop
    (the body's size and pace are bounded before it is read: guard.py). A body that is not JSON, that names a
    key twice (which one would hold?) or holds lone surrogates is a 400, one that does not fit `model` an
    `invalid_status`, naming why."""
    body = await request.body()

    def parse():
        try:
            values = json.loads(body, object_pairs_hook=_without_duplicate_keys)
        except (ValueError, RecursionError) as e:  # bad JSON, bad UTF-8, lone surrogates, absurd nesting
            raise ClientError(400, f"the body is not JSON ({type(e).__name__}: {str(e)[:200]})") from None
        _refuse_lone_surrogates(values)
        try:
            return model.model_validate(values)
        except ValidationError as e:
            first = e.errors()[0]
            field = ".".join(str(p) for p in first.get("loc", ())) or None
            more = f" (and {e.error_count() - 1} more)" if e.error_count() > 1 else ""
            raise ClientError(invalid_status, f"{field or 'body'}: {first.get('msg', 'invalid')[:300]}{more}",
                              param=field) from None

    return await run_in_threadpool(parse)


def _without_duplicate_keys(pairs) -> dict:
    values = dict(pairs)
    if len(values) != len(pairs):
        seen = set()
        twice = next(key for key, _ in pairs if key in seen or seen.add(key))
        raise ClientError(400, f"the body names the key {short(str(twice), 60)!r} twice", param=str(twice)[:60])
    return values


class WireModel(BaseModel):
    """A request body in a wire format: fields it declares are type-checked strictly (JSON true is not a number,
    "5" not an int); fields it does not declare are allowed, and named once in the log (Serving.parse)."""

    model_config = ConfigDict(extra="allow", strict=True)


def request_schema(model: Type[BaseModel]) -> dict:
    """FastAPI's openapi_extra for an endpoint that parses its body itself (Serving.parse) with `model`."""
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": model.model_json_schema()}}}}


def undeclared_fields(body: BaseModel, prefix: str = "") -> List[str]:
    """The fields a client sent that `body`'s model does not declare (extra="allow"), nested ones dotted."""
    names = [prefix + str(name) for name in (body.model_extra or {})]
    for name, value in body:
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, BaseModel):
                names += undeclared_fields(item, f"{prefix}{name}.")
    return names


def _refuse_lone_surrogates(value) -> None:
    """JSON's \\ud800 escapes make strings no reply could encode (a 500 at the end): refused up front."""
    todo = [value]
    while todo:
        item = todo.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                raise ClientError(400, "the body holds a lone surrogate (\\ud800-\\udfff escape): not Unicode text") \
                    from None
        elif isinstance(item, dict):
            todo.extend(item.keys())
            todo.extend(item.values())
        elif isinstance(item, list):
            todo.extend(item)


def client_of(request: Request) -> str:
    """Who sent a request, for a fair share of the queue: its address and its program (two writers on one machine
    use two programs)."""
    address = request.client.host if request.client else "?"
    return f"{address} {request.headers.get('user-agent', '')[:200]}"


def authorized(request: Request) -> bool:
    """The request had the API key (or the server asks for none): Guard says so in the request's state."""
    return getattr(request.state, "authorized", True)


async def watch_disconnect(request: Request, job: Job) -> None:
    """Cancels `job` when the client goes away (its rows then leave the batch). Run as a task while a reply that
    is not streamed waits; a streamed reply learns of it from its own send failing."""
    while True:
        message = await request.receive()
        if message.get("type") == "http.disconnect":
            job.cancel()
            return


async def started_pieces(job: Job, request: Request) -> AsyncIterator[Tuple[int, Piece]]:
    """job.pieces() for a streamed reply, its first piece awaited before the reply starts: a request that
    expires while it waits gets its 503 (not a 200 with an error inside), and a client that leaves while it
    waits frees its place in the queue."""
    pieces = job.pieces()
    watcher = asyncio.ensure_future(watch_disconnect(request, job))
    try:
        first = await pieces.__anext__()
    except StopAsyncIteration:
        first = None
    except Expired as e:
        raise ClientError(503, f"the server is overloaded: the request was {e}", code="timeout") from None
    finally:
        watcher.cancel()

    async def all_pieces():
        if first is not None:
            yield first
            async for item in pieces:
                yield item

    return all_pieces()


async def finished_rows(job: Job, request: Request) -> List[Tuple[np.ndarray, Optional[tuple]]]:
    """The job's rows once made, cancelling it if the client leaves first; Expired becomes a 503."""
    watcher = asyncio.ensure_future(watch_disconnect(request, job))
    try:
        return await job.rows()
    except Expired as e:
        raise ClientError(503, f"the server is overloaded: the request was {e}", code="timeout") from None
    finally:
        watcher.cancel()
