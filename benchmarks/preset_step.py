"""Train-step speed of a preset's model on each training path (tokens/s; no data needed).

    python3 benchmarks/preset_step.py cpu_15min on split off
    python3 benchmarks/preset_step.py cpu_15min split --rnn_size 256 --copy_memory 0

Builds the preset's model over a 65-character vocabulary (flags after the paths change its values) and
times 25 steps of `Trainer.train_step` on random batches after the warm-up (step_speed.measure, what a
budgeted preset measures before a run) per `--fused` setting named; prints the median.
"""

import dataclasses
import sys

from kerascharrnn.config import ModelConfig, TrainConfig
from kerascharrnn.presets import PRESETS
from kerascharrnn.training import step_speed


def main(preset: str, args):
    settings = [a for a in args if not a.startswith("--")] or ["auto"]
    overrides = {name[2:]: type(PRESETS[preset].get(name[2:], 0))(value)
                 for name, value in zip(args[len(settings)::2], args[len(settings) + 1::2])}
    values = {**PRESETS[preset], **overrides}
    fields = lambda cls: {f.name for f in dataclasses.fields(cls)}  # noqa: E731
    model = ModelConfig(vocab_size=65, **{k: v for k, v in values.items() if k in fields(ModelConfig)})
    for setting in settings:
        config = TrainConfig(**{k: v for k, v in values.items() if k in fields(TrainConfig)}, fused=setting)
        tokens_per_s = step_speed.measure(model, config, steps=25)
        step_ms = 1000 * config.batch_size * config.seq_length / tokens_per_s
        print(f"{preset} {overrides or ''} --fused {setting}: {step_ms:.1f} ms/step, {tokens_per_s:,.0f} tokens/s")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
