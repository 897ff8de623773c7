"""bin/train: train a char-RNN (torch-rnn's train.lua flags and defaults, plus a few of ours).

Inputs are checked (files, vocabulary, sizes, checkpoints) before TensorFlow is imported, so a
mistake costs a second and prints one line.
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
from kerascharrnn import corpus, data, files
from kerascharrnn.cli import common
from kerascharrnn.config import MODEL_TYPES, ModelConfig, TrainConfig
from kerascharrnn.errors import UserError
from kerascharrnn.vocab import Vocabulary

# Data
flags.DEFINE_string("input_h5", "", "HDF5 file from bin/preprocess (or torch-rnn). Empty: the --corpus.")
flags.DEFINE_string("input_json", "", "JSON vocabulary beside --input_h5. Empty: --input_h5 with .json.")
flags.DEFINE_enum("corpus", "stdlib", corpus.CORPORA, "Built-in corpus used when --input_h5 is empty:"
                  " 'stdlib' (the Python standard library's sources, offline) or 'tiny_shakespeare' (downloaded once).")
flags.DEFINE_integer("batch_size", 50, "N: parallel streams per minibatch.")
flags.DEFINE_integer("seq_length", 50, "T: characters per stream per minibatch (truncated BPTT length).")
# Model
flags.DEFINE_string("init_from", "", "Checkpoint (.json or .keras) whose weights and architecture to start from.")
flags.DEFINE_integer("reset_iterations", 1, "With --init_from: 1 = restart the iteration counter, 0 = keep it.",
                     lower_bound=0, upper_bound=1)
flags.DEFINE_string("model_type", "lstm", f"Recurrent cell: one of {', '.join(MODEL_TYPES)} (rnn = SimpleRNN).")
flags.DEFINE_integer("wordvec_size", 64, "D: embedding size.")
flags.DEFINE_integer("rnn_size", 128, "H: hidden units per recurrent layer.")
flags.DEFINE_integer("num_layers", 2, "Recurrent layers.")
flags.DEFINE_float("dropout", 0, "Dropout after each recurrent layer (0 = none).")
flags.DEFINE_integer("batchnorm", 0, "1 = batch normalisation after each recurrent layer.", lower_bound=0, upper_bound=1)
# Optimisation
flags.DEFINE_integer("max_epochs", 50, "Passes over the training split.")
flags.DEFINE_integer("max_iters", 0, "Stop after this many iterations in all (0 = only --max_epochs limits).")
flags.DEFINE_float("learning_rate", 2e-3, "Adam learning rate.")
flags.DEFINE_float("grad_clip", 5, "Clamp each gradient element to [-grad_clip, grad_clip] (0 = off).")
flags.DEFINE_integer("lr_decay_every", 5, "Multiply the learning rate by --lr_decay_factor every this many epochs.")
flags.DEFINE_float("lr_decay_factor", 0.5, "Learning-rate decay factor.")
flags.DEFINE_integer("seed", None, "Seed every RNG and make ops deterministic (same numbers on CPU).")
# Output
flags.DEFINE_integer("print_every", 1, "Print the training loss every this many iterations (0 = never).")
flags.DEFINE_string("checkpoint_name", "cv/checkpoint", "Checkpoint prefix: writes {name}_{iter}.keras/.state.npz/.json.")
flags.DEFINE_integer("checkpoint_every", 1000, "Validate and checkpoint every this many iterations (and at the end).")
flags.DEFINE_string("resume_from", "", "Continue a run exactly: a checkpoint .json, or 'latest' for the newest"
                    " complete one of --checkpoint_name.")
flags.DEFINE_string("tensorboard_dir", "", "Write TensorBoard scalars (losses, learning rate, tokens/s) here.")
# Benchmarking
flags.DEFINE_integer("speed_benchmark", 0, "1 = time every step (synchronised) and store the times.",
                     lower_bound=0, upper_bound=1)
flags.DEFINE_integer("memory_benchmark", 0, "1 = record peak memory after every step.", lower_bound=0, upper_bound=1)
# Devices
flags.DEFINE_integer("gpu", 0, "GPU index to use when TensorFlow sees one; -1 = CPU only.")
flags.DEFINE_string("gpu_backend", "cuda", "Only 'cuda': TensorFlow has no OpenCL backend.")
FLAGS = flags.FLAGS

# Flags that may change when resuming; everything else comes from the checkpoint.
_RESUMABLE = ("max_epochs", "max_iters", "print_every", "checkpoint_every", "speed_benchmark",
              "memory_benchmark", "tensorboard_dir", "input_h5", "input_json")


def _flag_configs():
    model_config = ModelConfig(
        vocab_size=1, model_type=FLAGS.model_type, wordvec_size=FLAGS.wordvec_size, rnn_size=FLAGS.rnn_size,
        num_layers=FLAGS.num_layers, dropout=FLAGS.dropout, batchnorm=bool(FLAGS.batchnorm))
    train_config = TrainConfig(
        input_h5=FLAGS.input_h5, input_json=FLAGS.input_json, batch_size=FLAGS.batch_size,
        seq_length=FLAGS.seq_length, max_epochs=FLAGS.max_epochs, max_iters=FLAGS.max_iters,
        learning_rate=FLAGS.learning_rate, grad_clip=FLAGS.grad_clip, lr_decay_every=FLAGS.lr_decay_every,
        lr_decay_factor=FLAGS.lr_decay_factor, print_every=FLAGS.print_every,
        checkpoint_name=FLAGS.checkpoint_name, checkpoint_every=FLAGS.checkpoint_every,
        init_from=FLAGS.init_from, reset_iterations=bool(FLAGS.reset_iterations), resume_from=FLAGS.resume_from,
        seed=FLAGS.seed, speed_benchmark=bool(FLAGS.speed_benchmark),
        memory_benchmark=bool(FLAGS.memory_benchmark), tensorboard_dir=FLAGS.tensorboard_dir)
    return model_config.validate(), train_config.validate()


def _resume_record(train_config: TrainConfig):
    path = train_config.resume_from
    if path == "latest":
        path = ckpt.find_latest(train_config.checkpoint_name)
        if path is None:
            raise UserError(f"--resume_from latest: no complete checkpoint {train_config.checkpoint_name}_*.json")
    record = ckpt.read_json(path)
    record["_path"] = path
    for key in ("model_file", "state_file"):
        files.require_file(ckpt.sibling(path, record[key]), "checkpoint file")
    ckpt.check_keras_file(ckpt.sibling(path, record["model_file"]))
    return record


def _apply_resume(record: dict, train_config: TrainConfig):
    """Architecture and training settings come from the checkpoint; only run-length flags override."""
    try:
        saved = TrainConfig(**record["train_config"])
        model_config = ModelConfig(**record["model_config"])
    except TypeError:
        raise UserError(f"{record['_path']}: checkpoint JSON has an unexpected configuration") from None
    given = {name: getattr(train_config, name) for name in _RESUMABLE if FLAGS[name].present}
    return model_config, dataclasses.replace(saved, resume_from=record["_path"], init_from="", **given)


def _data_files(train_config: TrainConfig) -> TrainConfig:
    if not train_config.input_h5:
        if train_config.input_json:
            raise UserError("--input_json needs --input_h5")
        h5_path, json_path = corpus.corpus_files(FLAGS.corpus)
        return dataclasses.replace(train_config, input_h5=h5_path, input_json=json_path)
    json_path = train_config.input_json or os.path.splitext(train_config.input_h5)[0] + ".json"
    return dataclasses.replace(train_config, input_json=json_path)


def main(argv):
    del argv
    if FLAGS.gpu_backend != "cuda":
        raise UserError(f"--gpu_backend {FLAGS.gpu_backend!r}: TensorFlow has no OpenCL backend; use cuda"
                        " (the default) or --gpu -1 for the CPU")
    model_config, train_config = _flag_configs()
    resume = _resume_record(train_config) if train_config.resume_from else None
    if resume:
        model_config, train_config = _apply_resume(resume, train_config)
    init = None
    if train_config.init_from:
        init_path = ckpt.model_path_for(train_config.init_from)
        ckpt.check_keras_file(init_path)
        init = (init_path, ckpt.read_vocab(init_path))

    train_config = _data_files(train_config)
    files.require_file(train_config.input_h5, "HDF5 file")
    files.require_file(train_config.input_json, "JSON vocabulary")
    lengths = data.split_lengths(train_config.input_h5)
    vocab = Vocabulary.load(train_config.input_json)
    data.check_ids_match(train_config.input_h5, vocab, train_config.input_json)
    layouts = data.layouts_for(lengths, train_config.batch_size, train_config.seq_length)
    if resume and Vocabulary.from_json_dict(resume.get("vocab", {}), resume["_path"]) != vocab:
        raise UserError(f"{train_config.input_json} is not the vocabulary the checkpoint {resume['_path']} was trained on")
    if init and init[1] != vocab:
        raise UserError(f"{train_config.input_json} is not the vocabulary of --init_from {init[0]}")
    files.require_writable_dir_for(train_config.checkpoint_name + "_0.json")
    if train_config.tensorboard_dir and importlib.util.find_spec("tensorboard") is None:
        raise UserError("--tensorboard_dir needs TensorBoard: pip install 'kerascharrnn[tensorboard]'")
    if not resume:
        model_config = dataclasses.replace(model_config, vocab_size=vocab.size)

    # Inputs are good: now pay for TensorFlow.
    common.quiet_tensorflow()
    from kerascharrnn import model as model_lib
    from kerascharrnn import train

    train.configure_devices(FLAGS.gpu, train_config.seed)
    model, start_iteration = None, 0
    source = (ckpt.sibling(resume["_path"], resume["model_file"]) if resume else init[0] if init else None)
    if source:
        loaded = ckpt.load_model(source)
        if not resume:
            model_config = model_lib.model_config_of(loaded)
        model = model_lib.build_model(model_config, train_config.batch_size)
        try:
            model.set_weights(loaded.get_weights())
        except ValueError:
            raise UserError(f"{source}: weights do not fit the model described by its checkpoint") from None
        if init and not train_config.reset_iterations:
            init_json = os.path.splitext(init[0])[0] + ".json"
            start_iteration = ckpt.read_json(init_json)["iteration"] if os.path.exists(init_json) else 0
    result = train.train_and_evaluate(train_config, model_config, vocab, layouts, model=model, resume=resume,
                                      start_iteration=start_iteration)
    if result.interrupted_by is not None:
        command = " ".join(shlex.quote(a) for a in [sys.argv[0], "--resume_from", result.checkpoint_json])
        print(f"Stopped by {signal.Signals(result.interrupted_by).name} at iteration {result.iteration};"
              f" checkpoint {result.checkpoint_json}. Resume with: {command}", file=sys.stderr)
        sys.exit(128 + result.interrupted_by)
    print(f"Done: iteration {result.iteration}, checkpoint {result.checkpoint_json}")


def run():
    common.run_main(main)
