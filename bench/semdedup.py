"""Semantic dedup quality vs brute force on real data, and time / peak RSS at 1M x 384.

    python -m bench.semdedup [--cache DIR] [--rows 1000000]
    python -m bench.semdedup --skip-real        # only the synthetic scale run
    python -m bench.semdedup --skip-synthetic   # only the Debian quality run
    python -m bench.semdedup --model hashing --rows 20000   # a quick run

Part 1 (Debian, minilm, T = 0.95): the `semdedup` stage's removed rows vs brute force, i.e.
connected components of the exact all-pairs cosine >= T graph (FAISS range search over the
full index, no clustering), keeping per component the member the same keep rule picks.
Also: how many brute-force pairs k-means splits across clusters (what SemDeDup cannot see),
for several cluster counts. The minilm embeddings are computed once by the embed stage into
--cache and reused from there (the store's reuse rule) on later runs.

Part 2: 1M x 384 synthetic unit vectors (1,000 topics, 5% planted near copies) in a .npy
memory map; `semantic_duplicates` runs in a child process, which reports wall time and peak
RSS (getrusage), so the parent's memory does not count.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from bench._harness import GIB, Run, add_result_argument, cli_env, own_peak_rss, part_table, removed_ids, start_run
from bench.corpora import DEBIAN_DESCRIPTIONS as DEBIAN
from curate.algorithms.kmeans import set_threads
from curate.algorithms.semdedup import keep_priority, semantic_duplicates
from curate.pipeline import RunOptions, parse_pipeline, run_pipeline


def brute_force_pairs(x: np.ndarray, threshold: float, chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """All pairs i < j with cosine >= threshold, exactly (flat index, query blocks)."""
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    radius = float(np.nextafter(np.float32(threshold), np.float32(-np.inf)))
    left, right = [], []
    for start in range(0, len(x), chunk):
        lims, sims, ids = index.range_search(x[start : start + chunk], radius)
        query = start + np.repeat(np.arange(len(lims) - 1), np.diff(lims.astype(np.int64)))
        keep = (ids > query) & (sims >= threshold)
        left.append(query[keep])
        right.append(ids[keep])
    return np.concatenate(left), np.concatenate(right)


def removed_by_components(n: int, i: np.ndarray, j: np.ndarray, priority: np.ndarray) -> np.ndarray:
    """Rows removed when each connected component keeps its highest-priority member (ties: earliest)."""
    _, comp = connected_components(coo_matrix((np.ones(len(i), np.int8), (i, j)), shape=(n, n)), directed=False)
    order = np.lexsort((np.arange(n), -priority, comp))
    first = np.ones(n, dtype=bool)
    first[1:] = comp[order][1:] != comp[order][:-1]
    return np.sort(order[~first])


def real_data(cache: Path, threshold: float, seed: int, model: str, run: Run) -> None:
    work = Path(tempfile.mkdtemp(prefix="curate-bench-semdedup-"))
    try:
        if model == "minilm" and not (cache / "embeddings" / "embeddings.json").exists():
            print(f"embedding {DEBIAN.name} with minilm into {cache} (once; later runs reuse it) ...", flush=True)
            started = time.perf_counter()
            run_pipeline(
                parse_pipeline({"stage": [{"kind": "embed", "model": "minilm"}]}, "bench"),
                DEBIAN,
                cache,
                RunOptions(overwrite=True),
            )
            print(f"  {time.perf_counter() - started:.0f} s", flush=True)
        out = work / "out"
        stages = [
            {"kind": "embed", "model": model, "cache": str(cache) if model == "minilm" else ""},
            {"kind": "semdedup", "threshold": threshold},
        ]
        started = time.perf_counter()
        result = run_pipeline(parse_pipeline({"stage": stages, "seed": seed}, "bench"), DEBIAN, out, RunOptions())
        seconds = time.perf_counter() - started
        embed_info, sem_info = result.manifest["stages"][1]["info"], result.manifest["stages"][2]["info"]
        print(f"\nDebian descriptions: {result.manifest['input']['rows']:,} rows, {model}, T = {threshold}")
        print(
            f"  pipeline (embed reused {embed_info['reused']:,} / computed {embed_info['computed']:,}; semdedup): {seconds:.1f} s, "
            f"semdedup stage {result.manifest['stages'][2]['seconds']:.1f} s, {sem_info['clusters']} clusters, largest {sem_info['largest_cluster']}"
        )

        run.data["real"] = {
            "rows": result.manifest["input"]["rows"],
            "pipeline_seconds": seconds,
            "semdedup_seconds": result.manifest["stages"][2]["seconds"],
            "clusters": sem_info["clusters"],
            "largest_cluster": sem_info["largest_cluster"],
        }
        store = part_table(out / "embeddings")
        ids = np.array(store.column("id").to_pylist(), dtype=object)
        x = np.ascontiguousarray(
            store.column("embedding").combine_chunks().values.to_numpy().reshape(store.num_rows, -1)
        )
        stage_removed = removed_ids(out)
        set_threads(os.cpu_count() or 1)
        started = time.perf_counter()
        i, j = brute_force_pairs(x, threshold)
        print(f"  brute force: {len(i):,} pairs with cosine >= {threshold} ({time.perf_counter() - started:.1f} s)")

        rows = []
        ledger_matches = True
        for clusters in (0, 50, 100):
            started = time.perf_counter()
            ours = semantic_duplicates(x, threshold, clusters=clusters, keep="hard", seed=seed)
            took = time.perf_counter() - started
            if clusters == 0:  # the stage's configuration: its ledger must be exactly this
                ledger_matches = set(ids[ours.removed]) == stage_removed
            truth = removed_by_components(len(x), i, j, keep_priority(ours.centroid_similarity, "hard", seed))
            hit = len(np.intersect1d(ours.removed, truth))
            split = int((ours.labels[i] != ours.labels[j]).sum())
            k = len(ours.centroids)
            rows.append(
                (
                    f"{k}{' (auto)' if clusters == 0 else ''}",
                    len(ours.removed),
                    len(truth),
                    round(hit / max(1, len(ours.removed)), 4),
                    round(hit / max(1, len(truth)), 4),
                    f"{split:,} of {len(i):,} ({100 * split / max(1, len(i)):.2f}%)",
                    round(took, 1),
                )
            )
        run.table(
            f"Debian descriptions, {model}, T = {threshold}: semdedup vs brute force ({len(i):,} pairs with cosine >= {threshold})",
            [
                "clusters",
                "removed",
                "brute-force removed",
                "precision",
                "recall",
                "pairs split across clusters",
                "seconds",
            ],
            rows,
        )
        if not run.check("the stage's ledger is the pure function's removed rows", ledger_matches):
            raise SystemExit("stage ledger differs from the pure function")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def make_synthetic(path: Path, n: int, d: int, seed: int, topics: int = 1000, dup_share: float = 0.05) -> int:
    """Unit vectors around `topics` centres (within-topic cosine about 0.5) with `dup_share` of
    rows replaced by near copies (cosine about 0.99) of other rows. Returns the planted count."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(topics, d)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    x = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, d))
    chunk = 50_000
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        block = centres[rng.integers(0, topics, m)] + rng.normal(size=(m, d)).astype(np.float32) / np.sqrt(d)
        x[start : start + m] = block / np.linalg.norm(block, axis=1, keepdims=True)
    planted = int(n * dup_share)
    copies = np.sort(rng.choice(n, planted, replace=False))
    originals = rng.integers(0, n, planted)
    for start in range(0, planted, chunk):
        c, o = copies[start : start + chunk], originals[start : start + chunk]
        block = x[o] + 0.1 * rng.normal(size=(len(o), d)).astype(np.float32) / np.sqrt(d)
        x[c] = block / np.linalg.norm(block, axis=1, keepdims=True)
    x.flush()
    del x
    return planted


