"""bin/train: train a char-RNN (torch-rnn's train.lua flags and defaults, plus a few of ours).

The flags are generated from ModelConfig and TrainConfig (kerascharrnn.config). Inputs are checked
(files, vocabulary, sizes, checkpoints) before TensorFlow is imported, so a mistake costs a second and
prints one line.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import os
import shlex
import signal
import sys
from typing import List, Optional, Sequence

from absl import flags

from kerascharrnn import resources
from kerascharrnn.cli import common
from kerascharrnn.config import MULTI_WORKER, ModelConfig, TrainConfig
from kerascharrnn.data import batches, corpus
from kerascharrnn.errors import UserError
from kerascharrnn.io import checkpoint as ckpt
from kerascharrnn.io import files, lock, paths
from kerascharrnn.presets import PRESETS
from kerascharrnn.training.distributed import cluster
from kerascharrnn.vocab import Vocabulary


def define_flags(flag_values: flags.FlagValues) -> None:
    common.define_flags(flag_values, TrainConfig)
    common.define_flags(flag_values, ModelConfig)
    flags.DEFINE_enum("corpus", "stdlib", corpus.CORPORA, "Built-in corpus used when --input_h5 is empty:"
                      " 'stdlib' (the Python standard library's sources, offline) or 'tiny_shakespeare' (downloaded"
                      " once).", flag_values=flag_values)
    flags.DEFINE_enum("preset", "", ["", *PRESETS], "A named set of flag values (kerascharrnn/presets.py):"
                      " cpu_15min = the best recipe found for ~1 MB of text in 15 minutes on a 2-core CPU (with"
                      " --max_minutes 15); gpu_large = a larger model for a GPU. Flags given explicitly override"
                      " the preset's.", flag_values=flag_values)
    common.define_gpu_flag(flag_values)
    flags.DEFINE_string("gpu_backend", "cuda", "Only 'cuda': TensorFlow has no OpenCL backend.",
                        flag_values=flag_values)


def _resume_record(train_config: TrainConfig) -> ckpt.CheckpointRecord:
    path = train_config.resume_from
    if path == "latest":
        path = ckpt.find_latest(train_config.checkpoint_name)
        if path is None:
            raise UserError(f"--resume_from latest: no complete checkpoint {train_config.checkpoint_name}_*.json")
    record = ckpt.read_record(path)
    files.require_file(record.model_path, "checkpoint file")
    files.require_file(record.state_path, "checkpoint file")
    ckpt.read_keras_file(record.model_path)
    return record


def _data_files(train_config: TrainConfig, corpus_name: str) -> TrainConfig:
    if not train_config.input_h5:
        if train_config.input_json:
            raise UserError("--input_json needs --input_h5")
        h5_path, json_path = corpus.corpus_files(corpus_name)
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


def run(flag_values: flags.FlagValues, argv: List[str]) -> Optional[int]:
    if flag_values.gpu_backend != "cuda":
        raise UserError(f"--gpu_backend {flag_values.gpu_backend!r}: TensorFlow has no OpenCL backend; use cuda"
                        " (the default) or --gpu -1 for the CPU")
    preset = PRESETS.get(flag_values.preset, {})
    model_config = common.config_from_flags(flag_values, ModelConfig, preset)
    train_config = common.config_from_flags(flag_values, TrainConfig, preset)
    resume = _resume_record(train_config) if train_config.resume_from else None
    if resume:
        # the architecture and the recipe come from the checkpoint; only the run's length and data may change
        model_config = resume.model_config
        train_config = dataclasses.replace(resume.train_config.resumed_with(common.given(flag_values)),
                                           resume_from=resume.path)
    init_vocab = None
    if train_config.init_from:
        init_path = ckpt.model_path_for(train_config.init_from)
        init_vocab = ckpt.read_vocab(init_path)

    train_config = _data_files(train_config, flag_values.corpus)
    files.require_file(train_config.input_h5, "HDF5 file")
    files.require_file(train_config.input_json, "JSON vocabulary")
    lengths = batches.split_lengths(train_config.input_h5)
    vocab = Vocabulary.load(train_config.input_json)
    batches.check_ids_match(train_config.input_h5, vocab, train_config.input_json)
    layouts = batches.layouts_for(lengths, train_config.batch_size, train_config.seq_length)
    if resume and resume.vocab != vocab:
        raise UserError(f"{train_config.input_json} is not the vocabulary the checkpoint {resume.path} was trained on"
                        " (--resume_from continues a run on its own data; to fine-tune the checkpoint on other data"
                        f" with the same characters, use --init_from {resume.model_path})")
    if init_vocab and init_vocab != vocab:
        raise UserError(f"{train_config.input_json} is not the vocabulary of --init_from {train_config.init_from}")
    paths.check_checkpoint_name(train_config.checkpoint_name, _inputs(train_config))
    if train_config.strategy == MULTI_WORKER:
        cluster.cluster_from_env()  # TF_CONFIG checked before TensorFlow reads it
    chief = cluster.is_chief(train_config.strategy)  # the other workers of a cluster write nothing
    if chief:
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

    with lock.held(train_config.checkpoint_name) if chief else contextlib.nullcontext():
        # Inputs are good: now pay for TensorFlow.
        cluster.quiet_collective_errors(train_config.strategy)
        common.quiet_tensorflow()
        from kerascharrnn import devices
        from kerascharrnn.models.charrnn import CharRNN
        from kerascharrnn.training import loop
        from kerascharrnn.training.distributed.strategy import make_strategy

        devices.configure(flag_values.gpu, train_config.seed)
        strategy = make_strategy(train_config.strategy, train_config.cpu_replicas, train_config.worker_timeout,
                                 describe=common.describe)
        if resume:
            charrnn = CharRNN.from_checkpoint(resume.model_path, batch_size=train_config.batch_size)
        elif train_config.init_from:
            charrnn = CharRNN.from_checkpoint(train_config.init_from, batch_size=train_config.batch_size)
        else:
            charrnn = CharRNN.build(model_config, vocab, train_config.batch_size)
        result = loop.train_and_evaluate(train_config, charrnn, layouts, resume=resume,
                                         start_iteration=start_iteration, strategy=strategy)
    if result.interrupted_by is not None:
        command = " ".join(shlex.quote(a) for a in [argv[0], "--resume_from", result.checkpoint_json])
        print(f"Stopped by {signal.Signals(result.interrupted_by).name} at iteration {result.iteration};"
              f" checkpoint {result.checkpoint_json}. Resume with: {command}", file=sys.stderr)
        return 128 + result.interrupted_by
    print(f"Done: iteration {result.iteration}, checkpoint {result.checkpoint_json}")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    return common.main(argv, define_flags, run, __doc__)


if __name__ == "__main__":
    sys.exit(main())
