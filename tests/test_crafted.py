"""Hostile files and surroundings (reliability rounds 3 and 4): crafted checkpoints whose declared sizes would
exhaust memory or disk before any check, files that disagree with each other, JSON nested beyond reason, and a
process whose surroundings are unusual (a deleted directory, a file name that is not UTF-8, another Keras backend
or floatx, a file-size limit). What can work works; the rest is one line on stderr and exit 1, never an internal
error, never a long wait."""

import json
import os
import resource
import subprocess
import sys
import zipfile

import numpy as np
import pytest
from conftest import REPO, run_cli, run_process

from kerascharrnn.errors import UserError
from kerascharrnn.io import checkpoint as ckpt


def _rezipped(source: str, target, replace=None, add=None) -> str:
    """A copy of a .keras with members replaced or added (bytes), deflated: small on disk, large declared."""
    replace, add = replace or {}, add or {}
    with zipfile.ZipFile(source) as original, zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as out:
        for info in original.infolist():
            out.writestr(info.filename, replace.get(info.filename, original.read(info.filename)))
        for name, data in add.items():
            out.writestr(name, data)
    return str(target)


def _one_line_error(result, *fragments):
    assert result.returncode == 1, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "internal error" not in lines[0], result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def _config(path) -> dict:
    with zipfile.ZipFile(path) as archive:
        return json.loads(archive.read("config.json"))


def test_crafted_keras_members_are_refused_before_they_are_read(trained, tmp_path):
    source = trained["keras"]
    wide = _config(source)
    next(layer for layer in wide["config"]["layers"] if layer["class_name"] == "Embedding")["config"]["output_dim"] = \
        5_000_000
    model_config = json.loads(zipfile.ZipFile(source).read("model_config.json"))
    cases = {
        "a 70 MB vocabulary": (dict(replace={"vocab.json": b" " * (70 << 20)}), "its vocab.json declares"),
        "a member no checkpoint has": (dict(add={"padding.bin": bytes(50 << 20)}), "holds a member 'padding.bin'"),
        "weights larger than the config allows": (dict(replace={"model.weights.h5": bytes(60 << 20)}),
                                                 "its weights declare"),
        "a 5,000,000-wide embedding in config.json alone": (
            dict(replace={"config.json": json.dumps(wide).encode()}),
            "config.json and model_config.json disagree: a Embedding layer's output_dim is 5000000"),
        "model_config.json of another vocabulary": (
            dict(replace={"model_config.json": json.dumps({**model_config, "vocab_size": 7}).encode()}),
            "says vocab_size 7"),
        "config.json nested 200,000 deep": (dict(replace={"config.json": b"[" * 200_000 + b"]" * 200_000}),
                                            "config.json entry is not JSON"),
    }
    for name, (change, message) in cases.items():
        path = _rezipped(source, tmp_path / "crafted.keras", **change)
        assert os.path.getsize(path) < 2 << 20, name  # small on disk: only what it declares is large
        with pytest.raises(UserError, match=message):
            ckpt.read_keras_file(path)
        _one_line_error(run_cli("sample", "--checkpoint", path, "--length", 5), message)


def test_a_state_that_declares_more_than_the_model_holds_is_refused_unread(trained, tmp_path):
    name = tmp_path / "ck"
    assert run_cli("train", "--input_h5", trained["h5"], "--batch_size", 4, "--seq_length", 16, "--rnn_size", 16,
                   "--wordvec_size", 8, "--num_layers", 1, "--max_iters", 2, "--checkpoint_every", 2,
                   "--checkpoint_name", name).returncode == 0
    state = dict(np.load(f"{name}_2.state.npz"))
    np.savez_compressed(f"{name}_2.state.npz", **state, extra=np.zeros(1 << 28, np.uint8))  # 256 MB, ~250 KB
    record = json.loads(open(f"{name}_2.json").read())
    record.pop("digests")  # as v0.2 wrote it, so that the size check itself is what refuses
    open(f"{name}_2.json", "w").write(json.dumps(record))
    assert os.path.getsize(f"{name}_2.state.npz") < 2 << 20
    result = run_cli("train", "--resume_from", f"{name}_2.json", "--max_iters", 4)
    assert result.returncode == 1 and "the training state declares" in result.stderr
    assert "refused unread" in result.stderr


