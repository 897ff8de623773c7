"""bin/export: the SavedModel (generate/step signatures, TF1-session loading as TF Serving does it, no
cuDNN ops) and the TFLite model (builtin ops, parity), and sampling from every artifact."""

import json
import os
import re
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import run_cli
from helpers import graph_ops, read_export_info

from kerascharrnn.config import ModelConfig
from kerascharrnn.errors import UserError
from kerascharrnn.export import saved_model as export
from kerascharrnn.inference import engines, sampling
from kerascharrnn.inference.sampling import Sampler
from kerascharrnn.io import artifacts
from kerascharrnn.models import stack
from kerascharrnn.models.charrnn import CharRNN

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 200


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory):
    model_dir = tmp_path_factory.mktemp("models") / "tiny"
    charrnn = CharRNN.from_checkpoint(trained["keras"])
    version_dir = str(model_dir / "1")
    export.export(charrnn, version_dir, source=trained["keras"], tflite=True)
    return {"model_dir": str(model_dir), "dir": version_dir, "charrnn": charrnn, "model": charrnn.model,
            "vocab": trained["vocab"],
            "tflite": os.path.join(version_dir, "tflite", "model.tflite"), "keras": trained["keras"],
            "loaded": tf.saved_model.load(version_dir)}


def generate_signature(exported, prompts, num_new, temperature=(1.0,), top_k=0, seed=1, top_p=None):
    inputs = dict(start_text=tf.constant(prompts, tf.string), num_new_chars=tf.constant(num_new, tf.int32),
                  temperature=tf.constant(temperature, tf.float32), top_k=tf.constant(top_k, tf.int32),
                  seed=tf.constant(seed, tf.int64))
    if top_p is None:
        out = exported["loaded"].signatures["generate"](**inputs)
    else:
        out = exported["loaded"].signatures["generate_top_p"](top_p=tf.constant(top_p, tf.float32), **inputs)
    return [t.decode("utf-8") for t in out["text"].numpy()]


def keras_logits(exported, text):
    """Whole-sequence logits of the stateful Keras model, every row fed `text` from a zero state."""
    model = exported["model"]
    stack.reset_states(model)
    ids = exported["vocab"].encode(text)
    return model(np.tile(ids[None], (model.inputs[0].shape[0], 1))).numpy(), ids


def test_layout_versions_and_info(exported, trained):
    d = exported["dir"]
    assert {"saved_model.pb", "variables", "assets.extra", "tflite"} <= set(os.listdir(d))
    assert sorted(os.listdir(os.path.join(d, "tflite"))) == ["model.tflite", "vocab.json"]
    assert artifacts.saved_model_vocab(d) == trained["vocab"] == artifacts.tflite_vocab(exported["tflite"])
    info = read_export_info(d)
    assert [s["name"] for s in info["states"]] == ["state_0", "state_1", "state_2", "state_3"]
    assert [(s["layer"], s["part"], s["size"]) for s in info["states"][:2]] == [("lstm_0", "h", 32), ("lstm_0", "c", 32)]
    model_dir = exported["model_dir"]
    assert artifacts.next_version(model_dir) == 2
    export.export(exported["charrnn"], os.path.join(model_dir, "2"), source=trained["keras"])
    assert sorted(artifacts.version_dirs(model_dir)) == [1, 2]
    assert artifacts.resolve_saved_model(model_dir) == os.path.join(model_dir, "2")
    assert artifacts.resolve_saved_model(d) == d
    with pytest.raises(UserError, match="already exists"):
        export.export(exported["charrnn"], os.path.join(model_dir, "2"), source=trained["keras"])
    export.export(exported["charrnn"], os.path.join(model_dir, "2"), source=trained["keras"],
                  overwrite=True)
    assert sorted(os.listdir(model_dir)) == ["1", "2"]  # no temporary directories left behind


def test_generate_repeats_keeps_prompts_and_lengths(exported):
    prompts = ["ROMEO:", "", "First Citizen:\nWe"]
    a = generate_signature(exported, prompts, 60, temperature=[0.7, 1.0, 1.3], seed=5)
    b = generate_signature(exported, prompts, 60, temperature=[0.7, 1.0, 1.3], seed=5)
    assert a == b
    assert [t[:len(p)] for t, p in zip(a, prompts)] == prompts
    assert [len(t) for t in a] == [len(p) + 60 for p in prompts]
    # seed 0 draws a fresh seed each call
    fresh = {generate_signature(exported, ["A"], 80, temperature=[2.0], seed=0)[0] for _ in range(3)}
    assert len(fresh) > 1


