"""The training loop of torch-rnn's train.lua: stateful truncated BPTT, validation, checkpoints, resume, and
a time budget.

`train_and_evaluate` runs a trainer (trainer.py: one device; distributed/trainer.py: a strategy) step by
step. What it does between steps is a set of named pieces, each testable alone: the stop signals, the
throughput log, the speed probe that fits a time-budgeted cosine schedule to the budget, validation and
the checkpoint writer. Time is read from an injectable clock, so a time budget can be tested without
waiting for it.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from typing import Callable, Dict, List, Optional, Sequence

import tensorflow as tf

from kerascharrnn import devices, resources, upstream
from kerascharrnn.config import TrainConfig
from kerascharrnn.data import batches
from kerascharrnn.errors import UserError
from kerascharrnn.errors import setting as ref
from kerascharrnn.io import checkpoint as ckpt
from kerascharrnn.io import files
from kerascharrnn.io.series import BEST, Series
from kerascharrnn.models.charrnn import CharRNN
from kerascharrnn.stopping import StopSignals
from kerascharrnn.training import path_choice, plots
from kerascharrnn.training.distributed.trainer import DistributedTrainer
from kerascharrnn.training.trainer import Trainer, TrainerProtocol

Clock = Callable[[], float]  # seconds, monotonic


@dataclasses.dataclass
class TrainResult:
    checkpoint_json: str
    iteration: int
    train_loss_history: List[float]
    val_loss_history: List[float]
    interrupted_by: Optional[int] = None  # the signal number, if stopped by one
    best_json: Optional[str] = None  # the checkpoint of the lowest val loss (NAME_best.json), if any


def parameter_advice(num_params: int, num_characters: int) -> str:
    """char-rnn's rule of thumb: parameters and training characters within an order of magnitude."""
    ratio = num_params / max(num_characters, 1)
    line = f"{num_params:,} parameters, {num_characters:,} training characters (ratio {ratio:.2g})"
    if ratio > 10:
        return line + ": far more parameters than data; the model can memorise it: raise dropout or shrink it"
    if ratio < 0.1:
        return line + ": far more data than parameters; the model underfits: make it larger (a larger rnn_size)"
    return line + ": within an order of magnitude (char-rnn's advice); watch the val loss for overfitting"


class Throughput:
    """Tokens per second since the last report (the log lines), restarted after each validation."""

    def __init__(self, tokens_per_step: int, now: float):
        self._tokens_per_step = tokens_per_step
        self.restart(now)

    def restart(self, now: float) -> None:
        self._start, self._steps = now, 0

    def step(self) -> None:
        self._steps += 1

    def report(self, now: float) -> float:
        rate = self._steps * self._tokens_per_step / max(now - self._start, 1e-9)
        self.restart(now)
        return rate


# A time-budgeted cosine run learns its length from its speed: timed over at least this many iterations
# (the first, compiling, left out) and 2% of the budget, up to the first checkpoint so that validation
# time counts too (or over 10% of the budget, if no checkpoint comes sooner).
SPEED_PROBE_ITERS = 20


class SpeedProbe:
    """Measures the speed of a time-budgeted run from its second iteration on, to fit the cosine schedule."""

    def __init__(self, budget_s: float):
        self._budget_s = budget_s
        self._start: Optional[tuple] = None  # (iteration, time)

    def start(self, iteration: int, now: float) -> None:
        """Times from here (after the first step, which compiled); a no-op once started."""
        if self._start is None:
            self._start = (iteration, now)

    def due(self, iteration: int, now: float, share_of_budget: float) -> bool:
        """Whether the speed is measured well enough: SPEED_PROBE_ITERS iterations and this share of the budget."""
        return self._start is not None and iteration - self._start[0] >= SPEED_PROBE_ITERS and (
            now - self._start[1] >= share_of_budget * self._budget_s)

    def seconds_per_iteration(self, iteration: int, now: float) -> float:
        return (now - self._start[1]) / (iteration - self._start[0])


def fitted_schedule_end(iteration: int, seconds_per_iteration: float, remaining_s: float, last_iteration: int) -> int:
    """Where a cosine schedule must end for the iterations the rest of a time budget allows."""
    return min(last_iteration, iteration + int(max(remaining_s, 0.0) / seconds_per_iteration))


def validations_since_best(val_losses: Sequence[float]) -> int:
    """How many validations came after the first with the lowest finite val loss (all of them if none is
    finite): --early_stopping stops a run when this reaches its value."""
    finite = [(loss, i) for i, loss in enumerate(val_losses) if math.isfinite(loss)]
    return len(val_losses) - 1 - min(finite)[1] if finite else len(val_losses)


