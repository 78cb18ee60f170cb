"""Semantic dedup at scale: growth with rows, driver share, semhash side by side, incremental.

    python -m bench.semdedup_scale [--rows 880000] [--jobs 2] [--big-rows 2000000]
    python -m bench.semdedup_scale --rows 80000 --big-rows 0 --skip-semhash   # a quick run

Corpus: `bench.corpus_short` (real short texts: Debian descriptions, man and doc paragraphs,
Python source lines; seeded edited copies only if the sources fall short), hashing vectors
(`embed` with `model = "hashing"`), T = 0.95 unless --threshold.

- **Growth**: `embed -> semdedup` on the first 1/8 and the first 1/2 of the corpus; the
  semdedup stage's seconds (4x rows: target at most 4.6x), its driver seconds (fit time outside
  task maps), clusters, largest cluster, cosines computed; beside it, in the same run, the
  all-pairs search the stage used to do (FAISS range search enumerating every pair within the
  stage's own clusters) on the same vectors. The ledgers of --jobs 1 and --jobs N on the 1/8 cut
  must be identical.
- **Big**: `embed -> semdedup` on --big-rows rows (the corpus builder pads real texts with
  edited copies past what the machine has): stage seconds, driver share, peak driver RSS.
- **semhash** (if importable; `--semhash-path` adds a folder to its path): the first 100k rows'
  vectors, `semantic_duplicates` vs `SemHash.from_embeddings(...).self_deduplicate(T)` (its
  default index, usearch). Each is scored against the exact form of its own rule over all rows
  (brute-force pairs at cosine >= T by FAISS range search over the flat index, then the greedy
  pass: ours in keep order, semhash's in input order), and ours also against connected
  components (the all-pairs definition).
- **Skewed** (`--skewed`, only this part): one cluster of 22,978 rows, near copies (cosine about
  0.96-0.99) of 50 random 384-d vectors: the former pair listing vs the greedy search, whole and
  split at `max_cluster_rows`.
- **Incremental**: rows 0-50k with `index = true`, then rows 50k-100k with `--against`; of the
  new rows that have an earlier row at cosine >= T (brute force), the share removed as
  duplicates of earlier rows, and the precision of those removals.
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
import pyarrow.parquet as pq
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from bench._harness import GIB, add_result_argument, own_peak_rss, part_table, start_run
from bench.corpus_short import cached_corpus

SEMHASH_ROWS = 100_000


def subset(corpus: Path, rows: int, root: Path, name: str, skip: int = 0) -> Path:
    """Rows [skip, skip + rows) of the corpus as Parquet shards of at most 65,536 rows."""
    import pyarrow as pa

    table = pa.concat_tables(pq.read_table(p, columns=["id", "text"]) for p in sorted(corpus.glob("shard-*.parquet")))
    table = table.slice(skip, rows)
    out = root / name
    out.mkdir(parents=True)
    for i, start in enumerate(range(0, table.num_rows, 65_536)):
        pq.write_table(table.slice(start, 65_536), out / f"part-{i:04d}.parquet")
    return out


def run_stages(source: Path, out: Path, threshold: float, jobs: int, index: bool = False, against=()) -> dict:
    from curate.pipeline import RunOptions, parse_pipeline, run_pipeline

    stages = [{"kind": "embed", "model": "hashing"}, {"kind": "semdedup", "threshold": threshold, "index": index}]
    result = run_pipeline(
        parse_pipeline({"stage": stages}, "bench"),
        source,
        out,
        RunOptions(jobs=jobs, overwrite=True, against=tuple(str(a) for a in against)),
    )
    return result.manifest


def stored_vectors(out: Path) -> tuple[np.ndarray, np.ndarray]:
    store = part_table(out / "embeddings")
    ids = np.array(store.column("id").to_pylist(), dtype=object)
    flat = store.column("embedding").combine_chunks().values.to_numpy()
    return ids, np.ascontiguousarray(flat.reshape(store.num_rows, -1), dtype=np.float32)


def ledger(out: Path) -> dict[str, str]:
    table = part_table(out / "removed", columns=["id", "reason"])
    return dict(zip(table.column("id").to_pylist(), table.column("reason").to_pylist()))


def all_pairs_in_clusters(x: np.ndarray, labels: np.ndarray, threshold: float) -> tuple[float, int]:
    """The former search: FAISS range search within each cluster, every pair enumerated."""
    started = time.perf_counter()
    pairs = 0
    order = np.argsort(labels, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(np.bincount(labels))])
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        if hi - lo < 2:
            continue
        v = np.ascontiguousarray(x[order[lo:hi]])
        index = faiss.IndexFlatIP(v.shape[1])
        index.add(v)
        step = max(1, (1 << 22) // len(v))
        for s in range(0, len(v), step):
            lims, _, ids = index.range_search(v[s : s + step], threshold)
            query = s + np.repeat(np.arange(len(lims) - 1), np.diff(lims.astype(np.int64)))
            pairs += int((ids > query).sum())
    return time.perf_counter() - started, pairs


def brute_force_pairs(x: np.ndarray, threshold: float, chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    left, right = [], []
    for start in range(0, len(x), chunk):
        lims, sims, ids = index.range_search(x[start : start + chunk], threshold - 1e-4)
        query = start + np.repeat(np.arange(len(lims) - 1), np.diff(lims.astype(np.int64)))
        keep = (ids > query) & (sims >= threshold)
        left.append(query[keep])
        right.append(ids[keep])
    return np.concatenate(left), np.concatenate(right)


def greedy_from_pairs(n: int, i: np.ndarray, j: np.ndarray, order: np.ndarray) -> set[int]:
    """Rows removed by the greedy rule in `order` (a row goes when a kept row before it matches)."""
    graph = coo_matrix((np.ones(2 * len(i), np.int8), (np.r_[i, j], np.r_[j, i])), shape=(n, n)).tocsr()
    rank = np.empty(n, np.int64)
    rank[order] = np.arange(n)
    removed = np.zeros(n, dtype=bool)
    has = np.diff(graph.indptr) > 0
    for row in order[has[order]]:
        if removed[row]:
            continue
        nbrs = graph.indices[graph.indptr[row] : graph.indptr[row + 1]]
        removed[nbrs[rank[nbrs] > rank[row]]] = True
    return set(np.flatnonzero(removed).tolist())


def components_removed(n: int, i: np.ndarray, j: np.ndarray, order: np.ndarray) -> set[int]:
    _, comp = connected_components(coo_matrix((np.ones(len(i), np.int8), (i, j)), shape=(n, n)), directed=False)
    rank = np.empty(n, np.int64)
    rank[order] = np.arange(n)
    first = np.lexsort((rank, comp))
    keep = np.ones(n, dtype=bool)
    keep[first[1:]] = comp[first[1:]] != comp[first[:-1]]
    return set(np.flatnonzero(~keep).tolist())


def score(found: set[int], truth: set[int]) -> tuple[float, float]:
    hit = len(found & truth)
    return hit / max(1, len(found)), hit / max(1, len(truth))


def skewed(run, threshold: float, rows: int = 22_978, originals: int = 50) -> None:
    from curate.algorithms.semdedup import cluster_duplicates

    rng = np.random.default_rng(0)
    base = rng.normal(size=(originals, 384)).astype(np.float32)
    x = base[rng.integers(0, originals, rows)] + 0.03 * rng.normal(size=(rows, 384)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    listing, pairs = all_pairs_in_clusters(x, np.zeros(rows, np.int64), threshold)
    table = [["former: range search listing every pair", round(listing, 2), pairs, ""]]
    for label, cap in (("greedy, whole cluster", 0), ("greedy, split at 4,096 rows", 4096)):
        started = time.perf_counter()
        found = cluster_duplicates(x, np.arange(rows), np.zeros(rows, np.float32), threshold, "hard", 0, max_rows=cap)
        table.append([label, round(time.perf_counter() - started, 2), found.comparisons, len(found.removed)])
    run.table(
        f"skewed: one cluster of {rows:,} near copies of {originals} vectors, T = {threshold}",
        ["search", "seconds", "pairs listed / cosines computed", "removed"],
        table,
    )
    run.compare("former listing seconds / greedy (whole) seconds", listing / max(table[1][1], 1e-3))


def semhash_child(vectors: str, threshold: float) -> None:
    from semhash import SemHash

    x = np.load(vectors)

    class Given:  # the vectors are given; semhash never encodes
        def encode(self, inputs, **kwargs):
            raise RuntimeError("not used")

    records = [{"id": str(i), "text": f"row {i}"} for i in range(len(x))]  # distinct keys: no exact grouping
    started = time.perf_counter()
    result = SemHash.from_embeddings(x, records, Given(), columns=["text"]).self_deduplicate(threshold=threshold)
    seconds = time.perf_counter() - started
    removed = sorted(int(d.record["id"]) for d in result.filtered)
    print(json.dumps({"seconds": seconds, "removed": removed}))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=880_000)
    parser.add_argument("--big-rows", type=int, default=2_000_000)
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--threshold", type=float, default=0.95)
    parser.add_argument("--semhash-path", default="")
    parser.add_argument("--skip-growth", action="store_true")
    parser.add_argument("--skip-semhash", action="store_true")
    parser.add_argument("--skip-incremental", action="store_true")
    parser.add_argument("--skewed", action="store_true", help="only the skewed-cluster part")
    parser.add_argument("--semhash-child", help=argparse.SUPPRESS)
    parser.add_argument("--big-child", help=argparse.SUPPRESS)
    add_result_argument(parser, None, "semdedup_scale")
    args = parser.parse_args(argv)
    if args.semhash_child:
        semhash_child(args.semhash_child, args.threshold)
        return
    if args.big_child:
        corpus, out, jobs = args.big_child.split(",")
        manifest = run_stages(Path(corpus), Path(out), args.threshold, int(jobs))
        stage = manifest["stages"][2]
        info = stage["info"]
        print(
            json.dumps(
                {
                    "rows": manifest["input"]["rows"],
                    "stage_seconds": stage["seconds"],
                    "driver_seconds": info["driver_seconds"],
                    "peak_rss": own_peak_rss(),
                    "clusters": info["clusters"],
                    "largest_cluster": info["largest_cluster"],
                    "removed": info["removed"],
                }
            )
        )
        return
    run = start_run(
        "semdedup_scale",
        argv,
        args.result or "semdedup_scale",
        "Semantic dedup: growth 1/8 -> 1/2 of ~0.9M real short texts, driver share at millions of rows, "
        "semhash side by side on 100k, incremental against an earlier output.",
        vars(args),
    )
    from curate.algorithms.kmeans import assign, auto_clusters, set_threads, spherical_kmeans
    from curate.algorithms.semdedup import keep_priority, semantic_duplicates

    set_threads(os.cpu_count() or 1)
    T = args.threshold
    if args.skewed:
        skewed(run, T)
        run.write()
        return
    corpus = cached_corpus(args.rows)
    root = Path(tempfile.mkdtemp(prefix="curate-bench-semdedup-scale-"))
    try:
        if not args.skip_growth:
            rows, seconds = [], {}
            for name, share in (("1/8", 8), ("1/2", 2)):
                source = subset(corpus, args.rows // share, root, f"cut{share}")
                out = root / f"out{share}"
                manifest = run_stages(source, out, T, args.jobs)
                stage = manifest["stages"][2]
                info = stage["info"]
                ids, x = stored_vectors(out)
                # the former search over the stage's own clusters: the pure function's k-means is the
                # stage's (same sample, start and steps, exact sums), so the same centroids
                labels, _ = assign(x, spherical_kmeans(x, auto_clusters(len(x)), seed=0))
                old_seconds, old_pairs = all_pairs_in_clusters(x, labels, T)
                seconds[name] = (stage["seconds"], old_seconds)
                rows.append(
                    [
                        name,
                        len(x),
                        round(stage["seconds"], 1),
                        round(info["driver_seconds"], 2),
                        info["clusters"],
                        info["largest_cluster"],
                        info["split_parts"],
                        info["comparisons"],
                        info["removed"],
                        round(old_seconds, 1),
                        old_pairs,
                    ]
                )
                if share == 8 and args.jobs > 1:
                    one = root / "out8-jobs1"
                    run_stages(source, one, T, 1)
                    run.check(f"1/8: --jobs 1 and --jobs {args.jobs} remove the same rows", ledger(one) == ledger(out))
                    shutil.rmtree(one)
                shutil.rmtree(source)
                shutil.rmtree(out)
            run.table(
                f"semdedup stage, hashing vectors, T = {T}, --jobs {args.jobs}; former all-pairs search beside it",
                [
                    "cut",
                    "rows",
                    "stage s",
                    "driver s",
                    "clusters",
                    "largest",
                    "parts",
                    "cosines",
                    "removed",
                    "all-pairs search s",
                    "all-pairs pairs",
                ],
                rows,
            )
            growth = seconds["1/2"][0] / seconds["1/8"][0]
            run.compare("semdedup stage seconds, 1/2 over 1/8 (4x rows)", growth, target="<= 4.6")
            run.compare("former all-pairs search seconds, 1/2 over 1/8", seconds["1/2"][1] / seconds["1/8"][1])
            run.check("growth at most 4.6x for 4x rows", growth <= 4.6)
        if args.big_rows:
            big_corpus = cached_corpus(args.big_rows)
            out = root / "big"
            started = time.perf_counter()
            child = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "bench.semdedup_scale",
                    "--big-child",
                    f"{big_corpus},{out},{args.jobs}",
                    "--threshold",
                    str(T),
                ],
                capture_output=True,
                text=True,
                check=True,
            )
            report = json.loads(child.stdout.strip().splitlines()[-1])
            share = report["driver_seconds"] / report["stage_seconds"]
            run.table(
                f"big: {report['rows']:,} rows (bench.corpus_short, edited copies past the real texts), hashing, --jobs {args.jobs}",
                ["figure", "value"],
                [
                    ["semdedup stage s", round(report["stage_seconds"], 1)],
                    ["driver s", round(report["driver_seconds"], 2)],
                    ["driver share", round(share, 4)],
                    ["peak driver RSS (GiB)", round(report["peak_rss"] / GIB, 2)],
                    ["clusters", report["clusters"]],
                    ["largest cluster", report["largest_cluster"]],
                    ["removed", report["removed"]],
                    ["pipeline s (embed + semdedup)", round(time.perf_counter() - started, 1)],
                ],
            )
            run.check("big: driver share under 10%", share < 0.10)
            shutil.rmtree(out, ignore_errors=True)
        if not args.skip_semhash or not args.skip_incremental:
            source = subset(corpus, SEMHASH_ROWS, root, "first100k")
            out = root / "out100k"
            run_stages(source, out, T, args.jobs)
            ids, x = stored_vectors(out)
            shutil.rmtree(out)
            started = time.perf_counter()
            i, j = brute_force_pairs(x, T)
            print(
                f"brute force over {len(x):,} rows: {len(i):,} pairs at cosine >= {T} ({time.perf_counter() - started:.0f} s)"
            )
        if not args.skip_semhash:
            started = time.perf_counter()
            ours = semantic_duplicates(x, T, keep="hard", seed=0)
            ours_seconds = time.perf_counter() - started
            order = np.lexsort((np.arange(len(x)), -keep_priority(ours.centroid_similarity, "hard", 0)))
            mine = set(ours.removed.tolist())
            p, r = score(mine, greedy_from_pairs(len(x), i, j, order))
            pc, rc = score(mine, components_removed(len(x), i, j, order))
            table = [
                [
                    "curate semantic_duplicates",
                    round(ours_seconds, 2),
                    round(len(x) / ours_seconds),
                    len(mine),
                    p,
                    r,
                    pc,
                    rc,
                ]
            ]
            path = root / "x.npy"
            np.save(path, x)
            env = dict(os.environ)
            if args.semhash_path:
                env["PYTHONPATH"] = os.pathsep.join([os.getcwd(), env.get("PYTHONPATH", ""), args.semhash_path])
            child = subprocess.run(
                [sys.executable, "-m", "bench.semdedup_scale", "--semhash-child", str(path), "--threshold", str(T)],
                capture_output=True,
                text=True,
                env=env,
            )
            if child.returncode == 0:
                theirs = json.loads(child.stdout.strip().splitlines()[-1])
                found = set(theirs["removed"])
                sp, sr = score(found, greedy_from_pairs(len(x), i, j, np.arange(len(x))))
                table.append(
                    [
                        "semhash (usearch index)",
                        round(theirs["seconds"], 2),
                        round(len(x) / theirs["seconds"]),
                        len(found),
                        sp,
                        sr,
                        "",
                        "",
                    ]
                )
                ratio = theirs["seconds"] / ours_seconds
                run.compare("throughput, curate / semhash", ratio, target=">= 3")
                run.check("at least 3x semhash's throughput", ratio >= 3)
            else:
                print("semhash not run:", child.stderr.strip().splitlines()[-1:] or child.returncode)
            run.table(
                f"{len(x):,} rows, the same hashing vectors, T = {T}: each vs brute force of its own rule",
                [
                    "method",
                    "seconds",
                    "rows/s",
                    "removed",
                    "precision",
                    "recall",
                    "precision vs components",
                    "recall vs components",
                ],
                [[c if not isinstance(c, float) else round(c, 4) for c in row] for row in table],
            )
            run.check("precision and recall >= 0.95 vs brute force", p >= 0.95 and r >= 0.95)
        if not args.skip_incremental:
            half = SEMHASH_ROWS // 2
            earlier_src = subset(corpus, half, root, "A")
            new_src = subset(corpus, half, root, "B", skip=half)
            earlier_out, new_out = root / "outA", root / "outB"
            run_stages(earlier_src, earlier_out, T, args.jobs, index=True)
            manifest = run_stages(new_src, new_out, T, args.jobs, against=(earlier_out,))
            reasons = ledger(new_out)
            removed_earlier = {k for k, v in reasons.items() if v.endswith("_of_earlier") or "earlier" in v}
            cross = (i < half) & (j >= half)
            truth = set(ids[np.unique(j[cross])].tolist())
            p, r = score(removed_earlier, truth)
            run.table(
                f"incremental: rows {half:,}-{2 * half:,} against rows 0-{half:,} (hashing, T = {T})",
                [
                    "new rows with an earlier row at >= T",
                    "removed as earlier duplicates",
                    "precision",
                    "recall",
                    "semdedup s",
                ],
                [
                    [
                        len(truth),
                        len(removed_earlier),
                        round(p, 4),
                        round(r, 4),
                        round(manifest["stages"][2]["seconds"], 1),
                    ]
                ],
            )
            run.check("incremental: recall >= 0.95 and precision >= 0.95", p >= 0.95 and r >= 0.95)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"peak RSS of this process: {own_peak_rss() / GIB:.2f} GiB")
    run.write()


if __name__ == "__main__":
    main()
