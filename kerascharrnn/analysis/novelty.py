"""How much of a sample is copied from the training corpus (torch-rnn's scripts/novel_substrings.py, fast).

torch-rnn's script checks every substring of the sample with Python's `in` against the whole corpus:
O(sample x corpus) per length. Here the corpus is indexed once by a suffix array (built with numpy:
prefix doubling over packed 64-bit sort keys), and every sample is then answered by one vectorised
binary search per sample position, which yields the *matching statistics*: for each sample offset i,
the length of the longest prefix of sample[i:] that occurs anywhere in the corpus. Both reports follow:

- the share of the sample's n-grams found in the corpus, for any n: n-gram i is in the corpus exactly
  when the match at i is at least n long (torch-rnn prints 1 - share, its "novel fraction");
- the longest passage copied verbatim: the largest match, located in the corpus by one more search.

Text is compared as Unicode code points (or raw bytes with encoding "bytes", as bin/preprocess
reads it; '\\r' is kept). Numpy only: never imports TensorFlow.

Cost, measured by benchmarks/novelty_speed.py on a 2-core AMD EPYC (100 MB of tiny-shakespeare with
its lines shuffled per copy): indexing ~15 s at 1.8 GiB peak RSS (about 18 bytes a corpus character:
8 for the first sort's keys, 4 + 4 for the suffix array and ranks, 1-4 for the text); a 10,000-
character sample then takes 0.05-0.3 s. Long verbatim repeats cost one more sorting pass per doubling
of the longest repeat (tiny-shakespeare 18 times verbatim, 20 MB: ~16 s).
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np

from kerascharrnn.analysis.suffix_array import suffix_array
from kerascharrnn.data import text
from kerascharrnn.errors import UserError
from kerascharrnn.io import files
from kerascharrnn.vocab import BYTES

DEFAULT_NGRAMS = (5, 10, 20, 50)
STDIN = "-"
_PAD = 64  # zero ids after the corpus: the end-of-text sentinel, and room for the first packed sort key
_COMPARE_BUDGET = 1 << 22  # characters gathered at once while comparing samples with corpus suffixes
_QUERY_BLOCK = 1 << 17  # sample offsets searched at once (16 characters each at first: 2M gathered)
_MAX_CODE_POINT = 0x110000

Units = Union[str, bytes, np.ndarray]  # text, raw bytes, or an array of code points / byte values


# --- reading samples ---------------------------------------------------------------------------------


def as_units(sample: Units) -> np.ndarray:
    """A sample as a 1-D array of units: str -> code points, bytes -> byte values, arrays unchanged.

    Args:
      sample: text, raw bytes, or an array of code points / byte values.

    Returns:
      A 1-D integer array.
    """
    if isinstance(sample, str):
        return text.code_points(sample)
    if isinstance(sample, (bytes, bytearray)):
        return np.frombuffer(bytes(sample), dtype=np.uint8)
    units = np.asarray(sample)
    if units.ndim != 1 or not (np.issubdtype(units.dtype, np.integer) or units.size == 0):
        raise ValueError("a sample must be text, bytes or a 1-D integer array")
    return units


def read_sample(path: str, encoding: str = "utf-8") -> np.ndarray:
    """A sample file ("-" = standard input) as units, read as bin/preprocess reads a corpus (data/text.py).

    Args:
      path: a file path, or "-" for standard input.
      encoding: a Python codec name, or "bytes".

    Returns:
      The sample's units.

    Raises:
      UserError: for a missing, empty, binary or undecodable sample.
    """
    if path == STDIN:
        name, chunks = "<stdin>", list(text.iter_stream_units(sys.stdin.buffer, "<stdin>", encoding))
    else:
        files.require_file(path, "sample file")
        name, chunks = path, list(text.iter_units(path, encoding))
    units = np.concatenate(chunks) if chunks else np.zeros(0, np.uint8)
    if not units.size:
        raise UserError(f"{name}: is empty")
    return units


# --- the corpus index ----------------------------------------------------------------------------------


class CorpusIndex:
    """A corpus and its suffix array: built once, then queried for any number of samples.

    Attributes:
      size: corpus length in units (characters, or bytes with encoding "bytes").
      encoding: the encoding the corpus was read with, or "bytes".
      alphabet: the distinct units of the corpus, ascending (code points or byte values).
      codes: the corpus as ids 1..len(alphabet) (in alphabet order), then zeros (the end sentinel).
      sa: the suffix array (corpus offsets in lexicographic order of their suffixes).
    """

    def __init__(self, chunks: Iterable[np.ndarray], encoding: str = "utf-8"):
        """Indexes the concatenation of `chunks` (arrays of code points or byte values).

        Args:
          chunks: the corpus, in pieces (e.g. data.text.iter_units), each a 1-D integer array.
          encoding: what the units are: "bytes" for byte values, else code points of text.
        """
        self.encoding = encoding
        pieces = []
        seen = np.zeros(256 if encoding == BYTES else _MAX_CODE_POINT, bool)
        for chunk in chunks:
            chunk = as_units(chunk)
            if chunk.size:
                seen[chunk] = True
                pieces.append(chunk)
        self.size = int(sum(p.size for p in pieces))
        if self.size == 0:
            raise UserError("the corpus is empty")
        self.alphabet = np.flatnonzero(seen).astype(np.uint32)
        sigma = len(self.alphabet)
        dtype = np.uint8 if sigma + 2 <= 0xFF else np.uint16 if sigma + 2 <= 0xFFFF else np.uint32
        self._table = np.zeros(seen.size, dtype)  # unit -> id; sigma + 1 marks a unit the corpus lacks
        self._table[:] = sigma + 1
        self._table[self.alphabet] = np.arange(1, sigma + 1)
        self.codes = np.zeros(self.size + _PAD, dtype)
        at = 0
        pieces.reverse()
        while pieces:  # each piece is released once copied
            piece = pieces.pop()
            self.codes[at:at + piece.size] = self._table[piece]
            at += piece.size
        self.sa = suffix_array(self.codes, self.size)

    @classmethod
    def from_text(cls, text: Units, encoding: str = "utf-8") -> "CorpusIndex":
        """Indexes an in-memory corpus.

        Args:
          text: a string (code points), bytes (byte values, with encoding "bytes") or a unit array.
          encoding: "bytes" when the units are byte values.

        Returns:
          The index.
        """
        return cls([as_units(text)], encoding)

    @classmethod
    def from_file(cls, path: str, encoding: str = "utf-8") -> "CorpusIndex":
        """Reads and indexes a corpus file, streaming it as bin/preprocess does.

        Args:
          path: the corpus (a text file).
          encoding: a Python codec name, or "bytes".

        Returns:
          The index.

        Raises:
          UserError: for a missing, empty, binary or undecodable corpus, or an unknown encoding.
        """
        encoding = text.check_encoding(encoding)
        files.require_file(path, "text file")
        return cls(text.iter_units(path, encoding), encoding)

    @property
    def unit_name(self) -> str:
        """"bytes" or "characters": what a unit of this corpus is."""
        return "bytes" if self.encoding == BYTES else "characters"

    def encode(self, sample: Units) -> np.ndarray:
        """A sample as corpus ids followed by the 0 sentinel (units the corpus lacks get an id no
        corpus unit has)."""
        units = as_units(sample)
        query = np.zeros(units.size + 1, self.codes.dtype)
        if units.size:
            if int(units.max()) >= self._table.size:
                raise ValueError(f"unit {int(units.max())} is out of range")
            query[:-1] = self._table[units]
        return query

    def decode(self, offset: int, length: int) -> Union[str, bytes]:
        """The corpus text at [offset, offset + length): a str, or bytes for a "bytes" corpus."""
        units = self.alphabet[self.codes[offset:offset + length].astype(np.intp) - 1]
        if self.encoding == BYTES:
            return units.astype(np.uint8).tobytes()
        return units.astype("<u4").tobytes().decode("utf-32-le")

    def matching_statistics(self, sample: Units) -> Tuple[np.ndarray, np.ndarray]:
        """For each sample offset i, the longest prefix of sample[i:] found in the corpus, and where.

        A vectorised binary search of every suffix of the sample in the suffix array at once: the
        corpus suffix sharing the longest prefix with a query is next to the query's insertion point.
        Comparisons resume after the prefix already known to match both ends of the search range.

        Args:
          sample: text, bytes or a unit array.

        Returns:
          (lengths, offsets): int64 arrays as long as the sample; lengths[i] is the longest match at
          sample offset i (0 if the corpus lacks sample[i]); offsets[i] is a corpus offset where that
          match occurs (undefined where lengths[i] == 0).
        """
        query = self.encode(sample)
        m = query.size - 1
        lo = np.full(m, -1, np.int64)  # invariant: suffix sa[lo] < query <= suffix sa[hi]
        hi = np.full(m, self.size, np.int64)
        lcp_lo = np.zeros(m, np.int64)
        lcp_hi = np.zeros(m, np.int64)
        for block in range(0, m, _QUERY_BLOCK):  # bounds the memory for a long sample
            todo = np.arange(block, min(m, block + _QUERY_BLOCK))
            while todo.size:
                mid = (lo[todo] + hi[todo]) // 2
                lcp, greater = self._compare(self.sa[mid], todo, np.minimum(lcp_lo[todo], lcp_hi[todo]), query)
                up, down = todo[greater], todo[~greater]
                lo[up], lcp_lo[up] = mid[greater], lcp[greater]
                hi[down], lcp_hi[down] = mid[~greater], lcp[~greater]
                todo = todo[hi[todo] - lo[todo] > 1]
        lengths = np.maximum(lcp_lo, lcp_hi)
        best = np.where(lcp_lo >= lcp_hi, lo, hi).clip(0, self.size - 1)
        return lengths, self.sa[best].astype(np.int64)

    def _compare(self, text_pos, query_pos, start, query):
        """Compares corpus suffixes text_pos with query suffixes query_pos, both known equal for `start`
        units. Returns (lcp, query > text)."""
        n_pairs = len(text_pos)
        lcp = start.astype(np.int64, copy=True)
        greater = np.zeros(n_pairs, bool)
        todo = np.arange(n_pairs)
        text_end, query_end = self.size, query.size - 1
        width = 16
        while todo.size:
            steps = np.arange(width)
            k = lcp[todo]
            a = self.codes[np.minimum((text_pos[todo] + k)[:, None] + steps, text_end)]
            b = query[np.minimum((query_pos[todo] + k)[:, None] + steps, query_end)]
            stop = (a != b) | (a == 0)
            found = stop.any(axis=1)
            first = stop.argmax(axis=1)
            rows = np.flatnonzero(found)
            done = todo[rows]
            lcp[done] = k[rows] + first[rows]
            greater[done] = b[rows, first[rows]] > a[rows, first[rows]]
            todo = todo[~found]
            lcp[todo] += width
            width = int(max(16, min(2 * width, _COMPARE_BUDGET // max(1, todo.size), 1 << 16)))
        return lcp, greater

    def occurrences(self, pattern: Units) -> Tuple[int, int]:
        """How often `pattern` occurs in the corpus, and its first (leftmost) offset.

        Args:
          pattern: text, bytes or a unit array (non-empty).

        Returns:
          (count, first_offset); first_offset is -1 when count is 0.
        """
        query = self.encode(pattern)
        m = query.size - 1
        if m == 0:
            raise ValueError("an empty pattern occurs everywhere")
        upper = query.copy()
        upper[-1] = np.iinfo(query.dtype).max  # pattern followed by a unit above every id: after all matches
        bounds = []
        for q in (query, upper):
            lo, hi, lcp_lo, lcp_hi = -1, self.size, 0, 0
            while hi - lo > 1:
                mid = (lo + hi) // 2
                lcp, greater = self._compare(self.sa[mid:mid + 1], np.zeros(1, np.int64),
                                             np.array([min(lcp_lo, lcp_hi, m)]), q)
                if greater[0]:
                    lo, lcp_lo = mid, int(lcp[0])
                else:
                    hi, lcp_hi = mid, int(lcp[0])
            bounds.append(hi)
        first, last = bounds
        if last <= first:
            return 0, -1
        return last - first, int(self.sa[first:last].min())


# --- reports -------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class NgramCount:
    """How many of a sample's n-grams (one per start offset) occur in the corpus.

    Attributes:
      n: the n-gram length in units.
      total: the sample's n-grams: len(sample) - n + 1, repeats counted (as torch-rnn counts).
      in_corpus: how many of them occur somewhere in the corpus.
    """

    n: int
    total: int
    in_corpus: int

    @property
    def share(self) -> float:
        """in_corpus / total (0.0 for no n-grams)."""
        return self.in_corpus / self.total if self.total else 0.0

    @property
    def novel(self) -> float:
        """1 - share: torch-rnn's "novel fraction"."""
        return (self.total - self.in_corpus) / self.total if self.total else 0.0


