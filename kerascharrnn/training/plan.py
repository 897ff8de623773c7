"""A training run planned before TensorFlow loads: what the user asked for (a Request: the configs, the settings
given explicitly, the preset, the corpus) -> one resolved Plan (the configs the run trains with, its data and
vocabulary, the checkpoint it resumes or the base it fine-tunes, whether a time budget still sizes the model).

Pure Python and file reads only: every input is checked here, so a mistake costs a second and one line, and
bin/train, tests and benchmarks plan a run the same way (training/run.py executes a Plan).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import sys
from typing import Any, Callable, Dict, Optional

from kerascharrnn import resources
from kerascharrnn.config import MULTI_WORKER, ONE_DEVICE, ModelConfig, TrainConfig
from kerascharrnn.data import batches, corpus
from kerascharrnn.errors import UserError
from kerascharrnn.errors import setting as ref
from kerascharrnn.io import checkpoint as ckpt
from kerascharrnn.io import files, paths, series
from kerascharrnn.models import transfer
from kerascharrnn.presets import BUDGETED, FINE_TUNE, FINE_TUNE_VALIDATION, PRESETS
from kerascharrnn.training.distributed import cluster
from kerascharrnn.vocab import Vocabulary


@dataclasses.dataclass(frozen=True)
class Request:
    """What the user asked for, nothing read yet.

    Attributes:
      model_config, train_config: the settings (a preset's values under the ones given).
      given: the settings given explicitly, by name: they win over a resumed record's, a plan's and a sizing's.
      preset: the preset's name ("" for none).
      corpus: the built-in corpus read when train_config.input_h5 is empty.
    """

    model_config: ModelConfig
    train_config: TrainConfig
    given: Dict[str, Any] = dataclasses.field(default_factory=dict)
    preset: str = ""
    corpus: str = "stdlib"

    @classmethod
    def of(cls, preset: str = "", corpus_name: str = "stdlib", **given) -> "Request":
        """A request from settings by name, as bin/train's flags give them (a preset's values under them)."""
        if preset and preset not in PRESETS:
            raise UserError(f"{ref('preset')} {preset!r}: choose one of {', '.join(PRESETS)}")
        unknown = sorted(set(given) - _fields(ModelConfig) - _fields(TrainConfig))
        if unknown:
            raise UserError(f"unknown setting {unknown[0]!r}")
        values = {**preset_values(preset), **given}
        return cls(replaced(ModelConfig(), values), replaced(TrainConfig(), values), given=dict(given),
                   preset=preset, corpus=corpus_name)


def preset_values(name: str) -> Dict[str, Any]:
    """A preset's settings ({} for none); a key that names no setting is an error (it would be dropped unseen)."""
    values = PRESETS.get(name, {})
    unknown = sorted(set(values) - _fields(ModelConfig) - _fields(TrainConfig))
    if unknown:
        raise ValueError(f"preset {name!r} sets {unknown[0]!r}, which is no setting (kerascharrnn/presets.py)")
    return values


def _fields(config_class) -> set:
    return {field.name for field in dataclasses.fields(config_class)}


def replaced(config, values: Dict[str, Any]):
    """`config` with those of `values` it has a field for."""
    return dataclasses.replace(config, **{k: v for k, v in values.items() if k in _fields(type(config))})


@dataclasses.dataclass(frozen=True)
class FineTune:
    """A run that starts from a base model (--init_from): its vocabulary map, the regularisation set on it, the
    iteration the run counts from, and what the checkpoints record of the base."""

    base_vocab: Vocabulary
    vocab_map: transfer.VocabularyMap
    changes: Dict[str, object]
    start_iteration: int
    provenance: dict


@dataclasses.dataclass(frozen=True)
class Plan:
    """One resolved run: the configs it trains with and everything read to check them.

    Attributes:
      model_config, train_config: resolved (a resume's own, a preset's, a fine-tune plan's; the data files set).
      vocab, lengths, layouts, data_digest: the data's vocabulary, split lengths, minibatch layouts and SHA-256.
      resume: the checkpoint record resumed (None: a new run).
      fine_tune: the base it starts from (None: none).
      chief: whether this process writes the checkpoints (the other workers of a cluster write nothing).
      size_model: a time budget still sizes the model (on this machine's measured speed: training/run.py).
      not_sized: why a budgeted preset keeps its fixed model ("" if it does not).
      preset, given: the request's, for the sizing.
    """

    model_config: ModelConfig
    train_config: TrainConfig
    vocab: Vocabulary
    lengths: Dict[str, int]
    layouts: Dict[str, batches.Layout]
    data_digest: str
    resume: Optional[ckpt.CheckpointRecord]
    fine_tune: Optional[FineTune]
    chief: bool
    size_model: bool
    not_sized: str
    preset: str
    given: Dict[str, Any]


