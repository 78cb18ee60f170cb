"""Incremental dedup: the second half of a real corpus deduplicated against the first half's
index, vs deduplicating it alone and vs one joint run over both halves, in the same run.

    python bench/incremental.py [--corpus DEBIAN_PARQUET | --long] [--jobs N] [--repeats 3] [--model hashing]
                                [--no-semantic] [--index-verify exact|estimate]

The corpus is split in halves A and B by input order. Runs (exact with normalize, minhash,
semdedup with hashing embeddings, all `index = true`): A alone (writing its index), B alone,
B --against A (A's shards deleted first), and A+B jointly. Printed, all from this one run: wall
and CPU seconds (this process and its workers) of B alone and of B against A's index (best of
--repeats, alternated), the index load (files read and digests checked, per stage), each
stage's seconds in both runs (and the task seconds semdedup spends matching), the index bytes
per row, and how the rows removed from B compare with the joint run's (ids, duplicate_of,
precision and recall)."""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import polars as pl

from curate.index.store import read_index
from curate.pipeline import RunOptions, parse_pipeline, run_pipeline
from curate.shards import read_parts

try:
    from corpora import build_long_corpus, debian_descriptions
    from minhash import TreeCpu
except ImportError:  # run as a module
    from bench.corpora import build_long_corpus, debian_descriptions
    from bench.minhash import TreeCpu

def pipeline(model: str, threshold: float, semantic: bool = True, index_verify: str = "exact") -> dict:
    stages = [{"kind": "exact", "normalize": True, "index": True}, {"kind": "minhash", "index": True, **({"index_verify": index_verify} if index_verify != "exact" else {})}]
    if semantic:
        stages.append({"kind": "semdedup", "model": model, "threshold": threshold, "index": True})
    return {"stage": stages}