@dataclasses.dataclass(frozen=True)
class CopiedPassage:
    """The longest passage of a sample that occurs verbatim in the corpus.

    Attributes:
      length: its length in units (0 if not even one unit of the sample occurs in the corpus).
      sample_offset: where it starts in the sample (the first such place), or -1.
      corpus_offset: where it first occurs in the corpus, or -1.
      occurrences: how many times it occurs in the corpus.
      text: the passage (str; bytes for a "bytes" corpus).
      sample: which sample it is from (set in totals over several samples).
    """

    length: int
    sample_offset: int
    corpus_offset: int
    occurrences: int
    text: Union[str, bytes]
    sample: Optional[str] = None


@dataclasses.dataclass(frozen=True)
class SampleReport:
    """Everything bin/novelty reports for one sample (or for the total over several).

    Attributes:
      name: the sample's path, "<stdin>", or "total".
      length: the sample length in units.
      ngrams: one NgramCount per requested length.
      longest: the longest copied passage.
      samples: how many samples this report covers.
    """

    name: str
    length: int
    ngrams: Tuple[NgramCount, ...]
    longest: CopiedPassage
    samples: int = 1

    def to_dict(self, unit: str = "characters") -> dict:
        """A JSON-ready dict (bytes passages as text with undecodable bytes written \\xNN)."""
        longest = dataclasses.asdict(self.longest)
        if isinstance(self.longest.text, bytes):
            longest["text"] = self.longest.text.decode("utf-8", "backslashreplace")
        if longest["sample"] is None:
            del longest["sample"]
        return {"name": self.name, "samples": self.samples, "length": self.length, "unit": unit,
                "ngrams": [{"n": c.n, "total": c.total, "in_corpus": c.in_corpus, "share": c.share,
                            "novel": c.novel} for c in self.ngrams],
                "longest_copy": longest}


