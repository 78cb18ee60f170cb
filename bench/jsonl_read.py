"""JSON Lines read throughput: curate's reader (pyarrow.json over blocks of whole lines) vs a
streaming decoder (json.loads per line, RecordBatch.from_pylist per batch) vs the same corpus
as Parquet, same data, same run.

    python bench/jsonl_read.py [--input PARQUET] [--replicate 3] [--repeat 3]

Writes the corpus as .jsonl, .jsonl.gz and .jsonl.zst in a temp dir and reads every row of
each through `InputSet.batches` (the path every stage takes) and through the decoder loop;
prints seconds (best of --repeat) and the ratios."""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import polars as pl
import pyarrow as pa

from curate.formats import jsonl_compression
from curate.shards import InputSet

DEFAULT_INPUT = Path(__file__).resolve().parents[2] / "shared" / "data" / "debian_descriptions.parquet"


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


def best(fn, repeat: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeat):
        started = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - started)
    return min(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", type=Path, default=DEFAULT_INPUT)
    parser.add_argument("--replicate", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    frame = pl.concat([pl.read_parquet(args.input)] * args.replicate)
    frame = frame.with_columns(pl.concat_str([pl.col("id"), pl.int_range(pl.len()).cast(pl.String)], separator="#").alias("id"))
    schema = frame.to_arrow().schema
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        frame.write_parquet(root / "corpus.parquet")
        frame.write_ndjson(root / "corpus.jsonl")
        for suffix, codec in ((".jsonl.gz", "gzip"), (".jsonl.zst", "zstd")):
            with open(root / "corpus.jsonl", "rb") as source, pa.output_stream(str(root / f"corpus{suffix}"), compression=codec) as sink:
                sink.write(source.read())
        print(f"{frame.height:,} rows, {(root / 'corpus.jsonl').stat().st_size / 1e6:.1f} MB as JSON Lines")
        parquet = InputSet.scan(root / "corpus.parquet")
        parquet_s, _ = best(lambda: curate_read(parquet), args.repeat)
        print(f"parquet     curate read {parquet_s:.3f} s")
        for suffix in (".jsonl", ".jsonl.gz", ".jsonl.zst"):
            path = root / f"corpus{suffix}"
            scan_s, inputs = best(lambda: InputSet.scan(path), args.repeat)
            ours, rows = best(lambda: curate_read(inputs), args.repeat)
            theirs, rows_b = best(lambda: decoder_loop(path, schema), args.repeat)
            assert rows == rows_b == frame.height
            print(f"{suffix:11s} curate read {ours:.3f} s (scan {scan_s:.3f} s)  json.loads loop {theirs:.3f} s  "
                  f"read ratio {theirs / ours:.1f}x, with scan {theirs / (ours + scan_s):.1f}x; read {ours / parquet_s:.0f}x Parquet's time")


if __name__ == "__main__":
    main()