def test_generate_zero_temperature_is_argmax_and_unknown_characters_are_skipped(exported):
    sampler = engines.charrnn_engine(exported["charrnn"], jit_compile=False).sampler
    vocab = exported["vocab"]
    expected = vocab.decode(sampler.sample_ids([vocab.encode("ROMEO")], 50, greedy=True)[0])
    assert generate_signature(exported, ["ROMEO"], 50, temperature=[0.0]) == [expected]
    assert generate_signature(exported, ["R€OMEO☃"], 50, temperature=[0.0]) == ["R€OMEO☃" + expected[5:]]


def test_generate_top_p_is_nucleus_sampling(exported):
    """top_p = 1 is generate itself; a tiny top_p keeps only the most likely character (argmax); in
    between, the text differs from both and repeats with its seed."""
    prompts = ["ROMEO:", "A"]
    plain = generate_signature(exported, prompts, 60, temperature=[1.3], seed=4)
    assert generate_signature(exported, prompts, 60, temperature=[1.3], seed=4, top_p=1.0) == plain
    greedy = generate_signature(exported, prompts, 60, temperature=[0.0])
    assert generate_signature(exported, prompts, 60, temperature=[1.3], seed=4, top_p=1e-6) == greedy
    nucleus = generate_signature(exported, prompts, 60, temperature=[1.3], seed=4, top_p=0.5)
    assert nucleus == generate_signature(exported, prompts, 60, temperature=[1.3], seed=4, top_p=0.5)
    assert nucleus != plain and nucleus != greedy
    assert read_export_info(exported["dir"])["signatures"] == ["generate", "generate_top_p", "serving_default", "step"]


def test_generate_without_filters_gives_the_ids_of_the_filtered_loop(exported):
    """The signature runs a loop without the top-k / top-p filters (and, all rows greedy, without noise)
    unless a request turns one on; top_k = V turns the filtered loop on without removing anything, so the
    texts must be the same, for sampled, greedy and mixed rows."""
    vocab_size = exported["vocab"].size
    prompts = ["ROMEO:", "A", ""]
    for temperature in ([1.3], [0.0], [0.0, 0.8, 1.0]):
        unfiltered = generate_signature(exported, prompts, 70, temperature=temperature, seed=6)
        assert generate_signature(exported, prompts, 70, temperature=temperature, seed=6, top_k=vocab_size) == unfiltered
        assert generate_signature(exported, prompts, 70, temperature=temperature, seed=6, top_k=vocab_size,
                                  top_p=1.0) == unfiltered
    assert generate_signature(exported, prompts, 70, temperature=[1.3], seed=6, top_k=2) != \
        generate_signature(exported, prompts, 70, temperature=[1.3], seed=6)


