"""Incremental dedup: the second half of a real corpus deduplicated against the first half's
index, vs deduplicating it alone and vs one joint run over both halves, in the same run.

    python -m bench.incremental [--corpus DEBIAN_PARQUET | --long] [--rows N] [--jobs N] [--repeats 3]
                                [--model hashing] [--no-semantic] [--index-verify exact|estimate]
    python -m bench.incremental --rows 10000 --repeats 1 --no-semantic     # a quick run

The corpus is split in halves A and B by input order. Runs (exact with normalize, minhash,
semdedup with hashing embeddings, all `index = true`): A alone (writing its index), B alone,
B --against A (A's shards deleted first), and A+B jointly. Printed, all from this one run: wall
and CPU seconds (this process and its workers) of B alone and of B against A's index (best of
--repeats, alternated), the index load (files read and digests checked, per stage), each
stage's seconds in both runs (and the task seconds semdedup spends matching), the index bytes
per row, and how the rows removed from B compare with the joint run's (ids, duplicate_of,
precision and recall). `--rows N`: the first N rows of the corpus only."""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import polars as pl

from bench._harness import ProcessTree, add_result_argument, kept_ids, removed_ids, start_run
from bench.corpora import build_long_corpus, debian_descriptions
from curate.index.store import read_index
from curate.io.parts import read_parts
from curate.pipeline import RunOptions, parse_pipeline, run_pipeline


def pipeline(model: str, threshold: float, semantic: bool = True, index_verify: str = "exact") -> dict:
    stages = [
        {"kind": "exact", "normalize": True, "index": True},
        {"kind": "minhash", "index": True, **({"index_verify": index_verify} if index_verify != "exact" else {})},
    ]
    if semantic:
        stages.append({"kind": "semdedup", "model": model, "threshold": threshold, "index": True})
    return {"stage": stages}


def split(corpus: Path, root: Path, shards: int, rows: int = 0) -> tuple[Path, Path, Path, int, int]:
    """Halves A and B by input order, `shards` files each, and a joint directory of both
    (of the first `rows` rows only, when given)."""
    frame = pl.read_parquet(corpus).select("id", "text")
    if rows:
        frame = frame.head(rows)
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


