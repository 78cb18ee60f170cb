"""MinHash near-dup benchmark: our stage vs peers on the same real documents, in one run.

For each corpus (the short Debian descriptions and a long-document corpus of 300 B to 200 KB
real files built from this machine's Python sources, docs and man pages, see bench/corpora.py),
it prints throughput and removal counts of:
  * ours: `curate.pipeline.run_pipeline` with one minhash stage, end to end (input check,
    fit, transform, output written), on every core (`--jobs`, default all) and on one
    (`--jobs 1`), CPU time counted over the worker processes too;
  * datasketch: the plain loop, `MinHash(num_perm=128).update_batch(shingles)` per document,
    then `MinHashLSH(threshold).query` and `insert` (a document with a hit is a duplicate);
  * rensa (Rust MinHash) fed the same Python-built shingles, same loop, if installed;
  * datatrove's four-step MinHash dedup (signatures, buckets, clusters, filter), if installed.
Quality: the ground truth is exact Jaccard over the same shingles (built here by a plain
Python reference tokenizer, independent of ours) for all pairs a prefix filter cannot rule
out (complete for Jaccard >= threshold); the rows to remove are every member but the earliest
of each connected component. Precision and recall are over removed rows.

    python -m bench.minhash [--corpus long] [--long-docs 8000] [--repeats 2] [--jobs N]
                            [--debian PATH] [--long-corpus PATH]
    python -m bench.minhash --corpus debian --short-docs 5000 --verify exact   # a quick run
    python -m bench.minhash --scale-rows 1000000     # our stage alone: time and peak RSS

Timings of ours and of the datasketch loop are the best of `--repeats` runs (the machine may
be shared); ratios are computed within the run.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import io
import json
import math
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from bench._harness import ProcessTree, Run, add_result_argument, cli_env, curate_cli, removed_ids, start_run
from bench.corpora import build_long_corpus, debian_descriptions
from curate.output.ledger import ids_as_strings
from curate.pipeline import RunOptions, parse_pipeline, run_pipeline

WORD = re.compile(r"\w+")


@dataclass
class Result:
    corpus: str
    method: str
    seconds: float | None
    removed: int | None
    precision: float | None = None
    recall: float | None = None
    note: str = ""
    extra: dict = field(default_factory=dict)


# ---------------------------------------------------------------------------------------
# Reference shingles (the tokenization contract, written the obvious way in Python).


def reference_shingles(text: str, ngram: int) -> list[str]:
    words = WORD.findall(text.lower())
    if not words:
        return []
    if len(words) < ngram:
        return [" ".join(words)]
    return [" ".join(words[i : i + ngram]) for i in range(len(words) - ngram + 1)]


def ground_truth(texts: list[str], ngram: int, threshold: float) -> tuple[np.ndarray, dict]:
    """Indices of rows a perfect near-dup stage removes: exact Jaccard >= threshold edges
    (prefix filtering for completeness), connected components, all but the earliest member."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    vocab: dict[str, int] = {}
    sets: list[np.ndarray] = []
    for text in texts:
        sets.append(
            np.unique(
                np.fromiter((vocab.setdefault(s, len(vocab)) for s in reference_shingles(text, ngram)), dtype=np.int64)
            )
        )
    freq = np.zeros(len(vocab), dtype=np.int64)
    for s in sets:
        freq[s] += 1
    rank = np.empty(len(vocab), dtype=np.int64)  # rarest shingles first
    rank[np.lexsort((np.arange(len(vocab)), freq))] = np.arange(len(vocab))
    tokens, docs = [], []
    for d, s in enumerate(sets):
        if len(s) == 0:
            continue
        prefix = len(s) - math.ceil(threshold * len(s) - 1e-9) + 1
        tokens.append(np.sort(rank[s])[:prefix])
        docs.append(np.full(prefix, d, dtype=np.int64))
    tokens_all, docs_all = np.concatenate(tokens), np.concatenate(docs)
    order = np.lexsort((docs_all, tokens_all))
    tokens_all, docs_all = tokens_all[order], docs_all[order]
    bounds = np.flatnonzero(np.diff(tokens_all)) + 1
    pairs = set()
    for group in np.split(docs_all, bounds):
        if len(group) > 1:
            for a in range(len(group)):
                for b in range(a + 1, len(group)):
                    pairs.add((int(group[a]), int(group[b])))
    edges = []
    set_objs = [set(s.tolist()) for s in sets]
    for a, b in pairs:
        la, lb = len(set_objs[a]), len(set_objs[b])
        if min(la, lb) < threshold * max(la, lb):
            continue
        inter = len(set_objs[a] & set_objs[b])
        if inter / (la + lb - inter) >= threshold - 1e-12:
            edges.append((a, b))
    n = len(texts)
    if edges:
        e = np.array(edges, dtype=np.int64)
        graph = coo_matrix((np.ones(len(e)), (e[:, 0], e[:, 1])), shape=(n, n))
        _, labels = connected_components(graph, directed=False)
        first = np.full(labels.max() + 1, n, dtype=np.int64)
        np.minimum.at(first, labels, np.arange(n))
        removed = np.flatnonzero(first[labels] != np.arange(n))
    else:
        removed = np.empty(0, np.int64)
    return removed, {"candidate_pairs": len(pairs), "true_pairs": len(edges), "vocab": len(vocab)}