def test_xla_export_generates_what_the_plain_export_does(exported, tmp_path):
    """bin/export --xla: the generate signatures' loop is XLA-compiled in chunks (marked in the saved
    graph); argmax text equals the plain export's across a chunk boundary, sampling repeats with its seed."""
    version_dir = str(tmp_path / "xla" / "1")
    info = export.export(exported["charrnn"], version_dir, source=exported["keras"], xla=True)
    assert info["xla"] is True and read_export_info(version_dir)["xla"] is True
    saved = open(os.path.join(version_dir, "saved_model.pb"), "rb").read()
    assert b"_XlaMustCompile" in saved
    compiled = {"loaded": tf.saved_model.load(version_dir)}
    prompts = ["ROMEO:", "", "First Citizen:\nWe"]
    greedy = generate_signature(exported, prompts, 300, temperature=[0.0])  # 300 > a 256-character chunk
    assert generate_signature(compiled, prompts, 300, temperature=[0.0]) == greedy
    sampled = generate_signature(compiled, prompts, 40, temperature=[1.0], seed=3, top_p=0.9)
    assert sampled == generate_signature(compiled, prompts, 40, temperature=[1.0], seed=3, top_p=0.9)
    assert [len(t) for t in sampled] == [len(p) + 40 for p in prompts]
    # more rows than sampling.XLA_MAX_ROWS: the plain export's loop, as bin/sample does, so its very text
    many = (prompts * sampling.XLA_MAX_ROWS)[:sampling.XLA_MAX_ROWS + 1]
    assert generate_signature(compiled, many, 40, temperature=[1.0], seed=3) == \
        generate_signature(exported, many, 40, temperature=[1.0], seed=3)
    assert generate_signature(compiled, many[:3], 40, temperature=[1.0], seed=3) != \
        generate_signature(exported, many[:3], 40, temperature=[1.0], seed=3)  # XLA's own random numbers
    # the compiled loop without filters (or noise) unless asked: the same ids as with the filters in
    vocab_size = exported["vocab"].size
    for temperature in ([1.3], [0.0], [0.0, 0.8, 1.0]):
        assert generate_signature(compiled, prompts, 40, temperature=temperature, seed=6) == \
            generate_signature(compiled, prompts, 40, temperature=temperature, seed=6, top_k=vocab_size)
    assert not read_export_info(exported["dir"])["xla"]
    # the warm-up requests TF Serving replays at load time: PredictionLogs that run on this export
    requests = read_warmup_requests(os.path.join(version_dir, "assets.extra", "tf_serving_warmup_requests"))
    assert [name for name, _ in requests] == [name for name in ("serving_default", "generate", "generate_top_p")
                                              for _ in range(3)]
    # one request per loop the signature picks: sampled without filters, filtered, greedy
    assert [(int(inputs["top_k"]), float(inputs["temperature"][0])) for _, inputs in requests[:3]] == \
        [(0, 1.0), (2, 1.0), (0, 0.0)]
    for name, inputs in requests:
        text = compiled["loaded"].signatures[name](**inputs)["text"].numpy()
        assert text.shape == (1,) and len(text[0].decode("utf-8")) == 1
    assert read_export_info(version_dir)["warmup"] == "assets.extra/tf_serving_warmup_requests"
    assert not os.path.exists(os.path.join(exported["dir"], "assets.extra", "tf_serving_warmup_requests"))


