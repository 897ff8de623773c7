"""kerascharrnn.novelty and bin/novelty: exact answers on tiny texts, checked against naive references."""

import json
import random

import numpy as np
import pytest
from conftest import run_cli

from kerascharrnn.analysis import novelty
from kerascharrnn.analysis.suffix_array import suffix_array
from kerascharrnn.cli.novelty import parse_ngrams
from kerascharrnn.errors import UserError

TRACEBACK = "Traceback (most recent call last)"


# --- naive references ------------------------------------------------------------------------------------


def naive_matching_statistics(corpus, sample):
    """For each offset, the longest prefix of sample[i:] that is a substring of corpus (Python's `in`)."""
    out = []
    for i in range(len(sample)):
        length = 0
        while i + length < len(sample) and sample[i:i + length + 1] in corpus:
            length += 1
        out.append(length)
    return out


def naive_overlap(corpus, sample, n):
    """(in_corpus, total) over the sample's n-grams, one per offset, from the set of the corpus's n-grams."""
    grams = {corpus[i:i + n] for i in range(len(corpus) - n + 1)}
    total = len(sample) - n + 1
    return sum(sample[i:i + n] in grams for i in range(total)), total


def torch_rnn_novel_fractions(sampled, training, lengths):
    """torch-rnn's scripts/novel_substrings.py, verbatim but for the printing."""
    fractions = {}
    for L in lengths:
        num_searched = 0
        num_found = 0
        for i in range(len(sampled) - L + 1):
            num_searched += 1
            sub = sampled[i:(i + L)]
            if sub in training:
                num_found += 1
        fractions[L] = (num_searched - num_found) / float(num_searched)
    return fractions


def random_text(rng, length, alphabet):
    return "".join(rng.choice(alphabet) for _ in range(length))


def corpus_and_sample(seed):
    """Small random texts whose sample mixes corpus pieces with novel characters."""
    rng = random.Random(seed)
    alphabet = ["ab", "abc\n", "aé日\r ", "xyz"][seed % 4]
    corpus = random_text(rng, rng.randint(1, 300), alphabet)
    if seed % 3 == 0:  # repeats: long shared prefixes in the suffix array
        corpus = (corpus[:rng.randint(1, 12)] * 40)[:300]
    pieces = []
    for _ in range(rng.randint(1, 6)):
        start = rng.randrange(len(corpus))
        pieces.append(corpus[start:start + rng.randint(0, 40)])
        pieces.append(random_text(rng, rng.randint(0, 3), alphabet + "#"))
    return corpus, "".join(pieces) or "#"


# --- the suffix array --------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(40))
def test_suffix_array_is_the_sorted_suffixes(seed):
    rng = random.Random(seed)
    ids = [rng.randint(1, [1, 2, 3, 70][seed % 4]) for _ in range(rng.randint(1, 400))]
    if seed % 2:
        ids = (ids[:rng.randint(1, 9)] * 100)[:len(ids)]
    expected = sorted(range(len(ids)), key=lambda i: ids[i:])
    for batch in (1, 3, 1 << 21):  # batch boundaries inside groups; groups larger than a batch
        assert suffix_array(np.array(ids, np.uint8), batch=batch).tolist() == expected


def test_suffix_array_literal():
    # "banana" -> a=1, b=2, n=3: suffixes a, ana, anana, banana, na, nana
    assert suffix_array(np.array([2, 1, 3, 1, 3, 1], np.uint8)).tolist() == [5, 3, 1, 0, 4, 2]


# --- matching statistics, n-gram overlap, longest copy -----------------------------------------------------


@pytest.mark.parametrize("seed", range(24))
def test_matching_statistics_and_overlap_match_naive(seed):
    corpus, sample = corpus_and_sample(seed)
    index = novelty.CorpusIndex.from_text(corpus)
    lengths, offsets = index.matching_statistics(sample)
    assert lengths.tolist() == naive_matching_statistics(corpus, sample)
    for i, length in enumerate(lengths):
        assert corpus[offsets[i]:offsets[i] + length] == sample[i:i + length]
    for n in range(1, min(len(sample), 12) + 1):
        count = novelty.ngram_overlap(index, sample, n)
        assert (count.in_corpus, count.total) == naive_overlap(corpus, sample, n)


