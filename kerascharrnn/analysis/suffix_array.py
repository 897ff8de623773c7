"""The suffix array of a text of small positive ids, by prefix doubling with numpy sorts (bin/novelty's index).

Measured by benchmarks/novelty_speed.py on a 2-core AMD EPYC: ~15 s and 1.8 GiB for 100 MB of text.
"""

from __future__ import annotations

from typing import Optional

import numpy as np


def suffix_array(codes: np.ndarray, size: Optional[int] = None, batch: int = 1 << 21) -> np.ndarray:
    """The suffix array of a text of small positive ids, by prefix doubling with numpy sorts.

    The first pass sorts all positions by their first q characters, packed into one int64 together
    with the position (q = as many as fit, e.g. 5 for a 65-character alphabet and 100M positions):
    np.sort on packed keys is several times faster than np.argsort. Each later pass doubles the
    sorted prefix length h, but only inside groups of suffixes that still tie (Larsson-Sadakane): a
    group is re-sorted by the rank of the suffix h further on, again as packed int64 keys, in batches
    of whole groups. Ranks are updated in place (a finer rank is still a correct sort key). Each pass
    costs about one sort of the suffixes still tied, so a corpus whose longest repeated passage is L
    long takes about log2(L / q) passes.

    Args:
      codes: 1-D unsigned ids, 1..sigma for the text and 0 after it (0 sorts before every id: a
        suffix sorts before its extensions). Missing zero padding is added (as a copy).
      size: the text length; default len(codes).
      batch: at most this many suffixes are handled at once, except that a tied group larger than
        this is sorted whole (as 8 bytes a suffix); bounds the temporary memory.

    Returns:
      The start positions of the suffixes in lexicographic order (int32 when they fit, else int64).
    """
    n = len(codes) if size is None else int(size)
    if n == 0:
        return np.zeros(0, np.int32)
    sigma = int(codes[:n].max())
    if sigma < 1 or int(codes[:n].min()) < 1:
        raise ValueError("suffix_array needs ids >= 1 for the text (0 is the end sentinel)")
    char_bits = sigma.bit_length()
    pos_bits = max(1, (n - 1).bit_length())
    q = max(1, (63 - pos_bits) // char_bits)  # int64 keys (numpy makes int64 ranges faster than uint64)
    if len(codes) < n + q or np.any(codes[n:n + q]):
        padded = np.zeros(n + q, dtype=codes.dtype)
        padded[:n] = codes[:n]
        codes = padded
    index_dtype = np.int32 if n < 2**31 - 1 else np.int64
    sa = np.empty(n, index_dtype)
    rank = np.empty(n + 1, index_dtype)  # 1 + the SA position where a suffix's group starts; rank[n] = 0
    rank[n] = 0

    key = np.empty(n, np.int64)  # first pass: (first q ids, position)
    for s in range(0, n, batch):
        e = min(n, s + batch)
        k = key[s:e]
        k[:] = codes[s:e]
        for t in range(1, q):
            k <<= char_bits
            k |= codes[s + t:e + t]
        k <<= pos_bits
        k |= np.arange(s, e)
    key.sort()
    active_starts, active_sizes = _split_sorted(key, pos_bits, sa, rank, 0, batch)
    del key

    rank_bits = n.bit_length()
    batch_limit = min(batch, 1 << ((63 - rank_bits) // 2))  # local group, rank, local position: one int64
    h = q
    while active_starts.size:
        ends = np.cumsum(active_sizes)
        next_starts, next_sizes = [], []
        b0 = 0
        while b0 < active_starts.size:
            b1 = max(b0 + 1, int(np.searchsorted(ends, ends[b0] - active_sizes[b0] + batch_limit, "right")))
            if b1 == b0 + 1 and active_sizes[b0] > batch_limit and rank_bits + pos_bits <= 63:
                s, z = _refine_large(sa, rank, h, rank_bits, pos_bits, int(active_starts[b0]),
                                     int(active_sizes[b0]), batch)
            else:
                s, z = _refine(sa, rank, h, rank_bits, active_starts[b0:b1], active_sizes[b0:b1])
            next_starts.append(s)
            next_sizes.append(z)
            b0 = b1
        active_starts, active_sizes = np.concatenate(next_starts), np.concatenate(next_sizes)
        h *= 2
    return sa


def _split_sorted(packed, pos_bits, sa, rank, base, batch):
    """Unpacks sorted (key, suffix) int64s into sa[base:...] and ranks them by equal keys, in batches.

    Returns the (starts, sizes) of the groups of equal keys that hold more than one suffix.
    """
    total = len(packed)
    starts, sizes = [], []
    pending = None  # (start, key) of the group that may continue into the next batch
    for s in range(0, total, batch):
        e = min(total, s + batch)
        suffixes = packed[s:e] & ((1 << pos_bits) - 1)
        sa[base + s:base + e] = suffixes
        key = packed[s:e] >> pos_bits
        new = np.empty(e - s, bool)
        new[0] = pending is None or key[0] != pending[1]
        np.not_equal(key[1:], key[:-1], out=new[1:])
        group_start = np.where(new, np.arange(base + s, base + e), -1)
        if not new[0]:
            group_start[0] = pending[0]
        np.maximum.accumulate(group_start, out=group_start)
        rank[suffixes] = group_start + 1
        bounds = np.flatnonzero(new) + (base + s)  # groups starting here; a pending one ends at the first
        if pending is not None:
            bounds = np.concatenate(([pending[0]], bounds))
        group_sizes = np.diff(bounds)
        keep = group_sizes > 1
        starts.append(bounds[:-1][keep])
        sizes.append(group_sizes[keep])
        pending = (int(bounds[-1]), key[-1])
    if base + total - pending[0] > 1:
        starts.append(np.array([pending[0]]))
        sizes.append(np.array([base + total - pending[0]]))
    return np.concatenate(starts).astype(np.int64), np.concatenate(sizes).astype(np.int64)


def _refine(sa, rank, h, rank_bits, starts, sizes):
    """Sorts each tied group [start, start+size) of `sa` by the rank h further on; updates sa and rank.

    Returns the (starts, sizes) of the groups that still tie.
    """
    total = int(sizes.sum())
    groups = len(starts)
    offsets = np.cumsum(sizes) - sizes
    j = np.repeat(starts - offsets, sizes) + np.arange(total)  # SA positions, ascending
    i = sa[j]
    pos_bits = max(1, (total - 1).bit_length())
    group_bits = (groups - 1).bit_length()
    assert group_bits + rank_bits + pos_bits <= 63
    packed = rank[i + h].astype(np.int64)
    packed <<= pos_bits
    packed |= np.arange(total)
    if groups > 1:
        packed |= np.repeat(np.arange(groups) << (rank_bits + pos_bits), sizes)
    packed.sort()
    i = i[packed & ((1 << pos_bits) - 1)]
    sa[j] = i
    packed >>= pos_bits
    new = np.empty(total, bool)
    new[0] = True
    np.not_equal(packed[1:], packed[:-1], out=new[1:])
    bounds = np.flatnonzero(new)
    group_start = np.where(new, j, 0)
    np.maximum.accumulate(group_start, out=group_start)
    rank[i] = group_start + 1
    new_sizes = np.diff(np.append(bounds, total))
    keep = new_sizes > 1
    return j[bounds[keep]], new_sizes[keep]


def _refine_large(sa, rank, h, rank_bits, pos_bits, start, size, batch):
    """_refine for one group too large for a batch: packs (rank h on, suffix) so that only the packed
    array is as large as the group (8 bytes a suffix); everything else goes `batch` at a time."""
    packed = np.empty(size, np.int64)
    for s in range(0, size, batch):
        e = min(size, s + batch)
        suffixes = sa[start + s:start + e]
        packed[s:e] = rank[suffixes + h]
        packed[s:e] <<= pos_bits
        packed[s:e] |= suffixes
    packed.sort()
    return _split_sorted(packed, pos_bits, sa, rank, start, batch)