def read_warmup_requests(path):
    """(signature name, input tensors) of each PredictionLog in a warm-up file, parsed by protobuf from
    descriptors with tensorflow_serving/apis' field numbers (its Python package pins an older protobuf)."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
    from tensorflow.core.framework import tensor_pb2

    proto = descriptor_pb2.FileDescriptorProto(name="warmup_test.proto", package="warmup_test")
    fields = {"ModelSpec": [("signature_name", 3, "TYPE_STRING", None, "LABEL_OPTIONAL")],
              "InputsEntry": [("key", 1, "TYPE_STRING", None, "LABEL_OPTIONAL"),
                              ("value", 2, "TYPE_BYTES", None, "LABEL_OPTIONAL")],  # a TensorProto
              "PredictRequest": [("model_spec", 1, "TYPE_MESSAGE", "ModelSpec", "LABEL_OPTIONAL"),
                                 ("inputs", 2, "TYPE_MESSAGE", "InputsEntry", "LABEL_REPEATED")],
              "PredictLog": [("request", 1, "TYPE_MESSAGE", "PredictRequest", "LABEL_OPTIONAL")],
              "PredictionLog": [("predict_log", 6, "TYPE_MESSAGE", "PredictLog", "LABEL_OPTIONAL")]}
    for message, message_fields in fields.items():
        descriptor = proto.message_type.add(name=message)
        for name, number, kind, type_name, label in message_fields:
            descriptor.field.add(name=name, number=number, type=getattr(descriptor_pb2.FieldDescriptorProto, kind),
                                 label=getattr(descriptor_pb2.FieldDescriptorProto, label),
                                 type_name=f".warmup_test.{type_name}" if type_name else None)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    prediction_log = message_factory.GetMessageClass(pool.FindMessageTypeByName("warmup_test.PredictionLog"))
    requests = []
    for record in tf.data.TFRecordDataset(path):
        request = prediction_log.FromString(record.numpy()).predict_log.request
        requests.append((request.model_spec.signature_name,
                         {e.key: tf.constant(tf.make_ndarray(tensor_pb2.TensorProto.FromString(e.value)))
                          for e in request.inputs}))
    return requests


def test_step_signature_and_tflite_match_keras_for_200_steps(exported):
    text = (open(os.path.join(REPO, "README.md"), encoding="utf-8").read() * 2)
    text = "".join(c for c in text if c in set(exported["vocab"].tokens))[:STEPS]
    expected, ids = keras_logits(exported, text)
    batch = expected.shape[0]
    sizes = stack.state_sizes(exported["model"])
    step = exported["loaded"].signatures["step"]
    runner = engines.load_interpreter(exported["tflite"]).get_signature_runner("step")
    for call, tolerance in ((step, 1e-5), (runner, 1e-5)):
        states = {f"state_{k}": np.zeros((batch, h), np.float32) for k, h in enumerate(sizes)}
        worst = 0.0
        for t in range(STEPS):
            out = call(ids=np.full(batch, ids[t], np.int32), **states)
            worst = max(worst, float(np.abs(np.asarray(out["logits"]) - expected[:, t]).max()))
            states = {k: np.asarray(out[k]) for k in states}
        assert worst < tolerance


def test_tflite_builtin_ops_dynamic_batch_weights_inside(exported):
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    # the builtin kernels alone, no XNNPACK delegate (which would replace the ops it takes over)
    interpreter = Interpreter(model_path=exported["tflite"],
                              experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    interpreter.allocate_tensors()
    ops = {op["op_name"] for op in interpreter._get_ops_details()}
    assert ops and not any(op.upper().startswith(("FLEX", "CUSTOM", "DELEGATE")) for op in ops)
    assert {"FULLY_CONNECTED", "LOGISTIC", "TANH"} <= ops
    runner = interpreter.get_signature_runner("step")
    for batch in (1, 7):
        states = {f"state_{k}": np.zeros((batch, 32), np.float32) for k in range(4)}
        out = runner(ids=np.zeros(batch, np.int32), **states)
        assert out["logits"].shape == (batch, exported["vocab"].size) and np.isfinite(out["logits"]).all()
    weight_bytes = 4 * exported["model"].count_params()
    assert os.path.getsize(exported["tflite"]) > 0.9 * weight_bytes


def test_tflite_steps_give_the_ids_of_one_step_at_a_time(exported):
    """The `steps` signature (export.TFLITE_STEPS characters per call) gives the same ids as the `step`
    loop for the same seed: temperatures per row (argmax rows among them), greedy, prompts of different
    lengths ending inside a call, lengths that leave a tail for `step`; top-k runs step by step."""
    engine = engines.open_engine("tflite", exported["tflite"], exported["vocab"])
    assert engine.sampler.multi_step.steps == export.TFLITE_STEPS
    one_at_a_time = Sampler.for_numpy_step(engine.sampler._numpy_step, stack.state_sizes(exported["model"]),
                                           exported["vocab"].size)
    rng = np.random.default_rng(0)
    cases = [dict(temperature=0.8), dict(temperature=[0.0, 0.7, 1.3]), dict(greedy=True), dict(temperature=1.0, top_k=5)]
    for seed, options in enumerate(cases, 1):
        prompts = [rng.integers(0, exported["vocab"].size, n).astype(np.int32) for n in (0, 37, 90)]
        for num_new in (export.TFLITE_STEPS * 2 + 5, 3):
            ours = engine.sample_ids(prompts, num_new, seed=seed, **options)
            theirs = one_at_a_time.sample_ids(prompts, num_new, seed=seed, **options)
            assert all(np.array_equal(a, b) for a, b in zip(ours, theirs)), (options, num_new)
    assert read_export_info(exported["dir"])["tflite"]["steps_per_call"] == export.TFLITE_STEPS


@pytest.mark.parametrize("quantize,tolerance", [("float16", 5e-2), ("dynamic", 2e-1)])
def test_quantized_tflite_runs_close_to_float(exported, quantize, tolerance, tmp_path):
    path = tmp_path / "q.tflite"
    path.write_bytes(export.tflite_model(exported["dir"], quantize))
    assert path.stat().st_size < os.path.getsize(exported["tflite"]) * 0.75
    expected, ids = keras_logits(exported, "ROMEO: What say")
    runner = engines.load_interpreter(str(path)).get_signature_runner("step")
    states = {f"state_{k}": np.zeros((expected.shape[0], 32), np.float32) for k in range(4)}
    for t in range(len(ids)):
        out = runner(ids=np.full(expected.shape[0], ids[t], np.int32), **states)
        states = {k: out[k] for k in states}
        np.testing.assert_allclose(out["logits"], expected[:, t], atol=tolerance)


def test_graph_has_no_cudnn_ops_and_export_calls_only_cells(exported, tmp_path, monkeypatch):
    ops = graph_ops(exported["dir"])
    assert {"While", "StatelessWhile"} & ops and not [op for op in ops if "Cudnn" in op or "BlockLSTM" in op]

    def whole_sequence_call(*args, **kwargs):
        raise AssertionError("export must not call a recurrent layer's whole-sequence call")

    config = ModelConfig(vocab_size=exported["vocab"].size, model_type="gru", wordvec_size=8, rnn_size=8,
                         num_layers=2, batchnorm=True, dropout=0.1)
    charrnn = CharRNN.build(config, exported["vocab"], 3)
    charrnn.model(np.zeros((3, 2), np.int32))  # built (the whole-sequence call is fine here, before the spy)
    for layer_class in (keras.layers.LSTM, keras.layers.GRU, keras.layers.SimpleRNN):
        monkeypatch.setattr(layer_class, "call", whole_sequence_call)
    export.export(charrnn, str(tmp_path / "gru" / "1"), source="gru.keras", tflite=True)
    assert not [op for op in graph_ops(str(tmp_path / "gru" / "1")) if "Cudnn" in op]


FRESH_PROCESS = r"""
import json, sys
sys.modules["kerascharrnn"] = None  # the package must not be needed (an import would raise)
import tensorflow as tf
m = tf.saved_model.load(sys.argv[1])
g = m.signatures["generate"](start_text=tf.constant(["ROMEO:", "A"]), num_new_chars=tf.constant(30),
                             temperature=tf.constant([0.0, 0.0]), top_k=tf.constant(0), seed=tf.constant(1, tf.int64))
