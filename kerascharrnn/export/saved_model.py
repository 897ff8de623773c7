"""Export a trained model: a SavedModel for TensorFlow Serving and a TFLite/LiteRT step model.

Both are built from the recurrent layers' *cells* (CharRNN.step_fn), never from the layers'
whole-sequence call: on a GPU that call becomes CudnnRNNV3, which has no CPU kernel, so a model
exported there would not load on a CPU-only server. The cells are plain matmuls on any device.

SavedModel signatures (see export/README.md):
  generate (= serving_default): start_text string [N], num_new_chars int32 [], temperature float32 [N]
      (or [1] for all rows; below 1e-6 means argmax), top_k int32 [] (0 = off), seed int64 [] (0 = random)
      -> text string [N] = start_text + continuation. One tf.while_loop, no XLA (TF Serving does not
      compile it by default). Characters the vocabulary lacks are left out of the priming and kept in
      the returned text.
  generate_top_p: generate's inputs and top_p float32 [] (1 = off): nucleus sampling. A signature of
      its own because TF Serving wants every input of a signature in each request, and clients of
      generate written before it send no top_p.
  With xla (bin/export --xla) both generate signatures run their loop as XLA-compiled chunks of
  sampling.STREAM_CHUNK characters (the loop bin/sample compiles): several times faster at small
  batches, but TF Serving then needs --xla_cpu_compilation_enabled=true, and the first request at
  each batch size pays for a compilation.
  step: ids int32 [N] (0-based = torch-rnn id - 1), state_0..state_K float32 [N, H]
      -> logits float32 [N, V], state_0..state_K. Explicit state, no variables changed: concurrent
      callers never share state.

The TFLite file has `step` and `steps`: logits float32 [N, V], prompt int32 [N, S], in_prompt bool
[N, S], noise float32 [N, S, V] (Gumbel), temperature float32 [N] (below 1e-6: argmax), state_0..state_K ->
ids int32 [N, S], logits, state_0..state_K: S = TFLITE_STEPS characters per interpreter call, each the
prompt's where in_prompt is set, else argmax(logits / temperature + noise).
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from typing import List

import numpy as np
import tensorflow as tf

import kerascharrnn
from kerascharrnn import upstream
from kerascharrnn.errors import UserError
from kerascharrnn.errors import setting as ref
from kerascharrnn.export import warmup
from kerascharrnn.inference import sampling
from kerascharrnn.inference.logits import Filters, Knobs, graph_knob_table, next_ids
from kerascharrnn.io import artifacts, files
from kerascharrnn.models.charrnn import CharRNN
from kerascharrnn.sampling_settings import SEED_MAX
from kerascharrnn.vocab import Vocabulary

GENERATE_SIGNATURE = [
    tf.TensorSpec([None], tf.string, name="start_text"),
    tf.TensorSpec([], tf.int32, name="num_new_chars"),
    tf.TensorSpec([None], tf.float32, name="temperature"),
    tf.TensorSpec([], tf.int32, name="top_k"),
    tf.TensorSpec([], tf.int64, name="seed"),
]
GENERATE_TOP_P_SIGNATURE = GENERATE_SIGNATURE + [tf.TensorSpec([], tf.float32, name="top_p")]
# The signatures that take a prompt and give text (serving_default is generate), then `step`.
GENERATE_SIGNATURES = ("serving_default", "generate", "generate_top_p")
SIGNATURES = sorted([*GENERATE_SIGNATURES, "step"])


def token_bytes(vocab: Vocabulary) -> List[bytes]:
    """Each token as the bytes it stands for in a UTF-8 string tensor."""
    if vocab.is_bytes:
        return [bytes([b]) for b in vocab.tokens]
    return [t.encode("utf-8") for t in vocab.tokens]


def state_descriptions(charrnn: CharRNN) -> List[dict]:
    return [{"name": f"state_{k}", "layer": name.split()[0], "part": name.split()[1], "size": size}
            for k, (name, size) in enumerate(zip(charrnn.state_names, charrnn.state_sizes))]


class CharRNNModule(tf.Module):
    """What the SavedModel holds: the weights, the vocabulary as constants, and the signatures."""

    def __init__(self, charrnn: CharRNN, xla: bool = False):
        super().__init__(name="charrnn")
        vocab = charrnn.vocab
        # Track the tf.Variables behind the Keras weights, not the Keras objects: loaders that build a
        # TF1 session (TensorFlow Serving, `saved_model_cli run`) create and restore exactly the tracked
        # variables, and with the Keras wrappers tracked instead they fail with "Could not find variable".
        self.model_variables = [weight.value for weight in charrnn.model.weights]
        self._step_fn = charrnn.step_fn()
        self._xla = xla
        self._state_sizes = charrnn.state_sizes
        self._vocab_size = vocab.size
        self._split_units = (tf.strings.bytes_split if vocab.is_bytes
                             else lambda text: tf.strings.unicode_split(text, "UTF-8", errors="replace"))
        tokens = token_bytes(vocab)
        self._tokens = tf.constant(tokens, tf.string)
        self.token_ids = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(tf.constant(tokens, tf.string), tf.range(vocab.size, dtype=tf.int32)),
            default_value=-1)
        self.generate_text = tf.function(self._generate_text, input_signature=GENERATE_SIGNATURE, autograph=False)
        self.generate_text_top_p = tf.function(self._generate_text, input_signature=GENERATE_TOP_P_SIGNATURE,
                                              autograph=False)
        state_specs = [tf.TensorSpec([None, size], tf.float32, name=f"state_{k}")
                       for k, size in enumerate(self._state_sizes)]
        self.step = tf.function(self._step, input_signature=[tf.TensorSpec([None], tf.int32, name="ids")] + state_specs,
                                autograph=False)

    def _step(self, ids, *states):
        logits, new_states = self._step_fn(ids, states)
        return {"logits": logits, **{f"state_{k}": s for k, s in enumerate(new_states)}}

    def _generate_text(self, start_text, num_new_chars, temperature, top_k, seed, top_p=None):
        # the filters are inputs, so they are in the graph (top_k = 0 and top_p = 1 switch them off at run time)
        filters = Filters(top_k=True, top_p=top_p is not None)
        num_rows = tf.shape(start_text)[0]
        ids = tf.ragged.map_flat_values(self.token_ids.lookup, self._split_units(start_text))
        ids = tf.ragged.boolean_mask(ids, ids >= 0)  # unknown characters: left out of the priming
        lengths = tf.cast(ids.row_lengths(), tf.int32)
        num_new = tf.maximum(num_new_chars, 0)
        width = tf.maximum(tf.reduce_max(tf.concat([lengths, [0]], 0)) + num_new, 1)
        prompt = ids.to_tensor(default_value=0)
        prompt = tf.pad(prompt, [[0, 0], [0, width - tf.shape(prompt)[1]]])
        in_prompt = tf.sequence_mask(lengths, width)
        temperature = tf.broadcast_to(temperature, [num_rows])
        seed = tf.where(seed == 0, tf.random.uniform([], 1, SEED_MAX, dtype=tf.int64), seed)
        logits = tf.zeros([num_rows, self._vocab_size])  # uniform: an empty prompt starts anywhere
        states = tuple(tf.zeros([num_rows, size]) for size in self._state_sizes)
        top_p = tf.constant(1.0) if top_p is None else top_p
        loop_inputs = (prompt, in_prompt, logits, states, temperature, top_k, top_p, seed, width)

        def run_loop(active):
            if not self._xla:
                return self._run_graph_loop(active, *loop_inputs)
            # as bin/sample: XLA's single-threaded loop wins at a few rows, TensorFlow's kernels beyond
            return tf.cond(num_rows <= sampling.XLA_MAX_ROWS, lambda: self._run_compiled_chunks(active, *loop_inputs),
                           lambda: self._run_graph_loop(active, *loop_inputs))

        sequence = _loop_for_request(filters, temperature, top_k, top_p, run_loop)
        new_ids = tf.gather(sequence, lengths[:, None] + tf.range(num_new)[None, :], batch_dims=1)
        continuation = tf.strings.reduce_join(tf.gather(self._tokens, new_ids), axis=1)
        return {"text": tf.strings.join([start_text, continuation])}

    def _run_graph_loop(self, filters, prompt, in_prompt, logits, states, temperature, top_k, top_p, seed, width):
        """The sequence (N, width) from one graph loop over the whole width."""
        knobs = (graph_knob_table(temperature, top_k, top_p), None)
        return sampling.chunk_loop(self._step_fn, filters)(prompt, in_prompt, logits, states, knobs, (), (), seed,
                                                           tf.constant(0), width)[0]

    def _run_compiled_chunks(self, filters, prompt, in_prompt, logits, states, temperature, top_k, top_p, seed,
                             width):
        """The sequence (N, width) as bin/sample makes it: a graph loop over fixed-width chunks, each one
        call of an XLA-compiled chunk loop (compiled once per batch size, whatever the request's length)."""
        run_chunk = sampling.make_chunk_fn(self._step_fn, filters, jit_compile=True)
        knobs = (graph_knob_table(temperature, top_k, top_p), None)
        chunk = sampling.STREAM_CHUNK
        num_chunks = (width + chunk - 1) // chunk
        padding = [[0, 0], [0, num_chunks * chunk - width]]
        prompt, in_prompt = tf.pad(prompt, padding), tf.pad(in_prompt, padding)
        pieces = tf.TensorArray(tf.int32, size=num_chunks)

        def body(k, logits, states, pieces):
            start = k * chunk
            ids, logits, states, _ = run_chunk(prompt[:, start:start + chunk], in_prompt[:, start:start + chunk],
                                               logits, states, knobs, (), (), seed, start,
                                               tf.minimum(chunk, width - start))
            return k + 1, logits, tuple(states), pieces.write(k, ids)

        _, _, _, pieces = tf.while_loop(lambda k, *_: k < num_chunks, body, (0, logits, tuple(states), pieces))
        return tf.reshape(tf.transpose(pieces.stack(), [1, 0, 2]), [tf.shape(prompt)[0], -1])[:, :width]


def _loop_for_request(filters, temperature, top_k, top_p, run_loop):
    """run_loop(active filters) -> sequence, with the logit filters only where the request turns one on
    (sorting the logits at each step cost ~40% of the loop at batch 50), and without noise where every row
    is greedy; the ids are the same as with every filter in. Each variant is traced (and, under XLA,
    compiled per batch size) on its own."""
    def unfiltered():
        return tf.cond(tf.reduce_all(temperature < sampling.ARGMAX_BELOW),
                       lambda: run_loop(Filters(greedy=True)), lambda: run_loop(Filters()))

    return tf.cond((top_k > 0) | (top_p < 1.0), lambda: run_loop(filters), unfiltered)


def write_saved_model(charrnn: CharRNN, directory: str, info: dict, xla: bool = False) -> None:
    """Writes the SavedModel and its assets.extra/ files into `directory` (which must be empty)."""
    module = CharRNNModule(charrnn, xla=xla)
    vocab = charrnn.vocab
    functions = {"generate": module.generate_text, "generate_top_p": module.generate_text_top_p, "step": module.step}
    tf.saved_model.save(module, directory, signatures={name: functions.get(name, module.generate_text)
                                                       for name in SIGNATURES})
    extra = os.path.join(directory, artifacts.EXTRA_DIR)
    os.makedirs(extra, exist_ok=True)
    files.write_text_atomic(os.path.join(extra, artifacts.VOCAB_FILE), vocab.to_json())
    files.write_text_atomic(os.path.join(extra, artifacts.INFO_FILE), json.dumps(info, indent=1))
    if xla:  # the first request at a batch size compiles: TF Serving does that at load time instead
        warmup.write(os.path.join(extra, warmup.FILE_NAME), warmup_requests())


def warmup_requests() -> List[bytes]:
    """Batch-1 requests of one character to each generate signature, one per loop the signature picks
    (sampled without filters, with top-k / top-p, greedy): each compiles the XLA chunk loop that serves
    every length of that kind at that batch size."""
    base = {"start_text": np.array([b""]), "num_new_chars": np.int32(1), "temperature": np.array([1.0], np.float32),
            "top_k": np.int32(0), "seed": np.int64(1)}
    own_inputs = {"generate_top_p": {"top_p": np.float32(1.0)}}
    kinds = ({}, {"top_k": np.int32(2)}, {"temperature": np.array([0.0], np.float32)})
    return [warmup.predict_log(name, {**base, **own_inputs.get(name, {}), **kind})
            for name in GENERATE_SIGNATURES for kind in kinds]


TFLITE_STEPS = 64  # characters per interpreter call of the TFLite `steps` signature


def tflite_model(saved_model_dir: str, quantize: str = "none") -> bytes:
    """The `step` signature of a written SavedModel as a TFLite flatbuffer, and `steps`, TFLITE_STEPS of
    them per call with the sampling between them: builtin ops only, weights inside.

    The variables are frozen into constants first: converting the SavedModel's `step` directly gives a
    file without the weights, whose outputs are NaN.
    """
    loaded = tf.saved_model.load(saved_model_dir)  # keep a reference: the signature needs its variables
    step = loaded.signatures["step"]
    state_specs = sorted((spec for name, spec in step.structured_input_signature[1].items() if name != "ids"),
                         key=lambda spec: int(spec.name.split("_")[1]))
    vocab_size = step.structured_outputs["logits"].shape[1]

    def run_step(ids, states):
        outputs = step(ids=ids, **{spec.name: s for spec, s in zip(state_specs, states)})
        return outputs["logits"], [outputs[spec.name] for spec in state_specs]

    steps = tf.function(lambda logits, prompt, in_prompt, noise, temperature, *states:
                        _tflite_steps(run_step, logits, prompt, in_prompt, noise, temperature, states),
                        autograph=False)
    steps = steps.get_concrete_function(
        tf.TensorSpec([None, vocab_size], tf.float32, name="logits"),
        tf.TensorSpec([None, TFLITE_STEPS], tf.int32, name="prompt"),
        tf.TensorSpec([None, TFLITE_STEPS], tf.bool, name="in_prompt"),
        tf.TensorSpec([None, TFLITE_STEPS, vocab_size], tf.float32, name="noise"),
        tf.TensorSpec([None], tf.float32, name="temperature"), *state_specs)
    # each frozen as a whole: a weight becomes one constant, which every step of the loop reads
    frozen = {"step": upstream.freeze_variables(step), "steps": upstream.freeze_variables(steps)}
    holder = tf.Module()
    holder.step = _with_outputs_named(frozen["step"], step)
    holder.steps = _with_outputs_named(frozen["steps"], steps)
    signatures = {"step": holder.step, "steps": holder.steps}
    with tempfile.TemporaryDirectory() as tmp:
        tf.saved_model.save(holder, tmp, signatures=signatures)
        converter = tf.lite.TFLiteConverter.from_saved_model(tmp, signature_keys=list(signatures))
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]  # LiteRT runs no Select TF ops
        if quantize != "none":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]  # alone: dynamic-range int8 weights
        if quantize == "float16":
            converter.target_spec.supported_types = [tf.float16]
        return converter.convert()


