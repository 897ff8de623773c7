"""torch-rnn .t7 checkpoints -> Keras weights (kerascharrnn.torch_checkpoint).

The reference is a numpy transcription of torch-rnn's own forward pass (LanguageModel.lua, LSTM.lua,
VanillaRNN.lua, and nn's BatchNormalization / Dropout / Linear / LookupTable in evaluation mode, as
sample.lua runs them) applied to the raw tensors torchfile loads: it never sees the converted weights.
Files for configurations without a real checkpoint are written by tests/torch_format.py.
"""

import os

import numpy as np
import pytest
import torch_format as t7
import torchfile
from conftest import run_cli, shared_file

from kerascharrnn.errors import UserError
from kerascharrnn.io import torch_checkpoint

REAL = "data/torch-rnn-shakespeare-2x128.t7"
TOLERANCE = 1e-4


# --- torch-rnn's forward pass in numpy ----------------------------------------------------------------------

def _f64(value):
    return np.asarray(value, dtype=np.float64)


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


class TorchRNNReference:
    """nn.LanguageModel's forward, one token at a time, batch 1, remember_states on (as LM:sample runs it),
    after model:evaluate(). `net_modules`: model.net.modules as torchfile returns them."""

    def __init__(self, net_modules):
        self.modules = [(m.torch_typename().decode(), m) for m in net_modules]
        self.state = {}

    def step(self, token: int) -> np.ndarray:
        """0-based token id (torch-rnn id - 1) -> scores (V,)."""
        x = None
        for index, (name, m) in enumerate(self.modules):
            if name == "nn.LookupTable":
                x = _f64(m["weight"])[token]
            elif name == "nn.LSTM":  # LSTM.lua updateOutput
                w, b = _f64(m["weight"]), _f64(m["bias"])
                hidden = b.size // 4
                d = w.shape[0] - hidden
                prev_h, prev_c = self.state.get(index, (np.zeros(hidden), np.zeros(hidden)))
                a = x @ w[:d] + prev_h @ w[d:] + b
                i, f, o = (_sigmoid(a[k * hidden:(k + 1) * hidden]) for k in range(3))
                g = np.tanh(a[3 * hidden:])
                c = f * prev_c + i * g
                x = o * np.tanh(c)
                self.state[index] = (x, c)
            elif name == "nn.VanillaRNN":  # VanillaRNN.lua updateOutput
                w, b = _f64(m["weight"]), _f64(m["bias"])
                hidden = b.size
                d = w.shape[0] - hidden
                prev_h = self.state.get(index, np.zeros(hidden))
                x = np.tanh(x @ w[:d] + prev_h @ w[d:] + b)
                self.state[index] = x
            elif name == "nn.View":  # (N, T, H) <-> (N*T, H): values unchanged
                pass
            elif name == "nn.BatchNormalization":  # THNN BatchNormalization_updateOutput, train = false
                mean = _f64(m["running_mean"])
                if m["running_var"] is None:  # version 1 files: running_std is the inverse std
                    invstd = _f64(m["running_std"])
                else:
                    invstd = 1.0 / np.sqrt(_f64(m["running_var"]) + m["eps"])
                weight = _f64(m["weight"]) if m["weight"] is not None else 1.0
                bias = _f64(m["bias"]) if m["bias"] is not None else 0.0
                x = (x - mean) * invstd * weight + bias
            elif name == "nn.Dropout":  # Dropout.lua, not training: identity (v2), x (1 - p) for v1
                if not m["v2"]:
                    x = x * (1.0 - m["p"])
            elif name == "nn.Linear":
                x = _f64(m["weight"]) @ x + _f64(m["bias"])
            else:
                raise AssertionError(f"reference has no {name}")
        return x


def reference_for(path):
    model = torchfile.load(str(path))[b"model"]
    return TorchRNNReference(model[b"net"][b"modules"])


# --- our Keras model (the only calls into kerascharrnn.model: keep them here) -----------------------------

