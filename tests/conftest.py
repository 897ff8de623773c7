"""Shared fixtures: a private KERAS_HOME seeded with tiny-shakespeare (never downloaded), a small
corpus, and one tiny trained model for the whole session.

Tests that need ../shared (tiny-shakespeare, the torch-rnn checkpoint) skip with a reason when it is
missing; the others run."""

import contextlib
import fcntl
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

import pytest

from kerascharrnn.config import ModelConfig, TrainConfig
from kerascharrnn.vocab import Vocabulary

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _stop_signals_live():
    """A suite started under nohup ignores SIGHUP, one started as a shell's background job SIGINT, and every
    process a test starts inherits that: the tests that stop a tool with these signals need them as a terminal
    has them (a tool keeps a signal its caller ignores: stopping.py)."""
    for signum, handler in ((signal.SIGHUP, signal.SIG_DFL), (signal.SIGINT, signal.default_int_handler)):
        if signal.getsignal(signum) == signal.SIG_IGN:
            signal.signal(signum, handler)


_stop_signals_live()


def _shared_dir():
    """../shared beside the checkout (as CI has it); for a local clone, beside the repo it came from.
    None if there is none."""
    candidates = [os.environ.get("KERASCHARRNN_SHARED", ""), os.path.join(os.path.dirname(REPO), "shared")]
    origin = subprocess.run(["git", "-C", REPO, "config", "remote.origin.url"], capture_output=True, text=True)
    if origin.returncode == 0 and os.path.isdir(origin.stdout.strip()):
        candidates.append(os.path.join(os.path.dirname(os.path.abspath(origin.stdout.strip())), "shared"))
    for candidate in candidates:
        if candidate and os.path.exists(os.path.join(candidate, "data", "tiny-shakespeare.txt")):
            return candidate
    return None


SHARED_DIR = _shared_dir()
_NO_SHARED = "needs ../shared/data beside the checkout (or $KERASCHARRNN_SHARED)"


def shared_file(relative: str) -> str:
    """The path of a file under ../shared; skips the calling test (with the reason) if it is missing."""
    path = os.path.join(SHARED_DIR, relative) if SHARED_DIR else None
    if not path or not os.path.exists(path):
        pytest.skip(f"{relative}: {_NO_SHARED}")
    return path

# Set before anything imports Keras, which reads KERAS_HOME once; tests never touch the user's cache.
_KERAS_HOME = tempfile.mkdtemp(prefix="kerascharrnn-keras-home-")
os.environ["KERAS_HOME"] = _KERAS_HOME
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def shakespeare_text() -> str:
    with open(shared_file("data/tiny-shakespeare.txt"), encoding="utf-8", newline="") as f:
        return f.read()


@pytest.fixture(scope="session")
def keras_home():
    """KERAS_HOME with tiny-shakespeare already in Keras's dataset cache, so get_file never downloads."""
    datasets = os.path.join(_KERAS_HOME, "datasets")
    os.makedirs(datasets, exist_ok=True)
    shutil.copyfile(shared_file("data/tiny-shakespeare.txt"), os.path.join(datasets, "tiny-shakespeare.txt"))
    return _KERAS_HOME


