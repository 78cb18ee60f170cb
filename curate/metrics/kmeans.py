"""Spherical k-means (FAISS) over embeddings that may live in a memory map, and nearest-centroid
assignment in bounded chunks: the shared engine of semantic dedup and prototype scores."""

from __future__ import annotations

import math

import faiss
import numpy as np

ASSIGN_CHUNK = 65_536
MAX_POINTS_PER_CENTROID = 64  # training sample cap: more points barely move centroids, and cost time and RAM


def auto_clusters(n: int) -> int:
    """About sqrt(n) clusters: per-cluster search cost n^2/k stays near n^1.5 and clusters stay
    big enough that near duplicates rarely land apart."""
    return max(1, min(n, int(round(math.sqrt(n)))))


def cap_clusters(requested: int, n: int, min_points: int = 40) -> int:
    """No more clusters than the data can train (FAISS wants ~39 points per centroid)."""
    return max(1, min(requested, n // min_points if n >= min_points else 1))


def set_threads(workers: int) -> None:
    faiss.omp_set_num_threads(max(1, workers))


def spherical_kmeans(
    x: np.ndarray, k: int, seed: int = 0, fit_fraction: float = 1.0, niter: int = 20
) -> np.ndarray:
    """(k, d) unit-norm centroids trained on a seeded sample of the rows of `x` (n, d) float32.

    The sample is at most `fit_fraction` of the rows and `MAX_POINTS_PER_CENTROID * k` rows,
    drawn with `seed` and read in row order, so the result depends only on data and seed."""
    n, d = x.shape
    if n == 0:
        return np.zeros((0, d), dtype=np.float32)
    k = max(1, min(k, n))
    size = min(n, max(k, int(math.ceil(n * fit_fraction))), MAX_POINTS_PER_CENTROID * k)
    rng = np.random.default_rng(seed)
    sample = np.sort(rng.choice(n, size=size, replace=False)) if size < n else np.arange(n)
    train = np.ascontiguousarray(x[sample], dtype=np.float32)
    if k == 1:
        centroid = train.mean(axis=0, keepdims=True)
        return _unit(centroid)
    kmeans = faiss.Kmeans(d, k, niter=niter, seed=int(seed) & 0x7FFFFFFF, spherical=True, verbose=False, max_points_per_centroid=MAX_POINTS_PER_CENTROID + 1)
    kmeans.cp.min_points_per_centroid = 1
    kmeans.train(train)
    return _unit(np.asarray(kmeans.centroids, dtype=np.float32).reshape(k, d))


def assign(x: np.ndarray, centroids: np.ndarray, chunk: int = ASSIGN_CHUNK) -> tuple[np.ndarray, np.ndarray]:
    """Nearest centroid by cosine (rows and centroids unit-norm): (label int32, similarity float32)."""
    n = x.shape[0]
    labels = np.empty(n, dtype=np.int32)
    similarity = np.empty(n, dtype=np.float32)
    if n == 0:
        return labels, similarity
    index = faiss.IndexFlatIP(centroids.shape[1])
    index.add(np.ascontiguousarray(centroids, dtype=np.float32))
    for start in range(0, n, chunk):
        block = np.ascontiguousarray(x[start : start + chunk], dtype=np.float32)
        sims, ids = index.search(block, 1)
        labels[start : start + len(block)] = ids[:, 0]
        similarity[start : start + len(block)] = sims[:, 0]
    return labels, similarity


def _unit(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return np.divide(vectors, norms, out=np.zeros_like(vectors), where=norms > 0).astype(np.float32)
