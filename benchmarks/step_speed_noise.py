"""How much a measured training speed moves within one machine: step_speed.measure with 5 and with 15 timed
steps, --repeats times each, interleaved (not a test; run it on a quiet machine).

    python3 benchmarks/step_speed_noise.py --rnn_size 256 --repeats 4

Prints each size's speeds (characters/s) and their spread, (max - min) / median: the noise a sizing choice at
a boundary (training/sizing.py) sees.
"""

import argparse
import statistics

from kerascharrnn import devices
from kerascharrnn.config import ModelConfig, TrainConfig
from kerascharrnn.presets import PRESETS
from kerascharrnn.training import step_speed


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rnn_size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--steps", type=int, nargs="+", default=[5, 15])
    args = parser.parse_args()
    devices.configure(-1, None)
    recipe = PRESETS["auto"]
    model = ModelConfig(vocab_size=96, **{k: recipe[k] for k in ("model_type", "num_layers", "wordvec_size",
                                                                   "dropout", "embedding_dropout", "copy_memory",
                                                                   "copy_reset")}, rnn_size=args.rnn_size)
    config = TrainConfig(fused="split", **{k: recipe[k] for k in ("batch_size", "seq_length", "learning_rate",
                                                                   "weight_decay", "grad_clip")})
    speeds = {steps: [] for steps in args.steps}
    for _ in range(args.repeats):
        for steps in args.steps:
            speeds[steps].append(step_speed.measure(model, config, steps=steps))
    for steps, values in speeds.items():
        print(f"{steps} timed steps: {', '.join(f'{v:,.0f}' for v in values)} characters/s;"
              f" spread {(max(values) - min(values)) / statistics.median(values):.1%}")


if __name__ == "__main__":
    main()
