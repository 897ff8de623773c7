"""What other writing and coding frontends send to a local model server, replayed against bin/serve (conftest's
session server): SillyTavern's text-completion sources (ooba, KoboldCpp, llama.cpp, vLLM, tabby, generic, Ollama)
and its KoboldAI source, Continue's OpenAI, Ollama and llama.cpp autocomplete, Open WebUI's Ollama chat,
LangChain's OpenAI completion, the ollama client, llama.vim and llama.vscode, and the two frontends of
../shared/frontends as captured from Chromium. The bodies (tests/fixtures/clients/requests.json, each with its
source) were read from the clients' own code or captured on the wire. Each request gets what its client reads:
text for a generation, the model for a listing, a count for a token count."""

import json
import os

import httpx
import pytest

MODEL = "s"  # the session server's model
REQUESTS = json.load(open(os.path.join(os.path.dirname(__file__), "fixtures", "clients", "requests.json")))


def with_model(value):
    """The fixture's "MODEL" placeholder as the served model's name (the ":latest" tag kept)."""
    if isinstance(value, dict):
        return {k: with_model(v) for k, v in value.items()}
    if isinstance(value, list):
        return [with_model(v) for v in value]
    if isinstance(value, str) and value.startswith("MODEL"):
        return MODEL + value[len("MODEL"):]
    return value


def events(reply: httpx.Response, ndjson: bool):
    """The JSON of each server-sent event (or NDJSON line) of a streamed reply, and the event names."""
    items, names = [], []
    for line in reply.text.splitlines():
        if ndjson and line.strip():
            items.append(json.loads(line))
        elif line.startswith("event:"):
            names.append(line[6:].strip())
        elif line.startswith("data:") and line[5:].strip() != "[DONE]":
            items.append(json.loads(line[5:]))
    return items, names


def generated(path: str, streamed: bool, reply: httpx.Response) -> str:
    """The text the client reads from a generation's reply."""
    if not streamed:
        body = reply.json()
        body = body[0] if isinstance(body, list) else body
        if path == "/v1/completions":
            return body["choices"][0]["text"]
        if path == "/v1/chat/completions":
            return body["choices"][0]["message"]["content"]
        if path == "/api/generate":
            return body["response"]
        if path == "/api/chat":
            return body["message"]["content"]
        if path == "/api/v1/generate":
            return body["results"][0]["text"]
        return body.get("content", "")  # llama.cpp's /completion, /infill (its response_fields may leave it out)
    items, names = events(reply, ndjson=path.startswith("/api/") and "/extra/" not in path)
    assert items and not any("error" in item for item in items), reply.text[:500]
    if path == "/v1/completions":
        assert reply.text.rstrip().endswith("data: [DONE]")
        return "".join(c["text"] for item in items for c in item["choices"])
    if path == "/v1/chat/completions":
        return "".join(c["delta"].get("content", "") for item in items for c in item["choices"])
    if path == "/api/generate":
        assert items[-1]["done"]
        return "".join(item["response"] for item in items)
    if path == "/api/chat":
        assert items[-1]["done"]
        return "".join(item["message"]["content"] for item in items)
    if path == "/api/extra/generate/stream":
        assert set(names) == {"message"} and len(names) == len(items)  # event: message / data: {...}
        assert all(isinstance(item["token"], str) for item in items) and items[-1]["finish_reason"]
        return "".join(item["token"] for item in items)
    assert all("content" in item and "stop" in item for item in items) and items[-1]["stop"]  # Tabby needs both
    return "".join(item["content"] for item in items)


READS = {  # what a client reads from the other calls
    "/v1/models": lambda b: b["data"][0]["id"] == MODEL,
    "/v1/internal/model/info": lambda b: b["model_name"] == MODEL,
    "/v1/model/list": lambda b: b["data"][0]["id"] == MODEL,
    "/api/tags": lambda b: b["models"][0]["model"] == MODEL + ":latest",
    "/api/ps": lambda b: b["models"][0]["model"] == MODEL + ":latest",
    "/api/version": lambda b: b["version"].count(".") == 2,
    "/props": lambda b: b["chat_template"] and b["default_generation_settings"]["n_ctx"] > 0,
    "/api/v1/info/version": lambda b: b["result"],
    "/api/extra/version": lambda b: b["result"] == "KoboldCpp" and b["version"],
    "/api/v1/model": lambda b: b["result"] not in ("", "ReadOnly"),
    "/api/show": lambda b: b["details"]["family"] and "template" in b,
    "/api/extra/tokencount": lambda b: b["value"] > 0 and len(b["ids"]) == b["value"],
    "/tokenize": lambda b: len(b["tokens"]) > 0,
    "/v1/internal/encode": lambda b: b["length"] == len(b["tokens"]) > 0,
    "/v1/token/encode": lambda b: b["length"] > 0,
    "/v1/internal/token-count": lambda b: b["length"] > 0,
}


@pytest.mark.parametrize("entry", REQUESTS, ids=[f"{i}-{r['client'][:60]}" for i, r in enumerate(REQUESTS)])
def test_what_a_client_sends_gets_what_it_reads(server, entry):
    # (a header value's trailing space is no part of it on the wire: llama.vim's "Bearer " arrives as "Bearer")
    headers = {k: v.strip() for k, v in entry["headers"].items() if k.lower() != "content-length"}
    body = with_model(entry["body"])
    reply = httpx.request(entry["method"], server["base"] + entry["path"], headers=headers,
                          content=None if body is None else json.dumps(body), timeout=120)
    assert reply.status_code == 200, (entry["client"], reply.text[:500])
    path = entry["path"]
    if path in READS:
        assert READS[path](reply.json()), reply.text[:500]
        return
    text = generated(path, entry["stream"], reply)
    wanted = body.get("n_predict", body.get("max_tokens", 1))
    assert text or wanted == 0, (entry["client"], reply.text[:500])
