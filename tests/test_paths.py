"""Path safety (kerascharrnn.paths), atomic writes' modes and names (kerascharrnn.files), and the CLIs'
last line of defence (cli/common.run_main). Real files, symlinks and processes; no mocks."""

import json
import os
import re
import stat
import subprocess

import pytest
from conftest import run_cli, run_process, shared_file

from kerascharrnn.errors import UserError
from kerascharrnn.io import files, paths

FAULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "faults")


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_symlinked_directory_on_the_output_path_is_the_input(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "in.txt").write_text("hello")
    os.symlink(tmp_path / "data", tmp_path / "link")
    with pytest.raises(UserError, match="would overwrite the input"):
        paths.check_outputs([("--input_txt", str(tmp_path / "data" / "in.txt"))],
                            [("--output_h5", str(tmp_path / "link" / "in.txt"))])


def test_input_that_is_a_symlink_to_the_output(tmp_path):
    (tmp_path / "out.h5").write_text("text")
    os.symlink(tmp_path / "out.h5", tmp_path / "in.txt")
    with pytest.raises(UserError, match="both are"):
        paths.check_outputs([("--input_txt", str(tmp_path / "in.txt"))], [("--output_h5", str(tmp_path / "out.h5"))])


def test_hard_link_is_the_same_file(tmp_path):
    (tmp_path / "in.txt").write_text("text")
    os.link(tmp_path / "in.txt", tmp_path / "out.h5")
    with pytest.raises(UserError, match="would overwrite"):
        paths.check_outputs([("--input_txt", str(tmp_path / "in.txt"))], [("--output_h5", str(tmp_path / "out.h5"))])


def test_two_outputs_on_one_file(tmp_path):
    with pytest.raises(UserError, match="--output_h5 .* is the same file as --output_json"):
        paths.check_outputs([], [("--output_h5", str(tmp_path / "x")), ("--output_json", str(tmp_path / "x"))])


def test_input_inside_an_output_directory(tmp_path):
    (tmp_path / "models" / "m" / "1").mkdir(parents=True)
    (tmp_path / "models" / "m" / "1" / "ck.keras").write_text("x")
    with pytest.raises(UserError, match="would hold or replace --checkpoint"):
        paths.check_outputs([("--checkpoint", str(tmp_path / "models/m/1/ck.keras"))], [],
                            directories=[("--export_dir", str(tmp_path / "models" / "m" / "1"))])


def test_checkpoint_name_whose_files_are_inputs(tmp_path):
    for collide in ("cv_best.json", "cv_100.keras", "cv.lock", "cv_7.state.npz", "cv_loss.png"):
        with pytest.raises(UserError, match="^checkpoint_name .* would overwrite --input_json"):
            paths.check_checkpoint_name(str(tmp_path / "cv"), [("--input_json", str(tmp_path / collide))])
    paths.check_checkpoint_name(str(tmp_path / "cv"), [("--input_json", str(tmp_path / "cv.json")),
                                                       ("--input_h5", str(tmp_path / "cv_x.h5"))])


def test_directory_where_a_file_is_expected_and_name_too_long(tmp_path):
    with pytest.raises(UserError, match="is a directory"):
        paths.check_outputs([], [("--output_h5", str(tmp_path))])
    with pytest.raises(UserError, match="this file system allows"):
        paths.check_outputs([], [("--output_h5", str(tmp_path / ("x" * 300)))])


def test_atomic_write_keeps_the_mode_it_replaces_and_new_files_get_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        files.write_text_atomic(str(tmp_path / "new.txt"), "a")
        assert _mode(tmp_path / "new.txt") == 0o644
        (tmp_path / "shared.txt").write_text("b")
        os.chmod(tmp_path / "shared.txt", 0o664)
        files.write_text_atomic(str(tmp_path / "shared.txt"), "c")
        assert _mode(tmp_path / "shared.txt") == 0o664
        with files.atomic_dir(str(tmp_path / "export")) as tmp:
            open(os.path.join(tmp, "f"), "w").close()
        assert _mode(tmp_path / "export") == 0o755
    finally:
        os.umask(old)