def _index(corpus: Union[CorpusIndex, Units]) -> CorpusIndex:
    return corpus if isinstance(corpus, CorpusIndex) else CorpusIndex.from_text(corpus)


def ngram_overlap(corpus: Union[CorpusIndex, Units], sample: Units, n: int) -> NgramCount:
    """How many of the sample's n-grams occur anywhere in the corpus.

    Args:
      corpus: a CorpusIndex (build it once and reuse it), or the corpus itself (indexed here).
      sample: text, bytes or a unit array, at least n units long.
      n: the n-gram length (>= 1).

    Returns:
      The NgramCount (share = in_corpus / total; novel = torch-rnn's novel fraction).

    Raises:
      UserError: when the sample is shorter than n.
    """
    return ngram_counts(_index(corpus).matching_statistics(sample)[0], (n,))[0]


def ngram_counts(lengths: np.ndarray, ngrams: Sequence[int]) -> Tuple[NgramCount, ...]:
    """NgramCounts from matching statistics: the n-gram at offset i is in the corpus iff lengths[i] >= n.

    Args:
      lengths: matching statistics (CorpusIndex.matching_statistics()[0]).
      ngrams: n-gram lengths.

    Returns:
      One NgramCount per length.

    Raises:
      UserError: when the sample is shorter than the largest n.
    """
    m = lengths.size
    if ngrams and m < max(ngrams):
        raise UserError(f"the sample has {m} units, fewer than the n-gram length {max(ngrams)}")
    found = np.bincount(np.minimum(lengths, max(ngrams, default=0)), minlength=max(ngrams, default=0) + 1)
    at_least = np.cumsum(found[::-1])[::-1]  # at_least[n] = count of lengths >= n
    return tuple(NgramCount(n, m - n + 1, int(at_least[n])) for n in ngrams)


