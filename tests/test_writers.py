"""The writers' APIs of bin/serve with the real clients: the `openai` Python client, the `llm` command-line
tool and the `ollama` Python client, against bin/serve on 127.0.0.1 (conftest's session server); and the
serving guarantees on servers with other settings (an API key, a tiny queue, a short time limit)."""

import asyncio
import json
import math
import os
import shutil
import subprocess
import threading
import time

import httpx
import numpy as np
import ollama
import openai
import pytest
from conftest import serving_in_thread

MODEL = "s"  # the session server's model: tests/conftest.py's sentence model, cv/s_*.keras


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server["base"] + "/v1", api_key="unused", max_retries=0)


# --- OpenAI's completions API ------------------------------------------------------------------------


def test_openai_client_completion_with_the_api_defaults(client):
    reply = client.completions.create(model=MODEL, prompt="the cat sat")
    assert reply.object == "text_completion" and reply.model == MODEL and reply.id.startswith("cmpl-")
    (choice,) = reply.choices
    # no max_tokens: as many as the server allows (--max_num_new_chars 2000), as llama.cpp's server reads it
    assert len(choice.text) == 2000 and choice.finish_reason == "length" and choice.index == 0
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens, reply.usage.total_tokens) == (11, 2000, 2011)
    assert [m.id for m in client.models.list()] == [MODEL] and client.models.retrieve(MODEL).id == MODEL


def test_openai_argmax_and_seed_repeat_and_prompts_times_n_choices(client):
    greedy = [client.completions.create(model=MODEL, prompt="she said", max_tokens=30, temperature=0).choices[0].text
              for _ in range(2)]
    assert greedy[0] == greedy[1]
    seeded = [client.completions.create(model=MODEL, prompt="the dog", max_tokens=30, temperature=1.2,
                                        seed=7).choices[0].text for _ in range(2)]
    assert seeded[0] == seeded[1]
    reply = client.completions.create(model=MODEL, prompt=["the cat", "a dog ran"], n=3, max_tokens=12)
    assert [c.index for c in reply.choices] == list(range(6)) and all(len(c.text) == 12 for c in reply.choices)
    assert reply.usage.prompt_tokens == 7 + 9 and reply.usage.completion_tokens == 6 * 12


def test_openai_stream_gives_the_text_in_pieces_then_done(client, server):
    stream = client.completions.create(model=MODEL, prompt="we go", max_tokens=80, n=2, stream=True,
                                       stream_options={"include_usage": True})
    chunks = list(stream)
    assert len(chunks) > 4  # text as it is made, not one reply
    texts = {0: "", 1: ""}
    reasons = {}
    for chunk in chunks[:-1]:
        (choice,) = chunk.choices
        texts[choice.index] += choice.text
        if choice.finish_reason:
            reasons[choice.index] = choice.finish_reason
    assert reasons == {0: "length", 1: "length"} and all(len(t) == 80 for t in texts.values())
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 160
    with httpx.stream("POST", server["base"] + "/v1/completions", json={"model": MODEL, "prompt": "x", "max_tokens": 5,
                                                                     "stream": True}, timeout=60) as raw:
        lines = [line for line in raw.iter_lines() if line]
    assert lines[-1] == "data: [DONE]" and all(line.startswith("data: ") for line in lines)


def test_openai_stop_cuts_before_the_stop_string_streamed_or_not(client):
    for stream in (False, True):
        reply = client.completions.create(model=MODEL, prompt="the cat sat", max_tokens=300, seed=3,
                                          stop=[".", "!", "?"], stream=stream)
        choices = list(reply) if stream else [reply]
        text = "".join(c.choices[0].text for c in choices if c.choices)
        reason = [c.choices[0].finish_reason for c in choices if c.choices][-1]
        assert reason == "stop" and not any(s in text for s in ".!?") and len(text) < 300, text
    whole = client.completions.create(model=MODEL, prompt="the cat sat", max_tokens=60, temperature=0).choices[0].text
    cut = client.completions.create(model=MODEL, prompt="the cat sat", max_tokens=60, temperature=0,
                                    stop="at").choices[0]
    assert cut.text == whole[:whole.find("at")] if "at" in whole else cut.text == whole


