#!/usr/bin/env python3
"""What the sampler settings local servers accept do to a character model that loops, and what they cost (not a
test; docs/writers.md shows its output).

    python3 benchmarks/penalties.py --checkpoint ../shared/data/torch-rnn-shakespeare-2x128.t7 \
        --prompt "ROMEO:" --length 600

For each setting (none; repetition, presence and frequency penalties; min-p; typical-p) it makes, through the
sampler bin/serve runs, an argmax continuation and --samples seeded ones (temperature --temperature) of --prompt,
and prints how much of each repeats itself (the share of its 20-character windows seen earlier in it: an argmax
char-RNN falls into a loop and stays), its distinct words, and the start of the argmax text. Then the cost: the
characters per second of each setting's loop beside the plain loop's, at 1, 3 and 32 rows, each the median of
--repeats runs, a run of the setting right after one of the plain loop (run it on a quiet machine).
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

SETTINGS = {  # name -> SamplingSettings fields
    "none": {},
    "repetition_penalty 1.2 (last 64)": {"repetition_penalty": 1.2, "penalty_range": 64},
    "repetition_penalty 1.5 (last 64)": {"repetition_penalty": 1.5, "penalty_range": 64},
    "presence_penalty 1.0 (last 64)": {"presence_penalty": 1.0, "penalty_range": 64},
    "frequency_penalty 0.5 (last 256)": {"frequency_penalty": 0.5, "penalty_range": 256},
    "min_p 0.1": {"min_p": 0.1},
    "typical_p 0.9": {"typical_p": 0.9},
}


def repeated_share(text: str, span: int = 20) -> float:
    """The share of the text's `span`-character windows that already occurred earlier in it."""
    windows = [text[i:i + span] for i in range(len(text) - span + 1)]
    seen, repeats = set(), 0
    for window in windows:
        repeats += window in seen
        seen.add(window)
    return repeats / max(len(windows), 1)


def distinct_words(text: str) -> int:
    return len(set(re.findall(r"[A-Za-z']+", text.lower())))


def made(engine, prompt, length, settings, seed, rows=1):
    run = engine.sampler.generate([prompt] * rows, length, settings, seed=seed)
    pieces = {row: [] for row in range(rows)}
    while not run.done:
        for row, piece in run.advance().items():
            pieces[row].append(piece.ids)
    return [engine.vocab.decode(np.concatenate(p)) for p in pieces.values()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="A .keras or torch-rnn .t7 checkpoint.")
    parser.add_argument("--prompt", default="ROMEO:", help="Text to continue.")
    parser.add_argument("--length", type=int, default=600, help="Characters to make per sample.")
    parser.add_argument("--samples", type=int, default=5, help="Seeded samples per setting.")
    parser.add_argument("--temperature", type=float, default=0.7, help="Temperature of the seeded samples.")
    parser.add_argument("--repeats", type=int, default=5, help="Timed runs per setting and batch size.")
    parser.add_argument("--shown", type=int, default=300, help="Characters of each argmax text to print.")
    parser.add_argument("--part", choices=("both", "texts", "cost"), default="both", help="What to measure.")
    args = parser.parse_args()

    from kerascharrnn.inference import engines

    engine = engines.open_engine("checkpoint", args.checkpoint, jit_compile=False)  # bin/serve's loop
    prompt = engine.vocab.encode(args.prompt)
    if args.part != "cost":
        texts(engine, prompt, args)
    if args.part != "texts":
        cost(engine, prompt, args)


def texts(engine, prompt, args) -> None:
    from kerascharrnn.sampling_settings import SamplingSettings

    print(f"{args.checkpoint}: {args.length} characters after {args.prompt!r}; repeated = share of 20-character"
          f" windows seen earlier in the text")
    for name, fields in SETTINGS.items():
        greedy = made(engine, prompt, args.length, SamplingSettings(temperature=0, **fields), seed=1)[0]
        sampled = [made(engine, prompt, args.length, SamplingSettings(temperature=args.temperature, **fields),
                        seed=seed)[0] for seed in range(1, args.samples + 1)]
        print(f"\n## {name}\nargmax: repeated {repeated_share(greedy):.0%}, {distinct_words(greedy)} distinct words;"
              f" T={args.temperature} x {args.samples}: repeated {statistics.mean(map(repeated_share, sampled)):.0%},"
              f" {statistics.mean(map(distinct_words, sampled)):.0f} distinct words")
        print("argmax text: " + repr(greedy[:args.shown]))


def cost(engine, prompt, args) -> None:
    from kerascharrnn.sampling_settings import SamplingSettings

    print(f"\n{args.checkpoint}: characters per second, median of {args.repeats} runs of {args.length} characters,"
          " each run of a setting right after one of the plain loop (sampling at the temperature above)")
    plain = SamplingSettings(temperature=args.temperature)
    for rows in (1, 3, 32):
        for name, fields in list(SETTINGS.items())[1:]:
            settings = SamplingSettings(temperature=args.temperature, **fields)
            seconds = {plain: [], settings: []}
            for each in seconds:
                made(engine, prompt, 64, each, seed=1, rows=rows)  # traced before it is timed
            for repeat in range(args.repeats):
                for each in seconds:
                    started = time.perf_counter()
                    made(engine, prompt, args.length, each, seed=repeat + 1, rows=rows)
                    seconds[each].append(time.perf_counter() - started)
            rate = {each: rows * (args.length + len(prompt)) / statistics.median(times)
                    for each, times in seconds.items()}
            print(f"  {rows:>2} row(s) {name:<34} {rate[settings]:>9,.0f} chars/s, plain {rate[plain]:>9,.0f}:"
                  f" {rate[settings] / rate[plain]:.2f}x")


if __name__ == "__main__":
    main()
