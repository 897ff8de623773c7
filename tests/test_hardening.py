"""bin/serve under attack (reliability round 4): what the red team found on the writers' server, each case as it
was sent, against a real uvicorn on 127.0.0.1. The server never answers a client's mistake with a 5xx, never
hangs, never lets one client starve another, and keeps what it serves from pages and names it does not know."""

import asyncio
import json
import socket
import threading
import time

import httpx
import pytest
from conftest import serving_in_thread

MODEL = "s"


def raw(base: str) -> socket.socket:
    host, port = base.rsplit("//", 1)[1].split(":")
    return socket.create_connection((host, int(port)), timeout=30)


def reply_of(sock: socket.socket) -> bytes:
    """What the server sent before it closed (or stopped sending for the socket's timeout)."""
    data = b""
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return data
            data += chunk
    except (TimeoutError, ConnectionResetError):
        return data


def errors_logged(records) -> list:
    return [r.getMessage() for r in records if r.levelname in ("ERROR", "CRITICAL")]


# --- bodies ---------------------------------------------------------------------------------------------------


def test_four_clients_sending_50_mb_at_once_all_read_413(sentence_model):
    """Each refusal is sent once the body arrived (read and dropped): a reply sent while the client still writes
    would be lost to the reset that closing an unread connection makes."""
    with serving_in_thread(sentence_model) as (base, records):
        async def send(chunked: bool):
            body = b'{"model": "s", "prompt": "' + b"x" * (50 << 20) + b'"}'

            async def pieces():
                for start in range(0, len(body), 1 << 20):
                    yield body[start:start + (1 << 20)]

            async with httpx.AsyncClient(timeout=120) as http:
                reply = await http.post(base + "/v1/completions", content=pieces() if chunked else body,
                                        headers={"content-type": "application/json"})
                return reply.status_code, reply.json()["error"]["message"]

        async def all_four():
            return await asyncio.gather(*(send(chunked=i % 2 == 1) for i in range(4)))

        for status, message in asyncio.run(all_four()):
            assert status == 413 and "--max_body_bytes" in message
        assert not errors_logged(records)


def test_bodies_that_never_finish_are_dropped_in_time_and_held_no_longer(sentence_model):
    with serving_in_thread(sentence_model, body_timeout=1.0) as (base, records):
        started = time.monotonic()
        socks = []
        for i in range(20):
            sock = raw(base)
            if i % 2:  # chunked, without the last chunk
                sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                             b"Transfer-Encoding: chunked\r\n\r\n5\r\n{\"mod\r\n")
            else:  # short of its Content-Length
                sock.sendall(b"POST /api/generate HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{\"model\"")
            socks.append(sock)
        for sock in socks:
            reply = reply_of(sock)
            assert reply.startswith(b"HTTP/1.1 408") and b"--body_timeout" in reply, reply[:300]
            sock.close()
        assert time.monotonic() - started < 20
        assert httpx.get(base + "/healthz", timeout=30).status_code == 200 and not errors_logged(records)