def plan(request: Request, log: Callable[[str], None] = print) -> Plan:
    """Checks every input and resolves the run (no TensorFlow); UserError names the first problem."""
    corpus.check_name(request.corpus)
    given = request.given
    model_config, train_config = request.model_config, request.train_config
    resume = _resume_record(train_config) if train_config.resume_from else None
    if resume is None:
        train_config = dataclasses.replace(train_config, resume_from="")
    else:
        # the architecture and the recipe come from the checkpoint; only the run's length and data may change;
        # the run goes on in the series the record belongs to
        model_config = resume.model_config
        train_config = dataclasses.replace(resume.train_config.resumed_with(given), resume_from=resume.path,
                                           checkpoint_name=_resumed_series(resume, given.get("checkpoint_name")))
    init_path = ckpt.model_path_for(train_config.init_from) if train_config.init_from else None
    base_vocab = ckpt.read_vocab(init_path) if init_path else None

    train_config = _data_files(train_config, request.corpus)
    if resume and not os.path.isfile(train_config.input_h5) and "input_h5" not in given:
        raise UserError(f"{train_config.input_h5}: the data {resume.path} was trained on is no longer there (moved?);"
                        f" give {ref('input_h5')} to name it")
    files.require_file(train_config.input_h5, "HDF5 file")
    files.require_file(train_config.input_json, "JSON vocabulary")
    data_digest = ckpt.file_digest(train_config.input_h5)  # once: checked here, recorded in every checkpoint
    if resume:
        _check_resumed_data(resume, train_config, data_digest, "input_h5" in given)
    lengths = batches.split_lengths(train_config.input_h5)
    vocab = Vocabulary.load(train_config.input_json)
    batches.check_ids_match(train_config.input_h5, vocab, train_config.input_json)
    layouts = batches.layouts_for(lengths, train_config.batch_size, train_config.seq_length)
    if resume and resume.vocab != vocab:
        raise UserError(f"{train_config.input_json} is not the vocabulary the checkpoint {resume.path} was trained on"
                        f" ({ref('resume_from')} continues a run on its own data; to fine-tune the checkpoint on other"
                        f" data with the same characters, use {ref('init_from')} {resume.model_path})")
    vocab_map = transfer.vocabulary_map(base_vocab, vocab) if base_vocab else None
    if vocab_map is not None and not vocab_map.identity:
        log(f"--init_from {files.shown(train_config.init_from)}: {vocab_map.summary(base_vocab, vocab)}")
    paths.check_checkpoint_name(train_config.checkpoint_name, _inputs(train_config))
    if train_config.strategy == MULTI_WORKER:
        cluster.check_own_port_free(cluster.cluster_from_env())  # TF_CONFIG checked before TensorFlow reads it
    chief = cluster.is_chief(train_config.strategy)
    if chief:
        files.require_writable_dir_for(series.Series(train_config.checkpoint_name).checkpoint(0).json)
    if train_config.tensorboard_dir and importlib.util.find_spec("tensorboard") is None:
        raise UserError(f"{ref('tensorboard_dir')} needs TensorBoard: pip install 'kerascharrnn[tensorboard]'")
    if train_config.tensorboard_dir:
        paths.check_output_dir("--tensorboard_dir", train_config.tensorboard_dir)
    if not resume:
        model_config = dataclasses.replace(model_config, vocab_size=vocab.size)
    if request.preset == "auto" and not train_config.max_minutes:
        raise UserError(f"{ref('preset')} auto sizes the model for a time budget: give {ref('max_minutes')}")
    budgeted = request.preset in BUDGETED and bool(train_config.max_minutes)
    fine_tune_planned = budgeted and bool(train_config.init_from)  # the base's model, the fine-tune plan
    not_sized = ""  # why a budgeted preset keeps its fixed model
    if budgeted and not fine_tune_planned:
        if resume:
            not_sized = "the model comes from the checkpoint"
        elif train_config.strategy != ONE_DEVICE:
            not_sized = f"--strategy {train_config.strategy} (speeds are measured on one device)"
    fit_config = model_config
    fine_tune = None
    if init_path:
        # the regularisation a fine-tune sets on the base model (a base keeps its own unless told)
        changes = {k: v for k, v in given.items() if k in transfer.REGULARISATION}
        base_config = ckpt.stored_model_config(init_path)  # None: a v0.1.0 file records no architecture
        fit_config = base_config and dataclasses.replace(base_config, vocab_size=vocab.size)
        if fine_tune_planned:
            changes, train_config = _planned_fine_tune(request, changes, train_config, layouts, log)
        base_iteration = _init_iteration(train_config.init_from)
        fine_tune = FineTune(base_vocab, vocab_map, changes,
                             0 if train_config.reset_iterations else base_iteration,
                             _provenance(init_path, base_iteration, vocab_map, base_vocab, vocab))
    if fit_config is not None:
        resources.check_training_fits(fit_config, train_config.batch_size, train_config.seq_length)
    return Plan(model_config, train_config, vocab, lengths, layouts, data_digest, resume, fine_tune, chief,
                size_model=budgeted and not fine_tune_planned and not not_sized, not_sized=not_sized,
                preset=request.preset, given=dict(given))


