"""The container workflow's scripts, without a container engine: the Makefile's commands (run against a fake
engine that records what it is given), the apt sources read as apt reads them, the container's health check,
and scripts that say why they stopped."""

import os
import shutil
import subprocess
import sys
import tempfile

import pytest
from conftest import REPO

sys.path.insert(0, os.path.join(REPO, "docker"))
sys.path.insert(0, os.path.join(REPO, "scripts"))

import apt_mirror  # noqa: E402
import healthcheck  # noqa: E402

FAKE_ENGINE = """#!/bin/sh
# records each call's arguments, one per line, a blank line after
for arg in "$@"; do printf '%s\\n' "$arg"; done >> "$FAKE_LOG"
echo >> "$FAKE_LOG"
case " $* " in *" $FAKE_FAIL "*) exit 1;; esac
exit 0
"""


@pytest.fixture
def engine(tmp_path):
    """A fake container engine named podman, where any user can run it: (its path, its log, the calls it
    recorded (lists of arguments))."""
    home = tempfile.mkdtemp(prefix="fake-engine-", dir="/tmp")
    os.chmod(home, 0o755)
    path = os.path.join(home, "podman")
    with open(path, "w") as f:
        f.write(FAKE_ENGINE)
    os.chmod(path, 0o755)
    log = tmp_path / "engine.log"
    log.touch()
    os.chmod(log, 0o666)

    def calls():
        text = log.read_text() if log.exists() else ""
        return [block.splitlines() for block in text.split("\n\n") if block.strip()]

    yield path, log, calls
    shutil.rmtree(home)


def make(target, engine, *settings, env=None, user=None):
    path, log, _ = engine
    where = REPO
    if user:  # a copy of the Makefile where that user can read it (a checkout may be its owner's alone)
        where = os.path.dirname(path)
        shutil.copy(os.path.join(REPO, "Makefile"), where)
    command = ["make", "-s", "-C", where, target, f"ENGINE={path}", *settings]
    if user:
        command = ["runuser", "-u", user, "--", *command]
    full_env = dict(os.environ, FAKE_LOG=str(log), FAKE_FAIL="never", **(env or {}))
    return subprocess.run(command, capture_output=True, text=True, env=full_env, timeout=120)


def test_values_with_shell_in_them_are_arguments_never_commands(engine, tmp_path):
    _, _, calls = engine
    pwned = tmp_path / "pwned"
    for target, setting in (("sample", f"CORPUS=x;touch {pwned}"), ("sample", f"MODEL=m`touch {pwned}`"),
                            ("train", f"MODEL=$$(touch {pwned})")):
        done = make(target, engine, setting, f"DATA={tmp_path}")
        assert done.returncode != 0 and "must be names" in done.stderr, done.stderr
    flags = f"--seed 1; touch {pwned} `touch {pwned}` *"  # (make itself reads $(...) as its own variables)
    done = make("train", engine, f"TRAIN_FLAGS={flags}", f"DATA={tmp_path / 'my data'}", "CORPUS=c")
    assert done.returncode == 0, done.stderr
    assert not pwned.exists()
    (call,) = calls()
    assert call[call.index("--resume_from") + 2:] == flags.split()  # words of the flags, as given, nothing run
    assert f"{tmp_path / 'my data'}:/data" in call  # a path with a space is one argument


def test_serve_publishes_on_loopback_and_warns_when_opened_without_a_key(engine, tmp_path):
    _, _, calls = engine
    done = make("serve", engine, f"DATA={tmp_path}")
    assert done.returncode == 0 and "warning" not in done.stderr, done.stderr
    call = calls()[-1]
    assert call[call.index("-p") + 1] == "127.0.0.1:8080:8080"
    assert call[call.index("--allowed_hosts") + 1] == "local"  # the server checks the names it is sent to
    opened = make("serve", engine, f"DATA={tmp_path}", "PUBLISH=-p 8080:8080")
    assert "published on every interface" in opened.stderr and "--api_key" in opened.stderr
    assert "--allowed_hosts" not in calls()[-1]
    keyed = make("serve", engine, f"DATA={tmp_path}", "PUBLISH=-p 8080:8080", "SERVE_FLAGS=--api_key_file /data/k")
    assert "warning" not in keyed.stderr


def test_the_serving_image_is_the_lite_install_and_serves_the_export_s_tflite(engine, tmp_path):
    _, _, calls = engine
    assert make("image-serve", engine).returncode == 0
    build = calls()[-1]
    assert "EXTRAS=lite" in build and build[build.index("-t") + 1] == "localhost/kerascharrnn:serve"
    assert make("export", engine, f"DATA={tmp_path}", "MODEL=m").returncode == 0
    assert calls()[-1][-1] == "--tflite"  # what serve-lite serves
    done = make("serve-lite", engine, f"DATA={tmp_path}", "MODEL=m")
    assert done.returncode == 0 and "warning" not in done.stderr, done.stderr
    call = calls()[-1]
    image = call.index("localhost/kerascharrnn:serve")
    assert call[image + 1:image + 4] == ["serve", "--tflite", "/data/export/m"]
    assert call[call.index("--allowed_hosts") + 1] == "local" and call[call.index("-p") + 1] == "127.0.0.1:8080:8080"