def _with_outputs_named(frozen, original):
    """A frozen function (its outputs a flat list) as a concrete function with the original's output dict."""
    def call(*args, **kwargs):
        return tf.nest.pack_sequence_as(original.structured_outputs, frozen(*args, **kwargs))

    return tf.function(call, autograph=False).get_concrete_function(*original.structured_input_signature[0],
                                                                    **original.structured_input_signature[1])


def _tflite_steps(run_step, logits, prompt, in_prompt, noise, temperature, states):
    """TFLITE_STEPS characters in one call: sampling.chunk_loop's body in a loop (TFLite's WHILE: the
    weights stay one copy, where an unrolled body copies them per step), with the Gumbel noise an input
    (the numpy sampler draws it, so its ids are those of the one-step loop: tests/test_export.py) and
    without top-k / top-p (the sampler calls `step` for those)."""
    num_rows = tf.shape(prompt)[0]

    def body(t, logits, states, ids):
        sampled = next_ids(logits, Knobs.unpacked(graph_knob_table(temperature)), noise[:, t], Filters())
        chosen = tf.where(in_prompt[:, t], prompt[:, t], sampled)
        logits, states = run_step(chosen, states)
        # the ids as a (N, S) tensor updated in place: TFLite has no TensorArray
        ids = tf.tensor_scatter_nd_update(ids, tf.stack([tf.range(num_rows), tf.fill([num_rows], t)], axis=1), chosen)
        return t + 1, logits, list(states), ids

    _, logits, states, ids = tf.while_loop(lambda t, *_: t < TFLITE_STEPS, body,
                                           (0, logits, list(states), tf.zeros_like(prompt)))
    return {"ids": ids, "logits": logits, **{f"state_{k}": s for k, s in enumerate(states)}}


