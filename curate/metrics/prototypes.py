"""Self-supervised prototype scores (Sorscher et al. 2022, "Beyond neural scaling laws").

Difficulty of a row = cosine distance from its embedding to the nearest k-means centroid
(prototype). Pruning keeps the hardest (largest distance) or easiest fraction. The paper's
theory and experiments: with abundant data keep hard examples, with scarce data keep easy
ones; `choose_keep` turns that into a rule on rows available per training sample.
"""

from __future__ import annotations

import math

import numpy as np

from curate.metrics.kmeans import assign

KEEP_CHOICES = ("hard", "easy", "auto", "none")


def prototype_distance(x: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(nearest cluster int32, 1 - max cosine float32) for unit rows and unit centroids."""
    labels, similarity = assign(x, centroids)
    return labels, (np.float32(1.0) - similarity).astype(np.float32)


def keep_count(n: int, fraction: float) -> int:
    """Rows a fraction keeps: round half up, so 0.5 of an odd n keeps the larger half."""
    return min(n, max(0, int(math.floor(fraction * n + 0.5))))


def select_by_difficulty(distance: np.ndarray, fraction: float, keep: str) -> np.ndarray:
    """Boolean keep mask: exactly `keep_count` rows, hardest or easiest, ties to earlier rows."""
    n = len(distance)
    if keep == "none":
        return np.ones(n, dtype=bool)
    if keep not in ("hard", "easy"):
        raise ValueError(f"keep must be hard, easy or none here, got {keep!r}")
    key = -distance.astype(np.float64) if keep == "hard" else distance.astype(np.float64)
    order = np.lexsort((np.arange(n), key))
    mask = np.zeros(n, dtype=bool)
    mask[order[: keep_count(n, fraction)]] = True
    return mask


def choose_keep(rows: int, budget: int | None, abundance_threshold: float = 1.0) -> tuple[str, str]:
    """`auto`: hard when data is abundant relative to the training budget, easy when scarce.

    Sorscher et al. show the best pruning rule flips with the amount of data per parameter:
    keep easy examples when data is scarce, hard ones when it is abundant. Here the budget is
    the samples the user will train on, so `rows / budget` is how many unique rows exist per
    sample seen: >= threshold (training would not even finish an epoch of the full data) is
    abundant, below it the kept rows would be repeated many times, which is the scarce regime."""
    if budget is None or budget <= 0:
        return "hard", "no training budget given (option budget or [report] budget): assuming data is abundant, the usual case at scale"
    ratio = rows / budget
    if ratio >= abundance_threshold:
        return "hard", f"abundant data: {rows} rows for a budget of {budget} samples (ratio {ratio:.3g} >= {abundance_threshold:g}), so keep hard examples"
    return "easy", f"scarce data: {rows} rows for a budget of {budget} samples (ratio {ratio:.3g} < {abundance_threshold:g}), so keep easy examples"
