"""`bin/export --web DIR`: the writing page as a static folder whose model runs in the browser. Debian's Chromium,
headless, opens DIR/index.html from file:// with every request outside the folder blocked (and recorded): the
runtime's argmax text equals `bin/sample --sample 0`'s for every layer kind and a byte vocabulary; its filters
equal inference/logits.py's; a writer types, presses Tab, a suggestion appears, Tab takes it."""

import http.server
import json
import os
import threading

import numpy as np
import pytest
from conftest import run_cli, shared_file
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait
from test_page import WAIT, chromium_path

from kerascharrnn.config import ModelConfig
from kerascharrnn.vocab import Vocabulary

pytestmark = pytest.mark.slow

TEXT = "Thou art a villain, sir; café “naïve” — 🙂 ok?\n\tZEAL 42 jumps (over) the lazy dog's back.\n"
PROMPT = "Thou art "  # every character in TEXT's vocabulary
BLOCKED = ["http://*", "https://*", "ws://*", "wss://*", "ftp://*"]


def random_model(path, model_config: ModelConfig, vocab: Vocabulary, seed: int) -> str:
    """A model whose every weight is drawn at random (so that copy attention's output kernel and the batch
    normalisation's statistics, which start as identities, count) and saved as bin/train saves one."""
    from kerascharrnn.models.charrnn import CharRNN

    charrnn = CharRNN.build(model_config, vocab, batch_size=1)
    rng = np.random.default_rng(seed)
    weights = []
    for variable in charrnn.model.weights:
        value = rng.normal(0, 0.5, variable.shape)
        if "moving_variance" in variable.path:
            value = rng.uniform(0.5, 2.0, variable.shape)
        weights.append(value.astype(np.float32))
    charrnn.model.set_weights(weights)
    charrnn.save(str(path))
    return str(path)


KINDS = {
    "lstm": dict(model_type="lstm", num_layers=2),
    "gru": dict(model_type="gru", num_layers=2),
    "rnn": dict(model_type="rnn", num_layers=2),
    "lstm_batchnorm_dropout": dict(model_type="lstm", num_layers=2, batchnorm=True, dropout=0.2,
                                   embedding_dropout=0.1),
    "gru_copy_attention": dict(model_type="gru", num_layers=1, copy_memory=8, copy_heads=2, copy_head_size=4),
}


def text_vocab() -> Vocabulary:
    return Vocabulary(tuple(dict.fromkeys(TEXT)))


def byte_vocab() -> Vocabulary:
    return Vocabulary(tuple(dict.fromkeys(TEXT.encode("utf-8"))), "bytes")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """{name: (checkpoint, exported folder)} for each layer kind and a byte-level vocabulary."""
    root = tmp_path_factory.mktemp("web")
    made = {}
    for i, (name, settings) in enumerate([*KINDS.items(), ("lstm_bytes", KINDS["lstm"])]):
        vocab = byte_vocab() if name.endswith("bytes") else text_vocab()
        config = ModelConfig(vocab_size=vocab.size, rnn_size=24, wordvec_size=8, **settings)
        checkpoint = random_model(root / f"{name}.keras", config, vocab, seed=i)
        folder = root / name
        result = run_cli("export", "--checkpoint", checkpoint, "--web", folder)
        assert result.returncode == 0, result.stderr
        made[name] = (checkpoint, str(folder))
    return made


@pytest.fixture(scope="module")
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = chromium_path("chromium")
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1200,900",
                     "--disable-extensions", "--no-first-run"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(chromium_path("chromedriver")))
    driver.execute_cdp_cmd("Network.enable", {})
    driver.execute_cdp_cmd("Network.setBlockedURLs", {"urls": BLOCKED})
    yield driver
    driver.quit()


def requested(driver) -> list:
    """Every URL the browser asked for since the last call (the performance log's Network events)."""
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    return urls


def open_folder(driver, folder: str) -> None:
    driver.get("file://" + os.path.join(folder, "index.html"))
    driver.execute_script("localStorage.clear()")
    driver.get("file://" + os.path.join(folder, "index.html"))
    WebDriverWait(driver, WAIT).until(lambda d: d.find_element(By.ID, "model").text.startswith("with "))


def browser_text(driver, options: dict, prompt: str = PROMPT, kernel: str = "wasm") -> list:
    """The runtime's texts; `kernel`: its WebAssembly products (what a page runs by default) or plain JavaScript."""
    return driver.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "KerasCharRNN.kernel = arguments[2];"
        "KerasCharRNN.complete(arguments[0], arguments[1]).then(done, (e) => done('error: ' + e.message));",
        prompt, options, kernel)


