"""Scale-out on real text: the same pipeline on 1 and 2 local processes and 1 and 2 Dask workers.

Pipeline (the issue's): minhash(0.8) -> embed(MODEL) -> prototypes(200, keep hard, 0.8) -> pools(4),
over about a million real short texts (bench/corpus_short.py builds and caches them from what
the machine has). Prints, per run: wall time, each stage's seconds and the share of them spent in
parallel tasks, the driver's serial share of the whole run (wall minus time inside executor
maps), and the speed-ups 2 vs 1 worker measured in this same run. Checks that every run kept the
same ids, ledger and pools.

    python bench/dask.py                                   # 1M rows, hashing embeddings
    python bench/dask.py --model minilm --rows 20000       # the transformer, one thread per worker
    python bench/dask.py --configs dask1 dask2 --repeats 2 # only the Dask pair, best of two

Targets (issue): Dask 2 workers >= 1.6x 1 worker, driver share < 15% of the 2-worker wall time.
This machine is shared: run on a quiet machine, compare within one run, and read `load`.
"""

from __future__ import annotations

import sys
from pathlib import Path

# This file is named dask.py: keep its folder off sys.path or `import dask` finds it.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

from bench.corpus_short import cached_corpus  # noqa: E402
from curate.executors import DaskExecutor, LocalExecutor  # noqa: E402
from curate.pipeline import RunOptions, parse_pipeline, run_pipeline  # noqa: E402
from curate.shards import read_parts  # noqa: E402

CONFIGS = {"jobs1": ("local", 1), "jobs2": ("local", 2), "dask1": ("dask", 1), "dask2": ("dask", 2)}


def stages(model: str) -> list[dict]:
    return [
        {"kind": "minhash", "threshold": 0.8},
        {"kind": "embed", "model": model},
        {"kind": "prototypes", "clusters": 200, "keep": "hard", "fraction": 0.8},
        {"kind": "pools", "score": "proto_distance", "pools": 4},
    ]


def make_executor(kind: str, n: int) -> LocalExecutor | DaskExecutor:
    return LocalExecutor(n) if kind == "local" else DaskExecutor.local(n, threads_per_worker=1)


def timed_run(spec, corpus: Path, out: Path, executor) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    busy = executor.busy_seconds
    started = time.perf_counter()
    run_pipeline(spec, corpus, out, RunOptions(executor=executor))
    wall = time.perf_counter() - started
    parallel = executor.busy_seconds - busy
    manifest = json.loads((out / "manifest.json").read_text())
    per_stage = {s["name"]: (s.get("seconds", 0.0), s.get("parallel_seconds", 0.0)) for s in manifest["stages"][1:]}
    fits = {s["name"]: s.get("info", {}).get("fit", "") for s in manifest["stages"][1:]}
    return {"wall": wall, "parallel": parallel, "driver": wall - parallel, "stages": per_stage, "fits": fits, "load": os.getloadavg()[0]}


def signature(out: Path) -> tuple:
    kept = read_parts(out / "kept", columns=["id", "pool"])
    removed = read_parts(out / "removed", columns=["id", "stage", "reason", "duplicate_of"])
    return (kept.column("id").to_pylist(), kept.column("pool").to_pylist(), removed.to_pylist())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--shards", type=int, default=16)
    parser.add_argument("--model", default="hashing", help="embed model: hashing (default) or minilm")
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--repeats", type=int, default=1, help="runs per configuration; the fastest is kept")
    parser.add_argument("--workdir", type=Path, default=None, help="scratch directory (default: a new temp dir)")
    args = parser.parse_args()

    corpus = cached_corpus(args.rows, args.shards)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="curate-bench-dask-"))
    spec = parse_pipeline({"stage": stages(args.model)}, "bench")
    print(f"corpus: {args.rows:,} rows in {args.shards} shards; pipeline: " + " -> ".join(s["kind"] for s in stages(args.model)) + f" (model {args.model})")
    print(f"cpus: {os.cpu_count()}   load before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")

    results: dict[str, dict] = {}
    for _ in range(args.repeats):
        for name in args.configs:
            kind, n = CONFIGS[name]
            with make_executor(kind, n) as executor:
                result = timed_run(spec, corpus, work / name, executor)
            if name not in results or result["wall"] < results[name]["wall"]:
                results[name] = result

    names = list(results)
    stage_names = list(results[names[0]]["stages"])
    header = f"{'run':<8}{'wall s':>9}" + "".join(f"{s[:10]:>12}" for s in stage_names) + f"{'driver s':>10}{'driver %':>10}{'load':>7}"
    print()
    print(header)
    print("-" * len(header))
    for name, r in results.items():
        cells = "".join(f"{r['stages'][s][0]:>7.1f}/{r['stages'][s][1]:<4.0f}" for s in stage_names)
        print(f"{name:<8}{r['wall']:>9.2f}{cells}{r['driver']:>10.2f}{r['driver'] / r['wall']:>10.0%}{r['load']:>7.2f}")
    print("stage cells: seconds / seconds inside parallel tasks; driver = wall - time inside executor maps (serial work)")
    print("how each fit ran: " + "; ".join(f"{s}: {f}" for s, f in results[names[-1]]["fits"].items() if f))
    for a, b in (("jobs1", "jobs2"), ("dask1", "dask2")):
        if a in results and b in results:
            print(f"{b} vs {a}: {results[a]['wall'] / results[b]['wall']:.2f}x wall; driver share of {b}: {results[b]['driver'] / results[b]['wall']:.0%}")
    reference = signature(work / names[0])
    same = all(signature(work / name) == reference for name in names[1:])
    print(f"same kept ids, pools and ledger in every run: {same}   load after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)
    if not same:
        sys.exit(1)


if __name__ == "__main__":
    main()