def test_small_search_blocks_and_compare_budget_give_the_same_answers(monkeypatch):
    monkeypatch.setattr(novelty, "_QUERY_BLOCK", 5)  # several blocks of sample offsets
    monkeypatch.setattr(novelty, "_COMPARE_BUDGET", 7)  # comparisons a few characters at a time
    for seed in range(6):
        corpus, sample = corpus_and_sample(seed)
        lengths, _ = novelty.CorpusIndex.from_text(corpus).matching_statistics(sample)
        assert lengths.tolist() == naive_matching_statistics(corpus, sample)


@pytest.mark.parametrize("seed", range(3))
def test_novel_fractions_equal_torch_rnn_script(seed):
    rng = random.Random(100 + seed)
    corpus = random_text(rng, 3000, "abcd \n")
    sample = corpus[1000:1060] + random_text(rng, 40, "abcd \n") + corpus[40:100]
    lengths = range(1, 50)
    report = novelty.analyze(novelty.CorpusIndex.from_text(corpus), sample, lengths)
    assert {c.n: c.novel for c in report.ngrams} == torch_rnn_novel_fractions(sample, corpus, lengths)


def test_known_longest_copy_and_offsets():
    rng = random.Random(7)
    corpus = random_text(rng, 5000, "abcdefghijklmnopqrstuvwxyz")  # 25-letter pieces occur once
    sample = "#1#" + corpus[1234:1264] + "#2#" + corpus[4000:4025] + "#3#"
    passage = novelty.longest_copied(corpus, sample)
    assert passage == novelty.CopiedPassage(length=30, sample_offset=3, corpus_offset=1234, occurrences=1,
                                            text=corpus[1234:1264])
    report = novelty.analyze(novelty.CorpusIndex.from_text(corpus), sample, (5, 26, 30, 31))
    # 5-grams inside the two pieces: 26 + 21; 26-grams: 5 + 0; 30-grams: 1; 31-grams: none.
    assert [(c.n, c.total, c.in_corpus) for c in report.ngrams] == [(5, 60, 47), (26, 39, 5), (30, 35, 1),
                                                                     (31, 34, 0)]


def test_longest_copy_literal_with_repeats():
    index = novelty.CorpusIndex.from_text("the cat sat on the mat; the cat sat on the hat")
    assert novelty.longest_copied(index, "a cat sat on the hat!") == novelty.CopiedPassage(
        length=19, sample_offset=1, corpus_offset=27, occurrences=1, text=" cat sat on the hat")
    assert novelty.longest_copied(index, "my cat sat on the rug") == novelty.CopiedPassage(
        length=16, sample_offset=2, corpus_offset=3, occurrences=2, text=" cat sat on the ")  # the first of two
    assert index.occurrences("the ") == (4, 0)
    assert index.occurrences("at") == (6, 5)
    assert index.occurrences("dog") == (0, -1)
    assert novelty.longest_copied(index, "XYZ") == novelty.CopiedPassage(0, -1, -1, 0, "")


def test_unicode_and_bytes():
    corpus = "Ünïcödé ✓ 日本語 text\r\n" * 3
    index = novelty.CorpusIndex.from_text(corpus)
    passage = novelty.longest_copied(index, "→✓ 日本語 t←")
    assert (passage.length, passage.sample_offset, passage.corpus_offset, passage.text) == (7, 1, 8, "✓ 日本語 t")
    raw = corpus.encode("utf-8")
    byte_index = novelty.CorpusIndex.from_text(raw, encoding="bytes")
    passage = novelty.longest_copied(byte_index, "→✓ 日本語 t←".encode("utf-8"))
    assert (passage.length, passage.text) == (len("✓ 日本語 t".encode("utf-8")), "✓ 日本語 t".encode("utf-8"))
    assert passage.corpus_offset == raw.index("✓".encode("utf-8"))


def test_combine_sums_counts_and_keeps_the_longest():
    index = novelty.CorpusIndex.from_text("abcdefgh")
    first = novelty.analyze(index, "abcXY", (1, 2), name="one")
    second = novelty.analyze(index, "Zdefg", (1, 2), name="two")
    total = novelty.combine([first, second])
    assert [(c.n, c.total, c.in_corpus) for c in total.ngrams] == [(1, 10, 7), (2, 8, 5)]
    assert (total.longest.length, total.longest.sample, total.longest.text, total.samples) == (4, "two", "defg", 2)