def score(removed: set[str], truth: set[str]) -> tuple[float, float]:
    hit = len(removed & truth)
    precision = hit / len(removed) if removed else 1.0
    recall = hit / len(truth) if truth else 1.0
    return precision, recall


# ---------------------------------------------------------------------------------------
# Runners.


def run_ours(
    shards: Path, out: Path, threshold: float, ngram: int, num_perm: int, jobs: int | None, verify: str
) -> tuple[float, set[str], dict]:
    spec = parse_pipeline(
        {
            "stage": [
                {"kind": "minhash", "threshold": threshold, "ngram": ngram, "num_perm": num_perm, "verify": verify}
            ]
        },
        "bench",
    )
    shutil.rmtree(out, ignore_errors=True)
    started = time.perf_counter()
    result = run_pipeline(spec, shards, out, RunOptions(jobs=jobs))
    seconds = time.perf_counter() - started
    removed = removed_ids(out)
    stage = result.manifest["stages"][1]
    return (
        seconds,
        removed,
        {
            "stage_seconds": stage["seconds"],
            "input_check_seconds": result.manifest["stages"][0]["seconds"],
            "executor": result.manifest["executor"]["description"],
            **stage["info"],
        },
    )


def read_corpus(shards: Path) -> tuple[list[str], list[str]]:
    table = pq.read_table(shards, columns=["id", "text"])
    return ids_as_strings(table.column("id")).to_pylist(), table.column("text").to_pylist()


def run_datasketch(shards: Path, threshold: float, ngram: int, num_perm: int) -> tuple[float, set[str]]:
    from datasketch import MinHash, MinHashLSH

    started = time.perf_counter()
    ids, texts = read_corpus(shards)
    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    removed = set()
    for doc_id, text in zip(ids, texts):
        shingles = reference_shingles(text, ngram)
        if not shingles:
            continue
        m = MinHash(num_perm=num_perm)
        m.update_batch([s.encode("utf-8") for s in shingles])
        if lsh.query(m):
            removed.add(doc_id)
        else:
            lsh.insert(doc_id, m)
    return time.perf_counter() - started, removed


def run_rensa(shards: Path, threshold: float, ngram: int, num_perm: int, bands: int) -> tuple[float, set[str]]:
    from rensa import RMinHash, RMinHashLSH

    started = time.perf_counter()
    ids, texts = read_corpus(shards)
    lsh = RMinHashLSH(threshold, num_perm, bands)
    removed = set()
    for index, (doc_id, text) in enumerate(zip(ids, texts)):
        shingles = reference_shingles(text, ngram)
        if not shingles:
            continue
        m = RMinHash(num_perm, 42)
        m.update(shingles)
        if lsh.query(m):
            removed.add(doc_id)
        else:
            lsh.insert(index, m)
    return time.perf_counter() - started, removed