def test_openai_logprobs_and_echo(client):
    reply = client.completions.create(model=MODEL, prompt="the dog", max_tokens=10, temperature=0, logprobs=3)
    logprobs = reply.choices[0].logprobs
    assert "".join(logprobs.tokens) == reply.choices[0].text and len(logprobs.tokens) == 10
    assert logprobs.text_offset == list(range(7, 17))  # from the start of the prompt
    for token, logprob, top in zip(logprobs.tokens, logprobs.token_logprobs, logprobs.top_logprobs):
        assert len(top) == 3 and logprob <= 0 and math.isclose(logprob, top[token], abs_tol=1e-5)  # argmax: the top
        assert math.isclose(max(top.values()), logprob, abs_tol=1e-5)
    echoed = client.completions.create(model=MODEL, prompt="the dog", max_tokens=10, temperature=0, logprobs=1,
                                       echo=True).choices[0]
    assert echoed.text == "the dog" + reply.choices[0].text
    assert echoed.logprobs.tokens[:7] == list("the dog") and echoed.logprobs.token_logprobs[0] is None
    assert echoed.logprobs.text_offset == list(range(17))
    np.testing.assert_allclose(echoed.logprobs.token_logprobs[7:], logprobs.token_logprobs, atol=1e-5)
    only_echo = client.completions.create(model=MODEL, prompt="the dog", max_tokens=0, echo=True).choices[0]
    assert only_echo.text == "the dog"


def test_openai_unknown_characters_are_skipped_and_logged(client, server):
    reply = client.completions.create(model=MODEL, prompt="the \u2603 cat \u00fc", max_tokens=5)
    assert len(reply.choices[0].text) == 5 and reply.usage.prompt_tokens == 9  # the snowman and the u-umlaut left out
    assert "POST /v1/completions: left out of the priming" in open(server["log"]).read()


@pytest.mark.parametrize("body,status,param", [
    ({"model": "gpt-4", "prompt": "x"}, 404, "model"),
    ({"model": MODEL, "prompt": "x", "temperature": -1}, 400, "temperature"),
    ({"model": MODEL, "prompt": "x", "temperature": 2e6}, 400, "temperature"),
    ({"model": MODEL, "prompt": "x", "max_tokens": True}, 400, "max_tokens"),
    ({"model": MODEL, "prompt": "x", "logprobs": -1}, 400, "logprobs"),
    ({"model": MODEL, "prompt": "x", "top_p": 1.5}, 400, "top_p"),
    ({"model": MODEL, "prompt": "x", "min_p": -0.1}, 400, "min_p"),
    ({"model": MODEL, "prompt": "x", "repetition_penalty": 0}, 400, "repetition_penalty"),
    ({"model": MODEL, "prompt": "x", "repeat_penalty": 11}, 400, "repeat_penalty"),
    ({"model": MODEL, "prompt": "x", "presence_penalty": 2.5}, 400, "presence_penalty"),
    ({"model": MODEL, "prompt": "x", "stop": [str(i) for i in range(65)]}, 400, "stop"),
    ({"model": MODEL, "prompt": "x", "stop": ["x" * 300]}, 400, "stop"),
    ({"model": MODEL, "prompt": "x", "logit_bias": {"5": "high"}}, 400, "logit_bias"),
    ({"model": MODEL, "prompt": "x", "logit_bias": [1, 2]}, 400, "logit_bias"),
    ({"model": MODEL, "prompt": [[1, 2, 10**6]]}, 400, "prompt"),
    ({"model": MODEL, "prompt": [{"text": "x"}]}, 400, "prompt"),
    ({"model": MODEL, "prompt": "x", "n": 33}, 400, "n"),
    ({"model": MODEL, "prompt": ["x"] * 20, "n": 2}, 400, "n"),
])
def test_openai_mistakes_are_4xx_in_openai_shape(server, body, status, param):
    reply = httpx.post(server["base"] + "/v1/completions", json=body, timeout=60)
    assert reply.status_code == status, reply.text
    error = reply.json()["error"]
    assert error["message"] and error["type"] == "invalid_request_error" and param in (error["param"] or ""), error


