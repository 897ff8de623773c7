"""The training loop of torch-rnn's train.lua: stateful truncated BPTT, validation, checkpoints, resume."""

from __future__ import annotations

import dataclasses
import math
import resource
import signal
import time
from typing import Dict, List, Optional

import keras
import numpy as np
import tensorflow as tf

from kerascharrnn import checkpoint as ckpt
from kerascharrnn import data, fused
from kerascharrnn import model as model_lib
from kerascharrnn.config import ModelConfig, TrainConfig
from kerascharrnn.errors import UserError
from kerascharrnn.vocab import Vocabulary


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


def configure_devices(gpu: int, seed: Optional[int]) -> None:
    """--gpu -1 hides GPUs; --seed seeds every RNG and turns on op determinism."""
    if gpu < 0:
        tf.config.set_visible_devices([], "GPU")
    else:
        gpus = tf.config.list_physical_devices("GPU")
        if gpus and gpu >= len(gpus):
            raise UserError(f"--gpu {gpu}: TensorFlow sees {len(gpus)} GPU(s)")
        if gpus:
            tf.config.set_visible_devices(gpus[gpu], "GPU")
    if seed is not None:
        keras.utils.set_random_seed(seed)
        tf.config.experimental.enable_op_determinism()


def make_eval_step(model: keras.Model):
    """A compiled (inputs, targets, row_weights) -> (summed loss, token count) for a stateful model."""

    @tf.function
    def eval_step(inputs, targets, row_weights):
        logits = model(inputs, training=False)
        per_token = keras.losses.sparse_categorical_crossentropy(targets, logits, from_logits=True)  # (N, T)
        weights = tf.broadcast_to(row_weights[:, None], tf.shape(per_token))
        return tf.reduce_sum(per_token * weights), tf.reduce_sum(weights)

    return eval_step


def split_loss(model: keras.Model, h5_path: str, split: str, layout: data.StreamLayout, eval_step=None) -> float:
    """Mean cross-entropy (nats per token) over a whole split, the state carried from zero.

    Leaves the model's carried state changed; callers that care save and restore it.
    """
    eval_step = eval_step or make_eval_step(model)
    model_lib.reset_states(model)
    weights = tf.constant(data.row_weights(layout))
    total, count = 0.0, 0.0
    for inputs, targets in data.make_dataset(h5_path, split, layout):
        loss_sum, n = eval_step(inputs, targets, weights)
        total += float(loss_sum)
        count += float(n)
    return total / count


class Trainer:
    """Owns the model, optimizer and compiled steps of one training run."""

    def __init__(self, config: TrainConfig, model: keras.Model, layouts: Dict[str, data.StreamLayout],
                 use_fused: Optional[bool] = None):
        self.config = config
        self.model = model
        self.layouts = layouts
        num_train = layouts["train"].num_batches
        schedule = keras.optimizers.schedules.ExponentialDecay(
            config.learning_rate, decay_steps=config.lr_decay_every * num_train,
            decay_rate=config.lr_decay_factor, staircase=True)
        # torch-rnn clamps every gradient element to [-grad_clip, grad_clip]: that is clipvalue.
        self.optimizer = keras.optimizers.Adam(
            learning_rate=schedule, epsilon=1e-8, clipvalue=config.grad_clip or None)
        self.optimizer.build(model.trainable_variables)
        self._loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        self._eval_step = make_eval_step(model)
        # On a CPU, LSTMs train through fused.forward under XLA (hoisted projections, one-matmul weight
        # gradients) where that measured faster; on a GPU the Keras call runs cuDNN. Same layers and
        # weights either way.
        self.fused = (fused.supports(model) and fused.pays_off(model)
                      and not tf.config.list_logical_devices("GPU"))
        if use_fused is not None:  # benchmarks compare both paths
            self.fused = use_fused and fused.supports(model)
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

    def learning_rate(self) -> float:
        return float(self.optimizer.learning_rate)

    # Training state beyond the weights: optimizer slots (with the iteration, hence the LR schedule
    # position and the data position), the carried RNN state and non-trainable variables (dropout RNG).
    def state_arrays(self) -> Dict[str, np.ndarray]:
        arrays = {}
        for i, v in enumerate(self.optimizer.variables):
            arrays[f"optimizer/{i}"] = v.numpy()
        for i, value in enumerate(model_lib.get_states(self.model)):
            arrays[f"rnn_state/{i}"] = value
        for i, v in enumerate(self.model.non_trainable_variables):
            arrays[f"non_trainable/{i}"] = v.numpy()
        return arrays

    def restore_state(self, arrays: Dict[str, np.ndarray], source: str) -> None:
        groups = {"optimizer": list(self.optimizer.variables), "non_trainable": list(self.model.non_trainable_variables)}
        for prefix, variables in groups.items():
            keys = [k for k in arrays if k.startswith(prefix + "/")]
            if len(keys) != len(variables):
                raise UserError(f"{source}: training state does not fit this model ({prefix})")
            for i, v in enumerate(variables):
                value = arrays[f"{prefix}/{i}"]
                if tuple(value.shape) != tuple(v.shape):
                    raise UserError(f"{source}: training state does not fit this model ({v.path})")
                v.assign(value)
        states = [arrays[k] for k in sorted((k for k in arrays if k.startswith("rnn_state/")),
                                            key=lambda k: int(k.split("/")[1]))]
        model_lib.set_states(self.model, states)

    @property
    def iteration(self) -> int:
        return int(self.optimizer.iterations.numpy())

    def evaluate(self, h5_path: str, split: str) -> Optional[float]:
        """Mean loss over a whole split, state carried from zero; the training state is put back after."""
        layout = self.layouts[split]
        if layout.num_batches == 0:
            return None
        saved = model_lib.get_states(self.model)
        loss = split_loss(self.model, h5_path, split, layout, self._eval_step)
        model_lib.set_states(self.model, saved)
        return loss