@pytest.mark.parametrize("name", [*KINDS, "lstm_bytes"])
def test_argmax_text_in_the_browser_is_bin_samples(models, browser, name):
    checkpoint, folder = models[name]
    open_folder(browser, folder)
    length = 120
    sampled = run_cli("sample", "--checkpoint", checkpoint, "--sample", "0", "--start_text", PROMPT,
                      "--length", len(PROMPT.encode() if name.endswith("bytes") else PROMPT) + length)
    assert sampled.returncode == 0, sampled.stderr
    assert sampled.stdout.endswith("\n")
    expected = sampled.stdout[len(PROMPT):-1]  # bin/sample ends the text with a newline of its own
    assert browser.execute_script("return KerasCharRNN.load().kernel") == "wasm"  # the page's own choice
    for kernel in ("wasm", "js"):
        assert browser_text(browser, {"max_tokens": length, "temperature": 0, "n": 2}, kernel=kernel) == \
            [expected, expected], kernel
    assert all(url.startswith("file://") for url in requested(browser))


def test_a_torch_rnn_checkpoint_writes_in_the_browser_what_it_writes_here(browser, tmp_path):
    """A real model (torch-rnn's own 2 x 128 on Shakespeare, a .t7): its argmax text, 300 characters of it."""
    t7 = shared_file("data/torch-rnn-shakespeare-2x128.t7")
    assert run_cli("export", "--checkpoint", t7, "--web", tmp_path / "t7").returncode == 0
    open_folder(browser, str(tmp_path / "t7"))
    sampled = run_cli("sample", "--checkpoint", t7, "--sample", "0", "--start_text", "ROMEO:", "--length", 306)
    assert browser_text(browser, {"max_tokens": 300, "temperature": 0}, prompt="ROMEO:") == \
        [sampled.stdout[len("ROMEO:"):-1]]


def test_seeded_draws_repeat_and_the_filters_narrow_to_the_argmax(models, browser):
    open_folder(browser, models["lstm"][1])
    argmax = browser_text(browser, {"max_tokens": 80, "temperature": 0})
    drawn = browser_text(browser, {"max_tokens": 80, "temperature": 1, "seed": 7, "n": 3})
    assert drawn == browser_text(browser, {"max_tokens": 80, "temperature": 1, "seed": 7, "n": 3})
    assert drawn != browser_text(browser, {"max_tokens": 80, "temperature": 1, "seed": 8, "n": 3})
    assert len(set(drawn)) == 3 and argmax[0] not in drawn  # rows draw apart; a random model is no argmax
    assert browser_text(browser, {"max_tokens": 80, "temperature": 1, "top_k": 1, "seed": 7}) == argmax
    assert browser_text(browser, {"max_tokens": 80, "temperature": 1.5, "top_p": 1e-9, "seed": 7}) == argmax
    assert browser_text(browser, {"max_tokens": 80, "temperature": 1e-7, "seed": 7}) == argmax


@pytest.mark.parametrize("settings", [dict(temperature=0.7), dict(temperature=1.3, top_k=5),
                                      dict(temperature=0.9, top_p=0.8), dict(temperature=1.0, top_k=3, top_p=0.5),
                                      dict(temperature=2.0, top_k=1000, top_p=0.999)])
def test_the_filters_are_the_servers(models, browser, settings):
    from kerascharrnn.inference.logits import Filters, Knobs, truncated_np
    from kerascharrnn.sampling_settings import SamplingSettings

    open_folder(browser, models["lstm"][1])
    logits = np.random.default_rng(len(str(settings))).normal(0, 3, (4, 40)).astype(np.float32)
    logits[0, :5] = logits[0, 5]  # ties at the cut
    row = SamplingSettings(**settings)
    filters = Filters.for_rows([row])
    knobs = Knobs.of([row] * len(logits), [0] * len(logits), logits.shape[1])
    expected = truncated_np((logits / np.float32(row.temperature)).astype(np.float32), knobs, filters)
    got = browser.execute_script("return arguments[0].map((row) => KerasCharRNN.filtered(row, arguments[1])"
                                 ".map((v) => v === -Infinity ? null : v))", logits.tolist(), settings)
    got = np.array([[-np.inf if v is None else v for v in row] for row in got], np.float32)
    np.testing.assert_array_equal(np.isinf(got), np.isinf(expected))
    np.testing.assert_allclose(got[~np.isinf(got)], expected[~np.isinf(expected)], rtol=1e-6)


def test_a_writer_gets_a_suggestion_from_disk_with_the_network_blocked(models, browser):
    """Type, Tab, a suggestion appears, Tab takes it; nothing is asked of any server, and a connection the
    page's own script tries is refused by its policy (a local server sees nothing)."""
    hits = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            hits.append(self.path)
            self.send_response(200)
            self.send_header("Access-Control-Allow-Origin", "*")
            self.end_headers()

        def log_message(self, *args):
            pass

    listener = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=listener.serve_forever, daemon=True).start()
    try:
        folder = models["gru_copy_attention"][1]
        open_folder(browser, folder)
        requested(browser)
        editor = browser.find_element(By.ID, "editor")
        editor.click()
        ActionChains(browser).send_keys("Thou art a villain").perform()
        ActionChains(browser).send_keys(Keys.TAB).perform()
        ghost = lambda: browser.execute_script(  # noqa: E731
            "const g = document.querySelector('#editor .ghost'); return g ? g.textContent : null")
        WebDriverWait(browser, WAIT).until(lambda d: ghost())
        WebDriverWait(browser, WAIT).until(lambda d: "coming" not in d.find_element(By.ID, "status").text)
        suggestion = ghost()
        assert browser.find_element(By.ID, "status").text == "Suggestion 1 of 3"
        assert len(suggestion) > 0
        ActionChains(browser).send_keys(Keys.TAB).perform()
        WebDriverWait(browser, WAIT).until(lambda d: not ghost())
        assert browser.execute_script("return document.getElementById('editor').textContent") == \
            "Thou art a villain" + suggestion
        assert browser.find_element(By.ID, "key").is_displayed() is False  # no server, no key
        # the page's own policy refuses it, with the browser's blocking lifted
        browser.execute_cdp_cmd("Network.setBlockedURLs", {"urls": []})
        try:
            outcome = browser.execute_async_script(
                "const done = arguments[arguments.length - 1];"
                "fetch(arguments[0]).then(() => done('connected'), (e) => done('refused'));",
                f"http://127.0.0.1:{listener.server_address[1]}/leak")
        finally:
            browser.execute_cdp_cmd("Network.setBlockedURLs", {"urls": BLOCKED})
        assert outcome == "refused" and hits == []
        assert all(url.startswith("file://") for url in requested(browser))
    finally:
        listener.shutdown()


