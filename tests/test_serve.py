"""bin/serve: torch-rnn-server's rules as functions, then the real server on 127.0.0.1 replaying
rnn-writer's requests, concurrent clients, bad input, the JSON API and schema-driven fuzzing."""

import asyncio
import json
import os
import shutil
import socket
import subprocess
import time
import urllib.parse

import httpx
import pytest
from conftest import run_cli

from kerascharrnn.serving import rules
from kerascharrnn.vocab import Vocabulary

# --- the rules ------------------------------------------------------------------------------------


def encode_uri_component(text: str) -> str:
    """JavaScript's encodeURIComponent, which rnn-writer uses."""
    return urllib.parse.quote(text, safe="-_.!~*'()")


def rnn_writer_decode(value: str) -> str:
    """rnn-writer: decodeURIComponent(body["start_text"]).replace(/\\+/g, " ")."""
    return urllib.parse.unquote(value, errors="strict").replace("+", " ")


def test_raw_query_value_keeps_the_encoding():
    query = b"n=3&start_text=I%27m+here%20%2B%20%E2%98%83&x=1"
    assert rules.raw_query_value(query, "start_text") == "I%27m+here%20%2B%20%E2%98%83"
    assert rules.raw_query_value(query, "n") == "3"
    assert rules.raw_query_value(query, "missing") is None
    assert rules.raw_query_value(b"start_text", "start_text") == ""


def test_decode_component_is_form_decoding_and_strict():
    assert rules.decode_component("I%27m+here%20%2B%20%E2%98%83", "s") == "I'm here + ☃"
    for bad, message in (("%ZZ", "percent-encoding"), ("50%", "percent-encoding"), ("%E2%98", "UTF-8"),
                         ("%FF", "UTF-8")):
        with pytest.raises(rules.ClientError, match=message):
            rules.decode_component(bad, "s")


@pytest.mark.parametrize("raw,expected", [(None, 1), ("", 1), ("3", 3), ("10", 10), ("11", 10), ("500", 10),
                                          ("+4", 4)])
def test_parse_n_defaults_and_clamps(raw, expected):
    assert rules.parse_n(raw, 10) == expected


@pytest.mark.parametrize("raw", ["abc", "2.5", "0", "-3", "99999999999", "1" * 40, "%ZZ", "1e3"])
def test_parse_n_rejects(raw):
    with pytest.raises(rules.ClientError) as error:
        rules.parse_n(raw, 10)
    assert error.value.status == 400


def test_start_text_normalisation_and_completion_cuts():
    assert rules.normalize_start_text("The  CAT\n\tsat ", True) == "the cat sat "
    assert rules.normalize_start_text("The  CAT", False) == "The CAT"
    assert rules.cut_completion(" no. it is. the end of it. more", 140) == " no. it is. the end of it."
    assert rules.cut_completion(" one two three four five! six", 140) == " one two three four five!"
    assert rules.cut_completion("x" * 300, 140) == "x" * 140


def test_stop_strings_cut_a_text_that_arrives_in_pieces():
    from kerascharrnn.serving.completion import StopCut, cut_at_stop

    assert cut_at_stop("abc\ndef", ["\n", "c"]) == ("ab", "stop")
    assert cut_at_stop("abc", ["z"]) == ("abc", "length")
    cut = StopCut(["\nUser:", "ab"])
    assert [cut.feed(p) for p in ("hello\nU", "se", "r sat")] == ["hello", "", "\nUser sat"]  # held, then let go
    cut = StopCut(["\nUser:", "ab"])
    assert cut.feed("x\nUs") == "x" and cut.feed("er: hi") == "" and cut.matched == "\nUser:" and cut.flush() == ""
    cut = StopCut(["aab"])
    assert cut.feed("xaa") == "x" and cut.feed("a") == "a" and cut.flush() == "aa"  # "aa" could still begin "aab"



# --- the real server ------------------------------------------------------------------------------