def longest_copied(corpus: Union[CorpusIndex, Units], sample: Units, stats=None) -> CopiedPassage:
    """The longest passage of the sample found verbatim in the corpus (the first one, if tied).

    Args:
      corpus: a CorpusIndex, or the corpus itself (indexed here).
      sample: text, bytes or a unit array.
      stats: its matching statistics, if already computed.

    Returns:
      The CopiedPassage, with its leftmost corpus offset and its number of occurrences.
    """
    index = _index(corpus)
    units = as_units(sample)
    lengths = index.matching_statistics(units)[0] if stats is None else stats[0]
    if lengths.size == 0 or lengths.max() == 0:
        return CopiedPassage(0, -1, -1, 0, b"" if index.encoding == BYTES else "")
    at = int(lengths.argmax())
    length = int(lengths[at])
    count, first = index.occurrences(units[at:at + length])
    return CopiedPassage(length, at, first, count, index.decode(first, length))


def require_length(units: np.ndarray, ngrams: Sequence[int], name: str, unit: str = "characters") -> None:
    """Checks that a sample is non-empty and has at least one n-gram of every requested length.

    Args:
      units: the sample's units.
      ngrams: n-gram lengths.
      name: the sample's name, for the message.
      unit: "characters" or "bytes", for the message.

    Raises:
      UserError: when the sample is empty or shorter than the largest length.
    """
    longest = max(ngrams, default=1)
    if units.size < longest:
        raise UserError(f"{name}: {units.size:,} {unit}, shorter than the n-gram length {longest};"
                        " give a longer sample or smaller --ngrams")


