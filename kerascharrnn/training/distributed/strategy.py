"""The tf.distribute strategy of a run (--strategy), made before TensorFlow runs anything: logical CPU
devices and the multi-worker server can only be set up before the runtime starts."""

from __future__ import annotations

import faulthandler
import os
import select
import signal
import time
from typing import Callable

from kerascharrnn import upstream
from kerascharrnn.config import MIRRORED, ONE_DEVICE
from kerascharrnn.errors import UserError
from kerascharrnn.errors import setting as ref
from kerascharrnn.training.distributed.cluster import ClusterSpec, cluster_from_env

EXIT_GRACE_S = 10  # after the message: how long faulthandler's exit may take before the watchdog SIGKILLs


def make_strategy(strategy_name: str, cpu_replicas: int, worker_timeout: int,
                  describe: Callable[[UserError], str] = str):
    """The strategy for `strategy_name` (None for one_device).

    Args:
      strategy_name: one_device, mirrored or multi_worker.
      cpu_replicas: mirrored on a host without GPUs: this many logical CPU devices (0 = off).
      worker_timeout: multi_worker: seconds to wait for every worker of TF_CONFIG to connect.
      describe: how the caller shows an error (a tool: one line naming its flags); used for the one error
        that cannot be raised (see _watchdog).
    """
    import tensorflow as tf

    if strategy_name == ONE_DEVICE:
        return None
    if strategy_name == MIRRORED:
        if cpu_replicas:
            if tf.config.list_physical_devices("GPU"):
                raise UserError(f"{ref('cpu_replicas')} splits the CPU of a host without GPUs; this host has GPUs:"
                                f" leave it out to use them, or hide them with {ref('gpu')} -1")
            cpu = tf.config.list_physical_devices("CPU")[0]
            tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * cpu_replicas)
            devices = [d.name for d in tf.config.list_logical_devices("CPU")]
            return tf.distribute.MirroredStrategy(devices=devices)
        return tf.distribute.MirroredStrategy()
    cluster = cluster_from_env()
    options = tf.distribute.experimental.CommunicationOptions(timeout_seconds=worker_timeout)
    # The constructor waits, inside one C++ call that holds the GIL, until every worker of TF_CONFIG has
    # connected (no timeout of its own, and neither a Python thread nor a signal handler can interrupt it).
    # A forked watchdog bounds the wait: it prints the error and ends this process if the wait lasts.
    _configure_heartbeat(cluster, worker_timeout)
    cancel = _watchdog(worker_timeout, describe(UserError(
        f"not every worker of TF_CONFIG ({', '.join(cluster.workers)}) connected within {ref('worker_timeout')}"
        f" {worker_timeout} s; start every worker with the same command, or fix an address that cannot be"
        " reached")))
    try:
        return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    finally:
        cancel()


def _configure_heartbeat(cluster: ClusterSpec, timeout_s: int) -> None:
    """A heartbeat timeout of worker_timeout: a worker that hangs (not only one whose connection drops) is
    then declared lost after that long rather than TensorFlow's default of about a minute."""
    jobs = [("chief", 1)] if cluster.has_chief else []
    workers = len(cluster.workers) - len(jobs)
    if workers:
        jobs.append(("worker", workers))
    upstream.configure_coordination_service(jobs, f"/job:{jobs[0][0]}/replica:0/task:0", timeout_s * 1000)


def _watchdog(seconds: int, message: str):
    """Unless the returned cancel() is called within `seconds`, writes `message` on stderr and ends this
    process with exit status 1. This process cannot run a line of Python until the strategy's constructor
    returns (and TensorFlow keeps a SIGTERM from ending it), so the message comes from a forked child (which
    makes system calls only, no TensorFlow) and the exit from faulthandler's watchdog thread, which needs no
    GIL: it calls _exit(1) a second later (its traceback goes to /dev/null: the user gets the one line). Were
    that thread ever not to fire, the child SIGKILLs this process 10 s later."""
    read_end, write_end = os.pipe()
    parent = os.getpid()
    child = os.fork()
    if child == 0:
        os.close(write_end)
        ready, _, _ = select.select([read_end], [], [], seconds)
        if not ready:
            os.write(2, f"{message}\n".encode())
            deadline = time.monotonic() + 1 + EXIT_GRACE_S
            while os.getppid() == parent and time.monotonic() < deadline:  # adopted by another once it has ended
                time.sleep(0.1)
            if os.getppid() == parent:
                os.kill(parent, signal.SIGKILL)
        os._exit(0)
    os.close(read_end)
    devnull = open(os.devnull, "w")
    faulthandler.dump_traceback_later(seconds + 1, exit=True, file=devnull)

    def cancel():
        faulthandler.cancel_dump_traceback_later()
        devnull.close()
        os.close(write_end)  # the child's select returns: it exits quietly
        os.waitpid(child, 0)

    return cancel