@pytest.mark.parametrize("raw", [b"{not json", b'{"model": "s", "prompt": "\\ud800"}', b"[" * 100_000,
                                 b'{"model": "s", "prompt": 5}', "\xff\xfe".encode("latin-1")])
def test_any_body_a_client_sends_is_a_4xx(server, raw):
    for path, shape in (("/v1/completions", lambda b: b["error"]["message"]), ("/api/generate", lambda b: b["error"])):
        reply = httpx.post(server["base"] + path, content=raw, headers={"content-type": "application/json"},
                           timeout=60)
        assert 400 <= reply.status_code < 500 and shape(reply.json()), reply.text


def test_the_openai_client_raises_its_own_errors(client):
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="davinci-002", prompt="x")
    with pytest.raises(openai.BadRequestError, match="temperature"):
        client.completions.create(model=MODEL, prompt="x", temperature=-1)


def test_llm_tool_with_an_openai_compatible_completion_model(server, tmp_path):
    """The `llm` command line, configured as its docs say for an OpenAI-compatible completion model."""
    llm = shutil.which("llm")
    assert llm, "the llm tool is a test dependency (pip install -e '.[tf,test]')"
    (tmp_path / "extra-openai-models.yaml").write_text(
        f"- model_id: charrnn\n  model_name: {MODEL}\n  api_base: \"{server['base']}/v1\"\n  completion: true\n")
    env = dict(os.environ, LLM_USER_PATH=str(tmp_path))
    outputs = []
    for extra in ([], ["--no-stream"]):
        done = subprocess.run([llm, "-m", "charrnn", "the cat sat", "-o", "max_tokens", "40", "-o", "temperature", "0",
                               *extra], capture_output=True, text=True, env=env, timeout=120)
        assert done.returncode == 0, done.stderr
        outputs.append(done.stdout.rstrip("\n"))
    assert outputs[0] == outputs[1] and len(outputs[0]) == 40


# --- Ollama's generate API ---------------------------------------------------------------------------


def test_ollama_client_generates_streamed_and_not(server):
    client = ollama.Client(host=server["base"])
    reply = client.generate(model=MODEL, prompt="the cat", stream=False, options={"num_predict": 30, "seed": 5})
    assert reply.done and reply.done_reason == "length" and len(reply.response) == 30
    assert reply.eval_count == 30 and reply.prompt_eval_count == 7 and reply.model == MODEL
    again = client.generate(model=MODEL + ":latest", prompt="the cat", options={"num_predict": 30, "seed": 5})
    assert again.response == reply.response  # the same seed, the same text; the tagged name works too
    parts = list(client.generate(model=MODEL, prompt="the cat", stream=True, options={"num_predict": 60}))
    assert len(parts) > 2 and all(not p.done for p in parts[:-1]) and parts[-1].done
    assert len("".join(p.response for p in parts)) == 60
    stopped = client.generate(model=MODEL, prompt="the cat", options={"num_predict": 200, "stop": ["e"], "seed": 3})
    assert stopped.done_reason == "stop" and "e" not in stopped.response and len(stopped.response) < 200
    default = client.generate(model=MODEL, prompt="a")  # Ollama's default length: 128
    assert len(default.response) == 128
    assert client.generate(model=MODEL, prompt="").done_reason == "load"


def test_ollama_listing_version_and_errors(server):
    client = ollama.Client(host=server["base"])
    (model,) = client.list().models
    assert model.model == f"{MODEL}:latest" and model.details.family == "charrnn"
    shown = client.show(MODEL)
    assert shown.details.family == "charrnn" and "completion" in shown.capabilities
    with pytest.raises(ollama.ResponseError) as error:
        client.show("llama3")
    assert error.value.status_code == 404
    assert httpx.get(server["base"] + "/api/version", timeout=30).json()["version"]
    with pytest.raises(ollama.ResponseError) as error:
        client.generate(model="llama3", prompt="x")
    assert error.value.status_code == 404 and "not found" in error.value.error
    with pytest.raises(ollama.ResponseError) as error:
        client.generate(model=MODEL, prompt="x", options={"temperature": "hot"})
    assert error.value.status_code == 400 and "temperature" in error.value.error
    unknown = client.generate(model=MODEL, prompt="the \u2603", options={"num_predict": 3, "num_ctx": 4096})
    assert len(unknown.response) == 3  # an option Ollama knows (num_ctx) has no effect here; an unknown character
    log = open(server["log"]).read()  # is left out of the priming, and the log says both
    assert "POST /api/generate: left out of the priming" in log and "options.num_ctx" in log  # named once, by now


