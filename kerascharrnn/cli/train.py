"""bin/train: train a char-RNN (torch-rnn's train.lua flags and defaults, plus a few of ours).

The flags are generated from ModelConfig and TrainConfig (kerascharrnn.config). Inputs are checked
(files, vocabulary, sizes, checkpoints) before TensorFlow is imported, so a mistake costs a second and
prints one line.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import shlex
import signal
import sys

from absl import flags

from kerascharrnn import checkpoint as ckpt
from kerascharrnn import corpus, data, distribute, files, lock, paths, resources
from kerascharrnn.cli import common
from kerascharrnn.config import ModelConfig, TrainConfig
from kerascharrnn.errors import UserError
from kerascharrnn.presets import PRESETS
from kerascharrnn.vocab import Vocabulary

common.define_flags(TrainConfig)
common.define_flags(ModelConfig)
flags.DEFINE_enum("corpus", "stdlib", corpus.CORPORA, "Built-in corpus used when --input_h5 is empty:"
                  " 'stdlib' (the Python standard library's sources, offline) or 'tiny_shakespeare' (downloaded once).")
flags.DEFINE_enum("preset", "", ["", *PRESETS], "A named set of flag values (kerascharrnn/presets.py): cpu_15min"
                  " = the best recipe found for ~1 MB of text in 15 minutes on a 2-core CPU (with --max_minutes 15);"
                  " gpu_large = a larger model for a GPU. Flags given explicitly override the preset's.")
common.define_gpu_flag()
flags.DEFINE_string("gpu_backend", "cuda", "Only 'cuda': TensorFlow has no OpenCL backend.")
FLAGS = flags.FLAGS

# Flags that may change when resuming; everything else comes from the checkpoint.
_RESUMABLE = ("max_epochs", "max_iters", "max_minutes", "print_every", "checkpoint_every", "speed_benchmark",
              "memory_benchmark", "tensorboard_dir", "input_h5", "input_json",
              "strategy", "cpu_replicas", "worker_timeout")  # a resumed run may change replicas (re-splits the state)


def _apply_preset(name: str) -> None:
    """Sets the preset's values on every flag the command line did not give."""
    for flag, value in PRESETS[name].items():
        if not FLAGS[flag].present:
            FLAGS[flag].value = value


def _resume_record(train_config: TrainConfig) -> ckpt.CheckpointRecord:
    path = train_config.resume_from
    if path == "latest":
        path = ckpt.find_latest(train_config.checkpoint_name)
        if path is None:
            raise UserError(f"--resume_from latest: no complete checkpoint {train_config.checkpoint_name}_*.json")
    record = ckpt.read_record(path)
    files.require_file(record.model_path, "checkpoint file")
    files.require_file(record.state_path, "checkpoint file")
    ckpt.check_keras_file(record.model_path)
    return record


def _resumed_config(record: ckpt.CheckpointRecord, train_config: TrainConfig) -> TrainConfig:
    """Architecture and training settings come from the checkpoint; only run-length flags override."""
    given = {name: getattr(train_config, name) for name in _RESUMABLE if FLAGS[name].present}
    if "input_h5" in given and "input_json" not in given:
        given["input_json"] = ""  # the vocabulary beside the new --input_h5, never the checkpoint's old one
    return dataclasses.replace(record.train_config, resume_from=record.path, init_from="", **given)


def _data_files(train_config: TrainConfig) -> TrainConfig:
    if not train_config.input_h5:
        if train_config.input_json:
            raise UserError("--input_json needs --input_h5")
        h5_path, json_path = corpus.corpus_files(FLAGS.corpus)
        return dataclasses.replace(train_config, input_h5=h5_path, input_json=json_path)
    json_path = train_config.input_json or os.path.splitext(train_config.input_h5)[0] + ".json"
    return dataclasses.replace(train_config, input_json=json_path)


def _init_iteration(init_path: str) -> int:
    """--init_from with --reset_iterations 0: the iteration its .json (or .t7) records, if any."""
    if ckpt.is_t7(init_path):
        return ckpt.read_t7(init_path).iteration or 0
    init_json = os.path.splitext(ckpt.model_path_for(init_path))[0] + ".json"
    return ckpt.read_record(init_json).iteration if os.path.exists(init_json) else 0


def _inputs(train_config: TrainConfig):
    """(flag, path) of every file this run reads, for paths.check_checkpoint_name."""
    named = [("--input_h5", train_config.input_h5), ("--input_json", train_config.input_json)]
    if train_config.init_from:
        init_model = ckpt.model_path_for(train_config.init_from)
        named += [("--init_from", train_config.init_from), ("--init_from", init_model),
                  ("--init_from", os.path.splitext(init_model)[0] + ".json")]
    return named