def test_temporary_names_of_a_250_byte_file_name_fit(tmp_path):
    path = tmp_path / ("n" * 250)
    files.write_text_atomic(str(path), "fits")
    assert path.read_text() == "fits"
    with files.atomic_path(str(path), suffix=".keras") as tmp:
        assert len(os.path.basename(tmp).encode()) <= 255
    with files.atomic_dir(str(tmp_path / ("d" * 250))) as tmp:
        assert len(os.path.basename(tmp).encode()) <= 255
    assert sorted(os.listdir(tmp_path)) == sorted(["n" * 250, "d" * 250])


def test_unexpected_exception_is_one_line_exit_70_and_a_log(tmp_path):
    (tmp_path / "in.txt").write_text("some text to read " * 20)
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [FAULTS, os.environ.get("PYTHONPATH")])),
           "KERASCHARRNN_TEST_RAISE": "kerascharrnn.data.preprocess:build_vocabulary", "TMPDIR": str(tmp_path)}
    result = run_process("preprocess", "--input_txt", tmp_path / "in.txt", "--output_h5", tmp_path / "o.h5",
                     "--output_json", tmp_path / "o.json", env=env)
    assert result.returncode == 70
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    match = re.fullmatch(r"preprocess: error: internal error: RuntimeError: injected fault for the test;"
                         r" details in (\S+)", lines[0])
    assert match, lines[0]
    log = open(match.group(1)).read()
    assert match.group(1).startswith(str(tmp_path)) and "Traceback" in log and "build_vocabulary" not in lines[0]
    assert not (tmp_path / "o.h5").exists()