def split(corpus: Path, root: Path, shards: int) -> tuple[Path, Path, Path, int, int]:
    """Halves A and B by input order, `shards` files each, and a joint directory of both."""
    frame = pl.read_parquet(corpus).select("id", "text")
    half = frame.height // 2
    dirs = [root / "A", root / "B", root / "AB"]
    for d in dirs:
        d.mkdir()
    for name, part in (("a", frame[:half]), ("b", frame[half:])):
        step = -(-part.height // shards)
        for s in range(shards):
            piece = part[s * step : (s + 1) * step]
            piece.write_parquet(root / name.upper() / f"{name}-{s:03d}.parquet")
            piece.write_parquet(root / "AB" / f"{name}-{s:03d}.parquet")
    return dirs[0], dirs[1], dirs[2], half, frame.height - half


def timed(spec: dict, source: Path, out: Path, jobs: int | None, against: tuple[Path, ...] = ()) -> float:
    return measured(spec, source, out, jobs, against)[0]


def measured(spec: dict, source: Path, out: Path, jobs: int | None, against: tuple[Path, ...] = ()) -> tuple[float, float, dict]:
    """Wall seconds, CPU seconds of the process tree, and the manifest's stage seconds (and
    the seconds tasks spent matching against earlier outputs, where a stage records them)."""
    with TreeCpu() as cpu:
        started = time.perf_counter()
        result = run_pipeline(parse_pipeline(spec, "bench"), source, out, RunOptions(jobs=jobs, against=tuple(map(str, against))))
        wall = time.perf_counter() - started
    stages = {s["name"]: (s["seconds"], s["info"].get("earlier_task_seconds")) for s in result.manifest["stages"] if s["name"] != "input"}
    return wall, cpu.seconds, stages


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=None, help="Debian descriptions Parquet (default: next to the repository)")
    parser.add_argument("--long", action="store_true", help="instead: bench/corpora.py's long documents (2-64 KB of real text each)")
    parser.add_argument("--jobs", type=int, default=None, help="worker processes (default: every core)")
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--model", default="hashing", help="semdedup's embedding model (hashing: no model to load; minilm)")
    parser.add_argument("--repeats", type=int, default=3, help="B alone and B against A, alternated, best of")
    parser.add_argument("--semantic-threshold", type=float, default=0.9, help="semdedup's cosine threshold")
    parser.add_argument("--no-semantic", action="store_true", help="exact and minhash only")
    parser.add_argument("--index-verify", choices=("exact", "estimate"), default="exact", help="what the minhash index keeps to verify later rows: shingle fingerprints (exact) or 16-bit signature slots (estimate)")
    args = parser.parse_args()
    spec = pipeline(args.model, args.semantic_threshold, not args.no_semantic, args.index_verify)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        corpus = build_long_corpus(root / "long") if args.long else debian_descriptions(args.corpus)
        a, b, ab, rows_a, rows_b = split(corpus.path, root, args.shards)
        print(f"corpus: {corpus.rows:,} rows; A = first {rows_a:,}, B = last {rows_b:,}")
        t_joint = timed(spec, ab, root / "out-joint", args.jobs)
        t_a = timed(spec, a, root / "out-a", args.jobs)
        shutil.rmtree(a)  # B against A reads A's index only
        alone, against = (float("inf"), float("inf"), {}), (float("inf"), float("inf"), {})
        cpu_alone, cpu_against = float("inf"), float("inf")
        pairs = []  # (wall ratio, CPU ratio) of each repeat's two runs, back to back
        for repeat in range(args.repeats):  # alternated, best of: the machine is shared
            for out in (root / "out-b-alone", root / "out-b"):
                shutil.rmtree(out, ignore_errors=True)
            first = measured(spec, b, root / "out-b-alone", args.jobs)
            alone, cpu_alone = min(alone, first), min(cpu_alone, first[1])
            second = measured(spec, b, root / "out-b", args.jobs, against=(root / "out-a",))
            against, cpu_against = min(against, second), min(cpu_against, second[1])
            pairs.append((second[0] / first[0], second[1] / first[1]))
        stages = [s["kind"] for s in spec["stage"]]
        loads = {}
        for stage in stages:  # the index load: files read and every digest checked, as a run does
            started = time.perf_counter()
            stored = read_index(root / "out-a" / "index" / stage)
            loads[stage] = (time.perf_counter() - started, stored)
        load = sum(seconds for seconds, _ in loads.values())

        print(f"joint A+B run: {t_joint:.2f} s; A with index: {t_a:.2f} s")
        print(f"B alone:            {alone[0]:.2f} s wall, {cpu_alone:.2f} s CPU (best of {args.repeats})")
        print(f"B against A index:  {against[0]:.2f} s wall, {cpu_against:.2f} s CPU: {against[0] / alone[0]:.2f}x B alone wall, {cpu_against / cpu_alone:.2f}x CPU")
        print(f"index load (all stages, files read and digests checked): {load * 1000:.0f} ms; B against A = {against[0] / (alone[0] + load):.2f}x (B alone + index load)")
        walls, cpus = sorted(p[0] for p in pairs), sorted(p[1] for p in pairs)
        print(f"per repeat, against / alone: wall {' '.join(f'{r:.2f}' for r in walls)} (median {walls[len(walls) // 2]:.2f}); CPU {' '.join(f'{r:.2f}' for r in cpus)} (median {cpus[len(cpus) // 2]:.2f})")
        for stage in stages:
            (s_alone, _), (s_against, matching) = alone[2][stage], against[2][stage]
            extra = f"; tasks matching against A: {matching:.2f} s summed over tasks" if matching is not None else ""
            print(f"  stage {stage}: {s_alone:.2f} s alone, {s_against:.2f} s against A (index load included){extra}")
        for stage in stages:
            seconds, stored = loads[stage]
            print(f"index {stage}: {stored.rows:,} rows, {stored.nbytes:,} bytes = {stored.nbytes / stored.rows:.0f} bytes/row; load + check {seconds * 1000:.0f} ms")
        text_bytes = pl.read_parquet(corpus.path).select(pl.col("text").str.len_bytes().sum()).item()
        shard_bytes = sum(p.stat().st_size for p in ab.glob("*.parquet"))
        print(f"(the data: {text_bytes / corpus.rows:.0f} text bytes/row; the id and text shards: {shard_bytes / corpus.rows:.0f} Parquet bytes/row)")

        b_ids = set(read_parts(root / "out-b-alone" / "kept").column("id").to_pylist()) | set(read_parts(root / "out-b-alone" / "removed").column("id").to_pylist())
        joint = read_parts(root / "out-joint" / "removed").to_pandas().set_index("id")
        joint = joint[joint.index.isin(b_ids)]
        later = read_parts(root / "out-b" / "removed").to_pandas().set_index("id")
        reasons = {"exact": "exact_duplicate", "minhash": "near_duplicate", "semdedup": "semantic_duplicate"}
        for stage, reason in ((s, reasons[s]) for s in stages):
            want = set(joint.index[joint.stage == stage])
            got = set(later.index[later.stage == stage])
            both = sorted(want & got)
            same_rep = (joint.loc[both, "duplicate_of"] == later.loc[both, "duplicate_of"]).mean() if both else 1.0
            earlier = int((later.reason == f"{reason}_of_earlier").sum())
            print(
                f"{stage}: joint removes {len(want):,} B rows, B --against A removes {len(got):,} ({earlier:,} as {reason}_of_earlier); "
                f"same ids: {len(both):,}, only joint {len(want - got):,}, only incremental {len(got - want):,}; same duplicate_of {same_rep:.4f}; "
                f"precision {len(both) / max(len(got), 1):.4f}, recall {len(both) / max(len(want), 1):.4f}"
            )
            if stage == "semdedup":
                # Rows only the incremental run removes, explained: the joint run kept the row
                # as its group's keeper (keep = hard) and removed an earlier row in its place.
                joint_all = read_parts(root / "out-joint" / "removed").to_pandas()
                joint_sem = joint_all[joint_all.stage == stage]
                a_ids = set(read_parts(root / "out-a" / "kept").column("id").to_pylist()) | set(read_parts(root / "out-a" / "removed").column("id").to_pylist())
                kept_over_earlier = set(joint_sem.duplicate_of[joint_sem.id.isin(a_ids)])
                extra = got - want
                to_a = int(joint.loc[sorted(want)].duplicate_of.isin(a_ids).sum()) if want else 0
                alone = read_parts(root / "out-b-alone" / "removed").to_pandas()
                alone = set(alone.id[alone.stage == stage])
                print(f"semdedup, B alone vs the joint run (what re-clustering alone changes): precision {len(alone & want) / max(len(alone), 1):.3f}, recall {len(alone & want) / max(len(want), 1):.3f}")
                print(
                    f"semdedup vs the joint run: precision {len(both) / max(len(got), 1):.3f}, recall {len(both) / max(len(want), 1):.3f}; "
                    f"the joint run removes {to_a:,} B rows as duplicates of A rows; of the {len(extra):,} rows only the incremental run removes, "
                    f"{len(extra & kept_over_earlier):,} are rows the joint run kept while removing an A row as their duplicate"
                )

if __name__ == "__main__":
    main()
