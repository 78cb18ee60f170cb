"""SeTa (Zhou et al., CVPR 2025) as array functions: loss clusters, sliding windows, annealing.

Each epoch SeTa (1) randomly keeps `1 - prune_ratio` of the samples, (2) clusters their
last-seen losses into `groups` 1-D k-means clusters sorted easy to hard, (3) trains on a
window of `round(groups * window_scale)` consecutive clusters whose start is
`epoch mod (groups - window + 1)`, so the window slides from easy to hard and starts over.
Epoch 0 sees everything; epochs at or past `delta * epochs` anneal to a uniform random
subset of the random-pruning size. Unlike InfoBatch there is no loss rescaling.

Everything here is numpy and deterministic given a seed; the torch sampler and the
pipeline stage are thin wrappers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

MODE_FULL = "full"
MODE_WINDOW = "window"
MODE_ANNEALED = "annealed"


@dataclass(frozen=True)
class SeTaConfig:
    """SeTa's knobs with the defaults its authors run."""

    epochs: int
    prune_ratio: float = 0.0
    groups: int = 10
    window_scale: float = 0.5
    delta: float = 0.875

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if not 0.0 <= self.prune_ratio < 1.0:
            raise ValueError(f"prune_ratio must be in [0, 1), got {self.prune_ratio}")
        if self.groups < 1:
            raise ValueError(f"groups must be >= 1, got {self.groups}")
        if not 0.0 < self.window_scale <= 1.0:
            raise ValueError(f"window_scale must be in (0, 1], got {self.window_scale}")
        if not 0.0 <= self.delta <= 1.0:
            raise ValueError(f"delta must be in [0, 1], got {self.delta}")

    @property
    def window(self) -> int:
        return window_size(self.groups, self.window_scale)


# ---------------------------------------------------------------------------------------
# 1-D k-means


def kmeans_1d(
    values: np.ndarray, k: int, seed: int = 0, n_init: int = 3, bins: int = 512, max_iter: int = 300
) -> tuple[np.ndarray, np.ndarray]:
    """Cluster 1-D `values` into `k` clusters, labels sorted by centroid (0 = smallest).

    In 1-D the optimal clusters are contiguous ranges of the sorted values, so this works
    on the sorted distinct values with their counts: an exact dynamic program over at most
    `bins` count-weighted quantile bins (exact when there are no more distinct values than
    bins) seeds Lloyd's algorithm, whose steps are a `searchsorted` of the midpoints plus
    prefix sums. Lloyd also starts from the quantiles and from seeded k-means++ draws
    (`n_init` starts in all); the lowest within-cluster sum of squares wins. Equal values
    always share a cluster. With fewer distinct values than `k` the values are split into
    `k` equal-count groups by rank (ties ordered by a seeded shuffle), so no window of
    clusters is ever empty. Returns (labels int32, centroids float64)."""
    values = np.asarray(values, dtype=np.float64)
    n = len(values)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if n == 0:
        return np.empty(0, np.int32), np.zeros(0)
    if not np.isfinite(values).all():
        raise ValueError("losses must be finite (found NaN or inf)")
    distinct, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    inverse = inverse.reshape(-1)
    d = len(distinct)
    if d < k:
        return _rank_groups(values, k, seed)
    # Shift to the mean so the prefix sums of squares keep their precision.
    shift = float(np.dot(distinct, counts) / n)
    centered = distinct - shift
    weights = counts.astype(np.float64)
    prefix = _Prefix(centered, weights)
    rng = np.random.default_rng(seed)
    starts = [_binned_optimum(prefix, k, max(bins, 2 * k)), centered[_quantile_init(prefix.w, n, k, d)]]
    starts += [_kmeanspp_init(centered, prefix.w, k, rng) for _ in range(max(0, n_init - 2))]
    best: tuple[float, np.ndarray, np.ndarray] | None = None
    for seeds in starts:
        bounds, centroids, sse = _lloyd(centered, weights, prefix, seeds, max_iter)
        if best is None or sse < best[0] - 1e-12 * abs(best[0]):
            best = (sse, bounds, centroids)
    _, bounds, centroids = best
    labels_distinct = (np.searchsorted(bounds[1:-1], np.arange(d), side="right")).astype(np.int32)
    return labels_distinct[inverse], centroids + shift