def get(server, path):
    return httpx.get(server["base"] + path, timeout=60)


def assert_completion(text):
    words = len(text.split())
    assert 3 <= words <= 20, text
    assert text.rstrip()[-1:] in ".!?" or len(text) == 140, text


def test_root_and_health(server):
    reply = get(server, "/")
    assert reply.status_code == 200 and "message" in reply.json()
    assert get(server, "/healthz").json()["status"] == "ok"


def test_rnn_writer_request_round_trip(server):
    text = 'She said "5% + 3" to Zoë and I\'m here'
    reply = get(server, "/generate?start_text=" + encode_uri_component(text) + "&n=3")
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert "message" not in body
    assert body["start_text"] == encode_uri_component(text)  # echoed still percent-encoded
    assert rnn_writer_decode(body["start_text"]) == text.replace("+", " ")
    assert len(body["completions"]) == 3
    for completion in body["completions"]:
        assert_completion(completion)
    assert float(body["time"]) >= 0 and len(body["time"].split(".")[1]) == 2


def test_n_defaults_clamps_and_empty_start_text(server):
    assert len(get(server, "/generate?start_text=the%20cat").json()["completions"]) == 1
    clamped = get(server, "/generate?start_text=the&n=25").json()["completions"]
    assert len(clamped) == 10 and all(len(c.split()) <= 20 for c in clamped)
    for path in ("/generate?n=2", "/generate?start_text=&n=2"):
        body = get(server, path).json()
        assert body["start_text"] == "" and len(body["completions"]) == 2


def test_thirty_two_concurrent_clients_all_answered(server):
    async def one(http, i):
        return await http.get(f"{server['base']}/generate?start_text={encode_uri_component('the dog ' * (i % 3))}&n=2")

    async def all_of_them():
        async with httpx.AsyncClient(timeout=120) as http:
            return await asyncio.gather(*(one(http, i) for i in range(32)))

    replies = asyncio.run(all_of_them())
    assert [r.status_code for r in replies] == [200] * 32
    assert all(len(r.json()["completions"]) == 2 for r in replies)


@pytest.mark.parametrize("path,status,message", [
    ("/generate?start_text=the&n=abc", 400, "whole number"),
    ("/generate?start_text=the&n=2.5", 400, "whole number"),
    ("/generate?start_text=the&n=0", 400, "at least 1"),
    ("/generate?start_text=the&n=-1", 400, "at least 1"),
    ("/generate?start_text=the&n=100000000000000", 400, "out of range"),
    ("/generate?start_text=" + "a" * 600 + "&n=1", 413, "limit is 500"),
    ("/generate?start_text=%ZZ&n=1", 400, "percent-encoding"),
    ("/generate?start_text=50%&n=1", 400, "percent-encoding"),
    ("/generate?start_text=%E2%98&n=1", 400, "UTF-8"),
    ("/nowhere", 404, "Not Found"),
])
def test_bad_requests_get_4xx_with_message_and_server_keeps_serving(server, path, status, message):
    reply = get(server, path)
    assert reply.status_code == status, reply.text
    assert message in reply.json()["message"]
    assert "Traceback" not in reply.text
    assert get(server, "/generate?start_text=the&n=1").status_code == 200


def post(server, body):
    return httpx.post(server["base"] + "/v1/generate", json=body, timeout=60)


def test_json_api(server):
    body = {"start_text": "the cat", "num_new_chars": 50, "temperature": 0.8, "top_k": 5, "num_samples": 3, "seed": 7}
    first, second = post(server, body), post(server, body)
    assert first.status_code == 200, first.text
    assert first.json()["completions"] == second.json()["completions"]  # a seed repeats
    assert [len(c) for c in first.json()["completions"]] == [50, 50, 50]
    stopped = post(server, {"start_text": "the", "num_new_chars": 200, "stop": ["."], "num_samples": 4,
                            "top_p": 0.9, "seed": 1}).json()
    assert all("." not in c for c in stopped["completions"])
    assert "stop" in stopped["finish_reasons"]
    argmax = [post(server, {"start_text": "she said", "num_new_chars": 40, "temperature": 0}).json()["completions"][0]
              for _ in range(2)]
    assert argmax[0] == argmax[1]


