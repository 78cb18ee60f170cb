"""Exact-duplicate keys: 128-bit text hashes and a compact first-seen index over them."""

from __future__ import annotations

import numpy as np
import polars as pl
import pyarrow as pa

_SEED_HIGH = 0x243F6A88
_SEED_LOW = 0x85A308D3


def normalize_texts(texts: pa.Array) -> pa.Array:
    """NFKC, lowercase, whitespace runs collapsed to one space, trimmed."""
    series = pl.from_arrow(texts)
    if isinstance(series, pl.DataFrame):
        series = series.to_series()
    normalized = series.str.normalize("NFKC").str.to_lowercase().str.replace_all(r"\s+", " ").str.strip_chars()
    return normalized.to_arrow()


def hash128(texts: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A 128-bit key per text as an (n, 2) uint64 array: two independently seeded 64-bit
    hashes of the UTF-8 bytes, computed column-wise in Rust by polars (a per-row Python
    xxhash loop was 50x slower). Keys live only within one run, so polars' version-specific
    hash function is fine; nulls hash like the empty string (callers route nulls first)."""
    series = pl.from_arrow(texts)
    if isinstance(series, pl.DataFrame):
        series = series.to_series()
    series = series.cast(pl.String).fill_null("")
    out = np.empty((len(series), 2), dtype=np.uint64)
    out[:, 0] = series.hash(seed=_SEED_HIGH).to_numpy()
    out[:, 1] = series.hash(seed=_SEED_LOW).to_numpy()
    return out


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
        order = np.lexsort((lo, hi))  # stable: equal keys stay in (increasing) ordinal order
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
            order = np.argsort(hi, kind="stable")  # two sorted runs: a linear timsort merge
            self._runs.append((hi[order], lo[order], ords[order]))


def _lookup(
    run_hi: np.ndarray, run_lo: np.ndarray, q_hi: np.ndarray, q_lo: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Exact 128-bit membership in a run sorted by hi (lo is unordered among equal hi)."""
    left = np.searchsorted(run_hi, q_hi, side="left")
    right = np.searchsorted(run_hi, q_hi, side="right")
    found = np.zeros(len(q_hi), dtype=bool)
    where = np.zeros(len(q_hi), dtype=np.int64)
    single = (right - left) == 1
    idx = left[single]
    found[single] = run_lo[idx] == q_lo[single]
    where[single] = idx
    for i in np.nonzero((right - left) > 1)[0]:  # shared high word: astronomically rare
        match = np.nonzero(run_lo[left[i] : right[i]] == q_lo[i])[0]
        if len(match):
            found[i] = True
            where[i] = left[i] + match[0]
    return found, where
