"""SemDeDup (Abbas et al. 2023): semantic duplicates within spherical k-means clusters.

Rows are unit vectors. After clustering, each cluster is searched on its own with FAISS
inner-product range search: pairs with cosine >= threshold are duplicates, duplicate groups
are the connected components within the cluster, and one member per group is kept:
`hard` keeps the member farthest from the centroid (the paper's rule: the least prototypical
copy carries the most information), `easy` the closest, `random` a seeded pick. Ties go to
the earlier row. Memory: the vectors of one cluster plus a bounded slice of its search
results at a time; pairs across clusters are not seen (the bench measures how many).
"""

from __future__ import annotations

from dataclasses import dataclass

import faiss
import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from curate.metrics.kmeans import assign, auto_clusters, spherical_kmeans

KEEP_RULES = ("hard", "easy", "random")
_RESULTS_PER_CHUNK = 1 << 22  # cap on range-search results held at once (about 50 MB)


@dataclass
class SemDedupResult:
    removed: np.ndarray  # int64 positions of removed rows, ascending
    representative: np.ndarray  # int64 position of the kept row of each removed row's group
    similarity: np.ndarray  # float32 cosine between each removed row and its representative
    labels: np.ndarray  # int32 cluster of every row
    centroid_similarity: np.ndarray  # float32 cosine of every row to its centroid
    centroids: np.ndarray  # (k, d) float32
    pairs: int  # duplicate pairs (i < j) found within clusters
    largest_cluster: int


def keep_priority(centroid_similarity: np.ndarray, keep: str, seed: int) -> np.ndarray:
    """Higher = kept first within a duplicate group (ties then go to the earlier row)."""
    if keep == "hard":
        return -centroid_similarity.astype(np.float64)
    if keep == "easy":
        return centroid_similarity.astype(np.float64)
    if keep == "random":
        return np.random.default_rng(seed).random(len(centroid_similarity))
    raise ValueError(f"keep must be one of {', '.join(KEEP_RULES)}, got {keep!r}")


def semantic_duplicates(
    x: np.ndarray,
    threshold: float = 0.95,
    clusters: int = 0,
    keep: str = "hard",
    seed: int = 0,
    fit_fraction: float = 1.0,
    niter: int = 20,
) -> SemDedupResult:
    """Duplicates among the unit-norm rows of `x` (n, d), which may be a memory map."""
    n = x.shape[0]
    k = auto_clusters(n) if clusters <= 0 else max(1, min(clusters, n))
    centroids = spherical_kmeans(x, k, seed=seed, fit_fraction=fit_fraction, niter=niter)
    labels, centroid_sim = assign(x, centroids)
    priority = keep_priority(centroid_sim, keep, seed)
    order = np.argsort(labels, kind="stable")  # members of each cluster, in row order
    bounds = np.concatenate([[0], np.cumsum(np.bincount(labels, minlength=len(centroids)))])
    radius = float(np.nextafter(np.float32(threshold), np.float32(-np.inf)))
    removed, reps, sims = [], [], []
    pairs = 0
    for c in range(len(centroids)):
        members = order[bounds[c] : bounds[c + 1]]
        if len(members) < 2:
            continue
        vectors = np.ascontiguousarray(x[members], dtype=np.float32)
        component, found = _components(vectors, radius, threshold)
        pairs += found
        if found == 0:
            continue
        gone, kept = _pick(component, priority[members], members)
        removed.append(members[gone])
        reps.append(members[kept])
        sims.append(np.einsum("ij,ij->i", vectors[gone], vectors[kept]))
    if removed:
        removed_all = np.concatenate(removed)
        sort = np.argsort(removed_all, kind="stable")
        result = (removed_all[sort], np.concatenate(reps)[sort], np.concatenate(sims)[sort].astype(np.float32))
    else:
        result = (np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float32))
    largest = int(np.diff(bounds).max()) if n else 0
    return SemDedupResult(*result, labels, centroid_sim, centroids, pairs, largest)


def _components(vectors: np.ndarray, radius: float, threshold: float) -> tuple[np.ndarray, int]:
    """Connected components of the cosine >= threshold graph of one cluster, merging the range
    search results a bounded query slice at a time (never the m x m matrix)."""
    m, d = vectors.shape
    index = faiss.IndexFlatIP(d)
    index.add(vectors)
    component = np.arange(m, dtype=np.int64)
    step = max(1, min(m, _RESULTS_PER_CHUNK // m))
    pairs = 0
    for start in range(0, m, step):
        lims, sims, neighbours = index.range_search(vectors[start : start + step], radius)
        query = start + np.repeat(np.arange(len(lims) - 1), np.diff(lims.astype(np.int64)))
        mask = (neighbours > query) & (sims >= threshold)
        if not mask.any():
            continue
        a, b = component[query[mask]], component[neighbours[mask]]
        pairs += int(mask.sum())
        graph = coo_matrix((np.ones(len(a), dtype=np.int8), (a, b)), shape=(m, m))
        _, merged = connected_components(graph, directed=False)
        component = merged[component]
    return component, pairs


def _pick(component: np.ndarray, priority: np.ndarray, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per component with 2+ members: local indices of removed members and of their keeper."""
    order = np.lexsort((positions, -priority, component))
    comp_sorted = component[order]
    first = np.ones(len(order), dtype=bool)
    first[1:] = comp_sorted[1:] != comp_sorted[:-1]
    keeper_of_sorted = order[np.maximum.accumulate(np.where(first, np.arange(len(order)), 0))]
    gone = order[~first]
    kept = keeper_of_sorted[~first]
    return gone, kept
