"""JSON Lines read throughput: curate's reader (pyarrow.json over blocks of whole lines) vs a
streaming decoder (json.loads per line, RecordBatch.from_pylist per batch) vs the same corpus
as Parquet, same data, same run.

    python -m bench.jsonl_read [--input PARQUET] [--replicate 3] [--repeat 3] [--rows N]

Writes the corpus as .jsonl, .jsonl.gz and .jsonl.zst in a temp dir and reads every row of
each through `InputSet.batches` (the path every stage takes) and through the decoder loop;
prints seconds (best of --repeat) and the ratios. `--rows N`: the first N rows of the input
before replicating (a quick run)."""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import polars as pl
import pyarrow as pa

from bench._harness import add_result_argument, best_of, start_run
from bench.corpora import DEBIAN_DESCRIPTIONS
from curate.io.formats import jsonl_compression
from curate.io.inputs import InputSet


def decoder_loop(path: Path, schema: pa.Schema, batch_size: int = 65_536) -> int:
    """The alternative: a decompressing file object, one json.loads per line."""
    rows = 0
    pending: list[dict] = []
    with pa.input_stream(str(path), compression=jsonl_compression(path)) as stream:
        rest = b""
        for block in iter(lambda: stream.read(8 << 20), b""):
            data = rest + block
            cut = data.rfind(b"\n") + 1
            data, rest = data[:cut], data[cut:]
            for line in data.splitlines():
                if line.strip():
                    pending.append(json.loads(line))
                    if len(pending) == batch_size:
                        rows += pa.RecordBatch.from_pylist(pending, schema=schema).num_rows
                        pending = []
    if pending:
        rows += pa.RecordBatch.from_pylist(pending, schema=schema).num_rows
    return rows


def curate_read(inputs: InputSet) -> int:
    return sum(batch.num_rows for batch in inputs.batches())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", type=Path, default=DEBIAN_DESCRIPTIONS)
    parser.add_argument("--replicate", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--rows", type=int, default=0, help="first N rows of the input (0: all)")
    add_result_argument(parser, "jsonl_read")
    args = parser.parse_args(argv)
    run = start_run(
        "jsonl_read",
        argv,
        args.result,
        "JSON Lines read throughput: curate's reader vs a json.loads-per-line decoder vs Parquet, same data.",
        vars(args),
    )
    frame = pl.read_parquet(args.input)
    if args.rows:
        frame = frame.head(args.rows)
    frame = pl.concat([frame] * args.replicate)
    frame = frame.with_columns(
        pl.concat_str([pl.col("id"), pl.int_range(pl.len()).cast(pl.String)], separator="#").alias("id")
    )
    schema = frame.to_arrow().schema
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        frame.write_parquet(root / "corpus.parquet")
        frame.write_ndjson(root / "corpus.jsonl")
        for suffix, codec in ((".jsonl.gz", "gzip"), (".jsonl.zst", "zstd")):
            with (
                open(root / "corpus.jsonl", "rb") as source,
                pa.output_stream(str(root / f"corpus{suffix}"), compression=codec) as sink,
            ):
                sink.write(source.read())
        megabytes = (root / "corpus.jsonl").stat().st_size / 1e6
        print(f"{frame.height:,} rows, {megabytes:.1f} MB as JSON Lines")
        run.params.update(input_rows=frame.height, jsonl_megabytes=round(megabytes, 1))
        parquet = InputSet.scan(root / "corpus.parquet")
        parquet_s, _ = best_of(lambda: curate_read(parquet), args.repeat)
        table = [["parquet", round(parquet_s, 3), None, None, None, None, 1.0]]
        same_rows = True
        for suffix in (".jsonl", ".jsonl.gz", ".jsonl.zst"):
            path = root / f"corpus{suffix}"
            scan_s, inputs = best_of(lambda: InputSet.scan(path), args.repeat)
            ours, rows = best_of(lambda: curate_read(inputs), args.repeat)
            theirs, rows_b = best_of(lambda: decoder_loop(path, schema), args.repeat)
            same_rows &= rows == rows_b == frame.height
            table.append(
                [
                    suffix,
                    round(ours, 3),
                    round(scan_s, 3),
                    round(theirs, 3),
                    theirs / ours,
                    theirs / (ours + scan_s),
                    ours / parquet_s,
                ]
            )
            run.compare(f"{suffix}: json.loads loop time / curate read time (scan included)", theirs / (ours + scan_s))
    run.table(
        f"seconds, best of {args.repeat}",
        [
            "file",
            "curate read s",
            "curate scan s",
            "json.loads loop s",
            "loop / read",
            "loop / (read + scan)",
            "read / Parquet read",
        ],
        table,
    )
    run.check("every reader returned every row", same_rows)
    run.write()


if __name__ == "__main__":
    main()
