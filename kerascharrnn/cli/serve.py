"""bin/serve: an HTTP server speaking torch-rnn-server's API (for rnn-writer) and a JSON API."""

from __future__ import annotations

import logging
import os
import socket

from absl import flags

from kerascharrnn import artifacts, resources
from kerascharrnn import checkpoint as ckpt
from kerascharrnn.cli import common
from kerascharrnn.config import ServeConfig
from kerascharrnn.errors import UserError

flags.DEFINE_string("saved_model", "", "Exported SavedModel: a version directory, or a model directory (highest version).")
flags.DEFINE_string("checkpoint", "", "Or a training checkpoint (.keras, or its .json),"
                    " or a torch-rnn .t7.")
flags.DEFINE_string("host", "127.0.0.1", "Address to bind; loopback unless told otherwise (0.0.0.0 = everywhere).")
flags.DEFINE_integer("port", 8080, "Port to listen on.", lower_bound=1, upper_bound=65535)
common.define_flags(ServeConfig)
common.define_gpu_flag()
FLAGS = flags.FLAGS


def _check_port_free(host: str, port: int) -> None:
    try:
        with socket.create_server((host, port)):
            pass
    except OSError as e:
        raise UserError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None


def main(argv):
    del argv
    config = common.config_from_flags(ServeConfig)
    # the largest request the caps allow must not exhaust the machine's memory
    resources.check_sampling_fits(config.max_num_samples, config.max_num_new_chars + config.max_start_text,
                                  flags=("--max_num_samples", "--max_num_new_chars (+ --max_start_text)"))
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

    from kerascharrnn import devices, engines, serve

    devices.configure(FLAGS.gpu, sampling=True)
    with common.stderr_silenced():  # TensorFlow's C++ notes while loading and tracing
        engine = engines.open_engine(kind, path, vocab, jit_compile=False)  # batch sizes vary: no XLA
        batcher = serve.BatchingSampler(engine, config.max_batch_rows)
        batcher.warm_up()
    app = serve.create_app(engine, config, model_name=name, batcher=batcher)
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    serve.log.addHandler(handler)  # absl owns the root logger (at ERROR); this log stands apart from it
    serve.log.setLevel(logging.INFO)
    serve.log.propagate = False
    print(f"Serving {path} on http://{FLAGS.host}:{FLAGS.port} (GET /generate, POST /v1/generate, /docs)",
          flush=True)
    uvicorn.run(app, host=FLAGS.host, port=FLAGS.port, log_level="info", http=serve.http_protocol_class(),
                h11_max_incomplete_event_size=serve.MAX_REQUEST_HEAD_BYTES)


def run():
    common.run_main(main)


if __name__ == "__main__":
    run()