class KerasStepper:
    """The .t7 loaded as every tool loads it (CharRNN.from_checkpoint), its single-step function, batch 1,
    explicit zero states."""

    def __init__(self, converted):
        import keras
        import tensorflow as tf

        from kerascharrnn.models.charrnn import CharRNN

        cfg = converted.model_config
        model = CharRNN.from_checkpoint(converted.path, batch_size=1).model
        keras_names = [v.path.split("/")[-1] for v in model.weights]
        assert [n.split("/")[-1] for n in converted.weight_names] == keras_names
        assert [tuple(v.shape) for v in model.weights] == [w.shape for w in converted.weights]
        for layer in model.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                assert layer.epsilon == torch_checkpoint.KERAS_BN_EPSILON
        for loaded, expected in zip(model.get_weights(), converted.weights):
            np.testing.assert_array_equal(loaded, expected)
        self.tf = tf
        self.step_fn = CharRNN.from_checkpoint(converted.path, batch_size=1).step_fn()
        per_layer = 2 if cfg.model_type == "lstm" else 1  # LSTM: h then c per layer
        self.states = tuple(tf.zeros((1, cfg.rnn_size)) for _ in range(per_layer * cfg.num_layers))

    def step(self, token: int) -> np.ndarray:
        logits, self.states = self.step_fn(self.tf.constant([token], self.tf.int32), self.states)
        return np.asarray(logits)[0]


def greedy_compare(converted, reference, prime, steps):
    """Primes both models with `prime` (0-based ids), then decodes greedily, feeding both the reference's
    argmax. Returns (largest |logit difference| over all steps, reference ids, Keras argmax ids, the
    smallest top-2 gap of the reference)."""
    keras_model = KerasStepper(converted)
    ids, keras_ids, largest, gap = list(prime), [], 0.0, np.inf
    for t in range(len(prime) + steps - 1):
        ours, theirs = keras_model.step(ids[t]), reference.step(ids[t])
        largest = max(largest, float(np.max(np.abs(ours - theirs))))
        if t >= len(prime) - 1:
            top2 = np.sort(theirs)[-2:]
            gap = min(gap, float(top2[1] - top2[0]))
            ids.append(int(np.argmax(theirs)))
            keras_ids.append(int(np.argmax(ours)))
    return largest, ids[len(prime):], keras_ids, gap


# --- the real checkpoint --------------------------------------------------------------------------------

def test_real_checkpoint_matches_torch_rnn():
    path = shared_file(REAL)
    converted = torch_checkpoint.read_t7(path)
    cfg = converted.model_config
    assert (cfg.vocab_size, cfg.model_type, cfg.wordvec_size, cfg.rnn_size, cfg.num_layers, cfg.dropout,
            cfg.batchnorm) == (65, "lstm", 64, 128, 2, 0.0, False)
    assert not converted.vocab.is_bytes and converted.vocab.tokens[:5] == ("F", "i", "r", "s", "t")
    assert converted.iteration == 14000 and len(converted.train_loss_history) == 14000
    assert converted.val_loss_history_it[-1] == 14000 and len(converted.val_loss_history) == 14
    assert converted.options["rnn_size"] == 128 and converted.options["input_json"].endswith(".json")
    assert all(w.dtype == np.float32 and w.flags.c_contiguous for w in converted.weights)

    prime = list(converted.vocab.encode("ROMEO:\n"))
    largest, ref_ids, keras_ids, gap = greedy_compare(converted, reference_for(path), prime, steps=300)
    print(f"real checkpoint: largest logit difference {largest:.2e}, smallest top-2 gap {gap:.2e}")
    assert largest < TOLERANCE
    assert converted.vocab.decode(keras_ids) == converted.vocab.decode(ref_ids)


def _modules_by_class(table):
    found = {}

    def walk(obj):
        if isinstance(obj, torchfile.TorchObject):
            name = obj.torch_typename().decode()
            if name.startswith("nn.") and name not in found:
                found[name] = (obj._version_number, sorted(k.decode() for k in obj._obj))
                for value in obj._obj.values():
                    walk(value)
        elif isinstance(obj, (list, dict)):
            for value in obj.values() if isinstance(obj, dict) else obj:
                walk(value)

    walk(table)
    return found


def test_writer_mirrors_the_real_file(tmp_path):
    """tests/torch_format.py lays a checkpoint out as train.lua does: same classes, versions, fields and
    checkpoint keys; the real weights written again read back identically."""
    path = shared_file(REAL)
    real = torchfile.load(path)
    modules = real[b"model"][b"net"][b"modules"]
    lstms = [m for m in modules if m.torch_typename() == b"nn.LSTM"]
    written = t7.checkpoint(t7.language_model(
        real[b"model"][b"idx_to_token"], "lstm", modules[0][b"weight"], [(m[b"weight"], m[b"bias"]) for m in lstms],
        modules[4][b"weight"], modules[4][b"bias"]), i=14000)
    copy = tmp_path / "copy.t7"
    t7.save(copy, written)
    again = torchfile.load(str(copy))
    assert sorted(again) == sorted(real)
    assert sorted(again[b"model"]._obj) == sorted(real[b"model"]._obj)
    assert sorted(again[b"opt"]) == sorted(real[b"opt"])
    assert _modules_by_class(again) == _modules_by_class(real)
    ours, theirs = torch_checkpoint.read_t7(str(copy)), torch_checkpoint.read_t7(path)
    assert ours.model_config == theirs.model_config and ours.vocab == theirs.vocab
    assert all(np.array_equal(a, b) for a, b in zip(ours.weights, theirs.weights))


