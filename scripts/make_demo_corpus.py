"""Rebuild curate/data/demo.parquet from ../shared/data/debian_descriptions.parquet.

Twelve contiguous blocks of 500 packages (sorted by name), so families such as libfoo1 /
libfoo-dev / libfoo-doc stay together and the demo has real near duplicates."""

from __future__ import annotations

import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT.parent / "shared" / "data" / "debian_descriptions.parquet"
TARGET = ROOT / "curate" / "data" / "demo.parquet"
BLOCKS, BLOCK_ROWS = 12, 500


def main() -> None:
    source = Path(sys.argv[1]) if len(sys.argv) > 1 else SOURCE
    table = pq.read_table(source).sort_by("id")
    step = table.num_rows // BLOCKS
    blocks = [table.slice(i * step, BLOCK_ROWS) for i in range(BLOCKS)]
    demo = pa.concat_tables(blocks)
    pq.write_table(demo, TARGET, compression="zstd")
    print(f"{TARGET}: {demo.num_rows} rows, {TARGET.stat().st_size / 1e3:.0f} kB")


if __name__ == "__main__":
    main()