@pytest.mark.parametrize("path,body", [
    ("/v1/completions", {"model": MODEL, "prompt": "x", "temperature": True}),
    ("/v1/completions", {"model": MODEL, "prompt": "x", "top_p": "0.5"}),
    ("/v1/completions", {"model": MODEL, "prompt": "x", "n": 1.5}),
    ("/api/generate", {"model": MODEL, "prompt": "x", "options": {"temperature": True}}),
    ("/api/generate", {"model": MODEL, "prompt": "x", "options": {"num_predict": "5"}}),
    ("/api/generate", {"model": MODEL, "prompt": "x", "stream": "no"}),
    ("/v1/generate", {"start_text": "x", "temperature": True}),
    ("/v1/generate", {"start_text": "x", "num_new_chars": "5"}),
    ("/v1/generate", {"start_text": "x", "seed": False}),
])
def test_json_true_or_a_string_is_not_a_number(server, path, body):
    reply = httpx.post(server["base"] + path, json=body, timeout=30)
    assert reply.status_code == (422 if path == "/v1/generate" else 400), reply.text  # each API's own code
    error = reply.json()
    field = next(name for name in ("temperature", "top_p", "n", "num_predict", "stream", "num_new_chars", "seed")
                 if json.dumps(body).count(f'"{name}"'))
    assert field in json.dumps(error)


# --- serving many writers, safely ---------------------------------------------------------------------


def test_api_key_is_required_in_each_apis_shape(sentence_model):
    with serving_in_thread(sentence_model, api_key="s3cret") as (base, _):
        assert httpx.get(base + "/healthz").status_code == 200  # liveness, and rnn-writer's check, stay open
        assert httpx.get(base + "/").status_code == 200
        assert httpx.get(base + "/write").status_code == 200 and httpx.get(base + "/write/write.js").status_code == 200
        refused = httpx.post(base + "/v1/completions", json={"model": MODEL, "prompt": "x"})
        assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_api_key"
        refused = httpx.post(base + "/api/generate", json={"model": MODEL, "prompt": "x"},
                             headers={"Authorization": "Bearer wrong"})
        assert refused.status_code == 401 and isinstance(refused.json()["error"], str)
        refused = httpx.get(base + "/generate?start_text=the")
        assert refused.status_code == 401 and refused.json()["message"]
        assert httpx.get(base + "/openapi.json").status_code == 401
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=base + "/v1", api_key="wrong", max_retries=0).completions.create(
                model=MODEL, prompt="x")
        good = openai.OpenAI(base_url=base + "/v1", api_key="s3cret", max_retries=0)
        assert len(good.completions.create(model=MODEL, prompt="the", max_tokens=4).choices[0].text) == 4
        tagged = ollama.Client(host=base, headers={"Authorization": "Bearer s3cret"})
        assert len(tagged.generate(model=MODEL, prompt="the", options={"num_predict": 4}).response) == 4


