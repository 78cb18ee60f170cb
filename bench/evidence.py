"""Does the report's verdict against random data hold at budgets it never saw?

    python -m bench.evidence [--rows 20000] [--seeds 2] [--check-seeds 3] [--balance none|cluster] [--out bench/out/evidence]
    python -m bench.evidence --rows 3000 --seeds 1 --check-seeds 1      # a quick run

Data: the Debian package descriptions (`--data`, default shared/data/debian_descriptions.parquet
beside the checkout), predict `section` (the 20 largest) from `text`; `--rows` samples the corpus
(seeded) to keep the proxy trainings short. Pipeline: the quickstart's prototype pools: exact
dedup, hashing embeddings, prototypes (50 clusters, keep the hardest 90%), 4 pools of
`proto_distance` (pool 0 = hardest); `--balance cluster` prunes and pools within each k-means
cluster (prototypes `balance = "cluster"`, pools `balance_column = "proto_cluster"`); then the report with `label_column = "section"`:
proxy trainings on each pool and on random pools of the same sizes up to 4 passes over a pool
(prefix mixes up to 1 pass), `--seeds` seeds, both laws fitted, verdict per budget.

Held out: two budgets 2x and 4x the largest samples-seen of any fitted run (so never fitted).
At each, the bench trains the proxy for real on every quality prefix (pools 0..j-1, the chosen
one included), on uniform random subsets of the same sizes and on all the data (`--check-seeds`
seeds each; same held-out rows and proxy as the report) and checks the report's status for each
prefix: where it said "beats random", the prefix must beat random there (and "worse" the
reverse); where it said "no better than random" (or planned all data), the acceptance holds by
the report's own caution, and the bench prints what training measured.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import torch

from bench._harness import REPO_ROOT, add_result_argument, part_table, start_run
from bench.corpora import DEBIAN_DESCRIPTIONS
from curate.pipeline import RunOptions, parse_pipeline, run_pipeline
from curate.scaling.proxy_runs import ProxyRunSettings, top_classes

# PRIVATE curate API, no public equivalent yet: the report's held-out split and one proxy
# training, which the held-out check must repeat exactly as the report ran them.
from curate.scaling.proxy_runs import _split as report_heldout_split
from curate.scaling.proxy_runs import _trajectory as proxy_trajectory
from curate.training.features import hashed_ngram_bags

EPOCHS = [0.25, 0.5, 1.0, 2.0, 4.0]  # fitted runs: passes over each pool alone
MIX_EPOCHS = [0.5, 1.0]  # fitted runs: passes over each prefix mix


def pipeline(balance: str, seeds: int, budgets: list[float] | None) -> dict:
    report = {"label_column": "section", "epochs": EPOCHS, "mix_epochs": MIX_EPOCHS, "seeds": seeds}
    if budgets:
        report["budgets"] = budgets
    return {
        "stage": [
            {"kind": "exact"},
            {"kind": "embed", "model": "hashing"},
            {"kind": "prototypes", "clusters": 50, "keep": "hard", "fraction": 0.9, "balance": balance},
            {
                "kind": "pools",
                "score": "proto_distance",
                "pools": 4,
                **({"balance_column": "proto_cluster"} if balance == "cluster" else {}),
            },
        ],
        "report": report,
    }


def read_kept(out: Path, columns: list[str]) -> pl.DataFrame:
    """The kept rows of a finished output (the report reads the same parts)."""
    return pl.from_arrow(part_table(out / "kept", columns=columns))


def measured(kept: pl.DataFrame, budget: float, prefixes: list[int], seeds: int, seed: int) -> dict[str, list[float]]:
    """Held-out error after `budget` samples on each prefix, on random subsets of its size, and on all data."""
    settings = ProxyRunSettings(seed=seed)
    rows, y = top_classes(kept.get_column("section").to_list(), settings.classes)
    pools = kept.get_column("pool").to_numpy().astype(np.int64)[rows]
    bags = hashed_ngram_bags(
        kept.get_column("text").to_arrow().take(pa.array(rows)), num_buckets=settings.proxy.num_buckets
    )
    heldout, train = report_heldout_split(len(y), settings)  # the report's split: same seed, same rows
    out: dict[str, list[float]] = {}
    torch.set_num_threads(1)
    for s in range(seeds):
        runs = [("all", train)]
        for j in prefixes:
            chosen = train[pools[train] < j]
            runs += [
                (f"prefix{j}", chosen),
                (
                    f"random{j}",
                    np.sort(np.random.default_rng([seed, 77, j, s]).choice(train, size=len(chosen), replace=False)),
                ),
            ]
        for name, members in runs:
            ((_, error, _),) = proxy_trajectory(
                bags,
                y,
                int(y.max()) + 1,
                members,
                heldout,
                [budget / len(members)],
                "error",
                seed + 500 + s,
                settings.proxy,
            )
            out.setdefault(name, []).append(error)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEBIAN_DESCRIPTIONS)
    parser.add_argument("--rows", type=int, default=20000, help="seeded sample of the corpus (0: all)")
    parser.add_argument("--seeds", type=int, default=2, help="proxy seeds in the report (the uncertainty)")
    parser.add_argument("--check-seeds", type=int, default=2, help="seeds of the held-out trainings")
    parser.add_argument("--balance", default="none", choices=["none", "cluster"])
    parser.add_argument("--reuse", action="store_true", help="reuse the pipeline run and its proxy runs in --out")
    parser.add_argument(
        "--out",
        type=Path,
        default=REPO_ROOT / "bench" / "out" / "evidence",
        help="pipeline runs (default: bench/out/evidence, not committed)",
    )
    add_result_argument(parser, None, "evidence, or evidence-cluster with --balance cluster")
    args = parser.parse_args(argv)
    result = args.result or ("evidence" if args.balance == "none" else f"evidence-{args.balance}")
    run = start_run(
        "evidence",
        argv,
        result,
        "Does the report's verdict against random data hold at budgets it never saw? Proxy trainings at held-out budgets, "
        "quality prefixes vs random subsets of the same size.",
        vars(args),
    )
    started = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    frame = pl.read_parquet(args.data)
    if args.rows and args.rows < frame.height:
        frame = frame.sample(n=args.rows, seed=0).sort("id")
    source = args.out / "input.parquet"
    frame.write_parquet(source)
    out = args.out / f"run-{args.balance}"

    # 1. the pipeline and its report with default budgets, to learn the fitted range
    if not (args.reuse and (out / "scaling" / "law.json").exists()):
        run_pipeline(
            parse_pipeline(pipeline(args.balance, args.seeds, None), "bench"), source, out, RunOptions(overwrite=True)
        )
    law = json.loads((out / "scaling" / "law.json").read_text())
    fitted_max = max(o["samples_seen"] for o in law["fit"]["observations"])
    held = [2.0 * fitted_max, 4.0 * fitted_max]
    # 2. the same report planned for the held-out budgets (runs reused, nothing refitted from them)
    from curate.report import build_pipeline_report

    build_pipeline_report(out, overrides={"budgets": held})
    report = json.loads((out / "report.json").read_text())
    baseline = report["random_baseline"]
    print(
        f"Debian sections, {frame.height:,} rows sampled; kept {read_kept(out, ['id']).height:,}; balance = {args.balance}; "
        f"fitted runs up to {fitted_max:,.0f} samples seen; held-out budgets {held[0]:,.0f} and {held[1]:,.0f}; "
        f"report seeds {args.seeds}, uncertainty: {baseline['uncertainty']}",
        flush=True,
    )
    print(f"report verdict: {baseline['verdict']}")
    kept = read_kept(out, ["id", "text", "section", "pool"])
    rows = []
    holds = True  # every per-prefix status the report gave
    checked = failed = 0
    accepted = True  # the acceptance: the chosen mix's ordering against random holds, or the report said "no better than random"
    for entry in baseline["budgets"]:
        prefixes = [len(c["pools"]) for c in entry["candidates"]]
        observed = measured(kept, entry["budget"], prefixes, args.check_seeds, 0)
        mean = {k: float(np.mean(v)) for k, v in observed.items()}
        sd = {k: float(np.std(v, ddof=1)) if len(v) > 1 else 0.0 for k, v in observed.items()}
        for c in entry["candidates"]:
            j = len(c["pools"])
            if c["status"] == "beats_random":
                ok = mean[f"prefix{j}"] < mean[f"random{j}"]
            elif c["status"] == "worse_than_random":
                ok = mean[f"prefix{j}"] > mean[f"random{j}"]
            else:
                ok = True  # the report did not claim an ordering
            holds &= ok
            checked += c["status"] != "no_better_than_random"
            failed += not ok
            chosen = "+".join(c["pools"]) == "+".join(entry["pools"])
            if chosen and entry["status"] == "beats_random":
                accepted &= ok
            rows.append(
                (
                    f"{entry['budget']:,.0f}",
                    "+".join(c["pools"]) + (" (chosen)" if chosen else ""),
                    f"{c['predicted_loss']:.4f}",
                    f"{c['random_same_size']:.4f}",
                    f"{c['difference']:+.4f} ± {c['difference_sd']:.4f}",
                    c["status"],
                    f"{mean[f'prefix{j}']:.4f} ± {sd[f'prefix{j}']:.4f}",
                    f"{mean[f'random{j}']:.4f} ± {sd[f'random{j}']:.4f}",
                    f"{mean[f'prefix{j}'] - mean[f'random{j}']:+.4f}",
                    "holds" if ok else "FAILS",
                )
            )
        rows.append(
            (
                f"{entry['budget']:,.0f}",
                "all data" + (" (chosen)" if entry["status"] == "all_data" else ""),
                "",
                f"{entry['all_data']:.4f}",
                "",
                "",
                "",
                f"{mean['all']:.4f} ± {sd['all']:.4f}",
                "",
                "",
            )
        )
    header = (
        "budget",
        "pools",
        "predicted",
        "pred. random same size",
        "pred. difference ± sd",
        "report says",
        "measured pools",
        "measured random same size",
        "measured diff",
        "check",
    )
    run.table(
        f"held-out error rate (1 - accuracy of the proxy on the report's held-out rows); measured: mean ± sd over {args.check_seeds} seeds",
        header,
        rows,
    )
    statuses = [e["status"] for e in baseline["budgets"]]
    run.data.update(
        verdict=baseline["verdict"],
        uncertainty=baseline["uncertainty"],
        held_out_budgets=held,
        fitted_max_samples_seen=fitted_max,
        statuses=statuses,
        rows_sampled=frame.height,
    )
    run.check(
        f"acceptance (chosen mix vs random, or 'no better than random') at both held-out budgets (statuses: {', '.join(statuses)})",
        accepted,
    )
    run.check(f"per-prefix claims (beats / worse than random) hold: {checked - failed} of {checked}", holds)
    print(f"({time.perf_counter() - started:.0f} s)")
    run.write()


if __name__ == "__main__":
    main()