def test_clients_that_leave_in_the_middle_of_their_body_make_no_errors(sentence_model):
    """100 clients send half a body and close: a line each in the log at most, no traceback, no 500."""
    with serving_in_thread(sentence_model) as (base, records):
        for i in range(100):
            sock = raw(base)
            sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 400\r\n\r\n" + b"{" * 200)
            sock.close()
        time.sleep(1.0)
        assert httpx.get(base + "/healthz", timeout=30).status_code == 200
        assert not errors_logged(records) and not any("-> 500" in r.getMessage() for r in records)
        assert sum(len(r.getMessage()) for r in records) < 100 * 200  # a short line each at most


@pytest.mark.parametrize("encoding", ["gzip", "br", "deflate"])
def test_a_compressed_body_is_refused_in_the_apis_shape(server, encoding):
    reply = httpx.post(server["base"] + "/api/generate", content=b"\x1f\x8b\x08\x00garbage",
                       headers={"content-type": "application/json", "content-encoding": encoding}, timeout=30)
    assert reply.status_code == 415 and encoding in reply.json()["error"]


def test_a_key_named_twice_is_refused(server):
    body = b'{"model": "s", "prompt": "the", "max_tokens": 3, "model": "other"}'
    reply = httpx.post(server["base"] + "/v1/completions", content=body, headers={"content-type": "application/json"})
    assert reply.status_code == 400 and "'model' twice" in reply.json()["error"]["message"]


def test_a_lone_surrogate_with_unknown_chars_skip_is_a_4xx(server):
    body = b'{"start_text": "the \\ud800 cat", "unknown_chars": "skip", "num_new_chars": 5}'
    reply = httpx.post(server["base"] + "/v1/generate", content=body, headers={"content-type": "application/json"})
    assert reply.status_code == 400 and "surrogate" in reply.json()["message"]


# --- work a request can ask for ---------------------------------------------------------------------------------


def test_huge_or_many_stop_strings_are_refused_at_once_and_the_server_stays_responsive(server):
    body = {"model": MODEL, "prompt": "the", "n": 2, "max_tokens": 100, "stop": ["x" * 250_000] * 4}

    async def at_once():
        async with httpx.AsyncClient(timeout=60) as http:
            started = time.monotonic()
            refused = await http.post(server["base"] + "/v1/completions", json=body)
            health = await http.get(server["base"] + "/healthz")
            return refused, health, time.monotonic() - started

    refused, health, seconds = asyncio.run(at_once())
    assert refused.status_code == 400 and "stop" in refused.json()["error"]["message"]
    assert health.status_code == 200 and seconds < 10
    for stops in ([str(i) for i in range(65)], ["a" * 257]):
        assert httpx.post(server["base"] + "/v1/completions", json=dict(body, stop=stops)).status_code == 400


def test_overlapping_and_empty_stops_cut_at_the_first_match(server):
    body = {"model": MODEL, "prompt": "the cat", "max_tokens": 100, "temperature": 0}
    whole = httpx.post(server["base"] + "/v1/completions", json=body).json()["choices"][0]["text"]
    stops = ["", whole[30:36], whole[31:39], whole[30:33]]  # overlapping: the earliest match cuts
    cut = httpx.post(server["base"] + "/v1/completions", json=dict(body, stop=stops)).json()["choices"][0]
    assert cut["text"] == whole[:min(whole.find(s) for s in stops[1:])] and cut["finish_reason"] == "stop"


@pytest.mark.parametrize("path,body", [
    ("/v1/completions", {"model": MODEL, "prompt": ["the"] * 8, "n": 4, "logprobs": 30, "echo": True,
                         "max_tokens": 2000}),
    ("/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "n": 32,
                              "logprobs": True, "top_logprobs": 20}),
    ("/completion", {"prompt": ["a"] * 16, "n_probs": 30, "n_predict": -1}),
])
def test_a_reply_of_too_many_log_probabilities_is_refused_before_any_work(server, path, body):
    reply = httpx.post(server["base"] + path, json=body, timeout=60)
    assert reply.status_code == 400 and "log-probabilities" in reply.text, reply.text[:300]


def test_the_first_token_after_an_empty_prompt_has_no_log_probabilities_at_all(server):
    for prompt in ("", "\u2603\u2603"):  # empty, or every character unknown
        reply = httpx.post(server["base"] + "/v1/completions", json={"model": MODEL, "prompt": prompt, "max_tokens": 3,
                                                                     "logprobs": 2}).json()
        logprobs = reply["choices"][0]["logprobs"]
        assert logprobs["token_logprobs"][0] is None and logprobs["top_logprobs"][0] is None
        assert all(v is not None for v in logprobs["token_logprobs"][1:])


# --- names, keys and pages ---------------------------------------------------------------------------------------


