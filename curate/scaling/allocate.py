"""Compute-aware allocation: for a budget C (samples seen), the quality prefix that a law
predicts to train best, and the budgets where the choice changes.

Candidates are the prefixes M_j = {0..j-1} (best data first). Predictions are vectorized over
budgets, so a whole budget sweep is one law evaluation per candidate."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy.optimize import minimize

from curate.errors import UsageError
from curate.scaling.law import Law, WeightedMix

MIX_MODES = ("prefix", "weighted")

SEARCH_POINTS = 4000  # log-spaced budgets scanned for crossovers before bisection


@dataclass(frozen=True)
class Allocation:
    budget: float
    prefix: int | None  # j: pools 0..j-1 (None: a weighted plan)
    pools: list[str]
    unique: float
    epochs: float
    predicted_loss: float
    candidates: list[tuple[list[str], float]]  # every prefix and its predicted loss
    candidate_unique: list[float]
    shares: dict[str, float] | None = None  # share of the samples seen per pool (pools in the plan)
    pool_epochs: dict[str, float] | None = None  # passes over each pool in the plan
    samples_seen: float | None = None  # the budget in samples (differs from `budget` when it is in tokens)
    within_caps: bool = True  # False: the budget cannot be spent under the caps; the plan is for spendable_budget
    spendable_budget: float | None = None
    mix: str = "prefix"
    best_prefix: tuple[list[str], float] | None = None  # weighted plans: the best prefix they never lose to
    candidate_feasible: list[bool] | None = None
    candidate_samples: list[float] | None = None  # samples seen by each prefix (token budgets: per prefix)

    def to_json(self) -> dict:
        samples = self.samples_seen if self.samples_seen is not None else self.budget
        out = {
            "budget": self.budget,
            "mix": self.mix,
            "pools": self.pools,
            "unique": int(round(self.unique)),
            "epochs": self.epochs,
            "predicted_loss": self.predicted_loss,
            "shares": self.shares,
            "pool_epochs": self.pool_epochs,
            "samples_seen": samples,
            "within_caps": self.within_caps,
            "spendable_budget": self.spendable_budget,
            "candidates": [
                {
                    "pools": p,
                    "unique": int(round(u)),
                    "epochs": (samples if self.candidate_samples is None else self.candidate_samples[i]) / u,
                    "predicted_loss": y,
                    **({} if self.candidate_feasible is None else {"within_caps": self.candidate_feasible[i]}),
                }
                for i, ((p, y), u) in enumerate(zip(self.candidates, self.candidate_unique))
            ],
        }
        if self.best_prefix is not None:
            out["best_prefix"] = {"pools": self.best_prefix[0], "predicted_loss": self.best_prefix[1]}
        return out


def prefix_sizes(law: Law) -> np.ndarray:
    return np.cumsum([p.size for p in law.pools])


def candidate_log_losses(law: Law, budgets: np.ndarray) -> np.ndarray:
    """log predicted loss, shape (prefixes, budgets); row j-1 is the prefix of j pools."""
    budgets = np.atleast_1d(np.asarray(budgets, dtype=np.float64))
    return np.vstack([law.log_loss(budgets, range(j)) for j in range(1, len(law.pools) + 1)])


def allocate(law: Law, budgets: Sequence[float]) -> list[Allocation]:
    """The best prefix per budget (ties go to fewer pools: less data to curate)."""
    budgets = np.asarray(budgets, dtype=np.float64)
    logs = candidate_log_losses(law, budgets)
    sizes = prefix_sizes(law)
    names = law.names
    out = []
    for column, budget in enumerate(budgets):
        j = int(np.argmin(logs[:, column])) + 1
        allocation = Allocation(
            budget=float(budget),
            prefix=j,
            pools=names[:j],
            unique=float(sizes[j - 1]),
            epochs=float(budget / sizes[j - 1]),
            predicted_loss=float(np.exp(logs[j - 1, column])),
            candidates=[(names[:i], float(np.exp(logs[i - 1, column]))) for i in range(1, len(names) + 1)],
            candidate_unique=[float(s) for s in sizes],
            shares={p.name: p.size / sizes[j - 1] for p in law.pools[:j]},
            pool_epochs={p.name: float(budget / sizes[j - 1]) for p in law.pools[:j]},
        )
        out.append(allocation)
    return out


@dataclass(frozen=True)
class Constraints:
    """What a plan must respect: a repetition cap per pool (inf = none) and, for budgets in tokens,
    the mean tokens per sample of each pool (None: budgets are samples seen)."""

    max_epochs: tuple[float, ...] | None = None
    tokens_per_sample: tuple[float, ...] | None = None

    def caps(self, k: int) -> np.ndarray:
        return np.full(k, np.inf) if self.max_epochs is None else np.asarray(self.max_epochs, dtype=np.float64)

    def lengths(self, k: int) -> np.ndarray:
        return np.ones(k) if self.tokens_per_sample is None else np.asarray(self.tokens_per_sample, dtype=np.float64)


CAP_SLACK = 1e-9  # relative: float error at a cap is not a breach


def _samples(budget: float, shares: np.ndarray, lengths: np.ndarray) -> float:
    """Samples seen when `budget` (in the plan's unit) is spent with these shares."""
    return float(budget / np.dot(shares, lengths))


def _spendable(sizes: np.ndarray, caps: np.ndarray, lengths: np.ndarray, members: Sequence[int]) -> float:
    """The largest budget a set of pools can take without breaching a cap: uniform sampling over
    a prefix (every member at the same passes), so the tightest cap binds."""
    m = list(members)
    return float(np.min(caps[m]) * np.dot(sizes[m], lengths[m]))


def _optimise_shares(
    weighted: WeightedMix, budget: float, caps: np.ndarray, lengths: np.ndarray, starts: list[np.ndarray]
) -> tuple[np.ndarray, float] | None:
    """The shares with the lowest predicted loss at `budget` under the caps: SLSQP over the simplex
    from each start (deterministic), caps as linear constraints share_i budget <= cap_i p_i (w . L)."""
    sizes = weighted.sizes
    k = len(sizes)

    def objective(w: np.ndarray) -> float:
        w = np.clip(w, 0.0, 1.0)
        return weighted.log_loss(_samples(budget, w, lengths) if w.sum() > 0 else budget, w)

    constraints = [{"type": "eq", "fun": lambda w: np.sum(w) - 1.0}]
    finite = np.isfinite(caps)
    if finite.any():
        # budget * w_i / (w . L) / p_i <= cap_i  <=>  cap_i p_i (w . L) - budget w_i >= 0 (samples: L = 1)
        constraints.append(
            {
                "type": "ineq",
                "fun": lambda w: (
                    (caps[finite] * sizes[finite] * np.dot(w, lengths) - budget * w[finite])
                    / (caps[finite] * sizes[finite])
                ),
            }
        )
    best = None
    for start in starts:
        result = minimize(
            objective,
            start,
            method="SLSQP",
            bounds=[(0.0, 1.0)] * k,
            constraints=constraints,
            options={"maxiter": 200, "ftol": 1e-12},
        )
        w = np.clip(result.x, 0.0, 1.0)
        w[w < 1e-9] = 0.0
        if w.sum() <= 0:
            continue
        w = w / w.sum()
        if not _within_caps(w, budget, sizes, caps, lengths):
            continue
        value = objective(w)
        if best is None or value < best[1] - 1e-15:
            best = (w, value)
    return best


def _within_caps(w: np.ndarray, budget: float, sizes: np.ndarray, caps: np.ndarray, lengths: np.ndarray) -> bool:
    epochs = w * _samples(budget, w, lengths) / sizes
    return bool(np.all(epochs <= caps * (1 + CAP_SLACK) + 1e-12))


def allocate_constrained(
    law: Law, budgets: Sequence[float], mix: str = "prefix", constraints: Constraints = Constraints()
) -> list[Allocation]:
    """Per budget the best plan under repetition caps, budgets in samples or tokens.

    prefix: the best quality prefix within the caps. weighted: free shares per pool, optimised
    from every feasible prefix (and the size-proportional and equal mixes of all pools) as starts,
    and never worse than the best prefix (it is kept when the optimiser finds nothing better).
    A budget the caps cannot absorb is planned at the largest budget they allow and flagged."""
    if mix not in MIX_MODES:
        raise ValueError(f"mix must be one of {MIX_MODES}")
    k = len(law.pools)
    sizes = np.array([p.size for p in law.pools])
    caps, lengths = constraints.caps(k), constraints.lengths(k)
    names = law.names
    unique = np.cumsum(sizes)
    weighted = WeightedMix(law)
    prefix_shares = [np.r_[sizes[:j], np.zeros(k - j)] / unique[j - 1] for j in range(1, k + 1)]
    spend_prefix = [_spendable(sizes, caps, lengths, range(j)) for j in range(1, k + 1)]
    spend_all = float(np.sum(caps * sizes * lengths))  # every pool at its own cap (weighted plans)
    out = []
    for asked in budgets:
        asked = float(asked)
        limit = spend_all if mix == "weighted" else max(spend_prefix)
        budget = min(asked, limit)
        within = asked <= limit * (1 + CAP_SLACK)
        samples = [_samples(budget, w, lengths) for w in prefix_shares]
        logs = [float(law.log_loss(n, range(j + 1))[0]) for j, n in enumerate(samples)]
        feasible = [budget <= spend_prefix[j] * (1 + CAP_SLACK) for j in range(k)]
        options = [j for j in range(k) if feasible[j]]
        best_j = min(options, key=lambda j: (logs[j], j)) if options else None
        shares = prefix_shares[best_j] if best_j is not None else None
        value = logs[best_j] if best_j is not None else np.inf
        if mix == "weighted":
            starts = [prefix_shares[j] for j in options]
            starts += [sizes / sizes.sum(), np.full(k, 1.0 / k)]
            capped = np.minimum(1.0, caps * sizes * lengths / max(budget, 1e-300))
            if np.isfinite(caps).any():
                starts.append(capped / capped.sum())
            found = _optimise_shares(weighted, budget, caps, lengths, starts)
            if found is not None and found[1] < value - 1e-12:
                shares, value = found
            if shares is None:  # at the limit only every pool at its cap fits
                shares = caps * sizes * lengths / spend_all
                value = weighted.log_loss(_samples(budget, shares, lengths), shares)
        used = [i for i in range(k) if shares[i] > 0]
        n = _samples(budget, shares, lengths)
        out.append(
            Allocation(
                budget=asked,
                prefix=(best_j + 1) if (mix == "prefix" and best_j is not None) else None,
                pools=[names[i] for i in used],
                unique=float(sizes[used].sum()),
                epochs=float(n / sizes[used].sum()),
                predicted_loss=float(np.exp(value)),
                candidates=[(names[: j + 1], float(np.exp(logs[j]))) for j in range(k)],
                candidate_unique=[float(u) for u in unique],
                shares={names[i]: float(shares[i]) for i in used},
                pool_epochs={names[i]: float(shares[i] * n / sizes[i]) for i in used},
                samples_seen=n,
                within_caps=within,
                spendable_budget=None if within else budget,
                mix=mix,
                best_prefix=(names[: best_j + 1], float(np.exp(logs[best_j]))) if best_j is not None else None,
                candidate_feasible=feasible,
                candidate_samples=samples,
            )
        )
    return out


def _best_prefix(law: Law, budgets: np.ndarray) -> np.ndarray:
    return np.argmin(candidate_log_losses(law, budgets), axis=0) + 1


def _bisect(predicate, lo: float, hi: float, iterations: int = 60) -> float:
    """The log-space boundary between lo (predicate False) and hi (predicate True)."""
    llo, lhi = np.log(lo), np.log(hi)
    for _ in range(iterations):
        mid = 0.5 * (llo + lhi)
        if predicate(float(np.exp(mid))):
            lhi = mid
        else:
            llo = mid
    return float(np.exp(lhi))


def planning_range(law: Law, budgets: Sequence[float] = ()) -> tuple[float, float]:
    """Budgets to scan: from well inside the best pool's first pass to 1000 passes over everything."""
    sizes = prefix_sizes(law)
    lo = min([0.01 * sizes[0], *budgets])
    hi = max([1000.0 * sizes[-1], *budgets])
    return float(lo), float(hi)


def switches(law: Law, lo: float, hi: float) -> list[dict]:
    """Budgets in [lo, hi] where the chosen prefix changes (the envelope's corners)."""
    grid = np.geomspace(lo, hi, SEARCH_POINTS)
    best = _best_prefix(law, grid)
    names = law.names
    out = []
    for i in np.nonzero(best[1:] != best[:-1])[0]:
        before, after = int(best[i]), int(best[i + 1])
        budget = _bisect(
            lambda c: int(_best_prefix(law, np.array([c]))[0]) != before, float(grid[i]), float(grid[i + 1])
        )
        out.append({"budget": budget, "from": names[:before], "to": names[:after]})
    return out


def crossovers(law: Law, lo: float, hi: float) -> list[dict]:
    """For each j: the first budget in [lo, hi] from which adding pool j to pools 0..j-1 predicts a
    lower loss (None if it never does in range; lo itself if it already does at lo)."""
    grid = np.geomspace(lo, hi, SEARCH_POINTS)
    logs = candidate_log_losses(law, grid)
    names = law.names
    out = []
    for j in range(1, len(names)):
        pays = logs[j] < logs[j - 1]
        entry = {"add_pool": names[j], "from": names[:j], "to": names[: j + 1], "budget": None}
        if pays[0]:
            entry["budget"] = float(lo)
            entry["pays_from_start"] = True
        elif pays.any():
            i = int(np.argmax(pays))
            entry["budget"] = _bisect(
                lambda c: bool(law.log_loss(c, range(j + 1))[0] < law.log_loss(c, range(j))[0]),
                float(grid[i - 1]),
                float(grid[i]),
            )
        out.append(entry)
    return out


def log_budget_range(text: str) -> list[float]:
    """'1e4:1e9:20' -> 20 log-spaced budgets from 1e4 to 1e9 inclusive."""
    parts = text.split(":")
    if len(parts) != 3:
        raise ValueError("a range is START:STOP:COUNT")
    start, stop, count = float(parts[0]), float(parts[1]), int(parts[2])
    if not (0 < start < stop) or count < 2:
        raise ValueError("need 0 < START < STOP and COUNT >= 2")
    return [float(x) for x in np.geomspace(start, stop, count)]


def plan(
    law: Law,
    budgets: Sequence[float],
    mix: str = "prefix",
    constraints: Constraints = Constraints(),
    budget_unit: str = "samples",
) -> dict:
    """MIX.json: one budget -> the scaling-laws.md object (plus crossovers); several -> {"mixes": [...], ...}.
    Crossovers and switches are those of the unconstrained prefix plan in samples seen."""
    plain = mix == "prefix" and constraints == Constraints()
    allocations = allocate(law, budgets) if plain else allocate_constrained(law, budgets, mix, constraints)
    lo, hi = planning_range(law, budgets)
    extra = {
        "model": law.model,
        "mix": mix,
        "budget_unit": budget_unit,
        "max_epochs": None
        if constraints.max_epochs is None
        else {p.name: (None if not np.isfinite(c) else c) for p, c in zip(law.pools, constraints.max_epochs)},
        "tokens_per_sample": None
        if constraints.tokens_per_sample is None
        else {p.name: t for p, t in zip(law.pools, constraints.tokens_per_sample)},
        "pool_sizes": {p.name: int(round(p.size)) for p in law.pools},
        "crossovers": crossovers(law, lo, hi),
        "switches": switches(law, lo, hi),
        "search_range": [lo, hi],
    }
    if len(allocations) == 1:
        return {**allocations[0].to_json(), **extra}
    return {"mixes": [a.to_json() for a in allocations], **extra}


def parse_budgets(text: str) -> list[float]:
    """'1e6,1e7' (a list) or '1e4:1e9:20' (20 log-spaced); UsageError if malformed or not positive."""
    fix = "write C1,C2,... or START:STOP:COUNT (log range), e.g. 1e4:1e9:20"
    try:
        budgets = log_budget_range(text) if ":" in text else [float(x) for x in text.split(",") if x.strip()]
    except ValueError as exc:
        raise UsageError(f"bad budgets {text!r} ({exc})", fix=fix) from None
    if not budgets or not all(np.isfinite(b) and b > 0 for b in budgets):
        raise UsageError(f"bad budgets {text!r}: need positive numbers", fix=fix)
    return sorted(budgets)