def main(argv):
    del argv
    if FLAGS.gpu_backend != "cuda":
        raise UserError(f"--gpu_backend {FLAGS.gpu_backend!r}: TensorFlow has no OpenCL backend; use cuda"
                        " (the default) or --gpu -1 for the CPU")
    if FLAGS.preset:
        _apply_preset(FLAGS.preset)
    model_config = common.config_from_flags(ModelConfig)
    train_config = common.config_from_flags(TrainConfig)
    resume = _resume_record(train_config) if train_config.resume_from else None
    if resume:
        model_config, train_config = resume.model_config, _resumed_config(resume, train_config)
    init_vocab = None
    if train_config.init_from:
        init_path = ckpt.model_path_for(train_config.init_from)
        init_vocab = ckpt.read_vocab(init_path)

    train_config = _data_files(train_config)
    files.require_file(train_config.input_h5, "HDF5 file")
    files.require_file(train_config.input_json, "JSON vocabulary")
    lengths = data.split_lengths(train_config.input_h5)
    vocab = Vocabulary.load(train_config.input_json)
    data.check_ids_match(train_config.input_h5, vocab, train_config.input_json)
    layouts = data.layouts_for(lengths, train_config.batch_size, train_config.seq_length)
    if resume and resume.vocab != vocab:
        raise UserError(f"{train_config.input_json} is not the vocabulary the checkpoint {resume.path} was trained on"
                        " (--resume_from continues a run on its own data; to fine-tune the checkpoint on other data"
                        f" with the same characters, use --init_from {resume.model_path})")
    if init_vocab and init_vocab != vocab:
        raise UserError(f"{train_config.input_json} is not the vocabulary of --init_from {train_config.init_from}")
    paths.check_checkpoint_name(train_config.checkpoint_name, _inputs(train_config))
    if train_config.strategy == distribute.MULTI_WORKER:
        distribute.cluster_from_env()  # TF_CONFIG checked before TensorFlow reads it
    if distribute.is_chief(train_config.strategy):  # other workers write nothing under --checkpoint_name
        files.require_writable_dir_for(train_config.checkpoint_name + "_0.json")
    if train_config.tensorboard_dir and importlib.util.find_spec("tensorboard") is None:
        raise UserError("--tensorboard_dir needs TensorBoard: pip install 'kerascharrnn[tensorboard]'")
    if train_config.tensorboard_dir:
        paths.check_output_dir("--tensorboard_dir", train_config.tensorboard_dir)
    if not resume:
        model_config = dataclasses.replace(model_config, vocab_size=vocab.size)
    fit_config = ckpt.stored_model_config(init_path) if train_config.init_from else model_config
    if fit_config is not None:  # a v0.1.0 --init_from file records no architecture
        resources.check_training_fits(fit_config, train_config.batch_size, train_config.seq_length)
    start_iteration = 0
    if train_config.init_from and not train_config.reset_iterations:
        start_iteration = _init_iteration(train_config.init_from)
    if distribute.is_chief(train_config.strategy):  # multi_worker: only the chief writes, so only it locks
        lock.acquire(train_config.checkpoint_name)  # held until the process ends

    # Inputs are good: now pay for TensorFlow.
    distribute.quiet_collective_errors(train_config.strategy)
    common.quiet_tensorflow()
    from kerascharrnn import devices, train
    from kerascharrnn.charrnn import CharRNN

    devices.configure(FLAGS.gpu, train_config.seed)
    strategy = distribute.make_strategy(train_config.strategy, train_config.cpu_replicas, train_config.worker_timeout)
    if resume:
        charrnn = CharRNN.from_checkpoint(resume.model_path, batch_size=train_config.batch_size)
    elif train_config.init_from:
        charrnn = CharRNN.from_checkpoint(train_config.init_from, batch_size=train_config.batch_size)
    else:
        charrnn = CharRNN.build(model_config, vocab, train_config.batch_size)
    result = train.train_and_evaluate(train_config, charrnn, layouts, resume=resume, start_iteration=start_iteration,
                                      strategy=strategy)
    if result.interrupted_by is not None:
        command = " ".join(shlex.quote(a) for a in [sys.argv[0], "--resume_from", result.checkpoint_json])
        print(f"Stopped by {signal.Signals(result.interrupted_by).name} at iteration {result.iteration};"
              f" checkpoint {result.checkpoint_json}. Resume with: {command}", file=sys.stderr)
        sys.exit(128 + result.interrupted_by)
    print(f"Done: iteration {result.iteration}, checkpoint {result.checkpoint_json}")


def run():
    common.run_main(main)


if __name__ == "__main__":
    run()
