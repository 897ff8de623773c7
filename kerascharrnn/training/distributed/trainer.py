"""Training under a tf.distribute strategy, the carried state explicit per replica.

Keras 3 stateful layers cannot run under a strategy (their state is one variable sized for the global
batch). So under `strategy` mirrored or multi_worker the training step calls the same layers in their
replica form (models/stack.py): each recurrent layer's `inner_loop` (the code its stateful call runs,
cuDNN on a GPU included) on per-replica state tensors that `strategy.run` carries from one minibatch to
the next. Replica r owns streams r*n .. r*n+n-1 (n = N / replicas) for the whole run and reads only their
rows from the HDF5 file (distribute_datasets_from_function), so every stream sees exactly what it sees on
one device.

The loss is each replica's token-loss sum over the global N*T count; the gradients are summed over the
replicas (one all-reduce), and the optimizer then applies them in cross-replica context, where Keras
clips (clipvalue) the reduced gradient exactly as on one device. The saved model stays the stock
stateful model at the global batch, and the checkpoint's carried state is the (N, H) array one device
would have: a distributed checkpoint samples, exports, serves and resumes anywhere.
"""

from __future__ import annotations

import dataclasses
from typing import Dict, List, Optional

import h5py
import keras
import numpy as np
import tensorflow as tf

from kerascharrnn import upstream
from kerascharrnn.config import MULTI_WORKER, check_replicas
from kerascharrnn.data import batches
from kerascharrnn.models import stack
from kerascharrnn.models.charrnn import CharRNN
from kerascharrnn.training import path_choice
from kerascharrnn.training.distributed.cluster import cluster_from_env, lost_worker_error
from kerascharrnn.training.trainer import Trainer