def synthetic_child(path: str, threshold: float, seed: int) -> None:
    x = np.load(path, mmap_mode="r")
    set_threads(os.cpu_count() or 1)
    started = time.perf_counter()
    result = semantic_duplicates(x, threshold, clusters=0, keep="hard", seed=seed)
    seconds = time.perf_counter() - started
    print(
        json.dumps(
            {
                "seconds": seconds,
                "peak_rss_gib": own_peak_rss() / GIB,
                "removed": len(result.removed),
                "clusters": len(result.centroids),
                "largest_cluster": result.largest_cluster,
                "pairs": result.pairs,
            }
        )
    )


def synthetic(rows: int, threshold: float, seed: int, run: Run) -> None:
    with tempfile.TemporaryDirectory(prefix="curate-bench-semdedup-") as tmp:
        path = Path(tmp) / "x.npy"
        started = time.perf_counter()
        planted = make_synthetic(path, rows, 384, seed)
        print(
            f"\nsynthetic: {rows:,} x 384 float32 ({path.stat().st_size / 2**30:.2f} GiB memmap), {planted:,} planted near copies "
            f"(made in {time.perf_counter() - started:.0f} s)",
            flush=True,
        )
        child = subprocess.run(
            [
                sys.executable,
                "-m",
                "bench.semdedup",
                "--synthetic-child",
                str(path),
                "--threshold",
                str(threshold),
                "--seed",
                str(seed),
            ],
            capture_output=True,
            text=True,
            check=True,
            env=cli_env(),
        )
        report = json.loads(child.stdout.strip().splitlines()[-1])
        print(
            f"  semantic_duplicates: {report['seconds']:.1f} s (target < 300 s), peak RSS {report['peak_rss_gib']:.2f} GiB (target < 3 GiB)"
        )
        print(
            f"  {report['clusters']} clusters (largest {report['largest_cluster']:,}), {report['pairs']:,} pairs, "
            f"removed {report['removed']:,} (planted {planted:,}; copies of a common original also pair up)"
        )
        run.table(
            f"synthetic: {rows:,} x 384 unit vectors, {planted:,} planted near copies, T = {threshold}; semantic_duplicates in a child process",
            ["figure", "value"],
            [
                ["seconds", round(report["seconds"], 1)],
                ["peak RSS (GiB)", round(report["peak_rss_gib"], 2)],
                ["clusters", report["clusters"]],
                ["largest cluster", report["largest_cluster"]],
                ["pairs", report["pairs"]],
                ["removed", report["removed"]],
            ],
            show=False,
        )
        run.check("synthetic: under 300 s per 1M rows", report["seconds"] < 300 * rows / 1_000_000)
        run.check("synthetic: peak RSS under 3 GiB", report["peak_rss_gib"] < 3)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "curate-bench" / "debian-minilm")
    parser.add_argument("--threshold", type=float, default=0.95)
    parser.add_argument("--model", default="minilm", choices=["minilm", "hashing"])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-real", action="store_true")
    parser.add_argument("--skip-synthetic", action="store_true")
    parser.add_argument("--synthetic-child", help=argparse.SUPPRESS)
    add_result_argument(parser, None, "semdedup-MODEL")
    args = parser.parse_args(argv)
    if args.synthetic_child:
        synthetic_child(args.synthetic_child, args.threshold, args.seed)
        return
    run = start_run(
        "semdedup",
        argv,
        args.result or f"semdedup-{args.model}",
        "Semantic dedup: the stage vs brute force (all pairs at cosine >= T) on real data; "
        "time and peak RSS on synthetic vectors.",
        vars(args),
    )
    if not args.skip_real:
        real_data(args.cache, args.threshold, args.seed, args.model, run)
    if not args.skip_synthetic:
        synthetic(args.rows, args.threshold, args.seed, run)
    run.write()


if __name__ == "__main__":
    main()
