"""Hashed word n-gram bags, built column-wise (polars) with no per-row Python loops.

The output is the (indices, offsets) pair `torch.nn.EmbeddingBag` consumes: row i owns
indices[offsets[i]:offsets[i + 1]]."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import polars as pl
import pyarrow as pa

_MIX = np.uint64(0x9E3779B97F4A7C15)


@dataclass(frozen=True)
class Bags:
    indices: np.ndarray  # int64, concatenated bucket ids
    offsets: np.ndarray  # int64, len = rows + 1

    @property
    def rows(self) -> int:
        return len(self.offsets) - 1

    def take(self, rows: np.ndarray) -> Bags:
        """The bags of `rows`, in that order (rows may repeat)."""
        rows = np.asarray(rows, dtype=np.int64)
        starts, ends = self.offsets[rows], self.offsets[rows + 1]
        lengths = ends - starts
        offsets = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        if offsets[-1] == 0:
            return Bags(np.empty(0, np.int64), offsets)
        position = np.arange(offsets[-1], dtype=np.int64) - np.repeat(offsets[:-1], lengths)
        return Bags(self.indices[np.repeat(starts, lengths) + position], offsets)


def concat_bags(parts: Sequence[Bags]) -> Bags:
    """Rows of several `Bags` in order, as one (lets a streaming reader hash batch by batch)."""
    if not parts:
        return Bags(np.empty(0, np.int64), np.zeros(1, np.int64))
    shifts = np.cumsum([0] + [len(p.indices) for p in parts[:-1]])
    offsets = np.concatenate([parts[0].offsets[:1]] + [p.offsets[1:] + shift for p, shift in zip(parts, shifts)])
    return Bags(np.concatenate([p.indices for p in parts]), offsets.astype(np.int64))


def hashed_ngram_bags(
    texts: Sequence[str] | pa.Array | pl.Series, num_buckets: int = 1 << 18, ngrams: int = 2, seed: int = 0
) -> Bags:
    """Lowercased `\\w+` words and their n-grams up to `ngrams`, hashed into `num_buckets`.
    A text with no words gets one bucket reserved for "empty", so every bag is non-empty."""
    series = _as_series(texts)
    rows = len(series)
    words = (
        pl.DataFrame({"text": series})
        .with_row_index("row")
        .select("row", pl.col("text").fill_null("").str.to_lowercase().str.extract_all(r"\w+").alias("word"))
        .explode("word")
        .drop_nulls("word")
    )
    row = words.get_column("row").to_numpy().astype(np.int64)
    hashes = words.get_column("word").hash(seed=seed).to_numpy().astype(np.uint64)
    grams_rows = [row]
    grams_hashes = [hashes]
    combined = hashes
    for n in range(2, ngrams + 1):
        same_row = row[n - 1 :] == row[: len(row) - n + 1]
        with np.errstate(over="ignore"):
            combined = combined[:-1] * _MIX + hashes[n - 1 :] + np.uint64(n)
        grams_rows.append(row[n - 1 :][same_row])
        grams_hashes.append(combined[same_row])
    all_rows = np.concatenate(grams_rows)
    all_buckets = (np.concatenate(grams_hashes) % np.uint64(num_buckets - 1)).astype(np.int64) + 1
    counts = np.bincount(all_rows, minlength=rows)
    empty = np.nonzero(counts == 0)[0]
    if len(empty):
        all_rows = np.concatenate([all_rows, empty])
        all_buckets = np.concatenate([all_buckets, np.zeros(len(empty), np.int64)])
        counts[empty] = 1
    order = np.argsort(all_rows, kind="stable")
    offsets = np.zeros(rows + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    return Bags(all_buckets[order], offsets)


def _as_series(texts) -> pl.Series:
    if isinstance(texts, pl.Series):
        return texts
    if isinstance(texts, (pa.Array, pa.ChunkedArray)):
        series = pl.from_arrow(texts)
        return series if isinstance(series, pl.Series) else series.to_series()
    return pl.Series("text", list(texts), dtype=pl.String)
