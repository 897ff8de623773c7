"""Training on several devices or machines with tf.distribute, the RNN state carried per replica.

Keras 3 stateful layers cannot run under a strategy (their state is one variable sized for the global
batch; see ../shared/TF-NOTES.md). So under `--strategy mirrored|multi_worker` the training step calls
the same layers with explicit state: each recurrent layer's `inner_loop` (the code its stateful call
runs, cuDNN on a GPU included) on per-replica state tensors that `strategy.run` carries from one
minibatch to the next. Replica r owns streams r*n .. r*n+n-1 (n = N / replicas) for the whole run and
reads only their rows from the HDF5 file (distribute_datasets_from_function), so every stream sees exactly
what it sees on one device.

The loss is each replica's token-loss sum over the global N*T count; the gradients are summed over the
replicas (one all-reduce), and the optimizer then applies them in cross-replica context, where Keras
clips (clipvalue) the reduced gradient exactly as on one device. The saved model stays the stock
stateful model at the global batch, and the checkpoint's carried state is the (N, H) array one device
would have: a distributed checkpoint samples, exports, serves and resumes anywhere.

The TF_CONFIG checks here need no TensorFlow, so bad input fails before it is imported.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import Dict, List, Optional

import numpy as np

from kerascharrnn.errors import UserError

ONE_DEVICE, MIRRORED, MULTI_WORKER = "one_device", "mirrored", "multi_worker"
STRATEGIES = (ONE_DEVICE, MIRRORED, MULTI_WORKER)


@dataclasses.dataclass(frozen=True)
class ClusterSpec:
    """What TF_CONFIG says: the workers' addresses (chief first, if there is one) and this task."""

    workers: List[str]  # every task of the cluster, in TensorFlow's order: chief, then workers
    task_type: str
    task_index: int

    has_chief: bool = False

    @property
    def is_chief(self) -> bool:
        # TensorFlow's rule: the "chief" task, or worker 0 when the cluster names no chief.
        return self.task_type == "chief" or (self.task_type == "worker" and self.task_index == 0
                                             and not self.has_chief)

    @property
    def name(self) -> str:
        return f"{self.task_type} {self.task_index}"

    @property
    def task_names(self) -> List[str]:
        """Every task as named in messages: "chief 0", "worker 0", ..."""
        chiefs = int(self.has_chief)
        return [f"chief {i}" for i in range(chiefs)] + [f"worker {i}" for i in range(len(self.workers) - chiefs)]


def parse_tf_config(text: Optional[str]) -> ClusterSpec:
    """Checks TF_CONFIG (the standard JSON of Kubernetes operators and cloud trainers) before TensorFlow reads it."""
    if not text:
        raise UserError("--strategy multi_worker needs TF_CONFIG set (JSON with 'cluster' and 'task'); see"
                        " docs/distributed.md")
    try:
        values = json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"TF_CONFIG is not JSON ({e.msg} at character {e.pos})") from None
    cluster = values.get("cluster") if isinstance(values, dict) else None
    task = values.get("task") if isinstance(values, dict) else None
    if not isinstance(cluster, dict) or not isinstance(task, dict):
        raise UserError("TF_CONFIG must be a JSON object with 'cluster' and 'task' objects")
    unknown = sorted(set(cluster) - {"chief", "worker"})
    if unknown:
        raise UserError(f"TF_CONFIG: cluster job {unknown[0]!r} is not used by multi_worker (only chief and worker)")
    addresses = {}
    for job in ("chief", "worker"):
        tasks = cluster.get(job, [])
        if not isinstance(tasks, list) or not all(isinstance(a, str) for a in tasks):
            raise UserError(f"TF_CONFIG: cluster.{job} must be a list of 'host:port' strings")
        for address in tasks:
            host, _, port = address.rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise UserError(f"TF_CONFIG: {address!r} in cluster.{job} is not host:port")
        addresses[job] = tasks
    if len(addresses["chief"]) > 1:
        raise UserError("TF_CONFIG: a cluster has at most one chief")
    if not addresses["chief"] and not addresses["worker"]:
        raise UserError("TF_CONFIG: the cluster lists no workers")
    task_type, task_index = task.get("type"), task.get("index")
    if task_type not in ("chief", "worker"):
        raise UserError(f"TF_CONFIG: task.type must be 'chief' or 'worker', got {task_type!r}")
    if isinstance(task_index, bool) or not isinstance(task_index, int) or not 0 <= task_index < len(
            addresses[task_type]):
        raise UserError(f"TF_CONFIG: task.index {task_index!r} is not one of the {len(addresses[task_type])}"
                        f" {task_type} task(s) in cluster.{task_type}")
    return ClusterSpec(addresses["chief"] + addresses["worker"], task_type, task_index,
                       has_chief=bool(addresses["chief"]))