def test_parse_ngrams():
    assert parse_ngrams("5,10,20,50") == (5, 10, 20, 50)
    assert parse_ngrams(" 3, 1-4 ,2") == (1, 2, 3, 4)
    assert parse_ngrams("1-49") == tuple(range(1, 50))
    for bad in ("", "5,", "x", "0", "-3", "10-5", "2.5", "1-x"):
        with pytest.raises(UserError, match="--ngrams"):
            parse_ngrams(bad)


def test_preview_escapes_and_shortens():
    assert novelty.preview('a\tb\n"c"\\ é', 80) == 'a\\tb\\n"c"\\\\ é'
    assert novelty.preview("x" * 30 + "\n" + "y" * 30, 20) == "x" * 7 + " ... " + "y" * 8
    assert novelty.preview(b"caf\xc3\xa9\n") == "caf\\xc3\\xa9\\n"


def test_sample_shorter_than_n_and_bad_text(tmp_path):
    index = novelty.CorpusIndex.from_text("abcdef")
    with pytest.raises(UserError, match="shorter than the n-gram length 5"):
        novelty.analyze(index, "abc", (2, 5), name="s")
    for data, message in ((b"caf\xe9", "not valid utf-8 text"), (b"ab\0cd", "binary"), (b"", "is empty")):
        (tmp_path / "s.txt").write_bytes(data)
        with pytest.raises(UserError, match=message):
            novelty.read_sample(str(tmp_path / "s.txt"), "utf-8")
    (tmp_path / "s.txt").write_bytes("caf\u00e9\r\n".encode("utf-8"))
    assert novelty.read_sample(str(tmp_path / "s.txt"), "utf-8").tolist() == [99, 97, 102, 233, 13, 10]
    assert novelty.read_sample(str(tmp_path / "s.txt"), "bytes").tolist() == [99, 97, 102, 195, 169, 13, 10]


def test_from_file_streams_like_preprocess(tmp_path):
    path = tmp_path / "c.txt"
    path.write_bytes("caf\u00e9 cr\u00e8me\r\n".encode("latin-1") * 3)
    index = novelty.CorpusIndex.from_file(str(path), "latin-1")
    assert (index.size, index.decode(0, 12)) == (36, "caf\u00e9 cr\u00e8me\r\n")
    with pytest.raises(UserError, match="not valid utf-8"):
        novelty.CorpusIndex.from_file(str(path), "utf-8")


# --- bin/novelty -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def texts(tmp_path_factory):
    root = tmp_path_factory.mktemp("novelty")
    rng = random.Random(3)
    corpus = random_text(rng, 4000, "abcdefghij \n")
    one = "§§" + corpus[100:160] + "§§" + corpus[2000:2020] + "§§"
    two = corpus[3000:3030] + "zzzzzzzzzz" + corpus[10:80]
    for name, text in (("corpus.txt", corpus), ("one.txt", one), ("two.txt", two)):
        (root / name).write_text(text, encoding="utf-8")
    return root, corpus, one, two


def test_cli_files_and_json(texts):
    root, corpus, one, two = texts
    done = run_cli("novelty", "--input_txt", root / "corpus.txt", "--ngrams", "5,20", "--json",
                   root / "one.txt", root / "two.txt")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["corpus"]["length"] == 4000 and result["ngrams"] == [5, 20]
    index = novelty.CorpusIndex.from_text(corpus)
    for got, text in zip(result["samples"], (one, two)):
        expected = novelty.analyze(index, text, (5, 20), name=got["name"])
        assert got == expected.to_dict()
    assert result["samples"][0]["longest_copy"] == {"length": 60, "sample_offset": 2, "corpus_offset": 100,
                                                    "occurrences": 1, "text": corpus[100:160]}
    total = result["total"]
    assert total["samples"] == 2 and total["length"] == len(one) + len(two)
    assert total["longest_copy"]["sample"].endswith("two.txt") and total["longest_copy"]["length"] == 70
    assert [g["in_corpus"] for g in total["ngrams"]] == [g1["in_corpus"] + g2["in_corpus"] for g1, g2 in
                                                         zip(result["samples"][0]["ngrams"],
                                                             result["samples"][1]["ngrams"])]

    done = run_cli("novelty", "--input_txt", root / "corpus.txt", "--ngrams", "5,20", root / "one.txt",
                   root / "two.txt")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith(f"corpus: {root / 'corpus.txt'}: 4,000 characters")
    assert "  longest copy: 60 characters at offset 2; corpus offset 100 (occurs once)" in lines
    assert any(line.startswith("total: 2 samples, ") for line in lines)
    assert f'    "{novelty.preview(corpus[100:160], 80)}"' in lines


