"""Which runtime should run the model inside the writer's browser (issue 33, section 1)? Not a test: figures.

    python3 benchmarks/web_runtimes.py                      # trains, exports and measures both models
    python3 benchmarks/web_runtimes.py --runtimes litert,kernel --models 2x128 --loads 5
    python3 benchmarks/web_runtimes.py --small A.keras --big B.keras --json /tmp/figures.json

Two models: a 2 x 128 LSTM (bin/train --max_iters 20 on tiny-shakespeare) and a cpu_15min-shaped one
(bin/train --preset cpu_15min --max_iters 5: a 2 x 384 LSTM, wordvec 64, copy attention over 512 characters,
4 heads x 32). A few iterations leave the logits near zero (the argmax text is all blanks) and the copy
attention's output kernel at ~1e-4, so by default every weight is then drawn at random (scrambled_checkpoint():
a standalone .keras that bin/sample and bin/export read like any other; --trained_weights keeps the trained
ones): the speed is the same, and the check below then tests every layer. Each model is exported with
`bin/export --tflite`, with `bin/export --web` where this checkout has it, and its Keras weights dumped to a
flat float32 file for TensorFlow.js.

Candidates, each a page of its own, opened in Debian's headless Chromium (selenium + chromedriver, as
tests/test_page.py), from a local http.server on 127.0.0.1 (HTTP cache off: every file fetched on each load)
and again from file:// (the "X file://" rows, as the exported folder is opened):
  litert        LiteRT.js (npm @litertjs/core): the `step` signature of a batch-1, step-only .tflite
                (step_only_tflite(): the exported file does not load, see there) on the 'wasm' accelerator
                (XNNPack in WebAssembly), the state tensors carried from call to call. From file://: its ES
                modules made one classic script, the .wasm and the model as base64 scripts (LITERT_FILE_HTML).
  litert-steps  LiteRT.js on a batch-1 `steps` model (steps_tflite(): 64 characters a call, argmax in the
                graph); http only.
  tfjs-cpu      TensorFlow.js (npm @tensorflow/tfjs-core + tfjs-backend-cpu / -wasm): the same step from tfjs
  tfjs-wasm     ops on the Keras weights (embedding, LSTM cells, copy attention, logits: TFJS_MODEL_JS).
  kernel        the project's own runtime: the folder `bin/export --web` writes (kerascharrnn/export/runtime.js,
  kernel-js     model.js), its default products (WebAssembly SIMD) and its plain JavaScript ones.
The npm packages are fetched at run time with `npm pack` into --cache (~/.cache/kerascharrnn-web-bench).

Per candidate and model, medians over --loads page loads:
  bytes      what the page loaded (runtime JS + WASM + model files + this harness's few KB), and gzip -9'd
  first ms   from navigation start to the first --first (40) characters generated after a --prompt (200)
             character prompt fed one character at a time from a zero state: runtime init and model load included
  chars/s    argmax characters per second at batch 1, over --timed (500) characters after --warm (50) more
  = bin/sample  whether the page's argmax text (--first + --warm + --timed characters) equals
             `bin/sample --checkpoint X --sample 0 --start_text PROMPT --length L` after the prompt
  logit diff the largest |page logit - Keras step logit| over every step of the first load (the Keras step fed
             the page's own ids), beside the largest |logit|
Also: LiteRT.js on the .tflite as bin/export writes it, and LiteRT.js with the 'webgpu' accelerator. The CPU,
Chromium, package versions and licences, and the load average before each load are printed: on a shared
2-core machine, run it when `uptime` is low, and more than once.
"""
# ruff: noqa: E501  (the pages' JavaScript, kept in long lines as it is read in the browser)

from __future__ import annotations

import argparse
import functools
import gzip
import http.server
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORPUS = "/work/shared/data/tiny-shakespeare.txt"
PROMPT_OFFSET = 10_000  # where in the corpus the prompt starts

NPM_PACKAGES = {  # name -> version, pinned so that the figures are repeatable
    "@litertjs/core": "2.5.3",
    "@litertjs/wasm-utils": "2.5.3",
    "@tensorflow/tfjs-core": "4.22.0",
    "@tensorflow/tfjs-backend-cpu": "4.22.0",
    "@tensorflow/tfjs-backend-wasm": "4.22.0",
}


def log(*args):
    print(*args, file=sys.stderr, flush=True)


