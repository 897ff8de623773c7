"""Sampling engines: one interface over a Keras checkpoint, an exported SavedModel and a TFLite model.

An Engine is a vocabulary plus a Sampler over some step function: the Keras cells (CharRNN), the
SavedModel's `step` signature, or the TFLite interpreter's `step` signature. All three run the same
sampler, so with argmax (`--sample 0`) they give the same text. `open_engine(kind, ...)` loads one.
A TFLite engine needs no TensorFlow (the lite install): the TensorFlow engines import it themselves.
"""

from __future__ import annotations

import codecs
import dataclasses
import re
from typing import Callable, List, Optional, Sequence

import numpy as np

from kerascharrnn import upstream
from kerascharrnn.config import SampleConfig
from kerascharrnn.errors import UserError
from kerascharrnn.inference.generation import MultiStep, Sampler
from kerascharrnn.vocab import Vocabulary

KINDS = ("checkpoint", "saved_model", "tflite")


@dataclasses.dataclass
class Engine:
    """What samples text: `vocab` and `sample_ids(prompts, num_new, **options)` (see Sampler.sample_ids).

    Attributes:
      vocab: the model's vocabulary.
      sampler: the compiled (or numpy) sampling loop over the engine's step.
      source: the file or directory it came from.
      loaded: an object the step needs alive (a loaded SavedModel owns the signature's variables).
    """

    vocab: Vocabulary
    sampler: Sampler
    source: str = ""
    loaded: object = None

    def sample_ids(self, prompts, num_new: int, **options) -> List[np.ndarray]:
        return self.sampler.sample_ids(prompts, num_new, **options)

    def beam_search_ids(self, prompt: np.ndarray, num_new: int, beam_size: int) -> np.ndarray:
        return self.sampler.beam_search_ids(prompt, num_new, beam_size)


def _state_names(names) -> List[str]:
    """state_0 ... state_K in numeric order (state_10 after state_9)."""
    return sorted((n for n in names if re.fullmatch(r"state_\d+", n)), key=lambda n: int(n.split("_")[1]))


def _named_step(call: Callable, names: Sequence[str]) -> Callable:
    """(ids, states) -> (logits, states) over a signature that takes and returns named tensors."""

    def step(ids, states):
        outputs = call(ids=ids, **dict(zip(names, states)))
        return outputs["logits"], tuple(outputs[name] for name in names)

    return step


def charrnn_engine(charrnn, jit_compile: bool = True, source: str = "") -> Engine:
    """Samples through a CharRNN's cells, compiled (XLA, where asked, for runs of a few rows: bin/sample)."""
    from kerascharrnn.inference import sampling

    sampler = sampling.Sampler.for_tf_step(charrnn.step_fn(), charrnn.state_sizes, charrnn.vocab.size,
                                           jit_compile=jit_compile)
    return Engine(charrnn.vocab, sampler, source)


def checkpoint_engine(path: str, jit_compile: bool = True) -> Engine:
    """Samples from a checkpoint through its cells (compiled; XLA for runs of a few rows)."""
    from kerascharrnn.models.charrnn import CharRNN

    return charrnn_engine(CharRNN.from_checkpoint(path), jit_compile, path)


def saved_model_engine(version_dir: str, vocab: Vocabulary, jit_compile: bool = True) -> Engine:
    """Samples through an exported SavedModel's `step` signature (the loop compiled around it)."""
    import tensorflow as tf

    from kerascharrnn.inference import sampling

    loaded = tf.saved_model.load(version_dir)
    signature = loaded.signatures["step"]
    specs = signature.structured_input_signature[1]
    names = _state_names(specs)
    _check_vocab_fits(signature.structured_outputs["logits"].shape[-1], vocab, version_dir)
    sampler = sampling.Sampler.for_tf_step(_named_step(signature, names), [specs[n].shape[1] for n in names],
                                           vocab.size, jit_compile=jit_compile)
    return Engine(vocab, sampler, version_dir, loaded=loaded)


def tflite_engine(path: str, vocab: Vocabulary) -> Engine:
    """Samples through a model.tflite with the LiteRT interpreter (numpy loop): runs of characters
    through its `steps` signature where it has one (files exported before it: `step` alone)."""
    interpreter = load_interpreter(path)
    details = interpreter.get_signature_runner("step").get_input_details()
    names = _state_names(details)
    _check_vocab_fits(interpreter.get_signature_runner("step").get_output_details()["logits"]["shape"][-1], vocab,
                      path)
    step = _signature(interpreter, "step", ["ids", *names], ["logits", *names])

    def step_fn(ids, states):
        logits, *new_states = step(ids, *states)
        return logits, tuple(new_states)

    multi_step = None
    if "steps" in interpreter.get_signature_list():
        # an interpreter of its own: a live signature runner (needed for a signature outside the main
        # subgraph) makes its interpreter refuse the tensor calls that `step` goes through
        steps = _signature(load_interpreter(path), "steps",
                           ["logits", "prompt", "in_prompt", "noise", "temperature", *names], ["ids", "logits", *names])

        def steps_fn(logits, prompt, in_prompt, noise, temperature, states):
            ids, logits, *new_states = steps(logits, prompt, in_prompt, noise, temperature, *states)
            return ids, logits, tuple(new_states)

        prompt_shape = interpreter.get_signature_runner("steps").get_input_details()["prompt"]["shape"]
        multi_step = MultiStep(int(prompt_shape[1]), steps_fn)
    return Engine(vocab, Sampler.for_numpy_step(step_fn, [int(details[n]["shape"][1]) for n in names], vocab.size,
                                                multi_step=multi_step), path)


