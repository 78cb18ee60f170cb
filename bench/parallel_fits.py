"""`--jobs 2` against `--jobs 1` for the embedding-based fits, on real short texts, in one run.

    python bench/parallel_fits.py CORPUS_DIR [--clusters 200] [--repeats 2] [--workdir DIR]
    python bench/corpus_short.py --rows 500000 --shards 8     # prints a CORPUS_DIR to use

Pipeline: embed(hashing) -> prototypes(CLUSTERS, keep hard 0.8), run with `--jobs 1` and
`--jobs 2` alternately (1, 2, 1, 2, ...); each side keeps its fastest run, so load from other
users of the machine hits both sides alike. Prints the wall time of each stage from the
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
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from curate.pipeline import RunOptions, parse_pipeline, run_pipeline  # noqa: E402
from curate.shards import read_parts  # noqa: E402


class TreeCpu:
    """CPU seconds of this process and every descendant (pool workers live under a fork
    server, so rusage of waited children misses them): sampled every 0.2 s, last value per pid."""

    def __init__(self) -> None:
        self.seen: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        me = psutil.Process()
        for proc in [me, *me.children(recursive=True)]:
            try:
                times = proc.cpu_times()
                self.seen[proc.pid] = times.user + times.system
            except psutil.Error:
                pass

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            self._sample()

    def __enter__(self) -> "TreeCpu":
        self._sample()
        self.start = dict(self.seen)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()
        self.seconds = sum(v - self.start.get(pid, 0.0) for pid, v in self.seen.items())


def run_once(spec, corpus: Path, out: Path, jobs: int) -> dict[str, float]:
    shutil.rmtree(out, ignore_errors=True)
    started = time.perf_counter()
    with TreeCpu() as cpu:
        manifest = run_pipeline(spec, corpus, out, RunOptions(jobs=jobs)).manifest
    seconds = {s["name"]: float(s.get("seconds") or 0.0) for s in manifest["stages"]}
    seconds["whole run"] = time.perf_counter() - started
    seconds["cpu"] = cpu.seconds
    return seconds


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("corpus", type=Path, help="directory of Parquet shards with id and text columns")
    parser.add_argument("--clusters", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "curate-bench-parallel-fits")
    args = parser.parse_args(argv)

    spec = parse_pipeline(
        {"stage": [{"kind": "embed", "model": "hashing"}, {"kind": "prototypes", "clusters": args.clusters, "keep": "hard", "fraction": 0.8}]},
        "bench",
    )
    load_before = os.getloadavg()
    best: dict[int, dict[str, float]] = {}
    for repeat in range(args.repeats):
        for jobs in (1, 2):
            seconds = run_once(spec, args.corpus, args.workdir / f"jobs{jobs}", jobs)
            print(f"run {repeat + 1}, --jobs {jobs}: " + ", ".join(f"{k} {v:.1f} s" for k, v in seconds.items()), flush=True)
            if seconds["whole run"] < best.get(jobs, {}).get("whole run", float("inf")):
                best[jobs] = {**seconds, "cores used": seconds["cpu"] / seconds["whole run"]}
            best[jobs] |= {k: min(v, best[jobs][k]) for k, v in seconds.items() if k not in ("cpu", "whole run")}
    load_after = os.getloadavg()

    kept = [read_parts(args.workdir / f"jobs{j}" / "kept", columns=["id", "proto_distance"]) for j in (1, 2)]
    same = kept[0].equals(kept[1])
    rows = json.loads((args.workdir / "jobs1" / "manifest.json").read_text())["stages"][0]["rows_in"]
    print(f"\n{rows} rows, {os.cpu_count()} cores; load average before {load_before[0]:.1f}, after {load_after[0]:.1f} (1-minute)")
    autogroup = Path("/proc/sys/kernel/sched_autogroup_enabled")
    if autogroup.exists() and autogroup.read_text().strip() == "1" and load_before[0] > (os.cpu_count() or 1):
        print("note: sched_autogroup is on and the machine is busy: this session's processes share one CPU share (see the docstring)")
    print(f"{'step':<14}{'--jobs 1':>10}{'--jobs 2':>10}{'speed-up':>10}   (best run of each; stages from the manifest)")
    for name in [n for n in best[1] if n not in ("cpu", "cores used")]:
        one, two = best[1][name], best[2][name]
        print(f"{name:<14}{one:>9.1f}s{two:>9.1f}s{one / two if two else float('nan'):>9.2f}x")
    print(f"{'cpu seconds':<14}{best[1]['cpu']:>9.1f}s{best[2]['cpu']:>9.1f}s   (of the fastest whole run)")
    print(f"{'cores used':<14}{best[1]['cores used']:>10.2f}{best[2]['cores used']:>10.2f}   (cpu seconds / wall)")
    print(f"same kept ids and proto_distance on both: {same}")
    if not same:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
