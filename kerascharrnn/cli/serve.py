"""bin/serve: an HTTP server for writers' tools: torch-rnn-server's API (rnn-writer), the APIs of the local model
servers writing frontends are built for (OpenAI-compatible, Ollama, KoboldCpp, llama.cpp), a writing page at
/write, and a JSON API."""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
import sys
from typing import List, Optional, Sequence

from absl import flags

from kerascharrnn import resources
from kerascharrnn.cli import common
from kerascharrnn.config import ServeConfig
from kerascharrnn.errors import UserError
from kerascharrnn.io import artifacts, files
from kerascharrnn.io import checkpoint as ckpt
from kerascharrnn.serving import cors

SOURCES = ("saved_model", "checkpoint", "tflite")


def define_flags(flag_values: flags.FlagValues) -> None:
    options = dict(flag_values=flag_values)
    flags.DEFINE_string("saved_model", "", "Exported SavedModel: a version directory, or a model directory (highest"
                        " version).", **options)
    flags.DEFINE_string("checkpoint", "", "Or a training checkpoint (.keras, or its .json), or a torch-rnn .t7.",
                        **options)
    flags.DEFINE_string("tflite", "", "Or an exported model.tflite (its vocab.json beside it), or an export's directory"
                        " holding one (the highest version), run by LiteRT: what the lite install (no TensorFlow)"
                        " serves.", **options)
    flags.DEFINE_string("host", "127.0.0.1", "Address to bind; loopback unless told otherwise (0.0.0.0 = everywhere).",
                        **options)
    flags.DEFINE_integer("port", 8080, "Port to listen on.", lower_bound=1, upper_bound=65535, **options)
    flags.DEFINE_string("api_key", "", "Require `Authorization: Bearer KEY` from every client (all but GET /healthz,"
                        " rnn-writer's GET / and the writing page's files). Empty: no key.", **options)
    flags.DEFINE_string("api_key_file", "", "Or read the key from this file (its first line), so that it is not in"
                        " the process list.", **options)
    common.define_flags(flag_values, ServeConfig)
    common.define_gpu_flag(flag_values)


def _check_port_free(host: str, port: int) -> None:
    try:
        with socket.create_server((host, port)):
            pass
    except OSError as e:
        raise UserError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None


def _api_key(flag_values: flags.FlagValues) -> str:
    if flag_values.api_key and flag_values.api_key_file:
        raise UserError("give --api_key or --api_key_file, not both")
    if not flag_values.api_key_file:
        return flag_values.api_key
    files.require_file(flag_values.api_key_file, "API key file")
    try:
        with open(flag_values.api_key_file, encoding="utf-8") as f:
            key = f.readline().strip()
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"--api_key_file {flag_values.api_key_file}: cannot be read ({e})") from None
    if not key:
        raise UserError(f"--api_key_file {flag_values.api_key_file}: its first line is empty")
    return key


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def run(flag_values: flags.FlagValues, argv: List[str]) -> None:
    config = common.config_from_flags(flag_values, ServeConfig)
    api_key = _api_key(flag_values)
    pages = cors.OriginPolicy.parse(config.cors_origins, keyed=bool(api_key))
    # the largest request the caps allow must not exhaust the machine's memory
    resources.check_sampling_fits(config.max_num_samples, config.max_num_new_chars + config.max_start_text,
                                  flags=("--max_num_samples", "--max_num_new_chars (+ --max_start_text)"))
    given = [source for source in SOURCES if flag_values[source].value]
    if len(given) != 1:
        raise UserError("give exactly one of --saved_model (exported directory), --checkpoint (.keras) or --tflite"
                        " (exported model.tflite)")
    kind = given[0]
    common.require_engine(kind)
    if kind == "saved_model":
        path = artifacts.resolve_saved_model(flag_values.saved_model)
        vocab = artifacts.saved_model_vocab(path)
        name = os.path.basename(os.path.dirname(os.path.abspath(path)))
        model_config = artifacts.saved_model_config(path)
    elif kind == "checkpoint":
        path = ckpt.model_path_for(flag_values.checkpoint)
        vocab = ckpt.read_vocab(path)
        name = artifacts.default_model_name(path)
        model_config = ckpt.stored_model_config(path)
    else:
        path = artifacts.resolve_tflite(flag_values.tflite)
        vocab = artifacts.tflite_vocab(path)
        name = artifacts.tflite_model_name(path)
        model_config = artifacts.tflite_model_config(path)
    host, port = flag_values.host, flag_values.port
    _check_port_free(host, port)
    if not api_key and not _loopback(host):
        print(f"serve: warning: listening on {host} without --api_key: anyone who can reach this port can use the"
              " model (and its CPU); give --api_key or --api_key_file", file=sys.stderr, flush=True)

    common.load_framework(kind, flag_values.gpu)
    import uvicorn

    from kerascharrnn.inference import engines
    from kerascharrnn.serving import app as serving_app
    from kerascharrnn.serving import batcher, context, http

    with common.stderr_silenced():  # TensorFlow's C++ notes while loading and tracing; LiteRT's delegate line
        engine = engines.open_engine(kind, path, vocab, jit_compile=False)  # batch sizes vary: no XLA
        sampler = batcher.BatchingSampler(engine, config.max_batch_rows, config.max_waiting)
        sampler.warm_up()
    parameters = resources.parameter_count(model_config) if model_config else 0
    application = serving_app.create_app(engine, config, model_name=name, batcher=sampler, api_key=api_key or None,
                                         parameters=parameters, bound_to=host)
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    context.log.addHandler(handler)  # absl owns the root logger (at ERROR); this log stands apart from it
    context.log.setLevel(logging.INFO)
    context.log.propagate = False
    print(f"Serving {path} as {name} on http://{host}:{port}: write at /write; APIs for rnn-writer (GET /generate),"
          " OpenAI (/v1/completions, /v1/chat/completions), Ollama (/api/generate, /api/chat), KoboldCpp"
          " (/api/v1/generate), llama.cpp (/completion), /v1/generate", flush=True)
    print(f"Web pages that may use it: {pages.describe()} (--cors_origins)", flush=True)
    uvicorn.Server(http.server_config(application, host, port, config)).run()


def main(argv: Optional[Sequence[str]] = None) -> int:
    return common.main(argv, define_flags, run, __doc__)


if __name__ == "__main__":
    sys.exit(main())
