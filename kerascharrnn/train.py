"""The training loop of torch-rnn's train.lua: stateful truncated BPTT, validation, checkpoints, resume."""

from __future__ import annotations

import dataclasses
import math
import os
import resource
import signal
import time
from typing import Dict, List, Optional

import keras
import numpy as np
import tensorflow as tf

from kerascharrnn import checkpoint as ckpt
from kerascharrnn import copy_attention, data, devices, distribute, evaluate, fused, plots, resources, schedule
from kerascharrnn import model as model_lib
from kerascharrnn.charrnn import CharRNN
from kerascharrnn.config import TrainConfig
from kerascharrnn.errors import UserError


@dataclasses.dataclass
class TrainResult:
    checkpoint_json: str
    iteration: int
    train_loss_history: List[float]
    val_loss_history: List[float]
    interrupted_by: Optional[int] = None  # the signal number, if stopped by one


class _StopSignal:
    """Turns SIGINT/SIGTERM into a flag checked between steps, so a checkpoint can be written."""

    def __init__(self):
        self.signum = None
        self._previous = {}

    def __enter__(self):
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.signum is not None:  # a second Ctrl-C: give up at once
            raise KeyboardInterrupt
        self.signum = signum

    def __exit__(self, *exc):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


class Trainer:
    """Owns the optimizer and compiled steps of one training run over a CharRNN.

    `config.fused` is resolved here ("auto" -> "split"/"on"/"off"); `self.config` holds the resolved
    value, which the checkpoints record so that a resumed run takes the same path.
    """

    def __init__(self, config: TrainConfig, charrnn: CharRNN, layouts: Dict[str, data.StreamLayout]):
        self.charrnn = charrnn
        self.model = model = charrnn.model
        self.layouts = layouts
        # On a CPU, recurrent layers may train through fused.py under XLA (hoisted projections, one-matmul
        # weight gradients; "split": two halves of the batch at once, one per core); on a GPU the Keras call
        # runs cuDNN. Same layers and weights either way.
        self.path_choice = fused.choose(model, config.fused, on_gpu=devices.on_gpu(), cpu_cores=resources.cpu_cores())
        self.fused = self.path_choice.fused
        self.config = dataclasses.replace(config, fused=self.path_choice.path)
        self.schedule = schedule.TrainingSchedule(config, layouts["train"].num_batches)
        # torch-rnn clamps every gradient element to [-grad_clip, grad_clip]: that is clipvalue.
        options = dict(learning_rate=self.schedule, epsilon=1e-8, clipvalue=config.grad_clip or None)
        if config.weight_decay:
            self.optimizer = keras.optimizers.AdamW(weight_decay=config.weight_decay, **options)
            # decay the matrices (kernels, embeddings), not the biases or batch-norm scales (as nanoGPT)
            self.optimizer.exclude_from_weight_decay(var_list=[v for v in model.trainable_variables
                                                               if len(v.shape) < 2])
        else:
            self.optimizer = keras.optimizers.Adam(**options)
        self.optimizer.build(model.trainable_variables)
        self._loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        self._eval_step = evaluate.make_eval_step(model)
        if self.path_choice.path == "split":
            self._split_loss_and_grads = fused.split_loss_and_grads(model, self._loss)
            self._apply_gradients = tf.function(self._apply_gradients, jit_compile=True)
            self.train_step = tf.function(self._split_train_step)  # its pieces are XLA computations
        else:
            self.train_step = tf.function(self._train_step, jit_compile=self.fused)

    def _train_step(self, inputs, targets):
        with tf.GradientTape() as tape:
            if self.fused:
                logits = fused.forward(self.model, inputs, training=True)
            else:
                logits = self.model(inputs, training=True)  # (N, T, V)
            loss = self._loss(targets, logits)
        grads = tape.gradient(loss, self.model.trainable_variables)
        self.optimizer.apply_gradients(zip(grads, self.model.trainable_variables))
        return loss

    def _split_train_step(self, inputs, targets):
        loss, grads = self._split_loss_and_grads(inputs, targets)
        self._apply_gradients(grads)
        return loss

    def _apply_gradients(self, grads):
        self.optimizer.apply_gradients(zip(grads, self.model.trainable_variables))

    def learning_rate(self) -> float:
        """The rate the next step will use."""
        return float(self.optimizer.learning_rate)

    def set_schedule_length(self, total_iterations: int) -> None:
        """Fixes where the cosine schedule ends (a time-budgeted run, once its speed is known)."""
        self.schedule.total.assign(total_iterations)
        self.config = dataclasses.replace(self.config, lr_schedule_iters=total_iterations)

    # The loop's view of the model, which distribute.DistributedTrainer implements under a strategy.
    is_chief = True  # writes the checkpoints

    def batches(self, h5_path: str, start_batch: int):
        return data.minibatches(h5_path, "train", self.layouts["train"], start_batch)

    def reset_states(self) -> None:
        model_lib.reset_states(self.model)

    def checkpoint_charrnn(self) -> CharRNN:
        return self.charrnn

    # Training state beyond the weights: optimizer slots (with the iteration, hence the LR schedule
    # position and the data position), the carried RNN state and non-trainable variables (dropout RNG,
    # batch-norm statistics). Keyed by name, never by position: Adam's m and v slots have equal shapes,
    # so a reordering (a later Keras) would otherwise restore silently wrong.
    def _named_variables(self) -> Dict[str, object]:
        named = {}
        for v in self.optimizer.variables:  # "adam/lstm_0_lstm_cell_kernel_momentum": drop the optimizer's name
            named["optimizer/" + v.path.split("/", 1)[-1]] = v
        for stage in model_lib.layer_stack(self.model):
            # a layer's own name, not the variable path: seed generators are numbered per process
            for k, v in enumerate(stage.layer.non_trainable_variables):
                named[f"non_trainable/{stage.layer.name}/{k}/{v.name}"] = v
        for stage in model_lib.recurrent_stages(self.model):
            for part, v in zip(stage.kind.state_parts, stage.layer.states):
                named[f"rnn_state/{stage.layer.name}/{part}"] = v
        for stage in model_lib.stateful_stages(self.model):
            if stage.role == "copy":
                for part, v in zip(copy_attention.MEMORY_PARTS, stage.layer.states):
                    named[f"copy_memory/{stage.layer.name}/{part}"] = v
        return named

    def state_arrays(self) -> Dict[str, np.ndarray]:
        return {name: v.numpy() for name, v in self._named_variables().items()}

    def restore_state(self, arrays: Dict[str, np.ndarray], source: str) -> None:
        """Puts back what state_arrays saved; reads v0.1.0's positional keys ("optimizer/0") too."""
        if "optimizer/0" in arrays:
            arrays = self._v010_names(arrays)
        named = self._named_variables()
        missing = sorted(set(named) - set(arrays))
        unexpected = sorted(set(arrays) - set(named))
        if missing or unexpected:
            raise UserError(f"{source}: training state does not fit this model"
                            f" ({(missing or unexpected)[0]} {'missing' if missing else 'unexpected'})")
        for name, v in named.items():
            if tuple(arrays[name].shape) != tuple(v.shape):
                raise UserError(f"{source}: training state does not fit this model ({name} has shape"
                                f" {tuple(arrays[name].shape)}, the model wants {tuple(v.shape)})")
        for name, v in named.items():
            v.assign(arrays[name])

    def _v010_names(self, arrays: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        """v0.1.0 saved by position in optimizer.variables, model.non_trainable_variables and the states."""
        by_position = {}
        groups = [("optimizer", self.optimizer.variables), ("non_trainable", self.model.non_trainable_variables),
                  ("rnn_state", model_lib.state_variables(self.model))]
        names = {id(v): name for name, v in self._named_variables().items()}
        for prefix, variables in groups:
            for i, v in enumerate(variables):
                if f"{prefix}/{i}" in arrays:
                    by_position[names[id(v)]] = arrays[f"{prefix}/{i}"]
        return by_position

    @property
    def iteration(self) -> int:
        return int(self.optimizer.iterations.numpy())

    def evaluate(self, h5_path: str, split: str) -> Optional[float]:
        """Mean loss over a whole split, state carried from zero; the training state is put back after."""
        layout = self.layouts[split]
        if layout.num_batches == 0:
            return None
        saved = model_lib.get_states(self.model)
        loss = evaluate.split_loss(self.model, h5_path, split, layout, self._eval_step)
        model_lib.set_states(self.model, saved)
        return loss


def _peak_memory_bytes() -> int:
    if tf.config.list_logical_devices("GPU"):
        return int(tf.config.experimental.get_memory_info("GPU:0")["peak"])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def parameter_advice(num_params: int, num_characters: int) -> str:
    """char-rnn's rule of thumb: parameters and training characters within an order of magnitude."""
    ratio = num_params / max(num_characters, 1)
    line = f"{num_params:,} parameters, {num_characters:,} training characters (ratio {ratio:.2g})"
    if ratio > 10:
        return line + ": far more parameters than data; the model can memorise it: raise --dropout or shrink it"
    if ratio < 0.1:
        return line + ": far more data than parameters; the model underfits: make it larger (--rnn_size)"
    return line + ": within an order of magnitude (char-rnn's advice); watch the val loss for overfitting"


# A time-budgeted cosine run learns its length from its speed: timed over at least this many iterations
# (the first, compiling, left out) and 2% of the budget, up to the first checkpoint so that validation
# time counts too (or over 10% of the budget, if no checkpoint comes sooner).
SPEED_PROBE_ITERS = 20


def train_and_evaluate(
    config: TrainConfig,
    charrnn: CharRNN,
    layouts: Dict[str, data.StreamLayout],
    resume: Optional[ckpt.CheckpointRecord] = None,
    start_iteration: int = 0,
    log=print,
    strategy=None,
) -> TrainResult:
    """Trains (or resumes), validating and checkpointing as train.lua does.

    Args:
      config: the training options.
      charrnn: the model to train, built at config.batch_size (fresh, --init_from or --resume_from weights);
        its vocabulary travels inside every checkpoint.
      layouts: stream layouts of the train/val/test splits (see data.layouts_for).
      resume: the checkpoint record to continue from; its state file must sit beside it.
      start_iteration: iteration counter to start at (--init_from with --reset_iterations 0).
      log: where progress lines go.
      strategy: a tf.distribute strategy from distribute.make_strategy, or None for one device.

    Returns:
      A TrainResult naming the last checkpoint written.
    """
    started = time.perf_counter()
    if strategy is None:  # replicas=1: a run resumed from a distributed checkpoint records one device
        trainer = Trainer(dataclasses.replace(config, replicas=1), charrnn, layouts)
    else:  # scale-out: state carried per replica (distribute.py)
        trainer = distribute.DistributedTrainer(strategy, config, charrnn, layouts, Trainer)
    history = {key: [] for key in ckpt.HISTORY_KEYS}
    best_val = math.inf
    spent_before = 0.0  # training time of the run this one resumes
    if resume is not None:
        trainer.restore_state(ckpt.load_state(resume.state_path), resume.path)
        history = {key: list(values) for key, values in resume.history.items()}
        best_val = resume.best_val_loss if resume.best_val_loss is not None else math.inf
        spent_before = resume.elapsed_seconds
    elif start_iteration:
        trainer.optimizer.iterations.assign(start_iteration)

    num_train = layouts["train"].num_batches
    num_iterations = config.max_epochs * num_train
    if config.max_iters:
        num_iterations = min(num_iterations, config.max_iters)
    iteration = trainer.iteration
    budget = config.max_minutes * 60 if config.max_minutes else math.inf
    if config.lr_schedule == "cosine" and not config.lr_schedule_iters and not config.max_minutes:
        trainer.set_schedule_length(num_iterations)
    config = trainer.config  # the training path and the schedule's length resolved, as checkpoints record them
    probe_from = None  # (iteration, time) where a time-budgeted cosine run starts timing itself
    fit_to_budget = config.lr_schedule == "cosine" and bool(config.max_minutes)
    log(f"Model: {charrnn.config.model_type} {charrnn.config.num_layers} x {charrnn.config.rnn_size};"
        f" {parameter_advice(charrnn.count_params(), layouts['train'].tokens_covered)}")
    path_name = {"split": "fused (split)", "on": "fused", "off": "Keras"}[trainer.path_choice.path]
    log(f"{num_train} minibatches per epoch; {path_name} training path ({trainer.path_choice.why});"
        f" learning rate: {config.lr_schedule}" + (f", time budget {config.max_minutes:g} minutes" if config.max_minutes
                                                   else ""))
    writer = tf.summary.create_file_writer(config.tensorboard_dir) if config.tensorboard_dir else None
    plot_path = config.checkpoint_name + "_loss.png"
    if not plots.available():
        log("matplotlib is not installed: no loss plot (pip install 'kerascharrnn[plot]')")

    def elapsed() -> float:
        return spent_before + time.perf_counter() - started

    def probe_due(share_of_budget: float) -> bool:
        return bool(probe_from) and iteration - probe_from[0] >= SPEED_PROBE_ITERS and (
            time.perf_counter() - probe_from[1] >= share_of_budget * budget)

    def fit_schedule_length() -> TrainConfig:
        """A time budget only: from the speed measured so far, where the cosine must end to fit in it.

        Fitted once the speed is known, then again at every checkpoint: the speed drifts over a run
        (other load, the compiled step warming up), and a schedule fixed once ended ~15% early or late.
        """
        per_iteration = (time.perf_counter() - probe_from[1]) / (iteration - probe_from[0])
        remaining = max(budget - elapsed(), 0.0)
        first = not trainer.config.lr_schedule_iters
        trainer.set_schedule_length(min(num_iterations, iteration + int(remaining / per_iteration)))
        if first:
            log(f"Measured {per_iteration * 1000:.1f} ms per iteration, validation included: the cosine schedule"
                f" ends at iteration {trainer.config.lr_schedule_iters} (refitted at every checkpoint)")
        return trainer.config

    def write_checkpoint(val_loss):
        nonlocal best_val
        record = ckpt.CheckpointRecord(
            path="", iteration=iteration, model_file="", state_file="", model_config=charrnn.config,
            train_config=trainer.config, vocab=charrnn.vocab, history=history,
            best_val_loss=min(best_val, val_loss) if val_loss is not None else
            (best_val if math.isfinite(best_val) else None), elapsed_seconds=elapsed())
        state = trainer.state_arrays()
        paths = ckpt.CheckpointPaths.for_tag(config.checkpoint_name, iteration)
        try:
            if trainer.is_chief:  # multi_worker: the other workers write nothing
                ckpt.save_checkpoint(paths, trainer.checkpoint_charrnn(), state, record, num_train)
            if val_loss is not None and val_loss < best_val:
                best_val = val_loss
                if trainer.is_chief:
                    ckpt.save_checkpoint(ckpt.CheckpointPaths.for_tag(config.checkpoint_name, "best"),
                                         trainer.checkpoint_charrnn(), state, record, num_train)
            if plots.available() and trainer.is_chief:
                plots.write_loss_plot(plot_path, history["train_loss_history"], history["val_loss_history"],
                                      history["val_loss_history_it"], history["learning_rate_history"],
                                      title=os.path.basename(config.checkpoint_name))
        except OSError as e:
            raise UserError(f"could not write checkpoint {paths.model}: {e.strerror or e};"
                            " the previous checkpoint is intact") from None
        return paths.json

    last_json = None
    tokens_per_step = config.batch_size * config.seq_length
    window_start, window_steps = time.perf_counter(), 0
    out_of_time = False
    with _StopSignal() as stop:
        while iteration < num_iterations and stop.signum is None and not out_of_time:
            epoch, batch = divmod(iteration, num_train)
            if batch == 0:
                trainer.reset_states()
            for inputs, targets in trainer.batches(config.input_h5, batch):
                step_start = time.perf_counter()
                history["learning_rate_history"].append(trainer.learning_rate())
                loss = float(trainer.train_step(inputs, targets))
                iteration += 1
                window_steps += 1
                if not math.isfinite(loss):
                    where = f"; the last good checkpoint is {last_json}" if last_json else ""
                    raise UserError(f"loss became {loss} at iteration {iteration}{where};"
                                    " try a lower --learning_rate or --grad_clip")
                history["train_loss_history"].append(loss)
                if probe_from is None and fit_to_budget:
                    probe_from = (iteration, time.perf_counter())  # timed from here: the first step compiled
                if config.speed_benchmark:
                    step_elapsed = time.perf_counter() - step_start
                    history["forward_backward_times"].append(step_elapsed)
                    log(f"Forward / backward pass took {step_elapsed:f}")
                if config.memory_benchmark:
                    history["memory_usage"].append(_peak_memory_bytes())
                    log(f"Peak memory use: {history['memory_usage'][-1] / 2**20:.1f} MiB")
                if config.print_every and iteration % config.print_every == 0:
                    now = time.perf_counter()
                    tokens_per_s = window_steps * tokens_per_step / max(now - window_start, 1e-9)
                    window_start, window_steps = now, 0
                    log(f"Epoch {iteration / num_train + 1:.2f} / {config.max_epochs},"
                        f" i = {iteration} / {num_iterations}, loss = {loss:f}"
                        f" ({tokens_per_s:,.0f} tokens/s)")
                    if writer:
                        with writer.as_default(step=iteration):
                            tf.summary.scalar("train/loss", loss)
                            tf.summary.scalar("learning_rate", history["learning_rate_history"][-1])
                            tf.summary.scalar("tokens_per_second", tokens_per_s)
                out_of_time = elapsed() >= budget
                at_end = iteration >= num_iterations or out_of_time
                checkpoint_due = (config.checkpoint_every and iteration % config.checkpoint_every == 0) or at_end
                if probe_due(0.1) and not checkpoint_due and not config.lr_schedule_iters:
                    config = fit_schedule_length()  # no checkpoint (validation) to time with came soon enough
                if checkpoint_due or stop.signum:
                    if out_of_time:
                        log(f"Time budget of {config.max_minutes:g} minutes spent at iteration {iteration}")
                    val_loss = trainer.evaluate(config.input_h5, "val")
                    if probe_due(0.02) and not at_end:
                        config = fit_schedule_length()  # timed with validation passes in it
                    if val_loss is not None:
                        history["val_loss_history"].append(val_loss)
                        history["val_loss_history_it"].append(iteration)
                        log(f"i = {iteration}, val_loss = {val_loss:f}")
                        if writer:
                            with writer.as_default(step=iteration):
                                tf.summary.scalar("val/loss", val_loss)
                    last_json = write_checkpoint(val_loss)
                    if trainer.is_chief:
                        log(f"Saved checkpoint {ckpt.CheckpointPaths.for_tag(config.checkpoint_name, iteration).model}")
                    window_start, window_steps = time.perf_counter(), 0
                if at_end or stop.signum:
                    break
    if writer:
        writer.flush()
    if last_json is None:  # nothing left to train (resumed at the end): the checkpoint we came from
        last_json = resume.path if resume else write_checkpoint(trainer.evaluate(config.input_h5, "val"))
    return TrainResult(last_json, iteration, history["train_loss_history"], history["val_loss_history"],
                       interrupted_by=stop.signum)
