"""bin/sample: generate text from a checkpoint, a SavedModel or a TFLite model (torch-rnn's sample.lua,
plus top-k/top-p and batches). The sampling flags are generated from SampleConfig."""

from __future__ import annotations

import json
import sys
import time

from absl import flags

from kerascharrnn import artifacts, resources
from kerascharrnn import checkpoint as ckpt
from kerascharrnn.cli import common
from kerascharrnn.config import SampleConfig
from kerascharrnn.errors import UserError

flags.DEFINE_string("checkpoint", "", "Checkpoint to sample from: a .keras file (or its .json),"
                    " or a torch-rnn .t7.")
flags.DEFINE_string("saved_model", "", "Or an exported SavedModel: a version directory, or a model directory"
                    " holding versions (the highest is used).")
flags.DEFINE_string("tflite", "", "Or an exported model.tflite (its vocab.json must be beside it).")
common.define_flags(SampleConfig)
flags.DEFINE_integer("verbose", 0, "1 = report the seed text and speed on stderr.", lower_bound=0, upper_bound=1)
flags.DEFINE_bool("jsonl", False, "Print each sample as one JSON string per line instead of raw text.")
common.define_gpu_flag()
FLAGS = flags.FLAGS

SEPARATOR = "----"
SOURCES = ("checkpoint", "saved_model", "tflite")


def _source():
    """(engine kind, path, vocabulary) of the one source flag given, checked before TensorFlow loads."""
    given = [name for name in SOURCES if FLAGS[name].value]
    if len(given) != 1:
        raise UserError("give exactly one of --checkpoint (.keras), --saved_model (directory) or --tflite (file)")
    kind = given[0]
    if kind == "checkpoint":
        path = ckpt.model_path_for(FLAGS.checkpoint)
        return kind, path, ckpt.read_vocab(path)
    if kind == "saved_model":
        path = artifacts.resolve_saved_model(FLAGS.saved_model)
        return kind, path, artifacts.saved_model_vocab(path)
    return kind, FLAGS.tflite, artifacts.tflite_vocab(FLAGS.tflite)


def main(argv):
    del argv
    config = common.config_from_flags(SampleConfig)
    resources.check_sampling_fits(config.num_samples, config.length)
    kind, path, vocab = _source()
    if kind == "checkpoint":
        model_config = ckpt.stored_model_config(path)
        if model_config is not None:  # v0.1.0 files store none; their size is checked as they load
            resources.check_inference_fits(model_config, config.num_samples, 1, "--num_samples")
    prompt = vocab.encode(config.start_text)  # names unknown characters before TensorFlow loads
    if config.length < len(prompt):
        raise UserError(f"--length {config.length} is shorter than --start_text ({len(prompt)} tokens);"
                        " --length counts the start text too")

    common.quiet_tensorflow()
    from kerascharrnn import devices, engines

    devices.configure(FLAGS.gpu, sampling=True)
    with common.stderr_silenced():  # LiteRT announces its CPU delegate on stderr
        engine = engines.open_engine(kind, path, vocab)
    if FLAGS.verbose:
        print(f'Seeding with: "{config.start_text}"', file=sys.stderr)
    streaming = config.num_samples == 1 and not FLAGS.jsonl and sys.stdout.isatty()
    on_text = None
    if streaming:
        def on_text(piece):
            sys.stdout.write(piece)
            sys.stdout.flush()

    started = time.perf_counter()
    texts = engines.sample_texts(engine, config, on_text=on_text)
    if FLAGS.verbose:
        elapsed = time.perf_counter() - started
        made = config.num_samples * (config.length - len(prompt))
        print(f"{made} characters in {elapsed:.2f} s ({made / max(elapsed, 1e-9):,.0f} chars/s)", file=sys.stderr)
    if streaming:
        print()
    elif FLAGS.jsonl:
        for text in texts:
            print(json.dumps(text, ensure_ascii=False))
    else:
        print(f"\n{SEPARATOR}\n".join(texts))


def run():
    common.run_main(main)


if __name__ == "__main__":
    run()
