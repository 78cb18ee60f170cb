"""Spherical k-means over embeddings that may live in a memory map, and nearest-centroid
assignment in bounded chunks: the shared engine of semantic dedup and prototype scores.

The fit is Lloyd's algorithm written as map-reduce (`centroid_sums` per shard of the sample,
`merge_sums` on the driver), so the assignment step runs as tasks on any executor and the driver
only adds per-centroid sums and counts. The sums are fixed-point integers (`FIXED_POINT`):
integer addition is associative, so the centroids are the same bits however the sample is cut
into shards and in whatever order they are added; `lloyd` is the same algorithm in one process.

Both are written so that the result depends on the data and the seed only, never on how the
rows are cut into work units or how many threads run: the training sample is chosen by row
position and seed (`kmeans_sample`), and assignment re-scores FAISS's best candidates with a
per-row dot product (`assign`), because FAISS's BLAS inner products change in the last bit with
the batch they are computed in and with the thread count (measured: up to 1.3e-7 apart for
the same row in two batches)."""

from __future__ import annotations

import math

import faiss
import numpy as np

ASSIGN_CHUNK = 16_384
MAX_POINTS_PER_CENTROID = 64  # training sample cap: more points barely move centroids, and cost time and RAM
# Centroid count cap for the automatic choice (about sqrt(rows)): at 100M rows sqrt gives 10,000;
# with 64 points per centroid the sample is at most about 1M rows (1.5 GiB at d = 384 spread
# over the sample shards, never on the driver). FAISS's own default caps the sample at 256 points
# per centroid (`max_points_per_centroid`).
MAX_CLUSTERS = 16_384
# Unit vectors' components in [-1, 1] as integers of 2^-32: a centroid's sum of up to 2^31 rows
# fits int64, and the rounding (2e-10) is far below float32's resolution of a centroid.
FIXED_POINT = float(1 << 32)
# FAISS candidates re-scored per row: the exact nearest centroid is among FAISS's top 3 unless
# three centroids are within FAISS's error (about 1e-7 in cosine) of each other.
RESCORE_CANDIDATES = 3
RESCORE_ROWS = 1_024  # rows re-scored at a time: 1.5 MiB of gathered centroids at d = 384


def auto_clusters(n: int, most: int = MAX_CLUSTERS) -> int:
    """About sqrt(n) clusters, at most `most`: clusters stay big enough that near duplicates
    rarely land apart, and the assignment (n x k products) stays bounded per row."""
    return max(1, min(n, int(round(math.sqrt(n))), max(1, most)))