def cluster_from_env() -> ClusterSpec:
    return parse_tf_config(os.environ.get("TF_CONFIG"))


def is_chief(strategy_name: str) -> bool:
    """Whether this process writes checkpoints: always, except on non-chief workers of a multi_worker run."""
    return strategy_name != MULTI_WORKER or cluster_from_env().is_chief


def check_replicas(batch_size: int, replicas: int) -> None:
    if batch_size % replicas:
        raise UserError(f"--batch_size {batch_size} does not divide by the {replicas} replicas: each replica carries"
                        " an equal share of the streams; give a multiple of the replica count")


def quiet_collective_errors(strategy_name: str) -> None:
    """multi_worker: a lost peer makes TensorFlow's C++ side log several ERROR lines of gRPC detail; the run
    reports it in one line instead (lost_worker_error). Call before TensorFlow is imported;
    KERASCHARRNN_TF_LOGS=1 keeps every log line."""
    if strategy_name == MULTI_WORKER and os.environ.get("KERASCHARRNN_TF_LOGS") != "1":
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"


# --- TensorFlow from here on ----------------------------------------------------------------------


def make_strategy(strategy_name: str, cpu_replicas: int, worker_timeout: int):
    """The tf.distribute strategy for --strategy (None for one_device). Call before TensorFlow runs anything:
    logical CPU devices and the multi-worker server can only be set up before the runtime starts."""
    import tensorflow as tf

    if strategy_name == ONE_DEVICE:
        return None
    if strategy_name == MIRRORED:
        if cpu_replicas:
            if tf.config.list_physical_devices("GPU"):
                raise UserError("--cpu_replicas splits the CPU of a host without GPUs; this host has GPUs: leave it"
                                " out to use them, or hide them with --gpu -1")
            cpu = tf.config.list_physical_devices("CPU")[0]
            tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * cpu_replicas)
            devices = [d.name for d in tf.config.list_logical_devices("CPU")]
            return tf.distribute.MirroredStrategy(devices=devices)
        return tf.distribute.MirroredStrategy()
    cluster = cluster_from_env()
    options = tf.distribute.experimental.CommunicationOptions(timeout_seconds=worker_timeout)
    # The constructor waits, inside one C++ call that holds the GIL, until every worker of TF_CONFIG has
    # connected (no timeout of its own, and neither a Python thread nor a signal handler can interrupt it).
    # A forked watchdog bounds the wait: it prints the error and kills this process if the wait lasts.
    _configure_heartbeat(cluster, worker_timeout)
    cancel = _watchdog(worker_timeout, f"not every worker of TF_CONFIG ({', '.join(cluster.workers)}) connected within"
                       f" --worker_timeout {worker_timeout} s; start every worker with the same command, or fix an"
                       " address that cannot be reached")
    try:
        return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    finally:
        cancel()


