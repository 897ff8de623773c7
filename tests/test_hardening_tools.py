"""The command-line tools against the red team's files and surroundings (reliability round 4): planted lock
files, zip members that climb out, records that hold what no run writes, per-machine files that are pipes, a
locale that is not UTF-8, signals during an export. Each works where it can; otherwise one line on stderr and a
non-zero exit, never an internal error (70), never a hang, never damage to another file."""

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import zipfile

import numpy as np
import pytest
from conftest import REPO, run_cli


def one_line(result, code=1, *fragments):
    assert result.returncode == code, (result.returncode, result.stderr[-2000:])
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "internal error" not in lines[0], result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def copied_series(trained, tmp_path, change):
    """A copy of the session's trained checkpoint (iteration 40) with its record changed by `change(record)`."""
    name = os.path.basename(trained["prefix"]) + "_40"
    for ext in (".keras", ".state.npz", ".json"):
        shutil.copy(trained["prefix"] + "_40" + ext, tmp_path / (name + ext))
    record = json.loads((tmp_path / (name + ".json")).read_text())
    change(record)
    (tmp_path / (name + ".json")).write_text(json.dumps(record))
    return tmp_path / (name + ".json")


# --- files planted or crafted ----------------------------------------------------------------------------------


def test_a_lock_file_planted_as_a_hard_link_is_refused_and_the_other_file_kept(trained, tmp_path):
    precious = tmp_path / "precious.txt"
    precious.write_text("the writer's novel")
    os.link(precious, tmp_path / "ck.lock")
    result = run_cli("train", "--input_h5", trained["h5"], "--checkpoint_name", tmp_path / "ck", "--max_iters", 2)
    one_line(result, 1, "ck.lock is a hard link")
    assert precious.read_text() == "the writer's novel" and not list(tmp_path.glob("ck_*"))


@pytest.mark.parametrize("member", ["../../x", "/abs/x", "assets/../../x", "assets/../../../etc/x"])
def test_a_checkpoint_whose_members_climb_out_is_refused_unread_by_every_tool(trained, tmp_path, member):
    crafted = tmp_path / "crafted.keras"
    shutil.copy(trained["keras"], crafted)
    with zipfile.ZipFile(crafted, "a") as archive:
        archive.writestr(member, b"owned")
    for args in (("sample", "--checkpoint", crafted, "--length", 5),
                 ("eval", "--checkpoint", crafted, "--input_h5", trained["h5"]),
                 ("export", "--checkpoint", crafted, "--export_dir", tmp_path / "e"),
                 ("train", "--init_from", crafted, "--input_h5", trained["h5"], "--checkpoint_name", tmp_path / "t")):
        one_line(run_cli(*args), 1, "refused unread")
    assert not os.path.exists(os.path.join(str(tmp_path), "..", "x")) and not os.path.exists("/abs/x")


@pytest.mark.parametrize("history", [[float("inf")], [float("nan")], [float("inf"), float("nan"), 2.5]])
def test_a_validation_history_of_infinity_or_nan_resumes(trained, tmp_path, history):
    record = copied_series(trained, tmp_path, lambda r: r.update(
        val_loss_history=history, val_loss_history_it=[1] * len(history)))
    assert run_cli("sample", "--checkpoint", record, "--length", 5).returncode == 0
    resumed = run_cli("train", "--resume_from", record, "--max_iters", 44, "--checkpoint_every", 2)
    assert resumed.returncode == 0 and (tmp_path / "checkpoint_44.json").exists(), resumed.stderr
    started = run_cli("train", "--init_from", record, "--input_h5", trained["h5"], "--checkpoint_name",
                      tmp_path / "new", "--max_iters", 2, "--batch_size", 4, "--seq_length", 16)
    assert started.returncode == 0, started.stderr


def test_an_iteration_no_run_reaches_is_named_in_one_line(trained, tmp_path):
    record = copied_series(trained, tmp_path, lambda r: r.update(iteration=10**30))
    one_line(run_cli("train", "--resume_from", record), 1, "'iteration' is 1e+30")
    one_line(run_cli("train", "--init_from", record, "--reset_iterations", 0, "--input_h5", trained["h5"],
                     "--checkpoint_name", tmp_path / "new"), 1, "'iteration' is 1e+30")


def test_a_record_of_a_diverged_run_is_not_resumed_in_silence(trained, tmp_path):
    record = copied_series(trained, tmp_path, lambda r: r.update(
        train_loss_history=[float("nan")] * len(r["train_loss_history"])))
    one_line(run_cli("train", "--resume_from", record, "--max_iters", 44), 1, "holds no finite loss", "diverged")


def test_a_state_saved_as_float64_resumes_or_says_why_not(trained, tmp_path):
    record = copied_series(trained, tmp_path, lambda r: r.pop("digests"))
    state = dict(np.load(tmp_path / "checkpoint_40.state.npz"))
    np.savez(tmp_path / "checkpoint_40.state.npz", **{k: v.astype(np.float64) if v.dtype == np.float32 else v
                                                       for k, v in state.items()})
    resumed = run_cli("train", "--resume_from", record, "--max_iters", 42, "--checkpoint_every", 2)
    assert resumed.returncode == 0 and (tmp_path / "checkpoint_42.json").exists(), resumed.stderr
    digested = tmp_path / "digested"
    digested.mkdir()
    record = copied_series(trained, digested, lambda r: None)  # its digests name the float32 state
    np.savez(digested / "checkpoint_40.state.npz", **{k: v.astype(np.float64) if v.dtype == np.float32 else v
                                                      for k, v in state.items()})
    one_line(run_cli("train", "--resume_from", record, "--max_iters", 42), 1)


