"""bin/sample: generate text from a checkpoint, a SavedModel or a TFLite model (torch-rnn's sample.lua,
plus top-k/top-p and batches)."""

from __future__ import annotations

import json
import sys
import time

from absl import flags

from kerascharrnn import artifacts
from kerascharrnn import checkpoint as ckpt
from kerascharrnn.cli import common
from kerascharrnn.config import SampleConfig
from kerascharrnn.errors import UserError

flags.DEFINE_string("checkpoint", "", "Checkpoint to sample from: a .keras file (or its .json).")
flags.DEFINE_string("saved_model", "", "Or an exported SavedModel: a version directory, or a model directory"
                    " holding versions (the highest is used).")
flags.DEFINE_string("tflite", "", "Or an exported model.tflite (its vocab.json must be beside it).")
flags.DEFINE_integer("length", 2000, "Characters of output in all, the start text included.")
flags.DEFINE_string("start_text", "", "Text to prime the model with; the output starts with it.")
flags.DEFINE_integer("sample", 1, "1 = sample from the distribution, 0 = take the most likely character (argmax).",
                     lower_bound=0, upper_bound=1)
flags.DEFINE_float("temperature", 1.0, "Softmax temperature (> 0); lower is more conservative.")
flags.DEFINE_integer("top_k", 0, "Sample only among the k most likely characters (0 = off).")
flags.DEFINE_float("top_p", 1.0, "Nucleus sampling: the smallest set with this much probability (1 = off).")
flags.DEFINE_integer("num_samples", 1, "Independent samples to generate, as one batched run.")
flags.DEFINE_integer("seed", None, "Seed for the draws: the same seed gives the same text.")
flags.DEFINE_integer("verbose", 0, "1 = report the seed text and speed on stderr.", lower_bound=0, upper_bound=1)
flags.DEFINE_bool("jsonl", False, "Print each sample as one JSON string per line instead of raw text.")
flags.DEFINE_integer("gpu", 0, "GPU index to use when TensorFlow sees one; -1 = CPU only.")
FLAGS = flags.FLAGS

SEPARATOR = "----"


def _sample_config() -> SampleConfig:
    return SampleConfig(length=FLAGS.length, start_text=FLAGS.start_text, sample=bool(FLAGS.sample),
                        temperature=FLAGS.temperature, top_k=FLAGS.top_k, top_p=FLAGS.top_p,
                        num_samples=FLAGS.num_samples, seed=FLAGS.seed)


def main(argv):
    del argv
    config = _sample_config().validate()
    sources = [name for name in ("checkpoint", "saved_model", "tflite") if FLAGS[name].value]
    if len(sources) != 1:
        raise UserError("give exactly one of --checkpoint (.keras), --saved_model (directory) or --tflite (file)")
    source = sources[0]
    if source == "checkpoint":
        path = ckpt.model_path_for(FLAGS.checkpoint)
        vocab = ckpt.read_vocab(path)
    elif source == "saved_model":
        path = artifacts.resolve_saved_model(FLAGS.saved_model)
        vocab = artifacts.saved_model_vocab(path)
    else:
        path = FLAGS.tflite
        vocab = artifacts.tflite_vocab(path)
    prompt = vocab.encode(config.start_text)  # names unknown characters before TensorFlow loads
    if config.length < len(prompt):
        raise UserError(f"--length {config.length} is shorter than --start_text ({len(prompt)} tokens)")

    common.quiet_tensorflow()
    from kerascharrnn import generate, train

    train.configure_devices(FLAGS.gpu, None)
    with common.stderr_silenced():  # LiteRT announces its CPU delegate on stderr
        engine = generate.open_engine(source, path, vocab)
    if FLAGS.verbose:
        print(f'Seeding with: "{config.start_text}"', file=sys.stderr)
    stream = sys.stdout if config.num_samples == 1 and not FLAGS.jsonl and sys.stdout.isatty() else None
    started = time.perf_counter()
    texts = generate.generate_texts(engine, config, stream=stream)
    if FLAGS.verbose:
        elapsed = time.perf_counter() - started
        made = config.num_samples * (config.length - len(prompt))
        print(f"{made} characters in {elapsed:.2f} s ({made / max(elapsed, 1e-9):,.0f} chars/s)", file=sys.stderr)
    if stream is not None:
        print()
    elif FLAGS.jsonl:
        for text in texts:
            print(json.dumps(text, ensure_ascii=False))
    else:
        print(f"\n{SEPARATOR}\n".join(texts))


def run():
    common.run_main(main)