def _resume_record(train_config: TrainConfig) -> Optional[ckpt.CheckpointRecord]:
    path = train_config.resume_from
    if path in ("latest", "auto"):
        path = ckpt.find_latest(train_config.checkpoint_name)
        if path is None and train_config.resume_from == "auto":  # a first start (a container's, say)
            print(f"--resume_from auto: no checkpoint {train_config.checkpoint_name}_*.json yet: a new run",
                  file=sys.stderr)
            return None
        if path is None:
            raise UserError(f"{ref('resume_from')} latest: no complete checkpoint"
                            f" {train_config.checkpoint_name}_*.json")
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
        raise UserError(f"{ref('resume_from')} {record.path}: not a checkpoint record's name (NAME_ITERATION.json"
                        " or NAME_best.json)")
    if given_name is not None and paths.real(given_name) != paths.real(own):
        raise UserError(f"{ref('resume_from')} {record.path} continues the series {own}, and"
                        f" {ref('checkpoint_name')} says {given_name}: give the same name, or leave"
                        f" {ref('checkpoint_name')} out (to start a new series from these weights, use"
                        f" {ref('init_from')})")
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
                        f" {ref('input_h5')} to continue on other data")


def _data_files(train_config: TrainConfig, corpus_name: str) -> TrainConfig:
    if not train_config.input_h5:
        if train_config.input_json:
            raise UserError(f"{ref('input_json')} needs {ref('input_h5')}")
        h5_path, json_path = corpus.corpus_files(corpus_name)
        return dataclasses.replace(train_config, input_h5=h5_path, input_json=json_path)
    json_path = train_config.input_json or batches.vocab_path_for(train_config.input_h5)
    # absolute in the checkpoints' records: a resume from another directory reads the same files
    return dataclasses.replace(train_config, input_h5=os.path.abspath(train_config.input_h5),
                               input_json=os.path.abspath(json_path))


def _init_iteration(init_path: str) -> int:
    """--init_from with --reset_iterations 0: the iteration its .json (or .t7) records, if any."""
    if ckpt.is_t7(init_path):
        return ckpt.read_t7(init_path).iteration or 0
    init_json = ckpt.record_path_for(ckpt.model_path_for(init_path))
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
                  ("--init_from", ckpt.record_path_for(init_model))]
    return named


def _planned_fine_tune(request: Request, changes: dict, train_config: TrainConfig, layouts, log):
    """A budgeted preset with --init_from: the base's model, trained with the fine-tune recipe
    (presets.FINE_TUNE) and validated once an epoch of the (small) text, within FINE_TUNE_VALIDATION; a
    value given explicitly wins. Returns (the model's regularisation, the training config)."""
    lowest, highest = FINE_TUNE_VALIDATION
    recipe = {**FINE_TUNE, "checkpoint_every": min(max(layouts["train"].num_batches, lowest), highest)}
    kept = {k: v for k, v in recipe.items() if k not in request.given}
    train_config = replaced(train_config, kept)
    changes = {**{k: v for k, v in kept.items() if k in transfer.REGULARISATION}, **changes}
    why = (f"fine-tuning the base model of --init_from (not resized): learning rate {train_config.learning_rate:g},"
           f" {train_config.lr_schedule} to {train_config.min_learning_rate:g} after {train_config.warmup_iters}"
           " warm-up iterations; " + ", ".join(f"{k} {v:g}" for k, v in sorted(changes.items())) +
           f"; validated every {train_config.checkpoint_every} iterations; stops after {train_config.early_stopping}"
           " validations without a lower val loss (the lowest is kept as _best)")
    log(f"--preset {request.preset} for {train_config.max_minutes:g} minutes: {why}")
    return changes, dataclasses.replace(train_config, sized_by=why)