def run(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    log("$", " ".join(command))
    if "capture_output" not in kwargs:
        kwargs["stdout"] = sys.stderr  # the table alone on stdout
    return subprocess.run(command, check=True, cwd=REPO, **kwargs)


def read_bytes(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def read_text(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


def load_average() -> float:
    return os.getloadavg()[0]


# --- models --------------------------------------------------------------------------------------------------

def train_models(work: str) -> dict[str, str]:
    """Trains the two models (a few iterations each) on tiny-shakespeare; returns name -> .keras path."""
    h5 = os.path.join(work, "shakespeare.h5")
    if not os.path.exists(h5):
        run([sys.executable, "bin/preprocess", "--input_txt", CORPUS, "--output_h5", h5,
             "--output_json", h5[:-3] + ".json"])
    checkpoints = {"2x128": os.path.join(work, "small_20.keras"), "cpu_15min": os.path.join(work, "big_5.keras")}
    if not os.path.exists(checkpoints["2x128"]):
        run([sys.executable, "bin/train", "--input_h5", h5, "--num_layers", "2", "--rnn_size", "128",
             "--max_iters", "20", "--checkpoint_every", "20", "--checkpoint_name", os.path.join(work, "small")])
    if not os.path.exists(checkpoints["cpu_15min"]):
        run([sys.executable, "bin/train", "--input_h5", h5, "--preset", "cpu_15min", "--max_iters", "5",
             "--checkpoint_every", "5", "--checkpoint_name", os.path.join(work, "big")])
    return checkpoints


def scrambled_checkpoint(checkpoint: str, out: str) -> str:
    """The checkpoint with every weight drawn at random (seeded), scaled so that every layer counts: a few
    iterations of training leave the logits near zero (the argmax text is all blanks) and the copy
    attention's output kernel at ~1e-4 (it starts at zero), so the text check would test nothing. With these
    gains the 2 x 128 model's argmax text is varied; the cpu_15min one's still settles on one character after a
    few, and there the every-step logit comparison is what tests the layers. A standalone .keras
    (CharRNN.save) that bin/sample, bin/export and the Keras step read like any checkpoint."""
    if os.path.exists(out):
        return out
    import numpy as np

    import kerascharrnn.copy_attention  # noqa: F401  (registers the layer)
    from kerascharrnn.models.charrnn import CharRNN

    charrnn = CharRNN.from_checkpoint(checkpoint)
    rng = np.random.default_rng(33)
    vocab_size = charrnn.vocab.size
    for layer in charrnn.model.layers:
        weights = layer.get_weights()
        if not weights:
            continue
        gain = 2.0 if layer.name == "logits" else 3.0  # 3: chaotic, a varied argmax text (1 settles on one character)
        layer.set_weights([(rng.normal(0, 0.3, w.shape) if w.ndim == 1 else
                            rng.normal(0, 1.0 if w.shape[0] == vocab_size else gain / np.sqrt(w.shape[0]), w.shape))
                           .astype(np.float32) for w in weights])
    charrnn.save(out)
    return out


def export_tflite(checkpoint: str, work: str, name: str) -> str:
    export_dir = os.path.join(work, "export_" + os.path.splitext(os.path.basename(checkpoint))[0])
    tflite = os.path.join(export_dir, name, "1", "tflite", "model.tflite")
    if not os.path.exists(tflite):
        shutil.rmtree(export_dir, ignore_errors=True)
        run([sys.executable, "bin/export", "--checkpoint", checkpoint, "--export_dir", export_dir,
             "--model_name", name, "--version", "1", "--tflite"])
    return tflite


def step_only_tflite(tflite: str) -> str:
    """model.tflite with the `step` signature alone at batch 1 (beside the exported one), converted as
    export.py converts it. LiteRT.js 2.5.3 refuses to load the exported file: its `steps` signature has a bool input
    (in_prompt), and the CompiledModel describes every signature's tensors at load ("Element type BOOL is
    not supported")."""
    out = tflite[:-len(".tflite")] + "_step_batch1.tflite"
    if os.path.exists(out):
        return out

    import tensorflow as tf

    from kerascharrnn import upstream
    from kerascharrnn.export.saved_model import _with_outputs_named

    saved_model = os.path.dirname(os.path.dirname(tflite))
    loaded = tf.saved_model.load(saved_model)
    exported_step = loaded.signatures["step"]
    # batch 1, fixed: LiteRT.js's CompiledModel takes no dynamic dimension ("TensorBuffer ranked tensor type
    # Float32[1, 128] does not match expected ranked tensor type Float32[-1, 128]") and has no resize call
    fixed = {name: tf.TensorSpec([1] + spec.shape[1:].as_list(), spec.dtype, name=name)
             for name, spec in exported_step.structured_input_signature[1].items()}
    step = tf.function(lambda **inputs: exported_step(**inputs)).get_concrete_function(**fixed)
    return _write_tflite(_with_outputs_named(upstream.freeze_variables(step), step), "step", out)


def _write_tflite(concrete, signature: str, out: str) -> str:
    """A .tflite at `out` holding one signature, `concrete` (a frozen concrete function), builtin ops only."""
    import tempfile

    import tensorflow as tf

    holder = tf.Module()
    setattr(holder, signature, concrete)
    with tempfile.TemporaryDirectory() as tmp:
        tf.saved_model.save(holder, tmp, signatures={signature: concrete})
        converter = tf.lite.TFLiteConverter.from_saved_model(tmp, signature_keys=[signature])
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        flatbuffer = converter.convert()
    with open(out, "wb") as f:
        f.write(flatbuffer)
    return out


def steps_tflite(tflite: str) -> str:
    """A batch-1 `steps` model for LiteRT.js (beside the exported one): export.py's `steps` (TFLITE_STEPS
    characters a call, the argmax between them in the graph) with in_prompt int32 instead of bool (LiteRT.js
    takes no bool tensor) and without the noise and temperature inputs (argmax: temperature 0, no noise).
    Inputs logits (1, V), prompt (1, S) int32, in_prompt (1, S) int32, state_0..K; outputs ids (1, S),
    logits, state_0..K. TensorFlow's interpreter runs it right (bin/sample's ids); LiteRT.js 2.5.3 on 'wasm'
    gives garbage (ids and states uninitialised memory, logits 0): its WHILE loop does not run there."""
    out = tflite[:-len(".tflite")] + "_steps_batch1.tflite"
    if os.path.exists(out):
        return out

    import tensorflow as tf

    from kerascharrnn import upstream
    from kerascharrnn.export import saved_model as export

    loaded = tf.saved_model.load(os.path.dirname(os.path.dirname(tflite)))
    step = loaded.signatures["step"]
    specs = sorted((spec for name, spec in step.structured_input_signature[1].items() if name != "ids"),
                   key=lambda spec: int(spec.name.split("_")[1]))
    vocab_size = step.structured_outputs["logits"].shape[1]
    width = export.TFLITE_STEPS

    def run_step(ids, states):
        outputs = step(ids=ids, **{spec.name: state for spec, state in zip(specs, states)})
        return outputs["logits"], [outputs[spec.name] for spec in specs]

    def steps(logits, prompt, in_prompt, *states):
        return export._tflite_steps(run_step, logits, prompt, tf.cast(in_prompt, tf.bool),
                                    tf.zeros([1, width, vocab_size]), tf.zeros([1]), states)

    concrete = tf.function(steps).get_concrete_function(
        tf.TensorSpec([1, vocab_size], tf.float32, name="logits"), tf.TensorSpec([1, width], tf.int32, name="prompt"),
        tf.TensorSpec([1, width], tf.int32, name="in_prompt"),
        *[tf.TensorSpec([1, spec.shape[1]], tf.float32, name=spec.name) for spec in specs])
    return _write_tflite(export._with_outputs_named(upstream.freeze_variables(concrete), concrete), "steps", out)


def output_aliases(tflite: str, signature: str = "step") -> dict[str, str]:
    """The signature's outputs that share a tensor with another output: name -> the other name."""
    import tensorflow as tf

    outputs = tf.lite.Interpreter(model_path=tflite)._get_full_signature_list()[signature]["outputs"]
    by_tensor: dict[int, list[str]] = {}
    for name, index in outputs.items():
        by_tensor.setdefault(index, []).append(name)
    return {name: other for names in by_tensor.values() for name in names for other in names if other != name}


@functools.cache
def keras_step(checkpoint: str):
    import tensorflow as tf

    import kerascharrnn.copy_attention  # noqa: F401  (registers the layer)
    from kerascharrnn.models.charrnn import CharRNN

    charrnn = CharRNN.from_checkpoint(checkpoint)
    return tf.function(charrnn.step_fn()), charrnn.state_sizes


def keras_logits(checkpoint: str, ids: list[int]):
    """The Keras step's logits (len(ids), V) after each id, fed one at a time from a zero state."""
    import numpy as np
    import tensorflow as tf

    step, sizes = keras_step(checkpoint)
    states = tuple(tf.zeros([1, size]) for size in sizes)
    out = []
    for i in ids:
        logits, states = step(tf.constant([int(i)], tf.int32), states)
        out.append(logits.numpy()[0])
    return np.array(out)


def reference_text(checkpoint: str, prompt: str, length: int) -> str:
    """bin/sample's argmax text (the prompt included, `length` characters in all)."""
    out = run([sys.executable, "bin/sample", "--checkpoint", checkpoint, "--sample", "0", "--start_text", prompt,
               "--length", str(length)], capture_output=True).stdout
    return out.decode("utf-8")


def dump_model(checkpoint: str, directory: str, prompt: str) -> dict:
    """Writes weights.bin (every weight as float32, in layer order) and manifest.json (the layers, their
    weights' shapes and offsets), and returns bench info: the prompt's ids, the tokens, the state sizes and
    the Keras step's logits after the prompt (for the numeric check)."""
    import numpy as np
    import tensorflow as tf

    import kerascharrnn.copy_attention  # noqa: F401  (registers the layer)
    from kerascharrnn.models.charrnn import CharRNN

    charrnn = CharRNN.from_checkpoint(checkpoint)
    layers, chunks, offset = [], [], 0
    for layer in charrnn.model.layers:
        kind = type(layer).__name__
        if kind in ("InputLayer", "Dropout"):
            continue
        if kind not in ("Embedding", "LSTM", "Dense", "CopyAttention"):
            raise SystemExit(f"{checkpoint}: layer {layer.name} ({kind}) has no tfjs step in this benchmark")
        entry = {"kind": kind, "name": layer.name, "weights": []}
        if kind == "CopyAttention":
            entry.update(memory_size=layer.memory_size, num_heads=layer.num_heads, head_size=layer.head_size)
        for weight in layer.get_weights():
            array = np.ascontiguousarray(weight, np.float32)
            entry["weights"].append({"shape": list(array.shape), "offset": offset})
            chunks.append(array.tobytes())
            offset += array.size
        layers.append(entry)
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "weights.bin"), "wb") as f:
        f.write(b"".join(chunks))
    with open(os.path.join(directory, "manifest.json"), "w") as f:
        json.dump({"layers": layers, "state_sizes": charrnn.state_sizes}, f)

    ids = charrnn.vocab.encode(prompt)
    step = tf.function(charrnn.step_fn())
    states = tuple(tf.zeros([1, size]) for size in charrnn.state_sizes)
    for i in ids:
        logits, states = step(tf.constant([int(i)], tf.int32), states)
    return {"prompt_ids": [int(i) for i in ids], "tokens": list(charrnn.vocab.tokens),
            "state_sizes": charrnn.state_sizes, "keras_prompt_logits": logits.numpy()[0].tolist()}


# --- npm packages --------------------------------------------------------------------------------------------

def fetch_packages(cache: str) -> dict[str, str]:
    """`npm pack`s each package into the cache (once) and unpacks it; returns name -> its package/ folder."""
    folders = {}
    os.makedirs(cache, exist_ok=True)
    for name, version in NPM_PACKAGES.items():
        tarball = os.path.join(cache, f"{name.lstrip('@').replace('/', '-')}-{version}.tgz")
        if not os.path.exists(tarball):
            subprocess.run(["npm", "pack", f"{name}@{version}", "--pack-destination", cache], check=True,
                           capture_output=True)
        folder = tarball[:-4]
        if not os.path.exists(os.path.join(folder, "package")):
            with tarfile.open(tarball) as archive:
                archive.extractall(folder, filter="data")
        folders[name] = os.path.join(folder, "package")
    return folders


def package_facts(folders: dict[str, str]) -> list[dict]:
    facts = []
    for name, folder in folders.items():
        meta = json.loads(read_text(os.path.join(folder, "package.json")))
        files = [os.path.join(d, f) for d, _, fs in os.walk(folder) for f in fs]
        licence_files = [os.path.relpath(f, folder) for f in files if "licen" in os.path.basename(f).lower()
                         or "copying" in os.path.basename(f).lower()]
        facts.append({"name": name, "version": meta["version"], "license": meta.get("license"),
                      "licence_files": licence_files or "none in the tarball",
                      "unpacked_bytes": sum(os.path.getsize(f) for f in files)})
    return facts


# --- the site ------------------------------------------------------------------------------------------------

BENCH_JS = r"""
// The harness every candidate's page shares: load(base, info) -> {step(id) -> logits (Float32Array), info}.
// Files come from fetch() over http, or, on the file:// pages (window.__files set), from classic scripts
// that put them in window.__files (JSON as objects, binaries as base64): Chromium refuses fetch() of file://.
window.__bench = null;
window.addEventListener('error', e => { if (!window.__bench) window.__bench = {error: 'error: ' + e.message}; });
window.addEventListener('unhandledrejection', e => {
  if (!window.__bench) window.__bench = {error: 'rejection: ' + String(e.reason && (e.reason.stack || e.reason.message) || e.reason)};
});
function argmax(a) { let b = 0; for (let i = 1; i < a.length; i++) if (a[i] > a[b]) b = i; return b; }
function loadScript(src) {
  return new Promise((resolve, reject) => {
    const script = document.createElement('script');
    script.src = src;
    script.onload = resolve;
    script.onerror = () => reject(new Error('could not load ' + src));
    document.head.appendChild(script);
  });
}
function base64Bytes(text) {
  const raw = atob(text), bytes = new Uint8Array(raw.length);
  for (let i = 0; i < raw.length; i++) bytes[i] = raw.charCodeAt(i);
  return bytes;
}
async function getJson(path) {
  if (!window.__files) return (await fetch(path)).json();
  await loadScript(path + '.js');
  return window.__files[path];
}
async function getBytes(path) {
  if (!window.__files) return new Uint8Array(await (await fetch(path)).arrayBuffer());
  await loadScript(path + '.js');
  return base64Bytes(window.__files[path]);
}
// A runtime that runs chunkSize characters a call (the prompt's where inPrompt is 1, else the argmax):
// runChunk(prompt Int32Array, inPrompt Int32Array) -> the chunk's ids. Timed by whole calls.
async function runChunks(stepper, info, first, warm, timed, tLoaded) {
  const S = stepper.chunkSize, P = info.prompt_ids.length, ids = [];
  let position = 0;
  const runTo = async target => {
    while (ids.length < target) {
      const prompt = new Int32Array(S), inPrompt = new Int32Array(S);
      for (let j = 0; j < S && position + j < P; j++) { prompt[j] = info.prompt_ids[position + j]; inPrompt[j] = 1; }
      const out = await stepper.runChunk(prompt, inPrompt);
      for (let j = 0; j < S; j++) if (position + j >= P) ids.push(out[j]);
      position += S;
    }
  };
  await runTo(first);
  const tFirst = performance.now();
  await runTo(first + warm);
  const t1 = performance.now(), before = ids.length;
  await runTo(first + warm + timed);
  const t2 = performance.now();
  const resources = [...new Set(performance.getEntriesByType('resource').map(e => e.name)
                                .concat(Array.from(document.scripts).map(e => e.src).filter(Boolean)))];
  window.__bench = {tLoaded, tFirst, cps: (ids.length - before) * 1000 / (t2 - t1),
                    text: ids.slice(0, first + warm + timed).map(i => info.tokens[i]).join(''),
                    ids, resources, info: stepper.info || {}};
}
async function runBench(load) {
  try {
    const q = new URLSearchParams(location.search);
    const first = +q.get('first'), warm = +q.get('warm'), timed = +q.get('timed');
    const base = 'models/' + q.get('model') + '/';
    const info = await getJson(base + 'bench.json');
    const stepper = await load(base, info);
    const tLoaded = performance.now();
    if (stepper.chunkSize) return await runChunks(stepper, info, first, warm, timed, tLoaded);
    // every step's logits, kept for the check against the Keras step (a copy of V floats a step)
    const V = info.tokens.length, total = info.prompt_ids.length + first + warm + timed;
    const kept = new Float32Array(total * V);
    let steps = 0;
    const step = stepper.step;
    stepper.step = async id => { const l = await step(id); if (steps < total) kept.set(l, V * steps++); return l; };
    let logits = null;
    for (const id of info.prompt_ids) logits = await stepper.step(id);
    const promptLogits = Array.from(logits);
    const tPrompt = performance.now();
    const ids = [];
    const generate = async n => { for (let k = 0; k < n; k++) { const id = argmax(logits); ids.push(id); logits = await stepper.step(id); } };
    await generate(first);
    const tFirst = performance.now();
    await generate(warm);
    const t1 = performance.now();
    await generate(timed);
    const t2 = performance.now();
    // resource timing lists no file:// loads: the scripts (all a file:// page loads) are added
    const resources = [...new Set(performance.getEntriesByType('resource').map(e => e.name)
                                  .concat(Array.from(document.scripts).map(e => e.src).filter(Boolean)))];
    const bytes = new Uint8Array(kept.buffer);
    let binary = '';
    for (let i = 0; i < bytes.length; i += 32768) binary += String.fromCharCode.apply(null, bytes.subarray(i, i + 32768));
    window.__bench = {tLoaded, tPrompt, tFirst, cps: timed * 1000 / (t2 - t1), text: ids.map(i => info.tokens[i]).join(''),
                      ids, logits: btoa(binary), promptLogits, resources, info: stepper.info || {}};
  } catch (e) { window.__bench = {error: String(e && (e.stack || e.message) || e)}; }
}
"""

LITERT_STEP_JS = r"""
// LiteRT.js (L: the @litertjs/core module) running the `step` signature of model.tflite at batch 1 on 'wasm'.
async function loadLiteRtModel(L, base, info, wasmPath, accelerator) {
  if (accelerator === 'webgpu') {
    const adapter = navigator.gpu ? await navigator.gpu.requestAdapter() : null;
    if (!adapter) throw new Error('WebGPU unavailable: navigator.gpu ' + (navigator.gpu ? 'present, requestAdapter() gave null' : 'absent'));
  }
  await L.loadLiteRt(wasmPath);
  const model = await L.loadAndCompile(await getBytes(base + (new URLSearchParams(location.search).get('file') || 'model.tflite')), {accelerator});
  const sig = model.signatures['step'];
  let states = info.state_sizes.map(n => new L.Tensor(new Float32Array(n), [1, n]));
  const wasm = performance.getEntriesByType('resource').map(e => e.name.split('/').pop()).filter(n => n.endsWith('.wasm'));
  return {
    info: {accelerator, webgpu: L.isWebGPUSupported(), relaxedSimd: await L.supportsFeature('relaxedSimd'),
           fullyAccelerated: model.isFullyAccelerated, wasm,
           inputs: sig.getInputDetails().map(d => d.name + ' ' + d.dtype + ' [' + Array.from(d.shape) + ']'),
           outputs: sig.getOutputDetails().map(d => d.name)},
    async step(id) {
      const feed = {ids: new L.Tensor(Int32Array.of(id), [1])};
      states.forEach((s, k) => { feed['state_' + k] = s; });
      const out = await sig.run(feed);
      for (const t of new Set(Object.values(feed))) t.delete();
      // two outputs on one tensor (lstm_1 h = copy_attention previous_output) come back under one name only
      states = info.state_sizes.map((_, k) => out['state_' + k] || out[(info.tflite_aliases || {})['state_' + k]]);
      if (states.some(t => !t)) throw new Error('step outputs: ' + Object.keys(out).join(' '));
      const logits = out.logits.toTypedArray().slice();
      out.logits.delete();
      return logits;
    }};
}
"""

LITERT_STEPS_JS = r"""
// LiteRT.js running the batch-1 `steps` model (steps_tflite()): 64 characters a call, the argmax in the graph.
// Measured with @litertjs/core 2.5.3: its outputs are garbage (ids and states uninitialised memory, logits 0)
// where TensorFlow's interpreter runs the same file right: its WHILE loop does not run on LiteRT.js's wasm.
async function loadLiteRtSteps(L, base, info, wasmPath) {
  await L.loadLiteRt(wasmPath);
  const model = await L.loadAndCompile(await getBytes(base + 'model_steps.tflite'), {accelerator: 'wasm'});
  const sig = model.signatures['steps'];
  const V = info.tokens.length;
  let logits = new L.Tensor(new Float32Array(V), [1, V]);
  let states = info.state_sizes.map(n => new L.Tensor(new Float32Array(n), [1, n]));
  return {
    chunkSize: info.steps_width, info: {signature: 'steps', chunk: info.steps_width},
    async runChunk(prompt, inPrompt) {
      const feed = {logits, prompt: new L.Tensor(prompt, [1, prompt.length]), in_prompt: new L.Tensor(inPrompt, [1, prompt.length])};
      states.forEach((s, k) => { feed['state_' + k] = s; });
      const out = await sig.run(feed);
      for (const t of new Set(Object.values(feed))) t.delete();
      states = info.state_sizes.map((_, k) => out['state_' + k] || out[(info.tflite_steps_aliases || {})['state_' + k]]);
      if (states.some(t => !t)) throw new Error('steps outputs: ' + Object.keys(out).join(' '));
      logits = out.logits;
      const ids = out.ids.toTypedArray().slice();
      out.ids.delete();
      return ids;
    }};
}
"""

LITERT_STEPS_HTML = r"""<!doctype html><meta charset="utf-8"><title>LiteRT.js steps</title>
<script src="bench.js"></script>
<script src="litert_steps.js"></script>
<script type="importmap">{"imports": {"@litertjs/wasm-utils": "./litert/wasm-utils/dist/index.js"}}</script>
<script type="module">
import * as L from './litert/core/dist/index.js';
runBench((base, info) => loadLiteRtSteps(L, base, info, new URL('litert/core/wasm/', location.href).href));
</script>
"""

LITERT_HTML = r"""<!doctype html><meta charset="utf-8"><title>LiteRT.js</title>
<script src="bench.js"></script>
<script src="litert_step.js"></script>
<script type="importmap">{"imports": {"@litertjs/wasm-utils": "./litert/wasm-utils/dist/index.js"}}</script>
<script type="module">
import * as L from './litert/core/dist/index.js';
const accelerator = new URLSearchParams(location.search).get('accelerator') || 'wasm';
runBench((base, info) => loadLiteRtModel(L, base, info, new URL('litert/core/wasm/', location.href).href, accelerator));
</script>
"""

# From file://: no ES modules (the import of index.js is a CORS request, refused for file://), so the two
# modules as one classic script (litert/file/litert.js, window.LiteRT); wasm-utils's <script crossorigin> for
# the Emscripten loader dropped (a CORS request too); the .wasm given as bytes (Module.wasmBinary) instead of
# fetched; the model as bytes.
LITERT_FILE_HTML = r"""<!doctype html><meta charset="utf-8"><title>LiteRT.js file://</title>
<script>window.__files = {};</script>
<script src="bench.js"></script>
<script src="litert_step.js"></script>
<script src="litert/file/litert.js"></script>
<script>
runBench(async (base, info) => {
  await loadScript('litert/file/litert_wasm_internal.wasm.js');
  self.Module = {wasmBinary: base64Bytes(window.__files['litert_wasm_internal.wasm'])};
  return loadLiteRtModel(LiteRT, base, info, new URL('litert/core/wasm/litert_wasm_internal.js', location.href).href, 'wasm');
});
</script>
"""

TFJS_MODEL_JS = r"""
// The char-RNN's step from tfjs ops on the Keras weights (models/stack.py, copy_attention.py: the same math).
// Functional ops only: tf-core.min.js has no chained ops (x.add(...)).
async function loadTfjsModel(base, info) {
  const manifest = await getJson(base + 'manifest.json');
  const bytes = await getBytes(base + 'weights.bin');
  const flat = new Float32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 4);
  const w = l => l.weights.map(s => tf.tensor(flat.subarray(s.offset, s.offset + s.shape.reduce((a, b) => a * b, 1)), s.shape));
  const layers = manifest.layers.map(l => ({...l, w: w(l)}));
  let states = info.state_sizes.map(n => tf.zeros([1, n]));
  let seen = 0;  // copy attention: characters before this one (the float count state, kept here)
  function copyAttention(l, output, id, previous, keys, values) {  // previous (1,H), keys and values (1,M*C)
    const [qk, kk, ve, ok] = l.w, M = l.memory_size, heads = l.num_heads, size = l.head_size, C = heads * size;
    keys = tf.reshape(keys, [M, C]); values = tf.reshape(values, [M, C]);
    if (seen >= 1) {  // store (output at t-1, character at t) in slot (seen - 1) mod M
      const write = tf.reshape(tf.cast(tf.oneHot(tf.tensor1d([(seen - 1) % M], 'int32'), M), 'float32'), [M, 1]);
      const keep = tf.sub(1, write);
      keys = tf.add(tf.mul(keys, keep), tf.mul(write, tf.matMul(previous, kk)));
      values = tf.add(tf.mul(values, keep), tf.mul(write, tf.gather(ve, [id])));
    }
    const stored = Math.min(seen, M);
    const q = tf.reshape(tf.matMul(output, qk), [heads, 1, size]);
    let scores = tf.div(tf.matMul(q, tf.transpose(tf.reshape(keys, [M, heads, size]), [1, 2, 0])), Math.sqrt(size));
    const visible = tf.broadcastTo(tf.reshape(tf.less(tf.range(0, M, 1, 'int32'), stored), [1, 1, M]), scores.shape);
    scores = tf.where(visible, scores, tf.fill(scores.shape, -1e30));
    const top = tf.maximum(tf.max(scores, -1, true), 0);  // the sentinel's score is 0
    let weights = tf.exp(tf.sub(scores, top));
    weights = tf.div(weights, tf.add(tf.sum(weights, -1, true), tf.exp(tf.neg(top))));
    const context = tf.reshape(tf.matMul(weights, tf.transpose(tf.reshape(values, [M, heads, size]), [1, 0, 2])), [1, C]);
    let after = seen + 1;
    if (after >= 2 * M) after -= M;
    seen = after;
    return [tf.add(output, tf.matMul(context, ok)),
            [output, tf.fill([1, 1], after), tf.reshape(keys, [1, M * C]), tf.reshape(values, [1, M * C])]];
  }
  function step(id) {
    const out = tf.tidy(() => {
      let x = null, k = 0, logits = null;
      const next = [];
      for (const l of layers) {
        if (l.kind === 'Embedding') x = tf.gather(l.w[0], [id]);
        else if (l.kind === 'LSTM') {  // Keras gate order i, f, c, o
          const [kernel, recurrent, bias] = l.w, h = states[k], c = states[k + 1];
          const z = tf.add(tf.add(tf.matMul(x, kernel), tf.matMul(h, recurrent)), bias);
          const [i, f, g, o] = tf.split(z, 4, 1);
          const c2 = tf.add(tf.mul(tf.sigmoid(f), c), tf.mul(tf.sigmoid(i), tf.tanh(g)));
          x = tf.mul(tf.sigmoid(o), tf.tanh(c2));
          next.push(x, c2); k += 2;
        } else if (l.kind === 'CopyAttention') {
          const [y, st] = copyAttention(l, x, id, states[k], states[k + 2], states[k + 3]);
          x = y; next.push(...st); k += 4;
        } else if (l.kind === 'Dense') logits = tf.add(tf.matMul(x, l.w[0]), l.w[1]);
      }
      return [logits, next];
    });
    tf.dispose(states);
    states = out[1];
    const logits = out[0].dataSync().slice();
    out[0].dispose();
    return logits;
  }
  return {step, info: {backend: tf.getBackend(), tfjs: tf.version_core}};
}
"""

TFJS_HTML = r"""<!doctype html><meta charset="utf-8"><title>TensorFlow.js BACKEND</title>
FILES<script src="bench.js"></script>
<script src="tfjs/tf-core.min.js"></script>
<script src="tfjs/tf-backend-BACKEND.min.js"></script>
<script src="tfjs_model.js"></script>
<script>
runBench(async (base, info) => {
  SETUP
  await tf.setBackend('BACKEND');
  await tf.ready();
  return loadTfjsModel(base, info);
});
</script>
"""
TFJS_WASM_SETUP = "tf.wasm.setWasmPaths('tfjs/');"
# From file://: the .wasm from a classic script as base64, handed over as a blob: URL (fetch() of blob: works there)
TFJS_WASM_FILE_SETUP = """await loadScript('tfjs/tfjs-backend-wasm-simd.wasm.js');
  const url = URL.createObjectURL(new Blob([base64Bytes(window.__files['tfjs-backend-wasm-simd.wasm'])], {type: 'application/wasm'}));
  tf.wasm.setWasmPaths({'tfjs-backend-wasm.wasm': url, 'tfjs-backend-wasm-simd.wasm': url, 'tfjs-backend-wasm-threaded-simd.wasm': url});"""


KERNEL_HTML = r"""<!doctype html><meta charset="utf-8"><title>kerascharrnn web runtime</title>
<script>window.__files = {};</script>
<script src="bench.js"></script>
<script>
// The folder `bin/export --web` wrote (kerascharrnn/export/: runtime.js defines KerasCharRNN, model.js calls
// KerasCharRNN.define(spec)), as its index.html loads them: classic scripts, the same from http and file://.
runBench(async (base, info) => {
  const folder = 'kernel/' + new URLSearchParams(location.search).get('model') + '/';
  await loadScript(folder + 'runtime.js');
  await loadScript(folder + 'model.js');
  KerasCharRNN.kernel = KERNEL;  // 'wasm' (its WebAssembly SIMD matvec), 'js', or undefined: the fastest here
  const model = KerasCharRNN.load(), states = model.states();
  return {step: id => model.step(id, states), info: {kernel: model.kernel}};
});
</script>
"""


def web_export(checkpoint: str, work: str, web_dir: str | None = None) -> str | None:
    """The folder `bin/export --checkpoint X --web DIR` writes (the project's own kernel, kerascharrnn/export/), made
    again on every run (so that it has this checkout's runtime.js); None where bin/export has no --web."""
    if web_dir:
        return web_dir
    folder = os.path.join(work, "web_" + os.path.splitext(os.path.basename(checkpoint))[0])
    usage = subprocess.run([sys.executable, "bin/export", "--helpfull"], cwd=REPO, capture_output=True, text=True,
                           check=False)
    if "--web" not in usage.stdout + usage.stderr:
        return None
    run([sys.executable, "bin/export", "--checkpoint", checkpoint, "--web", folder, "--overwrite"])
    return folder


def kernel_pages(site: str, models: dict[str, dict]) -> dict[str, str | None]:
    """The kernel's pages (candidates kernel = its default, WebAssembly SIMD where the browser has it, and
    kernel-js = its plain JavaScript products), where every model has a --web folder; else None."""
    if not all(model.get("web") for model in models.values()):
        return {"kernel": None, "kernel-js": None}
    for name, model in models.items():
        shutil.copytree(model["web"], os.path.join(site, "kernel", name), dirs_exist_ok=True)
    write(os.path.join(site, "kernel.html"), KERNEL_HTML.replace("KerasCharRNN.kernel = KERNEL",
                                                                 "KerasCharRNN.kernel = undefined"))
    write(os.path.join(site, "kernel_js.html"), KERNEL_HTML.replace("KerasCharRNN.kernel = KERNEL",
                                                                    "KerasCharRNN.kernel = 'js'"))
    return {"kernel": "kernel.html", "kernel-js": "kernel_js.html"}


def write(path: str, text: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def write_as_script(path: str, key: str, data: bytes | None = None, obj=None) -> None:
    """path + '.js': a classic script putting the file (base64) or the object in window.__files[key]."""
    import base64

    value = json.dumps(obj) if obj is not None else '"' + base64.b64encode(data).decode("ascii") + '"'
    write(path + ".js", f"window.__files[{json.dumps(key)}] = {value};\n")


def litert_classic_script(packages: dict[str, str]) -> str:
    """@litertjs/core's ES module and @litertjs/wasm-utils's as one classic script defining window.LiteRT,
    without the crossorigin attribute on the Emscripten loader's <script> (file:// refuses CORS requests)."""
    import re

    utils = read_text(os.path.join(packages["@litertjs/wasm-utils"], "dist", "index.js"))
    core = read_text(os.path.join(packages["@litertjs/core"], "dist", "index.js"))
    utils = re.sub(r"export\s*\{[^}]*\};?", "", utils).replace('script.crossOrigin = "anonymous";', "")
    core = core.replace('import { createWasmLib } from "@litertjs/wasm-utils";', "")
    exports = re.search(r"export\s*\{([^}]*)\};?", core)
    names = [n.strip() for n in exports.group(1).split(",") if n.strip()]
    core = core[:exports.start()] + "window.LiteRT = {" + ", ".join(names) + "};\n" + core[exports.end():]
    core = re.sub(r"//# sourceMappingURL=.*", "", core)
    utils = re.sub(r"//# sourceMappingURL=.*", "", utils)
    assert "import " not in core.split("\n", 5)[0] and "export {" not in core
    return "(() => {\n" + utils + "\n" + core + "\n})();\n"


def build_site(site: str, packages: dict[str, str], models: dict[str, dict]) -> dict:
    """Writes the pages and copies the runtimes' files and the models; returns candidate -> page."""
    shutil.rmtree(site, ignore_errors=True)
    os.makedirs(site)
    pages = {"litert": "litert.html", "litert file://": "litert_file.html"}
    shutil.copytree(packages["@litertjs/core"], os.path.join(site, "litert", "core"))
    shutil.copytree(packages["@litertjs/wasm-utils"], os.path.join(site, "litert", "wasm-utils"))
    tfjs = os.path.join(site, "tfjs")
    os.makedirs(tfjs)
    for name in ("@tensorflow/tfjs-core", "@tensorflow/tfjs-backend-cpu", "@tensorflow/tfjs-backend-wasm"):
        dist = os.path.join(packages[name], "dist")
        for f in os.listdir(dist):
            if f.endswith(".wasm") or (f.startswith("tf-") and f.endswith(".min.js") and "es2017" not in f
                                       and "fesm" not in f):
                shutil.copy(os.path.join(dist, f), tfjs)
    write(os.path.join(site, "bench.js"), BENCH_JS)
    write(os.path.join(site, "tfjs_model.js"), TFJS_MODEL_JS)
    write(os.path.join(site, "litert_step.js"), LITERT_STEP_JS)
    write(os.path.join(site, "litert.html"), LITERT_HTML)
    write(os.path.join(site, "litert_steps.js"), LITERT_STEPS_JS)
    write(os.path.join(site, "litert_steps.html"), LITERT_STEPS_HTML)
    pages["litert-steps"] = "litert_steps.html"
    write(os.path.join(site, "litert_file.html"), LITERT_FILE_HTML)
    write(os.path.join(site, "litert", "file", "litert.js"), litert_classic_script(packages))
    wasm = os.path.join(site, "litert", "core", "wasm", "litert_wasm_internal.wasm")
    write_as_script(os.path.join(site, "litert", "file", "litert_wasm_internal.wasm"), "litert_wasm_internal.wasm",
                    read_bytes(wasm))
    write_as_script(os.path.join(tfjs, "tfjs-backend-wasm-simd.wasm"), "tfjs-backend-wasm-simd.wasm",
                    read_bytes(os.path.join(tfjs, "tfjs-backend-wasm-simd.wasm")))
    for backend in ("cpu", "wasm"):
        for suffix, files, setup in (("", "", TFJS_WASM_SETUP), ("_file", "<script>window.__files = {};</script>\n",
                                                                 TFJS_WASM_FILE_SETUP)):
            page = TFJS_HTML.replace("FILES", files).replace("BACKEND", backend)
            page = page.replace("SETUP", setup if backend == "wasm" else "")
            write(os.path.join(site, f"tfjs_{backend}{suffix}.html"), page)
            pages[f"tfjs-{backend}" + (" file://" if suffix else "")] = f"tfjs_{backend}{suffix}.html"
    for candidate, page in kernel_pages(site, models).items():
        pages[candidate] = pages[candidate + " file://"] = page
    for name, model in models.items():
        folder = os.path.join(site, "models", name)
        os.makedirs(folder, exist_ok=True)
        shutil.copy(model["tflite"], os.path.join(folder, "model_exported.tflite"))  # as bin/export wrote it
        shutil.copy(model["tflite_step"], os.path.join(folder, "model.tflite"))
        shutil.copy(model["tflite_steps"], os.path.join(folder, "model_steps.tflite"))
        for f in ("weights.bin", "manifest.json"):
            shutil.copy(os.path.join(model["dump"], f), folder)
        bench = {**{k: model["info"][k] for k in ("prompt_ids", "tokens", "state_sizes")},
                 "tflite_aliases": output_aliases(model["tflite_step"]),
                 "tflite_steps_aliases": output_aliases(model["tflite_steps"], "steps"), "steps_width": 64}
        write(os.path.join(folder, "bench.json"), json.dumps(bench))
        key = f"models/{name}/"
        write_as_script(os.path.join(folder, "bench.json"), key + "bench.json", obj=bench)
        write_as_script(os.path.join(folder, "manifest.json"), key + "manifest.json",
                        obj=json.loads(read_text(os.path.join(folder, "manifest.json"))))
        for f in ("model.tflite", "weights.bin"):
            write_as_script(os.path.join(folder, f), key + f, read_bytes(os.path.join(folder, f)))
    return pages


# --- serving and the browser ---------------------------------------------------------------------------------

class Server:
    """http.server on 127.0.0.1 over the site, no caching."""

    def __init__(self, site: str):
        class Handler(http.server.SimpleHTTPRequestHandler):
            extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map,  # noqa: RUF012
                              ".wasm": "application/wasm", ".js": "text/javascript", ".json": "application/json",
                              ".tflite": "application/octet-stream", ".bin": "application/octet-stream"}

            def end_headers(self):
                self.send_header("Cache-Control", "no-store")
                super().end_headers()

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=site))
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()


