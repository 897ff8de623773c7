"""Train-step speed of a preset's model on each training path (tokens/s; no data needed).

    python3 benchmarks/preset_step.py cpu_15min on split off

Builds the preset's model over a 65-character vocabulary, times 25 steps of `Trainer.train_step` on
random batches after 3 warm-up steps per `--fused` setting named, and prints the median.
"""

import dataclasses
import sys
import time

import keras
import numpy as np

from kerascharrnn.config import ModelConfig, TrainConfig
from kerascharrnn.data import batches
from kerascharrnn.models.charrnn import CharRNN
from kerascharrnn.presets import PRESETS
from kerascharrnn.training import trainer
from kerascharrnn.vocab import Vocabulary


def main(preset: str, settings):
    values = PRESETS[preset]
    model_fields = {f.name for f in dataclasses.fields(ModelConfig)}
    train_fields = {f.name for f in dataclasses.fields(TrainConfig)}
    vocab = Vocabulary(tuple(chr(c) for c in range(32, 97)))
    model_config = ModelConfig(vocab_size=vocab.size, **{k: v for k, v in values.items() if k in model_fields})
    batch, steps = values["batch_size"], values["seq_length"]
    rng = np.random.default_rng(0)
    inputs = [(rng.integers(0, vocab.size, (batch, steps)).astype(np.int32),
                rng.integers(0, vocab.size, (batch, steps)).astype(np.int32)) for _ in range(4)]
    for setting in settings:
        keras.utils.set_random_seed(1)
        charrnn = CharRNN.build(model_config, vocab, batch)
        config = TrainConfig(**{k: v for k, v in values.items() if k in train_fields}, fused=setting)
        one_device = trainer.Trainer(config, charrnn, {"train": batches.StreamLayout(batch, batch, steps, 1000)})
        for x, y in inputs[:3]:
            one_device.train_step(x, y)
        times = []
        for i in range(25):
            x, y = inputs[i % len(inputs)]
            started = time.perf_counter()
            float(one_device.train_step(x, y))
            times.append(time.perf_counter() - started)
        median = float(np.median(times))
        print(f"{preset} --fused {setting} ({one_device.config.fused}): {1000 * median:.1f} ms/step,"
              f" {batch * steps / median:,.0f} tokens/s")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:] or ["auto"])
