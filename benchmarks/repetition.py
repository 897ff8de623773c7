#!/usr/bin/env python3
"""How often samples repeat themselves: the check that copy attention's sampling stays natural.

For samples written by `bin/sample --jsonl` (one JSON string per line) it counts the samples in which a
word follows itself ("God God", case aside; words of three letters or more, or any word three times
running), after the prompt. For a plain text sample it prints the distinct words and the distinct
speaker headings ("NAME:" after a blank line) with the most frequent.

    bin/sample --checkpoint cv/x_best.keras --num_samples 100 --length 150 --seed 2 --start_text PETRUCHIO: \
        --jsonl > short.jsonl
    bin/sample --checkpoint cv/x_best.keras --length 5000 --seed 1 --temperature 0.8 > long.txt
    python3 benchmarks/repetition.py --prompt PETRUCHIO: short.jsonl long.txt
"""

from __future__ import annotations

import argparse
import collections
import json
import re

WORD = re.compile(r"[A-Za-z']+")
HEADING = re.compile(r"\n\n([A-Z][A-Za-z ]+):\n")


def repeats_a_word(text: str) -> bool:
    words = [w.lower() for w in WORD.findall(text)]
    doubled = any(a == b and len(a) > 2 for a, b in zip(words, words[1:]))
    return doubled or any(a == b == c for a, b, c in zip(words, words[1:], words[2:]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("files", nargs="+", help="bin/sample --jsonl output (.jsonl) or plain text samples")
    parser.add_argument("--prompt", default="", help="the --start_text of the .jsonl samples (not counted)")
    args = parser.parse_args()
    for path in args.files:
        with open(path, encoding="utf-8") as f:
            if path.endswith(".jsonl"):
                samples = [json.loads(line)[len(args.prompt):] for line in f if line.strip()]
                count = sum(map(repeats_a_word, samples))
                print(f"{path}: {count} of {len(samples)} samples repeat a word immediately")
            else:
                text = f.read()
                words = WORD.findall(text)
                headings = collections.Counter(HEADING.findall(text))
                print(f"{path}: {len(text):,} characters, {len(words):,} words, {len(set(words)):,} distinct;"
                      f" {sum(headings.values())} speeches by {len(headings)} speakers"
                      f" (most: {', '.join(f'{name} {n}' for name, n in headings.most_common(3))})")


if __name__ == "__main__":
    main()