def test_a_request_to_another_name_is_refused_on_a_loopback_server(sentence_model):
    """DNS rebinding: a page on attacker.example, whose name now resolves to 127.0.0.1, is same-origin with the
    server in the browser's eyes; the Host it sends names attacker.example."""
    with serving_in_thread(sentence_model, bound_to="127.0.0.1", allowed_hosts="writer.proxy.example") as (base, _):
        port = base.rsplit(":", 1)[1]
        for host in ("attacker.example", f"attacker.example:{port}", "127.0.0.1.attacker.example", "localhost.evil"):
            for method, path in (("GET", "/v1/models"), ("POST", "/v1/completions")):
                reply = httpx.request(method, base + path, headers={"Host": host},
                                      json={"model": MODEL, "prompt": "the", "max_tokens": 3})
                assert reply.status_code == 403 and "Host" in reply.json()["error"]["message"], (host, path)
        for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}", "writer.localhost", "127.0.0.2",
                     socket.gethostname(), "writer.proxy.example"):
            assert httpx.get(base + "/v1/models", headers={"Host": host}).status_code == 200, host
    with serving_in_thread(sentence_model, bound_to="0.0.0.0") as (base, _):  # names it cannot know: no check
        assert httpx.get(base + "/v1/models", headers={"Host": "writer.lan"}).status_code == 200
    # a container listens on every interface, published on the host's loopback (make serve): --allowed_hosts local
    with serving_in_thread(sentence_model, bound_to="0.0.0.0", allowed_hosts="local") as (base, _):
        assert httpx.get(base + "/v1/models", headers={"Host": "attacker.example"}).status_code == 403
        assert httpx.get(base + "/v1/models", headers={"Host": "127.0.0.1:8080"}).status_code == 200


def test_with_a_key_the_open_endpoints_name_neither_the_model_nor_the_queue(sentence_model):
    with serving_in_thread(sentence_model, api_key="k3y") as (base, _):
        assert httpx.get(base + "/healthz").json() == {"status": "ok"}
        assert MODEL not in httpx.get(base + "/").json()["message"].split()
        keyed = {"Authorization": "Bearer k3y"}
        assert httpx.get(base + "/healthz", headers=keyed).json()["model"] == MODEL
        assert f"serving {MODEL}" in httpx.get(base + "/", headers=keyed).json()["message"]


def test_docs_are_off_unless_asked_and_the_page_refuses_frames(sentence_model, server):
    assert httpx.get(server["base"] + "/docs").status_code == 404
    assert httpx.get(server["base"] + "/openapi.json").status_code == 200
    page = httpx.get(server["base"] + "/write")
    assert "frame-ancestors 'self'" in page.headers["content-security-policy"]
    assert page.headers["x-frame-options"] == "SAMEORIGIN"
    with serving_in_thread(sentence_model, docs=True) as (base, _):
        assert httpx.get(base + "/docs").status_code == 200


# --- fairness and failures ---------------------------------------------------------------------------------------


def test_one_client_looping_heavy_requests_leaves_room_for_another_writer(sentence_model):
    """With room for 4 waiting requests, one client keeps asking for seeded batches of 32 (each runs alone); a
    writer's small requests, one after another, are all served: no client holds more than half the queue."""
    with serving_in_thread(sentence_model, max_waiting=4) as (base, _):
        async def scenario():
            stop = asyncio.Event()
            looper_statuses = []

            async def looper(http):
                seed = 0
                while not stop.is_set():
                    seed += 1
                    reply = await http.post(base + "/v1/completions", json={
                        "model": MODEL, "prompt": "the", "n": 32, "max_tokens": 200, "seed": seed},
                        headers={"User-Agent": "looper"})
                    looper_statuses.append(reply.status_code)

            async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=40)) as http:
                loops = [asyncio.ensure_future(looper(http)) for _ in range(8)]
                await asyncio.sleep(1.0)
                writer = []
                for i in range(12):
                    reply = await http.post(base + "/v1/completions", json={
                        "model": MODEL, "prompt": "she said", "max_tokens": 10}, headers={"User-Agent": "writer"})
                    writer.append(reply.status_code)
                stop.set()
                await asyncio.gather(*loops)
            return writer, looper_statuses

        writer, looper = asyncio.run(scenario())
        assert writer == [200] * 12, writer
        assert 429 in looper and 200 in looper


