"""Evidence before compute: a planned mix or a score measured against random data at the same
budget, with the small proxy trainings of `curate.scaling.proxy_runs`.

`compare_to_random`: the pool law fitted to proxy runs on the quality pools and a second law
fitted to the same runs on random pools of the same sizes (same checkpoints, seeds and held-out
rows). Per budget: the chosen prefix, its predicted loss, the predicted loss of random data of
the same size and of all data, and their difference with an uncertainty (the spread of per-seed
fits with 2+ seeds, else a residual bootstrap of both fits). A mix beats random only when it is
better by more than `MARGIN_SD` standard deviations, both by laws fitted to each prefix's own
runs (`Prefixes`: like with like) and by the pool laws. `evaluate_score` does this for the
quality pools of one score column, cached under OUT/scaling/evaluate/."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path
from typing import Sequence

import numpy as np

from curate.engine.progress import Progress
from curate.scaling.fit import fit_law
from curate.scaling.law import Law
from curate.scaling.runs import MIX_SEPARATOR, RunsTable, _pool_order

MARGIN_SD = 2.0  # "beats random" needs a predicted gain larger than 2 sd of the difference

BOOTSTRAP = 16  # residual-bootstrap refits per law when there is a single seed

EVALUATE_DIR = "evaluate"


def runs_table(rows: Sequence[dict]) -> RunsTable:
    """RunsTable from proxy_runs rows (trusted: generated here; `read_runs` checks user files)."""
    sizes: dict[str, float] = {}
    for r in rows:
        if MIX_SEPARATOR not in str(r["pool"]):
            sizes.setdefault(str(r["pool"]), float(r["pool_size"]))
    names = _pool_order(sizes)
    index = {n: i for i, n in enumerate(names)}
    members = [tuple(sorted(index[p] for p in str(r["pool"]).split(MIX_SEPARATOR))) for r in rows]
    return RunsTable(
        pool_names=names,
        pool_sizes=np.array([sizes[n] for n in names]),
        members=members,
        mix_size=np.array([sum(sizes[names[i]] for i in m) for m in members]),
        samples_seen=np.array([float(r["samples_seen"]) for r in rows]),
        loss=np.array([float(r["loss"]) for r in rows]),
    )


REFIT_EVALUATIONS = 200  # per spread refit (one start): the main fits keep fit_law's defaults


def _fit(table: RunsTable, model: str, irreducible: float, starts: int = 4, max_nfev: int = 2000):
    return fit_law(table, model, irreducible, starts=starts, max_nfev=max_nfev)


class Prefixes:
    """Predicted loss of each prefix (pools 0..j-1) at planning sizes, from a law fitted to that
    prefix's own runs as one pool (the pool law's shape, a, b and tau for the prefix itself).
    The pool law builds a mix from per-pool utilities with a size-weighted mixing rule, which
    misjudges mixes of pools that differ in kind: on Debian prototype pools it over-predicted
    every quality mix while the random pools, which do not differ, fitted well, so raw
    predictions called equal mixes "worse than random". Fitting quality prefix j and random
    prefix j the same way compares like with like. A prefix without runs of its own (mix_epochs
    = []) falls back to the pool law."""

    def __init__(
        self,
        law: Law,
        table: RunsTable,
        plan_sizes: Sequence[float],
        model: str,
        irreducible: float,
        evaluations: int,
        default_tau: float,
    ):
        self.law = law.with_sizes(plan_sizes)
        unique = np.cumsum(plan_sizes)
        self.prefix_laws: list[Law | None] = []
        for j in range(1, len(law.pools) + 1):
            rows = [r for r, m in enumerate(table.members) if m == tuple(range(j))]
            if len(rows) < 2:
                self.prefix_laws.append(None)
                continue
            single = RunsTable(
                ["prefix"],
                np.array([table.mix_size[rows[0]]]),
                [(0,)] * len(rows),
                table.mix_size[rows],
                table.samples_seen[rows],
                table.loss[rows],
            )
            fitted = fit_law(single, model, irreducible, default_tau=default_tau, starts=1, max_nfev=evaluations).law
            self.prefix_laws.append(fitted.with_sizes([unique[j - 1]]))

    def loss(self, budget: float, j: int) -> float:
        own = self.prefix_laws[j - 1]
        return float(own.loss(budget, [0])[0]) if own is not None else float(self.law.loss(budget, range(j))[0])

    def all(self, budget: float) -> np.ndarray:
        return np.array([self.loss(budget, j) for j in range(1, len(self.law.pools) + 1)])


def _pair(
    quality: RunsTable, random: RunsTable, model: str, irreducible: float, plan_sizes, starts: int = 1
) -> tuple[Prefixes, Prefixes]:
    evaluations = 2000 if starts > 1 else REFIT_EVALUATIONS
    q_law, r_law = (_fit(t, model, irreducible, starts, evaluations).law for t in (quality, random))
    # a prefix seen at most once has no half-life of its own: both sides get the same one (the
    # random pools' median, the data's own repetition decay), never one side's pool-0 value
    taus = [p.tau for p in r_law.pools if p.tau_identified] or [p.tau for p in r_law.pools]
    tau = float(np.median(taus))
    return Prefixes(q_law, quality, plan_sizes, model, irreducible, evaluations, tau), Prefixes(
        r_law, random, plan_sizes, model, irreducible, evaluations, tau
    )


def _bootstrap(
    quality: Sequence[dict], random: Sequence[dict], model: str, irreducible: float, seed: int, plan_sizes
) -> list[tuple[Prefixes, Prefixes]]:
    """Residual bootstrap: both laws refitted to their own fitted values times resampled residuals."""
    rng = np.random.default_rng([seed, 41])
    fitted = []
    for rows in (quality, random):
        table = runs_table(rows)
        fitted.append((table, _fit(table, model, irreducible)))
    pairs = []
    for _ in range(BOOTSTRAP):
        tables = []
        for table, result in fitted:
            log_pred = np.log(table.loss) + result.residuals
            resampled = rng.choice(result.residuals, size=len(result.residuals), replace=True)
            tables.append(replace(table, loss=np.exp(log_pred - resampled)))
        pairs.append(_pair(tables[0], tables[1], model, irreducible, plan_sizes))
    return pairs


def _per_seed(
    quality: Sequence[dict], random: Sequence[dict], model: str, irreducible: float, plan_sizes
) -> list[tuple[Prefixes, Prefixes]]:
    """One (quality, random) pair per seed both sides share (empty with fewer than 2)."""
    seeds = sorted({int(r.get("seed", 0)) for r in quality} & {int(r.get("seed", 0)) for r in random})
    if len(seeds) < 2:
        return []
    return [
        _pair(
            runs_table([r for r in quality if int(r.get("seed", 0)) == s]),
            runs_table([r for r in random if int(r.get("seed", 0)) == s]),
            model,
            irreducible,
            plan_sizes,
        )
        for s in seeds
    ]


def compare_to_random(
    quality: Sequence[dict],
    random: Sequence[dict],
    budgets: Sequence[float],
    model: str,
    irreducible: float = 0.0,
    sizes: Sequence[float] | None = None,
    seed: int = 0,
    quality_law: Law | None = None,
) -> dict:
    """Per budget: the best prefix of the pools against random data of the same size and all
    data, with the difference's sd; and the overall verdict (see the module docstring).

    One model answers per budget: the quality pool law (`quality_law`, the budget plan's own law
    when the report passes it) picks the chosen prefix and predicts it and all the data, so the
    same rows never get two losses and a chosen mix that is every pool predicts exactly "all
    data". Random data of a smaller size is predicted by the law fitted to the random-pool runs.
    The per-prefix fits (`Prefixes`) are shown beside as a check: a claim needs both readings."""
    q_table, r_table = runs_table(quality), runs_table(random)
    plan_sizes = list(sizes) if sizes is not None else list(q_table.pool_sizes)
    q, r = _pair(q_table, r_table, model, irreducible, plan_sizes, starts=4)
    plan_law = quality_law.with_sizes(plan_sizes) if quality_law is not None else q.law
    # Two spreads, the larger wins: the residual bootstrap (fit noise given the runs' scatter) and,
    # with 2+ seeds, the spread of per-seed fits (run-to-run noise; an sd from 2-3 values is itself
    # noisy, so it alone let equal pools "beat" each other in 1 of ~6 synthetic draws)
    spreads = {
        "bootstrap": _bootstrap(quality, random, model, irreducible, seed, plan_sizes),
        "seeds": _per_seed(quality, random, model, irreducible, plan_sizes),
    }
    spreads = {k: v for k, v in spreads.items() if v}
    method = (
        f"the larger of a residual bootstrap of both fits ({BOOTSTRAP} refits each)"
        + (
            f" and the spread of one fit per seed ({len(spreads['seeds'])} seeds)"
            if "seeds" in spreads
            else "; 1 seed"
        )
        + ", at the chosen prefix"
    )
    unique = np.cumsum(plan_sizes)
    k = len(plan_sizes)
    names = q.law.names

    def spread(budget: float, i: int) -> float:
        return max(
            float(np.std([a.loss(budget, i) - b.loss(budget, i) for a, b in pairs], ddof=1))
            for pairs in spreads.values()
        )

    def pool_law(budget: float, i: int) -> tuple[float, float]:
        """The same difference from the pool laws (mixes by the mixing rule) and its sd."""
        d = float(plan_law.loss(budget, range(i))[0] - r.law.loss(budget, range(i))[0])
        sd = max(
            float(
                np.std(
                    [float(a.law.loss(budget, range(i))[0] - b.law.loss(budget, range(i))[0]) for a, b in pairs],
                    ddof=1,
                )
            )
            for pairs in spreads.values()
        )
        return d, sd

    def claim(budget: float, i: int, d: float, sd: float) -> str:
        """A claim needs both readings: the prefix fits (like with like, but each prefix is fitted
        on few runs, so picking the best of them flatters one by chance: 5 of 16 synthetic draws
        of truly random pools "beat random" on them alone) and the pool laws (which misjudge mixes
        of unlike pools: 5 of 11 claims failed on Debian). Together: 0 of 16 such draws
        (docs/design/scaling.md)."""
        own, law = _status(d, sd), _status(*pool_law(budget, i))
        return own if own == law else "no_better_than_random"

    entries = []
    for budget in budgets:
        q_losses, r_losses = q.all(budget), r.all(budget)  # per-prefix fits: the check
        plan_losses = np.array([float(plan_law.loss(budget, range(i))[0]) for i in range(1, k + 1)])
        random_losses = np.array([float(r.law.loss(budget, range(i))[0]) for i in range(1, k + 1)])
        j = int(np.argmin(plan_losses)) + 1
        everything = float(plan_losses[-1])
        chosen = float(plan_losses[j - 1])
        same = everything if j == k else float(random_losses[j - 1])
        difference, sd = pool_law(budget, j) if j < k else (0.0, 0.0)
        status = (
            "all_data" if j == k else claim(budget, j, float(q_losses[j - 1] - r_losses[j - 1]), spread(budget, j))
        )
        candidates = []
        for i in range(1, k):  # every strict prefix against random data of its size (the chosen one included)
            d, s_i = float(q_losses[i - 1] - r_losses[i - 1]), spread(budget, i)
            law_d, law_sd = pool_law(budget, i)
            candidates.append(
                {
                    "pools": names[:i],
                    "unique": int(round(unique[i - 1])),
                    "predicted_loss": float(plan_losses[i - 1]),
                    "random_same_size": float(random_losses[i - 1]),
                    "difference": law_d,
                    "difference_sd": law_sd,
                    "prefix_fit_difference": d,
                    "prefix_fit_difference_sd": s_i,
                    "status": claim(budget, i, d, s_i),
                }
            )
        # the alternative to a mix that does not beat random: all the data, unless a smaller random
        # subset predicts lower by more than MARGIN_SD sd (below one pass every size predicts the
        # same loss, so a smaller "best" size there is fit noise)
        alt = k
        for i in np.argsort(r_losses[:-1]):
            sd_i = max(
                float(np.std([b.loss(budget, i + 1) - b.loss(budget, k) for _, b in pairs], ddof=1))
                for pairs in spreads.values()
            )
            if r_losses[i] - r_losses[-1] < -MARGIN_SD * sd_i and random_losses[i] < everything:
                alt = int(i) + 1
            break
        entries.append(
            {
                "budget": float(budget),
                "pools": names[:j],
                "unique": int(round(unique[j - 1])),
                "epochs": float(budget / unique[j - 1]),
                "predicted_loss": chosen,
                "random_same_size": same,
                "all_data": everything,
                "all_data_unique": int(round(unique[-1])),
                "difference": difference,
                "difference_sd": sd,
                "prefix_fit_difference": float(q_losses[j - 1] - r_losses[j - 1]) if j < k else 0.0,
                "prefix_fit_difference_sd": spread(budget, j) if j < k else 0.0,
                "relative_difference": difference / same if same else float("nan"),
                "status": status,
                "candidates": candidates,
                "alternative": {
                    "kind": "all_data" if alt == k else "random_subset",
                    "unique": int(round(unique[alt - 1])),
                    "epochs": float(budget / unique[alt - 1]),
                    "predicted_loss": everything if alt == k else float(random_losses[alt - 1]),
                },
            }
        )
    beats = [e for e in entries if e["status"] == "beats_random"]
    return {
        "verdict": "beats_random" if beats else "no_better_than_random",
        "margin_sd": MARGIN_SD,
        "uncertainty": method,
        "prefix_fits": [
            {"pools": names[: j + 1], "quality": _law_brief(ql), "random": _law_brief(rl)}
            for j, (ql, rl) in enumerate(zip(q.prefix_laws, r.prefix_laws))
        ],
        "budgets": entries,
        "random_law": {
            "a": r.law.a,
            "pools": [{"name": p.name, "size": p.size, "b": p.b, "tau": p.tau} for p in r.law.pools],
            "rmse_log": r.law.fit.get("rmse_log"),
        },
        "quality_law_rmse_log": q.law.fit.get("rmse_log"),
        "model": "the quality pool law (the budget plan's) predicts every candidate and all the data; "
        "the random-pool law predicts random data of a smaller size; per-prefix fits are a check beside",
    }


def _law_brief(law: Law | None) -> dict | None:
    return (
        None
        if law is None
        else {
            "a": law.a,
            "b": law.pools[0].b,
            "tau": law.pools[0].tau,
            "tau_identified": law.pools[0].tau_identified,
            "rmse_log": law.fit.get("rmse_log"),
        }
    )


def _status(difference: float, sd: float) -> str:
    if np.isfinite(sd) and difference < -MARGIN_SD * sd:
        return "beats_random"
    if np.isfinite(sd) and difference > MARGIN_SD * sd:
        return "worse_than_random"
    return "no_better_than_random"


def safe_name(column: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", column) or "_"


def score_pools(scores: np.ndarray, pools: int, higher_is_better: bool) -> np.ndarray:
    """Quantile pools of a score, pool 0 the best (the pools stage's rule)."""
    from curate.algorithms.pools import assign_pools, pool_edges

    return assign_pools(scores, pool_edges(scores, pools, higher_is_better), higher_is_better).astype(np.int64)


def score_direction(column: str, prototypes_keep: str | None, direction: str = "auto") -> tuple[bool, str]:
    """Whether larger scores are better, and why: as given, or the pools stage's auto rule."""
    if direction in ("higher", "lower"):
        return direction == "higher", f"{direction} is better (as given)"
    if column == "proto_distance":
        if prototypes_keep == "easy":
            return False, "proto_distance with prototypes keep = easy in this run: closer to a prototype is better"
        return True, "proto_distance: harder (farther from a prototype) is better"
    if any(h in column.lower() for h in ("loss", "perplexity", "ppl")):
        return False, f"'{column}' looks like a loss or perplexity: lower is better"
    return True, f"'{column}' is taken as a quality score: higher is better (pass --direction lower otherwise)"


def evaluate_score(
    out: Path,
    kept,
    column: str,
    settings,
    text_column: str,
    seed: int,
    direction: str,
    prototypes_keep: str | None,
    rerun: bool,
    progress: Progress,
) -> dict:
    """Pools of one score column vs random pools, cached in OUT/scaling/evaluate/<column>/."""
    from curate.scaling import save_json
    from curate.scaling.law import REPETITION_NAMES

    directory = out / "scaling" / EVALUATE_DIR / safe_name(column)
    higher, why = score_direction(column, prototypes_keep, direction)
    values = kept.get_column(column).cast(float).to_numpy().astype(np.float64)
    pools = score_pools(values, settings.pools, higher)
    quality, random = proxy_rows(out, directory, kept, pools, settings, text_column, seed, rerun, progress)
    counts = np.bincount(pools, minlength=settings.pools)
    budgets = settings.budgets or _default_budgets(counts)
    comparison = compare_to_random(
        quality,
        random,
        budgets,
        REPETITION_NAMES[settings.repetition],
        settings.irreducible,
        sizes=[float(c) for c in counts if c],
        seed=seed,
    )
    evidence = {
        "score": column,
        "higher_is_better": higher,
        "direction_reason": why,
        "pools": settings.pools,
        "pool_rows": counts.tolist(),
        "comparison": comparison,
    }
    save_json(directory / "evidence.json", evidence)
    return evidence


def _default_budgets(counts: np.ndarray) -> list[float]:
    return [float(b) for b in np.geomspace(0.1 * counts[0], 100.0 * counts.sum(), 8)]


def proxy_rows(
    out: Path,
    directory: Path,
    kept,
    pools: np.ndarray,
    settings,
    text_column: str,
    seed: int,
    rerun: bool,
    progress: Progress,
) -> tuple[list[dict], list[dict]]:
    """Proxy runs on the pools and on random pools of the same sizes, cached as CSV in `directory`."""
    from curate.scaling.proxy_runs import EXTRA_COLUMNS, ProxyRunSettings, run_proxy_trainings
    from curate.scaling.runs import write_runs

    proxy = ProxyRunSettings(
        epochs=tuple(settings.epochs),
        mix_epochs=tuple(settings.mix_epochs),
        heldout_fraction=settings.heldout_fraction,
        classes=settings.classes,
        seeds=settings.seeds,
        metric=settings.metric,
        seed=seed,
    )
    fingerprint = {"pools": np.bincount(pools[pools >= 0]).tolist(), "settings": repr(proxy)}
    meta = directory / "runs_meta.json"
    paths = {"quality": directory / "runs.csv", "random": directory / "runs_random.csv"}
    if (
        not rerun
        and meta.exists()
        and all(p.exists() for p in paths.values())
        and json.loads(meta.read_text()) == fingerprint
    ):
        return read_rows(paths["quality"]), read_rows(paths["random"])
    texts = kept.get_column(text_column).to_arrow()
    labels = kept.get_column(settings.label_column).to_list()
    quality = run_proxy_trainings(texts, labels, pools, proxy, progress)
    random = run_proxy_trainings(texts, labels, pools, proxy, progress, random_pools=True)
    write_runs(paths["quality"], quality, EXTRA_COLUMNS)
    write_runs(paths["random"], random, EXTRA_COLUMNS)
    from curate.scaling import save_json

    save_json(meta, fingerprint)
    return quality, random


def read_rows(path: Path) -> list[dict]:
    import csv

    with open(path, newline="", encoding="utf-8") as handle:
        return [dict(r) for r in csv.DictReader(handle)]


def load_evaluations(out: Path) -> list[dict]:
    """Every cached score evaluation in OUT (so `curate report OUT` keeps them)."""
    root = out / "scaling" / EVALUATE_DIR
    found = []
    for path in sorted(root.glob("*/evidence.json")) if root.exists() else []:
        try:
            found.append(json.loads(path.read_text()))
        except (OSError, json.JSONDecodeError):
            continue
    return found