def test_a_full_queue_answers_429_with_retry_after_and_nothing_waits_forever(sentence_model):
    """Requests with their own seed each run alone: while one runs, with room for one waiting request, a burst of
    them finds the queue full and is answered at once, never queued; the one that waited runs after it. (The
    model's steps wait on a gate until the burst is answered, so the order does not hang on the machine's speed.)"""
    from kerascharrnn.inference import engines
    from kerascharrnn.inference.generation import Sampler

    engine = engines.open_engine("checkpoint", sentence_model, jit_compile=False)
    stepping, gate = threading.Event(), threading.Event()

    def gated_step(ids, states):
        stepping.set()
        assert gate.wait(60)
        return engine.sampler._numpy_step(ids, states)

    gated = engines.Engine(engine.vocab, Sampler.for_numpy_step(gated_step, engine.sampler.state_sizes,
                                                                engine.vocab.size), engine.source)

    def completion(seed):
        return {"model": MODEL, "prompt": "the", "max_tokens": 20, "seed": seed}

    with serving_in_thread(sentence_model, engine=gated, max_waiting=1) as (base, _):
        async def burst():
            async with httpx.AsyncClient(timeout=120) as http:
                running = asyncio.create_task(http.post(base + "/v1/completions", json=completion(100)))
                async with asyncio.timeout(60):
                    while not stepping.is_set():  # it runs: the model is taken
                        await asyncio.sleep(0.02)
                    sent = [asyncio.create_task(http.post(base + "/v1/completions", json=completion(i + 1)))
                            for i in range(24)]
                    while sum(task.done() for task in sent) < len(sent) - 1:  # all but one answered at once
                        await asyncio.sleep(0.02)
                waiting = [i for i, task in enumerate(sent) if not task.done()]
                gate.set()
                return await running, await asyncio.gather(*sent), waiting

        try:
            first, replies, waiting = asyncio.run(burst())
        finally:
            gate.set()
        statuses = [r.status_code for r in replies]
        assert len(waiting) == 1, (waiting, statuses)
        waited = waiting[0]
        assert first.status_code == 200 and statuses[waited] == 200, (first.text, statuses)
        assert statuses.count(429) == len(replies) - 1, statuses
        busy = next(r for r in replies if r.status_code == 429)
        assert busy.headers["Retry-After"] == "1" and busy.json()["error"]["code"] == "rate_limit_exceeded"
        assert len(replies[waited].json()["choices"][0]["text"]) == 20
        assert httpx.get(base + "/healthz").json()["waiting"] == 0


def test_a_request_past_its_time_limit_gets_503_and_the_server_goes_on(sentence_model):
    with serving_in_thread(sentence_model, request_timeout=0.001) as (base, _):
        late = httpx.post(base + "/v1/completions", json={"model": MODEL, "prompt": "the", "max_tokens": 2000},
                          timeout=60)
        assert late.status_code == 503 and late.json()["error"]["code"] == "timeout"
    with serving_in_thread(sentence_model, request_timeout=30) as (base, _):
        assert httpx.post(base + "/v1/completions", json={"model": MODEL, "prompt": "the"}).status_code == 200


def test_a_client_that_leaves_mid_stream_frees_its_rows(sentence_model):
    with serving_in_thread(sentence_model) as (base, records):
        with httpx.stream("POST", base + "/v1/completions", json={"model": MODEL, "prompt": "the", "max_tokens": 2000,
                                                                 "n": 8, "stream": True}, timeout=60) as reply:
            next(reply.iter_lines())  # the first piece came: leave
        deadline = time.time() + 30
        while not any("clients left: 8 rows out of the batch, 0 stay" in r.getMessage() for r in records):
            assert time.time() < deadline, [r.getMessage() for r in records]
            time.sleep(0.05)
        done = httpx.post(base + "/v1/completions", json={"model": MODEL, "prompt": "a", "max_tokens": 5}, timeout=60)
        assert done.status_code == 200 and len(done.json()["choices"][0]["text"]) == 5


def test_a_large_body_is_refused_before_it_is_read(sentence_model):
    with serving_in_thread(sentence_model, max_body_bytes=4096) as (base, _):
        big = json.dumps({"model": MODEL, "prompt": "x", "user": "y" * 10_000})
        reply = httpx.post(base + "/v1/completions", content=big, headers={"content-type": "application/json"})
        assert reply.status_code == 413 and "4096" in reply.json()["error"]["message"]

        def chunks():  # no Content-Length: counted as it arrives
            yield b'{"model": "s", "prompt": "'
            for _ in range(100):
                yield b"x" * 1000
            yield b'"}'

        reply = httpx.post(base + "/api/generate", content=chunks(), headers={"content-type": "application/json"})
        assert reply.status_code == 413 and reply.json()["error"]