@pytest.fixture
def small_disk(tmp_path):
    """A 512 KiB tmpfs (a full disk, for real) where the tests run as root; skipped elsewhere."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs (a full disk) needs root")
    mount = tmp_path / "small_disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mount)], capture_output=True,
                          text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


def test_full_disk_during_preprocess_is_one_line_and_keeps_the_old_outputs(tmp_path, small_disk):
    (tmp_path / "big.txt").write_text("".join(chr(32 + i % 90) for i in range(2_000_000)))
    (small_disk / "out.h5").write_bytes(b"the previous HDF5")
    (small_disk / "out.json").write_bytes(b"the previous vocabulary")
    result = run_cli("preprocess", "--input_txt", tmp_path / "big.txt", "--output_h5", small_disk / "out.h5",
                     "--output_json", small_disk / "out.json", "--quiet")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "no space left on the device" in lines[0] and "unchanged" in lines[0], lines
    assert (small_disk / "out.h5").read_bytes() == b"the previous HDF5"
    assert (small_disk / "out.json").read_bytes() == b"the previous vocabulary"
    assert sorted(os.listdir(small_disk)) == ["out.h5", "out.json"]  # no temporary left behind


@pytest.mark.parametrize("where", ["kerascharrnn.data.preprocess:_write_ids", "kerascharrnn.io.files:write_text_atomic"],
                         ids=["while-writing-ids", "hdf5-written-json-not-yet"])
def test_kill_during_preprocess_keeps_the_old_outputs(tmp_path, where):
    (tmp_path / "in.txt").write_text("a new corpus to preprocess " * 200)
    (tmp_path / "out.h5").write_bytes(b"the previous HDF5")
    (tmp_path / "out.json").write_bytes(b"the previous vocabulary")
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [FAULTS, os.environ.get("PYTHONPATH")])),
           "KERASCHARRNN_TEST_KILL_IN": where}
    args = ["--input_txt", tmp_path / "in.txt", "--output_h5", tmp_path / "out.h5", "--output_json",
            tmp_path / "out.json", "--quiet"]
    killed = run_process("preprocess", *args, env=env)
    assert killed.returncode == -9
    assert (tmp_path / "out.h5").read_bytes() == b"the previous HDF5"
    assert (tmp_path / "out.json").read_bytes() == b"the previous vocabulary"
    again = run_cli("preprocess", *args)
    assert again.returncode == 0, again.stderr
    assert json.load(open(tmp_path / "out.json"))["idx_to_token"]["1"] == "a"


def test_preprocess_outputs_get_the_umask_mode_and_keep_a_shared_mode(tmp_path):
    (tmp_path / "in.txt").write_text("a corpus shared with a group " * 20)
    (tmp_path / "shared.json").write_text("{}")
    os.chmod(tmp_path / "shared.json", 0o664)
    old = os.umask(0o022)  # the subprocess inherits it
    try:
        result = run_cli("preprocess", "--input_txt", tmp_path / "in.txt", "--output_h5", tmp_path / "new.h5",
                         "--output_json", tmp_path / "shared.json", "--quiet")
    finally:
        os.umask(old)
    assert result.returncode == 0, result.stderr
    assert _mode(tmp_path / "new.h5") == 0o644 and _mode(tmp_path / "shared.json") == 0o664


# --- outputs that are not regular files: refused, left as they are --------------------------------------------


@pytest.fixture
def not_files(tmp_path):
    """A named pipe, a listening Unix socket, and a symlink to /dev/null (a character device): (what, path)."""
    import socket

    os.mkfifo(tmp_path / "fifo")
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(tmp_path / "sock"))
    os.symlink("/dev/null", tmp_path / "null")
    yield {"a named pipe (FIFO)": tmp_path / "fifo", "a socket": tmp_path / "sock",
           "a character device": tmp_path / "null"}
    server.close()


def _still(path) -> int:
    return stat.S_IFMT(os.stat(path).st_mode)


def test_an_atomic_write_onto_a_pipe_socket_or_device_is_refused(not_files):
    for kind, path in not_files.items():
        before = _still(path)
        with pytest.raises(UserError, match=re.escape(f"is {kind}; an output must be a regular file")):
            files.write_text_atomic(str(path), "x")
        with pytest.raises(UserError, match="regular file"):
            paths.check_outputs([], [("--output_json", str(path))])
        assert _still(path) == before and os.path.islink(path) == (kind == "a character device")
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)
    assert not [name for name in os.listdir(os.path.dirname(path)) if ".tmp" in name]  # no temporary left


def test_preprocess_and_convert_refuse_such_outputs_before_any_work(tmp_path, not_files):
    (tmp_path / "in.txt").write_text("some text to read " * 200)
    for kind, path in not_files.items():
        for flag in ("--output_json", "--output_h5"):
            other = "--output_h5" if flag == "--output_json" else "--output_json"
            result = run_cli("preprocess", "--input_txt", tmp_path / "in.txt", flag, path, other, tmp_path / "o.out")
            assert result.returncode == 1 and kind in result.stderr and len(result.stderr.splitlines()) == 1
            assert not (tmp_path / "o.out").exists() and os.path.lexists(path)
    os.mkfifo(tmp_path / "model.keras")
    result = run_cli("convert", "--checkpoint", shared_file("data/torch-rnn-shakespeare-2x128.t7"), "--output",
                     tmp_path / "model.keras", "--overwrite")
    assert result.returncode == 1 and "model.keras: is a named pipe (FIFO)" in result.stderr
    assert stat.S_ISFIFO(os.stat(tmp_path / "model.keras").st_mode)


def test_train_refuses_a_series_file_that_is_a_pipe_before_training(tmp_path, small_corpus):
    os.mkfifo(tmp_path / "ck_loss.png")
    result = run_cli("train", "--input_h5", small_corpus[1], "--checkpoint_name", tmp_path / "ck",
                     "--max_iters", 2, "--batch_size", 2, "--seq_length", 8, "--rnn_size", 8, "--num_layers", 1)
    assert result.returncode == 1 and "ck_loss.png: is a named pipe (FIFO)" in result.stderr
    assert stat.S_ISFIFO(os.stat(tmp_path / "ck_loss.png").st_mode) and not list(tmp_path.glob("ck_*.json"))
