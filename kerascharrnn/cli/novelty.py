"""bin/novelty: how much of a model's text is copied from its training corpus (torch-rnn's
scripts/novel_substrings.py, on a suffix array instead of a scan of the corpus per substring).

    bin/novelty --input_txt data/tiny-shakespeare.txt sample1.txt sample2.txt
    bin/sample --checkpoint cv/checkpoint_10000.keras | bin/novelty --input_txt data/tiny-shakespeare.txt

Positional arguments are sample files; "-" or none reads the sample from standard input. For each
sample (and in total when there are several) it prints, per n-gram length, the share of the sample's
n-grams found anywhere in the corpus (torch-rnn prints 1 - share, its "novel fraction"; --ngrams 1-49
gives its whole table), and the longest passage copied verbatim, with its corpus offset. Never imports
TensorFlow.
"""

from __future__ import annotations

import json
import sys
import time
from typing import List, Optional, Sequence, Tuple

from absl import flags

from kerascharrnn.analysis import novelty
from kerascharrnn.cli import common
from kerascharrnn.data.text import check_encoding
from kerascharrnn.errors import UserError
from kerascharrnn.io import files
from kerascharrnn.vocab import BYTES

MAX_NGRAM = 1_000_000


def parse_ngrams(text: str) -> Tuple[int, ...]:
    """--ngrams: n-gram lengths such as "5,10,20,50" or "1-49" (torch-rnn's lengths), distinct, ascending."""
    lengths = set()
    for part in (p.strip() for p in text.split(",")):
        try:
            if "-" in part[1:]:
                first, last = (int(x) for x in part.split("-", 1))
            else:
                first = last = int(part)
        except ValueError:
            raise UserError(f"--ngrams: {part!r} is not a length or a range a-b (e.g. 5,10,20,50 or 1-49)") from None
        if first < 1 or last < first or last > MAX_NGRAM:
            raise UserError(f"--ngrams: {part!r}: lengths go from 1 to {MAX_NGRAM:,}, a range low-high (e.g. 1-49)")
        lengths.update(range(first, last + 1))
    return tuple(sorted(lengths))


def define_flags(flag_values: flags.FlagValues) -> None:
    options = dict(flag_values=flag_values)
    flags.DEFINE_string("input_txt", "", "Training corpus (a text file) to compare with; required. The samples are"
                        " the positional arguments: files, or '-' or none for standard input.", **options)
    flags.DEFINE_string("ngrams", ",".join(map(str, novelty.DEFAULT_NGRAMS)),
                        "N-gram lengths in characters (bytes with --encoding bytes): a comma-separated list, ranges"
                        " a-b allowed (1-49 is torch-rnn's table).", **options)
    flags.DEFINE_string("encoding", "utf-8", "Text encoding of the corpus and the samples (a Python codec name), or"
                        " 'bytes' to compare raw bytes.", **options)
    flags.DEFINE_bool("json", False, "Print one JSON object (corpus, each sample, total) instead of tables.",
                      **options)
    flags.DEFINE_integer("preview_chars", 80, "Characters of the longest copy to show, escaped on one line (a longer"
                         " one is cut in the middle).", lower_bound=10, **options)


def run(flag_values: flags.FlagValues, argv: List[str]) -> None:
    sample_paths = argv[1:] or [novelty.STDIN]
    if not flag_values.input_txt:
        raise UserError("--input_txt is required (the training corpus to compare the samples with)")
    ngrams = parse_ngrams(flag_values.ngrams)
    encoding = check_encoding(flag_values.encoding)
    if sample_paths.count(novelty.STDIN) > 1:
        raise UserError("'-' (standard input) can be given only once")
    if novelty.STDIN in sample_paths and sys.stdin.isatty():
        raise UserError("no sample: give sample files, or pipe one in (bin/sample ... | bin/novelty ...)")
    files.require_file(flag_values.input_txt, "text file")  # before waiting for a sample on standard input
    unit = "bytes" if encoding == BYTES else "characters"
    samples = []
    for path in sample_paths:  # every sample is read and checked before the slow part, indexing the corpus
        name = "<stdin>" if path == novelty.STDIN else path
        units = novelty.read_sample(path, encoding)
        novelty.require_length(units, ngrams, name, unit)
        samples.append((name, units))

    start = time.perf_counter()
    index = novelty.CorpusIndex.from_file(flag_values.input_txt, encoding)
    seconds = time.perf_counter() - start
    reports = [novelty.analyze(index, units, ngrams, name) for name, units in samples]
    total = novelty.combine(reports)

    if flag_values.json:
        print(json.dumps({"corpus": novelty.describe_corpus(flag_values.input_txt, index), "ngrams": list(ngrams),
                          "samples": [r.to_dict(unit) for r in reports], "total": total.to_dict(unit)},
                         ensure_ascii=False, indent=2))
        return
    print(f"corpus: {flag_values.input_txt}: {index.size:,} {unit}, {len(index.alphabet):,} distinct"
          f" (indexed in {seconds:.1f} s)")
    for report in reports + ([total] if len(reports) > 1 else []):
        print()
        print("\n".join(novelty.format_report(report, unit, flag_values.preview_chars)))


def main(argv: Optional[Sequence[str]] = None) -> int:
    return common.main(argv, define_flags, run, __doc__, positional=True)


if __name__ == "__main__":
    sys.exit(main())