def cap_clusters(requested: int, n: int, min_points: int = 40) -> int:
    """No more clusters than the data can train (FAISS wants ~39 points per centroid)."""
    return max(1, min(requested, n // min_points if n >= min_points else 1))


def set_threads(workers: int) -> None:
    faiss.omp_set_num_threads(max(1, workers))


def kmeans_sample(n: int, k: int, seed: int = 0, fit_fraction: float = 1.0) -> np.ndarray:
    """Ascending row positions k-means trains on: at most `fit_fraction` of the n rows and
    `MAX_POINTS_PER_CENTROID * k` rows, drawn with `seed` (all rows when that is fewer)."""
    if n == 0:
        return np.empty(0, np.int64)
    k = max(1, min(k, n))
    size = min(n, max(k, int(math.ceil(n * fit_fraction))), MAX_POINTS_PER_CENTROID * k)
    if size >= n:
        return np.arange(n, dtype=np.int64)
    return np.sort(np.random.default_rng(seed).choice(n, size=size, replace=False)).astype(np.int64)


def spherical_kmeans(x: np.ndarray, k: int, seed: int = 0, fit_fraction: float = 1.0, niter: int = 20) -> np.ndarray:
    """(k, d) unit-norm centroids trained on the seeded sample of the rows of `x` (n, d) float32:
    `lloyd`, the one-process form of what the stages run as map-reduce over sample shards."""
    n, d = x.shape
    if n == 0:
        return np.zeros((0, d), dtype=np.float32)
    sample = kmeans_sample(n, k, seed, fit_fraction)
    return lloyd(np.ascontiguousarray(x[sample], dtype=np.float32), min(k, n), seed=seed, niter=niter)


def initial_picks(sample_size: int, k: int, seed: int) -> np.ndarray:
    """Ascending positions within the sample whose rows start the centroids (a seeded draw, as
    FAISS initialises)."""
    k = max(1, min(k, sample_size))
    return np.sort(np.random.default_rng([seed, 1]).choice(sample_size, size=k, replace=False)).astype(np.int64)


def centroid_sums(x: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One shard's share of a Lloyd step: the centroids its rows are nearest to (int64, ascending),
    the fixed-point sum of those rows per centroid (int64, (t, d)) and their count."""
    if not len(x):
        return np.empty(0, np.int64), np.zeros((0, centroids.shape[1]), np.int64), np.empty(0, np.int64)
    labels, _ = assign(x, centroids)
    order = np.argsort(labels, kind="stable")
    ids, starts, counts = np.unique(labels[order], return_index=True, return_counts=True)
    fixed = np.rint(np.asarray(x, dtype=np.float64)[order] * FIXED_POINT).astype(np.int64)
    return ids.astype(np.int64), np.add.reduceat(fixed, starts, axis=0), counts.astype(np.int64)


def merge_sums(previous: np.ndarray, shards: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> np.ndarray:
    """The next centroids from every shard's `centroid_sums`: the normalised mean of each
    centroid's rows; a centroid no row chose (or whose rows cancel out) stays where it was.
    Exact integer sums: the result does not depend on how the sample was sharded."""
    k, d = previous.shape
    total = np.zeros((k, d), np.int64)
    count = np.zeros(k, np.int64)
    for ids, sums, counts in shards:
        # a shard's ids are distinct (`centroid_sums`), so a plain indexed add is exact; np.add.at
        # took 1.0 s of the driver over 20 steps of 1,000 centroids x 384 (2-core AMD EPYC)
        total[ids] += sums
        count[ids] += counts
    means = total.astype(np.float64)
    norms = np.linalg.norm(means, axis=1)
    moved = (count > 0) & (norms > 0)
    out = np.array(previous, dtype=np.float32, copy=True)
    out[moved] = (means[moved] / norms[moved, None]).astype(np.float32)
    return out


def lloyd(train: np.ndarray, k: int, seed: int = 0, niter: int = 20, shard_rows: int = 1 << 16) -> np.ndarray:
    """(k, d) spherical k-means centroids of the unit rows `train` in one process: the same
    start (`initial_picks`), steps (`centroid_sums` + `merge_sums`) and stop (no centroid moved)
    as the stages' map-reduce fit, so both give the same bits."""
    n, d = train.shape
    if n == 0:
        return np.zeros((0, d), dtype=np.float32)
    centroids = np.ascontiguousarray(train[initial_picks(n, k, seed)], dtype=np.float32)
    for _ in range(niter):
        shards = [centroid_sums(train[s : s + shard_rows], centroids) for s in range(0, n, shard_rows)]
        moved = merge_sums(centroids, shards)
        if np.array_equal(moved, centroids):
            break
        centroids = moved
    return centroids


def assign(x: np.ndarray, centroids: np.ndarray, chunk: int = ASSIGN_CHUNK) -> tuple[np.ndarray, np.ndarray]:
    """Nearest centroid by cosine (rows and centroids unit-norm): (label int32, similarity float32).

    FAISS proposes the best few centroids; each is re-scored with a per-row dot product, which
    gives the same bits for a row whatever batch or thread count it is computed in; the best
    re-scored candidate wins, ties to the lower centroid."""
    n = x.shape[0]
    labels = np.empty(n, dtype=np.int32)
    similarity = np.empty(n, dtype=np.float32)
    if n == 0:
        return labels, similarity
    centroids = np.ascontiguousarray(centroids, dtype=np.float32)
    candidates = min(RESCORE_CANDIDATES, len(centroids))
    index = faiss.IndexFlatIP(centroids.shape[1])
    index.add(centroids)
    for start in range(0, n, chunk):
        block = np.ascontiguousarray(x[start : start + chunk], dtype=np.float32)
        _, ids = index.search(block, candidates)
        sims = _rescore(block, centroids, ids)
        best = sims.max(axis=1, keepdims=True)
        choice = np.where(sims == best, ids, np.iinfo(np.int64).max).min(axis=1)
        labels[start : start + len(block)] = choice
        similarity[start : start + len(block)] = best[:, 0]
    return labels, similarity


def _rescore(block: np.ndarray, centroids: np.ndarray, ids: np.ndarray, rows: int = RESCORE_ROWS) -> np.ndarray:
    """(n, candidates) row_dot of each row with each of its candidate centroids, a few rows at a
    time so the gathered centroid rows stay in cache (same bits: row_dot is per row). Measured on
    260k stored vectors x 3 candidates: 0.07 s instead of 0.13-0.15 s for whole 16,384-row blocks."""
    sims = np.empty(ids.shape, np.float32)
    for start in range(0, len(block), rows):
        part, part_ids = block[start : start + rows], ids[start : start + rows]
        for j in range(ids.shape[1]):
            sims[start : start + rows, j] = row_dot(part, centroids[part_ids[:, j]])
    return sims


def row_dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise dot products (float32); a row's result does not depend on the other rows."""
    return np.einsum("ij,ij->i", a, b)