def _regex_words_tokenizer():
    """`\\w+` words for datatrove: its English tokenizer needs spacy (not installed here), and
    this is the same word rule as ours and the ground truth's."""
    from datatrove.utils.word_tokenizers import WordTokenizer

    global RegexWords

    class RegexWords(WordTokenizer):
        def word_tokenize(self, text: str) -> list[str]:
            return WORD.findall(text)

        def sent_tokenize(self, text: str) -> list[str]:
            return [text]

        def span_tokenize(self, text: str) -> list[tuple[int, int]]:
            return [m.span() for m in WORD.finditer(text)]

    RegexWords.__qualname__ = "RegexWords"
    return RegexWords()


def run_datatrove(shards: Path, work: Path, ngram: int, workers: int) -> tuple[float, set[str]]:
    """datatrove's documented four-step MinHash dedup with its defaults (14 x 8, 64-bit hashes,
    no verification), tokenizing words by `\\w+` after its own text normalization."""
    import logging

    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup import MinhashDedupSignature
    from datatrove.pipeline.dedup.minhash import (
        MinhashConfig,
        MinhashDedupBuckets,
        MinhashDedupCluster,
        MinhashDedupFilter,
    )
    from datatrove.pipeline.readers import ParquetReader
    from datatrove.pipeline.writers import ParquetWriter
    from datatrove.utils.hashing import HashConfig

    try:
        from loguru import logger

        logger.remove()
    except Exception:  # pragma: no cover - logging only
        pass
    logging.disable(logging.WARNING)
    import datatrove.utils.hashes.xxhash as datatrove_xxhash
    import xxhash

    # Compatibility shim: datatrove passes str to xxhash, which xxhash >= 4 refuses.
    datatrove_xxhash.xxhash64 = lambda data: xxhash.xxh64_intdigest(
        data.encode("utf-8") if isinstance(data, str) else data
    )
    shutil.rmtree(work, ignore_errors=True)
    config = MinhashConfig(n_grams=ngram, hash_config=HashConfig(precision=64))
    tasks = len(list(shards.glob("*.parquet")))
    started = time.perf_counter()
    common = {"skip_completed": False}
    LocalPipelineExecutor(
        pipeline=[
            ParquetReader(str(shards)),
            MinhashDedupSignature(output_folder=str(work / "sigs"), config=config, language=_regex_words_tokenizer()),
        ],
        tasks=tasks,
        workers=workers,
        logging_dir=str(work / "logs1"),
        **common,
    ).run()
    LocalPipelineExecutor(
        pipeline=[
            MinhashDedupBuckets(input_folder=str(work / "sigs"), output_folder=str(work / "buckets"), config=config)
        ],
        tasks=config.num_buckets,
        workers=workers,
        logging_dir=str(work / "logs2"),
        **common,
    ).run()
    LocalPipelineExecutor(
        pipeline=[
            MinhashDedupCluster(input_folder=str(work / "buckets"), output_folder=str(work / "remove"), config=config)
        ],
        tasks=1,
        logging_dir=str(work / "logs3"),
        **common,
    ).run()
    LocalPipelineExecutor(
        pipeline=[
            ParquetReader(str(shards)),
            MinhashDedupFilter(
                input_folder=str(work / "remove"), exclusion_writer=ParquetWriter(str(work / "removed"))
            ),
            ParquetWriter(str(work / "kept")),
        ],
        tasks=tasks,
        workers=workers,
        logging_dir=str(work / "logs4"),
        **common,
    ).run()
    seconds = time.perf_counter() - started
    removed = set()
    for path in sorted((work / "removed").rglob("*.parquet")):
        removed.update(str(x) for x in pq.read_table(path, columns=["id"]).column("id").to_pylist())
    return seconds, removed


# ---------------------------------------------------------------------------------------


def write_shards(table: pa.Table, out: Path, shards: int) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    step = math.ceil(table.num_rows / shards)
    for k in range(shards):
        pq.write_table(table.slice(k * step, step), out / f"part-{k:05d}.parquet", compression="zstd")
    return out