def start_browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1200,900",
                     "--disable-extensions", "--no-first-run"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(shutil.which("chromedriver")))
    driver.execute_cdp_cmd("Network.enable", {})
    driver.execute_cdp_cmd("Network.setCacheDisabled", {"cacheDisabled": True})
    # a page whose steps never yield (tfjs-cpu's cpu_15min: ~30 s of them) holds the polling script that long
    driver.set_script_timeout(600)
    driver.set_page_load_timeout(600)
    return driver


def open_page(driver, url: str, timeout: float) -> dict:
    driver.get("about:blank")
    driver.get_log("browser")  # drain: the console lines that follow are this page's
    driver.get(url)
    deadline = time.time() + timeout
    while time.time() < deadline:
        result = driver.execute_script("return window.__bench || null")
        if result:
            if "error" in result:
                console = [entry["message"] for entry in driver.get_log("browser")][-3:]
                result["error"] = result["error"].splitlines()[0] + (f" | console: {console}" if console else "")
            return result
        time.sleep(0.05)
    console = [entry["message"] for entry in driver.get_log("browser")][-3:]
    return {"error": f"no result within {timeout:.0f} s; console: {console}"}


def page_url(server: Server, site: str, candidate: str, page: str) -> str:
    return ("file://" + os.path.join(site, page)) if candidate.endswith("file://") else server.url + page