def test_a_request_the_model_fails_on_fails_alone(sentence_model):
    """A model step that raises for one request's rows: that request gets the error (in its API's shape; a stream
    an error event), and the other requests of its batch go on and get their whole text. (The batch's first
    chunk with every good row in it waits on a gate until the poisoned requests are queued behind them: which
    requests are the batch's newest then does not hang on the machine's speed.)"""
    from kerascharrnn.inference import engines

    engine = engines.open_engine("checkpoint", sentence_model, jit_compile=False)
    poison = int(engine.vocab.encode("%")[0])  # a character of "5%": only the poisoned prompts hold it
    sampler = engine.sampler
    chunk_fn = sampler.chunk_fn
    good_rows = 4 * 2 + 1
    all_in, gate = threading.Event(), threading.Event()

    def failing_chunk_fn(filters, use_xla):
        run_chunk = chunk_fn(filters, use_xla)

        def run(prompt, in_prompt, *rest):
            if ((prompt == poison) & in_prompt).any():
                raise RuntimeError("injected: the model fails on this row")
            if len(prompt) == good_rows and not all_in.is_set():
                all_in.set()
                assert gate.wait(60)
            return run_chunk(prompt, in_prompt, *rest)

        return run

    sampler.chunk_fn = failing_chunk_fn
    with serving_in_thread(sentence_model, engine=engine) as (base, records):
        async def queued(http, count):
            while (await http.get(base + "/healthz")).json()["waiting"] < count:
                await asyncio.sleep(0.02)

        async def scenario():
            async with httpx.AsyncClient(timeout=120) as http:
                good = [asyncio.ensure_future(http.post(base + "/v1/completions", json={
                    "model": MODEL, "prompt": "the cat", "max_tokens": 400, "n": 2})) for _ in range(4)]
                streamed = asyncio.ensure_future(http.post(base + "/v1/completions", json={
                    "model": MODEL, "prompt": "she", "max_tokens": 400, "stream": True}))
                async with asyncio.timeout(60):
                    while not all_in.is_set():  # the good requests are the batch, held at the gate
                        await asyncio.sleep(0.02)
                    bad = asyncio.ensure_future(http.post(base + "/v1/completions", json={
                        "model": MODEL, "prompt": "5%", "max_tokens": 50}))
                    await queued(http, 1)
                    bad_stream = asyncio.ensure_future(http.post(base + "/api/generate", json={
                        "model": MODEL, "prompt": "5% off", "stream": True}))
                    await queued(http, 2)
                gate.set()
                return await asyncio.gather(*good), await streamed, await bad, await bad_stream

        try:
            good, streamed, bad, bad_stream = asyncio.run(scenario())
        finally:
            gate.set()
        for reply in good:
            assert reply.status_code == 200 and [len(c["text"]) for c in reply.json()["choices"]] == [400, 400]
        text = "".join(json.loads(line[6:])["choices"][0]["text"] for line in streamed.text.splitlines()
                       if line.startswith("data: {"))
        assert streamed.status_code == 200 and len(text) == 400
        assert bad.status_code == 500 and bad.json()["error"]["message"]  # the model's failure: its own only
        assert bad_stream.status_code in (200, 500)
        if bad_stream.status_code == 200:  # the failure came after the stream started: an error line ends it
            assert "error" in json.loads(bad_stream.text.splitlines()[-1])
        assert httpx.get(base + "/healthz").status_code == 200


@pytest.mark.parametrize("path,body", [
    ("/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "max_tokens": 2000,
                              "stream": True, "n": 4}),
    ("/api/chat", {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "options": {"num_predict": 2000}}),
    ("/api/extra/generate/stream", {"prompt": "the", "max_length": 2000}),
    ("/completion", {"prompt": ["the", "a", "she"], "n_predict": 2000, "stream": True}),
])
def test_a_stream_cut_after_its_first_event_frees_its_rows_in_every_api(sentence_model, path, body):
    with serving_in_thread(sentence_model) as (base, records):
        with httpx.stream("POST", base + path, json=body, timeout=60) as reply:
            assert reply.status_code == 200
            next(reply.iter_lines())  # the first event came: leave
        deadline = time.time() + 30
        while not any("clients left:" in r.getMessage() and ", 0 stay" in r.getMessage() for r in records):
            assert time.time() < deadline, [r.getMessage() for r in records]
            time.sleep(0.05)
        assert httpx.post(base + "/v1/completions", json={"model": MODEL, "prompt": "a", "max_tokens": 5}).status_code \
            == 200 and not errors_logged(records)
