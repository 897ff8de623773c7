"""bin/serve: an HTTP server speaking torch-rnn-server's API (for rnn-writer) and a JSON API."""

from __future__ import annotations

import logging
import os
import socket

from absl import flags

from kerascharrnn import artifacts
from kerascharrnn import checkpoint as ckpt
from kerascharrnn.cli import common
from kerascharrnn.config import ServeConfig
from kerascharrnn.errors import UserError

_DEFAULTS = ServeConfig()
flags.DEFINE_string("saved_model", "", "Exported SavedModel: a version directory, or a model directory (highest version).")
flags.DEFINE_string("checkpoint", "", "Or a training checkpoint (.keras, or its .json).")
flags.DEFINE_string("host", "127.0.0.1", "Address to bind; loopback unless told otherwise (0.0.0.0 = everywhere).")
flags.DEFINE_integer("port", 8080, "Port to listen on.", lower_bound=1, upper_bound=65535)
flags.DEFINE_integer("word_limit_short", _DEFAULTS.word_limit_short, "GET /generate: redraw completions with fewer words.")
flags.DEFINE_integer("word_limit_long", _DEFAULTS.word_limit_long, "GET /generate: redraw completions with more words.")
flags.DEFINE_integer("max_n", _DEFAULTS.max_n, "GET /generate: a larger n is clamped to this.")
flags.DEFINE_integer("lowercase", 1, "GET /generate: 1 = lower-case the start text (torch-rnn-server's reference"
                     " model was trained on lower-case text); 0 = keep it.", lower_bound=0, upper_bound=1)
flags.DEFINE_integer("max_start_text", _DEFAULTS.max_start_text, "Longest start text accepted, in characters.")
flags.DEFINE_integer("max_redraw_rounds", _DEFAULTS.max_redraw_rounds,
                     "GET /generate: batched redraw rounds before answering with the completions that passed.")
flags.DEFINE_integer("max_num_new_chars", _DEFAULTS.max_num_new_chars, "POST /v1/generate: cap on num_new_chars.")
flags.DEFINE_integer("max_num_samples", _DEFAULTS.max_num_samples, "POST /v1/generate: cap on num_samples.")
flags.DEFINE_integer("gpu", 0, "GPU index to use when TensorFlow sees one; -1 = CPU only.")
FLAGS = flags.FLAGS


def _config() -> ServeConfig:
    return ServeConfig(word_limit_short=FLAGS.word_limit_short, word_limit_long=FLAGS.word_limit_long,
                       max_n=FLAGS.max_n, lowercase=bool(FLAGS.lowercase), max_start_text=FLAGS.max_start_text,
                       max_redraw_rounds=FLAGS.max_redraw_rounds, max_num_new_chars=FLAGS.max_num_new_chars,
                       max_num_samples=FLAGS.max_num_samples).validate()


def _check_port_free(host: str, port: int) -> None:
    try:
        with socket.create_server((host, port)):
            pass
    except OSError as e:
        raise UserError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None


def main(argv):
    del argv
    config = _config()
    if bool(FLAGS.saved_model) == bool(FLAGS.checkpoint):
        raise UserError("give exactly one of --saved_model (exported directory) or --checkpoint (.keras)")
    if FLAGS.saved_model:
        kind, path = "saved_model", artifacts.resolve_saved_model(FLAGS.saved_model)
        vocab = artifacts.saved_model_vocab(path)
        name = os.path.basename(os.path.dirname(os.path.abspath(path)))
    else:
        kind, path = "checkpoint", ckpt.model_path_for(FLAGS.checkpoint)
        vocab = ckpt.read_vocab(path)
        name = artifacts.default_model_name(path)
    _check_port_free(FLAGS.host, FLAGS.port)

    common.quiet_tensorflow()
    import uvicorn

    from kerascharrnn import generate, serve, train

    train.configure_devices(FLAGS.gpu, None)
    with common.stderr_silenced():  # TensorFlow's C++ notes while loading and tracing
        engine = generate.open_engine(kind, path, vocab, jit_compile=False)  # batch sizes vary: no XLA
        generator = serve.BatchingGenerator(engine, config.max_batch_rows)
        generator.warm_up()
    app = serve.create_app(engine, config, model_name=name, generator=generator)
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    serve.log.addHandler(handler)  # absl owns the root logger (at ERROR); this log stands apart from it
    serve.log.setLevel(logging.INFO)
    serve.log.propagate = False
    print(f"Serving {path} on http://{FLAGS.host}:{FLAGS.port} (GET /generate, POST /v1/generate, /docs)",
          flush=True)
    uvicorn.run(app, host=FLAGS.host, port=FLAGS.port, log_level="info")


def run():
    common.run_main(main)
