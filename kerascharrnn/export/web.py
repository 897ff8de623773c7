"""`bin/export --web DIR`: the writing page of bin/serve (serving/static, one code base) as a static folder that
runs the model in the writer's browser, with no server and no request leaving the page.

    DIR/index.html    the page (write.html, its files named relative to it, the runtime's scripts before its own)
    DIR/write.js      the page's code and style, as bin/serve serves them
    DIR/write.css
    DIR/runtime.js    export/runtime.js: the layers' step form and the sampler in plain JavaScript
    DIR/model.js      the model: KerasCharRNN.define({name, vocabulary, layers with base64 float32 weights})
    DIR/web.json      what was exported from where (and the mark that DIR may be replaced by --overwrite)

A page opened from file:// may run classic scripts beside it, but not fetch files, modules or WebAssembly: hence
the model as a script. The page's Content-Security-Policy forbids every connection (connect-src 'none'), so the
browser itself holds it to its promise that the text stays on the device.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from html import escape
from importlib import resources
from typing import TYPE_CHECKING, Dict

import kerascharrnn
from kerascharrnn.errors import UserError
from kerascharrnn.errors import setting as ref
from kerascharrnn.io import files
from kerascharrnn.vocab import Vocabulary

if TYPE_CHECKING:  # the target is checked before TensorFlow loads
    from kerascharrnn.models.charrnn import CharRNN

FORMAT = 1  # model.js's layout, which runtime.js checks
INFO_FILE = "web.json"
PAGE_FILES = ("write.js", "write.css")  # copied from serving/static as they are
SCRIPTS = ("runtime.js", "model.js")  # loaded before write.js, which finds KerasCharRNN defined
# no connection of any kind: the model runs here; style and scripts from the folder itself, and the runtime's
# WebAssembly kernel compiled from its own bytes ('wasm-unsafe-eval' allows that and no JavaScript eval)
POLICY = ("default-src 'none'; script-src 'self' 'wasm-unsafe-eval'; style-src 'self'; img-src 'self' data: blob:;"
          " connect-src 'none'; form-action 'none'; base-uri 'none'")


def _static(package: str, name: str) -> str:
    return resources.files(package).joinpath(name).read_text(encoding="utf-8")


def page_html(title: str) -> str:
    """write.html with its files named relative to the folder, the policy in a meta tag, the runtime's scripts."""
    html = _static("kerascharrnn.serving", "static/write.html")
    replacements = {
        '<link rel="stylesheet" href="/write/write.css">':
            f'<meta http-equiv="Content-Security-Policy" content="{POLICY}">\n'
            '<link rel="stylesheet" href="write.css">',
        '<script src="/write/write.js"></script>':
            "".join(f'<script src="{name}"></script>\n' for name in SCRIPTS) + '<script src="write.js"></script>',
        "<title>Write with kerascharrnn</title>": f"<title>Write with {escape(title)}</title>",
    }
    for old, new in replacements.items():
        if old not in html:  # write.html changed: this must follow it
            raise AssertionError(f"serving/static/write.html no longer has {old!r}")
        html = html.replace(old, new)
    return html


def _weights(form: Dict[str, object]) -> Dict[str, object]:
    """A layer's portable form with each array as {shape, data: base64 of little-endian float32}."""
    arrays = {name: {"shape": list(array.shape), "data": base64.b64encode(array.astype("<f4").tobytes()).decode()}
              for name, array in form["weights"].items()}
    return {**form, "weights": arrays}


def _vocabulary(vocab: Vocabulary) -> Dict[str, object]:
    return {"tokens": list(vocab.tokens), "encoding": "bytes" if vocab.is_bytes else vocab.encoding}


def model_spec(charrnn: CharRNN, name: str) -> Dict[str, object]:
    """What model.js defines: the name, the vocabulary and each layer's portable form, weights in base64."""
    from kerascharrnn.models import stack

    return {"format": FORMAT, "name": name, "vocab": _vocabulary(charrnn.vocab),
            "layers": [_weights(form) for form in stack.portable_layers(charrnn.model)]}


def model_script(spec: Dict[str, object]) -> str:
    # ASCII only: the script is read right whatever charset a static host sends with it
    return f"KerasCharRNN.define({json.dumps(spec, ensure_ascii=True, separators=(',', ':'))});\n"


def is_web_export(directory: str) -> bool:
    try:
        with open(os.path.join(directory, INFO_FILE), encoding="utf-8") as f:
            return json.load(f).get("format") == "kerascharrnn_web"
    except (OSError, ValueError, AttributeError):
        return False


def check_target(directory: str, overwrite: bool) -> None:
    """Before any work: DIR must be new, or a folder this exporter wrote and --overwrite given (a directory of
    anything else is never replaced, --overwrite or not)."""
    if not os.path.lexists(directory):
        return
    if not os.path.isdir(directory) or not is_web_export(directory):
        if os.path.isdir(directory) and not os.listdir(directory):
            raise UserError(f"{directory} exists (empty): remove it or choose another {ref('web')} folder")
        raise UserError(f"{directory} exists and is not a folder written by {ref('web')}: choose another")
    if not overwrite:
        raise UserError(f"{directory} already exists; pass {ref('overwrite')} to replace it")


def export_web(charrnn: CharRNN, directory: str, *, name: str, source: str, overwrite: bool = False) -> dict:
    """Writes the folder (atomically: complete or not at all); returns its info (web.json)."""
    check_target(directory, overwrite)
    spec = model_spec(charrnn, name)
    script = model_script(spec)
    info = {
        "format": "kerascharrnn_web",
        "model_format": FORMAT,
        "kerascharrnn_version": kerascharrnn.__version__,
        "name": name,
        "source_checkpoint": os.path.abspath(source),
        "layers": [layer["kind"] for layer in spec["layers"]],
        "parameters": charrnn.count_params(),
        "vocab_size": charrnn.vocab.size,
        "model_sha256": hashlib.sha256(script.encode()).hexdigest(),
    }
    texts = {"index.html": page_html(name), "runtime.js": _static("kerascharrnn.export", "runtime.js"),
             "model.js": script, INFO_FILE: json.dumps(info, indent=1) + "\n",
             **{page: _static("kerascharrnn.serving", f"static/{page}") for page in PAGE_FILES}}
    with files.atomic_dir(directory, overwrite=overwrite) as tmp:
        for file_name, text in texts.items():
            with open(os.path.join(tmp, file_name), "w", encoding="utf-8", newline="\n") as f:
                f.write(text)
            os.chmod(os.path.join(tmp, file_name), files.target_mode(os.path.join(directory, file_name)))
    info["bytes"] = {file_name: len(text.encode()) for file_name, text in texts.items()}
    return info

