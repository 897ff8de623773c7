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
import time
from typing import List, Optional, Sequence

from absl import flags

from kerascharrnn import resources
from kerascharrnn.cli import common
from kerascharrnn.config import INT32_MAX, MULTI_WORKER, ONE_DEVICE, ModelConfig, TrainConfig
from kerascharrnn.data import batches, corpus
from kerascharrnn.errors import UserError
from kerascharrnn.io import checkpoint as ckpt
from kerascharrnn.io import files, lock, paths, series
from kerascharrnn.models import transfer
from kerascharrnn.presets import BUDGETED, FINE_TUNE, FINE_TUNE_VALIDATION, PRESETS
from kerascharrnn.training.distributed import cluster
from kerascharrnn.vocab import Vocabulary


def define_flags(flag_values: flags.FlagValues) -> None:
    common.define_flags(flag_values, TrainConfig)
    common.define_flags(flag_values, ModelConfig)
    flags.DEFINE_string("corpus", "stdlib", "Built-in corpus used when --input_h5 is empty: 'stdlib' (the Python"
                        " standard library's sources, offline), 'tiny_shakespeare', 'novels' (20 English novels from"
                        " Project Gutenberg, ~8 MB: a base model to fine-tune from, docs/fine-tuning.md) or"
                        " 'gutenberg:NUMBER[+NUMBER...]' (any Project Gutenberg books); downloaded once.",
                        flag_values=flag_values)
    flags.DEFINE_enum("preset", "", ["", *PRESETS], "A named set of flag values (kerascharrnn/presets.py):"
                      " auto = the CPU recipe with the model sized for --max_minutes (required) from this machine's"
                      " measured speed and the corpus (docs/quality.md); cpu_15min = the same recipe, sized the same"
                      " way when --max_minutes is given (15 for its name), else a fixed 2 x 384; gpu_large = a"
                      " larger model for a GPU. Flags given explicitly override the preset's and the sizing's.",
                      flag_values=flag_values)
    common.define_gpu_flag(flag_values)
    flags.DEFINE_string("gpu_backend", "cuda", "Only 'cuda': TensorFlow has no OpenCL backend.",
                        flag_values=flag_values)


def _resume_record(train_config: TrainConfig) -> Optional[ckpt.CheckpointRecord]:
    path = train_config.resume_from
    if path in ("latest", "auto"):
        path = ckpt.find_latest(train_config.checkpoint_name)
        if path is None and train_config.resume_from == "auto":  # a first start (a container's, say)
            print(f"--resume_from auto: no checkpoint {train_config.checkpoint_name}_*.json yet: a new run",
                  file=sys.stderr)
            return None
        if path is None:
            raise UserError(f"--resume_from latest: no complete checkpoint {train_config.checkpoint_name}_*.json")
    record = ckpt.read_record(path)
    record.check_files()
    ckpt.read_keras_file(record.model_path)
    return record


def _resumed_series(record: ckpt.CheckpointRecord, given_name: Optional[str]) -> str:
    """The checkpoint name a resumed run writes under: the series the record's own file belongs to (cv/ck_40.json
    -> cv/ck), whatever name the record stores (another run's, or a path relative to another directory). A
    --checkpoint_name given with --resume_from must name that series."""
    own = series.name_of_record(record.path)
    if own is None:
        raise UserError(f"--resume_from {record.path}: not a checkpoint record's name (NAME_ITERATION.json or"
                        " NAME_best.json)")
    if given_name is not None and paths.real(given_name) != paths.real(own):
        raise UserError(f"--resume_from {record.path} continues the series {own}, and --checkpoint_name says"
                        f" {given_name}: give the same name, or leave --checkpoint_name out (to start a new series"
                        " from these weights, use --init_from)")
    stored = record.train_config.checkpoint_name
    if paths.real(stored) != paths.real(own):
        print(f"--resume_from: the record names the series {stored}; continuing the series it belongs to, {own}",
              file=sys.stderr)
    return own


def _check_resumed_data(record: ckpt.CheckpointRecord, train_config: TrainConfig, data_digest: str,
                        data_given: bool) -> None:
    """A resume that names no data continues on the run's own: the file the record names (`data_digest` is its
    SHA-256) must still be the data it was trained on (a record's relative path, read from another directory,
    may name other data)."""
    if data_given or "data" not in record.digests:
        return
    if data_digest != record.digests["data"]:
        raise UserError(f"{train_config.input_h5} ({paths.real(train_config.input_h5)}) is not the data {record.path}"
                        " was trained on (the file changed, or the record's path now names another file); give"
                        " --input_h5 to continue on other data")