def _binned_optimum(prefix: _Prefix, k: int, bins: int) -> np.ndarray:
    """Centroids of the exact k-means optimum over quantile bins of the sorted distinct values
    (a dynamic program over contiguous segments, O(k * bins^2) vectorized)."""
    d = len(prefix.w) - 1
    if d <= bins:
        edges = np.arange(d + 1)
    else:
        edges = np.searchsorted(prefix.w, np.linspace(0, prefix.w[-1], bins + 1), side="left")
        edges = np.unique(np.concatenate([[0], np.clip(edges, 0, d), [d]]))
    W, S, Q = prefix.w[edges], prefix.x[edges], prefix.x2[edges]
    m = len(edges) - 1
    i, j = np.triu_indices(m + 1, 1)
    cost = np.full((m + 1, m + 1), np.inf)
    weight = W[j] - W[i]
    cost[i, j] = np.maximum(Q[j] - Q[i] - (S[j] - S[i]) ** 2 / weight, 0.0)
    best = np.full(m + 1, np.inf)
    best[0] = 0.0
    back = np.zeros((k + 1, m + 1), dtype=np.int64)
    for c in range(1, k + 1):
        total = best[:, None] + cost  # [i, j]: best split of the first i bins into c-1, then i..j
        back[c] = np.argmin(total, axis=0)
        best = total[back[c], np.arange(m + 1)]
    cuts = [m]
    for c in range(k, 0, -1):
        cuts.append(back[c, cuts[-1]])
    cuts = np.array(cuts[::-1])
    return (S[cuts[1:]] - S[cuts[:-1]]) / (W[cuts[1:]] - W[cuts[:-1]])


class _Prefix:
    """Prefix sums of weight, weight * x and weight * x^2 over the sorted distinct values."""

    def __init__(self, x: np.ndarray, w: np.ndarray):
        self.w = np.concatenate([[0.0], np.cumsum(w)])
        self.x = np.concatenate([[0.0], np.cumsum(w * x)])
        self.x2 = np.concatenate([[0.0], np.cumsum(w * x * x)])


def _quantile_init(cum_w: np.ndarray, n: int, k: int, d: int) -> np.ndarray:
    targets = (np.arange(k) + 0.5) / k * n
    init = np.minimum(np.searchsorted(cum_w[1:], targets, side="right"), d - 1)
    if len(np.unique(init)) < k:  # heavy ties: evenly spaced distinct values instead
        init = np.round(np.linspace(0, d - 1, k)).astype(np.int64)
    return init


def _kmeanspp_init(x: np.ndarray, cum_w: np.ndarray, k: int, rng: np.random.Generator, grid: int = 4096) -> np.ndarray:
    """k-means++ seeds (as values) drawn over `grid` count-weighted quantiles of the data:
    the same distribution as seeding over every sample, at a cost independent of n."""
    n = cum_w[-1]
    at = np.minimum(np.searchsorted(cum_w[1:], (np.arange(grid) + 0.5) / grid * n, side="right"), len(x) - 1)
    points = x[at]
    picks = [points[int(rng.integers(grid))]]
    nearest = (points - picks[0]) ** 2
    for _ in range(1, k):
        total = nearest.sum()
        if total <= 0:
            break
        pick = points[int(rng.choice(grid, p=nearest / total))]
        picks.append(pick)
        nearest = np.minimum(nearest, (points - pick) ** 2)
    seeds = np.unique(picks)
    if len(seeds) < k:  # degenerate draw: fill with unused evenly spaced distinct values
        spare = np.setdiff1d(x[np.round(np.linspace(0, len(x) - 1, 2 * k)).astype(np.int64)], seeds)
        seeds = np.sort(np.concatenate([seeds, spare[: k - len(seeds)]]))
    return seeds


def _lloyd(
    x: np.ndarray, w: np.ndarray, prefix: _Prefix, centroids: np.ndarray, max_iter: int
) -> tuple[np.ndarray, np.ndarray, float]:
    """Lloyd iterations until the assignment stops changing; cluster j holds x[bounds[j]:bounds[j+1]]."""
    d = len(x)
    centroids = np.sort(centroids.astype(np.float64))
    bounds = None
    for _ in range(max_iter):
        mids = (centroids[1:] + centroids[:-1]) / 2.0
        new_bounds = np.concatenate([[0], np.searchsorted(x, mids, side="right"), [d]])
        if bounds is not None and np.array_equal(new_bounds, bounds):
            break
        bounds = new_bounds
        weight = prefix.w[bounds[1:]] - prefix.w[bounds[:-1]]
        total = prefix.x[bounds[1:]] - prefix.x[bounds[:-1]]
        empty = weight == 0
        centroids = np.where(empty, centroids, total / np.where(empty, 1.0, weight))
        if empty.any():
            centroids = _reseed_empty(x, w, centroids, empty)
    weight = prefix.w[bounds[1:]] - prefix.w[bounds[:-1]]
    total = prefix.x[bounds[1:]] - prefix.x[bounds[:-1]]
    squares = prefix.x2[bounds[1:]] - prefix.x2[bounds[:-1]]
    sse = float(np.sum(squares - np.where(weight > 0, total**2 / np.maximum(weight, 1e-300), 0.0)))
    return bounds, centroids, sse


def _reseed_empty(distinct: np.ndarray, counts: np.ndarray, centroids: np.ndarray, empty: np.ndarray) -> np.ndarray:
    """Move each empty cluster's centroid to the distinct value worst served by the others
    (largest count-weighted squared distance), as scikit-learn relocates empty clusters."""
    centroids = centroids.copy()
    for j in np.nonzero(empty)[0]:
        live = np.delete(centroids, j)
        pos = (
            np.clip(np.searchsorted(live, distinct), 1, len(live) - 1)
            if len(live) > 1
            else np.zeros(len(distinct), np.int64)
        )
        near = np.minimum(np.abs(distinct - live[pos]), np.abs(distinct - live[np.maximum(pos - 1, 0)]))
        cost = counts * near**2
        cost[np.isin(distinct, centroids)] = -1.0
        centroids[j] = distinct[int(np.argmax(cost))]
    return np.sort(centroids)


