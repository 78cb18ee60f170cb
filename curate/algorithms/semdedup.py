"""SemDeDup (Abbas et al. 2023): semantic duplicates within spherical k-means clusters.

Rows are unit vectors. After clustering, each cluster (split by k-means when larger than
`max_cluster_rows`) is searched greedily in keep order: rows sorted by the keep rule (`hard`:
farthest from the centroid first, the paper's rule; `easy`: closest first; `random`: a seeded
draw; ties to the earlier row), and a row is removed when a row kept before it in its cluster
has cosine >= threshold with it. That is SemDeDup's own rule (compare with the rows before it)
restricted to kept rows: every removed row has its representative at cosine >= threshold, and
the work is rows x kept rows in BLAS blocks, never an enumeration of all pairs. Relation to the
all-pairs definition (connected components of the cosine >= threshold graph, one kept per
component, same priority): every row removed here is removed there too (precision 1 within
the same clusters); what it keeps more are the far ends of chains (a ~ b ~ c with a !~ c keeps
a and c), plus pairs split across clusters. The bench measures both against brute force.
Every cluster is searched on its own (`cluster_duplicates`), so the stage runs clusters as
tasks in any grouping and gets the same result."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from curate.algorithms.kmeans import (
    MAX_CLUSTERS,
    assign,
    auto_clusters,
    kmeans_sample,
    lloyd,
    row_dot,
    spherical_kmeans,
)
from curate.algorithms.minhash import splitmix64

KEEP_RULES = ("hard", "easy", "random")
# Largest cluster searched whole: a bigger one is split by k-means. Bounds the search per row
# (at most this many kept rows to compare with) whatever the corpus size and skew.
MAX_CLUSTER_ROWS = 4_096
_SPLIT_DEPTH = 3
_SPLIT_ITERATIONS = 10
_BLOCK = 512  # rows compared with the kept rows at once, then among themselves
_DENSE_MAX = 1 << 22  # cosines computed at once (16 MB of float32)
_RESCORE_CHUNK = 1 << 15  # candidate pairs re-scored at once (2 x 48 MB of 384-d vectors)
# BLAS proposes pairs down to threshold - margin; its float32 inner products of unit vectors
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
    pairs: int  # (removed row, representative) matches found within clusters
    largest_cluster: int
    comparisons: int = 0  # cosines computed by the within-cluster search


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
    max_cluster_rows: int = MAX_CLUSTER_ROWS,
    max_clusters: int = MAX_CLUSTERS,
    preference: np.ndarray | None = None,
) -> SemDedupResult:
    """Duplicates among the unit-norm rows of `x` (n, d), which may be a memory map; the
    whole-array form of what the stage runs as tasks (assign per unit, search per cluster)."""
    n = x.shape[0]
    k = auto_clusters(n, max_clusters) if clusters <= 0 else max(1, min(clusters, n))
    centroids = spherical_kmeans(x, k, seed=seed, fit_fraction=fit_fraction, niter=niter)
    labels, centroid_sim = assign(x, centroids)
    order = np.argsort(labels, kind="stable")  # members of each cluster, in row order
    bounds = np.concatenate([[0], np.cumsum(np.bincount(labels, minlength=len(centroids)))])
    removed, reps, sims = [], [], []
    pairs = comparisons = 0
    for c in range(len(centroids)):
        members = order[bounds[c] : bounds[c + 1]]
        if len(members) < 2:
            continue
        found = cluster_duplicates(
            np.ascontiguousarray(x[members], dtype=np.float32),
            members,
            centroid_sim[members],
            threshold,
            keep,
            seed,
            max_cluster_rows,
            None if preference is None else np.asarray(preference)[members],
        )
        pairs += found.pairs
        comparisons += found.comparisons
        removed.append(found.removed)
        reps.append(found.representative)
        sims.append(found.similarity)
    removed_all, reps_all, sims_all = merge_duplicates(removed, reps, sims)
    largest = int(np.diff(bounds).max()) if n else 0
    return SemDedupResult(
        removed_all, reps_all, sims_all, labels, centroid_sim, centroids, pairs, largest, comparisons
    )


@dataclass
class ClusterDuplicates:
    removed: np.ndarray  # int64 ordinals of removed rows
    representative: np.ndarray  # int64 ordinal of each one's kept row
    similarity: np.ndarray  # float32 cosine between the two
    pairs: int  # (removed row, its representative) matches found
    comparisons: int = 0  # cosines computed: rows x kept rows before them, the search's cost
    parts: int = 1  # parts the cluster was split into


def cluster_duplicates(
    vectors: np.ndarray,
    ordinals: np.ndarray,
    centroid_similarity: np.ndarray,
    threshold: float,
    keep: str,
    seed: int,
    max_rows: int = MAX_CLUSTER_ROWS,
    preference: np.ndarray | None = None,
) -> ClusterDuplicates:
    """Duplicates within one cluster: `vectors` (m, d) unit rows in ascending `ordinals`. The
    cluster is split when larger than `max_rows` (`split_cluster`), then each part is searched
    greedily in keep order (`greedy_duplicates`); `preference` (the representative rule's key,
    lower preferred) comes before the keep rule in that order. The result depends only on these rows, so
    clusters can be searched in any task, in any order."""
    ordinals = np.asarray(ordinals, dtype=np.int64)
    priority = keep_priority(centroid_similarity, keep, seed, ordinals)
    gone, kept, sims = [], [], []
    matches = comparisons = 0
    parts = split_cluster(vectors, max_rows, seed)
    for part in parts:
        if len(part) < 2:
            continue
        found = greedy_duplicates(
            np.ascontiguousarray(vectors[part], dtype=np.float32),
            priority[part],
            ordinals[part],
            threshold,
            preference=None if preference is None else np.asarray(preference)[part],
        )
        gone.append(part[found[0]])
        kept.append(part[found[1]])
        sims.append(found[2])
        comparisons += found[3]
    gone_all = np.concatenate(gone) if gone else np.empty(0, np.int64)
    kept_all = np.concatenate(kept) if kept else np.empty(0, np.int64)
    sims_all = np.concatenate(sims) if sims else np.empty(0, np.float32)
    matches = len(gone_all)
    return ClusterDuplicates(
        ordinals[gone_all], ordinals[kept_all], sims_all.astype(np.float32), matches, comparisons, len(parts)
    )


def greedy_duplicates(
    vectors: np.ndarray,
    priority: np.ndarray,
    ordinals: np.ndarray,
    threshold: float,
    block: int = _BLOCK,
    preference: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Greedy SemDeDup in keep order: rows by falling priority (ties: earlier ordinal); a row is
    removed when a row kept before it has cosine >= threshold with it (its representative is
    the first such kept row), else it is kept. Work is rows x kept rows, never all pairs: rows
    go `block` at a time, first against the kept rows (BLAS products), then among themselves.
    BLAS proposes pairs down to threshold - margin; each is decided on its per-row dot product,
    whose bits do not depend on blocks or threads. Returns local (removed, representative,
    cosine, comparisons)."""
    m, d = vectors.shape
    order = np.lexsort((ordinals, -priority) if preference is None else (ordinals, -priority, preference))
    v = np.ascontiguousarray(vectors[order], dtype=np.float32)
    kept = np.empty(m, np.int64)  # positions in `v` of kept rows, in keep order
    store = np.empty((min(m, 4 * block), d), np.float32)  # their vectors, grown by doubling
    count = 0
    gone, reps, sims = [], [], []
    comparisons = 0
    for start in range(0, m, block):
        b = v[start : start + block]
        alive = np.ones(len(b), dtype=bool)
        if count:
            comparisons += len(b) * count
            query, first, cosine = first_matches(b, store[:count], threshold)
            alive[query] = False
            gone.append(start + query)
            reps.append(kept[first])
            sims.append(cosine)
        rest = np.flatnonzero(alive)
        if len(rest) > 1:
            comparisons += len(rest) * (len(rest) - 1) // 2
            i, j, cosine = _pairs_within(b[rest], threshold)
            if len(i):
                live = np.ones(len(rest), dtype=bool)
                heads = np.flatnonzero(np.r_[True, i[1:] != i[:-1]])
                for lo, hi in zip(heads, np.r_[heads[1:], len(i)]):
                    a = i[lo]
                    if not live[a]:
                        continue
                    hit = live[j[lo:hi]]
                    if hit.any():
                        dropped = j[lo:hi][hit]
                        live[dropped] = False
                        gone.append(start + rest[dropped])
                        reps.append(np.full(len(dropped), start + rest[a], np.int64))
                        sims.append(cosine[lo:hi][hit])
                alive[rest[~live]] = False
        new = start + np.flatnonzero(alive)
        if count + len(new) > len(store):
            grown = np.empty((min(m, max(2 * len(store), count + len(new))), d), np.float32)
            grown[:count] = store[:count]
            store = grown
        store[count : count + len(new)] = v[new]
        kept[count : count + len(new)] = new
        count += len(new)
    if not gone:
        return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float32), comparisons
    return (
        order[np.concatenate(gone)],
        order[np.concatenate(reps)],
        np.concatenate(sims).astype(np.float32),
        comparisons,
    )