def _configure_heartbeat(cluster: ClusterSpec, timeout_s: int) -> None:
    """The coordination service that MultiWorkerMirroredStrategy sets up, as it sets it up, but with a heartbeat
    timeout of --worker_timeout: a worker that hangs (not only one whose connection drops) is then declared
    lost after that long rather than TensorFlow's default of about a minute. The strategy keeps a service
    configured before it (collective_all_reduce_strategy.py); context.configure_coordination_service is
    TensorFlow's own (non-public) call for it."""
    from tensorflow.compiler.xla.tsl.protobuf import coordination_config_pb2
    from tensorflow.python.eager import context

    jobs = [coordination_config_pb2.CoordinatedJob(name="chief", num_tasks=1)] if cluster.has_chief else []
    workers = len(cluster.workers) - len(jobs)
    if workers:
        jobs.append(coordination_config_pb2.CoordinatedJob(name="worker", num_tasks=workers))
    context.context().configure_coordination_service(
        service_type="standalone", service_leader=f"/job:{jobs[0].name}/replica:0/task:0",
        heartbeat_timeout_in_ms=timeout_s * 1000, coordinated_jobs=jobs)


def _watchdog(seconds: int, message: str):
    """Forks a child that, unless the returned cancel() is called within `seconds`, writes `prog: error:
    message` on stderr and SIGKILLs this process. The child makes system calls only (no TensorFlow)."""
    import select
    import signal
    import sys

    read_end, write_end = os.pipe()
    parent = os.getpid()
    child = os.fork()
    if child == 0:
        os.close(write_end)
        ready, _, _ = select.select([read_end], [], [], seconds)
        if not ready:
            os.write(2, f"{os.path.basename(sys.argv[0])}: error: {message}\n".encode())
            os.kill(parent, signal.SIGKILL)
        os._exit(0)
    os.close(read_end)

    def cancel():
        os.close(write_end)  # the child's select returns: it exits quietly
        os.waitpid(child, 0)

    return cancel


_TASK = re.compile(r"/job:(\w+)/replica:\d+/task:(\d+)")


def lost_worker_error(error: Exception, own_task: str, tasks: List[str]) -> UserError:
    """One line for a collective that failed because a peer died or stopped answering.

    Args:
      error: TensorFlow's error; a dropped connection names the peer's task in its message, a timed-out
        collective does not (then, in a two-worker cluster, it can only be the other one).
      own_task: this process's task ("worker 0").
      tasks: every task of the cluster.
    """
    named = [f"{job} {index}" for job, index in _TASK.findall(str(error))]
    others = [t for t in dict.fromkeys(named) if t != own_task] or [t for t in tasks if t != own_task]
    who = f"lost {others[0]}" if len(others) == 1 or named else "lost a worker"
    return UserError(f"{who} ({type(error).__name__}); this worker ({own_task}) stopped. Restart every worker"
                     " with the same command plus --resume_from latest to continue from the last complete checkpoint")