# --- the per-machine files ---------------------------------------------------------------------------------------


@contextlib.contextmanager
def woken_if_blocked(fifo, seconds=60):
    """Fails the test rather than hang the suite if the tool blocks opening `fifo`: after `seconds` it is opened
    from here at both ends (without blocking), which releases a reader or a writer waiting in open()."""
    fired = []

    def wake():
        fired.append(True)
        reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
        try:
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        finally:
            os.close(reader)

    timer = threading.Timer(seconds, wake)
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
    assert not fired, f"the tool blocked opening {fifo}"


@pytest.mark.parametrize("kind", ["fifo", "link to a fifo", "a speed of 1e300", "JSON true", "a speed of 1e308"])
def test_the_speeds_file_neither_hangs_nor_misleads(trained, tmp_path, kind):
    home = tmp_path / "keras"
    (home / "kerascharrnn").mkdir(parents=True)
    speeds = home / "kerascharrnn" / "step_speeds.json"
    if kind == "fifo":
        os.mkfifo(speeds)
    elif kind == "link to a fifo":
        os.mkfifo(tmp_path / "pipe")
        os.symlink(tmp_path / "pipe", speeds)
    else:
        value = {"a speed of 1e300": 1e300, "JSON true": True, "a speed of 1e308": 1e308}[kind]
        speeds.write_text(json.dumps({"any machine": {"any model": value}}))
    with woken_if_blocked(speeds):
        result = run_cli("train", "--preset", "auto", "--max_minutes", 1, "--input_h5", trained["h5"],
                         "--checkpoint_name", tmp_path / "ck", env={"KERAS_HOME": str(home)})
    one_line(result, 1, "step_speeds.json")


def test_a_calibration_file_that_is_a_pipe_does_not_hang_a_plain_run(trained, tmp_path):
    home = tmp_path / "keras"
    (home / "kerascharrnn").mkdir(parents=True)
    os.mkfifo(home / "kerascharrnn" / "calibration.json")
    with woken_if_blocked(home / "kerascharrnn" / "calibration.json"):
        result = run_cli("train", "--input_h5", trained["h5"], "--max_iters", 2, "--checkpoint_name",
                         tmp_path / "ck", env={"KERAS_HOME": str(home)})
    one_line(result, 1, "calibration.json: not a regular file")


def test_a_time_budget_of_a_billion_minutes_names_the_flag_it_came_from(trained, tmp_path):
    result = run_cli("train", "--preset", "auto", "--max_minutes", "1e9", "--input_h5", trained["h5"],
                     "--checkpoint_name", tmp_path / "ck")
    one_line(result, 2, "--max_minutes")
    assert "max_epochs" not in result.stderr


# --- the process's surroundings ------------------------------------------------------------------------------------


def test_a_c_locale_without_utf8_mode_samples_and_prints_utf8(sentence_model, small_corpus, tmp_path):
    env = {"LC_ALL": "C", "LANG": "C", "PYTHONCOERCECLOCALE": "0", "PYTHONUTF8": "0"}
    full_env = dict(os.environ, PYTHONUNBUFFERED="1", **env)
    done = subprocess.run([sys.executable, os.path.join(REPO, "bin", "sample"), "--checkpoint", sentence_model,
                           "--length", "40", "--start_text", "caf\u00e9 zo\u00eb"], capture_output=True, env=full_env,
                          timeout=300)
    assert done.returncode == 0, done.stderr.decode("utf-8", "replace")[-2000:]
    assert done.stdout.decode("utf-8").startswith("caf\u00e9 zo\u00eb")  # UTF-8 whatever the locale
    pre = subprocess.run([sys.executable, os.path.join(REPO, "bin", "preprocess"), "--input_txt", small_corpus[0],
                          "--output_h5", str(tmp_path / "c\u00e9.h5"), "--output_json", str(tmp_path / "c.json"),
                          "--quiet"], capture_output=True, env=full_env, timeout=300)
    assert pre.returncode == 0, pre.stderr.decode("utf-8", "replace")[-2000:]


def test_sigterm_during_an_export_removes_what_it_was_writing_and_says_so(trained, tmp_path):
    process = subprocess.Popen([sys.executable, os.path.join(REPO, "bin", "export"), "--checkpoint", trained["keras"],
                                "--export_dir", str(tmp_path / "export"), "--model_name", "m", "--tflite"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not any(name.endswith(".tmp") for _, _, names in os.walk(tmp_path) for name in names) and \
            not any(d.endswith(".tmp") for _, dirs, _ in os.walk(tmp_path) for d in dirs):
        assert process.poll() is None and time.time() < deadline, "the export ended before it was signalled"
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM, err[-2000:]
    assert "stopped by SIGTERM" in err and "internal error" not in err
    left = [os.path.join(root, n) for root, dirs, names in os.walk(tmp_path) for n in dirs + names]
    assert not [p for p in left if p.endswith((".tmp", ".old"))], left
