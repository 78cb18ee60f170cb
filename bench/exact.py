"""Exact dedup throughput: our streaming stage vs polars' in-memory `unique`, same data, same run.

    python -m bench.exact [--input PARQUET_OR_DIR] [--replicate 8] [--rows N]

Polars holds the whole corpus in memory and uses every core; we stream bounded batches and
write kept/removed with a full ledger, so the ratio shows what streaming and bookkeeping cost.
`--rows N` takes the first N rows of the input before replicating (a quick run)."""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import polars as pl

from bench._harness import add_result_argument, start_run
from bench.corpora import DEBIAN_DESCRIPTIONS
from curate.io.parts import count_part_rows
from curate.pipeline import RunOptions, parse_pipeline, run_pipeline


def build_corpus(source: Path, replicate: int, directory: Path, rows: int = 0) -> Path:
    """`replicate` shards of the source, ids suffixed per copy (texts repeat: real duplicates)."""
    frame = pl.read_parquet(source) if source.is_file() else pl.read_parquet(str(source / "*.parquet"))
    if rows:
        frame = frame.head(rows)
    for copy in range(replicate):
        frame.with_columns((pl.col("id") + f"#{copy}").alias("id")).write_parquet(
            directory / f"part-{copy:03d}.parquet"
        )
    return directory


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", type=Path, default=DEBIAN_DESCRIPTIONS)
    parser.add_argument("--replicate", type=int, default=8)
    parser.add_argument("--rows", type=int, default=0, help="first N rows of the input (0: all)")
    add_result_argument(parser, "exact")
    args = parser.parse_args(argv)
    run = start_run("exact", argv, args.result, __doc__.splitlines()[0], vars(args))
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "in").mkdir()  # the output goes beside the input, never inside it
        corpus = build_corpus(args.input, args.replicate, Path(tmp) / "in", args.rows)
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

    run.params["input_rows"] = rows
    run.table(
        f"{rows:,} rows",
        ["method", "seconds", "rows/s", "kept"],
        [
            ["polars unique (RAM)", round(polars_s, 2), round(rows / polars_s), polars_kept],
            ["curate exact (stream)", round(ours_s, 2), round(rows / ours_s), ours_kept],
        ],
    )
    run.compare("curate exact / polars unique, throughput", polars_s / ours_s)
    run.check("same kept rows as polars", ours_kept == polars_kept)
    run.write()


if __name__ == "__main__":
    main()
