"""Exact-duplicate keys: 128-bit text hashes and a compact first-seen index over them."""

from __future__ import annotations

import numpy as np
import polars as pl
import pyarrow as pa
import xxhash


def normalize_texts(texts: pa.Array) -> pa.Array:
    """NFKC, lowercase, whitespace runs collapsed to one space, trimmed."""
    series = pl.from_arrow(texts)
    if isinstance(series, pl.DataFrame):
        series = series.to_series()
    normalized = series.str.normalize("NFKC").str.to_lowercase().str.replace_all(r"\s+", " ").str.strip_chars()
    return normalized.to_arrow()


def hash128(texts: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """xxh3-128 of each text's UTF-8 bytes as an (n, 2) uint64 array (high, low).
    Nulls hash like the empty string; callers reject or route nulls before this."""
    if isinstance(texts, pa.ChunkedArray):
        texts = texts.combine_chunks()
    if texts.null_count:
        texts = texts.fill_null("")
    if not (pa.types.is_string(texts.type) or pa.types.is_large_string(texts.type)):
        texts = texts.cast(pa.large_string())
    # Reading the bytes as binary skips a str decode and re-encode per row; the canonical
    # 16-byte digest is the big-endian (high, low) pair, so one frombuffer splits them all.
    binary = texts.cast(pa.large_binary() if pa.types.is_large_string(texts.type) else pa.binary())
    raw = b"".join(map(xxhash.xxh3_128_digest, binary.to_pylist()))
    return np.frombuffer(raw, dtype=">u8").reshape(-1, 2).astype(np.uint64)


class FirstSeenIndex:
    """Maps 128-bit keys to the ordinal where each was first seen, in 24 bytes per distinct key.

    Sorted runs merged log-structured style: an insert costs O(batch log n) amortized and a
    lookup is a binary search per run, so memory follows distinct keys, not rows or text size."""

    def __init__(self) -> None:
        self._runs: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    def __len__(self) -> int:
        return sum(len(run[0]) for run in self._runs)

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes + b.nbytes + c.nbytes for a, b, c in self._runs)

    def add(self, keys: np.ndarray, ordinals: np.ndarray) -> np.ndarray:
        """Insert a batch (ordinals increasing across calls); return, per row, the ordinal of the
        earliest row with the same key (the row's own ordinal when it is the first)."""
        n = len(keys)
        if n == 0:
            return np.empty(0, dtype=np.int64)
        hi = keys[:, 0]
        lo = keys[:, 1]
        if n > 1 and (np.diff(ordinals) < 0).any():
            order = np.lexsort((ordinals, lo, hi))
        else:  # the usual case: a batch in input order, so a stable sort keeps ordinals ascending
            order = _sort_by_key(hi, lo)
        hi_sorted, lo_sorted, ord_sorted = hi[order], lo[order], ordinals[order]
        new_group = np.ones(n, dtype=bool)
        new_group[1:] = (hi_sorted[1:] != hi_sorted[:-1]) | (lo_sorted[1:] != lo_sorted[:-1])
        group_id = np.cumsum(new_group) - 1
        first_in_batch = ord_sorted[new_group]
        uniq_hi, uniq_lo = hi_sorted[new_group], lo_sorted[new_group]
        earliest = first_in_batch.copy()
        unseen = np.ones(len(uniq_hi), dtype=bool)
        for run_hi, run_lo, run_ord in self._runs:
            found, where = _lookup(run_hi, run_lo, uniq_hi, uniq_lo)
            hit = found & unseen
            earliest[hit] = run_ord[where[hit]]
            unseen &= ~found
        result_sorted = earliest[group_id]
        result = np.empty(n, dtype=np.int64)
        result[order] = result_sorted
        if unseen.any():
            self._push(uniq_hi[unseen], uniq_lo[unseen], first_in_batch[unseen])
        return result

    def _push(self, hi: np.ndarray, lo: np.ndarray, ordinals: np.ndarray) -> None:
        self._runs.append((hi, lo, ordinals.astype(np.int64)))
        while len(self._runs) > 1 and len(self._runs[-1][0]) * 2 >= len(self._runs[-2][0]):
            b = self._runs.pop()
            a = self._runs.pop()
            hi = np.concatenate([a[0], b[0]])
            lo = np.concatenate([a[1], b[1]])
            ords = np.concatenate([a[2], b[2]])
            order = _sort_by_key(hi, lo)
            self._runs.append((hi[order], lo[order], ords[order]))


def _sort_by_key(hi: np.ndarray, lo: np.ndarray) -> np.ndarray:
    """Stable order by (hi, lo). A stable sort on the high word alone is enough unless two
    different keys share it (astronomically rare), and on two concatenated sorted runs it is
    a linear merge, where a lexsort on both words would re-sort everything."""
    order = np.argsort(hi, kind="stable")
    hi_sorted = hi[order]
    same_hi = hi_sorted[1:] == hi_sorted[:-1]
    if same_hi.any() and (lo[order][1:][same_hi] != lo[order][:-1][same_hi]).any():
        return np.lexsort((lo, hi))
    return order


def _lookup(run_hi: np.ndarray, run_lo: np.ndarray, q_hi: np.ndarray, q_lo: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact 128-bit membership in a run sorted by (hi, lo)."""
    left = np.searchsorted(run_hi, q_hi, side="left")
    right = np.searchsorted(run_hi, q_hi, side="right")
    found = np.zeros(len(q_hi), dtype=bool)
    where = np.zeros(len(q_hi), dtype=np.int64)
    single = (right - left) == 1
    idx = left[single]
    found[single] = run_lo[idx] == q_lo[single]
    where[single] = idx
    for i in np.nonzero((right - left) > 1)[0]:  # shared high word: astronomically rare
        span = slice(left[i], right[i])
        pos = np.searchsorted(run_lo[span], q_lo[i])
        if pos < right[i] - left[i] and run_lo[span][pos] == q_lo[i]:
            found[i] = True
            where[i] = left[i] + pos
    return found, where
