"""bin/sample: generate text from a checkpoint, a SavedModel or a TFLite model (torch-rnn's sample.lua,
plus top-k/top-p and batches). The sampling flags are generated from SampleConfig."""

from __future__ import annotations

import json
import sys
import time
from typing import List, Optional, Sequence

from absl import flags

from kerascharrnn import resources
from kerascharrnn.cli import common
from kerascharrnn.config import SampleConfig
from kerascharrnn.errors import UserError
from kerascharrnn.io import artifacts
from kerascharrnn.io import checkpoint as ckpt

SEPARATOR = "----"
SOURCES = ("checkpoint", "saved_model", "tflite")


def define_flags(flag_values: flags.FlagValues) -> None:
    options = dict(flag_values=flag_values)
    flags.DEFINE_string("checkpoint", "", "Checkpoint to sample from: a .keras file (or its .json), or a torch-rnn"
                        " .t7.", **options)
    flags.DEFINE_string("saved_model", "", "Or an exported SavedModel: a version directory, or a model directory"
                        " holding versions (the highest is used).", **options)
    flags.DEFINE_string("tflite", "", "Or an exported model.tflite (its vocab.json must be beside it), or an export's"
                        " directory holding one (the highest version); runs on LiteRT, without TensorFlow.", **options)
    common.define_flags(flag_values, SampleConfig)
    flags.DEFINE_integer("verbose", 0, "1 = report the seed text and speed on stderr.", lower_bound=0, upper_bound=1,
                         **options)
    flags.DEFINE_bool("jsonl", False, "Print each sample as one JSON string per line instead of raw text.", **options)
    common.define_gpu_flag(flag_values)


def _source(flag_values: flags.FlagValues):
    """(engine kind, path, vocabulary) of the one source flag given, checked before TensorFlow loads."""
    given = [name for name in SOURCES if flag_values[name].value]
    if len(given) != 1:
        raise UserError("give exactly one of --checkpoint (.keras), --saved_model (directory) or --tflite (file)")
    kind = given[0]
    common.require_engine(kind)
    if kind == "checkpoint":
        path = ckpt.model_path_for(flag_values.checkpoint)
        return kind, path, ckpt.read_vocab(path)
    if kind == "saved_model":
        path = artifacts.resolve_saved_model(flag_values.saved_model)
        return kind, path, artifacts.saved_model_vocab(path)
    path = artifacts.resolve_tflite(flag_values.tflite)
    return kind, path, artifacts.tflite_vocab(path)


def run(flag_values: flags.FlagValues, argv: List[str]) -> None:
    config = common.config_from_flags(flag_values, SampleConfig)
    resources.check_sampling_fits(config.num_samples, config.length)
    kind, path, vocab = _source(flag_values)
    if kind == "checkpoint":
        model_config = ckpt.stored_model_config(path)
        if model_config is not None:  # v0.1.0 files store none; their size is checked as they load
            resources.check_inference_fits(model_config, config.num_samples, 1, "--num_samples")
    prompt = vocab.encode(config.start_text)  # names unknown characters before TensorFlow loads
    num_new = config.new_tokens(len(prompt))

    common.load_framework(kind, flag_values.gpu)
    from kerascharrnn.inference import engines

    with common.stderr_silenced():  # LiteRT announces its CPU delegate on stderr
        engine = engines.open_engine(kind, path, vocab)
    if flag_values.verbose:
        print(f'Seeding with: "{config.start_text}"', file=sys.stderr)
    streaming = config.num_samples == 1 and not flag_values.jsonl and sys.stdout.isatty()
    on_text = None
    if streaming:
        def on_text(piece):
            sys.stdout.write(piece)
            sys.stdout.flush()

    started = time.perf_counter()
    texts = engines.sample_texts(engine, config, on_text=on_text)
    if flag_values.verbose:
        elapsed = time.perf_counter() - started
        made = config.num_samples * num_new
        print(f"{made} characters in {elapsed:.2f} s ({made / max(elapsed, 1e-9):,.0f} chars/s)", file=sys.stderr)
    if streaming:
        print()
    elif flag_values.jsonl:
        for text in texts:
            print(json.dumps(text, ensure_ascii=False))
    else:
        print(f"\n{SEPARATOR}\n".join(texts))


def main(argv: Optional[Sequence[str]] = None) -> int:
    return common.main(argv, define_flags, run, __doc__)


if __name__ == "__main__":
    sys.exit(main())
