"""Fit a law to runs: bounded least squares on log loss, started from a coarse grid.

Plain local fits of these laws are unstable (Goyal et al. say so), so: for a fixed set of
repetition parameters the law is linear in (log a, b) (see law.utility_features), which gives a
cheap exact solve per grid point; a shared-tau grid, then one per-pool coordinate sweep, picks
the starts, and scipy's bounded least_squares refines the best few in all parameters."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import least_squares, lsq_linear

from curate.scaling.law import GOYAL, MUENNIGHOFF, R_STAR, Law, Pool, log_loss_mix, utility_features
from curate.scaling.runs import RunsTable

DEFAULT_TAU = 5.0  # epochs; about the middle of Goyal et al.'s published half-lives (2.3 to 8.6)
B_BOUNDS = (-10.0, -1e-8)
LOG_A_BOUNDS = (-40.0, 40.0)
LOG_TAU_BOUNDS = (np.log(0.05), np.log(1e4))
TAU_GRID = {GOYAL: np.geomspace(0.25, 256.0, 11), MUENNIGHOFF: np.geomspace(0.5, 500.0, 10)}


@dataclass
class FitResult:
    law: Law
    residuals: np.ndarray  # per run: log predicted - log observed
    warnings: list[str] = field(default_factory=list)


def _groups(runs: RunsTable) -> list[tuple[tuple[int, ...], np.ndarray]]:
    by_mix: dict[tuple[int, ...], list[int]] = {}
    for r, members in enumerate(runs.members):
        by_mix.setdefault(members, []).append(r)
    return [(members, np.array(rows)) for members, rows in by_mix.items()]


def identified_pools(runs: RunsTable) -> np.ndarray:
    """Pools seen past one pass in some run (alone or in a mix): only their repetition parameter can be fitted."""
    past = runs.samples_seen > runs.mix_size * (1 + 1e-9)
    seen = np.zeros(len(runs.pool_names), dtype=bool)
    for r in np.nonzero(past)[0]:
        seen[list(runs.members[r])] = True
    return seen


class _Problem:
    """Residuals of log loss as a function of theta = [log a, b_0..b_K-1, log tau of identified pools]."""

    def __init__(self, runs: RunsTable, model: str, irreducible: float, free_tau: np.ndarray, fixed_tau: float):
        self.runs, self.model, self.irreducible = runs, model, irreducible
        self.groups = _groups(runs)
        self.free_tau = free_tau
        self.fixed_tau = fixed_tau
        self.k = len(runs.pool_names)
        self.log_y = np.log(runs.loss)

    def unpack(self, theta: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
        tau = np.full(self.k, self.fixed_tau)
        tau[self.free_tau] = np.exp(theta[1 + self.k :])
        return float(np.exp(theta[0])), theta[1 : 1 + self.k], tau

    def predict(self, a: float, b: np.ndarray, tau: np.ndarray) -> np.ndarray:
        out = np.empty(self.runs.rows)
        for members, rows in self.groups:
            m = list(members)
            out[rows] = log_loss_mix(
                self.runs.samples_seen[rows], self.runs.pool_sizes[m], b[m], tau[m], a, self.model, self.irreducible
            )
        return out

    def residuals(self, theta: np.ndarray) -> np.ndarray:
        return self.predict(*self.unpack(theta)) - self.log_y

    def linear_start(self, tau: np.ndarray) -> tuple[np.ndarray, float]:
        """Best (log a, b) for fixed tau, exact when irreducible = 0; returns (theta, cost)."""
        design = np.zeros((self.runs.rows, 1 + self.k))
        design[:, 0] = 1.0
        for members, rows in self.groups:
            m = list(members)
            design[np.ix_(rows, [1 + i for i in m])] = utility_features(
                self.runs.samples_seen[rows], self.runs.pool_sizes[m], tau[m], self.model
            )
        target = np.log(np.maximum(self.runs.loss - self.irreducible, 1e-12 * self.runs.loss))
        lower = np.r_[LOG_A_BOUNDS[0], np.full(self.k, B_BOUNDS[0])]
        upper = np.r_[LOG_A_BOUNDS[1], np.full(self.k, B_BOUNDS[1])]
        solved = lsq_linear(design, target, bounds=(lower, upper)).x
        theta = np.r_[solved, np.log(tau[self.free_tau])]
        return theta, float(np.sum(self.residuals(theta) ** 2))


def _clip_inside(theta: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> np.ndarray:
    span = upper - lower
    return np.clip(theta, lower + 1e-9 * span, upper - 1e-9 * span)


def fit_law(
    runs: RunsTable,
    model: str = GOYAL,
    irreducible: float = 0.0,
    default_tau: float | None = None,
    starts: int = 4,
    max_nfev: int = 2000,
) -> FitResult:
    """Fit a, b_i and the repetition parameter of every pool seen past one pass. Refits that only
    measure a spread (bootstraps) pass starts=1 and a smaller max_nfev: ill-posed subsets (one
    seed's few runs) otherwise spend seconds each at the 2,000-evaluation cap."""
    free = identified_pools(runs)
    k = len(runs.pool_names)
    grid = TAU_GRID[model]
    problem = _Problem(runs, model, irreducible, free, DEFAULT_TAU if model == GOYAL else R_STAR)

    candidates = [problem.linear_start(np.full(k, g)) for g in grid]
    best_theta, best_cost = min(candidates, key=lambda c: c[1])
    if free.sum() > 1:  # one coordinate sweep: each identified pool's tau on the grid, others held
        tau = np.full(k, problem.fixed_tau)
        tau[free] = np.exp(best_theta[1 + k :])
        for i in np.nonzero(free)[0]:
            trials = []
            for g in grid:
                trial = tau.copy()
                trial[i] = g
                trials.append((problem.linear_start(trial), g))
            (theta, cost), g = min(trials, key=lambda t: t[0][1])
            tau[i] = g
            candidates.append((theta, cost))
    candidates.sort(key=lambda c: c[1])

    lower = np.r_[LOG_A_BOUNDS[0], np.full(k, B_BOUNDS[0]), np.full(free.sum(), LOG_TAU_BOUNDS[0])]
    upper = np.r_[LOG_A_BOUNDS[1], np.full(k, B_BOUNDS[1]), np.full(free.sum(), LOG_TAU_BOUNDS[1])]
    best = None
    seen_starts: list[np.ndarray] = []
    for theta, _ in candidates:
        if len(seen_starts) >= starts:
            break
        if any(np.allclose(theta, s, rtol=1e-3, atol=1e-6) for s in seen_starts):
            continue
        seen_starts.append(theta)
        result = least_squares(
            problem.residuals,
            _clip_inside(theta, lower, upper),
            bounds=(lower, upper),
            x_scale="jac",
            xtol=1e-12,
            ftol=1e-12,
            gtol=1e-12,
            max_nfev=max_nfev,
        )
        if best is None or result.cost < best.cost:
            best = result
    a, b, tau = problem.unpack(best.x)

    warnings: list[str] = []
    if (~free).any():
        if default_tau is None:
            default_tau = float(np.median(tau[free])) if free.any() else problem.fixed_tau
            how = (
                "the median of the identified pools"
                if free.any()
                else ("Goyal et al.'s typical half-life" if model == GOYAL else "Muennighoff et al.'s R*")
            )
        else:
            how = "given"
        name = "tau" if model == GOYAL else "r_star"
        for i in np.nonzero(~free)[0]:
            tau[i] = default_tau
            warnings.append(
                f"pool {runs.pool_names[i]}: no run past one pass, so its {name} is unidentified; set to {default_tau:.3g} ({how})"
            )

    residuals = problem.predict(a, b, tau) - problem.log_y
    pools = tuple(
        Pool(n, float(s), float(bi), float(ti), bool(f))
        for n, s, bi, ti, f in zip(runs.pool_names, runs.pool_sizes, b, tau, free)
    )
    per_label: dict[str, list[float]] = {}
    for r in range(runs.rows):
        per_label.setdefault(runs.label(r), []).append(float(residuals[r]))
    fit_info = {
        "rmse_log": float(np.sqrt(np.mean(residuals**2))),
        "runs": runs.rows,
        "unit": runs.unit,
        "rmse_log_per_pool": {label: float(np.sqrt(np.mean(np.square(v)))) for label, v in per_label.items()},
        "max_epochs_per_pool": {
            label: float(
                max(runs.samples_seen[r] / runs.mix_size[r] for r in range(runs.rows) if runs.label(r) == label)
            )
            for label in per_label
        },
        "warnings": warnings,
        "observations": [
            {
                "pool": runs.label(r),
                "pool_size": float(runs.mix_size[r]),
                "samples_seen": float(runs.samples_seen[r]),
                "loss": float(runs.loss[r]),
                "predicted": float(np.exp(residuals[r] + problem.log_y[r])),
            }
            for r in range(runs.rows)
        ],
    }
    flags = fit_flags(pools, a, runs, residuals)
    fit_info["flags"] = flags
    law = Law(a, pools, model, irreducible, fit_info)
    return FitResult(law, residuals, warnings + [f["message"] for f in flags])


TREND_MIN_RUNS = 4
TREND_MIN_LOG = 0.005  # half a percent: smaller bends are noise for any plan


def fit_flags(pools: tuple[Pool, ...], a: float, runs: RunsTable, residuals: np.ndarray) -> list[dict]:
    """What makes a fit's parameters or curve suspect, for the fit table and the report:
    a parameter pinned at a bound of the search (its value is the bound, not evidence), and a
    label whose largest-budget runs all fall on one side of the curve, further off than the rest
    (the curve bends away from the data where the plan extrapolates)."""
    flags = []
    log_tau_lo, log_tau_hi = LOG_TAU_BOUNDS
    for p in pools:
        if p.tau_identified and min(abs(np.log(p.tau) - log_tau_lo), abs(np.log(p.tau) - log_tau_hi)) < 0.01:
            flags.append(
                {
                    "kind": "at_bound",
                    "pool": p.name,
                    "parameter": "tau",
                    "value": p.tau,
                    "message": f"pool {p.name}: half-life {p.tau:.3g} is at the fit's bound "
                    f"({np.exp(log_tau_lo):.3g}..{np.exp(log_tau_hi):.3g}): the runs do not pin it down",
                }
            )
        if min(abs(p.b - B_BOUNDS[0]), abs(p.b - B_BOUNDS[1])) < 1e-6:
            flags.append(
                {
                    "kind": "at_bound",
                    "pool": p.name,
                    "parameter": "b",
                    "value": p.b,
                    "message": f"pool {p.name}: utility b {p.b:.3g} is at the fit's bound {B_BOUNDS}",
                }
            )
    if min(abs(np.log(a) - LOG_A_BOUNDS[0]), abs(np.log(a) - LOG_A_BOUNDS[1])) < 1e-6:
        flags.append(
            {
                "kind": "at_bound",
                "pool": None,
                "parameter": "a",
                "value": a,
                "message": f"scale a {a:.3g} is at a bound",
            }
        )
    labels = [runs.label(r) for r in range(runs.rows)]
    for label in dict.fromkeys(labels):
        rows = np.array([r for r in range(runs.rows) if labels[r] == label])
        if len(rows) < TREND_MIN_RUNS:
            continue
        rows = rows[np.argsort(runs.samples_seen[rows], kind="stable")]
        top = max(2, len(rows) // 3)
        ordered = residuals[rows]
        last = ordered[-top:]
        signs = np.sign(ordered)
        sign_runs = 1 + int(np.sum(signs[1:] != signs[:-1]))
        # systematic, not noise: the largest budgets on one side, few sign changes overall
        # (random residuals of 9 runs change sign ~4 times), and large enough to move a plan
        if (np.all(last > 0) or np.all(last < 0)) and sign_runs <= 3 and abs(last.mean()) > TREND_MIN_LOG:
            side = "below" if last.mean() > 0 else "above"
            flags.append(
                {
                    "kind": "residual_trend",
                    "pool": label,
                    "parameter": None,
                    "value": float(last.mean()),
                    "message": f"{'mix' if '+' in label else 'pool'} {label}: the {top} largest-budget runs all lie {side} the fitted curve "
                    f"(mean {abs(last.mean()):.3f} in log loss) and the residuals change sign only {sign_runs - 1} times: "
                    "the law bends away from the data where plans extrapolate",
                }
            )
    return flags