@pytest.mark.parametrize("body,message", [
    ({"num_new_chars": 100000}, "num_new_chars"),
    ({"num_samples": 1000}, "num_samples"),
    ({"num_samples": 0}, "num_samples"),
    ({"temperature": -1}, "temperature"),
    ({"top_p": 1.5}, "top_p"),
    ({"start_text": "☃"}, "'☃'"),
    ({"start_text": "a" * 600}, "limit is 500"),
    ({"stop": [str(i) for i in range(65)]}, "stop"),
    ({"temperature": True}, "temperature"),
    ([1, 2], "body"),
])
def test_json_api_bad_input(server, body, message):
    reply = post(server, body)
    assert 400 <= reply.status_code < 500 and message in reply.json()["message"], reply.text


def test_generate_leaves_unknown_characters_out_and_logs_them(server):
    text = "snow\u2603man \u201cquoted\u201d \u2014 caf\u00e9 \U0001F600 2024"
    reply = get(server, "/generate?start_text=" + encode_uri_component(text) + "&n=2")
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["start_text"] == encode_uri_component(text) and len(body["completions"]) == 2
    time.sleep(0.5)
    log = server["log"].read_text()
    assert "left out of the priming" in log and "'\u2603' (U+2603)" in log and "(U+1F600)" in log


def test_json_api_unknown_chars_skip(server):
    reply = post(server, {"start_text": "the \u2603 cat", "num_new_chars": 20, "unknown_chars": "skip", "seed": 2})
    assert reply.status_code == 200, reply.text
    assert len(reply.json()["completions"][0]) == 20
    assert post(server, {"start_text": "x", "unknown_chars": "maybe"}).status_code == 422


