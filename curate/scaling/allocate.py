"""Compute-aware allocation: for a budget C (samples seen), the quality prefix that a law
predicts to train best, and the budgets where the choice changes.

Candidates are the prefixes M_j = {0..j-1} (best data first). Predictions are vectorized over
budgets, so a whole budget sweep is one law evaluation per candidate."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from curate.errors import UsageError
from curate.scaling.law import Law

SEARCH_POINTS = 4000  # log-spaced budgets scanned for crossovers before bisection


@dataclass(frozen=True)
class Allocation:
    budget: float
    prefix: int  # j: pools 0..j-1
    pools: list[str]
    unique: float
    epochs: float
    predicted_loss: float
    candidates: list[tuple[list[str], float]]  # every prefix and its predicted loss
    candidate_unique: list[float]

    def to_json(self) -> dict:
        return {
            "budget": self.budget,
            "pools": self.pools,
            "unique": int(round(self.unique)),
            "epochs": self.epochs,
            "predicted_loss": self.predicted_loss,
            "candidates": [
                {"pools": p, "unique": int(round(u)), "epochs": self.budget / u, "predicted_loss": y}
                for (p, y), u in zip(self.candidates, self.candidate_unique)
            ],
        }


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
        )
        out.append(allocation)
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


def plan(law: Law, budgets: Sequence[float]) -> dict:
    """MIX.json: one budget -> the scaling-laws.md object (plus crossovers); several -> {"mixes": [...], ...}."""
    allocations = allocate(law, budgets)
    lo, hi = planning_range(law, budgets)
    extra = {
        "model": law.model,
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
