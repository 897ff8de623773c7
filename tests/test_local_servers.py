"""bin/serve as a drop-in for the local model servers writing frontends are built for: OpenAI's and Ollama's chat
with their real clients, KoboldCpp's API, llama.cpp server's API, the sampler settings those servers accept, and
the browser's rules (CORS) with and without an API key; against bin/serve on 127.0.0.1 (conftest's session server)
or a server with other settings."""

import json
import math

import httpx
import ollama
import openai
import pytest
from conftest import serving_in_thread

MODEL = "s"


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server["base"] + "/v1", api_key="unused", max_retries=0)


def post(server, path, body, **kwargs):
    return httpx.post(server["base"] + path, json=body, timeout=120, **kwargs)


# --- chat, for the clients that speak nothing else ------------------------------------------------------


def test_openai_chat_with_the_real_client_streamed_or_not(client):
    messages = [{"role": "system", "content": "Write."}, {"role": "user", "content": "the cat sat"}]
    whole = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=40, temperature=0)
    (choice,) = whole.choices
    assert choice.message.role == "assistant" and len(choice.message.content) <= 40 and whole.object == "chat.completion"
    chunks = list(client.chat.completions.create(model=MODEL, messages=messages, max_tokens=40, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == choice.message.content  # argmax: the same text either way
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens and not chunks[-1].choices
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == choice.finish_reason
    logged = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=5, temperature=0, logprobs=True,
                                            top_logprobs=3)
    content = logged.choices[0].logprobs.content
    assert "".join(t.token for t in content) == logged.choices[0].message.content
    assert all(len(t.top_logprobs) == 3 and math.isclose(t.logprob, t.top_logprobs[0].logprob, abs_tol=1e-5)
               for t in content)


def test_a_chat_turn_ends_where_the_next_speaker_would_begin(sentence_model):
    """The sentence model has no newline in its vocabulary: the turn's own stop strings cannot match; a client's stop
    string still cuts the assistant's turn (here a letter it writes)."""
    with serving_in_thread(sentence_model) as (base, _):
        reply = httpx.post(base + "/v1/chat/completions", timeout=60, json={
            "model": MODEL, "max_tokens": 300, "temperature": 0.8, "seed": 3, "stop": ["a"],
            "messages": [{"role": "user", "content": "the dog ran to the park."}]}).json()
        (choice,) = reply["choices"]
        assert choice["finish_reason"] == "stop" and "a" not in choice["message"]["content"]


def test_ollama_chat_with_the_real_client(server):
    client = ollama.Client(host=server["base"])
    reply = client.chat(model=MODEL, messages=[{"role": "user", "content": "the cat"}],
                        options={"num_predict": 30, "seed": 9})
    assert reply.message.role == "assistant" and len(reply.message.content) == 30 and reply.done_reason == "length"
    parts = list(client.chat(model=MODEL + ":latest", messages=[{"role": "user", "content": "the cat"}], stream=True,
                             options={"num_predict": 30, "seed": 9}))
    assert "".join(p.message.content for p in parts) == reply.message.content and parts[-1].done
    assert client.chat(model=MODEL, messages=[]).done_reason == "load"
    with pytest.raises(ollama.ResponseError) as error:
        client.chat(model=MODEL, messages=[{"role": "user", "content": "x"}], format="json")
    assert error.value.status_code == 400 and "JSON" in error.value.error
    shown = client.show(MODEL)
    assert "User: " in shown.template and "Assistant: " in shown.template


# --- the sampler settings local servers accept ------------------------------------------------------


def repeats(text: str) -> float:
    """The share of characters that repeat the character 1-8 places before (a loop's signature)."""
    hits = sum(any(text[i] == text[i - k] for k in range(1, 9) if i >= k) for i in range(len(text)))
    return hits / max(len(text), 1)


def test_penalties_change_the_argmax_and_neutral_values_do_not(server):
    def text(**settings):
        body = dict(model=MODEL, prompt="the cat sat on the mat", max_tokens=200, temperature=0, **settings)
        return post(server, "/v1/completions", body).json()["choices"][0]["text"]

    greedy = text()
    assert text(repetition_penalty=1.0, presence_penalty=0, frequency_penalty=0, top_k=40, min_p=0.0) == greedy
    for settings in ({"repetition_penalty": 2.0}, {"frequency_penalty": 1.5}, {"presence_penalty": 2.0},
                     {"repeat_penalty": 1.8, "repeat_last_n": 16}):
        penalized = text(**settings)
        assert penalized != greedy, settings
    loop = text(repetition_penalty=1.0)
    assert repeats(text(frequency_penalty=1.0, repetition_penalty_range=0)) < repeats(loop)


def test_logit_bias_bans_and_favours_characters_in_each_wire_form(server):
    vocab = json.loads(httpx.post(server["base"] + "/tokenize", json={"content": " e", "with_pieces": True}).text)
    space, e = [t["id"] for t in vocab["tokens"]]
    banned = post(server, "/v1/completions", {"model": MODEL, "prompt": "the", "max_tokens": 80, "seed": 1,
                                              "logit_bias": {str(space): -100, "e": -100}}).json()
    assert " " not in banned["choices"][0]["text"] and "e" not in banned["choices"][0]["text"]
    llama = post(server, "/completion", {"prompt": "the", "n_predict": 80, "seed": 1,
                                         "logit_bias": [[space, False], ["e", False]]}).json()
    assert llama["content"] and " " not in llama["content"] and "e" not in llama["content"]
    forced = post(server, "/api/v1/generate", {"prompt": "the", "max_length": 20, "logit_bias": {str(e): 100}}).json()
    assert forced["results"][0]["text"] == "e" * 20


def test_min_p_and_typical_p_narrow_the_draws(server):
    def distinct(**settings):
        body = dict(model=MODEL, prompt="the", max_tokens=300, temperature=1.5, seed=5, **settings)
        return len(set(post(server, "/v1/completions", body).json()["choices"][0]["text"]))

    wide = distinct()
    assert distinct(min_p=0.5) < wide and distinct(typical_p=0.2) < wide and distinct(top_k=3) <= wide


def test_logprobs_up_to_the_vocabulary_and_accepted_extras(server):
    reply = post(server, "/v1/completions", {
        "model": MODEL, "prompt": ["the cat", "a dog"], "max_tokens": -1, "logprobs": 10, "temperature": 0,
        "stop": ["!", "?", ".", "zzz", "yy", "x"], "stream_options": {"include_usage": True}, "penalize_nl": False,
        "ban_eos_token": False}, headers={"Authorization": "Bearer sk-no-key-required"})
    assert reply.status_code == 200, reply.text
    choices = reply.json()["choices"]
    assert len(choices) == 2 and all(len(t) == 10 for c in choices for t in c["logprobs"]["top_logprobs"])
    long = post(server, "/v1/completions", {"model": MODEL, "prompt": "the cat " * 200, "max_tokens": 5})
    assert long.status_code == 200 and long.json()["usage"]["prompt_tokens"] == 500  # its last --max_start_text


# --- KoboldCpp ----------------------------------------------------------------------------------------


def test_koboldcpp_generate_stream_check_and_abort(server):
    assert httpx.get(server["base"] + "/api/v1/model").json() == {"result": f"koboldcpp/{MODEL}"}
    assert httpx.get(server["base"] + "/api/extra/version").json()["result"] == "KoboldCpp"
    assert httpx.get(server["base"] + "/api/v1/config/max_context_length").json() == {"value": 500}
    body = {"prompt": "the cat", "max_length": 60, "sampler_seed": 4, "stop_sequence": ["."], "genkey": "KCPP1"}
    kept = post(server, "/api/v1/generate", body).json()["results"][0]
    trimmed = post(server, "/api/v1/generate", dict(body, trim_stop=True)).json()["results"][0]
    if kept["finish_reason"] == "stop":  # KoboldCpp's text ends with the stop sequence unless trim_stop
        assert kept["text"] == trimmed["text"] + "." and "." not in trimmed["text"]
    checked = post(server, "/api/extra/generate/check", {"genkey": "KCPP1"}).json()
    assert checked == {"results": [{"text": trimmed["text"]}]}
    with httpx.stream("POST", server["base"] + "/api/extra/generate/stream", timeout=60,
                      json=dict(body, trim_stop=True, genkey="KCPP2")) as reply:
        lines = [line for line in reply.iter_lines() if line]
    events = [json.loads(line[6:]) for line in lines if line.startswith("data: ")]
    assert lines[0] == "event: message" and "".join(e["token"] for e in events) == trimmed["text"]
    assert events[-1]["finish_reason"] in ("stop", "length")
    assert post(server, "/api/extra/abort", {"genkey": "nobody"}).json() == {"success": "false", "done": "false"}
    assert post(server, "/api/extra/abort", {"genkey": "KCPP2"}).json()["success"] == "true"
    count = post(server, "/api/extra/tokencount", {"prompt": "the cat"}).json()
    assert count["value"] == 7 and len(count["ids"]) == 7
    error = post(server, "/api/v1/generate", {"prompt": "x", "temperature": "hot"})
    assert error.status_code == 400 and "temperature" in error.json()["detail"]["msg"]


# --- llama.cpp server -------------------------------------------------------------------------------


def test_llamacpp_completion_tokenize_and_props(server):
    tokens = post(server, "/tokenize", {"content": "the cat"}).json()["tokens"]
    assert len(tokens) == 7 and post(server, "/detokenize", {"tokens": tokens}).json() == {"content": "the cat"}
    reply = post(server, "/completion", {"prompt": "the cat", "n_predict": 20, "seed": 2, "n_probs": 3}).json()
    assert len(reply["content"]) == 20 and reply["stop"] and reply["stop_type"] == "limit"
    assert reply["tokens_predicted"] == 20 and reply["tokens_evaluated"] == 7
    probabilities = reply["completion_probabilities"]
    assert "".join(p["token"] for p in probabilities) == reply["content"]
    assert all(len(p["top_logprobs"]) == 3 and p["logprob"] <= 0 for p in probabilities)
    with httpx.stream("POST", server["base"] + "/completion", timeout=60,
                      json={"prompt": "the cat", "n_predict": 20, "seed": 2, "stream": True}) as streamed:
        events = [json.loads(line[6:]) for line in streamed.iter_lines() if line.startswith("data: ")]
    assert "".join(e["content"] for e in events) == reply["content"] and events[-1]["stop"]
    many = post(server, "/completion", {"prompt": ["the", "a dog"], "n_predict": 5, "response_fields":
                                        ["content", "timings/predicted_n"]}).json()
    assert [set(r) for r in many] == [{"content", "timings/predicted_n"}] * 2
    assert all(r["timings/predicted_n"] == 5 for r in many)
    ids = post(server, "/completion", {"prompt": tokens, "n_predict": 5, "seed": 2}).json()
    assert ids["tokens_evaluated"] == 7
    infill = post(server, "/infill", {"input_prefix": "the cat ", "input_suffix": " end.", "prompt": "sat",
                                      "n_predict": 10}).json()
    assert infill["prompt"] == "the cat sat" and len(infill["content"]) == 10
    props = httpx.get(server["base"] + "/props").json()
    assert props["default_generation_settings"]["n_ctx"] == 500 and "Assistant" in props["chat_template"]
    assert httpx.get(server["base"] + "/health").json() == {"status": "ok"}
    bad = post(server, "/completion", {"prompt": "x", "n_probs": "many"})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == 400 and bad.json()["error"]["type"]
    unknown = post(server, "/detokenize", {"tokens": [10**6]})
    assert unknown.status_code == 400 and "not in the vocabulary" in unknown.json()["error"]["message"]


def test_fill_in_the_middle_markup_is_continued_after_the_prefix(server):
    fim = post(server, "/v1/completions", {"model": MODEL, "prompt": "<fim_prefix>the cat<fim_suffix> end<fim_middle>",
                                           "max_tokens": 10, "temperature": 0}).json()
    plain = post(server, "/v1/completions", {"model": MODEL, "prompt": "the cat", "max_tokens": 10,
                                             "temperature": 0}).json()
    assert fim["choices"][0]["text"] == plain["choices"][0]["text"]
    assert fim["usage"]["prompt_tokens"] == plain["usage"]["prompt_tokens"] == 7


# --- the browser's rules ------------------------------------------------------------------------------


def preflight(base, origin, path="/v1/completions", headers="content-type,authorization"):
    return httpx.options(base + path, headers={"Origin": origin, "Access-Control-Request-Method": "POST",
                                               "Access-Control-Request-Headers": headers})


def test_cors_preflights_and_replies_for_allowed_pages_only(server):
    base = server["base"]
    allowed = preflight(base, "http://localhost:5173")
    assert allowed.status_code == 204 and allowed.headers["access-control-allow-origin"] == "http://localhost:5173"
    assert "authorization" in allowed.headers["access-control-allow-headers"].lower()
    assert "POST" in allowed.headers["access-control-allow-methods"]
    reply = post(server, "/v1/completions", {"model": MODEL, "prompt": "the", "max_tokens": 3},
                 headers={"Origin": "http://localhost:5173"})
    assert reply.status_code == 200 and reply.headers["access-control-allow-origin"] == "http://localhost:5173"
    missing = httpx.get(base + "/v1/internal/nothing", headers={"Origin": "http://127.0.0.1:9"})
    assert missing.status_code == 404 and missing.headers["access-control-allow-origin"]  # the page reads the 404
    for origin in ("null", "https://attacker.example", "http://127.0.0.1.attacker.example", "http://localhost.evil"):
        refused = preflight(base, origin)
        assert refused.status_code == 403 and "access-control-allow-origin" not in refused.headers, origin
        simple = httpx.post(base + "/api/generate", content=json.dumps({"model": MODEL, "prompt": "the"}),
                            headers={"Origin": origin, "Content-Type": "text/plain"})  # no preflight for this one
        assert simple.status_code == 403 and "access-control-allow-origin" not in simple.headers
    same = post(server, "/v1/completions", {"model": MODEL, "prompt": "the", "max_tokens": 3},
                headers={"Origin": base})  # the writing page: the server's own origin
    assert same.status_code == 200


def test_with_an_api_key_a_page_opened_from_a_file_may_ask_and_the_key_decides(sentence_model):
    with serving_in_thread(sentence_model, api_key="k3y") as (base, records):
        assert preflight(base, "null").status_code == 204  # preflights carry no key
        refused = httpx.post(base + "/v1/completions", json={"model": MODEL, "prompt": "x"}, headers={"Origin": "null"})
        assert refused.status_code == 401 and refused.headers["access-control-allow-origin"] == "null"
        good = httpx.post(base + "/v1/completions", json={"model": MODEL, "prompt": "the", "max_tokens": 3},
                          headers={"Origin": "null", "Authorization": "Bearer k3y"}, timeout=60)
        assert good.status_code == 200
        assert preflight(base, "https://attacker.example").status_code == 403
    with serving_in_thread(sentence_model, cors_origins="https://writer.example,http://192.168.1.9:*") as (base, _):
        assert preflight(base, "https://writer.example").status_code == 204
        assert preflight(base, "http://192.168.1.9:3000").status_code == 204
        assert preflight(base, "http://localhost:3000").status_code == 403  # `local` not listed
    with serving_in_thread(sentence_model, cors_origins="local,null") as (base, _):
        assert preflight(base, "null").status_code == 204


def test_a_bad_cors_setting_is_one_line_and_exit_1(sentence_model):
    from conftest import run_cli

    done = run_cli("serve", "--checkpoint", sentence_model, "--cors_origins", "writer.example")
    assert done.returncode == 1 and "--cors_origins" in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_a_dummy_authorization_is_ignored_by_a_server_without_a_key(server):
    for value in ("Bearer", "Bearer undefined", "Bearer sk-no-key-required", "Basic Zm9vOmJhcg=="):
        reply = post(server, "/v1/completions", {"model": MODEL, "prompt": "the", "max_tokens": 2},
                     headers={"Authorization": value})
        assert reply.status_code == 200, value
