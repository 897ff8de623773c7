"""bin/serve: an HTTP server speaking torch-rnn-server's API (for rnn-writer) and a JSON API."""

from __future__ import annotations

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
from kerascharrnn.io import artifacts
from kerascharrnn.io import checkpoint as ckpt


def define_flags(flag_values: flags.FlagValues) -> None:
    options = dict(flag_values=flag_values)
    flags.DEFINE_string("saved_model", "", "Exported SavedModel: a version directory, or a model directory (highest"
                        " version).", **options)
    flags.DEFINE_string("checkpoint", "", "Or a training checkpoint (.keras, or its .json), or a torch-rnn .t7.",
                        **options)
    flags.DEFINE_string("host", "127.0.0.1", "Address to bind; loopback unless told otherwise (0.0.0.0 = everywhere).",
                        **options)
    flags.DEFINE_integer("port", 8080, "Port to listen on.", lower_bound=1, upper_bound=65535, **options)
    common.define_flags(flag_values, ServeConfig)
    common.define_gpu_flag(flag_values)


def _check_port_free(host: str, port: int) -> None:
    try:
        with socket.create_server((host, port)):
            pass
    except OSError as e:
        raise UserError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None


def run(flag_values: flags.FlagValues, argv: List[str]) -> None:
    config = common.config_from_flags(flag_values, ServeConfig)
    # the largest request the caps allow must not exhaust the machine's memory
    resources.check_sampling_fits(config.max_num_samples, config.max_num_new_chars + config.max_start_text,
                                  flags=("--max_num_samples", "--max_num_new_chars (+ --max_start_text)"))
    if bool(flag_values.saved_model) == bool(flag_values.checkpoint):
        raise UserError("give exactly one of --saved_model (exported directory) or --checkpoint (.keras)")
    if flag_values.saved_model:
        kind, path = "saved_model", artifacts.resolve_saved_model(flag_values.saved_model)
        vocab = artifacts.saved_model_vocab(path)
        name = os.path.basename(os.path.dirname(os.path.abspath(path)))
    else:
        kind, path = "checkpoint", ckpt.model_path_for(flag_values.checkpoint)
        vocab = ckpt.read_vocab(path)
        name = artifacts.default_model_name(path)
    host, port = flag_values.host, flag_values.port
    _check_port_free(host, port)

    common.quiet_tensorflow()
    import uvicorn

    from kerascharrnn import devices
    from kerascharrnn.inference import engines
    from kerascharrnn.serving import app as serving_app
    from kerascharrnn.serving import batcher, http

    devices.configure(flag_values.gpu, sampling=True)
    with common.stderr_silenced():  # TensorFlow's C++ notes while loading and tracing
        engine = engines.open_engine(kind, path, vocab, jit_compile=False)  # batch sizes vary: no XLA
        sampler = batcher.BatchingSampler(engine, config.max_batch_rows)
        sampler.warm_up()
    application = serving_app.create_app(engine, config, model_name=name, batcher=sampler)
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    serving_app.log.addHandler(handler)  # absl owns the root logger (at ERROR); this log stands apart from it
    serving_app.log.setLevel(logging.INFO)
    serving_app.log.propagate = False
    print(f"Serving {path} on http://{host}:{port} (GET /generate, POST /v1/generate, /docs)", flush=True)
    uvicorn.run(application, host=host, port=port, log_level="info", http=http.http_protocol_class(),
                h11_max_incomplete_event_size=http.MAX_REQUEST_HEAD_BYTES)


def main(argv: Optional[Sequence[str]] = None) -> int:
    return common.main(argv, define_flags, run, __doc__)


if __name__ == "__main__":
    sys.exit(main())