def analyze(index: CorpusIndex, sample: Units, ngrams: Sequence[int] = DEFAULT_NGRAMS,
            name: str = "sample") -> SampleReport:
    """Both reports for one sample.

    Args:
      index: the corpus index.
      sample: text, bytes or a unit array.
      ngrams: n-gram lengths.
      name: what to call the sample.

    Returns:
      The SampleReport.

    Raises:
      UserError: when the sample is shorter than the largest n-gram length.
    """
    units = as_units(sample)
    require_length(units, ngrams, name, index.unit_name)
    stats = index.matching_statistics(units)
    return SampleReport(name, int(units.size), ngram_counts(stats[0], ngrams), longest_copied(index, units, stats))


def combine(reports: Sequence[SampleReport], name: str = "total") -> SampleReport:
    """The total over several samples: n-gram counts summed, the longest copy over all of them.

    Args:
      reports: per-sample reports with the same n-gram lengths.
      name: the total's name.

    Returns:
      A SampleReport whose longest copy names its sample.
    """
    ngrams = tuple(NgramCount(counts[0].n, sum(c.total for c in counts), sum(c.in_corpus for c in counts))
                   for counts in zip(*(r.ngrams for r in reports)))
    best = max(reports, key=lambda r: r.longest.length)  # first sample wins a tie
    longest = dataclasses.replace(best.longest, sample=best.name)
    return SampleReport(name, sum(r.length for r in reports), ngrams, longest, samples=len(reports))


def preview(text: Union[str, bytes], width: int = 80) -> str:
    """`text` on one line: escaped like a Python literal, its middle cut to keep about `width` units.

    Args:
      text: a passage (bytes are shown with \\xNN escapes above ASCII).
      width: how many units of the passage to keep at most (>= 10).

    Returns:
      The escaped, shortened passage, with " ... " where the middle was cut.
    """
    def escape(part):
        if isinstance(part, bytes):
            return repr(part)[2:-1]
        return "".join(c if c.isprintable() and c != "\\" else repr(c)[1:-1] for c in part)

    width = max(10, width)
    if len(text) <= width:
        return escape(text)
    head = (width - 5) // 2
    tail = width - 5 - head
    return escape(text[:head]) + " ... " + escape(text[len(text) - tail:])


def format_report(report: SampleReport, unit: str = "characters", width: int = 80) -> List[str]:
    """The human-readable lines for one report: a table of n-gram shares, then the longest copy.

    Args:
      report: a sample's (or the total's) report.
      unit: "characters" or "bytes".
      width: how much of the longest copy to show (see preview).

    Returns:
      The lines, without newlines.
    """
    what = f"{report.samples} samples, " if report.samples > 1 else ""
    lines = [f"{report.name}: {what}{report.length:,} {unit}",
             f"  {'n':>6} {'n-grams':>12} {'in corpus':>12} {'share':>8} {'novel':>8}"]
    for c in report.ngrams:
        lines.append(f"  {c.n:>6} {c.total:>12,} {c.in_corpus:>12,} {c.share:>8.4f} {c.novel:>8.4f}")
    p = report.longest
    if p.length == 0:
        lines.append(f"  longest copy: none (no {unit[:-1]} of the sample occurs in the corpus)")
        return lines
    where = f" of {p.sample}" if p.sample is not None and report.samples > 1 else ""
    times = "once" if p.occurrences == 1 else f"{p.occurrences:,} times"
    lines.append(f"  longest copy: {p.length:,} {unit} at offset {p.sample_offset:,}{where};"
                 f" corpus offset {p.corpus_offset:,} (occurs {times})")
    lines.append(f'    "{preview(p.text, width)}"')
    return lines


def describe_corpus(path: str, index: CorpusIndex) -> dict:
    """The corpus facts reported with the results.

    Args:
      path: the corpus file.
      index: its index.

    Returns:
      A JSON-ready dict: path, length, unit, encoding and the number of distinct units.
    """
    return {"path": path, "length": index.size, "unit": index.unit_name, "encoding": index.encoding,
            "distinct": int(len(index.alphabet))}