def made_once(tmp_path_factory, name: str, make) -> str:
    """The directory `name` that `make(directory)` fills once per test run: under pytest-xdist the first worker
    to ask makes it while the others wait on a file lock, then they all read it (xdist's own recipe for
    session fixtures). Its files are read, never changed, by the tests."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the run's directory, above every worker's own
    directory = root / name
    with open(root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (directory / "made").exists():
            shutil.rmtree(directory, ignore_errors=True)
            directory.mkdir()
            make(directory)
            (directory / "made").touch()
    return str(directory)


@pytest.fixture(scope="session")
def small_corpus(tmp_path_factory):
    """The first 40,000 characters of tiny-shakespeare, preprocessed: (txt, h5, json). Validation and test keep
    1,000 characters each (15 batches of the tests' 4 x 16), not torch-rnn's 10%: a training evaluates the
    validation split at every checkpoint, and the suite's many small trainings spent more steps there than on
    training."""
    from kerascharrnn.data.preprocess import preprocess

    def make(root):
        (root / "small.txt").write_text(shakespeare_text()[:40_000], encoding="utf-8")
        preprocess(str(root / "small.txt"), str(root / "small.h5"), str(root / "small.json"), val_frac=0.025,
                   test_frac=0.025, quiet=True)

    root = made_once(tmp_path_factory, "corpus", make)
    return tuple(os.path.join(root, name) for name in ("small.txt", "small.h5", "small.json"))


TINY_TRAIN_FLAGS = dict(batch_size=4, seq_length=16, max_epochs=1, max_iters=40, checkpoint_every=20,
                        print_every=0, seed=1, learning_rate=5e-3)


def train_in_process(config, model_config, **kwargs):
    """train_and_evaluate on CPU with the config's seed, quietly; returns the TrainResult."""
    from kerascharrnn import devices
    from kerascharrnn.data import batches
    from kerascharrnn.models.charrnn import CharRNN
    from kerascharrnn.training import loop

    vocab = Vocabulary.load(config.input_json)
    layouts = batches.layouts_for(batches.split_lengths(config.input_h5), config.batch_size, config.seq_length)
    devices.configure(-1, config.seed)
    charrnn = kwargs.pop("charrnn", None) or CharRNN.build(model_config, vocab, config.batch_size)
    return loop.train_and_evaluate(config, charrnn, layouts, log=kwargs.pop("log", lambda *_: None), **kwargs)


@pytest.fixture(scope="session")
def trained(small_corpus, tmp_path_factory):
    """One tiny LSTM trained for 40 iterations in-process (once per run); returns its TrainResult and paths."""
    from kerascharrnn.io import checkpoint as ckpt
    from kerascharrnn.training.loop import TrainResult

    _, h5, js = small_corpus
    vocab = Vocabulary.load(js)
    model_config = ModelConfig(vocab_size=vocab.size, rnn_size=32, wordvec_size=16, num_layers=2)

    def config_in(directory):
        return TrainConfig(input_h5=h5, input_json=js, checkpoint_name=os.path.join(directory, "checkpoint"),
                           **TINY_TRAIN_FLAGS)

    config = config_in(made_once(tmp_path_factory, "cv", lambda d: train_in_process(config_in(d), model_config)))
    prefix = config.checkpoint_name
    history = ckpt.read_record(prefix + "_40.json").history
    result = TrainResult(prefix + "_40.json", 40, history["train_loss_history"], history["val_loss_history"],
                         best_json=prefix + "_best.json")
    return {"result": result, "prefix": prefix, "h5": h5, "json": js, "vocab": vocab,
            "keras": prefix + "_40.keras", "config": config, "model_config": model_config}


def run_cli(tool, *args, env=None, input=None, cwd=None):
    """Calls bin/<tool>'s main() in this process, as the command line would (the tools keep no global
    state): returns a CompletedProcess with the exit code and the text it wrote on stdout and stderr.

    env: variables set for the call; input: its standard input (text); cwd: the directory it runs in."""
    import contextlib
    import importlib
    import io

    argv = [tool, *map(str, args)]
    module = importlib.import_module(f"kerascharrnn.cli.{tool}")
    out, err = io.StringIO(), io.StringIO()
    saved_env, saved_stdin, saved_cwd = dict(os.environ), sys.stdin, os.getcwd()
    os.environ.update(env or {})
    if input is not None:
        sys.stdin = io.TextIOWrapper(io.BytesIO(input.encode("utf-8")), encoding="utf-8")
    try:
        if cwd is not None:
            os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = module.main(argv)
    finally:
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)
        sys.stdin = saved_stdin
    return subprocess.CompletedProcess(argv, code, out.getvalue(), err.getvalue())


def run_process(tool, *args, env=None, input=None, timeout=300):
    """Runs bin/<tool> in a process of its own (where a process is the point: signals, kills, fault
    injection, a fresh interpreter); returns the CompletedProcess with text stdout/stderr."""
    full_env = dict(os.environ, PYTHONUNBUFFERED="1")
    full_env.update(env or {})
    return subprocess.run([sys.executable, os.path.join(REPO, "bin", tool), *map(str, args)],
                          capture_output=True, text=True, errors="backslashreplace", env=full_env, input=input,
                          timeout=timeout)


@pytest.fixture(scope="session", autouse=True)
def tensorflow_started():
    """TensorFlow started with its default thread pools before any test runs a tool in this process: a
    sampling tool would otherwise set one intra-op thread for the whole session (devices.configure)."""
    import tensorflow as tf

    tf.constant(0.0) + 1.0


# --- a model that writes short sentences, and bin/serve running it --------------------------------