def bench_corpus(name: str, table: pa.Table, args: argparse.Namespace, tmp: Path, run: Run) -> list[Result]:
    from curate.stages.minhash import MinHashDedup

    shards = write_shards(table.select(["id", "text"]), tmp / f"{name}-in", args.shards)
    texts = table.column("text").to_pylist()
    ids = ids_as_strings(table.column("id")).to_pylist()
    mb = sum(len(t.encode("utf-8")) for t in texts) / 1e6
    print(f"\n== {name}: {len(texts):,} documents, {mb:.1f} MB of text ==", flush=True)
    t0 = time.perf_counter()
    truth_rows, truth_info = ground_truth(texts, args.ngram, args.threshold)
    truth = {ids[i] for i in truth_rows}
    print(
        f"ground truth: {len(truth):,} rows to remove ({truth_info['true_pairs']:,} pairs with exact Jaccard >= {args.threshold}; {time.perf_counter() - t0:.1f}s)",
        flush=True,
    )
    run.data[name] = {"documents": len(texts), "megabytes": round(mb, 2), "truth_rows": len(truth), **truth_info}
    results: list[Result] = []

    def add(
        method: str,
        seconds: float | None,
        removed: set[str] | None,
        note: str = "",
        extra: dict | None = None,
        cpu: float = 0.0,
    ) -> None:
        p, r = score(removed, truth) if removed is not None else (None, None)
        extra = {**(extra or {}), "cpu_seconds": round(cpu, 2)}
        results.append(Result(name, method, seconds, len(removed) if removed is not None else None, p, r, note, extra))
        line = f"{method:<30}" + (
            f"{seconds:8.2f}s (cpu {cpu:6.2f}s) {len(texts) / seconds:8,.0f} docs/s {mb / seconds:6.2f} MB/s  removed {len(removed):6,}  P {p:.4f}  R {r:.4f}"
            if seconds and removed is not None and p is not None and r is not None
            else f"  {note}"
        )
        print(line, flush=True)

    def best_of(measure, repeats: int):
        """(wall, cpu, result) of the run with the least wall time among `repeats`; CPU counted
        over the run's worker processes too."""
        best = None
        for _ in range(max(1, repeats)):
            gc.collect()
            with ProcessTree() as cpu:
                found = measure()
            if best is None or found[0] < best[0]:
                best = (found[0], cpu.cpu_seconds, found)
        return best

    jobs_label = "all cores" if args.jobs is None else f"--jobs {args.jobs}"
    runs = [(verify, args.jobs, jobs_label) for verify in args.verify] + [(args.verify[0], 1, "--jobs 1")]
    for verify, jobs, label in runs:
        seconds, cpu, (_, removed, info) = best_of(
            lambda: run_ours(
                shards, tmp / f"{name}-out-{verify}", args.threshold, args.ngram, args.num_perm, jobs, verify
            ),
            args.repeats,
        )
        add(f"curate ({verify}, {label})", seconds, removed, extra=info, cpu=cpu)
    seconds, cpu, (_, removed) = best_of(
        lambda: run_datasketch(shards, args.threshold, args.ngram, args.num_perm), args.repeats
    )
    add("datasketch loop", seconds, removed, cpu=cpu)
    ours, _ = MinHashDedup(threshold=args.threshold, num_perm=args.num_perm).lsh_shape()
    # rensa needs bands to divide num_perm: the divisor closest to our band count
    bands = min((d for d in range(1, args.num_perm + 1) if args.num_perm % d == 0), key=lambda d: (abs(d - ours), d))
    for peer, runner in (
        (f"rensa loop ({bands} bands)", lambda: run_rensa(shards, args.threshold, args.ngram, args.num_perm, bands)),
        ("datatrove (1 worker)", lambda: run_datatrove(shards, tmp / f"{name}-datatrove", args.ngram, 1)),
    ):
        if peer.split()[0] in args.skip:
            add(peer, None, None, "skipped (--skip)")
            continue
        try:
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                seconds, cpu, (_, removed) = best_of(runner, 1)
            add(peer, seconds, removed, cpu=cpu)
        except ImportError as exc:
            add(peer, None, None, f"not installed ({exc}): pip install {peer.split()[0]}")
    base = next(r for r in results if r.method == "datasketch loop")
    for r in results:
        if r.seconds and base.seconds:
            r.extra["speedup_vs_datasketch"] = round(base.seconds / r.seconds, 2)
    for r in results:
        if r.seconds and base.seconds and r.extra.get("cpu_seconds") and base.extra.get("cpu_seconds"):
            r.extra["cpu_speedup_vs_datasketch"] = round(base.extra["cpu_seconds"] / r.extra["cpu_seconds"], 2)
    print(
        "speed-up vs the datasketch loop, wall (cpu): "
        + ", ".join(
            f"{r.method} {r.extra['speedup_vs_datasketch']:.1f}x ({r.extra.get('cpu_speedup_vs_datasketch', float('nan')):.1f}x)"
            for r in results
            if "speedup_vs_datasketch" in r.extra
        )
    )
    run.table(
        f"{name}: {len(texts):,} documents, {mb:.1f} MB of text; ground truth {len(truth):,} rows to remove",
        [
            "method",
            "seconds",
            "CPU s",
            "docs/s",
            "MB/s",
            "removed",
            "precision",
            "recall",
            "x datasketch (wall)",
            "x datasketch (CPU)",
            "note",
        ],
        [
            [
                r.method,
                r.seconds,
                r.extra.get("cpu_seconds") if r.seconds else None,
                len(texts) / r.seconds if r.seconds else None,
                mb / r.seconds if r.seconds else None,
                r.removed,
                r.precision,
                r.recall,
                r.extra.get("speedup_vs_datasketch"),
                r.extra.get("cpu_speedup_vs_datasketch"),
                r.note,
            ]
            for r in results
        ],
        show=False,
    )
    for r in results:
        if r.method.startswith("curate") and "speedup_vs_datasketch" in r.extra:
            run.compare(f"{name}: {r.method} vs the datasketch loop, wall", r.extra["speedup_vs_datasketch"])
    return results