@pytest.mark.parametrize("what", ["vocabulary", "checkpoint record"])
def test_json_nested_beyond_reason_is_one_line(trained, tmp_path, what):
    deep = "[" * 200_000 + "]" * 200_000
    if what == "vocabulary":
        (tmp_path / "v.json").write_text(deep)
        result = run_cli("train", "--input_h5", trained["h5"], "--input_json", tmp_path / "v.json",
                         "--checkpoint_name", tmp_path / "ck", "--max_iters", 1)
        _one_line_error(result, "not a JSON file")
    else:
        (tmp_path / "ck_1.json").write_text(deep)
        _one_line_error(run_cli("train", "--resume_from", tmp_path / "ck_1.json"), "not JSON")


def test_an_export_whose_vocabulary_does_not_fit_it_is_refused(trained, tmp_path):
    assert run_cli("export", "--checkpoint", trained["keras"], "--export_dir", tmp_path, "--model_name", "m",
                   "--tflite").returncode == 0
    version = tmp_path / "m" / "1"
    for vocab_file in (version / "assets.extra" / "vocab.json", version / "tflite" / "vocab.json"):
        vocab = json.loads(vocab_file.read_text())
        extra = str(len(vocab["idx_to_token"]) + 1)
        vocab["idx_to_token"][extra] = "\u2603"
        vocab["token_to_idx"]["\u2603"] = int(extra)
        vocab_file.write_text(json.dumps(vocab))
    _one_line_error(run_cli("sample", "--saved_model", version, "--length", 5), "its vocabulary has")
    _one_line_error(run_cli("sample", "--tflite", version / "tflite" / "model.tflite", "--length", 5),
                    "its vocabulary has")


# --- the process's surroundings --------------------------------------------------------------------------------


def test_a_deleted_current_directory_works_with_absolute_paths_and_names_a_relative_one(trained, tmp_path):
    gone = tmp_path / "gone"

    def in_deleted_directory(*args):
        gone.mkdir()
        script = (f"import os, sys; sys.path.insert(0, {REPO!r}); os.chdir({str(gone)!r}); os.rmdir({str(gone)!r});"
                  f"from kerascharrnn.cli.sample import main; sys.exit(main(['sample', *sys.argv[1:]]))")
        return subprocess.run([sys.executable, "-c", script, *map(str, args)], capture_output=True, text=True,
                              timeout=300)

    sampled = in_deleted_directory("--checkpoint", trained["keras"], "--length", 20, "--seed", 1)
    assert sampled.returncode == 0 and len(sampled.stdout.rstrip("\n")) == 20, sampled.stderr
    relative = os.path.relpath(trained["keras"], str(tmp_path))
    _one_line_error(in_deleted_directory("--checkpoint", relative), "the current directory no longer exists",
                    f"--checkpoint {relative} is relative")


def test_a_file_name_that_is_not_utf8_works_end_to_end(trained, tmp_path):
    """Names are the OS's bytes: a series named b"ck\xff" trains, resumes, samples and evaluates. Training and
    resuming run as processes (the name comes from argv and goes to a real stdout); reading it back in-process."""
    name = os.fsdecode(os.fsencode(str(tmp_path)) + b"/ck\xff")
    assert run_process("train", "--input_h5", trained["h5"], "--checkpoint_name", name, "--max_iters", 2,
                       "--batch_size", 4, "--seq_length", 16, "--print_every", 0).returncode == 0
    assert os.fsencode(f"{name}_2.json") in [os.fsencode(os.path.join(str(tmp_path), n))
                                              for n in os.listdir(str(tmp_path))]
    resumed = run_process("train", "--resume_from", "latest", "--checkpoint_name", name, "--max_iters", 4)
    assert resumed.returncode == 0 and os.path.exists(f"{name}_4.keras"), resumed.stderr
    assert run_cli("sample", "--checkpoint", f"{name}_4.json", "--length", 10).returncode == 0
    assert run_cli("eval", "--checkpoint", f"{name}_4.keras", "--input_h5", trained["h5"]).returncode == 0