def _data_files(train_config: TrainConfig, corpus_name: str) -> TrainConfig:
    if not train_config.input_h5:
        if train_config.input_json:
            raise UserError("--input_json needs --input_h5")
        h5_path, json_path = corpus.corpus_files(corpus_name)
        return dataclasses.replace(train_config, input_h5=h5_path, input_json=json_path)
    json_path = train_config.input_json or os.path.splitext(train_config.input_h5)[0] + ".json"
    # absolute in the checkpoints' records: a resume from another directory reads the same files
    return dataclasses.replace(train_config, input_h5=os.path.abspath(train_config.input_h5),
                               input_json=os.path.abspath(json_path))


def _init_iteration(init_path: str) -> int:
    """--init_from with --reset_iterations 0: the iteration its .json (or .t7) records, if any."""
    if ckpt.is_t7(init_path):
        return ckpt.read_t7(init_path).iteration or 0
    init_json = os.path.splitext(ckpt.model_path_for(init_path))[0] + ".json"
    return ckpt.read_record(init_json).iteration if os.path.exists(init_json) else 0


def _provenance(base_path: str, base_iteration: int, vocab_map: transfer.VocabularyMap, base_vocab: Vocabulary,
                vocab: Vocabulary) -> dict:
    """What the checkpoints of a fine-tune record of its base (checkpoint.base_provenance), tokens as JSON keys."""
    base_keys = dict(zip(base_vocab.tokens, base_vocab.token_strings()))
    return ckpt.base_provenance(base_path, base_iteration, vocab_map.mapped,
                                [vocab.token_strings()[i] for i in vocab_map.added],
                                [base_keys[t] for t in vocab_map.dropped])


def _inputs(train_config: TrainConfig):
    """(flag, path) of every file this run reads, for paths.check_checkpoint_name."""
    named = [("--input_h5", train_config.input_h5), ("--input_json", train_config.input_json)]
    if train_config.init_from:
        init_model = ckpt.model_path_for(train_config.init_from)
        named += [("--init_from", train_config.init_from), ("--init_from", init_model),
                  ("--init_from", os.path.splitext(init_model)[0] + ".json")]
    return named


def _sized_for_budget(flag_values: flags.FlagValues, model_config: ModelConfig, train_config: TrainConfig,
                      lengths, describe=print):
    """A budgeted preset's model and recipe for this machine, budget and corpus (training/sizing.py): the
    configs with what the sizing chose, except where the command line set a value."""
    from kerascharrnn.training import sizing, step_speed

    given = common.given(flag_values)
    corpus_sizes = sizing.Corpus(lengths["train"], lengths["val"], model_config.vocab_size)
    chosen = sizing.choose(model_config, train_config.batch_size, train_config.seq_length,
                           train_config.max_minutes * 60, corpus_sizes,
                           lambda model: step_speed.cached(model, train_config, log=describe),
                           fixed={k: given[k] for k in ("num_layers", "rnn_size") if k in given})
    kept = {k: v for k, v in chosen.values.items() if k not in given}
    describe(f"--preset {flag_values.preset} for {train_config.max_minutes:g} minutes: {chosen.why}")
    model_config = dataclasses.replace(model_config, **{k: v for k, v in kept.items() if hasattr(model_config, k)})
    train_config = dataclasses.replace(train_config, sized_by=chosen.why,
                                       **{k: v for k, v in kept.items() if hasattr(train_config, k)})
    return model_config, train_config


def _planned_fine_tune(flag_values: flags.FlagValues, model_changes: dict, train_config: TrainConfig, layouts,
                       describe=print):
    """A budgeted preset with --init_from: the base's model, trained with the fine-tune recipe
    (presets.FINE_TUNE) and validated once an epoch of the (small) text, within FINE_TUNE_VALIDATION; a
    value the command line set wins. Returns (the model's regularisation, the training config)."""
    given = common.given(flag_values)
    lowest, highest = FINE_TUNE_VALIDATION
    plan = {**FINE_TUNE, "checkpoint_every": min(max(layouts["train"].num_batches, lowest), highest)}
    kept = {k: v for k, v in plan.items() if k not in given}
    train_config = dataclasses.replace(train_config, **{k: v for k, v in kept.items() if hasattr(train_config, k)})
    model_changes = {**{k: v for k, v in kept.items() if k in transfer.REGULARISATION}, **model_changes}
    why = (f"fine-tuning the base model of --init_from (not resized): learning rate {train_config.learning_rate:g},"
           f" {train_config.lr_schedule} to {train_config.min_learning_rate:g} after {train_config.warmup_iters}"
           " warm-up iterations; " + ", ".join(f"{k} {v:g}" for k, v in sorted(model_changes.items())) +
           f"; validated every {train_config.checkpoint_every} iterations; stops after {train_config.early_stopping}"
           " validations without a lower val loss (the lowest is kept as _best)")
    describe(f"--preset {flag_values.preset} for {train_config.max_minutes:g} minutes: {why}")
    return model_changes, dataclasses.replace(train_config, sized_by=why)