def checkpoint_due(iteration: int, checkpoint_every: int, at_end: bool) -> bool:
    """train.lua's rule: every checkpoint_every iterations (0 = never) and at the end."""
    return bool(checkpoint_every and iteration % checkpoint_every == 0) or at_end


@dataclasses.dataclass
class Progress:
    """What the run has done so far, resumes included.

    Attributes:
      history: the loss histories and benchmark records (ckpt.HISTORY_KEYS).
      best_val: the lowest val loss so far (inf: none yet).
      spent_before: the training time of the runs this one continues.
      data_digest: SHA-256 of the training data (--input_h5), which the checkpoints record: a resume
        checks it is continuing on the same data.
      fine_tuned_from: where the run's first weights came from (--init_from), as the records keep it.
    """

    history: Dict[str, list]
    best_val: float = math.inf
    spent_before: float = 0.0
    data_digest: str = ""
    fine_tuned_from: Optional[dict] = None

    @classmethod
    def new(cls) -> "Progress":
        return cls({key: [] for key in ckpt.HISTORY_KEYS})

    @classmethod
    def resumed(cls, record: ckpt.CheckpointRecord) -> "Progress":
        return cls({key: list(values) for key, values in record.history.items()},
                   record.best_val_loss if record.best_val_loss is not None else math.inf, record.elapsed_seconds,
                   fine_tuned_from=record.fine_tuned_from)

    def add_validation(self, iteration: int, val_loss: float) -> None:
        self.history["val_loss_history"].append(val_loss)
        self.history["val_loss_history_it"].append(iteration)


def write_checkpoint(trainer: TrainerProtocol, charrnn: CharRNN, progress: Progress, iteration: int,
                     val_loss: Optional[float], elapsed_s: float, num_train_batches: int) -> str:
    """The checkpoint of this iteration, and `_best` if the val loss is the lowest yet, and the loss plot;
    returns the record's path. Only the chief writes; every worker updates the best val loss."""
    config = trainer.recorded_config()
    best = min(progress.best_val, val_loss) if val_loss is not None else progress.best_val
    record = ckpt.CheckpointRecord(
        path="", iteration=iteration, model_file="", state_file="", model_config=charrnn.config,
        train_config=config, vocab=charrnn.vocab, history=progress.history,
        best_val_loss=best if math.isfinite(best) else None, elapsed_seconds=elapsed_s,
        digests={"data": progress.data_digest} if progress.data_digest else {},
        fine_tuned_from=progress.fine_tuned_from)
    state = trainer.state_arrays()  # every worker: the carried state is gathered from all of them
    series = Series(config.checkpoint_name)
    paths = series.checkpoint(iteration)
    try:
        if trainer.is_chief:
            ckpt.save_checkpoint(paths, trainer.checkpoint_charrnn(), state, record, num_train_batches)
        if val_loss is not None and val_loss < progress.best_val:
            progress.best_val = val_loss
            if trainer.is_chief:
                ckpt.save_checkpoint(series.checkpoint(BEST), trainer.checkpoint_charrnn(), state, record,
                                     num_train_batches)
        if plots.available() and trainer.is_chief:
            history = progress.history
            plots.write_loss_plot(series.loss_plot, history["train_loss_history"], history["val_loss_history"],
                                  history["val_loss_history_it"], history["learning_rate_history"],
                                  title=files.shown(os.path.basename(config.checkpoint_name)))
    except upstream.h5py_write_errors() as e:
        raise UserError(f"could not write checkpoint {paths.model}: {files.write_reason(paths.model, e)};"
                        " the previous checkpoint is intact") from None
    return paths.json


class _Scalars:
    """TensorBoard scalars, when a directory is given."""

    def __init__(self, directory: str):
        self._writer = tf.summary.create_file_writer(directory) if directory else None

    def write(self, iteration: int, **values: float) -> None:
        if self._writer:
            with self._writer.as_default(step=iteration):
                for name, value in values.items():
                    tf.summary.scalar(name.replace("__", "/"), value)

    def flush(self) -> None:
        if self._writer:
            self._writer.flush()


def make_trainer(config: TrainConfig, charrnn: CharRNN, layouts: Dict[str, batches.StreamLayout],
                 strategy=None) -> TrainerProtocol:
    """A Trainer on one device, or a DistributedTrainer under `strategy` (distributed/make_strategy)."""
    if strategy is None:  # replicas=1: a run resumed from a distributed checkpoint records one device
        return Trainer(dataclasses.replace(config, replicas=1), charrnn, layouts)
    return DistributedTrainer(strategy, config, charrnn, layouts)