s = m.signatures["step"](ids=tf.constant([0]), **{f"state_{k}": tf.zeros([1, 32]) for k in range(4)})
print(json.dumps({"text": [t.decode() for t in g["text"].numpy()], "logits": s["logits"].numpy().tolist(),
                  "modules": sorted(k for k in sys.modules if k.startswith("kerascharrnn") and sys.modules[k])}))
"""


def test_fresh_process_loads_without_the_package(exported, tmp_path):
    result = subprocess.run([sys.executable, "-c", FRESH_PROCESS, exported["dir"]], capture_output=True, text=True,
                            cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    reply = json.loads(result.stdout.strip().splitlines()[-1])
    assert reply["modules"] == []
    assert reply["text"] == generate_signature(exported, ["ROMEO:", "A"], 30, temperature=[0.0, 0.0])
    expected, _ = keras_logits(exported, exported["vocab"].tokens[0])
    np.testing.assert_allclose(reply["logits"][0], expected[0, 0], atol=1e-5)


def test_saved_model_cli_show_and_run(exported, tmp_path):
    """saved_model_cli run loads through a TF1 session, as TensorFlow Serving does."""
    cli = [sys.executable, "-m", "tensorflow.python.tools.saved_model_cli"]
    show = subprocess.run(cli + ["show", "--all", "--dir", exported["dir"]], capture_output=True, text=True,
                          timeout=300)
    assert show.returncode == 0, show.stderr[-2000:]
    for name in ("signature_def['generate']", "signature_def['serving_default']", "signature_def['step']",
                 "signature_def['generate_top_p']", "inputs['top_p']",
                 "inputs['state_3']", "outputs['logits']", "inputs['num_new_chars']"):
        assert name in show.stdout
    zeros = str([[0.0] * 32])
    run = subprocess.run(cli + ["run", "--dir", exported["dir"], "--tag_set", "serve", "--signature_def", "generate",
                                "--input_exprs", 'start_text=["ROMEO:"];num_new_chars=25;temperature=[0.0];top_k=0;seed=3',
                                ], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    expected = generate_signature(exported, ["ROMEO:"], 25, temperature=[0.0])[0]
    assert repr(expected.encode())[2:-1] in run.stdout.replace("\n ", "")
    out_dir = tmp_path / "out"
    step = subprocess.run(cli + ["run", "--dir", exported["dir"], "--tag_set", "serve", "--signature_def", "step",
                                 "--input_exprs", f"ids=[0];state_0={zeros};state_1={zeros};state_2={zeros};state_3={zeros}",
                                 "--outdir", str(out_dir)], capture_output=True, text=True, timeout=300)
    assert step.returncode == 0, step.stderr[-2000:]
    expected_logits, _ = keras_logits(exported, exported["vocab"].tokens[0])
    np.testing.assert_allclose(np.load(out_dir / "logits.npy")[0], expected_logits[0, 0], atol=1e-5)


def test_documented_rest_request_fits_the_generate_signature(exported):
    """The columnar request in export/README.md, turned into tensors by the signature's dtypes (what TF
    Serving's REST front end does), runs and returns one text per prompt."""
    readme = open(os.path.join(REPO, "export", "README.md"), encoding="utf-8").read()
    bodies = [json.loads(block) for block in re.findall(r"```json\n(.*?)```", readme, re.S)
              if '"signature_name": "generate"' in block]
    assert bodies
    signature = exported["loaded"].signatures["generate"]
    specs = signature.structured_input_signature[1]
    for body in bodies:
        inputs = {name: tf.constant(value, specs[name].dtype) for name, value in body["inputs"].items()}
        texts = signature(**inputs)["text"].numpy()
        assert len(texts) == len(body["inputs"]["start_text"])
        assert all(t.decode().startswith(p) for t, p in zip(texts, body["inputs"]["start_text"]))