def test_a_streamed_request_past_its_time_limit_gets_503_not_200(sentence_model):
    """A seeded request runs alone: streamed requests behind it wait; the worker's clock then jumps an hour
    (an injected clock), so their time runs out while they wait."""
    hour = [0.0]
    with serving_in_thread(sentence_model, clock=lambda: time.monotonic() + hour[0],
                           max_num_new_chars=100_000) as (base, _):
        async def behind_a_long_one():
            async with httpx.AsyncClient(timeout=120) as http:
                long = asyncio.ensure_future(http.post(base + "/v1/completions", json={
                    "model": MODEL, "prompt": "the", "max_tokens": 100_000, "seed": 1}))
                await asyncio.sleep(0.1)
                waiting = [asyncio.ensure_future(http.post(base + "/v1/completions", json={
                               "model": MODEL, "prompt": "the", "stream": True})),
                           asyncio.ensure_future(http.post(base + "/api/generate", json={
                               "model": MODEL, "prompt": "the"}))]
                while (await http.get(base + "/healthz")).json()["waiting"] < 2:
                    await asyncio.sleep(0.02)
                hour[0] = 3600.0
                return [await long] + [await reply for reply in waiting]

        long, openai_reply, ollama_reply = asyncio.run(behind_a_long_one())
        assert long.status_code == 503
        assert openai_reply.status_code == 503 and openai_reply.json()["error"]["code"] == "timeout"
        assert ollama_reply.status_code == 503 and isinstance(ollama_reply.json()["error"], str)


def test_more_rows_than_the_batch_holds_is_a_400_and_rnn_writer_still_gets_its_n(sentence_model):
    with serving_in_thread(sentence_model, max_num_samples=100, max_n=40) as (base, _):
        reply = httpx.post(base + "/v1/completions", json={"model": MODEL, "prompt": "a", "n": 65}, timeout=60)
        assert reply.status_code == 400 and reply.json()["error"]["param"] == "n"
        reply = httpx.post(base + "/v1/generate", json={"start_text": "a", "num_samples": 65}, timeout=60)
        assert reply.status_code == 400 and "at most 64" in reply.json()["message"]
        reply = httpx.get(base + "/generate?start_text=the%20cat&n=40", timeout=120)
        assert reply.status_code == 200 and len(reply.json()["completions"]) <= 40


def test_a_seeded_request_gives_the_same_text_streamed_or_not_when_stops_end_rows(client):
    body = dict(model=MODEL, prompt="the cat", n=4, max_tokens=200, seed=11, stop=["!"])
    whole = client.completions.create(**body)
    streamed = ["", "", "", ""]
    for chunk in client.completions.create(stream=True, **body):
        for choice in chunk.choices:
            streamed[choice.index] += choice.text
    assert [c.text for c in sorted(whole.choices, key=lambda c: c.index)] == streamed
    assert any(c.finish_reason == "stop" for c in whole.choices)


def test_a_cancelled_job_ends_its_wait_running_or_queued_and_the_worker_lives_on(sentence_model):
    """In-process, on the real batch worker: a request whose client left is told it is over (its handler ends,
    and a server can shut down); a model error reaches the requests in that batch, and the worker goes on."""
    from kerascharrnn.inference import engines
    from kerascharrnn.sampling_settings import SamplingSettings
    from kerascharrnn.serving.batcher import BatchingSampler, Job

    for jit_compile in (False, True):  # rows finishing at different times, with and without XLA
        worker = BatchingSampler(engines.open_engine("checkpoint", sentence_model, jit_compile=jit_compile), 8)
        prompt = np.array([1, 2, 3], np.int32)

        async def scenario():
            running = worker.submit(Job([prompt] * 4, 5000))
            queued = worker.submit(Job([prompt] * 4, 5000, seed=3))  # waits: a seeded job runs alone
            await asyncio.sleep(0.3)
            running.cancel()
            queued.cancel()
            await asyncio.wait_for(asyncio.gather(running.rows(), queued.rows()), timeout=60)
            broken = worker.submit(Job([np.array([10**6], np.int32)], 5))  # an id no embedding has
            with pytest.raises(Exception):
                await asyncio.wait_for(broken.rows(), timeout=60)
            uneven = worker.submit(Job([prompt, prompt[:1]], [40, 7], [SamplingSettings(), SamplingSettings(temperature=0)]))
            return await asyncio.wait_for(uneven.rows(), timeout=60)

        rows = asyncio.run(scenario())
        assert [len(ids) for ids, _ in rows] == [40, 7]


