"""SemDeDup (Abbas et al. 2023): semantic duplicates within spherical k-means clusters.

Rows are unit vectors. After clustering, each cluster is searched on its own with FAISS
inner-product range search: pairs with cosine >= threshold are duplicates, duplicate groups
are the connected components within the cluster, and one member per group is kept:
`hard` keeps the member farthest from the centroid (the paper's rule: the least prototypical
copy carries the most information), `easy` the closest, `random` a seeded pick. Ties go to
the earlier row. Every cluster is searched on its own (`cluster_duplicates`), so the stage
runs clusters as tasks in any grouping and gets the same result. Memory: the vectors of one cluster plus a bounded slice of its search
results at a time; pairs across clusters are not seen (the bench measures how many).
"""

from __future__ import annotations

from dataclasses import dataclass

import faiss
import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from curate.algorithms.kmeans import assign, auto_clusters, row_dot, spherical_kmeans
from curate.algorithms.minhash import splitmix64

KEEP_RULES = ("hard", "easy", "random")
_RESULTS_PER_CHUNK = 1 << 22  # cap on range-search results held at once (about 50 MB)
_RESCORE_CHUNK = 1 << 15  # candidate pairs re-scored at once (2 x 48 MB of 384-d vectors)
# FAISS proposes pairs down to threshold - margin; its float32 inner products of unit vectors
# are within about 1e-7 of the per-row dot product that decides, so none is missed.
_SEARCH_MARGIN = 1e-4


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


def keep_priority(
    centroid_similarity: np.ndarray, keep: str, seed: int, ordinals: np.ndarray | None = None
) -> np.ndarray:
    """Higher = kept first within a duplicate group (ties then go to the earlier row). `random`
    draws from a hash of (seed, row ordinal), so a row's draw does not depend on which rows
    share its work unit or bucket."""
    if keep == "hard":
        return -centroid_similarity.astype(np.float64)
    if keep == "easy":
        return centroid_similarity.astype(np.float64)
    if keep == "random":
        rows = (
            np.arange(len(centroid_similarity), dtype=np.int64)
            if ordinals is None
            else np.asarray(ordinals, dtype=np.int64)
        )
        mixed = splitmix64(rows.astype(np.uint64) ^ splitmix64(np.array([seed], dtype=np.uint64))[0])
        return (mixed >> np.uint64(11)).astype(np.float64) / float(1 << 53)
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
    """Duplicates among the unit-norm rows of `x` (n, d), which may be a memory map; the
    whole-array form of what the stage runs as tasks (assign per unit, search per cluster)."""
    n = x.shape[0]
    k = auto_clusters(n) if clusters <= 0 else max(1, min(clusters, n))
    centroids = spherical_kmeans(x, k, seed=seed, fit_fraction=fit_fraction, niter=niter)
    labels, centroid_sim = assign(x, centroids)
    order = np.argsort(labels, kind="stable")  # members of each cluster, in row order
    bounds = np.concatenate([[0], np.cumsum(np.bincount(labels, minlength=len(centroids)))])
    removed, reps, sims = [], [], []
    pairs = 0
    for c in range(len(centroids)):
        members = order[bounds[c] : bounds[c + 1]]
        if len(members) < 2:
            continue
        found = cluster_duplicates(
            np.ascontiguousarray(x[members], dtype=np.float32), members, centroid_sim[members], threshold, keep, seed
        )
        pairs += found.pairs
        removed.append(found.removed)
        reps.append(found.representative)
        sims.append(found.similarity)
    removed_all, reps_all, sims_all = merge_duplicates(removed, reps, sims)
    largest = int(np.diff(bounds).max()) if n else 0
    return SemDedupResult(removed_all, reps_all, sims_all, labels, centroid_sim, centroids, pairs, largest)


@dataclass
class ClusterDuplicates:
    removed: np.ndarray  # int64 ordinals of removed rows
    representative: np.ndarray  # int64 ordinal of each one's kept row
    similarity: np.ndarray  # float32 cosine between the two
    pairs: int


def cluster_duplicates(
    vectors: np.ndarray, ordinals: np.ndarray, centroid_similarity: np.ndarray, threshold: float, keep: str, seed: int
) -> ClusterDuplicates:
    """Duplicates within one cluster: `vectors` (m, d) unit rows in ascending `ordinals`. The
    result depends only on these rows, so clusters can be searched in any task, in any order."""
    ordinals = np.asarray(ordinals, dtype=np.int64)
    component, found = _components(vectors, threshold)
    if found == 0:
        return ClusterDuplicates(np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float32), 0)
    gone, kept = _pick(component, keep_priority(centroid_similarity, keep, seed, ordinals), ordinals)
    similarity = row_dot(vectors[gone], vectors[kept]).astype(np.float32)
    return ClusterDuplicates(ordinals[gone], ordinals[kept], similarity, found)


def merge_duplicates(
    removed: list[np.ndarray], representative: list[np.ndarray], similarity: list[np.ndarray]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Clusters' (or buckets') results as one (removed, representative, similarity), by removed row."""
    if not removed:
        return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float32)
    removed_all = np.concatenate(removed).astype(np.int64, copy=False)
    sort = np.argsort(removed_all, kind="stable")
    return (
        removed_all[sort],
        np.concatenate(representative).astype(np.int64, copy=False)[sort],
        np.concatenate(similarity).astype(np.float32)[sort],
    )


def plan_buckets(sizes: np.ndarray, buckets: int, cost: np.ndarray | None = None) -> np.ndarray:
    """Bucket of each cluster so buckets cost about the same: clusters by falling cost (size
    squared, the pairwise search, unless `cost` is given) to the cheapest bucket so far (LPT),
    ties to lower numbers."""
    sizes = np.asarray(sizes, dtype=np.int64)
    buckets = max(1, min(buckets, len(sizes))) if len(sizes) else 1
    cost = sizes.astype(np.float64) ** 2 if cost is None else np.asarray(cost, dtype=np.float64)
    load = np.zeros(buckets)
    bucket_of = np.zeros(len(sizes), np.int32)
    for c in np.lexsort((np.arange(len(sizes)), -cost)):
        b = int(np.argmin(load))
        bucket_of[c] = b
        load[b] += cost[c]
    return bucket_of


def _components(vectors: np.ndarray, threshold: float) -> tuple[np.ndarray, int]:
    """Connected components of the cosine >= threshold graph of one cluster, merging the range
    search results a bounded query slice at a time (never the m x m matrix). FAISS proposes
    pairs a little below the threshold; each is decided on its per-row dot product, whose bits
    do not depend on the batch or the thread count (FAISS's do, by up to about 1e-7)."""
    m, d = vectors.shape
    index = faiss.IndexFlatIP(d)
    index.add(vectors)
    component = np.arange(m, dtype=np.int64)
    step = max(1, min(m, _RESULTS_PER_CHUNK // m))
    radius = float(threshold) - _SEARCH_MARGIN
    pairs = 0
    for start in range(0, m, step):
        lims, _, neighbours = index.range_search(vectors[start : start + step], radius)
        query = start + np.repeat(np.arange(len(lims) - 1), np.diff(lims.astype(np.int64)))
        later = neighbours > query
        query, neighbours = query[later], neighbours[later]
        if not len(query):
            continue
        sims = np.concatenate(
            [
                row_dot(vectors[query[i : i + _RESCORE_CHUNK]], vectors[neighbours[i : i + _RESCORE_CHUNK]])
                for i in range(0, len(query), _RESCORE_CHUNK)
            ]
        )
        mask = sims >= np.float32(threshold)
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