WORDS = ["the", "cat", "sat", "on", "a", "mat", "she", "said", "zoë", "café", "ran", "to", "park", "dog", "big",
         "red", "it's", '"yes"', "5%", "+", "3", "and", "we", "go", "home", "I'm", "here"]


def sentence_corpus(size: int, rng: random.Random) -> str:
    """Short sentences (3-8 words, ending in . ! ?) over a vocabulary holding every character the
    replayed requests use: a tiny model learns to end sentences in a few hundred steps."""
    sentences = []
    while sum(len(s) + 1 for s in sentences) < size:
        words = [rng.choice(WORDS) for _ in range(rng.randint(3, 8))]
        sentences.append(" ".join(words) + rng.choice(".!?"))
    return " ".join(sentences)


@pytest.fixture(scope="session")
def sentence_model(tmp_path_factory):
    """A 1 x 64 LSTM that writes short sentences (made once per run): its .keras file."""
    from kerascharrnn.data.preprocess import preprocess
    from kerascharrnn.io import checkpoint as ckpt

    def make(root):
        (root / "s.txt").write_text(sentence_corpus(30_000, random.Random(0)), encoding="utf-8")
        preprocess(str(root / "s.txt"), str(root / "s.h5"), str(root / "s.json"), quiet=True)
        config = TrainConfig(input_h5=str(root / "s.h5"), input_json=str(root / "s.json"), batch_size=8,
                             seq_length=32, max_epochs=3, max_iters=300, checkpoint_every=300, print_every=0, seed=3,
                             learning_rate=1e-2, checkpoint_name=str(root / "cv" / "s"))
        vocab = Vocabulary.load(config.input_json)
        model_config = ModelConfig(vocab_size=vocab.size, rnn_size=64, wordvec_size=16, num_layers=1)
        train_in_process(config, model_config)

    root = made_once(tmp_path_factory, "sentences", make)
    return os.path.splitext(ckpt.find_latest(os.path.join(root, "cv", "s")))[0] + ".keras"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve_process(command, log_path, what="bin/serve"):
    """A bin/serve process (`command`, its output in `log_path`) on 127.0.0.1, once its /healthz answers; yields its
    base URL, and stops it after the block."""
    import httpx

    port = free_port()
    with open(log_path, "w") as log:
        process = subprocess.Popen([*command, "--port", str(port)], stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    try:
        while True:
            try:
                if httpx.get(base + "/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if process.poll() is not None or time.time() > deadline:
                pytest.fail(f"{what} did not come up:\n" + open(log_path).read()[-3000:])
            time.sleep(0.3)
        yield base
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture(scope="session")
def server(sentence_model, tmp_path_factory):
    """bin/serve on 127.0.0.1 (a free port) with the sentence model, for the whole session."""
    log_path = tmp_path_factory.mktemp("serve") / "serve.log"
    command = [sys.executable, os.path.join(REPO, "bin", "serve"), "--checkpoint", sentence_model, "--max_start_text",
               "500"]
    with serve_process(command, log_path) as base:
        yield {"base": base, "log": log_path}


@contextlib.contextmanager
def serving_in_thread(checkpoint: str, api_key=None, clock=None, engine=None, bound_to=None, **settings):
    """The app over `checkpoint` behind a real uvicorn on 127.0.0.1, in a thread of this process (no second
    TensorFlow start-up): for servers with other settings than the session's bin/serve (and `clock`, the batch
    worker's, for time limits; `engine`, one prepared by the test; `bound_to`, the address bin/serve would say it
    listens on). Yields the base URL and the app's log records."""
    import logging

    import uvicorn

    from kerascharrnn.config import ServeConfig
    from kerascharrnn.inference import engines
    from kerascharrnn.serving import app, batcher, http

    config = ServeConfig(**settings)
    engine = engine or engines.open_engine("checkpoint", checkpoint, jit_compile=False)
    worker = batcher.BatchingSampler(engine, config.max_batch_rows, config.max_waiting,
                                     **({"clock": clock} if clock else {}))
    application = app.create_app(engine, config, model_name="s", batcher=worker, api_key=api_key, bound_to=bound_to)
    port = free_port()
    server = uvicorn.Server(http.server_config(application, "127.0.0.1", port, config, log_level="error"))
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    log = logging.getLogger("kerascharrnn.serve")
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while not server.started:
        assert thread.is_alive() and time.time() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield base, records
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        log.removeHandler(handler)
