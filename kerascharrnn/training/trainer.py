"""What trains a CharRNN on one device: the optimizer, the compiled train step, validation, and the training
state a checkpoint keeps. `TrainerProtocol` is what the training loop (loop.py) needs of a trainer;
distributed/trainer.py implements it under a tf.distribute strategy."""

from __future__ import annotations

import dataclasses
from typing import Dict, Iterator, Optional, Protocol, Tuple

import keras
import numpy as np
import tensorflow as tf

from kerascharrnn import devices, resources, upstream
from kerascharrnn.config import TrainConfig
from kerascharrnn.data import batches
from kerascharrnn.errors import UserError
from kerascharrnn.models import stack
from kerascharrnn.models.charrnn import CharRNN
from kerascharrnn.training import calibration, evaluate, fused, path_choice, schedule


class TrainerProtocol(Protocol):
    """What the training loop needs of a trainer.

    Attributes:
      config: the run's settings, resolved (the training path, the schedule's end) as checkpoints record them.
      path_choice: how it trains, and why (for the log).
      is_chief: whether this process writes the checkpoints (not so on other workers of a cluster).
    """

    config: TrainConfig
    path_choice: path_choice.PathChoice
    is_chief: bool

    @property
    def iteration(self) -> int:
        """Iterations done (the optimizer's counter)."""

    def start_at(self, iteration: int) -> None:
        """Sets the iteration counter (a run that starts from another's weights and keeps its count)."""

    def batches(self, h5_path: str, start_batch: int) -> Iterator[Tuple[tf.Tensor, tf.Tensor]]:
        """The training split's minibatches from `start_batch` to the end of the epoch."""

    def train_step(self, inputs, targets) -> tf.Tensor:
        """One optimizer step; returns the loss."""

    def reset_states(self) -> None:
        """Zeroes the carried state (an epoch starts)."""

    def evaluate(self, h5_path: str, split: str) -> Optional[float]:
        """Mean loss over a whole split (None if it is empty); the training state is left as it was."""

    def learning_rate(self) -> float:
        """The rate the next step will use."""

    def set_schedule_length(self, total_iterations: int) -> None:
        """Fixes where the cosine schedule ends."""

    @property
    def schedule_length(self) -> int:
        """The iteration the cosine schedule ends at (0: not fixed yet)."""

    def recorded_config(self) -> TrainConfig:
        """`config` as a checkpoint records it: with the path this run trains through and where its schedule
        ends, so that a resumed run takes the same path and follows the same curve."""

    def state_arrays(self) -> Dict[str, np.ndarray]:
        """The training state beyond the weights, by name (every worker of a cluster must call it)."""

    def restore_state(self, arrays: Dict[str, np.ndarray], source: str) -> None:
        """Puts back what state_arrays saved."""

    def checkpoint_charrnn(self) -> CharRNN:
        """The one-device CharRNN holding the trained weights, which a checkpoint saves."""


class Trainer:
    """TrainerProtocol on one device, over a CharRNN built at the run's batch size.

    `config` is the run's, kept as given; `config.fused` ("auto" -> "split"/"on"/"off") is chosen here and the
    schedule's end may be fitted as the run goes: `recorded_config()` is the config with both, as the checkpoints
    record it.
    """

    is_chief = True

    def __init__(self, config: TrainConfig, charrnn: CharRNN, layouts: Dict[str, batches.StreamLayout]):
        self.charrnn = charrnn
        self.model = model = charrnn.model
        self.layouts = layouts
        # On a CPU, recurrent layers may train through fused.py under XLA (hoisted projections, one-matmul
        # weight gradients; "split": two halves of the batch at once, one per core); on a GPU the Keras call
        # runs cuDNN. Same layers and weights either way.
        self.path_choice = path_choice.choose(
            model, config.fused, on_gpu=devices.on_gpu(), cpu_cores=resources.cpu_cores(),
            speeds=lambda path: calibration.measured_speed(
                calibration.config_key(charrnn.config, dataclasses.replace(config, fused=path))))
        self.config = config
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
            self._apply_gradients = tf.function(self._apply_gradients, jit_compile=True, autograph=False)
            self.train_step = tf.function(self._split_train_step, autograph=False)  # its pieces are XLA computations
        else:
            self.train_step = tf.function(self._train_step, jit_compile=self.path_choice.fused, autograph=False)

    def _train_step(self, inputs, targets):
        with tf.GradientTape() as tape:
            if self.path_choice.fused:
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
        return float(self.optimizer.learning_rate)

    def set_schedule_length(self, total_iterations: int) -> None:
        self.schedule.total.assign(total_iterations)

    @property
    def schedule_length(self) -> int:
        return int(self.schedule.total.numpy())

    def recorded_config(self) -> TrainConfig:
        return dataclasses.replace(self.config, fused=self.path_choice.path, lr_schedule_iters=self.schedule_length)

    @property
    def iteration(self) -> int:
        return int(self.optimizer.iterations.numpy())

    def start_at(self, iteration: int) -> None:
        self.optimizer.iterations.assign(iteration)

    def batches(self, h5_path: str, start_batch: int):
        return batches.minibatches(h5_path, "train", self.layouts["train"], start_batch)

    def reset_states(self) -> None:
        stack.reset_states(self.model)

    def checkpoint_charrnn(self) -> CharRNN:
        return self.charrnn

    def evaluate(self, h5_path: str, split: str) -> Optional[float]:
        layout = self.layouts[split]
        if layout.num_batches == 0:
            return None
        saved = stack.get_states(self.model)
        loss = evaluate.split_loss(self.model, h5_path, split, layout, self._eval_step)
        stack.set_states(self.model, saved)
        return loss

    # Training state beyond the weights: optimizer slots (with the iteration, hence the LR schedule
    # position and the data position), the carried state and non-trainable variables (dropout RNG,
    # batch-norm statistics). Keyed by name, never by position: Adam's m and v slots have equal shapes,
    # so a reordering (a later Keras) would otherwise restore silently wrong.
    def _named_variables(self) -> Dict[str, tf.Variable]:
        named = {}
        for name, v in upstream.optimizer_variable_names(self.optimizer).items():
            named["optimizer/" + name] = v
        for stage in stack.layer_stack(self.model):
            # a layer's own name, not the variable path: seed generators are numbered per process
            for k, v in enumerate(stage.layer.non_trainable_variables):
                named[f"non_trainable/{stage.layer.name}/{k}/{v.name}"] = v
        named.update(stack.carried_variables(self.model))
        return named

    def state_arrays(self) -> Dict[str, np.ndarray]:
        return {name: v.numpy() for name, v in self._named_variables().items()}

    def restore_state(self, arrays: Dict[str, np.ndarray], source: str) -> None:
        """Also reads v0.1.0's positional keys ("optimizer/0")."""
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
                  ("rnn_state", list(stack.carried_variables(self.model).values()))]
        names = {id(v): name for name, v in self._named_variables().items()}
        for prefix, variables in groups:
            for i, v in enumerate(variables):
                if f"{prefix}/{i}" in arrays:
                    by_position[names[id(v)]] = arrays[f"{prefix}/{i}"]
        return by_position