def run(flag_values: flags.FlagValues, argv: List[str]) -> Optional[int]:
    if flag_values.gpu_backend != "cuda":
        raise UserError(f"--gpu_backend {flag_values.gpu_backend!r}: TensorFlow has no OpenCL backend; use cuda"
                        " (the default) or --gpu -1 for the CPU")
    corpus.check_name(flag_values.corpus)
    preset = PRESETS.get(flag_values.preset, {})
    model_config = common.config_from_flags(flag_values, ModelConfig, preset)
    train_config = common.config_from_flags(flag_values, TrainConfig, preset)
    resume = _resume_record(train_config) if train_config.resume_from else None
    if resume is None:
        train_config = dataclasses.replace(train_config, resume_from="")
    else:
        # the architecture and the recipe come from the checkpoint; only the run's length and data may change;
        # the run goes on in the series the record belongs to
        model_config = resume.model_config
        given = common.given(flag_values)
        train_config = dataclasses.replace(resume.train_config.resumed_with(given), resume_from=resume.path,
                                           checkpoint_name=_resumed_series(resume, given.get("checkpoint_name")))
    init_vocab = None
    if train_config.init_from:
        init_path = ckpt.model_path_for(train_config.init_from)
        init_vocab = ckpt.read_vocab(init_path)

    train_config = _data_files(train_config, flag_values.corpus)
    if resume and not os.path.isfile(train_config.input_h5) and "input_h5" not in common.given(flag_values):
        raise UserError(f"{train_config.input_h5}: the data {resume.path} was trained on is no longer there (moved?);"
                        " give --input_h5 to name it")
    files.require_file(train_config.input_h5, "HDF5 file")
    files.require_file(train_config.input_json, "JSON vocabulary")
    data_digest = ckpt.file_digest(train_config.input_h5)  # once: checked here, recorded in every checkpoint
    if resume:
        _check_resumed_data(resume, train_config, data_digest, "input_h5" in common.given(flag_values))
    lengths = batches.split_lengths(train_config.input_h5)
    vocab = Vocabulary.load(train_config.input_json)
    batches.check_ids_match(train_config.input_h5, vocab, train_config.input_json)
    layouts = batches.layouts_for(lengths, train_config.batch_size, train_config.seq_length)
    if resume and resume.vocab != vocab:
        raise UserError(f"{train_config.input_json} is not the vocabulary the checkpoint {resume.path} was trained on"
                        " (--resume_from continues a run on its own data; to fine-tune the checkpoint on other data"
                        f" with the same characters, use --init_from {resume.model_path})")
    vocab_map = transfer.vocabulary_map(init_vocab, vocab) if init_vocab else None
    if vocab_map is not None and not vocab_map.identity:
        print(f"--init_from {files.shown(train_config.init_from)}: {vocab_map.summary(init_vocab, vocab)}")
    paths.check_checkpoint_name(train_config.checkpoint_name, _inputs(train_config))
    if train_config.strategy == MULTI_WORKER:
        cluster.check_own_port_free(cluster.cluster_from_env())  # TF_CONFIG checked before TensorFlow reads it
    chief = cluster.is_chief(train_config.strategy)  # the other workers of a cluster write nothing
    if chief:
        files.require_writable_dir_for(train_config.checkpoint_name + "_0.json")
    if train_config.tensorboard_dir and importlib.util.find_spec("tensorboard") is None:
        raise UserError("--tensorboard_dir needs TensorBoard: pip install 'kerascharrnn[tensorboard]'")
    if train_config.tensorboard_dir:
        paths.check_output_dir("--tensorboard_dir", train_config.tensorboard_dir)
    if not resume:
        model_config = dataclasses.replace(model_config, vocab_size=vocab.size)
    if flag_values.preset == "auto" and not train_config.max_minutes:
        raise UserError("--preset auto sizes the model for a time budget: give --max_minutes")
    budgeted = flag_values.preset in BUDGETED and bool(train_config.max_minutes)
    fine_tune_planned = budgeted and bool(train_config.init_from)  # the base's model, the fine-tune plan
    sizing_reason = None  # why a budgeted preset keeps its fixed model
    if budgeted and not fine_tune_planned:
        if resume:
            sizing_reason = "the model comes from the checkpoint"
        elif train_config.strategy != ONE_DEVICE:
            sizing_reason = f"--strategy {train_config.strategy} (speeds are measured on one device)"
    size_model = budgeted and not fine_tune_planned and sizing_reason is None
    fit_config = model_config
    # the regularisation a fine-tune sets on the base model (a base keeps its own unless told)
    model_changes = {k: v for k, v in common.given(flag_values).items() if k in transfer.REGULARISATION}
    if train_config.init_from:
        base_config = ckpt.stored_model_config(init_path)  # None: a v0.1.0 file records no architecture
        fit_config = base_config and dataclasses.replace(base_config, vocab_size=vocab.size)
        if fine_tune_planned:
            model_changes, train_config = _planned_fine_tune(flag_values, model_changes, train_config, layouts)
    if fit_config is not None:
        resources.check_training_fits(fit_config, train_config.batch_size, train_config.seq_length)
    start_iteration = 0
    fine_tuned_from = None
    if train_config.init_from:
        base_iteration = _init_iteration(train_config.init_from)
        start_iteration = 0 if train_config.reset_iterations else base_iteration
        fine_tuned_from = _provenance(init_path, base_iteration, vocab_map, init_vocab, vocab)

    with lock.held(train_config.checkpoint_name) if chief else contextlib.nullcontext():
        # Inputs are good: now pay for TensorFlow.
        cluster.quiet_collective_errors(train_config.strategy)
        common.quiet_tensorflow()
        from kerascharrnn import devices
        from kerascharrnn.models.charrnn import CharRNN
        from kerascharrnn.training import loop, path_choice, step_speed
        from kerascharrnn.training.distributed.strategy import make_strategy

        devices.configure(flag_values.gpu, train_config.seed)
        measuring_started = time.perf_counter()
        if size_model:
            model_config, train_config = _sized_for_budget(flag_values, model_config, train_config, lengths)
            resources.check_training_fits(model_config, train_config.batch_size, train_config.seq_length)
        elif sizing_reason:
            print(f"--preset {flag_values.preset}: not sized for the budget: {sizing_reason}")
        planned = min(train_config.max_epochs * layouts["train"].num_batches, train_config.max_iters or INT32_MAX)
        if (not resume and not train_config.init_from and train_config.strategy == ONE_DEVICE
                and not devices.on_gpu()
                and path_choice.worth_measuring(train_config.fused, planned, train_config.max_minutes)):
            step_speed.measure_paths(model_config, train_config, log=print)
        measuring_s = time.perf_counter() - measuring_started
        if train_config.seed is not None:  # measuring builds models, which draw from the seeded generators
            devices.seed_everything(train_config.seed)
        strategy = make_strategy(train_config.strategy, train_config.cpu_replicas, train_config.worker_timeout,
                                 describe=common.describe)
        if resume:
            charrnn = CharRNN.from_checkpoint(resume.model_path, batch_size=train_config.batch_size)
        elif train_config.init_from:
            base = CharRNN.from_checkpoint(train_config.init_from, batch_size=train_config.batch_size)
            charrnn = transfer.fine_tune_start(base, vocab, model_changes, train_config.batch_size)[0]
        else:
            charrnn = CharRNN.build(model_config, vocab, train_config.batch_size)
        result = loop.train_and_evaluate(train_config, charrnn, layouts, resume=resume, data_digest=data_digest,
                                         start_iteration=start_iteration, strategy=strategy,
                                         time_spent=measuring_s, fine_tuned_from=fine_tuned_from)
    if result.interrupted_by is not None:
        prog = argv[0] if argv[0].startswith("kerascharrnn ") else shlex.quote(argv[0])  # the one command's own
        command = " ".join([prog, "--resume_from", shlex.quote(result.checkpoint_json)])
        print(f"Stopped by {signal.Signals(result.interrupted_by).name} at iteration {result.iteration};"
              f" checkpoint {result.checkpoint_json}. Resume with: {command}", file=sys.stderr)
        return 128 + result.interrupted_by
    best = f"; the lowest val loss: {result.best_json}" if result.best_json else ""
    print(f"Done: iteration {result.iteration}, checkpoint {result.checkpoint_json}{best}")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    return common.main(argv, define_flags, run, __doc__)


if __name__ == "__main__":
    sys.exit(main())
