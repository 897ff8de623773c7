"""--strategy mirrored (2 logical CPU devices) and multi_worker (2 worker processes on 127.0.0.1) against one
device: same losses, same val loss, exact resume, chief-only files, a lost worker, and the bad inputs.

Every distributed run is a real bin/train process: logical devices and the multi-worker server can only be
set up before TensorFlow starts, which in the pytest process it already has."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import REPO, free_port, run_cli, run_process

from kerascharrnn.config import TrainConfig, check_replicas
from kerascharrnn.errors import UserError
from kerascharrnn.io import checkpoint as ckpt
from kerascharrnn.training.distributed import cluster

# --fused off: a strategy trains through the Keras layers, so one device is compared on the same path.
SMALL = ["--batch_size", "4", "--seq_length", "16", "--rnn_size", "32", "--wordvec_size", "16", "--num_layers", "2",
         "--learning_rate", "5e-3", "--seed", "1", "--print_every", "0", "--gpu", "-1", "--fused", "off",
         "--checkpoint_every", "10", "--max_iters", "30"]
TIMEOUT = 300


def _train(*args, **kwargs):
    """bin/train in a process of its own: logical devices and a strategy's server are set up before
    TensorFlow starts, which in this process it has."""
    result = run_process("train", *args, timeout=TIMEOUT, **kwargs)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def _history(json_path):
    record = ckpt.read_record(json_path)
    return np.array(record.history["train_loss_history"]), np.array(record.history["val_loss_history"]), record


def _tf_config(ports, index):
    return json.dumps({"cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
                       "task": {"type": "worker", "index": index}})


class Workers:
    """bin/train started once per worker of a local TF_CONFIG cluster; killed on exit, whatever happened."""

    def __init__(self, tmp_path, args_per_worker):
        self.ports = [free_port() for _ in args_per_worker]
        self.logs = [tmp_path / f"worker{i}.{time.monotonic_ns()}.log" for i in range(len(args_per_worker))]
        self.processes = []
        for i, args in enumerate(args_per_worker):
            env = dict(os.environ, PYTHONUNBUFFERED="1", TF_CONFIG=_tf_config(self.ports, i))
            with open(self.logs[i], "w") as log:
                self.processes.append(subprocess.Popen(
                    [sys.executable, os.path.join(REPO, "bin", "train"), *map(str, args)], env=env, stdout=log,
                    stderr=subprocess.PIPE, text=True))

    def wait(self, timeout=TIMEOUT):
        """(returncode, stderr) per worker."""
        deadline = time.monotonic() + timeout
        return [(p.wait(timeout=max(1, deadline - time.monotonic())), p.stderr.read()) for p in self.processes]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for p in self.processes:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=30)
            p.stderr.close()


@pytest.fixture(scope="module")
def one_device(small_corpus, tmp_path_factory):
    """The reference: one device, 30 iterations, val every 10."""
    _, h5, _ = small_corpus
    prefix = str(tmp_path_factory.mktemp("one") / "c")
    one = run_cli("train", "--input_h5", h5, *SMALL, "--checkpoint_name", prefix)
    assert one.returncode == 0, one.stderr[-3000:]
    return _history(prefix + "_30.json")


# --- settings and TF_CONFIG, before TensorFlow ------------------------------------------------------


def test_tf_config_parsed_and_chief_found():
    spec = cluster.parse_tf_config(_tf_config([1111, 2222], 1))
    assert spec.workers == ["127.0.0.1:1111", "127.0.0.1:2222"] and spec.name == "worker 1" and not spec.is_chief
    assert cluster.parse_tf_config(_tf_config([1111, 2222], 0)).is_chief
    with_chief = json.dumps({"cluster": {"chief": ["a:1"], "worker": ["b:2"]}, "task": {"type": "worker", "index": 0}})
    spec = cluster.parse_tf_config(with_chief)
    assert spec.workers == ["a:1", "b:2"] and not spec.is_chief  # the chief task, not worker 0, writes
    assert spec.task_names == ["chief 0", "worker 0"]


@pytest.mark.parametrize("text, words", [
    (None, "needs TF_CONFIG"),
    ("{not json", "not JSON"),
    ('{"cluster": {"worker": ["127.0.0.1:1"]}}', "'cluster' and 'task'"),
    ('{"cluster": {"worker": ["localhost"]}, "task": {"type": "worker", "index": 0}}', "not host:port"),
    ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 1}}', "task.index 1"),
    ('{"cluster": {"ps": ["a:1"]}, "task": {"type": "ps", "index": 0}}', "'ps'"),
])
def test_bad_tf_config_is_one_clear_error(text, words):
    with pytest.raises(UserError, match=words):
        cluster.parse_tf_config(text)


def test_bad_replica_settings():
    with pytest.raises(UserError, match="cpu_replicas needs strategy mirrored"):
        TrainConfig(cpu_replicas=2)
    with pytest.raises(UserError, match="batch_size 4 does not divide by the 3 replicas"):
        TrainConfig(strategy="mirrored", cpu_replicas=3, batch_size=4)
    with pytest.raises(UserError, match="max_minutes does not work with strategy multi_worker"):
        TrainConfig(strategy="multi_worker", max_minutes=5)
    with pytest.raises(UserError, match="does not divide by the 3 replicas"):
        check_replicas(4, 3)


@pytest.mark.parametrize("args, env, words", [
    (["--strategy", "mirrored", "--cpu_replicas", "3"], {}, "--batch_size 4 does not divide by the 3 replicas"),
    (["--cpu_replicas", "2"], {}, "needs --strategy mirrored"),
    (["--strategy", "multi_worker"], {"TF_CONFIG": ""}, "needs TF_CONFIG"),
    (["--strategy", "multi_worker"], {"TF_CONFIG": "{oops"}, "TF_CONFIG is not JSON"),
])
def test_bad_input_on_the_command_line(small_corpus, tmp_path, args, env, words):
    _, h5, _ = small_corpus
    result = run_cli("train", "--input_h5", h5, *SMALL, "--checkpoint_name", tmp_path / "c", *args, env=env)
    assert result.returncode != 0
    assert result.stderr.strip().count("\n") == 0 and words in result.stderr, result.stderr


@pytest.mark.parametrize("task", [0, 1])
def test_a_port_of_this_task_already_taken_is_named_before_tensorflow(small_corpus, tmp_path, task):
    import socket

    _, h5, _ = small_corpus
    ports = [free_port(), free_port()]
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", ports[task]))
        taken.listen()
        result = run_cli("train", "--input_h5", h5, *SMALL, "--checkpoint_name", tmp_path / "c", "--strategy",
                         "multi_worker", env={"TF_CONFIG": _tf_config(ports, task)})
    assert result.returncode == 1 and result.stderr.strip().count("\n") == 0, result.stderr
    assert f"port {ports[task]} of this task (worker {task}" in result.stderr and "another process" in result.stderr
    assert not os.listdir(tmp_path)


def test_unreachable_worker_stops_within_the_timeout(small_corpus, tmp_path):
    _, h5, _ = small_corpus
    ports = [free_port(), free_port()]  # nothing will listen on the second
    start = time.monotonic()
    result = run_process("train", "--input_h5", h5, *SMALL, "--checkpoint_name", tmp_path / "c", "--strategy",
                         "multi_worker", "--worker_timeout", "3", env={"TF_CONFIG": _tf_config(ports, 0)},
                         timeout=TIMEOUT)
    assert result.returncode == 1  # a plain failure, not 137, which reads as the kernel's out-of-memory kill
    assert time.monotonic() - start < 120
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "not every worker of TF_CONFIG" in lines[0] and f"127.0.0.1:{ports[1]}" in lines[0]
    assert not [f for f in os.listdir(tmp_path) if f.startswith("c_")]


# --- mirrored on 2 logical CPU devices -------------------------------------------------------------


@pytest.mark.slow
def test_mirrored_gives_one_device_losses_and_samples_on_one_device(small_corpus, one_device, tmp_path):
    _, h5, _ = small_corpus
    prefix = str(tmp_path / "m")
    _train("--input_h5", h5, *SMALL, "--checkpoint_name", prefix, "--strategy", "mirrored", "--cpu_replicas", "2")
    train_losses, val_losses, record = _history(prefix + "_30.json")
    ref_train, ref_val, _ = one_device
    assert len(train_losses) == 30 and len(val_losses) == 3
    print(f"mirrored vs one device: train {np.abs(train_losses - ref_train).max():.3g},"
          f" val {np.abs(val_losses - ref_val).max():.3g}")
    np.testing.assert_allclose(train_losses, ref_train, atol=1e-4, rtol=0)
    np.testing.assert_allclose(val_losses, ref_val, atol=1e-4, rtol=0)
    assert (record.train_config.strategy, record.train_config.replicas, record.train_config.fused) == (
        "mirrored", 2, "off")
    state = ckpt.load_state(record.state_path)
    assert state["rnn_state/lstm_0/h"].shape == (4, 32)  # one device's layout: all N streams
    sample = run_cli("sample", "--checkpoint", prefix + "_30.keras", "--length", "40", "--sample", "0",
                     "--start_text", "ROMEO:")
    assert sample.returncode == 0 and sample.stdout.startswith("ROMEO:"), sample.stderr[-2000:]


@pytest.mark.slow
def test_mirrored_resume_is_exact_with_dropout(small_corpus, tmp_path):
    """The run's checkpoint of iteration 12, copied elsewhere and resumed to 30: the uninterrupted run's numbers.
    With dropout, whose per-replica draws are keyed by the iteration."""
    _, h5, _ = small_corpus
    _train("--input_h5", h5, *[a if a != "10" else "6" for a in SMALL], "--strategy", "mirrored", "--cpu_replicas", "2",
           "--dropout", "0.2", "--checkpoint_name", tmp_path / "full")
    (tmp_path / "part").mkdir()
    for ext in (".keras", ".state.npz", ".json"):
        shutil.copy(tmp_path / f"full_12{ext}", tmp_path / "part")
    _train("--resume_from", tmp_path / "part" / "full_12.json", "--max_iters", "30")
    full_train, full_val, _ = _history(str(tmp_path / "full_30.json"))
    resumed_train, resumed_val, _ = _history(str(tmp_path / "part" / "full_30.json"))
    print(f"mirrored resume: train {np.abs(resumed_train - full_train).max():.3g},"
          f" val {abs(resumed_val[-1] - full_val[-1]):.3g}")
    np.testing.assert_allclose(resumed_train, full_train, atol=1e-5, rtol=0)
    np.testing.assert_allclose(resumed_val[-1], full_val[-1], atol=1e-5)
    # another replica count re-splits the carried (N, H) state: it runs (not exact, dropout draws differ)
    one = run_cli("train", "--resume_from", tmp_path / "part" / "full_12.json", "--max_iters", "14", "--strategy",
                  "one_device", "--cpu_replicas", "0")
    assert one.returncode == 0, one.stderr[-3000:]
    assert ckpt.read_record(str(tmp_path / "part" / "full_14.json")).train_config.replicas == 1


# --- multi_worker: 2 processes on 127.0.0.1 --------------------------------------------------------


@pytest.mark.slow
def test_multi_worker_gives_one_device_losses_and_only_the_chief_writes(small_corpus, one_device, tmp_path):
    _, h5, _ = small_corpus
    chief_dir, other_dir = tmp_path / "chief", tmp_path / "other"
    # every worker runs the same command; the second is pointed elsewhere only to see that it writes nothing
    args = ["--input_h5", h5, *SMALL, "--strategy", "multi_worker", "--worker_timeout", "120"]
    with Workers(tmp_path, [args + ["--checkpoint_name", chief_dir / "c"],
                            args + ["--checkpoint_name", other_dir / "c"]]) as workers:
        results = workers.wait()
    assert [rc for rc, _ in results] == [0, 0], [err[-2000:] for _, err in results]
    train_losses, val_losses, record = _history(str(chief_dir / "c_30.json"))
    ref_train, ref_val, _ = one_device
    print(f"multi_worker vs one device: train {np.abs(train_losses - ref_train).max():.3g},"
          f" val {np.abs(val_losses - ref_val).max():.3g}")
    np.testing.assert_allclose(train_losses, ref_train, atol=1e-4, rtol=0)
    np.testing.assert_allclose(val_losses, ref_val, atol=1e-4, rtol=0)
    assert (record.train_config.strategy, record.train_config.replicas) == ("multi_worker", 2)
    assert not other_dir.exists() or not os.listdir(other_dir)
    chief_files = set(os.listdir(chief_dir)) - {"c.lock", "c_loss.png"}  # the run's lock, its loss plot
    assert chief_files == {f"c_{tag}{ext}" for tag in (10, 20, 30, "best") for ext in (".keras", ".state.npz", ".json")}


@pytest.mark.slow
@pytest.mark.parametrize("how", ["killed", "hung"])
def test_lost_worker_stops_the_other_and_resume_latest_continues(small_corpus, one_device, tmp_path, how):
    """A worker killed (its connections drop) or hung (SIGSTOP: it stops answering heartbeats): the other
    stops within --worker_timeout with one line, and every worker restarted with --resume_from latest
    continues."""
    _, h5, _ = small_corpus
    prefix = tmp_path / "c"
    timeout_s = 15
    args = ["--input_h5", h5, *[a if a != "30" else "100000" for a in SMALL], "--checkpoint_name", prefix,
            "--strategy", "multi_worker", "--worker_timeout", timeout_s]
    with Workers(tmp_path, [args, args]) as workers:
        deadline = time.monotonic() + TIMEOUT
        while not os.path.exists(f"{prefix}_10.json"):
            assert time.monotonic() < deadline and all(p.poll() is None for p in workers.processes)
            time.sleep(0.2)
        workers.processes[1].send_signal(signal.SIGKILL if how == "killed" else signal.SIGSTOP)
        start = time.monotonic()
        code, stderr = workers.processes[0].wait(timeout=120), workers.processes[0].stderr.read()
        stopped_after = time.monotonic() - start
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert code != 0 and len(lines) == 1, stderr[-3000:]
    assert "lost worker 1" in lines[0] and "--resume_from latest" in lines[0]
    assert stopped_after < timeout_s + 30
    latest = ckpt.find_latest(str(prefix))
    assert latest is not None and not [f for f in os.listdir(tmp_path) if ".tmp" in f]
    if how == "hung":
        return  # the resume is the same as after a kill

    # every worker restarted with --resume_from latest continues from the last complete checkpoint
    done = ckpt.read_record(latest).iteration
    resumed = args + ["--resume_from", "latest", "--max_iters", str(done + 5)]
    with Workers(tmp_path, [resumed, resumed]) as workers:
        results = workers.wait()
    assert [rc for rc, _ in results] == [0, 0], [err[-2000:] for _, err in results]
    train_losses, _, record = _history(f"{prefix}_{done + 5}.json")
    assert record.iteration == done + 5 and len(train_losses) == done + 5
    overlap = min(30, done + 5)  # the killed run and its continuation follow one device's numbers
    np.testing.assert_allclose(train_losses[:overlap], one_device[0][:overlap], atol=1e-4, rtol=0)


def test_lost_worker_named_from_the_error_or_the_cluster():
    dropped = Exception("recvmsg:Connection reset by peer from remote target /job:worker/replica:0/task:2 ...")
    tasks = ["worker 0", "worker 1", "worker 2"]
    assert str(cluster.lost_worker_error(dropped, "worker 0", tasks)).startswith("lost worker 2 (Exception)")
    timed_out = Exception("Collective ops timed out")
    assert str(cluster.lost_worker_error(timed_out, "worker 0", tasks)).startswith("lost a worker")
    assert str(cluster.lost_worker_error(timed_out, "worker 1", tasks[:2])).startswith("lost worker 0")
