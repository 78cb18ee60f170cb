"""Quality pools: exact quantile buckets of a score, pool 0 the best.

Pools follow rank: with n scores ordered best first, the row of rank r goes to pool
floor(r * K / n), so pools are as equal as ties allow. The fitted state is K - 1 edges (the
last score of each pool but the worst), so assigning a row needs only its own score; tied
scores share the better pool. Missing (NaN) scores go to the worst pool.
"""

from __future__ import annotations

import numpy as np


def goodness(scores: np.ndarray, higher_is_better: bool) -> np.ndarray:
    values = np.asarray(scores, dtype=np.float64)
    return values if higher_is_better else -values


def pool_edges(scores: np.ndarray, pools: int, higher_is_better: bool) -> np.ndarray:
    """K - 1 edges in goodness space (non-increasing): edge j is the goodness of the last row of pool j - 1."""
    if pools < 1:
        raise ValueError(f"pools must be >= 1, got {pools}")
    g = goodness(scores, higher_is_better)
    g = np.sort(g[~np.isnan(g)])[::-1]
    n = len(g)
    if n == 0:
        return np.full(pools - 1, np.inf)
    j = np.arange(1, pools)
    return g[np.ceil(j * n / pools).astype(np.int64) - 1]


def assign_pools(scores: np.ndarray, edges: np.ndarray, higher_is_better: bool) -> np.ndarray:
    """Pool (int32, 0 best) of each score: the number of edges it is strictly worse than."""
    g = goodness(scores, higher_is_better)
    ascending = edges[::-1]
    worse_than = len(edges) - np.searchsorted(ascending, g, side="right")
    pools = worse_than.astype(np.int32)
    pools[np.isnan(g)] = len(edges)
    return pools


def pool_edges_by_group(scores: np.ndarray, groups: np.ndarray, pools: int, higher_is_better: bool) -> np.ndarray:
    """Edges per group, shape (groups, K - 1): balanced pools bucket each group on its own, so
    every pool holds the same group mix (each cluster or label contributes its share of best
    rows to pool 0) instead of pool 0 filling up with whole clusters. `groups` are ids >= 0."""
    groups = np.asarray(groups, dtype=np.int64)
    count = int(groups.max()) + 1 if len(groups) else 0
    return (
        np.vstack([pool_edges(scores[groups == g], pools, higher_is_better) for g in range(count)])
        if count
        else np.empty((0, pools - 1))
    )


def assign_pools_by_group(
    scores: np.ndarray, groups: np.ndarray, edges: np.ndarray, higher_is_better: bool
) -> np.ndarray:
    """Pool of each score against its own group's edges (`pool_edges_by_group`)."""
    groups = np.asarray(groups, dtype=np.int64)
    out = np.empty(len(scores), dtype=np.int32)
    for g in np.unique(groups):
        rows = groups == g
        out[rows] = assign_pools(np.asarray(scores)[rows], edges[g], higher_is_better)
    return out


def pool_totals(pools: np.ndarray, values: np.ndarray, k: int) -> np.ndarray:
    """Per pool the sum of `values` (tokens per row), pool ids 0..k-1; int64."""
    return np.bincount(np.asarray(pools, dtype=np.int64), weights=np.asarray(values, dtype=np.float64), minlength=k)[
        :k
    ].astype(np.int64)


def whitespace_tokens(texts) -> np.ndarray:
    """Whitespace-separated words per text (pyarrow string array; null = 0): the default token count
    a plan in tokens uses when no tokenizer is named."""
    import pyarrow.compute as pc

    words = pc.count_substring_regex(texts, r"\S+")  # runs of non-space: no empty words at doubled spaces
    counts = pc.fill_null(words, 0)
    return np.asarray(counts.to_numpy(zero_copy_only=False), dtype=np.int64)