def _check_vocab_fits(model_vocab_size, vocab: Vocabulary, path: str) -> None:
    """An exported model and the vocabulary beside it must agree (a vocab.json swapped or edited would sample
    ids that name no character, or tokens the model never makes)."""
    if model_vocab_size is not None and int(model_vocab_size) != vocab.size:
        raise UserError(f"{path}: the model makes {int(model_vocab_size)} tokens and its vocabulary has {vocab.size};"
                        " they come from different exports")


def _signature(interpreter, name: str, input_names: Sequence[str], output_names: Sequence[str]) -> Callable:
    """signature(*inputs) -> [outputs], both in the order named. The interpreter's main subgraph goes
    through its tensor indices: per call this skips the signature runner's dictionaries, resizing and
    allocation (only when the batch size changes), which counts when a call makes one character. The
    public tensor calls reach only that subgraph; another signature goes through its runner."""
    runner = interpreter.get_signature_runner(name)
    inputs, outputs = runner.get_input_details(), runner.get_output_details()
    main_subgraph = {(d["name"], d["index"]) for d in interpreter.get_input_details()}
    if {(d["name"], d["index"]) for d in inputs.values()} != main_subgraph:

        def call_runner(*values):
            result = runner(**{n: np.asarray(v, inputs[n]["dtype"]) for n, v in zip(input_names, values)})
            # copies: a view into the interpreter's buffers would block resizing the main subgraph
            return [np.array(result[n]) for n in output_names]

        return call_runner
    in_order = [(inputs[n]["index"], inputs[n]["dtype"]) for n in input_names]
    out_order = [outputs[n]["index"] for n in output_names]
    batch = [None]

    def call(*values):
        if batch[0] != len(values[0]):
            for (index, _), value in zip(in_order, values):
                interpreter.resize_tensor_input(index, np.shape(value), strict=False)
            interpreter.allocate_tensors()
            batch[0] = len(values[0])
        for (index, dtype), value in zip(in_order, values):
            interpreter.set_tensor(index, np.ascontiguousarray(value, dtype=dtype))
        interpreter.invoke()
        return [interpreter.get_tensor(index) for index in out_order]

    return call


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


def open_engine(kind: str, path: str, vocab: Optional[Vocabulary] = None, jit_compile: bool = True) -> Engine:
    """Loads an engine; load errors become UserError.

    Args:
      kind: "checkpoint" (.keras or its .json), "saved_model" (a version directory) or "tflite".
      path: the file or directory.
      vocab: the vocabulary of an exported model (a checkpoint carries its own).
      jit_compile: TensorFlow engines: XLA pays off for long runs of a few rows (bin/sample); a server
        whose batch sizes vary is better off without it.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown engine kind {kind!r}; choose one of {', '.join(KINDS)}")
    if kind == "checkpoint":
        return checkpoint_engine(path, jit_compile=jit_compile)
    if vocab is None:
        raise ValueError(f"a {kind} engine needs the vocabulary exported beside it")
    try:
        if kind == "saved_model":
            return saved_model_engine(path, vocab, jit_compile=jit_compile)
        return tflite_engine(path, vocab)
    except upstream.damaged_file_errors() as e:  # a damaged or foreign file fails in many ways
        reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise UserError(f"{path}: cannot load this {kind}: {reason}") from None


def sample_texts(engine: Engine, config: SampleConfig, on_text: Optional[Callable[[str], None]] = None) -> List[str]:
    """Runs `config` on `engine`: num_samples texts of config.length tokens, each starting with start_text.

    Args:
      engine: what samples.
      config: the sampling options; `length` counts the start text's tokens too.
      on_text: called with the first sample's text as it is made (the start text first, then a piece
        per compiled chunk), for printing while it runs.

    Returns:
      The texts, each start_text + continuation. Raises UserError for unknown characters or a length
      shorter than the start text.
    """
    vocab = engine.vocab
    prompt = vocab.encode(config.start_text)
    num_new = config.new_tokens(len(prompt))
    if config.beam_size:
        ids = engine.beam_search_ids(prompt, num_new, config.beam_size)
        if on_text is not None:
            on_text(vocab.decode(ids))
        return [vocab.decode(ids)]
    on_chunk = None
    if on_text is not None:
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        on_text(config.start_text)

        def on_chunk(rows):
            on_text(decoder.decode(vocab.decode_bytes(rows[0])))

    sequences = engine.sample_ids(
        [prompt] * config.num_samples, num_new, temperature=config.temperature, top_k=config.top_k,
        top_p=config.top_p, greedy=not config.sample, seed=config.seed, on_chunk=on_chunk)
    return [vocab.decode(ids) for ids in sequences]
