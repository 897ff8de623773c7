"""Engines that generate text, one interface over a Keras checkpoint, a SavedModel and a TFLite model.

Each engine exposes `vocab` and `generate_ids(prompts, num_new, **options)` (see Sampler.generate), and
runs the same sampler over its own step function: Keras cells, the SavedModel's `step` signature, or
the TFLite interpreter's `step` signature runner. With `--sample 0` (argmax) all three give the same text.
"""

from __future__ import annotations

import codecs
import re
from typing import Callable, List, Optional, Sequence, TextIO


import numpy as np

from kerascharrnn import model as model_lib
from kerascharrnn.config import SampleConfig
from kerascharrnn.errors import UserError
from kerascharrnn.sampling import Sampler
from kerascharrnn.vocab import Vocabulary


def _state_names(names) -> List[str]:
    """state_0 ... state_K in numeric order (state_10 after state_9)."""
    return sorted((n for n in names if re.fullmatch(r"state_\d+", n)), key=lambda n: int(n.split("_")[1]))


def _named_step(call: Callable, names: Sequence[str]) -> Callable:
    """(ids, states) -> (logits, states) over a signature that takes and returns named tensors."""

    def step(ids, states):
        outputs = call(ids=ids, **dict(zip(names, states)))
        return outputs["logits"], tuple(outputs[name] for name in names)

    return step


class KerasEngine:
    """Samples from a loaded Keras model through its cells (compiled, XLA on by default)."""

    def __init__(self, model, vocab: Vocabulary, jit_compile: bool = True):
        self.vocab = vocab
        self.sampler = Sampler.for_tf_step(model_lib.make_step_fn(model), model_lib.state_sizes(model), vocab.size,
                                           jit_compile=jit_compile)

    def generate_ids(self, prompts, num_new, **options):
        return self.sampler.generate(prompts, num_new, **options)


class SavedModelEngine(KerasEngine):
    """Samples through an exported SavedModel's `step` signature (the loop compiled around it)."""

    def __init__(self, version_dir: str, vocab: Vocabulary, jit_compile: bool = True):
        import tensorflow as tf

        self.vocab = vocab
        self._loaded = tf.saved_model.load(version_dir)  # keeps the signature's variables alive
        signature = self._loaded.signatures["step"]
        specs = signature.structured_input_signature[1]
        names = _state_names(specs)
        self.sampler = Sampler.for_tf_step(_named_step(signature, names), [specs[n].shape[1] for n in names],
                                           vocab.size, jit_compile=jit_compile)


class TFLiteEngine(KerasEngine):
    """Samples through a model.tflite's `step` signature with the LiteRT interpreter (numpy loop)."""

    def __init__(self, path: str, vocab: Vocabulary):
        interpreter = load_interpreter(path)
        runner = interpreter.get_signature_runner("step")
        details = runner.get_input_details()
        names = _state_names(details)
        self.vocab = vocab
        self.sampler = Sampler.for_numpy_step(_direct_step(interpreter, runner, names),
                                              [int(details[n]["shape"][1]) for n in names], vocab.size)


def _direct_step(interpreter, runner, names: Sequence[str]) -> Callable:
    """The `step` signature through the interpreter's tensor indices: per character this skips the
    signature runner's dictionaries and shape checks (resizing only when the batch size changes)."""
    inputs = {name: d["index"] for name, d in runner.get_input_details().items()}
    outputs = {name: d["index"] for name, d in runner.get_output_details().items()}
    in_order = [inputs["ids"]] + [inputs[n] for n in names]
    out_order = [outputs["logits"]] + [outputs[n] for n in names]
    batch = [None]

    def step(ids, states):
        if batch[0] != len(ids):
            for index, value in zip(in_order, (ids, *states)):
                interpreter.resize_tensor_input(index, value.shape, strict=False)
            interpreter.allocate_tensors()
            batch[0] = len(ids)
        for index, value in zip(in_order, (ids, *states)):
            interpreter.set_tensor(index, np.ascontiguousarray(value, dtype=np.int32 if index == in_order[0]
                                                               else np.float32))
        interpreter.invoke()
        logits, *new_states = (interpreter.get_tensor(index) for index in out_order)
        return logits, tuple(new_states)

    return step


def load_interpreter(path: str):
    """A LiteRT interpreter (ai-edge-litert), or TensorFlow's own deprecated one if LiteRT is absent."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        import tensorflow as tf

        Interpreter = tf.lite.Interpreter
    interpreter = Interpreter(model_path=path)
    interpreter.allocate_tensors()  # applies the CPU delegate now, while the caller may silence its log line
    return interpreter


def open_engine(kind: str, path: str, vocab: Vocabulary, jit_compile: bool = True):
    """kind: "checkpoint" (.keras), "saved_model" (version directory) or "tflite"; load errors -> UserError.

    jit_compile (TensorFlow engines): XLA pays off for long single runs (bin/sample); a server whose
    batch sizes vary is better off without it.
    """
    from kerascharrnn import checkpoint as ckpt

    if kind == "checkpoint":
        return KerasEngine(ckpt.load_model(path), vocab, jit_compile=jit_compile)
    try:
        if kind == "saved_model":
            return SavedModelEngine(path, vocab, jit_compile=jit_compile)
        return TFLiteEngine(path, vocab)
    except Exception as e:  # a damaged or foreign file fails in many ways inside TensorFlow / LiteRT
        reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise UserError(f"{path}: cannot load this {kind}: {reason}") from None


def generate_texts(engine, config: SampleConfig, stream: Optional[TextIO] = None) -> List[str]:
    """Runs `config` on `engine`: num_samples texts of config.length tokens, each starting with start_text.

    With `stream`, the first sample is written there as it is generated (chunk by chunk).
    """
    vocab = engine.vocab
    prompt = vocab.encode(config.start_text)
    num_new = config.length - len(prompt)
    on_chunk = None
    if stream is not None:
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        stream.write(config.start_text)
        stream.flush()

        def on_chunk(rows):
            stream.write(decoder.decode(vocab.decode_bytes(rows[0])))
            stream.flush()

    sequences = engine.generate_ids(
        [prompt] * config.num_samples, num_new, temperature=config.temperature, top_k=config.top_k,
        top_p=config.top_p, greedy=not config.sample, seed=config.seed, on_chunk=on_chunk)
    return [vocab.decode(ids) for ids in sequences]