def _peak_memory_bytes() -> int:
    if tf.config.list_logical_devices("GPU"):
        return int(tf.config.experimental.get_memory_info("GPU:0")["peak"])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def train_and_evaluate(
    config: TrainConfig,
    model_config: ModelConfig,
    vocab: Vocabulary,
    layouts: Dict[str, data.StreamLayout],
    model: Optional[keras.Model] = None,
    resume: Optional[dict] = None,
    start_iteration: int = 0,
    log=print,
) -> TrainResult:
    """Trains (or resumes), validating and checkpointing as train.lua does.

    Args:
      config: the training options.
      model_config: the architecture (ignored when `model` is given).
      vocab: the corpus vocabulary; it travels inside every checkpoint.
      layouts: stream layouts of the train/val/test splits (see data.layouts_for).
      model: weights to start from (--init_from / --resume_from), already built at config.batch_size.
      resume: the checkpoint JSON record to continue from; its state file must sit beside it.
      start_iteration: iteration counter to start at (--init_from with --reset_iterations 0).
      log: where progress lines go.

    Returns:
      A TrainResult naming the last checkpoint written.
    """
    model = model or model_lib.build_model(model_config, config.batch_size)
    trainer = Trainer(config, model, layouts)
    history = {"train_loss_history": [], "val_loss_history": [], "val_loss_history_it": [],
               "forward_backward_times": [], "memory_usage": []}
    best_val = math.inf
    if resume is not None:
        trainer.restore_state(ckpt.load_state(ckpt.sibling(resume["_path"], resume["state_file"])), resume["_path"])
        for key in history:
            history[key] = list(resume.get(key, []))
        best_val = resume.get("best_val_loss") or math.inf
    elif start_iteration:
        trainer.optimizer.iterations.assign(start_iteration)

    num_train = layouts["train"].num_batches
    num_iterations = config.max_epochs * num_train
    if config.max_iters:
        num_iterations = min(num_iterations, config.max_iters)
    iteration = trainer.iteration
    log(f"Model: {model_config.model_type} {model_config.num_layers} x {model_config.rnn_size},"
        f" {model_lib.count_params(model):,} parameters; {num_train} minibatches per epoch")
    writer = tf.summary.create_file_writer(config.tensorboard_dir) if config.tensorboard_dir else None

    def write_checkpoint(val_loss):
        nonlocal best_val
        info = dict(history, iteration=iteration, epoch=iteration / num_train,
                    model_config=dataclasses.asdict(model_config), train_config=dataclasses.asdict(config),
                    best_val_loss=min(best_val, val_loss) if val_loss is not None else
                    (best_val if math.isfinite(best_val) else None))
        state = trainer.state_arrays()
        paths = ckpt.CheckpointPaths.for_tag(config.checkpoint_name, iteration)
        try:
            ckpt.save_checkpoint(paths, model, vocab, state, info)
            if val_loss is not None and val_loss < best_val:
                best_val = val_loss
                ckpt.save_checkpoint(ckpt.CheckpointPaths.for_tag(config.checkpoint_name, "best"),
                                     model, vocab, state, info)
        except OSError as e:
            raise UserError(f"could not write checkpoint {paths.model}: {e.strerror or e};"
                            " the previous checkpoint is intact") from None
        return paths.json

    last_json = None
    tokens_per_step = config.batch_size * config.seq_length
    window_start, window_steps = time.perf_counter(), 0
    with _StopSignal() as stop:
        while iteration < num_iterations and stop.signum is None:
            epoch, batch = divmod(iteration, num_train)
            if batch == 0:
                model_lib.reset_states(model)
            for inputs, targets in data.make_dataset(config.input_h5, "train", layouts["train"], batch):
                step_start = time.perf_counter()
                loss = float(trainer.train_step(inputs, targets))
                iteration += 1
                window_steps += 1
                if not math.isfinite(loss):
                    where = f"; the last good checkpoint is {last_json}" if last_json else ""
                    raise UserError(f"loss became {loss} at iteration {iteration}{where};"
                                    " try a lower --learning_rate or --grad_clip")
                history["train_loss_history"].append(loss)
                if config.speed_benchmark:
                    elapsed = time.perf_counter() - step_start
                    history["forward_backward_times"].append(elapsed)
                    log(f"Forward / backward pass took {elapsed:f}")
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
                            tf.summary.scalar("learning_rate", trainer.learning_rate())
                            tf.summary.scalar("tokens_per_second", tokens_per_s)
                at_end = iteration >= num_iterations
                if (config.checkpoint_every and iteration % config.checkpoint_every == 0) or at_end or stop.signum:
                    val_loss = trainer.evaluate(config.input_h5, "val")
                    if val_loss is not None:
                        history["val_loss_history"].append(val_loss)
                        history["val_loss_history_it"].append(iteration)
                        log(f"i = {iteration}, val_loss = {val_loss:f}")
                        if writer:
                            with writer.as_default(step=iteration):
                                tf.summary.scalar("val/loss", val_loss)
                    last_json = write_checkpoint(val_loss)
                    log(f"Saved checkpoint {ckpt.CheckpointPaths.for_tag(config.checkpoint_name, iteration).model}")
                    window_start, window_steps = time.perf_counter(), 0
                if at_end or stop.signum:
                    break
    if writer:
        writer.flush()
    if last_json is None:  # nothing left to train (resumed at the end): the checkpoint we came from
        last_json = resume["_path"] if resume else write_checkpoint(trainer.evaluate(config.input_h5, "val"))
    return TrainResult(last_json, iteration, history["train_loss_history"], history["val_loss_history"],
                       interrupted_by=stop.signum)