def first_matches(new: np.ndarray, kept: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row of `new`, first row of `kept`, cosine) for each row of `new` with some row of `kept`
    at cosine >= threshold; products in chunks of at most `_DENSE_MAX` cosines."""
    step = max(1, _DENSE_MAX // max(1, len(kept)))
    floor = np.float32(threshold - _SEARCH_MARGIN)
    queries, neighbours = [], []
    for lo in range(0, len(new), step):
        q, nb = np.nonzero(new[lo : lo + step] @ kept.T >= floor)
        queries.append(lo + q)
        neighbours.append(nb)
    query, neighbour = np.concatenate(queries).astype(np.int64), np.concatenate(neighbours).astype(np.int64)
    if not len(query):
        return query, neighbour, np.empty(0, np.float32)
    cosine = _rescore(new, kept, query, neighbour)
    ok = cosine >= np.float32(threshold)
    query, neighbour, cosine = query[ok], neighbour[ok], cosine[ok]
    first = np.ones(len(query), dtype=bool)  # np.nonzero is row-major: per row, kept rows ascending
    first[1:] = query[1:] != query[:-1]
    return query[first], neighbour[first], cosine[first]


def _pairs_within(b: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs i < j of the rows of `b` with cosine >= threshold, sorted by (i, j)."""
    floor = np.float32(threshold - _SEARCH_MARGIN)
    i, j = np.nonzero(np.triu(b @ b.T >= floor, k=1))
    if not len(i):
        return i.astype(np.int64), j.astype(np.int64), np.empty(0, np.float32)
    cosine = _rescore(b, b, i, j)
    ok = cosine >= np.float32(threshold)
    return i[ok].astype(np.int64), j[ok].astype(np.int64), cosine[ok]


