"""The cluster a multi-worker run is part of, from TF_CONFIG (the standard JSON of Kubernetes operators and
cloud trainers), checked without TensorFlow, so that bad input fails before TensorFlow reads it."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import socket
from typing import List, Optional

from kerascharrnn.config import MULTI_WORKER
from kerascharrnn.errors import UserError
from kerascharrnn.errors import setting as ref


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
    """Checks TF_CONFIG before TensorFlow reads it."""
    if not text:
        raise UserError(f"{ref('strategy')} {MULTI_WORKER} needs TF_CONFIG set (JSON with 'cluster' and 'task');"
                        " see docs/distributed.md")
    try:
        values = json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"TF_CONFIG is not JSON ({e.msg} at character {e.pos})") from None
    except RecursionError:
        raise UserError("TF_CONFIG is not JSON of a sensible depth") from None
    cluster = values.get("cluster") if isinstance(values, dict) else None
    task = values.get("task") if isinstance(values, dict) else None
    if not isinstance(cluster, dict) or not isinstance(task, dict):
        raise UserError("TF_CONFIG must be a JSON object with 'cluster' and 'task' objects")
    unknown = sorted(set(cluster) - {"chief", "worker"})
    if unknown:
        raise UserError(f"TF_CONFIG: cluster job {unknown[0]!r} is not used by {MULTI_WORKER} (only chief and worker)")
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


def check_own_port_free(spec: ClusterSpec) -> None:
    """TensorFlow's server for this task listens on its TF_CONFIG port, on every interface; a port another
    process holds would fail deep inside TensorFlow. Checked by binding it (and letting it go) first."""
    address = spec.workers[spec.task_index + (int(spec.has_chief) if spec.task_type == "worker" else 0)]
    port = int(address.rpartition(":")[2])
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a port in TIME_WAIT is free to take
        try:
            probe.bind(("", port))
        except OSError as e:
            raise UserError(f"TF_CONFIG: port {port} of this task ({spec.name}, {address}) cannot be listened on:"
                            f" {e.strerror or e} (another process holds it?)") from None


def is_chief(strategy_name: str) -> bool:
    """Whether this process writes checkpoints: always, except on non-chief workers of a multi_worker run."""
    return strategy_name != MULTI_WORKER or cluster_from_env().is_chief


def quiet_collective_errors(strategy_name: str) -> None:
    """multi_worker: a lost peer makes TensorFlow's C++ side log several ERROR lines of gRPC detail; the run
    reports it in one line instead (lost_worker_error). Call before TensorFlow is imported;
    KERASCHARRNN_TF_LOGS=1 keeps every log line."""
    if strategy_name == MULTI_WORKER and os.environ.get("KERASCHARRNN_TF_LOGS") != "1":
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"


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
                     f" with the same command plus {ref('resume_from')} latest to continue from the last complete"
                     " checkpoint")
