"""Engines that generate text: one interface over a Keras checkpoint (and, later, exported models)."""

from __future__ import annotations

import codecs
from typing import List, Optional, TextIO

from kerascharrnn import model as model_lib
from kerascharrnn.config import SampleConfig
from kerascharrnn.sampling import Sampler
from kerascharrnn.vocab import Vocabulary


class KerasEngine:
    """Samples from a loaded Keras model through its cells (compiled, XLA on by default)."""

    def __init__(self, model, vocab: Vocabulary, jit_compile: bool = True):
        self.vocab = vocab
        self.sampler = Sampler(model_lib.make_step_fn(model), model_lib.state_sizes(model), vocab.size,
                               jit_compile=jit_compile)

    def generate_ids(self, prompts, num_new, **options):
        return self.sampler.generate(prompts, num_new, **options)


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