def test_cli_export_then_sample_identically_from_all_three(trained, tmp_path):
    base = tmp_path / "models"
    result = run_cli("export", "--checkpoint", trained["keras"], "--export_dir", base, "--model_name", "tiny",
                     "--tflite")
    assert result.returncode == 0, result.stderr
    version_dir = base / "tiny" / "1"
    assert (version_dir / "tflite" / "model.tflite").exists() and "state_3: lstm_1 c" in result.stdout
    before = (version_dir / "saved_model.pb").stat().st_mtime_ns

    refused = run_cli("export", "--checkpoint", trained["keras"], "--export_dir", base, "--model_name", "tiny",
                      "--version", 1)
    assert refused.returncode == 1 and "--overwrite" in refused.stderr and len(refused.stderr.splitlines()) == 1
    assert (version_dir / "saved_model.pb").stat().st_mtime_ns == before
    compiled = run_cli("export", "--checkpoint", trained["keras"], "--export_dir", base, "--model_name", "tiny",
                       "--xla")  # version 2, which --saved_model base/tiny samples from below
    assert compiled.returncode == 0, compiled.stderr
    assert read_export_info(str(base / "tiny" / "2"))["xla"] is True

    outputs = []
    for source in (["--checkpoint", trained["keras"]], ["--saved_model", base / "tiny"],
                   ["--tflite", version_dir / "tflite" / "model.tflite"]):
        result = run_cli("sample", *source, "--sample", 0, "--length", 500, "--start_text", "ROMEO:")
        assert result.returncode == 0, result.stderr
        outputs.append(result.stdout)
    assert len(outputs[0]) == 501 and outputs[0].startswith("ROMEO:")
    assert outputs[0] == outputs[1] == outputs[2]


@pytest.mark.parametrize("args,message", [
    (["--checkpoint", "missing.keras"], "missing.keras: no such file"),
    (["--checkpoint", "{keras}", "--quantize", "float16"], "add --tflite"),
    (["--checkpoint", "{keras}", "--model_name", "../x"], "--model_name"),
    (["--checkpoint", "{keras}", "--quantize", "int4", "--tflite"], "--quantize"),
])
def test_export_bad_input(trained, tmp_path, args, message):
    args = [a.replace("{keras}", trained["keras"]) for a in args]
    result = run_cli("export", *args, "--export_dir", tmp_path / "m")
    assert result.returncode != 0 and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert not (tmp_path / "m").exists()


def test_sample_bad_artifacts(exported, tmp_path):
    lonely = tmp_path / "lonely.tflite"
    lonely.write_bytes(open(exported["tflite"], "rb").read())
    cases = [
        (["--tflite", lonely], "no vocab.json beside it"),
        (["--saved_model", tmp_path], "no saved_model.pb"),
        (["--saved_model", exported["dir"], "--start_text", "€"], "'€'"),
        (["--saved_model", exported["dir"], "--tflite", exported["tflite"]], "exactly one of"),
    ]
    for args, message in cases:
        result = run_cli("sample", *args)
        assert result.returncode == 1 and message in result.stderr, (args, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1


def test_step_keeps_no_state_between_concurrent_clients(exported):
    """Two clients stepping through different texts at once, from threads, each get exactly what they
    get alone: the state lives in the request, not in the model."""
    from concurrent.futures import ThreadPoolExecutor

    step = exported["loaded"].signatures["step"]
    vocab = exported["vocab"]

    def run(text):
        states = {f"state_{k}": tf.zeros([1, 32]) for k in range(4)}
        rows = []
        for i in vocab.encode(text):
            out = step(ids=tf.constant([i]), **states)
            states = {k: out[k] for k in states}
            rows.append(out["logits"].numpy()[0])
        return np.array(rows)

    texts = ["ROMEO: But soft, what light", "JULIET: Ay me! what news?"]
    alone = [run(t) for t in texts]
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(run, texts * 2))
    for got, want in zip(together, alone * 2):
        np.testing.assert_allclose(got, want, atol=1e-6)
