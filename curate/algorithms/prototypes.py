"""Self-supervised prototype scores (Sorscher et al. 2022, "Beyond neural scaling laws").

Difficulty of a row = cosine distance from its embedding to the nearest k-means centroid
(prototype). Pruning keeps the hardest (largest distance) or easiest fraction. The paper's
theory and experiments: with abundant data keep hard examples, with scarce data keep easy
ones; `choose_keep` turns that into a rule on rows available per training sample.
"""

from __future__ import annotations

import math

import numpy as np

from curate.algorithms.kmeans import assign

KEEP_CHOICES = ("hard", "easy", "auto", "none")
BALANCE_CHOICES = ("none", "cluster", "label")


def check_balance(balance: str, label_column: str) -> None:
    """`balance`: prune within each k-means cluster ("cluster") or each value of `label_column`
    ("label") so the kept data keeps that mix; "none" prunes by distance over all rows."""
    if balance not in BALANCE_CHOICES:
        raise ValueError(f"balance must be one of {', '.join(BALANCE_CHOICES)}, got {balance!r}")
    if (balance == "label") != bool(label_column):
        raise ValueError('balance = "label" needs label_column = "COLUMN", and label_column is only used with it')


def prototype_distance(x: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(nearest cluster int32, 1 - max cosine float32) for unit rows and unit centroids."""
    labels, similarity = assign(x, centroids)
    return labels, (np.float32(1.0) - similarity).astype(np.float32)


def keep_count(n: int, fraction: float) -> int:
    """Rows a fraction keeps: round half up, so 0.5 of an odd n keeps the larger half."""
    return min(n, max(0, int(math.floor(fraction * n + 0.5))))


def group_quotas(groups: np.ndarray, total: int) -> np.ndarray:
    """Rows to keep per group (indexed by group id) so the kept mix follows the groups' sizes
    and the quotas sum to exactly `total`: largest remainders, ties to the smaller group id."""
    sizes = np.bincount(groups) if len(groups) else np.zeros(0, np.int64)
    if total <= 0 or sizes.sum() == 0:
        return np.zeros(len(sizes), np.int64)
    exact = sizes * (total / sizes.sum())
    quotas = np.floor(exact).astype(np.int64)
    short = total - int(quotas.sum())
    if short > 0:
        order = np.lexsort((np.arange(len(sizes)), -(exact - quotas)))
        order = order[quotas[order] < sizes[order]]
        quotas[order[:short]] += 1
    return quotas


def select_by_difficulty(
    distance: np.ndarray, fraction: float, keep: str, groups: np.ndarray | None = None
) -> np.ndarray:
    """Boolean keep mask: exactly `keep_count` rows, hardest or easiest, ties to earlier rows.

    With `groups` (a k-means cluster or label id per row, >= 0) the pruning is balanced: each
    group keeps its share of the total (`group_quotas`), its hardest or easiest rows, so the kept
    data has the same cluster/label mix as the input. Unbalanced pruning by prototype distance
    drains whole clusters (tight clusters are all "easy"), which shifts the label mix: on Debian
    sections random pruning beat it at every kept fraction (docs/design/embeddings.md)."""
    n = len(distance)
    if keep == "none":
        return np.ones(n, dtype=bool)
    if keep not in ("hard", "easy"):
        raise ValueError(f"keep must be hard, easy or none here, got {keep!r}")
    key = -distance.astype(np.float64) if keep == "hard" else distance.astype(np.float64)
    mask = np.zeros(n, dtype=bool)
    total = keep_count(n, fraction)
    if groups is None:
        order = np.lexsort((np.arange(n), key))
        mask[order[:total]] = True
        return mask
    groups = np.asarray(groups, dtype=np.int64)
    if len(groups) != n or (n and groups.min() < 0):
        raise ValueError("groups must give a non-negative group id per row")
    order = np.lexsort((np.arange(n), key, groups))  # by group, then difficulty, then input order
    sorted_groups = groups[order]
    starts = np.searchsorted(sorted_groups, sorted_groups, side="left")
    rank = np.arange(n) - starts
    quotas = group_quotas(groups, total)
    mask[order[rank < quotas[sorted_groups]]] = True
    return mask


def choose_keep(rows: int, budget: int | None, abundance_threshold: float = 1.0) -> tuple[str, str]:
    """`auto`: hard when data is abundant relative to the training budget, easy when scarce.

    Sorscher et al. show the best pruning rule flips with the amount of data per parameter:
    keep easy examples when data is scarce, hard ones when it is abundant. Here the budget is
    the samples the user will train on, so `rows / budget` is how many unique rows exist per
    sample seen: >= threshold (training would not even finish an epoch of the full data) is
    abundant, below it the kept rows would be repeated many times, which is the scarce regime."""
    if budget is None or budget <= 0:
        return (
            "hard",
            "no training budget given (option budget or [report] budget): assuming data is abundant, the usual case at scale",
        )
    ratio = rows / budget
    if ratio >= abundance_threshold:
        return (
            "hard",
            f"abundant data: {rows} rows for a budget of {budget} samples (ratio {ratio:.3g} >= {abundance_threshold:g}), so keep hard examples",
        )
    return (
        "easy",
        f"scarce data: {rows} rows for a budget of {budget} samples (ratio {ratio:.3g} < {abundance_threshold:g}), so keep easy examples",
    )
