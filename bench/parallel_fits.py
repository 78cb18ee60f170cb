"""`--jobs 2` against `--jobs 1` for the embedding-based fits, on real short texts, in one run.

    python -m bench.parallel_fits [CORPUS_DIR] [--rows 500000] [--clusters 200] [--repeats 2] [--workdir DIR] [--model hashing]
    python -m bench.parallel_fits --rows 20000 --clusters 20 --repeats 1      # a quick run

CORPUS_DIR: Parquet shards with id and text; without it, `--rows` real short texts from
bench.corpus_short (built once and cached).

Pipeline: embed(MODEL, default hashing) -> prototypes(CLUSTERS, keep hard 0.8), run with
`--jobs 1` and `--jobs 2` alternately (1, 2, 1, 2, ...), after one untimed run when the model
has caches to fill (`minilm-static` distils its table, `minilm-fitted` embeds its fitting
sample with MiniLM); each side keeps its fastest run, so load from other users of the machine
hits both sides alike. Prints the wall time of each stage from the
manifests, the ratio jobs 1 / jobs 2, the CPU seconds the run's processes used (this process
and its pool's workers, sampled) and so the cores a run got, the load average before and
after, and checks that both runs kept the same ids with the same scores.

On a shared Linux machine with `kernel.sched_autogroup_enabled = 1`, all processes of one
terminal session share one CPU share against other sessions: while other sessions keep the
cores busy, `--jobs 2` gets no more CPU than `--jobs 1`, and the "cores used" column shows it.
Compare on an idle machine (load average below the core count).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from bench._harness import ProcessTree, add_result_argument, same_outputs, start_run
from bench.corpus_short import cached_corpus
from curate.pipeline import RunOptions, parse_pipeline, run_pipeline


def run_once(spec, corpus: Path, out: Path, jobs: int) -> dict[str, float]:
    shutil.rmtree(out, ignore_errors=True)
    started = time.perf_counter()
    with ProcessTree(interval=0.2) as cpu:
        manifest = run_pipeline(spec, corpus, out, RunOptions(jobs=jobs)).manifest
    seconds = {s["name"]: float(s.get("seconds") or 0.0) for s in manifest["stages"]}
    seconds["whole run"] = time.perf_counter() - started
    seconds["cpu"] = cpu.cpu_seconds
    return seconds


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "corpus",
        type=Path,
        nargs="?",
        default=None,
        help="directory of Parquet shards with id and text columns (default: --rows short texts)",
    )
    parser.add_argument(
        "--rows",
        type=int,
        default=500_000,
        help="without CORPUS_DIR: this many real short texts (bench.corpus_short, cached)",
    )
    parser.add_argument("--shards", type=int, default=8, help="without CORPUS_DIR: in this many shards")
    parser.add_argument("--clusters", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--model", default="hashing", help="embedding model (hashing, minilm-static, minilm-fitted)")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "curate-bench-parallel-fits")
    add_result_argument(parser, "parallel_fits")
    args = parser.parse_args(argv)
    run = start_run(
        "parallel_fits",
        argv,
        args.result,
        "`--jobs 2` against `--jobs 1` for the embedding-based fits: embed(hashing) -> prototypes, alternated, best of each.",
        vars(args),
    )
    if args.corpus is None:
        args.corpus = cached_corpus(args.rows, args.shards)

    spec = parse_pipeline(
        {
            "stage": [
                {"kind": "embed", "model": args.model},
                {"kind": "prototypes", "clusters": args.clusters, "keep": "hard", "fraction": 0.8},
            ]
        },
        "bench",
    )
    best: dict[int, dict[str, float]] = {}
    if args.model != "hashing":
        run_once(spec, args.corpus, args.workdir / "warm", 2)  # fills the model's caches, untimed
    for repeat in range(args.repeats):
        for jobs in (1, 2):
            seconds = run_once(spec, args.corpus, args.workdir / f"jobs{jobs}", jobs)
            print(
                f"run {repeat + 1}, --jobs {jobs}: " + ", ".join(f"{k} {v:.1f} s" for k, v in seconds.items()),
                flush=True,
            )
            if seconds["whole run"] < best.get(jobs, {}).get("whole run", float("inf")):
                best[jobs] = {**seconds, "cores used": seconds["cpu"] / seconds["whole run"]}
            best[jobs] |= {k: min(v, best[jobs][k]) for k, v in seconds.items() if k not in ("cpu", "whole run")}
    same = same_outputs([args.workdir / f"jobs{j}" for j in (1, 2)], kept=("id", "proto_distance"), removed=())
    rows = json.loads((args.workdir / "jobs1" / "manifest.json").read_text())["stages"][0]["rows_in"]
    run.params["input_rows"] = rows
    autogroup = Path("/proc/sys/kernel/sched_autogroup_enabled")
    if (
        autogroup.exists()
        and autogroup.read_text().strip() == "1"
        and run.load_start
        and run.load_start[0] > (os.cpu_count() or 1)
    ):
        run.note(
            "sched_autogroup is on and the machine was busy: this session's processes shared one CPU share (see the docstring)"
        )
    table = []
    for name in [n for n in best[1] if n not in ("cpu", "cores used")]:
        one, two = best[1][name], best[2][name]
        table.append([name, round(one, 1), round(two, 1), one / two if two else None])
    table.append(["CPU seconds (of the fastest whole run)", round(best[1]["cpu"], 1), round(best[2]["cpu"], 1), None])
    table.append(
        ["cores used (CPU seconds / wall)", round(best[1]["cores used"], 2), round(best[2]["cores used"], 2), None]
    )
    run.table(
        f"{rows:,} rows; seconds, best run of each (stages from the manifest)",
        ["step", "--jobs 1", "--jobs 2", "speed-up"],
        table,
    )
    run.compare("--jobs 2 vs --jobs 1, whole run", best[1]["whole run"] / best[2]["whole run"])
    run.check("same kept ids and proto_distance on both", same)
    run.write()
    if not same:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