def progress_line(iteration: int, num_train: int, config: TrainConfig, last_iteration: int, elapsed_s: float,
                  schedule_end: int = 0) -> str:
    """Where a run stands: the epoch and iteration against the run's end; with a time budget, the time spent
    against it and the iteration its fitted schedule ends at (max_epochs and max_iters mean little there)."""
    epoch = iteration / num_train + 1
    if not config.max_minutes:
        return f"Epoch {epoch:.2f} / {config.max_epochs}, i = {iteration} / {last_iteration}"
    end = f" of ~{schedule_end} (the schedule's end)" if schedule_end else ""
    return f"Epoch {epoch:.2f}, i = {iteration}{end}, {elapsed_s / 60:.1f} of {config.max_minutes:g} minutes"


def train_and_evaluate(
    config: TrainConfig,
    charrnn: CharRNN,
    layouts: Dict[str, batches.StreamLayout],
    resume: Optional[ckpt.CheckpointRecord] = None,
    start_iteration: int = 0,
    log=print,
    strategy=None,
    clock: Clock = time.perf_counter,
    data_digest: Optional[str] = None,
    time_spent: float = 0.0,
    fine_tuned_from: Optional[dict] = None,
) -> TrainResult:
    """Trains (or resumes), validating and checkpointing as train.lua does.

    Args:
      config: the training options.
      charrnn: the model to train, built at config.batch_size (fresh, init_from or resume_from weights);
        its vocabulary travels inside every checkpoint.
      layouts: stream layouts of the train/val/test splits (see batches.layouts_for).
      resume: the checkpoint record to continue from; its state file must sit beside it.
      start_iteration: iteration counter to start at (init_from with reset_iterations 0).
      log: where progress lines go.
      strategy: a tf.distribute strategy from distributed.strategy.make_strategy, or None for one device.
      clock: seconds (time.perf_counter); the time budget and the speeds are read from it.
      data_digest: SHA-256 of config.input_h5 where the caller has it (else computed here), for the records.
      time_spent: seconds of the budget the caller already spent for this run (measuring speeds to size it).
      fine_tuned_from: with --init_from, the base model's provenance for the records (checkpoint.base_provenance).

    Returns:
      A TrainResult naming the last checkpoint written.
    """
    started = clock()
    trainer = make_trainer(config, charrnn, layouts, strategy)
    progress = Progress.new()
    if resume is not None:
        state = ckpt.load_state(resume.state_path,
                                max_bytes=resources.training_state_bytes(charrnn.config, config.batch_size))
        trainer.restore_state(state, resume.path)
        if trainer.iteration != resume.iteration:  # a record written before v0.3 has no digests to say so
            raise UserError(f"{resume.state_path} holds the optimizer of iteration {trainer.iteration}, and"
                            f" {resume.path} records iteration {resume.iteration}: the checkpoint's files"
                            " disagree, so it cannot be resumed")
        log(f"Resuming {resume.path} at iteration {resume.iteration}")
        progress = Progress.resumed(resume)
    elif start_iteration:
        trainer.start_at(start_iteration)
    if resume is None:
        progress.fine_tuned_from = fine_tuned_from

    progress.data_digest = data_digest or ckpt.file_digest(config.input_h5)
    progress.spent_before += time_spent
    num_train = layouts["train"].num_batches
    last_iteration = config.max_epochs * num_train
    if config.max_iters:
        last_iteration = min(last_iteration, config.max_iters)
    budget_s = config.max_minutes * 60 if config.max_minutes else math.inf
    if config.lr_schedule == "cosine" and not config.lr_schedule_iters and not config.max_minutes:
        trainer.set_schedule_length(last_iteration)
    fit_to_budget = config.lr_schedule == "cosine" and bool(config.max_minutes)
    iteration = trainer.iteration

    def elapsed(now: float) -> float:
        return progress.spent_before + now - started

    model_config = charrnn.config
    log(f"Model: {model_config.model_type} {model_config.num_layers} x {model_config.rnn_size};"
        f" {parameter_advice(charrnn.count_params(), layouts['train'].tokens_covered)}")
    path_name = path_choice.PATH_NAMES[trainer.path_choice.path]
    log(f"{num_train} minibatches per epoch; {path_name} training path ({trainer.path_choice.why});"
        f" learning rate: {config.lr_schedule}" + (f", time budget {config.max_minutes:g} minutes"
                                                   if config.max_minutes else ""))
    if not plots.available():
        log("matplotlib is not installed: no loss plot (pip install 'kerascharrnn[plot]')")
    scalars = _Scalars(config.tensorboard_dir)
    throughput = Throughput(config.batch_size * config.seq_length, clock())
    probe = SpeedProbe(budget_s)
    history = progress.history

    def fit_schedule(now: float) -> None:
        """A time budget only: from the speed measured so far, where the cosine must end to fit in it.

        Fitted once the speed is known, then again at every checkpoint: the speed drifts over a run
        (other load, the compiled step warming up), and a schedule fixed once ended ~15% early or late.
        """
        per_iteration = probe.seconds_per_iteration(iteration, now)
        first = not trainer.schedule_length
        trainer.set_schedule_length(fitted_schedule_end(iteration, per_iteration, budget_s - elapsed(now),
                                                        last_iteration))
        if first:
            log(f"Measured {per_iteration * 1000:.1f} ms per iteration, validation included: the cosine schedule"
                f" ends at iteration {trainer.schedule_length} (refitted at every checkpoint)")

    last_json = None
    out_of_time = stopped_early = False
    with StopSignals() as stop:
        while iteration < last_iteration and stop.signum is None and not out_of_time and not stopped_early:
            epoch, batch = divmod(iteration, num_train)
            if batch == 0:
                trainer.reset_states()
            for inputs, targets in trainer.batches(config.input_h5, batch):
                step_start = clock() if config.speed_benchmark else 0.0
                history["learning_rate_history"].append(trainer.learning_rate())
                loss = float(trainer.train_step(inputs, targets))
                now = clock()  # read once per iteration
                iteration += 1
                throughput.step()
                if not math.isfinite(loss):
                    where = f"; the last good checkpoint is {last_json}" if last_json else ""
                    raise UserError(f"loss became {loss} at iteration {iteration}{where};"
                                    f" try a lower {ref('learning_rate')} or {ref('grad_clip')}")
                history["train_loss_history"].append(loss)
                if fit_to_budget:
                    probe.start(iteration, now)
                if config.speed_benchmark:
                    history["forward_backward_times"].append(now - step_start)
                    log(f"Forward / backward pass took {history['forward_backward_times'][-1]:f}")
                if config.memory_benchmark:
                    history["memory_usage"].append(devices.peak_memory_bytes())
                    log(f"Peak memory use: {history['memory_usage'][-1] / 2**20:.1f} MiB")
                if config.print_every and iteration % config.print_every == 0:
                    tokens_per_s = throughput.report(now)
                    log(progress_line(iteration, num_train, config, last_iteration, elapsed(now),
                                      trainer.schedule_length if fit_to_budget else 0)
                        + f", loss = {loss:f} ({tokens_per_s:,.0f} tokens/s)")
                    scalars.write(iteration, train__loss=loss, learning_rate=history["learning_rate_history"][-1],
                                  tokens_per_second=tokens_per_s)
                out_of_time = elapsed(now) >= budget_s
                at_end = iteration >= last_iteration or out_of_time
                due = checkpoint_due(iteration, config.checkpoint_every, at_end)
                if not due and not trainer.schedule_length and probe.due(iteration, now, 0.1):
                    fit_schedule(now)  # no checkpoint (validation) to time with came soon enough
                if due or stop.signum:
                    if out_of_time:
                        log(f"Time budget of {config.max_minutes:g} minutes spent at iteration {iteration}")
                    val_loss = trainer.evaluate(config.input_h5, "val")
                    now = clock()
                    if not at_end and probe.due(iteration, now, 0.02):
                        fit_schedule(now)  # timed with validation passes in it
                    if val_loss is not None:
                        progress.add_validation(iteration, val_loss)
                        log(f"i = {iteration}, val_loss = {val_loss:f}")
                        scalars.write(iteration, val__loss=val_loss)
                    last_json = write_checkpoint(trainer, charrnn, progress, iteration, val_loss, elapsed(now),
                                                 num_train)
                    if trainer.is_chief:
                        log(f"Saved checkpoint {Series(config.checkpoint_name).checkpoint(iteration).model}")
                    stale = validations_since_best(history["val_loss_history"])
                    stopped_early = bool(config.early_stopping) and stale >= config.early_stopping and not at_end
                    if stopped_early:
                        log(f"Early stopping at iteration {iteration}: {stale} validations without a val loss below"
                            f" {progress.best_val:f} (kept as {Series(config.checkpoint_name).checkpoint(BEST).json})")
                    throughput.restart(clock())
                if at_end or stop.signum or stopped_early:
                    break
    scalars.flush()
    if last_json is None:  # nothing left to train (resumed at the end): the checkpoint we came from
        last_json = resume.path if resume else write_checkpoint(
            trainer, charrnn, progress, iteration, trainer.evaluate(config.input_h5, "val"), elapsed(clock()),
            num_train)
    best_json = Series(config.checkpoint_name).checkpoint(BEST).json if math.isfinite(progress.best_val) else None
    return TrainResult(last_json, iteration, history["train_loss_history"], history["val_loss_history"],
                       interrupted_by=stop.signum, best_json=best_json)
