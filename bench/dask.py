"""Dask speed-up on real text: the local runner, 1 worker and 2 workers in one run.

Corpus: /work/shared/data/debian_descriptions.parquet (63,666 real package descriptions)
replicated into SHARDS shards with small edits (a share of rows get a word swapped or a
version suffix, as in re-crawled data), so exact dedup has real cross-shard duplicates.
Prints wall times, the per-stage split into shard-parallel and global (driver) steps, the
machine load (the machine is shared: timings are noisy), and checks that all runs agree.

    python bench/dask.py [--shards 16] [--copies 1] [--repeats 1] [--workdir /tmp/curate-bench-dask]
"""

from __future__ import annotations

import sys
from pathlib import Path

# This file is named dask.py: keep its folder off sys.path or `import dask` finds it.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

import argparse
import json
import os
import shutil
import time

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curate.distributed import PARALLEL_STEPS, DaskExecutor  # noqa: E402
from curate.pipeline import RunOptions, parse_pipeline, run_pipeline  # noqa: E402
from curate.shards import read_parts  # noqa: E402

DEBIAN = Path("/work/shared/data/debian_descriptions.parquet")
PIPELINE = {"stage": [{"kind": "exact", "normalize": True}]}


def build_corpus(directory: Path, shards: int, copies: int, seed: int = 0) -> int:
    """SHARDS shards, each COPIES edited copies of the Debian descriptions; returns rows."""
    base = pq.read_table(DEBIAN, columns=["id", "package", "section", "text"])
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    rows = 0
    for s in range(shards):
        tables = []
        for c in range(copies):
            n = base.num_rows
            texts = base.column("text")
            edit = rng.random(n) < 0.3
            suffix = pa.array(np.where(edit, f" (rev {s}.{c})", ""))
            texts = pc.binary_join_element_wise(texts, suffix, "")
            shuffled = pc.take(base, pa.array(rng.permutation(n)))
            ids = pc.binary_join_element_wise(shuffled.column("id"), pa.scalar(f"#{s}.{c}"), "")
            tables.append(pa.table({"id": ids, "package": shuffled.column("package"), "section": shuffled.column("section"), "text": pc.take(texts, pa.array(rng.permutation(n)))}))
        table = pa.concat_tables(tables)
        pq.write_table(table, directory / f"debian-{s:03d}.parquet", row_group_size=65_536)
        rows += table.num_rows
    return rows


def _cpu_seconds() -> float:
    times = psutil.Process().cpu_times()
    return times.user + times.system


def cpu_used(executor: DaskExecutor | None) -> tuple[float, dict[str, float]]:
    """CPU seconds so far of this process and of each worker process."""
    return _cpu_seconds(), (executor.client.run(_cpu_seconds) if executor else {})


def timed_run(corpus: Path, out: Path, executor: DaskExecutor | None) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    spec = parse_pipeline(PIPELINE, "bench")
    cpu_before = cpu_used(executor)
    main_thread = time.thread_time()
    started = time.perf_counter()
    run_pipeline(spec, corpus, out, RunOptions(executor=executor))
    wall = time.perf_counter() - started
    main_thread = time.thread_time() - main_thread
    cpu_after = cpu_used(executor)
    driver_cpu = cpu_after[0] - cpu_before[0]
    worker_cpu = [cpu_after[1][w] - cpu_before[1].get(w, 0.0) for w in cpu_after[1]]
    manifest = json.loads((out / "manifest.json").read_text())
    seconds = {s["name"]: s["seconds"] for s in manifest["stages"]}
    timings = executor.timings if executor else {}
    return {"wall": wall, "cpu": driver_cpu + sum(worker_cpu), "driver_cpu": driver_cpu, "main_thread_cpu": main_thread, "worker_cpu": worker_cpu, "stages": seconds, "finalize": wall - sum(seconds.values()), "steps": dict(timings)}


def _autogroup() -> str:
    try:
        return "on" if Path("/proc/sys/kernel/sched_autogroup_enabled").read_text().strip() == "1" else "off"
    except OSError:
        return "unknown"


