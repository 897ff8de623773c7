"""The lite install (pip install 'kerascharrnn[lite]': LiteRT and the server, no TensorFlow) serves an exported
model.tflite to every API of bin/serve and samples it, in a virtual environment where TensorFlow cannot be
imported; the tools that need TensorFlow say so in one line. Real processes: the model is trained and exported
with this (TensorFlow) environment, then served and sampled by the lite one (.venv-lite/, which
scripts/setup_tests.sh makes)."""

import json
import os
import subprocess

import httpx
import pytest
from conftest import REPO, run_process, serve_process

LITE_VENV = os.path.join(REPO, ".venv-lite")
LITE_PYTHON = os.path.join(LITE_VENV, "bin", "python")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def lite_python():
    if not os.access(LITE_PYTHON, os.X_OK):
        pytest.fail(f"no lite install at {LITE_VENV}: run scripts/setup_tests.sh (it makes a venv there with"
                    " pip install -e '.[lite]')")
    return LITE_PYTHON


def run_lite(lite_python, tool, *args, timeout=120):
    """bin/<tool> run by the lite venv's Python."""
    return subprocess.run([lite_python, os.path.join(REPO, "bin", tool), *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env=dict(os.environ, PYTHONUNBUFFERED="1"))


@pytest.fixture(scope="module")
def exported(sentence_model, tmp_path_factory):
    """The sentence model exported with --tflite by this environment: the model directory."""
    export_dir = tmp_path_factory.mktemp("lite-export")
    done = run_process("export", "--checkpoint", sentence_model, "--export_dir", export_dir, "--model_name", "words",
                       "--tflite")
    assert done.returncode == 0, done.stderr[-2000:]
    return str(export_dir / "words")


@pytest.fixture(scope="module")
def lite_server(lite_python, exported, tmp_path_factory):
    """bin/serve --tflite from the lite venv on 127.0.0.1 (a free port)."""
    log_path = tmp_path_factory.mktemp("lite-serve") / "serve.log"
    with serve_process([lite_python, os.path.join(REPO, "bin", "serve"), "--tflite", exported], log_path,
                       "bin/serve --tflite in the lite venv") as base:
        yield base


def test_the_lite_venv_has_no_tensorflow_and_runs_this_checkout(lite_python):
    done = subprocess.run([lite_python, "-c", "import tensorflow"], capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "No module named 'tensorflow'" in done.stderr, done.stderr
    where = subprocess.run([lite_python, "-c", "import kerascharrnn, ai_edge_litert; print(kerascharrnn.__file__)"],
                           capture_output=True, text=True, timeout=60)
    assert where.returncode == 0 and where.stdout.startswith(REPO), where.stderr


def test_every_api_family_answers_from_the_tflite_model(lite_server):
    base = lite_server
    assert httpx.get(base + "/healthz").json()["model"] == "words"
    # rnn-writer (torch-rnn-server's API)
    suggestions = httpx.get(base + "/generate", params={"start_text": "the cat", "n": 3}, timeout=60).json()
    assert len(suggestions["completions"]) == 3 and all(suggestions["completions"])
    # the JSON API
    made = httpx.post(base + "/v1/generate", json={"start_text": "she", "num_new_chars": 12, "num_samples": 2,
                                                   "seed": 1}, timeout=60).json()
    assert [len(text) for text in made["completions"]] == [12, 12]
    # OpenAI: completions, and chat streamed
    completion = httpx.post(base + "/v1/completions", json={"model": "words", "prompt": "the dog", "max_tokens": 10,
                                                            "seed": 1}, timeout=60).json()
    assert len(completion["choices"][0]["text"]) == 10
    with httpx.stream("POST", base + "/v1/chat/completions", timeout=60, json={
            "model": "words", "messages": [{"role": "user", "content": "a cat"}], "max_tokens": 15,
            "stream": True}) as reply:
        events = [line[len("data: "):] for line in reply.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]" and len(events) > 2
    text = "".join(json.loads(e)["choices"][0]["delta"].get("content", "") for e in events[:-1])
    assert len(text) == 15
    # Ollama
    ollama = httpx.post(base + "/api/generate", json={"model": "words", "prompt": "we go", "stream": False,
                                                      "options": {"num_predict": 8, "seed": 2}}, timeout=60).json()
    assert ollama["done"] and len(ollama["response"]) == 8
    chat = httpx.post(base + "/api/chat", json={"model": "words", "messages": [{"role": "user", "content": "hi"}],
                                                "stream": False, "options": {"num_predict": 5}}, timeout=60).json()
    assert chat["done"] and chat["message"]["role"] == "assistant"
    # KoboldCpp
    kobold = httpx.post(base + "/api/v1/generate", json={"prompt": "the", "max_length": 9}, timeout=60).json()
    assert len(kobold["results"][0]["text"]) == 9
    # llama.cpp
    llama = httpx.post(base + "/completion", json={"prompt": "the", "n_predict": 7, "seed": 3}, timeout=60).json()
    assert len(llama["content"]) == 7
    # the writing page
    page = httpx.get(base + "/write", timeout=60)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")


def test_seeded_text_is_the_tensorflow_installs_and_argmax_the_checkpoints(lite_server, lite_python, exported,
                                                                           sentence_model):
    """The same model.tflite gives the same seeded text in both installs; argmax gives the checkpoint's text."""
    sampled = ("--length", 60, "--seed", 7, "--start_text", "the cat")
    lite = run_lite(lite_python, "sample", "--tflite", exported, *sampled)
    full = run_process("sample", "--tflite", exported, *sampled)
    assert lite.returncode == 0 and full.returncode == 0, lite.stderr + full.stderr
    assert lite.stdout == full.stdout and len(lite.stdout.rstrip("\n")) == 60
    greedy = ("--length", 60, "--sample", 0, "--start_text", "she said")
    lite = run_lite(lite_python, "sample", "--tflite", exported, *greedy)
    checkpoint = run_process("sample", "--checkpoint", sentence_model, *greedy)
    assert lite.stdout == checkpoint.stdout, (lite.stdout, checkpoint.stdout)
    served = httpx.post(lite_server + "/v1/generate", json={"start_text": "she said", "num_new_chars": 52,
                                                            "temperature": 0}, timeout=60).json()
    assert "she said" + served["completions"][0] == lite.stdout.rstrip("\n")


@pytest.mark.parametrize("tool", ["train", "eval", "serve", "export"])
def test_a_tool_that_needs_tensorflow_says_so_in_one_line(lite_python, tool, sentence_model, small_corpus, tmp_path):
    _, h5, _ = small_corpus
    args = {"train": ["--input_h5", h5, "--checkpoint_name", tmp_path / "cv"],
            "eval": ["--checkpoint", sentence_model, "--input_h5", h5],
            "serve": ["--checkpoint", sentence_model],
            "export": ["--checkpoint", sentence_model, "--export_dir", tmp_path / "out"]}[tool]
    done = run_lite(lite_python, tool, *args)
    assert done.returncode == 1 and done.stdout == "", done.stderr
    (line,) = done.stderr.splitlines()
    assert line.startswith(f"{tool}: error: ") and "which this install lacks: pip install 'kerascharrnn[tf]'" in line