def scale_run(rows: int, tmp: Path, jobs: int | None, debian: Path | None, run: Run) -> None:
    """Memory and time of our stage alone on `rows` short documents (the Debian descriptions
    tiled, every other copy with one extra word), run as a child process to read its peak RSS."""
    import polars as pl

    base = pl.read_parquet(debian_descriptions(debian).path, columns=["id", "text"])
    copies = math.ceil(rows / base.height)
    frames = []
    for c in range(copies):
        text = pl.col("text") if c % 2 == 0 else pl.col("text") + pl.lit(f" v{c}")
        frames.append(base.select((pl.col("id") + pl.lit(f"#{c}")).alias("id"), text.alias("text")))
    table = pl.concat(frames).head(rows)
    src = tmp / "scale-in"
    src.mkdir(parents=True, exist_ok=True)
    for k, part in enumerate(table.iter_slices(250_000)):
        part.write_parquet(src / f"part-{k:05d}.parquet")
    mb = table["text"].str.len_bytes().sum() / 1e6
    started = time.perf_counter()
    with ProcessTree() as tree:
        subprocess.run(
            curate_cli(
                "dedup",
                "-i",
                str(src),
                "-o",
                str(tmp / "scale-out"),
                "--method",
                "minhash",
                "--quiet",
                *(["--jobs", str(jobs)] if jobs else []),
            ),
            check=True,
            env=cli_env(),
        )
    seconds = time.perf_counter() - started
    manifest = json.loads((tmp / "scale-out" / "manifest.json").read_text())
    stage = manifest["stages"][1]
    # Peak RSS by process, sampled every 0.1 s: the CLI (driver), the fork server, each worker.
    peaks = sorted(tree.peak_rss_by_process.items(), key=lambda item: -item[1][1])
    driver = next((rss for _, (cmd, rss) in peaks if "curate.cli" in cmd), 0)
    fork_servers = {key[0] for key, (cmd, _) in peaks if "forkserver" in cmd}
    workers = [rss for key, (_, rss) in peaks if tree.parent.get(key) in fork_servers]  # forked by the fork server
    print(f"\n== scale: {rows:,} short documents, {mb:.0f} MB, {manifest['executor']['description']} ==")
    print(
        f"curate dedup --method minhash: {seconds:.1f}s end to end ({rows / seconds:,.0f} docs/s), CPU {tree.cpu_seconds:.1f}s, removed {stage['rows_removed']:,}"
    )
    print(
        f"peak RSS: driver {driver / 2**20:,.0f} MiB, workers {', '.join(f'{w / 2**20:,.0f}' for w in workers) or 'none'} MiB (sampled every 0.1 s)"
    )
    print(f"stage info: {stage['info']}")
    run.table(
        f"{rows:,} short documents, {mb:.0f} MB, {manifest['executor']['description']}",
        ["figure", "value"],
        [
            ["seconds, end to end", round(seconds, 1)],
            ["docs/s", round(rows / seconds)],
            ["CPU seconds (all processes)", round(tree.cpu_seconds, 1)],
            ["rows removed", stage["rows_removed"]],
            ["peak RSS, driver (MiB)", round(driver / 2**20)],
            ["peak RSS, largest worker (MiB)", round(max(workers, default=0) / 2**20)],
        ],
        show=False,
    )
    run.data.update(stage_info=stage["info"], worker_peak_rss_mib=[round(w / 2**20) for w in workers])
    run.note("peak RSS per process sampled every 0.1 s", show=False)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--long-docs", type=int, default=8000)
    parser.add_argument("--min-bytes", type=int, default=300, help="long corpus: smallest document")
    parser.add_argument("--max-bytes", type=int, default=200_000, help="long corpus: largest document")
    parser.add_argument(
        "--long-corpus",
        type=Path,
        default=None,
        help="a Parquet file (id, text) to use instead of building the long corpus",
    )
    parser.add_argument(
        "--debian",
        type=Path,
        default=None,
        help="debian_descriptions.parquet (default: shared/data beside the checkout)",
    )
    parser.add_argument("--short-docs", type=int, default=0, help="0: all Debian descriptions")
    parser.add_argument("--threshold", type=float, default=0.8)
    parser.add_argument("--ngram", type=int, default=5)
    parser.add_argument("--num-perm", type=int, default=128)
    parser.add_argument(
        "--jobs",
        type=int,
        default=None,
        help="our worker processes (default: every core); --jobs 1 is always measured too",
    )
    parser.add_argument(
        "--repeats", type=int, default=1, help="runs of ours and of the datasketch loop; the fastest counts"
    )
    parser.add_argument(
        "--shards",
        type=int,
        default=8,
        help="input shards per corpus (a work unit is at most one shard; datatrove parallelizes over files)",
    )
    parser.add_argument("--verify", nargs="+", default=["exact", "estimate"], choices=["estimate", "exact", "none"])
    parser.add_argument("--corpus", nargs="+", default=["debian", "long"], choices=["debian", "long"])
    parser.add_argument("--skip", nargs="*", default=[], choices=["rensa", "datatrove"])
    parser.add_argument(
        "--scale-rows",
        type=int,
        default=0,
        help="only measure our stage's time and peak RSS on this many short documents",
    )
    add_result_argument(parser, None, "minhash, or minhash-scale with --scale-rows")
    args = parser.parse_args(argv)
    result = args.result or ("minhash-scale" if args.scale_rows else "minhash")
    if args.scale_rows:
        run = start_run(
            "minhash",
            argv,
            result,
            "Our MinHash stage alone (`curate dedup --method minhash`): time and peak RSS of the driver and each worker.",
            vars(args),
        )
        with tempfile.TemporaryDirectory(prefix="curate-bench-minhash-") as tmp_name:
            scale_run(args.scale_rows, Path(tmp_name), args.jobs, args.debian, run)
        run.write()
        return
    run = start_run(
        "minhash",
        argv,
        result,
        "MinHash near-dup: our stage vs datasketch (and rensa, datatrove where installed) on the same real documents, "
        "precision and recall against exact Jaccard.",
        vars(args),
    )
    print(f"jobs: {args.jobs or 'all cores'}, repeats: {args.repeats}")
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="curate-bench-minhash-") as tmp_name:
        tmp = Path(tmp_name)
        if "debian" in args.corpus:
            table = pq.read_table(debian_descriptions(args.debian).path, columns=["id", "text"])
            if args.short_docs:
                table = table.slice(0, args.short_docs)
            results += bench_corpus("debian", table, args, tmp, run)
        if "long" in args.corpus:
            path = (
                args.long_corpus
                or build_long_corpus(
                    tmp / "long-src", max_docs=args.long_docs, min_bytes=args.min_bytes, max_bytes=args.max_bytes
                ).path
            )
            results += bench_corpus("long", pq.read_table(path, columns=["id", "text"]), args, tmp, run)
    run.data["results"] = [asdict(r) for r in results]
    run.write()


if __name__ == "__main__":
    main()