def test_containers_run_as_the_user_who_asked_under_sudo_and_rootless(engine, tmp_path):
    _, _, calls = engine
    assert make("sample", engine, f"DATA={tmp_path}", env={"SUDO_UID": "1234", "SUDO_GID": "1235"}).returncode == 0
    call = calls()[-1]
    assert call[call.index("--user") + 1] == "1234:1235" and "--userns=keep-id" not in call  # rootful: ids as they are
    for part in tmp_path.parents:  # (pytest's directories are its owner's alone)
        if str(part).startswith("/tmp/"):
            os.chmod(part, 0o755)
    os.chmod(tmp_path, 0o755)
    nobody = make("sample", engine, f"DATA={tmp_path}", user="nobody")  # rootless podman: keep-id
    assert nobody.returncode == 0, nobody.stderr
    call = calls()[-1]
    assert "--userns=keep-id" in call and call[call.index("--user") + 1] == "65534:65534"


def test_check_containers_says_which_step_stopped_it(engine, tmp_path):
    path, log, _ = engine
    env = dict(os.environ, ENGINE=path, FAKE_LOG=str(log), FAKE_FAIL="build", BASE="localhost/base:any")
    done = subprocess.run(["bash", os.path.join(REPO, "scripts", "check_containers.sh")], capture_output=True,
                          text=True, env=env, timeout=300)
    assert done.returncode == 1 and "check_containers: FAILED: build the CPU image" in done.stderr, done.stderr[-2000:]


# --- apt's sources -----------------------------------------------------------------------------------------------


def lay_out(root, files):
    for name, text in files.items():
        path = root / "etc" / "apt" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return str(root)


@pytest.mark.parametrize("files,expected", [
    ({"sources.list": "# a comment\ndeb-src http://src.example/debian bookworm main\n"
                      "deb [arch=amd64 signed-by=/k.gpg] http://mirror.example/debian bookworm main\n"},
     "http://mirror.example/debian"),
    ({"sources.list.d/debian.sources": "Types: deb deb-src\nURIs: http://deb822.example/debian\nSuites: bookworm\n"
                                       "Components: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"},
     "http://deb822.example/debian"),  # Debian 12's layout: no sources.list at all
    ({"sources.list.d/a.sources": "Types: deb\nURIs: http://disabled.example/debian\nEnabled: no\n\n"
                                  "Types: deb\nURIs: https://second.example/debian\nSuites: bookworm\n",
      "sources.list.d/0.list.disabled": "deb http://ignored.example/debian bookworm main\n",
      "sources.list.d/0.save": "deb http://ignored.example/debian bookworm main\n"},
     "https://second.example/debian"),
    ({"sources.list": "# deb http://commented.example/debian bookworm main\n",
      "sources.list.d/cdrom.list": "deb cdrom:[Debian]/ bookworm main\ndeb http://after.example/d bookworm main\n"},
     "http://after.example/d"),
])
def test_the_mirror_is_read_as_apt_reads_its_sources(tmp_path, files, expected):
    assert next(u for u in apt_mirror.source_uris(lay_out(tmp_path, files)) if u.startswith("http")) == expected
    done = subprocess.run([sys.executable, os.path.join(REPO, "scripts", "apt_mirror.py"), "--root", str(tmp_path)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == expected


def test_no_active_source_is_one_line_and_exit_1(tmp_path):
    root = lay_out(tmp_path, {"sources.list.d/x.sources": "Types: deb\nURIs: http://off.example\nEnabled: no\n"})
    done = subprocess.run([sys.executable, os.path.join(REPO, "scripts", "apt_mirror.py"), "--root", root],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and len(done.stderr.splitlines()) == 1 and "no active deb source" in done.stderr


# --- the container's health check -------------------------------------------------------------------------------


@pytest.mark.parametrize("args,tool,port", [
    (["python3", "-m", "kerascharrnn.cli", "serve", "--host", "0.0.0.0", "--port", "9000"], "serve", 9000),
    (["python3", "-m", "kerascharrnn.cli", "sample", "--start_text", "serve"], "sample", 8080),
    (["python3", "-m", "kerascharrnn.cli", "serve", "--port=abc"], "serve", None),
    (["sleep", "serve"], None, 8080),
])
def test_the_health_check_reads_the_tool_not_a_flag(args, tool, port):
    assert healthcheck.tool_of(args) == tool and healthcheck.port_of(args) == port


def test_the_health_check_of_a_sample_is_healthy_and_a_bad_port_is_a_line(tmp_path, capsys):
    cmdline = tmp_path / "cmdline"
    cmdline.write_bytes(b"\0".join([b"python3", b"-m", b"kerascharrnn.cli", b"sample", b"--start_text", b"serve"]))
    assert healthcheck.main(str(cmdline)) == 0
    cmdline.write_bytes(b"\0".join([b"python3", b"-m", b"kerascharrnn.cli", b"serve", b"--port=abc"]))
    assert healthcheck.main(str(cmdline)) == 1 and "not a port number" in capsys.readouterr().out


def test_make_is_there():
    assert shutil.which("make") and shutil.which("runuser"), "make and runuser (util-linux) run these tests"