class DistributedTrainer:
    """trainer.TrainerProtocol under a strategy.

    Built from a Trainer made under `strategy.scope()` over a twin of the model (same weights, mirrored
    variables); the caller's CharRNN stays a one-device model and receives the weights at each checkpoint.
    """

    def __init__(self, strategy, config, charrnn: CharRNN, layouts: Dict[str, batches.StreamLayout]):
        self.strategy = strategy
        self.replicas = strategy.num_replicas_in_sync
        check_replicas(config.batch_size, self.replicas)
        self.charrnn = charrnn  # one device: what the checkpoints save
        self.layouts = layouts
        with strategy.scope():
            twin = CharRNN.build(charrnn.config, charrnn.vocab, config.batch_size)
            twin.model.set_weights(charrnn.model.get_weights())
            # the fused XLA path (fused.py) is one-device code: a strategy trains through the Keras layers, and
            # records "off" (a one-device checkpoint that trained fused resumes here too)
            self._trainer = Trainer(dataclasses.replace(config, fused="off"), twin, layouts)
        self.config = config
        self.path_choice = path_choice.PathChoice("off", "a distribution strategy: the Keras layers")
        self.optimizer = self._trainer.optimizer
        self.model = twin.model
        self._stages = stack.layer_stack(self.model)
        # the replicas carry the stateful layers' state, each its share of the (N, H) rows
        replica_state = {name: width for stage in self._stages for name, width in stage.replica_state().items()}
        self._state_names, self._sizes = list(replica_state), list(replica_state.values())
        self._per_replica = config.batch_size // self.replicas
        self._own_task, self._tasks = "worker 0", ["worker 0"]
        self.is_chief = True
        if config.strategy == MULTI_WORKER:
            cluster = cluster_from_env()
            self._own_task, self.is_chief = cluster.name, cluster.is_chief
            self._tasks = cluster.task_names
        # which global replica ids live in this process (MultiWorkerMirroredStrategy: this worker's)
        ids = strategy.experimental_distribute_values_from_function(lambda ctx: ctx.replica_id_in_sync_group)
        self._local_ids = [int(i) for i in strategy.experimental_local_results(ids)]
        self._states = self._distribute_rows([np.zeros((config.batch_size, h), np.float32) for h in self._sizes])
        self._train_fn = tf.function(self._train_step, autograph=False)
        self._eval_fn = tf.function(self._eval_step, autograph=False)
        self._dropout_seed = int(config.seed or 0)

    # --- per-replica values ---------------------------------------------------------------------------

    def _rows(self, replica_id: int) -> range:
        return range(replica_id * self._per_replica, (replica_id + 1) * self._per_replica)

    def _distribute(self, by_replica: Dict[int, object]):
        return self.strategy.experimental_distribute_values_from_function(
            lambda ctx: by_replica[ctx.replica_id_in_sync_group])

    def _distribute_rows(self, arrays: List[np.ndarray]):
        """(N, ...) arrays -> a tuple of per-replica values, replica r holding rows _rows(r)."""
        return tuple(self._distribute({r: array[self._rows(r).start:self._rows(r).stop] for r in self._local_ids})
                     for array in arrays)

    def _batches(self, h5_path: str, split: str, layout, start_batch: int = 0):
        """Per-replica (inputs, targets) minibatches through distribute_datasets_from_function: this worker's
        pipeline reads only its replicas' rows of the HDF5 file, and yields them replica after replica, the
        order in which the strategy hands consecutive elements to a worker's replicas."""
        local_ids, n, T = self._local_ids, self._per_replica, layout.seq_length

        def generate():
            with h5py.File(h5_path, "r") as f:
                readers = [batches.batch_arrays(f[split], layout, start_batch, rows=self._rows(r)) for r in local_ids]
                for _ in range(start_batch, layout.num_batches):
                    for reader in readers:
                        yield next(reader)

        def dataset_fn(context):
            del context  # one pipeline per worker; its replicas are local_ids
            spec = tf.TensorSpec((n, T), tf.int32)
            return tf.data.Dataset.from_generator(generate, output_signature=(spec, spec)).prefetch(tf.data.AUTOTUNE)

        return self.strategy.distribute_datasets_from_function(dataset_fn)

    # --- the model with explicit state --------------------------------------------------------------

    def _forward(self, ids, states, training: bool, step_seed=None):
        """The stateful model's computation on (n, T) ids, each layer in its replica form with explicit state:
        (logits (n, T, V), new states)."""
        x, states, new_states = ids, list(states), []
        if training:
            replica = tf.cast(tf.distribute.get_replica_context().replica_id_in_sync_group, tf.int64)
            draw = tf.cast(step_seed, tf.int64) * self.replicas + replica
        for index, stage in enumerate(self._stages):
            count = len(stage.replica_state())
            own, states = states[:count], states[count:]
            # a stateless seed keyed by (layer, iteration, replica): the same draws again on resume
            seed = tf.stack([tf.constant(self._dropout_seed * 1000 + index, tf.int64), draw]) if training else None
            x, updated = stage.replica(x, ids, tuple(own), seed, training)
            new_states.extend(updated)
        return x, tuple(new_states)

    @staticmethod
    def _token_losses(targets, logits):
        return keras.losses.sparse_categorical_crossentropy(targets, logits, from_logits=True)  # (n, T)

    def _train_step(self, inputs, targets, states):
        global_tokens = float(self.config.batch_size * self.config.seq_length)
        variables = self.model.trainable_variables
        step_seed = tf.convert_to_tensor(self.optimizer.iterations)

        def replica_step(x, y, s):
            with tf.GradientTape() as tape:
                logits, new_s = self._forward(x, s, training=True, step_seed=step_seed)
                # the global mean's share: summed over replicas, loss and gradients are one device's
                loss = tf.reduce_sum(self._token_losses(y, logits)) / global_tokens
            grads = tape.gradient(loss, variables)
            grads = tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, grads)
            return loss, grads, new_s

        loss, grads, new_states = self.strategy.run(replica_step, args=(inputs, targets, states))
        grads = [self.strategy.experimental_local_results(g)[0] for g in grads]  # equal on every replica
        # cross-replica context: Keras clips the summed gradient (clipvalue), as one device does
        self.optimizer.apply(grads, variables)
        return self.strategy.reduce(tf.distribute.ReduceOp.SUM, loss, axis=None), new_states

    def _eval_step(self, inputs, targets, weights, states):
        def replica_step(x, y, w, s):
            logits, new_s = self._forward(x, s, training=False)
            per_token = self._token_losses(y, logits)
            w = tf.broadcast_to(w[:, None], tf.shape(per_token))
            return tf.reduce_sum(per_token * w), tf.reduce_sum(w), new_s

        total, count, new_states = self.strategy.run(replica_step, args=(inputs, targets, weights, states))
        sum_ = tf.distribute.ReduceOp.SUM
        return self.strategy.reduce(sum_, total, axis=None), self.strategy.reduce(sum_, count, axis=None), new_states

    # --- the Trainer interface -----------------------------------------------------------------------

    def _guarded(self, fn, *args):
        try:
            return fn(*args)
        except (tf.errors.OpError, *upstream.lost_peer_errors()) as e:
            if upstream.is_lost_peer(e):
                raise lost_worker_error(e, self._own_task, self._tasks) from None
            raise

    def batches(self, h5_path: str, start_batch: int):
        return self._guarded_iteration(self._batches(h5_path, "train", self.layouts["train"], start_batch))

    def _guarded_iteration(self, dataset):
        # a multi-worker iterator agrees with the other workers (a collective) before each element
        iterator = iter(dataset)
        while True:
            try:
                yield self._guarded(next, iterator)
            except StopIteration:
                return

    def train_step(self, inputs, targets):
        loss, self._states = self._guarded(self._train_fn, inputs, targets, self._states)
        return loss

    def reset_states(self) -> None:
        self._states = self._distribute_rows([np.zeros((self.config.batch_size, h), np.float32) for h in self._sizes])

    def learning_rate(self) -> float:
        return self._trainer.learning_rate()

    def set_schedule_length(self, total_iterations: int) -> None:
        self._trainer.set_schedule_length(total_iterations)

    @property
    def schedule_length(self) -> int:
        return self._trainer.schedule_length

    def recorded_config(self):
        return dataclasses.replace(self._trainer.recorded_config(), replicas=self.replicas)

    @property
    def iteration(self) -> int:
        return self._trainer.iteration

    def start_at(self, iteration: int) -> None:
        self._trainer.start_at(iteration)

    def evaluate(self, h5_path: str, split: str) -> Optional[float]:
        """Mean loss over the whole split, summed over the replicas; the training state is left alone."""
        layout = self.layouts[split]
        if layout.num_batches == 0:
            return None
        weights = self._distribute_rows([batches.row_weights(layout)])[0]
        states = self._distribute_rows([np.zeros((layout.batch_size, h), np.float32) for h in self._sizes])
        total, count = 0.0, 0.0
        for inputs, targets in self._guarded_iteration(self._batches(h5_path, split, layout)):
            loss_sum, n, states = self._guarded(self._eval_fn, inputs, targets, weights, states)
            total += float(loss_sum)
            count += float(n)
        return total / count

    def _gathered_states(self) -> List[np.ndarray]:
        """The carried state as the (N, H) arrays one device holds (replicas' rows in stream order)."""
        return [self._guarded(self.strategy.gather, s, 0).numpy() for s in self._states]

    def state_arrays(self) -> Dict[str, np.ndarray]:
        """The one-device checkpoint format; every worker must call it (the state is gathered)."""
        arrays = self._trainer.state_arrays()
        arrays.update(zip(self._state_names, self._gathered_states()))
        return arrays

    def restore_state(self, arrays: Dict[str, np.ndarray], source: str) -> None:
        """Puts back a checkpoint's state; the carried (N, H) state is split over however many replicas run now."""
        self._trainer.restore_state(arrays, source)
        self._states = self._distribute_rows(stack.get_states(self.model))

    def checkpoint_charrnn(self) -> CharRNN:
        """The one-device CharRNN holding the trained weights, for the checkpoint writer."""
        self.charrnn.model.set_weights(self.model.get_weights())
        return self.charrnn
