"""Repetition-aware scaling laws for quality pools; the design notes' scaling-laws.md is the contract.

Goyal et al. 2024 ("goyal2024"): after n samples of a mix M of size P, the loss is a piecewise
power law; during pass k the exponent is the size-weighted utility
b_M(k) = sum_i (p_i / P) b_i 2**(-(k-1)/tau_i), each pass continuing where the last ended.
Muennighoff et al. 2023 ("muennighoff2023"): repeated data counts as less effective data,
D' = U + U R* (1 - exp(-R / R*)) after R = epochs - 1 repetitions; here per pool, so a mix's
log loss is log a + sum_i (p_i / P) b_i log D'_i(n).

Both write log y = log a + F(n) @ b with a feature matrix F that depends on the pool sizes and
the repetition parameters only; the fit uses that linearity for its starting points.
Everything is vectorized over n; the pass sum is exact up to EXACT_PASSES passes and an
exponential-integral tail beyond (error below 1e-12 per pool)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Sequence

import numpy as np
from scipy.special import exp1

GOYAL = "goyal2024"
MUENNIGHOFF = "muennighoff2023"
MODELS = (GOYAL, MUENNIGHOFF)
REPETITION_NAMES = {"goyal": GOYAL, GOYAL: GOYAL, "muennighoff": MUENNIGHOFF, MUENNIGHOFF: MUENNIGHOFF}
R_STAR = 15.4  # Muennighoff et al.'s fitted repetition constant for language models
EXACT_PASSES = 1 << 16


@dataclass(frozen=True)
class Pool:
    """One quality pool: unique samples, utility b < 0 and repetition parameter
    (Goyal: half-life tau in visits per sample; Muennighoff: R*)."""

    name: str
    size: float
    b: float
    tau: float
    tau_identified: bool = True


@dataclass(frozen=True)
class Law:
    """A fitted law: shared scale a, pools best first, optional fixed irreducible loss."""

    a: float
    pools: tuple[Pool, ...]
    model: str = GOYAL
    irreducible: float = 0.0
    fit: dict = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.pools]

    def with_sizes(self, sizes: Sequence[float] | None) -> Law:
        """The same law planned for other pool sizes (e.g. the full corpus after a fit on a sample)."""
        if sizes is None:
            return self
        if len(sizes) != len(self.pools):
            raise ValueError(f"{len(sizes)} pool sizes for {len(self.pools)} pools")
        return replace(self, pools=tuple(replace(p, size=float(s)) for p, s in zip(self.pools, sizes)))

    def log_loss(self, n: np.ndarray | float, members: Sequence[int]) -> np.ndarray:
        """log predicted loss of the mix of pools `members` after n samples seen."""
        chosen = [self.pools[i] for i in members]
        return log_loss_mix(
            n,
            [p.size for p in chosen],
            [p.b for p in chosen],
            [p.tau for p in chosen],
            self.a,
            self.model,
            self.irreducible,
        )

    def loss(self, n: np.ndarray | float, members: Sequence[int]) -> np.ndarray:
        return np.exp(self.log_loss(n, members))


def _pass_sums(m: np.ndarray, rate: np.ndarray, exact_passes: int) -> np.ndarray:
    """S(m) = sum_{k=2..m} e**(-lam (k-1)) log(k/(k-1)) per pool, lam = ln 2 / tau; shape (len(m), pools).
    Exact cumulative sums up to `exact_passes`; beyond, the midpoint integral of
    e**(-lam (k-1)) / (k - 1/2), i.e. e**(lam/2) (E1(lam A) - E1(lam m)), A = exact_passes."""
    m = np.asarray(m, dtype=np.int64)
    out = np.zeros((len(m), len(rate)))
    top = int(min(m.max(initial=1), exact_passes))
    if top >= 2:
        k = np.arange(2, top + 1, dtype=np.float64)[:, None]
        terms = np.exp(-rate[None, :] * (k - 1)) * np.log(k / (k - 1))
        table = np.vstack([np.zeros((2, len(rate))), np.cumsum(terms, axis=0)])  # table[m] = S(m)
        out = table[np.minimum(m, top)]
    beyond = m > exact_passes
    if beyond.any():
        tail_end = m[beyond].astype(np.float64)[:, None]
        lam = rate[None, :]
        with np.errstate(over="ignore", invalid="ignore"):
            tail = np.exp(lam / 2) * (exp1(lam * exact_passes) - exp1(lam * tail_end))
            no_decay = np.log(tail_end / exact_passes)
        out[beyond] += np.where(lam > 0, tail, no_decay)
    return out


def utility_features(
    n: np.ndarray | float,
    sizes: Sequence[float],
    tau: Sequence[float],
    model: str = GOYAL,
    exact_passes: int = EXACT_PASSES,
) -> np.ndarray:
    """F with log y(n) = log a + F @ b (before any irreducible loss); shape (len(n), pools)."""
    n = np.atleast_1d(np.asarray(n, dtype=np.float64))
    sizes = np.asarray(sizes, dtype=np.float64)
    tau = np.asarray(tau, dtype=np.float64)
    total = sizes.sum()
    weights = sizes / total
    first = np.log(np.minimum(n, total))[:, None]
    later = repetition_features(n / total, tau, model, exact_passes)
    return weights[None, :] * (first + later)


def repetition_features(
    epochs: np.ndarray, tau: np.ndarray, model: str = GOYAL, exact_passes: int = EXACT_PASSES
) -> np.ndarray:
    """What passes after the first add to each pool's log-feature, given the passes made over it
    (the same number for every pool in `tau`); shape (len(epochs), pools)."""
    epochs = np.atleast_1d(np.asarray(epochs, dtype=np.float64))
    tau = np.asarray(tau, dtype=np.float64)
    if model == GOYAL:
        rate = np.log(2.0) / tau
        # pass K = ceil(epochs) is under way; passes 2..K-1 are complete
        current = np.maximum(np.ceil(epochs - 1e-12), 1).astype(np.int64)
        complete = _pass_sums(current - 1, rate, exact_passes)
        partial = np.where(
            current[:, None] >= 2,
            np.exp(-rate[None, :] * (current[:, None] - 1))
            * np.log(np.maximum(epochs, 1.0)[:, None] / (current[:, None] - 1).clip(1)),
            0.0,
        )
        return complete + partial
    if model == MUENNIGHOFF:
        repeats = np.maximum(epochs - 1.0, 0.0)[:, None]
        return np.log1p(tau[None, :] * -np.expm1(-repeats / tau[None, :]))
    raise ValueError(f"unknown model {model!r}; use one of {MODELS}")


def log_loss_weighted(law: Law, n: np.ndarray | float, shares: Sequence[float]) -> np.ndarray:
    """log predicted loss after n samples drawn from pool i with share shares[i] (summing to 1),
    each pool repeated at its own pace (shares[i] n / p_i passes).

    The uniform-mix law generalised: pool i contributes shares[i] b_i (log min(n, p_i / shares[i])
    + its repetition term at its own passes). With shares = p_i / P over a mix's members (uniform
    sampling) this is exactly `Law.log_loss` of that mix, so the weighted plan and the prefix plan
    give the same rows the same loss; a pool with share 0 contributes nothing."""
    n = np.atleast_1d(np.asarray(n, dtype=np.float64))
    core = np.full(n.shape, np.log(law.a))
    for pool, share in zip(law.pools, shares):
        if share <= 0:
            continue
        epochs = share * n / pool.size
        first = np.log(np.minimum(n, pool.size / share))
        later = repetition_features(epochs, np.array([pool.tau]), law.model)[:, 0]
        core = core + share * pool.b * (first + later)
    if law.irreducible > 0:
        return np.logaddexp(np.log(law.irreducible), core)
    return core


class WeightedMix:
    """`log_loss_weighted` made cheap to call many times (an optimiser's inner loop): the pass sums
    of each pool's half-life are tabulated once instead of per call."""

    def __init__(self, law: Law, exact_passes: int = EXACT_PASSES):
        self.law = law
        self.sizes = np.array([p.size for p in law.pools])
        self.b = np.array([p.b for p in law.pools])
        self.tau = np.array([p.tau for p in law.pools])
        self.exact = exact_passes
        self.rate = np.log(2.0) / self.tau
        self.table = None
        if law.model == GOYAL:
            k = np.arange(2, exact_passes + 1, dtype=np.float64)[:, None]
            terms = np.exp(-self.rate[None, :] * (k - 1)) * np.log(k / (k - 1))
            self.table = np.vstack([np.zeros((2, len(self.tau))), np.cumsum(terms, axis=0)])

    def repetition(self, epochs: np.ndarray) -> np.ndarray:
        """Each pool's repetition term at its own passes `epochs` (one value per pool)."""
        if self.law.model == MUENNIGHOFF:
            return np.log1p(self.tau * -np.expm1(-np.maximum(epochs - 1.0, 0.0) / self.tau))
        current = np.maximum(np.ceil(epochs - 1e-12), 1).astype(np.int64)
        m = current - 1
        idx = np.arange(len(epochs))
        out = self.table[np.minimum(m, self.exact), idx]
        beyond = m > self.exact
        if beyond.any():
            lam = self.rate[beyond]
            out[beyond] += np.exp(lam / 2) * (exp1(lam * self.exact) - exp1(lam * m[beyond]))
        partial = np.exp(-self.rate * m) * np.log(np.maximum(epochs, 1.0) / np.maximum(m, 1))
        return out + np.where(current >= 2, partial, 0.0)

    def log_loss(self, n: float, shares: np.ndarray) -> float:
        """log predicted loss after n samples with these shares (as `log_loss_weighted`)."""
        shares = np.asarray(shares, dtype=np.float64)
        used = shares > 0
        safe = np.where(used, shares, 1.0)
        first = np.log(np.minimum(n, self.sizes / safe))
        later = self.repetition(safe * n / self.sizes)
        core = float(np.log(self.law.a) + np.sum(np.where(used, shares * self.b * (first + later), 0.0)))
        if self.law.irreducible > 0:
            return float(np.logaddexp(np.log(self.law.irreducible), core))
        return core


def log_loss_mix(
    n: np.ndarray | float,
    sizes: Sequence[float],
    b: Sequence[float],
    tau: Sequence[float],
    a: float,
    model: str = GOYAL,
    irreducible: float = 0.0,
    exact_passes: int = EXACT_PASSES,
) -> np.ndarray:
    """log y(n) for a mix sampled uniformly: pools' sizes, utilities b_i, repetition parameters."""
    core = np.log(a) + utility_features(n, sizes, tau, model, exact_passes) @ np.asarray(b, dtype=np.float64)
    if irreducible > 0:
        return np.logaddexp(np.log(irreducible), core)
    return core


def mix_utility(sizes: Sequence[float], b: Sequence[float], tau: Sequence[float], k: int) -> float:
    """b_M(k): the mix's exponent during pass k (Goyal)."""
    sizes = np.asarray(sizes, dtype=np.float64)
    return float(np.sum(sizes / sizes.sum() * np.asarray(b) * 2.0 ** (-(k - 1) / np.asarray(tau))))


def law_to_json(law: Law) -> dict:
    """LAW.json as in scaling-laws.md (plus: irreducible, tau_identified, fit details)."""
    key = "tau" if law.model == GOYAL else "r_star"
    pools = [
        {"name": p.name, "size": int(round(p.size)), "b": p.b, key: p.tau, "tau_identified": p.tau_identified}
        for p in law.pools
    ]
    return {"model": law.model, "a": law.a, "irreducible": law.irreducible, "pools": pools, "fit": law.fit}


def law_from_json(data: dict) -> Law:
    """Parse LAW.json; raises KeyError/ValueError/TypeError on malformed input (the CLI words them)."""
    model = data.get("model", GOYAL)
    if model not in MODELS:
        raise ValueError(f"unknown model {model!r}; expected one of {MODELS}")
    key = "tau" if model == GOYAL else "r_star"
    pools = []
    for entry in data["pools"]:
        pool = Pool(
            str(entry["name"]),
            float(entry["size"]),
            float(entry["b"]),
            float(entry[key]),
            bool(entry.get("tau_identified", True)),
        )
        if not (pool.size > 0 and pool.b < 0 and pool.tau > 0):
            raise ValueError(f"pool {pool.name!r}: need size > 0, b < 0, {key} > 0")
        pools.append(pool)
    if not pools:
        raise ValueError("no pools")
    a = float(data["a"])
    irreducible = float(data.get("irreducible", 0.0))
    if not (a > 0 and irreducible >= 0):
        raise ValueError("need a > 0 and irreducible >= 0")
    return Law(a, tuple(pools), model, irreducible, dict(data.get("fit", {})))
