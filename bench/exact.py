"""Exact dedup throughput: our streaming stage vs polars' in-memory `unique`, same data, same run.

    python bench/exact.py [--input PARQUET_OR_DIR] [--replicate 8]

Polars holds the whole corpus in memory and uses every core; we stream bounded batches and
write kept/removed with a full ledger, so the ratio shows what streaming and bookkeeping cost."""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import polars as pl

from curate.pipeline import RunOptions, parse_pipeline, run_pipeline
from curate.shards import count_part_rows

DEFAULT_INPUT = Path(__file__).resolve().parents[2] / "shared" / "data" / "debian_descriptions.parquet"


def build_corpus(source: Path, replicate: int, directory: Path) -> Path:
    """`replicate` shards of the source, ids suffixed per copy (texts repeat: real duplicates)."""
    frame = pl.read_parquet(source) if source.is_file() else pl.read_parquet(str(source / "*.parquet"))
    for copy in range(replicate):
        frame.with_columns((pl.col("id") + f"#{copy}").alias("id")).write_parquet(directory / f"part-{copy:03d}.parquet")
    return directory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", type=Path, default=DEFAULT_INPUT)
    parser.add_argument("--replicate", type=int, default=8)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        corpus = build_corpus(args.input, args.replicate, Path(tmp))
        rows = sum(pl.scan_parquet(p).select(pl.len()).collect().item() for p in corpus.glob("*.parquet"))

        started = time.perf_counter()
        frame = pl.read_parquet(str(corpus / "*.parquet"))
        polars_kept = frame.unique(subset="text", keep="first", maintain_order=True).height
        polars_s = time.perf_counter() - started

        started = time.perf_counter()
        out = Path(tmp) / "out"
        run_pipeline(parse_pipeline({"stage": [{"kind": "exact"}]}), corpus, out, RunOptions())
        ours_s = time.perf_counter() - started
        ours_kept = count_part_rows(out / "kept")

    print(f"rows: {rows:,}  cores: {os.cpu_count()}  load: {os.getloadavg()[0]:.1f}")
    print(f"{'':22s}{'seconds':>10s}{'rows/s':>14s}{'kept':>12s}")
    print(f"{'polars unique (RAM)':22s}{polars_s:10.2f}{rows / polars_s:14,.0f}{polars_kept:12,}")
    print(f"{'curate exact (stream)':22s}{ours_s:10.2f}{rows / ours_s:14,.0f}{ours_kept:12,}")
    print(f"ours / polars throughput: {polars_s / ours_s:.2f}x  (same kept rows: {ours_kept == polars_kept})")


if __name__ == "__main__":
    main()