MODELS: dict[str, dict] = {}  # name -> {"checkpoint", "info", ...}, set in main


def info_tokens(model: str) -> list:
    return MODELS[model]["info"]["tokens"]


def info_prompt_ids(model: str) -> list:
    return MODELS[model]["info"]["prompt_ids"]


def checkpoint_of(model: str) -> str:
    return MODELS[model]["checkpoint"]


def measure(driver, url: str, model: str, args, reference: str) -> dict:
    """--loads page loads; medians, the bytes the page loaded, the correctness check."""
    query = f"?model={model}&first={args.first}&warm={args.warm}&timed={args.timed}"
    loads, averages = [], []
    for _ in range(args.loads):
        averages.append(load_average())
        result = open_page(driver, url + query, args.timeout)
        if "error" in result:
            return {"error": result["error"]}
        loads.append(result)
        log(f"  load average {averages[-1]:.2f}: first {result['tFirst']:.0f} ms, {result['cps']:.0f} chars/s")
    first = loads[0]
    import base64

    import numpy as np
    checked = {}
    if "logits" in first:  # a page that runs one step a call: its logits at every step
        page_logits = np.frombuffer(base64.b64decode(first.pop("logits")), np.float32).reshape(-1, len(info_tokens(model)))
        fed = info_prompt_ids(model) + first["ids"]  # the page's own ids: the Keras step follows the page
        reference_logits = keras_logits(checkpoint_of(model), fed[:len(page_logits)])
        checked = {"all_steps_diff": float(np.max(np.abs(page_logits - reference_logits))),
                   "all_steps_scale": float(np.max(np.abs(reference_logits))), "steps_checked": len(page_logits),
                   "prompt_logits": first["promptLogits"]}
    generated = first["text"]
    same = generated == reference[:len(generated)]
    files = [url.split("?")[0]] + first["resources"]
    root = url.split("?")[0].rsplit("/", 1)[0] + "/"
    sizes, zipped = [], 0
    for resource in files:
        if not resource.startswith(root):
            continue  # a blob: URL (made from bytes already counted)
        path = os.path.join(args.site, resource[len(root):].split("?")[0])
        if not os.path.isfile(path):
            continue  # favicon.ico: a 404
        data = read_bytes(path)
        sizes.append((resource[len(root):], len(data)))
        zipped += len(gzip.compress(data, 9))
    return {"bytes": sum(size for _, size in sizes), "gzip": zipped, "files": sizes,
            "first_ms": statistics.median(r["tFirst"] for r in loads),
            "loaded_ms": statistics.median(r["tLoaded"] for r in loads),
            "cps": statistics.median(r["cps"] for r in loads), "cps_all": [round(r["cps"]) for r in loads],
            "first_all": [round(r["tFirst"]) for r in loads], "load_averages": averages,
            "same": same, "first_diff": None if same else next(i for i, (a, b) in enumerate(zip(generated, reference))
                                                                 if a != b),
            "text": generated, "info": first.get("info", {}), **checked}