class DistributedTrainer:
    """The Trainer interface (train_step, evaluate, state_arrays, restore_state, ...) under a strategy.

    Built from a Trainer made under `strategy.scope()` over a twin of the model (same weights, mirrored
    variables); the caller's CharRNN stays a one-device model and receives the weights at each checkpoint.
    """

    def __init__(self, strategy, config, charrnn, layouts, make_trainer):
        import tensorflow as tf

        from kerascharrnn import fused
        from kerascharrnn import model as model_lib
        from kerascharrnn.charrnn import CharRNN

        if charrnn.config.copy_memory:
            # its memory is (N, M, H) state that the per-replica state code below does not split yet
            raise UserError(f"--copy_memory trains on one device: --strategy {config.strategy} does not support it yet")
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
            self._trainer = make_trainer(dataclasses.replace(config, fused="off"), twin, layouts)
        self.config = dataclasses.replace(self._trainer.config, replicas=self.replicas)
        self.path_choice = fused.PathChoice("off", "a distribution strategy: the Keras layers")
        self.fused = self.path_choice.fused
        self.optimizer = self._trainer.optimizer
        self.model = twin.model
        self._stages = model_lib.layer_stack(self.model)
        self._sizes = model_lib.state_sizes(self.model)
        self._per_replica = config.batch_size // self.replicas
        self._tf = tf
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
        self._train_fn = tf.function(self._train_step)
        self._eval_fn = tf.function(self._eval_step)
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
        import h5py

        from kerascharrnn import data

        tf = self._tf
        local_ids, n, T = self._local_ids, self._per_replica, layout.seq_length

        def generate():
            with h5py.File(h5_path, "r") as f:
                readers = [data.batch_arrays(f[split], layout, start_batch, rows=self._rows(r)) for r in local_ids]
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
        """The stateful model's computation on (n, T) ids with explicit state: (logits (n, T, V), new states)."""
        tf = self._tf
        x, states, new_states = ids, list(states), []
        for index, stage in enumerate(self._stages):
            if stage.role == "recurrent":
                count = len(stage.kind.state_parts)
                layer_states, states = states[:count], states[count:]
                _, x, updated = stage.layer.inner_loop(x, layer_states, mask=None, training=training)
                new_states.extend(updated)
            elif stage.role == "dropout":
                # Keras's Dropout draws from a seed-generator variable, which a replica cannot update; a
                # stateless draw keyed by (layer, iteration, replica) is as random, and repeats on resume.
                if training and stage.layer.rate > 0:
                    replica = tf.distribute.get_replica_context().replica_id_in_sync_group
                    seed = tf.stack([tf.cast(self._dropout_seed * 1000 + index, tf.int64),
                                     tf.cast(step_seed, tf.int64) * self.replicas + tf.cast(replica, tf.int64)])
                    x = tf.nn.experimental.stateless_dropout(x, stage.layer.rate, seed=seed)
            else:
                x = stage.layer(x, training=training)
        return x, tuple(new_states)

    def _token_losses(self, targets, logits):
        import keras

        return keras.losses.sparse_categorical_crossentropy(targets, logits, from_logits=True)  # (n, T)

    def _train_step(self, inputs, targets, states):
        tf = self._tf
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
        tf = self._tf

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
        tf = self._tf
        try:
            return fn(*args)
        except (tf.errors.UnavailableError, tf.errors.DeadlineExceededError, tf.errors.CancelledError,
                tf.errors.AbortedError) as e:
            raise lost_worker_error(e, self._own_task, self._tasks) from None
        except tf.errors.InternalError as e:
            if "collective" in str(e).lower() or "peer" in str(e).lower():
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
        self.config = dataclasses.replace(self._trainer.config, replicas=self.replicas)

    @property
    def iteration(self) -> int:
        return self._trainer.iteration

    def evaluate(self, h5_path: str, split: str) -> Optional[float]:
        """Mean loss over the whole split, summed over the replicas; the training state is left alone."""
        from kerascharrnn import data

        layout = self.layouts[split]
        if layout.num_batches == 0:
            return None
        weights = self._distribute_rows([data.row_weights(layout)])[0]
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
        from kerascharrnn import model as model_lib

        arrays = self._trainer.state_arrays()
        names = [f"rnn_state/{s.layer.name}/{part}" for s in model_lib.recurrent_stages(self.model)
                 for part in s.kind.state_parts]
        arrays.update(zip(names, self._gathered_states()))
        return arrays

    def restore_state(self, arrays: Dict[str, np.ndarray], source: str) -> None:
        """Puts back a checkpoint's state; the carried (N, H) state is split over however many replicas run now."""
        from kerascharrnn import model as model_lib

        self._trainer.restore_state(arrays, source)
        self._states = self._distribute_rows(model_lib.get_states(self.model))

    def checkpoint_charrnn(self):
        """The one-device CharRNN holding the trained weights, for the checkpoint writer."""
        self.charrnn.model.set_weights(self.model.get_weights())
        return self.charrnn