def _rank_groups(values: np.ndarray, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """k equal-count groups by value rank, ties broken by a seeded shuffle."""
    n = len(values)
    tiebreak = np.random.default_rng(seed).permutation(n)
    order = np.lexsort((tiebreak, values))
    labels = np.empty(n, np.int32)
    labels[order] = (np.arange(n) * k // n).astype(np.int32)
    sums = np.bincount(labels, weights=values, minlength=k)
    sizes = np.bincount(labels, minlength=k)
    centroids = np.where(sizes > 0, sums / np.maximum(sizes, 1), np.nan)
    return labels, centroids


# ---------------------------------------------------------------------------------------
# The schedule


def window_size(groups: int, window_scale: float) -> int:
    """round(groups * window_scale), half away from zero, at least 1 and at most groups."""
    return int(min(groups, max(1, math.floor(groups * window_scale + 0.5))))


def window_start(epoch: int, groups: int, window: int) -> int:
    return epoch % (groups - window + 1)


def window_clusters(epoch: int, groups: int, window: int) -> np.ndarray:
    """Cluster ids (0 = easiest) trained on in a windowed epoch."""
    start = window_start(epoch, groups, window)
    return np.arange(start, start + window)


def epoch_mode(epoch: int, config: SeTaConfig) -> str:
    """'full' for epoch 0, 'annealed' at or past delta * epochs, else 'window'."""
    if epoch == 0:
        return MODE_FULL
    if epoch >= config.delta * config.epochs:
        return MODE_ANNEALED
    return MODE_WINDOW


def pruned_size(n: int, prune_ratio: float) -> int:
    """How many samples the random pruning step keeps."""
    return int(n - math.floor(n * prune_ratio + 1e-9))


def random_prune(n: int, prune_ratio: float, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices of a uniform random `1 - prune_ratio` of 0..n-1 (all when the ratio is 0)."""
    keep = pruned_size(n, prune_ratio)
    if keep >= n:
        return np.arange(n, dtype=np.int64)
    return np.sort(rng.choice(n, size=keep, replace=False)).astype(np.int64)


def epoch_seed(seed: int, epoch: int, stream: int) -> np.random.Generator:
    """Independent generators per (seed, epoch, purpose): any epoch is reproducible alone."""
    return np.random.default_rng([seed, epoch, stream])


def select_epoch(losses: np.ndarray, epoch: int, config: SeTaConfig, seed: int = 0) -> np.ndarray:
    """Sorted indices of the samples SeTa trains on in `epoch`, given each sample's last loss."""
    n = len(losses)
    mode = epoch_mode(epoch, config)
    if mode == MODE_FULL:
        return np.arange(n, dtype=np.int64)
    candidates = random_prune(n, config.prune_ratio, epoch_seed(seed, epoch, 0))
    if mode == MODE_ANNEALED or len(candidates) == 0:
        return candidates
    labels, _ = kmeans_1d(np.asarray(losses)[candidates], config.groups, seed=seed + epoch)
    return candidates[in_window(labels, epoch, config)]


def in_window(labels: np.ndarray, epoch: int, config: SeTaConfig) -> np.ndarray:
    """Boolean mask of cluster labels inside this epoch's window."""
    start = window_start(epoch, config.groups, config.window)
    return (labels >= start) & (labels < start + config.window)


def schedule(config: SeTaConfig) -> list[dict]:
    """What each epoch trains on, by cluster: the plan a training run would follow."""
    plan = []
    everything = list(range(config.groups))
    for epoch in range(config.epochs):
        mode = epoch_mode(epoch, config)
        clusters = window_clusters(epoch, config.groups, config.window).tolist() if mode == MODE_WINDOW else everything
        plan.append(
            {
                "epoch": epoch,
                "mode": mode,
                "clusters": clusters,
                "random_prune": mode != MODE_FULL and config.prune_ratio > 0,
            }
        )
    return plan


# ---------------------------------------------------------------------------------------
# Static pruning by loss (EL2N-style)


def prune_by_loss(losses: np.ndarray, keep: str, fraction: float) -> np.ndarray:
    """Boolean mask of rows to remove: keep the hardest (`keep="hard"`) or easiest
    (`keep="easy"`) `fraction` by loss. Ties are broken by position, so it is deterministic."""
    n = len(losses)
    remove = np.zeros(n, dtype=bool)
    if keep == "none" or n == 0:
        return remove
    drop = n - int(math.floor(n * fraction + 0.5))
    if drop <= 0:
        return remove
    order = np.argsort(losses, kind="stable")
    if keep == "easy":
        order = np.argsort(-np.asarray(losses, dtype=np.float64), kind="stable")
    victims = order[:drop]
    remove[victims] = True
    return remove