def _rescore(a: np.ndarray, b: np.ndarray, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    return np.concatenate(
        [row_dot(a[i[s : s + _RESCORE_CHUNK]], b[j[s : s + _RESCORE_CHUNK]]) for s in range(0, len(i), _RESCORE_CHUNK)]
    )


def split_cluster(vectors: np.ndarray, max_rows: int, seed: int, depth: int = 0) -> list[np.ndarray]:
    """Local row indices (ascending) of the parts of a cluster larger than `max_rows`: spherical
    k-means (`lloyd`, deterministic) into about 2 m / max_rows parts, recursively, at most
    `_SPLIT_DEPTH` levels; a part k-means cannot split (near-identical rows) stays whole, where
    the greedy search is cheap anyway (few kept rows). 0 = never split."""
    m = len(vectors)
    if max_rows <= 0 or m <= max_rows or depth >= _SPLIT_DEPTH:
        return [np.arange(m, dtype=np.int64)]
    k = int(np.ceil(2 * m / max_rows))
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    train = x[kmeans_sample(m, k, seed)]
    labels, _ = assign(x, lloyd(train, k, seed=seed, niter=_SPLIT_ITERATIONS))
    if np.bincount(labels).max() == m:
        return [np.arange(m, dtype=np.int64)]
    parts = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        parts.extend(members[p] for p in split_cluster(x[members], max_rows, seed, depth + 1))
    return parts


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