def test_the_folder_works_on_a_static_host_too(models, browser):
    """Put on any web server (here Python's, on 127.0.0.1), the page writes what it writes from disk."""
    checkpoint, folder = models["gru_copy_attention"]
    open_folder(browser, folder)
    from_disk = browser_text(browser, {"max_tokens": 60, "temperature": 0.8, "seed": 3})

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=folder, **kwargs)

        def log_message(self, *args):
            pass

    host = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=host.serve_forever, daemon=True).start()
    browser.execute_cdp_cmd("Network.setBlockedURLs", {"urls": []})
    try:
        browser.get(f"http://127.0.0.1:{host.server_address[1]}/index.html")
        WebDriverWait(browser, WAIT).until(lambda d: d.find_element(By.ID, "model").text.startswith("with "))
        assert browser_text(browser, {"max_tokens": 60, "temperature": 0.8, "seed": 3}) == from_disk
    finally:
        browser.execute_cdp_cmd("Network.setBlockedURLs", {"urls": BLOCKED})
        host.shutdown()


def test_export_web_refuses_what_it_must_not_touch(models, tmp_path):
    checkpoint, folder = models["lstm"]
    stranger = tmp_path / "mine"
    stranger.mkdir()
    (stranger / "notes.txt").write_text("keep me")
    for args, message in [(["--web", stranger], "is not a folder written by"),
                          (["--web", stranger, "--overwrite"], "is not a folder written by"),
                          (["--web", folder], "already exists; pass --overwrite"),
                          (["--web", tmp_path / "new", "--tflite"], "--tflite is for the SavedModel")]:
        result = run_cli("export", "--checkpoint", checkpoint, *args)
        assert result.returncode != 0 and message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert (stranger / "notes.txt").read_text() == "keep me" and not (tmp_path / "new").exists()
    before = os.path.getmtime(os.path.join(folder, "model.js"))
    result = run_cli("export", "--checkpoint", checkpoint, "--web", folder, "--overwrite")
    assert result.returncode == 0 and os.path.getmtime(os.path.join(folder, "model.js")) >= before
    assert sorted(os.listdir(folder)) == ["index.html", "model.js", "runtime.js", "web.json", "write.css", "write.js"]


@pytest.mark.parametrize("layer, problem", [
    ("GRU(8, reset_after=False, return_sequences=True)", "a GRU with reset_after=False has no portable form"),
    ("SimpleRNN(8, activation='relu', return_sequences=True)", "activation 'relu' has no portable form"),
])
def test_a_layer_the_runtime_does_not_implement_is_refused_in_one_line(layer, problem):
    import keras

    from kerascharrnn.errors import UserError
    from kerascharrnn.models import stack

    model = keras.Sequential([keras.Input((None,), dtype="int32"), keras.layers.Embedding(10, 4),
                              eval(layer, {**vars(keras.layers)}), keras.layers.Dense(10)])
    with pytest.raises(UserError, match=problem):
        stack.portable_layers(model)


def test_the_wheel_carries_the_runtime_and_the_page(tmp_path):
    """A pip install on a machine with no npm exports a working folder: every file it writes is in the wheel."""
    import shutil
    import subprocess
    import sys
    import zipfile

    from conftest import REPO

    source = tmp_path / "source"  # a copy: a build in the checkout would leave (and reuse) its build/ there
    shutil.copytree(os.path.join(REPO, "kerascharrnn"), source / "kerascharrnn",
                    ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy(os.path.join(REPO, name), source / name)
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                            str(tmp_path), str(source)], capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stderr
    import kerascharrnn

    [wheel] = tmp_path.glob("kerascharrnn-*.whl")
    assert wheel.name.startswith(f"kerascharrnn-{kerascharrnn.__version__}-")  # setup.cfg reads the one version
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"kerascharrnn/export/runtime.js", "kerascharrnn/export/web.py", "kerascharrnn/serving/static/write.js",
            "kerascharrnn/serving/static/write.html", "kerascharrnn/serving/static/write.css"} <= names