def test_another_keras_backend_or_floatx_is_named(trained, tmp_path):
    result = run_process("sample", "--checkpoint", trained["keras"], env={"KERAS_BACKEND": "jax"})
    _one_line_error(result, "KERAS_BACKEND=jax", "TensorFlow backend")
    home = tmp_path / "keras"
    home.mkdir()
    (home / "keras.json").write_text(json.dumps({"floatx": "float16", "backend": "tensorflow",
                                                 "epsilon": 1e-7, "image_data_format": "channels_last"}))
    result = run_process("sample", "--checkpoint", trained["keras"], env={"KERAS_HOME": str(home)})
    _one_line_error(result, "floatx is float16", "keras.json")
    (home / "keras.json").write_text(json.dumps({"floatx": "float32", "backend": "jax"}))  # the tools run on TF,
    other = run_process("sample", "--checkpoint", trained["keras"], "--length", 5, env={"KERAS_HOME": str(home)})
    assert other.returncode == 0 and "note: keras.json names the jax backend" in other.stderr  # and say so


def test_a_file_size_limit_is_a_write_error_not_a_kill(trained, tmp_path):
    """`ulimit -f` (RLIMIT_FSIZE): past it a write would kill the process with SIGXFSZ; it is an error naming the
    file instead, and the previous file stays whole."""
    (tmp_path / "in.txt").write_text("some text to read " * 20_000)
    (tmp_path / "o.h5").write_bytes(b"previous")

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))

    result = subprocess.run([sys.executable, os.path.join(REPO, "bin", "preprocess"), "--input_txt",
                             str(tmp_path / "in.txt"), "--output_h5", str(tmp_path / "o.h5"), "--output_json",
                             str(tmp_path / "o.json"), "--quiet"], capture_output=True, text=True, timeout=300,
                            preexec_fn=limit)
    _one_line_error(result, "o.h5", "File too large")
    assert (tmp_path / "o.h5").read_bytes() == b"previous"


def test_zip_members_that_lie_about_their_size_and_models_that_declare_too_much(trained, tmp_path):
    """A member whose header claims a small size over a large compressed body; an input of 20,000,000 streams
    (Keras would allocate every stateful layer's state for them); a layer kind no checkpoint has."""
    source = trained["keras"]
    for body, message in ((b"\0" * (20 << 20), "its sizes are false"),  # 20 MB claiming 5,000 bytes: refused unread
                          (b" " * (4 << 20), "Bad CRC-32")):  # compresses below the claim: read up to it, no further
        lying = tmp_path / "lying.keras"
        _rezipped(source, lying, replace={"config.json": body})
        data = bytearray(lying.read_bytes())
        with zipfile.ZipFile(lying) as archive:
            local = archive.getinfo("config.json").header_offset
        for offset in (local + 22, _central_offset(data, "config.json") + 24):  # the uncompressed-size fields
            data[offset:offset + 4] = (5000).to_bytes(4, "little")
        lying.write_bytes(bytes(data))
        with pytest.raises(UserError, match=message):
            ckpt.read_keras_file(str(lying))
    big_batch, other_kind = _config(source), _config(source)
    big_batch["config"]["layers"][0]["config"]["batch_shape"] = [20_000_000, None]
    other_kind["config"]["layers"][2]["class_name"] = "Conv1D"
    for config, message in ((big_batch, "a checkpoint's batch is at most 65536"),
                            (other_kind, "holds a Conv1D layer")):
        path = _rezipped(source, tmp_path / "declares.keras", replace={"config.json": json.dumps(config).encode()})
        _one_line_error(run_cli("sample", "--checkpoint", path, "--length", 5), message)


def _central_offset(data: bytes, name: str) -> int:
    """Where the central directory entry of `name` starts in a zip's bytes."""
    position = 0
    while True:
        position = data.index(b"PK\x01\x02", position)
        length = int.from_bytes(data[position + 28:position + 30], "little")
        if data[position + 46:position + 46 + length] == name.encode():
            return position
        position += 4