def test_real_rnn_writer_client_always_gets_suggestions(server):
    """rnn-writer's own request and reply handling (tests/rnn_writer_client.js, from its source) on editor
    texts full of characters the model lacks: every text gets suggestions, none an error."""
    node = shutil.which("node")
    assert node, "needs Node.js (scripts/setup_tests.sh installs it) to run rnn-writer's client code"
    texts = ["\u201cWell,\u201d she said \u2014 and paused. \u2018It\u2019s 3:45 already\u2026\u2019",
             "Cr\u00e8me br\u00fbl\u00e9e at the caf\u00e9 in M\u00fcnchen, na\u00efve fa\u00e7ade",
             "The r\u00e9sum\u00e9 said 1,234 \u20ac \U0001F600\U0001F389 then THE END",
             "\u0130stanbul \u00bfqu\u00e9? \u00a1s\u00ed! \u00e6\u00f8\u00e5 \u00df \u03a9mega \u4f60\u597d",
             "plain words the cat sat on a mat"]
    result = subprocess.run([node, os.path.join(os.path.dirname(__file__), "rnn_writer_client.js"), server["base"],
                             "5", json.dumps(texts)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    outcomes = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(outcomes) == len(texts)
    for outcome in outcomes:
        assert outcome["status"] == 200 and outcome["shown"] == "suggestions", outcome
        assert len(outcome["completions"]) == 5


def test_lowercase_auto_follows_the_vocabulary():
    lower = Vocabulary(tuple("abc ."))
    mixed = Vocabulary(tuple("abcA ."))
    assert rules.lowercase_for("auto", lower) and not rules.lowercase_for("auto", mixed)
    assert rules.lowercase_for("1", mixed) and not rules.lowercase_for("0", lower)
    assert not rules.lowercase_for("auto", Vocabulary(tuple(b for b in b"ABab"), "bytes"))
    # named as the client sent them: lower-casing "\u0130" gives "i" + U+0307, which was never sent
    assert rules.unknown_in("\u0130a", lower, lowercase=True) == ["\u0130"]
    assert rules.unknown_in("A b", lower, lowercase=True) == []
    assert rules.unknown_in("A b", lower) == ["A"]


def test_errors_are_logged_with_the_request(server):
    get(server, "/generate?start_text=the&n=zebra")
    time.sleep(0.5)
    assert "n=zebra -> 400" in server["log"].read_text()


def test_openapi_schema_fuzzing_finds_no_server_error(server):
    """Schemathesis against the served OpenAPI schema, a bounded and derandomized number of examples."""
    import schemathesis
    from hypothesis import HealthCheck, given, settings

    schema = schemathesis.openapi.from_url(server["base"] + "/openapi.json")
    paths = set()
    for result in schema.get_all_operations():
        operation = result.ok()
        paths.add(operation.path)

        @settings(max_examples=25, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy())
        def check(case):
            response = case.call(base_url=server["base"], timeout=60)
            assert response.status_code < 500, (case.path, case.query, case.body, response.text)
            if response.status_code >= 400:  # in the error shape of the API called
                assert_error_shape(case.path, response.json())

        check()
    assert {"/generate", "/v1/generate", "/", "/healthz", "/v1/completions", "/v1/chat/completions", "/api/generate",
            "/api/chat", "/api/v1/generate", "/api/extra/generate/stream", "/completion", "/infill"} <= paths


def assert_error_shape(path: str, body: dict) -> None:
    """An error reply is in the shape of the API its path belongs to."""
    from kerascharrnn.serving import errors

    dialect = errors.dialect_for(path)
    if dialect == errors.OLLAMA:
        assert isinstance(body["error"], str) and body["error"]
    elif dialect == errors.OPENAI:
        assert body["error"]["message"] and body["error"]["type"]
    elif dialect == errors.KOBOLD:
        assert body["detail"]["msg"] and body["detail"]["type"]
    elif dialect == errors.LLAMACPP:
        assert body["error"]["message"] and body["error"]["type"] and body["error"]["code"] >= 400
    else:
        assert body["message"]


def test_a_field_our_api_does_not_know_is_ignored_and_named_once(server):
    first = post(server, {"start_text": "the", "num_new_chars": 5, "surprise": 1})
    second = post(server, {"start_text": "the", "num_new_chars": 5, "surprise": 2})
    assert first.status_code == second.status_code == 200
    time.sleep(0.5)
    assert server["log"].read_text().count("POST /v1/generate: ignored (no effect on this model): surprise") == 1


def test_serve_flag_errors(sentence_model):
    both = run_cli("serve", "--checkpoint", sentence_model, "--saved_model", "x")
    assert both.returncode == 1 and "exactly one of" in both.stderr
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = run_cli("serve", "--checkpoint", sentence_model, "--port", taken.getsockname()[1])
    assert busy.returncode == 1 and "cannot listen" in busy.stderr and len(busy.stderr.splitlines()) == 1


def test_redraws_are_capped_and_logged(sentence_model, caplog):
    """Limits no 140-character completion can meet: torch-rnn-server would loop forever; we answer."""
    from kerascharrnn.config import ServeConfig
    from kerascharrnn.inference import engines

    engine = engines.open_engine("checkpoint", sentence_model, jit_compile=False)
    from kerascharrnn.serving.app import create_app

    app = create_app(engine, ServeConfig(word_limit_short=100, word_limit_long=120, max_redraw_rounds=2))

    async def call():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as http:
            return await http.get("/generate?start_text=the&n=3")

    with caplog.at_level("WARNING", logger="kerascharrnn.serve"):
        reply = asyncio.run(call())
    assert reply.status_code == 200 and reply.json()["completions"] == []
    assert "only 0 of 3 completions passed the word limits after 2 rounds" in caplog.text