# --- main ----------------------------------------------------------------------------------------------------

def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", default="/tmp/kerascharrnn-web-bench", help="models, exports, the site")
    parser.add_argument("--cache", default=os.path.expanduser("~/.cache/kerascharrnn-web-bench"), help="npm tarballs")
    parser.add_argument("--small", help="a 2 x 128 checkpoint (.keras); default: train one in --work")
    parser.add_argument("--big", help="a cpu_15min-shaped checkpoint (.keras); default: train one in --work")
    parser.add_argument("--runtimes", default="litert,litert-steps,tfjs-cpu,tfjs-wasm,kernel,kernel-js",
                        help="candidates; each is also measured from file:// unless --no_file")
    parser.add_argument("--models", default="2x128,cpu_15min")
    parser.add_argument("--web_dir", help="with one model in --models: its folder from `bin/export --web` (the "
                        "kernel candidates); default: bin/export --web into --work")
    parser.add_argument("--loads", type=int, default=3)
    parser.add_argument("--prompt", type=int, default=200)
    parser.add_argument("--first", type=int, default=40)
    parser.add_argument("--warm", type=int, default=50)
    parser.add_argument("--timed", type=int, default=500)
    parser.add_argument("--timeout", type=float, default=300)
    parser.add_argument("--no_file", action="store_true", help="skip the file:// pages")
    parser.add_argument("--trained_weights", action="store_true",
                        help="the checkpoints' own weights (default: scrambled_checkpoint()'s random ones)")
    parser.add_argument("--json", help="also write every figure here")
    args = parser.parse_args()
    os.makedirs(args.work, exist_ok=True)
    args.site = os.path.join(args.work, "site")

    checkpoints = {}
    if not (args.small and args.big):
        checkpoints = train_models(args.work)
    checkpoints.update({k: v for k, v in (("2x128", args.small), ("cpu_15min", args.big)) if v})
    checkpoints = {k: v for k, v in checkpoints.items() if k in args.models.split(",")}
    if not args.trained_weights:
        checkpoints = {k: scrambled_checkpoint(v, os.path.join(args.work, f"{k}_scrambled3.keras"))
                       for k, v in checkpoints.items()}
    with open(CORPUS, encoding="utf-8") as f:
        prompt = f.read()[PROMPT_OFFSET:PROMPT_OFFSET + args.prompt]
    length = args.prompt + args.first + args.warm + args.timed
    models = {}
    for name, checkpoint in checkpoints.items():
        dump = os.path.join(args.work, "dump_" + name)
        info_path = os.path.join(dump, "info.json")
        info = json.loads(read_text(info_path)) if os.path.exists(info_path) else {}
        if (info.get("checkpoint"), info.get("prompt"), info.get("length")) != (checkpoint, prompt, length):
            info = dump_model(checkpoint, dump, prompt)
            info.update(checkpoint=checkpoint, prompt=prompt, length=length,
                        reference=reference_text(checkpoint, prompt, length)[args.prompt:])
            with open(info_path, "w") as f:
                json.dump(info, f)
        tflite = export_tflite(checkpoint, args.work, name)
        models[name] = {"checkpoint": checkpoint, "tflite": tflite, "tflite_step": step_only_tflite(tflite),
                        "tflite_steps": steps_tflite(tflite),
                        "web": web_export(checkpoint, args.work, args.web_dir if len(checkpoints) == 1 else None),
                        "dump": dump, "info": info}

    MODELS.update(models)
    packages = fetch_packages(args.cache)
    pages = build_site(args.site, packages, models)
    candidates = [c for runtime in args.runtimes.split(",") for c in (runtime, runtime + " file://")
                  if not (args.no_file and c.endswith("file://"))]
    server = Server(args.site)
    driver = start_browser()
    results = {}
    exported = webgpu = None
    try:
        version = driver.capabilities.get("browserVersion")
        for candidate in candidates:
            for name, model in models.items():
                if not pages.get(candidate) and not candidate.startswith("kernel"):
                    continue  # litert-steps: http only
                if not pages.get(candidate):
                    results[(candidate, name)] = {"error": "no page: this checkout's bin/export has no --web"}
                    continue
                log(f"{candidate} {name}")
                result = measure(driver, page_url(server, args.site, candidate, pages[candidate]), name, args,
                                 model["info"]["reference"])
                if "prompt_logits" in result:
                    import numpy as np
                    expected = np.array(model["info"]["keras_prompt_logits"])
                    result["logit_diff"] = float(np.max(np.abs(np.array(result.pop("prompt_logits")) - expected)))
                    result["logit_scale"] = float(np.max(np.abs(expected)))
                results[(candidate, name)] = result
        if "litert" in args.runtimes.split(","):
            probe = server.url + "litert.html?model=" + next(iter(models)) + "&first=5&warm=0&timed=5"
            exported = open_page(driver, probe + "&file=model_exported.tflite", 60)
            webgpu = open_page(driver, probe + "&accelerator=webgpu", 60)
    finally:
        driver.quit()
        server.close()

    cpu = sorted(set(read_text("/proc/cpuinfo").split()) & {"avx2", "avx512f"})
    print(f"\nChromium {version} --headless=new; CPU flags {cpu}, {os.cpu_count()} cores; "
          f"load average now {load_average():.2f}")
    print(f"prompt {args.prompt} chars fed one at a time, first suggestion = {args.first} argmax chars after it "
          f"(ms from navigation start), chars/s over {args.timed} chars after {args.warm} more; medians of "
          f"{args.loads} page loads, HTTP cache off; http = 127.0.0.1 http.server, file:// = opened from disk\n")
    header = (f"{'runtime':18} {'model':10} {'bytes':>11} {'gzip -9':>11} {'first ms':>9} {'chars/s':>8}  "
              f"{'= bin/sample':12} {'logit diff (max |logit|), every step':>24}")
    print(header)
    print("-" * len(header))
    for (candidate, name), r in results.items():
        if "error" in r:
            print(f"{candidate:18} {name:10} FAILED: {r['error'][:400]}")
            continue
        same = "yes" if r["same"] else f"no (char {r['first_diff']})"
        diff = f"{r['all_steps_diff']:>11.1e} ({r['all_steps_scale']:.2f})" if "all_steps_diff" in r else "(ids only)"
        if not r["same"]:
            diff += "  WRONG OUTPUT: the figures mean nothing"
        print(f"{candidate:18} {name:10} {r['bytes']:>11,} {r['gzip']:>11,} {r['first_ms']:>9.0f} {r['cps']:>8.0f}  "
              f"{same:12} {diff}")
    print("\nper load (first ms, chars/s, load average before):")
    for (candidate, name), r in results.items():
        if "cps_all" in r:
            print(f"  {candidate} {name}: {r['first_all']}, {r['cps_all']}, {[round(a, 2) for a in r['load_averages']]}")
    print("\nfiles loaded:")
    for (candidate, name), r in results.items():
        if "files" in r:
            print(f"  {candidate} {name}: " + ", ".join(f"{p} {s:,}" for p, s in r["files"]))
            if r["info"]:
                print(f"    info: {json.dumps(r['info'])[:500]}")
    if exported is not None:
        print(f"\nLiteRT.js on the .tflite as bin/export wrote it (step + steps, batch dimension -1): "
              f"{(exported.get('error') or 'works').splitlines()[0]}")
    if webgpu is not None:
        print(f"LiteRT.js with accelerator 'webgpu', headless: {(webgpu.get('error') or 'works').splitlines()[0]}")
    print("\nnpm packages:")
    for fact in package_facts(packages):
        print(f"  {fact['name']} {fact['version']}: licence {fact['license']} (licence files: {fact['licence_files']}), "
              f"unpacked {fact['unpacked_bytes']:,} bytes")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({f"{k[0]} | {k[1]}": {kk: vv for kk, vv in v.items() if kk != "text"}
                       for k, v in results.items()}, f, indent=1)


if __name__ == "__main__":
    main()