def kept_ids(out: Path) -> list[str]:
    return read_parts(out / "kept", columns=["id"]).column("id").to_pylist()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=int, default=16)
    parser.add_argument("--copies", type=int, default=1, help="edited copies of the Debian corpus per shard")
    parser.add_argument("--repeats", type=int, default=1, help="runs per configuration; the fastest is reported")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/curate-bench-dask"))
    args = parser.parse_args()

    corpus = args.workdir / "corpus"
    shutil.rmtree(args.workdir, ignore_errors=True)
    rows = build_corpus(corpus, args.shards, args.copies)
    size = sum(p.stat().st_size for p in corpus.glob("*.parquet"))
    print(f"corpus: {rows:,} rows in {args.shards} shards, {size / 1e6:.1f} MB ({DEBIAN.name} x {args.shards * args.copies}, 30% edited)")
    print(f"pipeline: {PIPELINE['stage']}   cpus: {os.cpu_count()}   load before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")

    results: dict[str, dict] = {}
    startup: dict[str, float] = {}
    for _ in range(args.repeats):
        for label, workers in (("local", 0), ("dask 1 worker", 1), ("dask 2 workers", 2)):
            out = args.workdir / label.replace(" ", "-")
            if workers:
                t = time.perf_counter()
                with DaskExecutor.local(workers) as executor:
                    startup[label] = time.perf_counter() - t
                    r = timed_run(corpus, out, executor)
            else:
                r = timed_run(corpus, out, None)
            r["load"] = os.getloadavg()[0]
            if label not in results or r["wall"] < results[label]["wall"]:
                results[label] = r

    reference = kept_ids(args.workdir / "local")
    same = all(kept_ids(args.workdir / label.replace(" ", "-")) == reference for label in results)

    header = f"{'run':<16}{'wall s':>9}{'input':>8}{'exact':>8}{'final':>8}{'par.':>8}{'global':>8}{'rows/s':>11}{'CPU s':>8}{'cores':>7}{'load':>7}{'startup':>9}"
    print()
    print(header)
    print("-" * len(header))
    for label, r in results.items():
        steps = r["steps"]
        parallel = sum(t for phase in steps.values() for step, t in phase.items() if step in PARALLEL_STEPS)
        global_ = r["wall"] - parallel
        r["parallel"], r["global"] = parallel, global_
        print(
            f"{label:<16}{r['wall']:>9.2f}{r['stages']['input']:>8.2f}{r['stages']['exact']:>8.2f}{r['finalize']:>8.2f}"
            f"{parallel:>8.2f}{global_:>8.2f}{rows / r['wall']:>11,.0f}{r['cpu']:>8.1f}{r['cpu'] / r['wall']:>7.2f}{r['load']:>7.2f}{startup.get(label, 0):>9.2f}"
        )
    one, two = results["dask 1 worker"], results["dask 2 workers"]
    print()
    print("columns: input = input check (driver); exact = the exact stage; final = finalize (publish kept/, workers strip")
    print("         the ordinal column); par. = time in shard-parallel task phases (input check map + reduce,")
    print("         fit map + shuffle reduce, transform, finalize rewrite); global = the rest, on the driver")
    print("         (planning, fit merge + id lookup, assembly, manifest); local runs everything on the driver")
    print("         CPU s = CPU seconds of the driver and all workers; cores = CPU s / wall: the cores the run")
    print("         actually got on this shared machine (2 would be all of it); load = 1-min load average after")
    print("steps, 2 workers: " + "; ".join(f"{phase}: " + ", ".join(f"{k} {v:.2f}s" for k, v in steps.items()) for phase, steps in two["steps"].items()))
    print(f"speed-up 2 vs 1 worker (wall): shard-parallel steps {one['parallel'] / two['parallel']:.2f}x, exact stage {one['stages']['exact'] / two['stages']['exact']:.2f}x, whole run {one['wall'] / two['wall']:.2f}x")
    print(f"dask 2 workers vs local runner (whole run): {results['local']['wall'] / two['wall']:.2f}x")
    print(f"global (driver) share of the 2-worker run: {two['global'] / two['wall']:.0%}")
    # CPU accounting: what the run would take on free cores (serial driver work + the busiest worker).
    critical = {label: r["main_thread_cpu"] + max(r["worker_cpu"] or [0.0]) for label, r in results.items()}
    print("CPU seconds, driver main thread (serial steps) / driver process (adds Dask's scheduler and client threads) / each worker:")
    for label, r in results.items():
        print(f"  {label:<16}{r['main_thread_cpu']:6.1f} / {r['driver_cpu']:5.1f} / {' + '.join(f'{c:.1f}' for c in r['worker_cpu']) or '-'}")
    print(f"CPU critical path (driver main thread + busiest worker), 1 -> 2 workers: {critical['dask 1 worker']:.1f} s -> {critical['dask 2 workers']:.1f} s = {critical['dask 1 worker'] / critical['dask 2 workers']:.2f}x, the speed-up 2 free cores would give")
    print(f"kernel autogroup scheduling: {_autogroup()} (on: CPU is shared per session, so under load extra workers in one session do not get extra CPU)")
    print(f"same kept ids in all runs: {same}   load after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if not same:
        sys.exit(1)


if __name__ == "__main__":
    main()