def export(charrnn: CharRNN, version_dir: str, *, source: str, tflite: bool = False, quantize: str = "none",
           overwrite: bool = False, xla: bool = False) -> dict:
    """Writes one version directory (atomically: it appears complete or not at all); returns its info."""
    if quantize not in artifacts.QUANTIZE_MODES:
        raise UserError(f"{ref('quantize')} {quantize!r}: choose one of {', '.join(artifacts.QUANTIZE_MODES)}")
    info = {
        "format": "kerascharrnn_export",
        "kerascharrnn_version": kerascharrnn.__version__,
        "source_checkpoint": os.path.abspath(source),
        "model_config": dataclasses.asdict(charrnn.config),
        "vocab_size": charrnn.vocab.size,
        "encoding": charrnn.vocab.encoding,
        "signatures": SIGNATURES,
        "xla": xla,
        "warmup": f"{artifacts.EXTRA_DIR}/{warmup.FILE_NAME}" if xla else None,
        "states": state_descriptions(charrnn),
        "tflite": {"file": f"{artifacts.TFLITE_DIR}/{artifacts.TFLITE_FILE}", "quantize": quantize,
                   "signatures": ["step", "steps"], "steps_per_call": TFLITE_STEPS} if tflite else None,
    }
    with files.atomic_dir(version_dir, overwrite=overwrite) as tmp:
        write_saved_model(charrnn, tmp, info, xla=xla)
        if tflite:
            flatbuffer = tflite_model(tmp, quantize)
            os.makedirs(os.path.join(tmp, artifacts.TFLITE_DIR))
            with open(os.path.join(tmp, artifacts.TFLITE_DIR, artifacts.TFLITE_FILE), "wb") as f:
                f.write(flatbuffer)
            files.write_text_atomic(os.path.join(tmp, artifacts.TFLITE_DIR, artifacts.VOCAB_FILE),
                                    charrnn.vocab.to_json())
    return info
