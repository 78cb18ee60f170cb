"""Fit a static model's token table to a teacher's sentence vectors (the fitting pass of
`minilm-fitted`, curate.embeddings.static).

A static model embeds a text as the normalized mean of its token vectors: `normalize(A @ T)`
with `A` the (rows x vocabulary) token-count matrix, each row scaled to sum 1, and `T` the
(vocabulary x dim) table. Given teacher vectors `Y` (MiniLM's, unit length) for a sample of
rows, two least-squares steps bring `T` toward the teacher without losing what distillation
gave the tokens the sample never shows:

1. a linear map `W` (ridge): `A @ T0 @ W ~ Y`. It re-weights and rotates every token of the
   distilled table `T0` at once, including the unseen ones, so their scale matches the fitted
   tokens' (a token missing from the sample keeps `T0 @ W`);
2. the table itself (ridge toward `T0 @ W`): `min ||A T - Y||^2 + ridge ||T - T0 W||^2`, solved
   by conjugate gradients on the normal equations `(A'A + ridge I) T = A'Y + ridge T0 W`, one
   independent system per output dimension, run side by side for a fixed number of steps.

Everything is float64, sparse products are scipy's (single-threaded, a fixed summation order),
and the step count is fixed, so the same inputs give the same table.
"""

from __future__ import annotations

import numpy as np
from scipy import sparse


def mean_rows(counts: sparse.csr_matrix) -> sparse.csr_matrix:
    """`counts` with every non-empty row scaled to sum 1 (the mean of its tokens)."""
    totals = np.asarray(counts.sum(axis=1)).ravel()
    scale = np.divide(1.0, totals, out=np.zeros_like(totals, dtype=np.float64), where=totals > 0)
    return sparse.csr_matrix(sparse.diags(scale) @ counts.astype(np.float64))


def fit_linear_map(features: np.ndarray, targets: np.ndarray, ridge: float) -> np.ndarray:
    """W minimizing ||features W - targets||^2 + ridge * rows * ||W - I||^2 (ridge toward the
    identity, so a tiny sample cannot collapse the map)."""
    x = np.asarray(features, dtype=np.float64)
    y = np.asarray(targets, dtype=np.float64)
    d = x.shape[1]
    penalty = ridge * max(1, len(x))
    gram = x.T @ x + penalty * np.eye(d)
    return np.linalg.solve(gram, x.T @ y + penalty * np.eye(d, y.shape[1]))


def fit_token_table(
    counts: sparse.csr_matrix,
    targets: np.ndarray,
    prior: np.ndarray,
    *,
    ridge: float = 0.05,
    map_ridge: float = 1e-3,
    steps: int = 60,
) -> np.ndarray:
    """The fitted (vocabulary x dim) float32 table; see the module docstring.

    counts: (rows x vocabulary) token counts of the sample (special tokens included);
    targets: (rows x dim) teacher vectors; prior: (vocabulary x dim) distilled table."""
    a = mean_rows(sparse.csr_matrix(counts))
    y = np.asarray(targets, dtype=np.float64)
    t0 = np.asarray(prior, dtype=np.float64)
    w = fit_linear_map(a @ t0, y, map_ridge)
    base = t0 @ w
    at = sparse.csr_matrix(a.T)

    def normal(t: np.ndarray) -> np.ndarray:
        return at @ (a @ t) + ridge * t

    # conjugate gradients, one system per column, from the prior: x = base + correction
    rhs = at @ y + ridge * base
    x = base.copy()
    r = rhs - normal(x)
    p = r.copy()
    rr = np.einsum("ij,ij->j", r, r)
    for _ in range(steps):
        mp = normal(p)
        denominator = np.einsum("ij,ij->j", p, mp)
        alpha = np.divide(rr, denominator, out=np.zeros_like(rr), where=denominator > 0)
        x += p * alpha
        r -= mp * alpha
        rr_next = np.einsum("ij,ij->j", r, r)
        beta = np.divide(rr_next, rr, out=np.zeros_like(rr), where=rr > 0)
        p = r + p * beta
        rr = rr_next
    return x.astype(np.float32)