# --- configurations written by tests/torch_format.py --------------------------------------------------

TEXT_TOKENS = ["a", "b", " ", "\n", "é", "—", "’", "ü", "Z", ".", "x", "€"]
BYTE_TOKENS = [b"a", b"b", b" ", b"\n", b"\xc3", b"\xa9", b"\xe2", b"\x80", b"\x94", b"\xff", b"x", b"."]

CONFIGS = {
    "dropout": dict(layers=2, dropout=0.5),
    "batchnorm": dict(layers=2, batchnorm=dict()),
    "batchnorm_v1_no_affine_dropout_v1": dict(layers=2, dropout=0.3, dropout_v2=False,
                                              batchnorm=dict(version=1, affine=False, eps=0.1)),
    "vanilla_rnn": dict(model_type="rnn", layers=2),
    "three_layers": dict(layers=3),
    "bytes_vocab": dict(layers=1, tokens=BYTE_TOKENS),
    "utf8_vocab": dict(layers=2, tokens=[t.encode("utf-8") for t in TEXT_TOKENS]),
    "cuda_tensors": dict(layers=2, tensor_type="torch.CudaTensor", flat=False),
    "double_tensors": dict(layers=1, model_type="rnn", tensor_type="torch.DoubleTensor"),
}


def synthetic_model(seed=0, model_type="lstm", layers=2, tokens=None, dropout=0.0, dropout_v2=True, batchnorm=None,
                    tensor_type="torch.FloatTensor", flat=True, wordvec=6, hidden=10):
    """A torch-rnn LanguageModel with random torch-layout weights."""
    rng = np.random.default_rng(seed)
    tokens = tokens or [t.encode("utf-8") for t in "abcdefghij \n"]
    vocab, gates = len(tokens), (4 if model_type == "lstm" else 1)
    rnns, batchnorms = [], []
    for i in range(layers):
        rows = (wordvec if i == 0 else hidden) + hidden
        rnns.append((rng.normal(0, 0.6, (rows, gates * hidden)), rng.normal(0, 0.5, gates * hidden)))
        if batchnorm is not None:
            # running variances both below and above eps_keras - eps_torch: both conversion branches
            # (for the small ones a weight of the std's size, as training gives: outputs of order 1 keep
            # float32 rounding, amplified by 1/std, within the tolerance)
            var = rng.permutation(np.concatenate([rng.uniform(1e-5, 9e-4, hidden // 2),
                                                  rng.uniform(0.02, 2.0, hidden - hidden // 2)]))
            bn = dict(running_mean=rng.normal(0, 0.3, hidden), running_var=var,
                      eps=batchnorm.get("eps", 1e-5), version=batchnorm.get("version", 2))
            if batchnorm.get("affine", True):
                bn.update(weight=rng.normal(1, 0.5, hidden) * np.minimum(1, np.sqrt(var) * 10),
                          bias=rng.normal(0, 0.3, hidden))
            batchnorms.append(bn)
    return t7.language_model(tokens, model_type, rng.normal(0, 1, (vocab, wordvec)), rnns,
                             rng.normal(0, 1, (vocab, hidden)), rng.normal(0, 0.5, vocab), batchnorms=batchnorms,
                             dropout_p=dropout, dropout_v2=dropout_v2, tensor_type=tensor_type, flat=flat)


def write(tmp_path, value, name="model.t7"):
    path = tmp_path / name
    t7.save(path, value)
    return str(path)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_synthetic_checkpoint_matches_torch_rnn(tmp_path, name):
    options = CONFIGS[name]
    model = synthetic_model(seed=sorted(CONFIGS).index(name), **options)
    path = write(tmp_path, t7.checkpoint(model, i=2000, train_loss_history=[4.2, 3.5],
                                         val_loss_history=[3.9], val_loss_history_it=[2000]))
    converted = torch_checkpoint.read_t7(path)
    cfg = converted.model_config
    assert cfg.model_type == options.get("model_type", "lstm") and cfg.num_layers == options["layers"]
    assert cfg.dropout == pytest.approx(options.get("dropout", 0.0)) and cfg.batchnorm == ("batchnorm" in options)
    assert converted.iteration == 2000 and converted.train_loss_history == (4.2, 3.5)
    assert converted.val_loss_history_it == (2000,)
    if name == "bytes_vocab":
        assert converted.vocab.is_bytes and converted.vocab.tokens == tuple(t[0] for t in BYTE_TOKENS)
    elif name == "utf8_vocab":
        assert converted.vocab.encoding == "utf-8" and converted.vocab.tokens == tuple(TEXT_TOKENS)
    variances = [w for n, w in zip(converted.weight_names, converted.weights) if n.endswith("moving_variance")]
    assert all(np.all(v >= 0) for v in variances)
    if name == "batchnorm":  # both branches: var + eps_torch - eps_keras, and 0 with gamma rescaled
        assert any(np.any(v == 0) for v in variances) and any(np.any(v > 0) for v in variances)

    largest, ref_ids, keras_ids, gap = greedy_compare(converted, reference_for(path), [0, 3, 1], steps=80)
    print(f"{name}: largest logit difference {largest:.2e}, smallest top-2 gap {gap:.2e}")
    assert largest < TOLERANCE
    assert keras_ids == ref_ids


def test_cuda_and_double_tensors_read_as_their_float_values(tmp_path):
    """cutorch writes a CudaStorage as its numbers (a host copy): such files read like float ones."""
    weights = {}
    for tensor_type in ("torch.FloatTensor", "torch.CudaTensor", "torch.DoubleTensor"):
        model = synthetic_model(seed=3, tensor_type=tensor_type, flat=tensor_type == "torch.FloatTensor")
        weights[tensor_type] = torch_checkpoint.read_t7(write(tmp_path, t7.checkpoint(model), tensor_type)).weights
    for other in ("torch.CudaTensor", "torch.DoubleTensor"):
        assert all(np.array_equal(a, b) for a, b in zip(weights["torch.FloatTensor"], weights[other]))


def test_bare_language_model_without_checkpoint_table(tmp_path):
    converted = torch_checkpoint.read_t7(write(tmp_path, synthetic_model()))
    assert converted.iteration is None and converted.train_loss_history == () and converted.options == {}


@pytest.mark.parametrize("tokens, expected", [
    ([b"a", b"[195]", b"[169]", b"\n"], (97, 195, 169, 10)),  # preprocess.py --encoding bytes
    ([b"a", b"\xc3", b"\n"], (97, 195, 10)),  # single bytes (Python 2)
])
def test_byte_vocabularies(tmp_path, tokens, expected):
    vocab = torch_checkpoint.read_t7(write(tmp_path, t7.checkpoint(synthetic_model(tokens=tokens)))).vocab
    assert vocab.is_bytes and vocab.tokens == expected


# --- bad input: always a one-line UserError naming the file -------------------------------------------------

def expect_user_error(path, *fragments):
    with pytest.raises(UserError) as info:
        torch_checkpoint.read_t7(str(path))
    message = str(info.value)
    assert message.startswith(str(path)) and "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, message
    return message


def test_truncated_real_checkpoint(tmp_path):
    with open(shared_file(REAL), "rb") as f:
        data = f.read()
    for cut in (3, 100, 700, 5000, 1_000_000, 1_952_000, len(data) - 1):
        path = tmp_path / f"cut{cut}.t7"
        path.write_bytes(data[:cut])
        expect_user_error(path, "truncated")
    (tmp_path / "empty.t7").write_bytes(b"")
    expect_user_error(tmp_path / "empty.t7", "empty file")


def test_random_and_corrupted_bytes(tmp_path):
    rng = np.random.default_rng(7)
    path = tmp_path / "random.t7"
    for size in (1, 7, 64, 4096):
        path.write_bytes(rng.bytes(size))
        expect_user_error(path, "not a Torch .t7 file")
    # a valid table header, then noise
    path.write_bytes(b"\x03\x00\x00\x00\x01\x00\x00\x00" + rng.bytes(300))
    expect_user_error(path)
    # damage anywhere in a small valid checkpoint: a UserError or a checkpoint, never another exception
    good = bytearray(t7.dumps(t7.checkpoint(synthetic_model(layers=1, hidden=3, wordvec=2))))
    for trial in range(300):
        damaged = bytearray(good)
        at = int(rng.integers(0, len(good) - 4))
        damaged[at:at + 4] = rng.bytes(4) if trial % 2 else (int(rng.integers(-2**31, 2**31))).to_bytes(
            4, "little", signed=True)
        path.write_bytes(bytes(damaged))
        try:
            torch_checkpoint.read_t7(str(path))
        except UserError as e:
            assert "\n" not in str(e) and str(e).startswith(str(path))


def test_torch_ascii_format_is_named(tmp_path):
    path = tmp_path / "ascii.t7"
    path.write_bytes(b"3\n1\n1\n2\n5\nmodel\n1\n1\n")
    expect_user_error(path, "ASCII")


def test_missing_file_and_directory(tmp_path):
    expect_user_error(tmp_path / "nope.t7", "no such file")
    expect_user_error(tmp_path, "directory")


@pytest.mark.parametrize("content, fragment", [
    ({"a": 1, "b": "x"}, "a table without 'model' (keys: a, b)"),
    (42, "holds a number (42), not a torch-rnn checkpoint"),
    ([1, 2, 3], "a table without 'model'"),
    (t7.sequential([]), "holds a nn.Sequential, not a torch-rnn checkpoint"),
    ({"model": t7.sequential([]), "i": 3}, "'model' holds a nn.Sequential, not a torch-rnn nn.LanguageModel"),
    ({"model": "lstm"}, "'model' holds a string"),
])
def test_not_a_torch_rnn_checkpoint(tmp_path, content, fragment):
    expect_user_error(write(tmp_path, content), fragment)


def _model_with(**changes):
    model = synthetic_model()
    model.fields.update(changes)
    return model


def _first_lstm(model):
    return model.fields["net"].fields["modules"][1]


@pytest.mark.parametrize("tensor_type", ["torch.ClTensor", "torch.CudaHalfTensor", "torch.HalfTensor"])
def test_unreadable_tensor_types(tmp_path, tensor_type):
    model = synthetic_model()
    lstm = _first_lstm(model)
    lstm.fields["weight"] = t7.Tensor.of(np.zeros((16, 40)), tensor_type)
    expect_user_error(write(tmp_path, t7.checkpoint(model)), tensor_type, "model:float()")


def test_unsupported_model_type(tmp_path):
    expect_user_error(write(tmp_path, t7.checkpoint(_model_with(model_type="gru"))),
                      "model_type 'gru' is not supported", "'lstm' and 'rnn'")


def test_inconsistent_shapes(tmp_path):
    model = synthetic_model()
    _first_lstm(model).fields["weight"] = t7.Tensor.of(np.zeros((17, 40)))
    expect_user_error(write(tmp_path, t7.checkpoint(model), "rows.t7"), "inconsistent shapes", "17x40")

    model = synthetic_model()
    model.fields["idx_to_token"] = model.fields["idx_to_token"][:-1]
    expect_user_error(write(tmp_path, t7.checkpoint(model), "vocab.t7"), "11 tokens", "12 rows")

    expect_user_error(write(tmp_path, t7.checkpoint(_model_with(rnn_size=64)), "size.t7"),
                      "model.rnn_size is 64 but model.net has 10")

    model = synthetic_model()
    model.fields["net"].fields["modules"].insert(2, t7.TorchObject("nn.Tanh", {}))
    expect_user_error(write(tmp_path, t7.checkpoint(model), "tanh.t7"), "module 3 is a nn.Tanh")

    model = synthetic_model()
    model.fields["net"].fields["modules"][1] = t7.TorchObject("nn.VanillaRNN", _first_lstm(model).fields)
    expect_user_error(write(tmp_path, t7.checkpoint(model), "mixed.t7"), "model_type is 'lstm' but")


def test_bad_vocabulary_tokens(tmp_path):
    model = synthetic_model(tokens=[b"a", b"\xc3\xa9", b"\xff", b"b", b"c", b"d", b"e", b"f", b"g", b"h", b"i", b"j"])
    expect_user_error(write(tmp_path, t7.checkpoint(model)), "mixes multi-byte characters",
                      "idx_to_token[2] = b'\\xc3\\xa9'", "idx_to_token[3] = b'\\xff'")


def test_import_does_not_load_tensorflow():
    import subprocess
    import sys

    code = "import sys, kerascharrnn.io.torch_checkpoint; print('tensorflow' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert done.stdout.strip() == "False", done.stderr


# --- every tool takes the .t7 as it is ------------------------------------------------------------------

def _reference_greedy(path, prime, steps):
    reference = reference_for(path)
    converted = torch_checkpoint.read_t7(path)
    ids = list(converted.vocab.encode(prime))
    for t in range(len(ids) + steps - 1):
        logits = reference.step(ids[t])
        if t >= len(prime) - 1:
            ids.append(int(np.argmax(logits)))
    return converted.vocab.decode(ids)


@pytest.mark.slow
def test_tools_take_the_real_t7(tmp_path, keras_home):
    import json

    import keras

    path = shared_file(REAL)
    expected = _reference_greedy(path, "ROMEO:", 194)  # 200 characters in all, as --length counts
    sample = run_cli("sample", "--checkpoint", path, "--sample", 0, "--length", 200, "--start_text", "ROMEO:",
                     "--jsonl")
    assert sample.returncode == 0, sample.stderr
    assert json.loads(sample.stdout) == expected  # torch-rnn's own greedy text

    converted = run_cli("convert", "--checkpoint", path, "--output", tmp_path / "t.keras")
    assert converted.returncode == 0, converted.stderr
    assert "lstm 2 x 128" in converted.stdout and "14000 iterations" in converted.stdout
    # plain Keras loads it; torch-rnn's parameter count is the same
    assert keras.models.load_model(tmp_path / "t.keras").count_params() == 242_945
    again = run_cli("sample", "--checkpoint", tmp_path / "t.keras", "--sample", 0, "--length", 200,
                    "--start_text", "ROMEO:", "--jsonl")
    assert json.loads(again.stdout) == expected
    refused = run_cli("convert", "--checkpoint", path, "--output", tmp_path / "t.keras")
    assert refused.returncode == 1 and "--overwrite" in refused.stderr

    # the same vocabulary: tiny-shakespeare preprocessed here (ids in order of first appearance, as torch-rnn)
    text = shared_file("data/tiny-shakespeare.txt")
    assert run_cli("preprocess", "--input_txt", text, "--output_h5", tmp_path / "ts.h5", "--output_json",
                   tmp_path / "ts.json", "--quiet").returncode == 0
    evaluated = run_cli("eval", "--checkpoint", path, "--input_h5", tmp_path / "ts.h5", "--split", "val")
    assert evaluated.returncode == 0, evaluated.stderr
    assert 0.5 < float(evaluated.stdout.split("val loss: ")[1].split()[0]) < 2.0
    tuned = run_cli("train", "--init_from", path, "--input_h5", tmp_path / "ts.h5", "--max_iters", 14_003,
                    "--batch_size", 4, "--seq_length", 16, "--checkpoint_name", tmp_path / "cv" / "ft",
                    "--reset_iterations", 0, "--print_every", 1)
    assert tuned.returncode == 0, tuned.stderr
    assert "i = 14001" in tuned.stdout and "i = 14003" in tuned.stdout  # continues torch-rnn's count
    exported = run_cli("export", "--checkpoint", path, "--export_dir", tmp_path / "models")
    assert exported.returncode == 0, exported.stderr
    from_saved_model = run_cli("sample", "--saved_model", tmp_path / "models" / "torch-rnn-shakespeare-2x128",
                               "--sample", 0, "--length", 200, "--start_text", "ROMEO:", "--jsonl")
    assert json.loads(from_saved_model.stdout) == expected


def test_cli_refuses_a_t7_that_is_not_torch_rnn(tmp_path):
    bad = write(tmp_path, {"model": t7.sequential([]), "i": 3}, "seq.t7")
    for tool, args in (("sample", ["--checkpoint", bad]), ("convert", ["--checkpoint", bad]),
                       ("serve", ["--checkpoint", bad])):
        result = run_cli(tool, *args)
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert result.returncode == 1 and len(lines) == 1 and "nn.Sequential" in lines[0], result.stderr


@pytest.mark.parametrize("size,stride", [((2**30,), (0,)), ((2**16, 2**16), (0, 0)), ((16, 40), (0, 1)),
                                         ((16, 40), (1, 1))])
def test_a_tensor_that_repeats_its_storage_is_refused_before_any_copy(tmp_path, size, stride):
    """A stride of 0 (or overlapping strides) views a few numbers as a huge tensor: copied, 4 GiB or more."""
    model = synthetic_model()
    storage = t7.Storage("torch.FloatStorage", np.zeros(640, np.float32))
    _first_lstm(model).fields["weight"] = t7.Tensor("torch.FloatTensor", storage, size, stride)
    expect_user_error(write(tmp_path, t7.checkpoint(model), "strided.t7"), f"stride {list(stride)}",
                      "repeats its storage's numbers")
