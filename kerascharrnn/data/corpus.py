"""Built-in corpora: the Python standard library's own sources (default, offline) and tiny-shakespeare.

Each is preprocessed once into a cache directory under KERAS_HOME (as Keras caches datasets).
"""

from __future__ import annotations

import glob
import hashlib
import os
import sys
import sysconfig
from typing import Tuple

from kerascharrnn import upstream
from kerascharrnn.data import preprocess
from kerascharrnn.errors import UserError
from kerascharrnn.errors import setting as ref
from kerascharrnn.io import files

CORPORA = ("stdlib", "tiny_shakespeare")
STDLIB_CORPUS_BYTES = 3_000_000  # "a few MB": one epoch of the default model takes minutes on 2 cores
TINY_SHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
TINY_SHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
TINY_SHAKESPEARE_FILE = "tiny-shakespeare.txt"


def keras_home() -> str:
    """Keras's cache root: $KERAS_HOME, else ~/.keras (or /tmp/.keras where home is not writable)."""
    if "KERAS_HOME" in os.environ:
        return os.environ["KERAS_HOME"]
    home = os.path.expanduser("~")
    return os.path.join(home if os.access(home, os.W_OK) else "/tmp", ".keras")


def cache_dir() -> str:
    return os.path.join(keras_home(), "datasets", "kerascharrnn")


def stdlib_sources(limit_bytes: int = STDLIB_CORPUS_BYTES) -> list:
    """A deterministic selection of the standard library's top-level .py files: sorted by name,
    taken until `limit_bytes`. It differs between Python builds, never within one."""
    chosen, size = [], 0
    for path in sorted(glob.glob(os.path.join(sysconfig.get_paths()["stdlib"], "*.py"))):
        if size >= limit_bytes:
            break
        chosen.append(path)
        size += os.path.getsize(path)
    if not chosen:
        raise UserError("could not find the Python standard library's sources for the default corpus;"
                        f" pass {ref('input_h5')} / {ref('input_json')} or {ref('corpus')} tiny_shakespeare")
    return chosen


def _prepared(name: str, text_path: str) -> Tuple[str, str]:
    h5_path = os.path.join(cache_dir(), name + ".h5")
    json_path = os.path.join(cache_dir(), name + ".json")
    if not (os.path.exists(h5_path) and os.path.exists(json_path)):
        preprocess.preprocess(text_path, h5_path, json_path, quiet=True)
    return h5_path, json_path


def stdlib_corpus() -> Tuple[str, str]:
    """(h5, json) of the default corpus, built on first use."""
    text_path = stdlib_text_path()
    return _prepared(os.path.splitext(os.path.basename(text_path))[0], text_path)


def stdlib_text_path() -> str:
    """The default corpus's text: the selected standard-library sources, concatenated once into the cache."""
    sources = stdlib_sources()
    digest = hashlib.sha256("\n".join(f"{os.path.basename(p)}:{os.path.getsize(p)}" for p in sources).encode())
    name = f"stdlib-py{sys.version_info.major}{sys.version_info.minor}-{digest.hexdigest()[:10]}"
    text_path = os.path.join(cache_dir(), name + ".txt")
    if not os.path.exists(text_path):
        with files.atomic_path(text_path) as tmp:
            with open(tmp, "wb") as out:
                for path in sources:
                    with open(path, "rb") as f:
                        raw = f.read()
                    try:
                        raw.decode("utf-8")
                    except UnicodeDecodeError:
                        continue  # keep the corpus valid UTF-8
                    out.write(raw.replace(b"\r\n", b"\n").rstrip(b"\n") + b"\n\n")
    return text_path


def tiny_shakespeare_text() -> str:
    """The classic corpus, downloaded once by keras.utils.get_file (hash-checked) into KERAS_HOME."""
    try:
        return upstream.get_file(TINY_SHAKESPEARE_FILE, TINY_SHAKESPEARE_URL, TINY_SHAKESPEARE_SHA256,
                                 cache_dir=keras_home(), cache_subdir="datasets")
    except (OSError, ValueError) as e:  # no network, an HTTP error, a file that is not the corpus
        raise UserError(f"could not fetch tiny-shakespeare from {TINY_SHAKESPEARE_URL}: {e}") from None


def tiny_shakespeare() -> Tuple[str, str]:
    return _prepared("tiny_shakespeare", tiny_shakespeare_text())


def corpus_files(name: str) -> Tuple[str, str]:
    if name == "stdlib":
        return stdlib_corpus()
    if name == "tiny_shakespeare":
        return tiny_shakespeare()
    raise UserError(f"unknown {ref('corpus')} {name!r}; choose one of {', '.join(CORPORA)}")