def test_cli_reads_stdin(texts):
    root, corpus, one, _ = texts
    for extra in ((), ("-",)):
        done = run_cli("novelty", "--input_txt", root / "corpus.txt", "--ngrams", "1-3", "--json", *extra,
                       input=one)
        assert done.returncode == 0, done.stderr
        sample = json.loads(done.stdout)["samples"][0]
        assert sample["name"] == "<stdin>" and sample["length"] == len(one)
        assert sample["ngrams"][0] == {"n": 1, "total": len(one), "in_corpus": len(one) - 6,
                                       "share": (len(one) - 6) / len(one), "novel": 6 / len(one)}


@pytest.mark.parametrize("args, stdin, expected", [
    (["--input_txt", "{root}/missing.txt", "{root}/one.txt"], None, "missing.txt: no such file"),
    (["--input_txt", "{root}/empty.txt", "{root}/one.txt"], None, "empty.txt: is empty"),
    (["--input_txt", "{root}/binary.dat", "{root}/one.txt"], None, "binary"),
    (["--input_txt", "{root}/latin1.txt", "{root}/one.txt"], None, "not valid utf-8 text"),
    (["--input_txt", "{root}/corpus.txt", "{root}/missing.txt"], None, "missing.txt: no such file"),
    (["--input_txt", "{root}/corpus.txt", "{root}/empty.txt"], None, "empty.txt: is empty"),
    (["--input_txt", "{root}/corpus.txt", "{root}/binary.dat"], None, "binary"),
    (["--input_txt", "{root}/corpus.txt", "{root}/latin1.txt"], None, "not valid utf-8 text"),
    (["--input_txt", "{root}/corpus.txt", "{root}"], None, "is a directory"),
    (["--input_txt", "{root}/corpus.txt", "{root}/short.txt"], None, "shorter than the n-gram length 50"),
    (["--input_txt", "{root}/corpus.txt"], "", "<stdin>: is empty"),
    (["--input_txt", "{root}/corpus.txt", "-"], "ab\0cd", "<stdin>: looks like a binary file"),
    (["--input_txt", "{root}/corpus.txt", "-", "-"], "abc", "only once"),
    (["--input_txt", "{root}/corpus.txt", "--ngrams", "5,x", "{root}/one.txt"], None, "--ngrams"),
    (["--input_txt", "{root}/corpus.txt", "--ngrams", "0", "{root}/one.txt"], None, "--ngrams"),
    (["--input_txt", "{root}/corpus.txt", "--encoding", "nope", "{root}/one.txt"], None, "unknown --encoding"),
    (["--input_txt", "{root}/corpus.txt", "--preview_chars", "3", "{root}/one.txt"], None, "preview_chars"),
    (["--input_txt", "{root}/corpus.txt", "--bogus", "{root}/one.txt"], None, "bogus"),
    (["{root}/one.txt"], None, "--input_txt is required"),
])
def test_cli_bad_input(texts, args, stdin, expected):
    root = texts[0]
    (root / "empty.txt").write_bytes(b"")
    (root / "binary.dat").write_bytes(bytes(range(256)) * 4)
    (root / "latin1.txt").write_bytes("caf\u00e9 cr\u00e8me br\u00fbl\u00e9e ".encode("latin-1") * 5)
    (root / "short.txt").write_text("abc")
    done = run_cli("novelty", *[a.format(root=root) for a in args], input=stdin if stdin is not None else "")
    assert done.returncode != 0
    assert TRACEBACK not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert expected in done.stderr, done.stderr
    assert done.stdout == ""
