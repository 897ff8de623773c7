"""One training run per checkpoint name (kerascharrnn.lock), with real concurrent processes."""

import json
import os
import signal
import subprocess
import sys

import pytest
from conftest import REPO, run_cli

from kerascharrnn.errors import UserError
from kerascharrnn.io import checkpoint as ckpt
from kerascharrnn.io import lock

HOLDER = ("import sys, time; sys.path.insert(0, sys.argv[2]); from kerascharrnn.io import lock;"
          " lock.acquire(sys.argv[1], command='the holder'); print('locked', flush=True); time.sleep(120)")
TINY = ["--batch_size", 4, "--seq_length", 16, "--rnn_size", 16, "--wordvec_size", 8, "--num_layers", 1,
        "--print_every", 1, "--seed", 5]


def _start_holder(name):
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, name, REPO], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    return holder


def test_second_run_is_refused_naming_the_holder_and_a_dead_holders_lock_is_taken_over(small_corpus, tmp_path):
    _, h5, _ = small_corpus
    name = str(tmp_path / "cv" / "ck")
    os.makedirs(tmp_path / "cv")
    holder = _start_holder(name)
    try:
        refused = run_cli("train", "--input_h5", h5, "--checkpoint_name", name, *TINY)
        assert refused.returncode == 1
        lines = refused.stderr.strip().splitlines()
        assert len(lines) == 1 and f"in use by another training run (pid {holder.pid} on " in lines[0], lines
        assert "the holder" in lines[0]
        assert not any(f.endswith(".keras") for f in os.listdir(tmp_path / "cv"))
    finally:
        holder.send_signal(signal.SIGKILL)  # dies holding it: the file stays, the kernel frees the lock
        holder.wait()
    assert json.load(open(name + ".lock"))["pid"] == holder.pid  # the stale file is still there
    lock.acquire(name, command="taken over")
    try:
        assert json.load(open(name + ".lock"))["pid"] == os.getpid()
    finally:
        lock.release(name)


def test_two_real_trainings_on_one_name(small_corpus, tmp_path):
    _, h5, _ = small_corpus
    name = str(tmp_path / "cv" / "ck")
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    first = subprocess.Popen([sys.executable, os.path.join(REPO, "bin", "train"), "--input_h5", h5,
                              "--checkpoint_name", name, "--max_iters", "100000", "--checkpoint_every", "0",
                              *map(str, TINY)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = first.stdout.readline()
        while line.startswith("Measured "):  # a long run may time its training paths first, holding the lock
            line = first.stdout.readline()
        assert line.startswith("Model:")  # training, and holding the lock
        second = run_cli("train", "--input_h5", h5, "--checkpoint_name", name, *TINY)
        assert second.returncode == 1 and f"(pid {first.pid} on " in second.stderr, second.stderr
        first.send_signal(signal.SIGTERM)  # writes its checkpoint and stops
        out, err = first.communicate(timeout=120)
        assert first.returncode == 128 + signal.SIGTERM, err
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert ckpt.find_latest(name) is not None  # the first run's series is whole
    again = run_cli("train", "--input_h5", h5, "--checkpoint_name", name, "--resume_from", "latest",
                    "--max_iters", "1")
    assert again.returncode == 0, again.stderr


def test_the_lock_is_given_back_when_a_run_in_this_process_ends(small_corpus, tmp_path):
    """bin/train called in-process (as a library caller might) holds the lock for its run only."""
    _, h5, _ = small_corpus
    name = str(tmp_path / "ck")
    for _ in range(2):
        done = run_cli("train", "--input_h5", h5, "--checkpoint_name", name, "--max_iters", "1", *TINY)
        assert done.returncode == 0, done.stderr
    assert not lock._held
    with lock.held(name):
        assert lock._held
    assert not lock._held


def test_a_planted_lock_link_or_pipe_is_refused_and_left_alone(tmp_path):
    (tmp_path / "victim.txt").write_text("a file someone keeps")
    os.symlink(tmp_path / "victim.txt", tmp_path / "ck.lock")
    with pytest.raises(UserError, match="is a symbolic link"):
        lock.acquire(str(tmp_path / "ck"))
    assert (tmp_path / "victim.txt").read_text() == "a file someone keeps" and not lock._held
    os.symlink(tmp_path / "nowhere", tmp_path / "dangling.lock")  # would be created through the link
    with pytest.raises(UserError, match="is a symbolic link"):
        lock.acquire(str(tmp_path / "dangling"))
    assert not (tmp_path / "nowhere").exists()
    os.mkfifo(tmp_path / "fifo.lock")
    with pytest.raises(UserError, match="not a regular file"):
        lock.acquire(str(tmp_path / "fifo"))