def measured(
    spec: dict, source: Path, out: Path, jobs: int | None, against: tuple[Path, ...] = ()
) -> tuple[float, float, dict]:
    """Wall seconds, CPU seconds of the process tree, and the manifest's stage seconds (and
    the seconds tasks spent matching against earlier outputs, where a stage records them)."""
    with ProcessTree() as cpu:
        started = time.perf_counter()
        result = run_pipeline(
            parse_pipeline(spec, "bench"), source, out, RunOptions(jobs=jobs, against=tuple(map(str, against)))
        )
        wall = time.perf_counter() - started
    stages = {
        s["name"]: (s["seconds"], s["info"].get("earlier_task_seconds"))
        for s in result.manifest["stages"]
        if s["name"] != "input"
    }
    return wall, cpu.cpu_seconds, stages


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--corpus",
        type=Path,
        default=None,
        help="Debian descriptions Parquet (default: shared/data beside the checkout)",
    )
    parser.add_argument(
        "--long", action="store_true", help="instead: bench.corpora's long documents (2-64 KB of real text each)"
    )
    parser.add_argument("--rows", type=int, default=0, help="the first N rows of the corpus (0: all)")
    parser.add_argument("--jobs", type=int, default=None, help="worker processes (default: every core)")
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument(
        "--model", default="hashing", help="semdedup's embedding model (hashing: no model to load; minilm)"
    )
    parser.add_argument("--repeats", type=int, default=3, help="B alone and B against A, alternated, best of")
    parser.add_argument("--semantic-threshold", type=float, default=0.9, help="semdedup's cosine threshold")
    parser.add_argument("--no-semantic", action="store_true", help="exact and minhash only")
    parser.add_argument(
        "--index-verify",
        choices=("exact", "estimate"),
        default="exact",
        help="what the minhash index keeps to verify later rows: shingle fingerprints (exact) or 16-bit signature slots (estimate)",
    )
    add_result_argument(parser, "incremental")
    args = parser.parse_args(argv)
    run = start_run(
        "incremental",
        argv,
        args.result,
        "Incremental dedup: the second half B of a corpus against the first half A's index, vs B alone and vs one joint run.",
        vars(args),
    )
    spec = pipeline(args.model, args.semantic_threshold, not args.no_semantic, args.index_verify)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        corpus = build_long_corpus(root / "long") if args.long else debian_descriptions(args.corpus)
        a, b, ab, rows_a, rows_b = split(corpus.path, root, args.shards, args.rows)
        total_rows = rows_a + rows_b
        print(f"corpus: {total_rows:,} rows; A = first {rows_a:,}, B = last {rows_b:,}")
        run.params.update(rows_a=rows_a, rows_b=rows_b)
        t_joint = timed(spec, ab, root / "out-joint", args.jobs)
        t_a = timed(spec, a, root / "out-a", args.jobs)
        shutil.rmtree(a)  # B against A reads A's index only
        alone, against = (float("inf"), float("inf"), {}), (float("inf"), float("inf"), {})
        cpu_alone, cpu_against = float("inf"), float("inf")
        pairs = []  # (wall ratio, CPU ratio) of each repeat's two runs, back to back
        for _repeat in range(args.repeats):  # alternated, best of: the machine is shared
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
        print(
            f"B against A index:  {against[0]:.2f} s wall, {cpu_against:.2f} s CPU: {against[0] / alone[0]:.2f}x B alone wall, {cpu_against / cpu_alone:.2f}x CPU"
        )
        print(
            f"index load (all stages, files read and digests checked): {load * 1000:.0f} ms; B against A = {against[0] / (alone[0] + load):.2f}x (B alone + index load)"
        )
        walls, cpus = sorted(p[0] for p in pairs), sorted(p[1] for p in pairs)
        print(
            f"per repeat, against / alone: wall {' '.join(f'{r:.2f}' for r in walls)} (median {walls[len(walls) // 2]:.2f}); CPU {' '.join(f'{r:.2f}' for r in cpus)} (median {cpus[len(cpus) // 2]:.2f})"
        )
        for stage in stages:
            (s_alone, _), (s_against, matching) = alone[2][stage], against[2][stage]
            extra = f"; tasks matching against A: {matching:.2f} s summed over tasks" if matching is not None else ""
            print(f"  stage {stage}: {s_alone:.2f} s alone, {s_against:.2f} s against A (index load included){extra}")
        for stage in stages:
            seconds, stored = loads[stage]
            print(
                f"index {stage}: {stored.rows:,} rows, {stored.nbytes:,} bytes = {stored.nbytes / stored.rows:.0f} bytes/row; load + check {seconds * 1000:.0f} ms"
            )
        text_bytes = pl.read_parquet(str(ab / "*.parquet")).select(pl.col("text").str.len_bytes().sum()).item()
        shard_bytes = sum(p.stat().st_size for p in ab.glob("*.parquet"))
        print(
            f"(the data: {text_bytes / total_rows:.0f} text bytes/row; the id and text shards: {shard_bytes / total_rows:.0f} Parquet bytes/row)"
        )
        run.table(
            f"time, best of {args.repeats} (B alone and B against A alternated)",
            ["run", "wall s", "CPU s"],
            [
                ["joint A+B", round(t_joint, 2), None],
                ["A, writing its index", round(t_a, 2), None],
                ["B alone", round(alone[0], 2), round(cpu_alone, 2)],
                ["B against A's index", round(against[0], 2), round(cpu_against, 2)],
            ],
            show=False,
        )
        run.compare("B against A's index / B alone, wall", against[0] / alone[0])
        run.compare("B against A's index / B alone, CPU", cpu_against / cpu_alone)
        run.compare("B against A's index / (B alone + index load), wall", against[0] / (alone[0] + load))
        run.table(
            "per stage",
            [
                "stage",
                "alone s",
                "against A s",
                "tasks matching against A s",
                "index rows",
                "index bytes/row",
                "index load + check ms",
            ],
            [
                [
                    stage,
                    round(alone[2][stage][0], 2),
                    round(against[2][stage][0], 2),
                    against[2][stage][1],
                    loads[stage][1].rows,
                    round(loads[stage][1].nbytes / loads[stage][1].rows),
                    round(loads[stage][0] * 1000),
                ]
                for stage in stages
            ],
            show=False,
        )
        run.data.update(
            ratios_per_repeat={"wall": walls, "cpu": cpus},
            text_bytes_per_row=text_bytes / total_rows,
            shard_bytes_per_row=shard_bytes / total_rows,
        )

        b_ids = set(kept_ids(root / "out-b-alone")) | removed_ids(root / "out-b-alone")
        joint = read_parts(root / "out-joint" / "removed").to_pandas().set_index("id")
        joint = joint[joint.index.isin(b_ids)]
        later = read_parts(root / "out-b" / "removed").to_pandas().set_index("id")
        reasons = {"exact": "exact_duplicate", "minhash": "near_duplicate", "semdedup": "semantic_duplicate"}
        agreement = []
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
            agreement.append(
                [
                    stage,
                    len(want),
                    len(got),
                    earlier,
                    len(both),
                    len(want - got),
                    len(got - want),
                    float(same_rep),
                    len(both) / max(len(got), 1),
                    len(both) / max(len(want), 1),
                ]
            )
            if stage == "semdedup":
                # Rows only the incremental run removes, explained: the joint run kept the row
                # as its group's keeper (keep = hard) and removed an earlier row in its place.
                joint_all = read_parts(root / "out-joint" / "removed").to_pandas()
                joint_sem = joint_all[joint_all.stage == stage]
                a_ids = set(kept_ids(root / "out-a")) | removed_ids(root / "out-a")
                kept_over_earlier = set(joint_sem.duplicate_of[joint_sem.id.isin(a_ids)])
                extra = got - want
                to_a = int(joint.loc[sorted(want)].duplicate_of.isin(a_ids).sum()) if want else 0
                alone = read_parts(root / "out-b-alone" / "removed").to_pandas()
                alone = set(alone.id[alone.stage == stage])
                print(
                    f"semdedup, B alone vs the joint run (what re-clustering alone changes): precision {len(alone & want) / max(len(alone), 1):.3f}, recall {len(alone & want) / max(len(want), 1):.3f}"
                )
                print(
                    f"semdedup vs the joint run: precision {len(both) / max(len(got), 1):.3f}, recall {len(both) / max(len(want), 1):.3f}; "
                    f"the joint run removes {to_a:,} B rows as duplicates of A rows; of the {len(extra):,} rows only the incremental run removes, "
                    f"{len(extra & kept_over_earlier):,} are rows the joint run kept while removing an A row as their duplicate"
                )
                run.data["semdedup"] = {
                    "b_alone_precision": len(alone & want) / max(len(alone), 1),
                    "b_alone_recall": len(alone & want) / max(len(want), 1),
                    "joint_removes_as_duplicates_of_a": to_a,
                    "only_incremental": len(extra),
                    "only_incremental_kept_by_joint_over_a": len(extra & kept_over_earlier),
                }
        run.table(
            "rows removed from B: B against A vs the joint run",
            [
                "stage",
                "joint",
                "against A",
                "as _of_earlier",
                "same ids",
                "only joint",
                "only against A",
                "same duplicate_of",
                "precision",
                "recall",
            ],
            agreement,
            show=False,
        )
    run.write()


if __name__ == "__main__":
    main()
