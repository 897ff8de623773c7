"""Every tool's answer to bad input: a non-zero exit, one line on stderr naming the problem, no traceback,
and no existing output damaged (HTTP: a 4xx JSON reply with a "message", and the server keeps serving).

Inputs are checked before TensorFlow is imported, so for most cases that line is the whole output."""

import json
import os
import shutil
import zipfile

import h5py
import httpx
import numpy as np
import pytest
from conftest import run_cli, shakespeare_text

TRACEBACK = "Traceback (most recent call last)"


@pytest.fixture(scope="module")
def bad(tmp_path_factory, trained):
    """A directory of bad (and some good) inputs; names are used as {name} in the cases below."""
    import keras

    root = tmp_path_factory.mktemp("bad")
    (root / "empty.txt").write_bytes(b"")
    (root / "binary.dat").write_bytes(bytes(range(256)) * 8)
    (root / "latin1.txt").write_bytes("caf\u00e9 cr\u00e8me br\u00fbl\u00e9e ".encode("latin-1") * 50)
    (root / "tiny.txt").write_text("tiny corpus " * 20)
    (root / "small_train.txt").write_text(shakespeare_text()[:3000])
    (root / "precious.h5").write_bytes(b"an existing output that must survive")
    (root / "a_file").write_text("not a directory")
    shutil.copyfile(trained["keras"], root / "good.keras")
    good = (root / "good.keras").read_bytes()
    (root / "truncated.keras").write_bytes(good[:len(good) // 2])
    (root / "not_ckpt.json").write_text(json.dumps({"hello": "world"}))
    record = open(trained["prefix"] + "_40.json").read()
    (root / "truncated_ckpt.json").write_text(record[:len(record) // 2])
    with h5py.File(root / "foreign.h5", "w") as f:
        f.create_dataset("images", data=np.zeros(10))
    shutil.copyfile(trained["h5"], root / "truncated.h5")
    with open(root / "truncated.h5", "r+b") as f:
        f.truncate(os.path.getsize(trained["h5"]) // 2)
    (root / "other.txt").write_text("xyz" * 1000)
    assert run_cli("preprocess", "--input_txt", root / "other.txt", "--output_h5", root / "other.h5",
                   "--output_json", root / "other.json", "--quiet").returncode == 0
    for name in ("tiny", "small_train"):
        fractions = ["--val_frac", 0.45, "--test_frac", 0.45] if name == "small_train" else []
        assert run_cli("preprocess", "--input_txt", root / f"{name}.txt", "--output_h5", root / f"{name}.h5",
                       "--output_json", root / f"{name}.json", "--quiet", *fractions).returncode == 0

    # a Keras model file without our vocabulary, and one carrying code (a Lambda layer)
    inputs = keras.Input((3,))
    keras.Model(inputs, keras.layers.Dense(2)(inputs)).save(root / "foreign.keras")
    lambda_model = keras.Model(inputs, keras.layers.Lambda(lambda x: x * 2)(inputs))
    lambda_model.save(root / "lambda.keras")
    with zipfile.ZipFile(root / "lambda.keras", "a") as archive:
        archive.writestr("vocab.json", trained["vocab"].to_json())

    # --- round 2: paths through symlinks, files read with wrong fields, data of another corpus ---
    (root / "sym").mkdir()
    (root / "sym" / "corpus.txt").write_text("a corpus that must survive " * 20)
    os.symlink(root / "sym", root / "symdir")
    (root / "victim.h5").write_text("text the user keeps in a file named .h5 " * 20)
    os.symlink(root / "victim.h5", root / "to_victim.txt")
    (root / "a_dir").mkdir()
    shutil.copyfile(trained["h5"], root / "coll.h5")
    shutil.copyfile(trained["keras"], root / "ft_40.keras")  # what --checkpoint_name ft writes at iteration 40
    shutil.copyfile(trained["json"], root / "coll_best.json")  # what --checkpoint_name coll writes
    shutil.copyfile(trained["h5"], root / "noncanon.h5")
    vocab_json = json.load(open(trained["json"]))
    vocab_json["idx_to_token"] = {("0" + k if k == "1" else k): v for k, v in vocab_json["idx_to_token"].items()}
    (root / "noncanon.json").write_text(json.dumps(vocab_json))
    shutil.copyfile(trained["h5"], root / "surrogate.h5")
    vocab_json = json.load(open(trained["json"]))
    vocab_json["idx_to_token"]["1"] = "\ud800"
    (root / "surrogate.json").write_text(json.dumps(vocab_json))
    with h5py.File(root / "dangling.h5", "w") as f:
        f["train"] = h5py.ExternalLink("gone.h5", "/train")
        f["val"] = f["test"] = np.ones(10, dtype=np.uint8)
    record = json.load(open(trained["prefix"] + "_40.json"))
    for name, change in (("wrong_type", {"iteration": "40"}), ("float_size", {"model_config": dict(
            record["model_config"], rnn_size=32.5)}), ("no_vocab", {"vocab": None})):
        changed = {k: v for k, v in dict(record, **change).items() if v is not None}
        for ext in (".keras", ".state.npz"):
            shutil.copyfile(trained["prefix"] + "_40" + ext, root / (name + "_40" + ext))
        changed.update(model_file=name + "_40.keras", state_file=name + "_40.state.npz")
        (root / f"{name}_40.json").write_text(json.dumps(changed))
    # a .keras whose vocabulary is smaller than its model's input and output (no model_config.json: v0.1.0)
    small_vocab = json.load(open(root / "other.json"))
    with zipfile.ZipFile(trained["keras"]) as src, zipfile.ZipFile(root / "vocab_mismatch.keras", "w") as dst:
        for item in src.namelist():
            if item == "vocab.json":
                dst.writestr(item, json.dumps(small_vocab))
            elif item != "model_config.json":
                dst.writestr(item, src.read(item))

    os.makedirs(root / "models" / "inside" / "1")
    shutil.copyfile(trained["keras"], root / "models" / "inside" / "1" / "ck.keras")
    (root / "fake.t7").write_bytes(b"a torch-rnn checkpoint that must survive")
    os.symlink(root / "fake.t7", root / "t7link.keras")
    os.makedirs(root / "models" / "tiny" / "1")
    (root / "models" / "tiny" / "1" / "saved_model.pb").write_bytes(b"an existing version")
    (root / "fake.tflite").write_bytes(b"\x00" * 64)
    return {"root": root, "h5": trained["h5"], "json": trained["json"], "keras": trained["keras"],
            "record": trained["prefix"] + "_40.json"}


CASES = [
    # (id, tool, args, what the line must say, a file that must survive unchanged)
    ("preprocess-missing", "preprocess", ["--input_txt", "{root}/nope.txt"], "no such file", None),
    ("preprocess-directory", "preprocess", ["--input_txt", "{root}"], "is a directory", None),
    ("preprocess-empty", "preprocess", ["--input_txt", "{root}/empty.txt"], "is empty", None),
    ("preprocess-binary", "preprocess", ["--input_txt", "{root}/binary.dat", "--output_h5", "{root}/precious.h5"],
     "binary", "precious.h5"),
    ("preprocess-undecodable", "preprocess", ["--input_txt", "{root}/latin1.txt", "--output_h5",
                                              "{root}/precious.h5"], "utf-8", "precious.h5"),
    ("preprocess-no-train-left", "preprocess", ["--input_txt", "{root}/small_train.txt", "--val_frac", "0.6",
                                                "--test_frac", "0.5", "--output_h5", "{root}/precious.h5"],
     "val_frac", "precious.h5"),
    ("preprocess-bad-encoding", "preprocess", ["--input_txt", "{root}/tiny.txt", "--encoding", "klingon"],
     "klingon", None),
    ("train-missing-h5", "train", ["--input_h5", "{root}/nope.h5"], "no such file", None),
    ("train-directory-h5", "train", ["--input_h5", "{root}", "--input_json", "{json}"], "is a directory", None),
    ("train-foreign-h5", "train", ["--input_h5", "{root}/foreign.h5", "--input_json", "{json}"],
     "no train, val, test dataset", None),
    ("train-truncated-h5", "train", ["--input_h5", "{root}/truncated.h5", "--input_json", "{json}"], "HDF5", None),
    ("train-h5-json-mismatch", "train", ["--input_h5", "{h5}", "--input_json", "{root}/other.json"],
     "do not match", None),
    ("train-corpus-below-one-batch", "train", ["--input_h5", "{root}/tiny.h5"], "lower --batch_size", None),
    ("train-split-below-one-batch", "train", ["--input_h5", "{root}/small_train.h5"], "lower --batch_size", None),
    ("train-init-and-resume", "train", ["--init_from", "{keras}", "--resume_from", "{root}/x.json"], "conflict",
     None),
    ("train-unknown-model-type", "train", ["--model_type", "transformer"],
     "--model_type=transformer: value should be one of <lstm|gru|rnn>", None),
    ("train-resume-not-checkpoint", "train", ["--resume_from", "{root}/not_ckpt.json"],
     "not a kerascharrnn checkpoint", None),
    ("train-resume-truncated-json", "train", ["--resume_from", "{root}/truncated_ckpt.json"], "not JSON", None),
    ("train-resume-latest-none", "train", ["--resume_from", "latest", "--checkpoint_name", "{root}/cv/none"],
     "no complete checkpoint", None),
    ("train-init-truncated-keras", "train", ["--init_from", "{root}/truncated.keras", "--input_h5", "{h5}"],
     "truncated.keras", None),
    ("train-unwritable-checkpoint-dir", "train", ["--input_h5", "{h5}", "--checkpoint_name", "{root}/a_file/ck"],
     "cannot create directory", "a_file"),
    ("train-negative-batch", "train", ["--batch_size", "-5"], "batch_size", None),
    ("sample-missing", "sample", ["--checkpoint", "{root}/nope.keras"], "no such file", None),
    ("sample-truncated-keras", "sample", ["--checkpoint", "{root}/truncated.keras"], "truncated.keras", None),
    ("sample-foreign-keras", "sample", ["--checkpoint", "{root}/foreign.keras"], "without a vocabulary", None),
    ("sample-lambda-layer", "sample", ["--checkpoint", "{root}/lambda.keras"], "Lambda", None),
    ("sample-json-not-checkpoint", "sample", ["--checkpoint", "{root}/not_ckpt.json"],
     "not a kerascharrnn checkpoint", None),
    ("sample-unknown-characters", "sample", ["--checkpoint", "{keras}", "--start_text", "caf\u00e9 \u2603"],
     "'\u2603'", None),
    ("sample-zero-temperature", "sample", ["--checkpoint", "{keras}", "--temperature", "0"], "--temperature", None),
    ("sample-negative-temperature", "sample", ["--checkpoint", "{keras}", "--temperature", "-1"], "--temperature",
     None),
    ("sample-nan-temperature", "sample", ["--checkpoint", "{keras}", "--temperature", "nan"], "--temperature", None),
    ("sample-length-below-start", "sample", ["--checkpoint", "{keras}", "--length", "3", "--start_text", "ROMEO"],
     "shorter than --start_text", None),
    ("sample-top-p-zero", "sample", ["--checkpoint", "{keras}", "--top_p", "0"], "--top_p", None),
    ("sample-top-p-above-one", "sample", ["--checkpoint", "{keras}", "--top_p", "1.5"], "--top_p", None),
    ("sample-not-tflite", "sample", ["--tflite", "{root}/fake.tflite"], "not a TFLite model", None),
    ("sample-two-sources", "sample", ["--checkpoint", "{keras}", "--saved_model", "{root}/models"],
     "exactly one of", None),
    ("eval-bad-split", "eval", ["--checkpoint", "{keras}", "--input_h5", "{h5}", "--split", "train"], "split", None),
    ("eval-h5-json-mismatch", "eval", ["--checkpoint", "{keras}", "--input_h5", "{root}/other.h5"], "vocabulary",
     None),
    ("export-existing-version", "export", ["--checkpoint", "{keras}", "--export_dir", "{root}/models",
                                           "--model_name", "tiny", "--version", "1"], "--overwrite",
     "models/tiny/1/saved_model.pb"),
    ("export-missing-checkpoint", "export", ["--checkpoint", "{root}/nope.keras"], "no such file", None),
    # data loss: outputs that reach an input, or each other
    ("preprocess-output-through-symlinked-dir", "preprocess",
     ["--input_txt", "{root}/sym/corpus.txt", "--output_h5", "{root}/symdir/corpus.txt", "--output_json",
      "{root}/o.json"], "would overwrite the input", "sym/corpus.txt"),
    ("preprocess-input-is-symlink-to-output", "preprocess",
     ["--input_txt", "{root}/to_victim.txt", "--output_h5", "{root}/victim.h5", "--output_json", "{root}/o.json"],
     "would overwrite the input", "victim.h5"),
    ("preprocess-h5-equals-json", "preprocess",
     ["--input_txt", "{root}/tiny.txt", "--output_h5", "{root}/precious.h5", "--output_json", "{root}/precious.h5"],
     "is the same file as --output_json", "precious.h5"),
    ("preprocess-output-is-directory", "preprocess",
     ["--input_txt", "{root}/tiny.txt", "--output_h5", "{root}/a_dir", "--output_json", "{root}/o.json"],
     "is a directory", None),
    ("preprocess-output-name-too-long", "preprocess",
     ["--input_txt", "{root}/tiny.txt", "--output_h5", "{root}/" + "x" * 300, "--output_json", "{root}/o.json"],
     "this file system allows", None),
    ("train-checkpoint-name-overwrites-input", "train",
     ["--input_h5", "{root}/coll.h5", "--input_json", "{root}/coll_best.json", "--checkpoint_name", "{root}/coll"],
     "would overwrite --input_json", "coll_best.json"),
    ("train-checkpoint-name-overwrites-init", "train",
     ["--input_h5", "{h5}", "--init_from", "{root}/ft_40.keras", "--checkpoint_name", "{root}/ft"],
     "would overwrite --init_from", "ft_40.keras"),
    ("export-over-its-own-checkpoint", "export",
     ["--checkpoint", "{root}/models/inside/1/ck.keras", "--export_dir", "{root}/models", "--model_name", "inside",
      "--version", "1", "--overwrite"], "would hold or replace --checkpoint", "models/inside/1/ck.keras"),
    ("convert-output-symlink-to-input", "convert",
     ["--checkpoint", "{root}/fake.t7", "--output", "{root}/t7link.keras", "--overwrite"],
     "would overwrite the input", "fake.t7"),
    ("preprocess-empty-output", "preprocess", ["--input_txt", "{root}/tiny.txt", "--output_h5", ""],
     "--output_h5 is empty", None),
    ("preprocess-output-trailing-slash", "preprocess", ["--input_txt", "{root}/tiny.txt", "--output_h5",
                                                        "{root}/new.h5/"], "names a directory", None),
    ("preprocess-utf16-without-bom", "preprocess", ["--input_txt", "{root}/tiny.txt", "--encoding", "utf-16",
                                                    "--output_h5", "{root}/precious.h5"], "does not start with BOM",
     "precious.h5"),
    ("train-tensorboard-dir-is-a-file", "train", ["--input_h5", "{h5}", "--tensorboard_dir", "{root}/a_file"],
     "is a file, not a directory", "a_file"),
    # wrong data in silence
    ("train-resume-with-another-corpus", "train", ["--resume_from", "{record}", "--input_h5", "{root}/other.h5"],
     "--init_from", None),
    # tracebacks: numbers beyond what the code downstream accepts
    ("train-seed-above-2^32", "train", ["--input_h5", "{h5}", "--seed", str(2**32)], "seed", None),
    ("train-rnn-size-1e9", "train", ["--input_h5", "{h5}", "--rnn_size", str(10**9)], "TensorFlow's kernels", None),
    ("train-model-too-large-for-memory", "train", ["--input_h5", "{h5}", "--rnn_size", "20000", "--num_layers", "8"],
     "training needs at least", None),
    ("train-num-layers-100000", "train", ["--input_h5", "{h5}", "--num_layers", "100000"], "num_layers", None),
    ("train-lr-decay-every-beyond-int32", "train", ["--input_h5", "{h5}", "--lr_decay_every", str(10**12)],
     "lr_decay_every", None),
    ("sample-length-1e12", "sample", ["--checkpoint", "{keras}", "--length", str(10**12)], "length", None),
    ("sample-top-k-beyond-int32", "sample", ["--checkpoint", "{keras}", "--top_k", str(2**31)], "top_k", None),
    ("sample-output-too-large-for-memory", "sample", ["--checkpoint", "{keras}", "--length", str(10**9),
                                                      "--num_samples", "100000"], "of memory", None),
    ("preprocess-encoding-not-text", "preprocess", ["--input_txt", "{root}/tiny.txt", "--encoding", "rot13",
                                                    "--output_h5", "{root}/precious.h5"], "not a text encoding",
     "precious.h5"),
    ("serve-caps-beyond-memory", "serve", ["--checkpoint", "{keras}", "--max_num_new_chars", "2000000000",
                                           "--max_num_samples", "100000"], "lower --max_num_new_chars", None),
    # files read with a wrong field, type or size
    ("train-directory-json", "train", ["--input_h5", "{h5}", "--input_json", "{root}/a_dir"], "is a directory", None),
    ("train-resume-directory", "train", ["--resume_from", "{root}/a_dir"], "is a directory", None),
    ("train-resume-json-wrong-type", "train", ["--resume_from", "{root}/wrong_type_40.json"],
     "'iteration' has the wrong type", None),
    ("train-resume-json-float-size", "train", ["--resume_from", "{root}/float_size_40.json"],
     "'rnn_size' must be int", None),
    ("train-resume-json-missing-vocab", "train", ["--resume_from", "{root}/no_vocab_40.json"], "lacks 'vocab'", None),
    ("train-vocab-ids-not-canonical", "train", ["--input_h5", "{root}/noncanon.h5"], "'01' is not a plain integer",
     None),
    ("train-vocab-token-not-utf8", "train", ["--input_h5", "{root}/surrogate.h5"], "cannot be encoded as UTF-8",
     None),
    ("train-h5-dangling-external-link", "train", ["--input_h5", "{root}/dangling.h5", "--input_json", "{json}"],
     "dangling link", None),
    ("sample-keras-vocab-not-model-size", "sample", ["--checkpoint", "{root}/vocab_mismatch.keras"],
     "Embedding input_dim", None),
    ("eval-keras-vocab-not-model-size", "eval", ["--checkpoint", "{root}/vocab_mismatch.keras", "--input_h5", "{h5}"],
     "Embedding input_dim", None),
]


@pytest.mark.parametrize("name,tool,args,expected,protected", CASES, ids=[c[0] for c in CASES])
def test_cli_bad_input(bad, name, tool, args, expected, protected):
    root = bad["root"]
    args = [a.format(root=root, h5=bad["h5"], json=bad["json"], keras=bad["keras"], record=bad["record"])
            for a in args]
    before = (root / protected).read_bytes() if protected else None
    result = run_cli(tool, *args)
    assert result.returncode != 0
    assert TRACEBACK not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr[-3000:]
    assert expected in lines[0], lines[0]
    assert lines[0].startswith(f"{tool}: ")
    if protected:
        assert (root / protected).read_bytes() == before


SERVER_CASES = [
    ("/generate?start_text=the&n=three", 400),
    ("/generate?start_text=the&n=0", 400),
    ("/generate?start_text=the&n=123456789012345", 400),
    ("/generate?start_text=" + "the%20" * 1000 + "&n=1", 413),
    ("/generate?start_text=100%&n=1", 400),
    ("/generate?start_text=%C3%28&n=1", 400),
    ("/no/such/path", 404),
]


@pytest.mark.parametrize("path,status", SERVER_CASES, ids=["n-text", "n-zero", "n-huge", "start-text-huge",
                                                           "bad-percent", "bad-utf8", "unknown-path"])
def test_server_bad_input(server, path, status):
    reply = httpx.get(server["base"] + path, timeout=60)
    assert reply.status_code == status
    assert reply.json()["message"] and TRACEBACK not in reply.text
    assert httpx.get(server["base"] + "/generate?start_text=the&n=1", timeout=60).status_code == 200


def test_at_least_25_bad_inputs_are_covered():
    assert len(CASES) + len(SERVER_CASES) + len(RAW_CASES) >= 25


# --- HTTP requests the HTTP layer itself sees as malformed, sent as raw bytes ------------------------

def raw_request(base: str, request: bytes, timeout: float = 60):
    """Sends bytes on a fresh connection; returns (status, parsed JSON body) of the reply."""
    import socket

    host, port = base.rsplit("//", 1)[1].split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as s:
        s.sendall(request)  # no half-close: uvicorn drops a connection whose client has stopped sending
        reply = b""
        while chunk := s.recv(65536):
            reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    assert b"content-type: application/json" in head.lower(), head
    return status, json.loads(body)


RAW_CASES = [
    ("malformed-request-line", b"GARBAGE\r\n\r\n", 400, "malformed HTTP request"),
    ("request-line-with-spaces", b"GET /generate?start_text=a b c&n=1 HTTP/1.1\r\nHost: localhost\r\n\r\n", 400,
     "malformed HTTP request"),
    ("header-without-colon", b"GET / HTTP/1.1\r\nHost: localhost\r\nnot a header\r\n\r\n", 400, "malformed HTTP request"),
    ("non-ascii-bytes-in-query", b"GET /generate?start_text=\xff HTTP/1.1\r\nHost: localhost\r\n\r\n", 400,
     "illegal request line"),
    ("missing-host-header", b"GET / HTTP/1.1\r\n\r\n", 400, "Host"),
    ("bad-chunk-header", b"POST /v1/generate HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\nZZ\r\n", 400,
     "chunk"),
    ("query-string-1mb", b"GET /generate?start_text=" + b"a" * 1_000_000 + b"&n=1 HTTP/1.1\r\nHost: localhost\r\n"
     b"Connection: close\r\n\r\n", 413, "start_text is 1000000 characters"),
    ("request-head-beyond-limit", b"GET /generate?start_text=" + b"a" * (5 * 2**20) + b" HTTP/1.1\r\n\r\n", 400,
     "at most 4 MiB"),
]


@pytest.mark.parametrize("request_bytes,status,expected", [c[1:] for c in RAW_CASES], ids=[c[0] for c in RAW_CASES])
def test_server_malformed_http_gets_json(server, request_bytes, status, expected):
    got_status, body = raw_request(server["base"], request_bytes)
    assert got_status == status
    assert expected in body["message"], body
    assert httpx.get(server["base"] + "/generate?start_text=the&n=1", timeout=60).status_code == 200


def test_server_json_api_names_the_characters_the_client_sent(server):
    reply = httpx.post(server["base"] + "/v1/generate", json={"start_text": "\u0130stanbul"}, timeout=60)
    assert reply.status_code == 400
    assert "'\u0130' (U+0130)" in reply.json()["message"] and "0307" not in reply.json()["message"]
