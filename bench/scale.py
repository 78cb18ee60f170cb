"""End-to-end scale benchmark: the standard pipeline over ~1M real short texts on this machine.

    python -m bench.scale                          # 1M rows, hashing embeddings
    python -m bench.scale --model minilm --rows 100000
    python -m bench.scale --rows 20000 --shards 4  # a quick run

Runs `python -m curate.cli run` as a subprocess (so the numbers are the CLI's, imports and
all), then `curate verify`. Prints wall time per stage from manifest.json, rows/s, and the
peak memory: the child's ru_maxrss (getrusage RUSAGE_CHILDREN, largest single process) and
the peak summed RSS of the whole process tree (psutil, sampled every 0.25 s), which also
catches worker processes. Stage kinds that are not registered in this checkout are skipped
and listed; so are stages whose input column comes from a skipped stage.
Targets (DESIGN section 7): peak RSS < 4 GiB, wall < 10 minutes for 1M rows. No peer runs
beside it: the figures are checked against those targets.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench._harness import GIB, ProcessTree, add_result_argument, cli_env, curate_cli, gib, start_run
from bench.corpus_short import cached_corpus
from curate.stages.base import available_kinds, stage_class

RSS_TARGET = 4 * GIB
WALL_TARGET_S = 600.0


def standard_stages(model: str) -> list[dict]:
    """exact -> minhash(0.8) -> embed(model) -> prototypes(200, hard, 0.8) -> pools(4)."""
    return [
        {"kind": "exact"},
        {"kind": "minhash", "threshold": 0.8},
        {"kind": "embed", "model": model},
        {"kind": "prototypes", "clusters": 200, "keep": "hard", "fraction": 0.8},
        {"kind": "pools", "score": "proto_distance", "pools": 4},
    ]


# Which stage each stage depends on for its input columns (embeddings, scores).
NEEDS = {"prototypes": "embed", "pools": "prototypes"}


def plan_stages(wanted: list[dict], kinds: list[str]) -> tuple[list[dict], list[str]]:
    """The stages this checkout can run, and a note per skipped stage or dropped option."""
    planned: list[dict] = []
    notes: list[str] = []
    present: set[str] = set()
    for stage in wanted:
        kind = stage["kind"]
        if kind not in kinds:
            notes.append(f"skipped {kind}: stage kind not registered (available: {', '.join(kinds)})")
            continue
        need = NEEDS.get(kind)
        if need and need not in present:
            notes.append(f"skipped {kind}: needs the {need} stage, which is skipped")
            continue
        valid = set(stage_class(kind).option_names())
        options = {k: v for k, v in stage.items() if k == "kind" or k in valid}
        dropped = sorted(set(stage) - set(options))
        if dropped:
            notes.append(f"{kind}: option(s) {dropped} not accepted by this checkout's stage, left at defaults")
        planned.append(options)
        present.add(kind)
    return planned, notes


def pipeline_toml(stages: list[dict], batch_size: int) -> str:
    lines = [
        "# written by bench.scale",
        f"batch_size = {batch_size}",
        "",
        "[input]",
        'text_column = "text"',
        'id_column = "id"',
        "",
    ]
    for stage in stages:
        lines.append("[[stage]]")
        for key, value in stage.items():
            lines.append(f"{key} = {json.dumps(value)}")
        lines.append("")
    return "\n".join(lines)


def run_measured(cmd: list[str], log: Path) -> dict:
    """Run `cmd`, return wall seconds, exit code, and peak memory (tree sample and ru_maxrss)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    before, cpu_before = usage.ru_maxrss, usage.ru_utime + usage.ru_stime
    started = time.perf_counter()
    with open(log, "wb") as handle:
        proc = subprocess.Popen(cmd, stdout=handle, stderr=subprocess.STDOUT, env=cli_env())
        with ProcessTree(proc.pid, interval=0.25) as sampler:
            code = proc.wait()
    wall = time.perf_counter() - started
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    after, cpu = usage.ru_maxrss, usage.ru_utime + usage.ru_stime - cpu_before
    # ru_maxrss (KiB on Linux) of children is a running maximum: only meaningful if it grew.
    maxrss = after * 1024 if after > before else None
    # CPU seconds are less noisy than wall time on a shared machine.
    cpu += sampler.descendant_cpu_seconds  # workers (sampled every 0.25 s)
    return {"wall_s": wall, "cpu_s": cpu, "exit_code": code, "tree_peak_rss": sampler.peak_rss, "child_maxrss": maxrss}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--shards", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", default="hashing", help="embed model: hashing | minilm")
    parser.add_argument("--batch-size", type=int, default=65_536)
    parser.add_argument(
        "--work-dir", type=Path, default=None, help="where OUT goes (default: a temp dir, removed after)"
    )
    parser.add_argument("--keep-output", action="store_true")
    add_result_argument(parser, "scale")
    args = parser.parse_args(argv)
    run = start_run(
        "scale",
        argv,
        args.result,
        "End to end: exact -> minhash -> embed -> prototypes -> pools over real short texts through the CLI; time per stage and peak memory.",
        vars(args),
    )
    started = time.perf_counter()
    corpus = cached_corpus(args.rows, args.shards, args.seed)
    print(
        f"corpus: {corpus} ({args.rows:,} rows, {args.shards} shards; ready in {time.perf_counter() - started:.1f} s)"
    )

    stages, notes = plan_stages(standard_stages(args.model), available_kinds())
    for note in notes:
        print(f"note: {note}")
    print("running: " + " -> ".join(s["kind"] for s in stages))

    work = Path(args.work_dir or tempfile.mkdtemp(prefix="curate-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    pipeline = work / "pipeline.toml"
    pipeline.write_text(pipeline_toml(stages, args.batch_size))
    out = work / "out"
    shutil.rmtree(out, ignore_errors=True)
    measured = run_measured(
        curate_cli("run", str(pipeline), "-i", str(corpus), "-o", str(out), "--quiet"), work / "run.log"
    )
    if measured["exit_code"] != 0:
        print((work / "run.log").read_text()[-4000:])
        print(f"FAILED: curate run exited {measured['exit_code']} (log: {work / 'run.log'})")
        return 1
    verify = run_measured(curate_cli("verify", str(out)), work / "verify.log")
    manifest = json.loads((out / "manifest.json").read_text())

    print(f"\n{'stage':<14}{'rows in':>12}{'rows out':>12}{'seconds':>10}{'rows/s':>12}")
    stage_rows = []
    for entry in manifest["stages"]:
        seconds = float(entry.get("seconds", 0.0))
        rate = entry.get("rows_in", 0) / seconds if seconds else float("nan")
        stage_rows.append(
            {
                "name": entry["name"],
                "rows_in": entry.get("rows_in"),
                "rows_out": entry.get("rows_out"),
                "seconds": seconds,
            }
        )
        print(
            f"{entry['name']:<14}{entry.get('rows_in', 0):>12,}{entry.get('rows_out', 0):>12,}{seconds:>10.1f}{rate:>12,.0f}"
        )
    totals = manifest["totals"]
    rows = totals["input_rows"]
    print(f"\ntotal: {rows:,} rows -> kept {totals['kept_rows']:,}, removed {totals['removed_rows']:,}")
    run.table(
        f"{rows:,} rows -> kept {totals['kept_rows']:,}, removed {totals['removed_rows']:,}",
        ["stage", "rows in", "rows out", "seconds", "rows/s"],
        [
            [
                s["name"],
                s["rows_in"],
                s["rows_out"],
                round(s["seconds"], 1),
                round(s["rows_in"] / s["seconds"]) if s["seconds"] and s["rows_in"] else None,
            ]
            for s in stage_rows
        ],
        show=False,
    )
    peak = max(measured["tree_peak_rss"], measured["child_maxrss"] or 0)
    ok_rss = peak < RSS_TARGET
    ok_wall = measured["wall_s"] < WALL_TARGET_S * rows / 1_000_000
    whole = [
        ["curate run: wall s (CLI start-up included)", round(measured["wall_s"], 1)],
        ["curate run: rows/s end to end", round(rows / measured["wall_s"])],
        ["curate run: CPU s (worker processes included)", round(measured["cpu_s"], 1)],
        ["curate run: peak RSS of the process tree (sampled)", gib(measured["tree_peak_rss"])],
        ["curate run: largest process (ru_maxrss)", gib(measured["child_maxrss"])],
        ["curate verify: wall s", round(verify["wall_s"], 1)],
        ["curate verify: peak RSS of the process tree", gib(verify["tree_peak_rss"])],
    ]
    embed = next((s for s in stage_rows if s["name"].startswith("embed")), None)
    if rows < 1_000_000:
        scale = 1_000_000 / rows
        projected = sum(s["seconds"] for s in stage_rows) * scale
        whole.append([f"projected for 1M rows (stage times scaled linearly x{scale:g}), s", round(projected)])
        if embed:
            whole.append(["  of which embed, s", round(embed["seconds"] * scale)])
    run.table("whole run", ["figure", "value"], whole)
    run.check("peak RSS < 4 GiB", ok_rss)
    run.check("wall < 10 min per 1M rows", ok_wall)
    run.check("curate verify passes", verify["exit_code"] == 0)
    for note in notes:
        run.note(note, show=False)
    run.data.update(stages=stage_rows, run=measured, verify=verify, totals=totals)
    run.write()
    if not args.keep_output and args.work_dir is None:
        shutil.rmtree(work, ignore_errors=True)
    else:
        print(f"output kept in {out}")
    return 0 if verify["exit_code"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
