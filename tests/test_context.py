"""serving/context.py: what every API of bin/serve shares: a prompt's ids (unknown characters left out, never
refused), ids a client sends, the limits, strict JSON bodies (no key twice, no lone surrogates, undeclared
fields named), and who a client is."""

import asyncio
import json

import pytest
from starlette.requests import Request

from kerascharrnn.config import ServeConfig
from kerascharrnn.inference.engines import Engine
from kerascharrnn.serving import context
from kerascharrnn.serving.errors import ClientError
from kerascharrnn.vocab import Vocabulary

VOCAB = Vocabulary(tuple("abc .é"))


def serving(**config) -> context.Serving:
    # the text functions read the engine's vocabulary only: no model, no batcher
    return context.Serving(Engine(VOCAB, sampler=None), ServeConfig(**config), batcher=None, model_name="m",
                           lowercase=False)


def request(body: bytes = b"", headers=(), client=("127.0.0.1", 5000)) -> Request:
    scope = {"type": "http", "method": "POST", "path": "/v1/x", "headers": [(k.encode(), v.encode()) for k, v in
                                                                            headers], "client": client}
    sent = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive():
        return sent.pop(0) if sent else {"type": "http.disconnect"}

    return Request(scope, receive)


def test_a_prompt_keeps_the_characters_the_model_knows(caplog):
    with caplog.at_level("INFO", logger=context.log.name):
        ids = serving().prompt_ids("abZ cé!", "POST /v1/completions")
    assert VOCAB.decode(ids) == "ab cé"
    assert "'Z' (U+005A), '!' (U+0021)" in caplog.text


def test_ids_a_client_sends_must_be_in_the_vocabulary():
    assert serving().decode_ids([0, 1, 5], "prompt") == "abé"
    with pytest.raises(ClientError) as refused:
        serving().decode_ids([0, 6], "prompt")
    assert refused.value.status == 400 and "token id 6 is not in the vocabulary (0 to 5)" in str(refused.value)


def test_a_prompt_over_the_limit_is_a_413():
    serving(max_start_text=5).check_prompt_length("abcde", "prompt")
    with pytest.raises(ClientError) as refused:
        serving(max_start_text=5).check_prompt_length("abcdef", "prompt")
    assert refused.value.status == 413


class Body(context.WireModel):
    class Inner(context.WireModel):
        n: int = 1

    prompt: str = ""
    inner: Inner = Inner()


@pytest.mark.parametrize("body, status, said", [
    (b'{"prompt": "a", "prompt": "b"}', 400, "names the key 'prompt' twice"),
    (b'{"prompt": "\\ud800"}', 400, "lone surrogate"),
    (b'{"prompt": 5}', 422, "prompt: Input should be a valid string"),
    (b'{"inner": {"n": "5"}}', 422, "inner.n"),
    (b'not json', 400, "the body is not JSON"),
])
def test_a_body_is_strict_json(body, status, said):
    with pytest.raises(ClientError) as refused:
        asyncio.run(context.parse_body(request(body), Body, 422))
    assert refused.value.status == status and said in str(refused.value)


def test_fields_a_body_does_not_declare_are_found_nested():
    body = asyncio.run(context.parse_body(request(json.dumps({"prompt": "a", "mirostat": 2,
                                                               "inner": {"n": 2, "typo": 1}}).encode()), Body))
    assert body.prompt == "a" and body.inner.n == 2
    assert sorted(context.undeclared_fields(body)) == ["inner.typo", "mirostat"]
    assert isinstance(context.request_schema(Body)["requestBody"]["content"]["application/json"]["schema"], dict)


def test_a_client_is_its_address_and_its_program():
    assert context.client_of(request(headers=[("user-agent", "Mikupad")])) == "127.0.0.1 Mikupad"
    assert context.client_of(request(client=None)) == "? "
    assert context.short("x" * 10, 4) == "xxxx... (6 more characters)" and context.short("xy", 4) == "xy"
