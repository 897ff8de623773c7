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

from absl import flags

from kerascharrnn import files, novelty
from kerascharrnn.cli import common
from kerascharrnn.errors import UserError
from kerascharrnn.preprocess import check_encoding

flags.DEFINE_string("input_txt", "", "Training corpus (a text file) to compare with; required. The samples are the"
                    " positional arguments: files, or '-' or none for standard input.")
flags.DEFINE_string("ngrams", ",".join(map(str, novelty.DEFAULT_NGRAMS)),
                    "N-gram lengths in characters (bytes with --encoding bytes): a comma-separated list, ranges a-b"
                    " allowed (1-49 is torch-rnn's table).")
flags.DEFINE_string("encoding", "utf-8", "Text encoding of the corpus and the samples (a Python codec name), or"
                    " 'bytes' to compare raw bytes.")
flags.DEFINE_bool("json", False, "Print one JSON object (corpus, each sample, total) instead of tables.")
flags.DEFINE_integer("preview_chars", 80, "Characters of the longest copy to show, escaped on one line (a longer"
                     " one is cut in the middle).", lower_bound=10)
FLAGS = flags.FLAGS
_OWN_FLAGS = ("input_txt", "ngrams", "encoding", "json", "preview_chars")
STDIN = "-"


def main(argv):
    paths = argv[1:] or [STDIN]
    if not FLAGS.input_txt:
        raise UserError("--input_txt is required (the training corpus to compare the samples with)")
    ngrams = novelty.parse_ngrams(FLAGS.ngrams)
    encoding = check_encoding(FLAGS.encoding)
    if paths.count(STDIN) > 1:
        raise UserError("'-' (standard input) can be given only once")
    if STDIN in paths and sys.stdin.isatty():
        raise UserError("no sample: give sample files, or pipe one in (bin/sample ... | bin/novelty ...)")
    files.require_file(FLAGS.input_txt, "text file")  # before waiting for a sample on standard input
    unit = "bytes" if encoding == novelty.BYTES else "characters"
    samples = []
    for path in paths:  # every sample is read and checked before the slow part, indexing the corpus
        name = "<stdin>" if path == STDIN else path
        units = novelty.read_sample(path, encoding)
        novelty.require_length(units, ngrams, name, unit)
        samples.append((name, units))

    start = time.perf_counter()
    index = novelty.CorpusIndex.from_file(FLAGS.input_txt, encoding)
    seconds = time.perf_counter() - start
    reports = [novelty.analyze(index, units, ngrams, name) for name, units in samples]
    total = novelty.combine(reports)

    if FLAGS.json:
        print(json.dumps({"corpus": novelty.describe_corpus(FLAGS.input_txt, index), "ngrams": list(ngrams),
                          "samples": [r.to_dict(unit) for r in reports], "total": total.to_dict(unit)},
                         ensure_ascii=False, indent=2))
        return
    print(f"corpus: {FLAGS.input_txt}: {index.size:,} {unit}, {len(index.alphabet):,} distinct"
          f" (indexed in {seconds:.1f} s)")
    for report in reports + ([total] if len(reports) > 1 else []):
        print()
        print("\n".join(novelty.format_report(report, unit, FLAGS.preview_chars)))


def parse_flags(argv):
    """common.parse_flags, except that positional arguments are kept: they are the sample files."""
    try:
        return FLAGS(argv)
    except flags.Error:
        return common.parse_flags(argv)  # the same error, as common's one line on stderr (exit 2)


def run():
    """bin/novelty's entry point: common.run_main with a parser that keeps the positional sample files."""
    for name in _OWN_FLAGS:  # so that --help lists them (the main module is the bin/ wrapper)
        FLAGS.register_key_flag_for_module(sys.argv[0], FLAGS[name])
    common.run_main(main, flags_parser=parse_flags)


if __name__ == "__main__":
    run()