def _raw(base: str):
    import socket

    host, port = base.rsplit("//", 1)[1].split(":")
    return socket.create_connection((host, int(port)), timeout=60)


def _closed_by_server(sock) -> bool:
    """Waits for the server to close the socket (a recv of b"" or a reset), up to the socket's timeout."""
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                return True
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def test_stalled_and_slow_request_heads_are_cut_off_and_others_are_served(sentence_model):
    """Slowloris: sockets that send nothing, half a head, or a head byte by byte too slowly, and a kept-alive
    connection that starts a second head and stalls: each is closed after --head_timeout, and meanwhile a
    normal client is answered."""
    with serving_in_thread(sentence_model, head_timeout=0.5) as (base, records):
        silent = _raw(base)
        half = _raw(base)
        half.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100_000)
        kept = _raw(base)
        kept.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert kept.recv(65536).startswith(b"HTTP/1.1 200")
        kept.sendall(b"GET /healthz HTTP/1.1\r\n")  # a second request's head, never finished
        crowd = [_raw(base) for _ in range(40)]
        for sock in crowd:
            sock.sendall(b"POST /v1/completions HTTP/1.1\r\n")
        assert httpx.get(base + "/healthz", timeout=60).status_code == 200
        for sock in (silent, half, kept, *crowd):
            assert _closed_by_server(sock)
            sock.close()
        assert any("no whole request head within 0.5 s" in r.getMessage() for r in records)
        assert httpx.get(base + "/healthz", timeout=60).status_code == 200


def test_stalled_connections_crowd_out_each_other_never_a_real_client(sentence_model):
    with serving_in_thread(sentence_model, max_idle_connections=4, head_timeout=60) as (base, records):
        held = [_raw(base) for _ in range(4)]
        later = _raw(base)  # a fifth connection waiting for its head: the oldest goes
        assert _closed_by_server(held[0])
        for _ in range(3):  # real clients get in, whatever the stalled ones do
            assert httpx.get(base + "/healthz", timeout=60).status_code == 200
        assert any("more than 4 connections were waiting" in r.getMessage() for r in records)
        for sock in (*held, later):
            sock.close()


def test_a_top_p_of_zero_takes_the_most_likely_character_in_both_apis(client, server):
    greedy = client.completions.create(model=MODEL, prompt="the cat", max_tokens=30, temperature=0).choices[0].text
    for top_p in (0.0, 1e-45):
        assert client.completions.create(model=MODEL, prompt="the cat", max_tokens=30, top_p=top_p,
                                         seed=4).choices[0].text == greedy
    ollama_client = ollama.Client(host=server["base"])
    zero = ollama_client.generate(model=MODEL, prompt="the cat", options={"num_predict": 30, "top_p": 0, "seed": 4})
    assert zero.response == greedy


def test_a_request_for_n_suggestions_reads_its_prompt_once(sentence_model):
    """Through the server, as the writing page asks (n suggestions of one prompt, streamed): the model steps the
    prompt for one row, then the n rows (counted through the engine's step function)."""
    from kerascharrnn.inference import engines
    from kerascharrnn.inference.generation import Sampler

    engine = engines.open_engine("checkpoint", sentence_model, jit_compile=False)
    rows_stepped = []

    def counting_step(ids, states):
        rows_stepped.append(len(ids))
        return engine.sampler._numpy_step(ids, states)

    counted = engines.Engine(engine.vocab, Sampler.for_numpy_step(counting_step, engine.sampler.state_sizes,
                                                                  engine.vocab.size), engine.source)
    prompt = "the cat sat on a mat"
    with serving_in_thread(sentence_model, engine=counted) as (base, _):
        with httpx.stream("POST", base + "/v1/completions", timeout=60, json={
                "model": MODEL, "prompt": prompt, "max_tokens": 30, "n": 3, "stream": True}) as reply:
            assert reply.status_code == 200 and "data: [DONE]" in list(reply.iter_lines())
    assert sum(rows_stepped) == len(prompt) + 3 * 30  # not 3 * (len(prompt) + 30)
