"""Shared fixtures: a private KERAS_HOME seeded with tiny-shakespeare (never downloaded), a small
corpus, and one tiny trained model for the whole session."""

import os
import shutil
import subprocess
import sys
import tempfile

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _shared_dir() -> str:
    """../shared beside the checkout (as CI has it); for a local clone, beside the repo it came from."""
    candidates = [os.environ.get("KERASCHARRNN_SHARED", ""), os.path.join(os.path.dirname(REPO), "shared")]
    origin = subprocess.run(["git", "-C", REPO, "config", "remote.origin.url"], capture_output=True, text=True)
    if origin.returncode == 0 and os.path.isdir(origin.stdout.strip()):
        candidates.append(os.path.join(os.path.dirname(os.path.abspath(origin.stdout.strip())), "shared"))
    for candidate in candidates:
        if candidate and os.path.exists(os.path.join(candidate, "data", "tiny-shakespeare.txt")):
            return candidate
    raise RuntimeError("tests need ../shared/data/tiny-shakespeare.txt beside the checkout (or $KERASCHARRNN_SHARED)")


SHARED_SHAKESPEARE = os.path.join(_shared_dir(), "data", "tiny-shakespeare.txt")

# Set before anything imports Keras, which reads KERAS_HOME once; tests never touch the user's cache.
_KERAS_HOME = tempfile.mkdtemp(prefix="kerascharrnn-keras-home-")
os.environ["KERAS_HOME"] = _KERAS_HOME
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def shakespeare_text() -> str:
    with open(SHARED_SHAKESPEARE, encoding="utf-8", newline="") as f:
        return f.read()


@pytest.fixture(scope="session")
def keras_home():
    """KERAS_HOME with tiny-shakespeare already in Keras's dataset cache, so get_file never downloads."""
    datasets = os.path.join(_KERAS_HOME, "datasets")
    os.makedirs(datasets, exist_ok=True)
    shutil.copyfile(SHARED_SHAKESPEARE, os.path.join(datasets, "tiny-shakespeare.txt"))
    return _KERAS_HOME


@pytest.fixture(scope="session")
def small_corpus(tmp_path_factory):
    """The first 40,000 characters of tiny-shakespeare, preprocessed: (txt, h5, json)."""
    from kerascharrnn.preprocess import preprocess

    root = tmp_path_factory.mktemp("corpus")
    txt = root / "small.txt"
    txt.write_text(shakespeare_text()[:40_000], encoding="utf-8")
    preprocess(str(txt), str(root / "small.h5"), str(root / "small.json"), quiet=True)
    return str(txt), str(root / "small.h5"), str(root / "small.json")


TINY_TRAIN_FLAGS = dict(batch_size=4, seq_length=16, max_epochs=1, max_iters=40, checkpoint_every=20,
                        print_every=0, seed=1, learning_rate=5e-3)


@pytest.fixture(scope="session")
def trained(small_corpus, tmp_path_factory):
    """One tiny LSTM trained for 40 iterations in-process; returns the TrainResult and paths."""
    from kerascharrnn import data, train
    from kerascharrnn.config import ModelConfig, TrainConfig
    from kerascharrnn.vocab import Vocabulary

    _, h5, js = small_corpus
    prefix = str(tmp_path_factory.mktemp("cv") / "checkpoint")
    config = TrainConfig(input_h5=h5, input_json=js, checkpoint_name=prefix, **TINY_TRAIN_FLAGS)
    vocab = Vocabulary.load(js)
    model_config = ModelConfig(vocab_size=vocab.size, rnn_size=32, wordvec_size=16, num_layers=2)
    layouts = data.layouts_for(data.split_lengths(h5), config.batch_size, config.seq_length)
    train.configure_devices(-1, config.seed)
    result = train.train_and_evaluate(config, model_config, vocab, layouts, log=lambda *_: None)
    return {"result": result, "prefix": prefix, "h5": h5, "json": js, "vocab": vocab,
            "keras": prefix + "_40.keras", "config": config, "model_config": model_config}


def run_cli(tool, *args, env=None, input=None, timeout=300):
    """Runs bin/<tool> in a subprocess; returns CompletedProcess with text stdout/stderr."""
    full_env = dict(os.environ, PYTHONUNBUFFERED="1")
    full_env.update(env or {})
    return subprocess.run([sys.executable, os.path.join(REPO, "bin", tool), *map(str, args)],
                          capture_output=True, text=True, env=full_env, input=input, timeout=timeout)
