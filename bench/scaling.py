"""Real validation of the scaling law: fit on small budgets, predict large ones, check the allocation.

Data: shared/data/debian_descriptions.parquet (beside the checkout, see bench.corpora), predict `section` (the 20 largest) from
`text`. Pools: 4 quantile pools of out-of-fold proxy loss (pool 0 = lowest loss; a score of
its own, so the check does not lean on the prototype distance that `curate pools` uses). Runs: the hashed n-gram proxy
trained on each pool alone and on each quality prefix (0+1, 0+1+2, 0+1+2+3), all evaluated on
one held-out set (5,000 rows from all pools) at the same budgets (samples seen, with
repetition). The law is fitted on single-pool runs with budgets <= --fit-max and then predicts
(a) the single-pool runs beyond it, (b) every prefix-mix run (never fitted), and (c) which prefix
is best at each large budget, against what the proxies measured.

    python -m bench.scaling                 # about 10 min on 2 cores; runs cached in --out
    python -m bench.scaling --reuse         # refit and re-evaluate from the cached runs.csv
    python -m bench.scaling --rows 10000 --budgets 1000,2000,4000,8000 --fit-max 4000   # a quick run

The baseline in the same run is the observed loss of every run the law did not see; `--rows N`
takes a seeded sample of N rows of the corpus.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import polars as pl

from bench._harness import REPO_ROOT, add_result_argument, start_run
from bench.corpora import DEBIAN_DESCRIPTIONS as DATA
from curate.scaling.allocate import allocate
from curate.scaling.fit import fit_law
from curate.scaling.law import GOYAL, MUENNIGHOFF, law_to_json
from curate.scaling.proxy_runs import EXTRA_COLUMNS, ProxyRunSettings, run_proxy_trainings, score_pools, top_classes
from curate.scaling.runs import RunsTable, read_runs, write_runs
from curate.training.features import hashed_ngram_bags


def subset(runs: RunsTable, keep: np.ndarray) -> RunsTable:
    rows = np.nonzero(keep)[0]
    return RunsTable(
        runs.pool_names,
        runs.pool_sizes,
        [runs.members[r] for r in rows],
        runs.mix_size[rows],
        runs.samples_seen[rows],
        runs.loss[rows],
    )


def with_metric(runs_csv: Path, metric: str, out: Path) -> Path:
    """The same runs with `loss` replaced by another measured column (e.g. error)."""
    frame = pl.read_csv(runs_csv)
    frame = frame.with_columns(pl.col(metric).alias("loss"))
    path = out / f"runs_{metric}.csv"
    frame.write_csv(path)
    return path


def evaluate(runs: RunsTable, fit_max: float, model: str, irreducible: float, with_mixes: bool = False) -> dict:
    single = np.array([len(m) == 1 for m in runs.members])
    fit_rows = (runs.samples_seen <= fit_max) & (single | with_mixes)
    law = fit_law(subset(runs, fit_rows), model, irreducible).law
    predicted = np.array([np.exp(law.log_loss(runs.samples_seen[r], runs.members[r])[0]) for r in range(runs.rows)])
    rel = predicted / runs.loss - 1
    groups = {
        "fitted (single pools, <= fit_max)": fit_rows,
        "single pools beyond fit_max": single & ~fit_rows,
        "prefix mixes <= fit_max" + (" (fitted)" if with_mixes else " (never fitted)"): ~single
        & (runs.samples_seen <= fit_max),
        "prefix mixes beyond fit_max (never fitted)": ~single & (runs.samples_seen > fit_max),
    }
    summary = {
        name: {
            "runs": int(mask.sum()),
            "mean_abs_pct": float(np.mean(np.abs(rel[mask])) * 100),
            "max_abs_pct": float(np.max(np.abs(rel[mask])) * 100),
        }
        for name, mask in groups.items()
        if mask.any()
    }
    rows = [
        {
            "run": runs.label(r),
            "samples_seen": float(runs.samples_seen[r]),
            "epochs": float(runs.samples_seen[r] / runs.mix_size[r]),
            "observed": float(runs.loss[r]),
            "predicted": float(predicted[r]),
            "error_pct": float(rel[r] * 100),
            "fitted": bool(fit_rows[r]),
        }
        for r in range(runs.rows)
    ]

    # allocation: at each budget beyond fit_max that every prefix reached, predicted vs observed best prefix
    k = len(runs.pool_names)
    prefixes = [tuple(range(j)) for j in range(1, k + 1)]
    checks = []
    for budget in sorted({float(n) for n in runs.samples_seen if n > fit_max}):
        observed = {}
        for j, members in enumerate(prefixes, start=1):
            match = [
                r
                for r in range(runs.rows)
                if runs.members[r] == members and abs(runs.samples_seen[r] - budget) <= 0.01 * budget
            ]
            if match:
                observed[j] = float(np.mean(runs.loss[match]))
        if len(observed) == k:
            choice = allocate(law, [budget])[0]
            best = min(observed, key=observed.get)
            checks.append(
                {
                    "budget": budget,
                    "predicted_best": choice.prefix,
                    "observed_best": best,
                    "observed_loss_of_predicted": observed[choice.prefix],
                    "observed_best_loss": observed[best],
                    "regret_pct": (observed[choice.prefix] / observed[best] - 1) * 100,
                    "observed_all_pools": observed[k],
                }
            )
    return {"law": law_to_json(law), "summary": summary, "rows": rows, "allocation": checks}


def fit_max_of(result: dict) -> float:
    return max(r["samples_seen"] for r in result["rows"] if r["fitted"])


def print_result(name: str, result: dict) -> None:
    law = result["law"]
    key = "tau" if law["model"] == GOYAL else "r_star"
    print(
        f"\n=== {name}: a = {law['a']:.4g}; "
        + "; ".join(f"pool {p['name']}: b = {p['b']:.4f}, {key} = {p[key]:.3g}" for p in law["pools"])
    )
    print(f"{'run':>8} {'seen':>9} {'epochs':>7} {'observed':>9} {'predicted':>9} {'err %':>7}")
    for r in result["rows"]:
        if not r["fitted"] and r["samples_seen"] > fit_max_of(result):
            print(
                f"{r['run']:>8} {r['samples_seen']:>9.0f} {r['epochs']:>7.2f} {r['observed']:>9.4f} {r['predicted']:>9.4f} {r['error_pct']:>+7.2f}"
            )
    for group, s in result["summary"].items():
        print(f"  {group}: {s['runs']} runs, mean |err| {s['mean_abs_pct']:.2f}%, max {s['max_abs_pct']:.2f}%")
    for c in result["allocation"]:
        print(
            f"  budget {c['budget']:.3g}: predicted best prefix {c['predicted_best']} pools, observed best {c['observed_best']} (regret {c['regret_pct']:.2f}%; all pools would be {c['observed_all_pools']:.4f} vs best {c['observed_best_loss']:.4f})"
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--out",
        type=Path,
        default=REPO_ROOT / "bench" / "out" / "scaling",
        help="runs.csv cache and full results (default: bench/out/scaling, not committed)",
    )
    parser.add_argument("--rows", type=int, default=0, help="a seeded sample of N rows of the corpus (0: all)")
    parser.add_argument("--reuse", action="store_true", help="reuse OUT/runs.csv instead of training again")
    parser.add_argument("--pools", type=int, default=4)
    parser.add_argument(
        "--budgets",
        default="1000,2000,4000,8000,15000,30000,60000,120000,240000",
        help="samples seen, every pool and prefix",
    )
    parser.add_argument(
        "--fit-max", type=float, default=60000, help="fit on single-pool runs with at most this many samples seen"
    )
    parser.add_argument("--irreducible", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=0)
    add_result_argument(parser, "scaling")
    args = parser.parse_args(argv)
    run = start_run(
        "scaling",
        argv,
        args.result,
        "Scaling law on real data: fit on small budgets of single pools, predict larger budgets and prefix mixes never fitted, "
        "check the allocation against what proxies measured.",
        vars(args),
    )
    args.out.mkdir(parents=True, exist_ok=True)
    runs_csv = args.out / "runs.csv"
    timings = {}
    if not (args.reuse and runs_csv.exists()):
        frame = pl.read_parquet(DATA)
        if args.rows and args.rows < frame.height:
            frame = frame.sample(n=args.rows, seed=args.seed)
        rows, labels = top_classes(frame.get_column("section").to_list(), 20)
        texts = frame.get_column("text").to_arrow().take(rows)
        print(f"{len(rows):,} of {frame.height:,} rows in the 20 largest sections", flush=True)
        started = time.perf_counter()
        pools, score = score_pools(hashed_ngram_bags(texts), labels, args.pools, seed=args.seed)
        timings["pools_seconds"] = time.perf_counter() - started
        print(
            f"pools from out-of-fold proxy loss: {np.bincount(pools).tolist()} rows, mean loss per pool {[round(float(score[pools == p].mean()), 3) for p in range(args.pools)]} ({timings['pools_seconds']:.0f} s)",
            flush=True,
        )
        budgets = tuple(float(b) for b in args.budgets.split(","))
        settings = ProxyRunSettings(
            budgets=budgets, heldout_max=5000, metric="loss", seed=args.seed
        )  # loss = cross-entropy; error is kept beside it
        started = time.perf_counter()
        runs = run_proxy_trainings(texts, labels.tolist(), pools, settings)
        timings["proxy_seconds"] = time.perf_counter() - started
        write_runs(runs_csv, runs, EXTRA_COLUMNS)
        print(f"{len(runs)} runs in {timings['proxy_seconds']:.0f} s -> {runs_csv}", flush=True)

    results = {"fit_max": args.fit_max, "timings": timings}
    for metric in ("loss", "error"):
        table = read_runs(runs_csv if metric == "loss" else with_metric(runs_csv, metric, args.out))
        for model in (GOYAL, MUENNIGHOFF):
            for with_mixes in (False, True):
                name = f"{metric} / {model} / fit on single pools" + (" + prefix mixes" if with_mixes else "")
                results[name] = evaluate(table, args.fit_max, model, args.irreducible, with_mixes)
                print_result(name, results[name])
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    print(f"\nper-run predictions: {args.out / 'results.json'}")
    summary, allocation = [], []
    for name, result in results.items():
        if not isinstance(result, dict) or "summary" not in result:
            continue
        for group, s in result["summary"].items():
            summary.append([name, group, s["runs"], round(s["mean_abs_pct"], 2), round(s["max_abs_pct"], 2)])
        for c in result["allocation"]:
            allocation.append([name, c["budget"], c["predicted_best"], c["observed_best"], round(c["regret_pct"], 2)])
    run.table(
        f"predicted vs observed loss, fitted on budgets <= {args.fit_max:g} samples seen",
        ["fit", "runs", "count", "mean abs error %", "max abs error %"],
        summary,
        show=False,
    )
    run.table(
        "allocation beyond the fitted budgets: best prefix (number of pools) predicted vs observed",
        ["fit", "budget", "predicted best", "observed best", "regret %"],
        allocation,
        show=False,
    )
    run.data.update(
        timings=timings, laws={name: r["law"] for name, r in results.items() if isinstance(r, dict) and "law" in r}
    )
    run.write()


if __name__ == "__main__":
    main()
