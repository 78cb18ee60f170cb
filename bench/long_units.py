"""Work units cut by bytes: MinHash on one Parquet file of long documents, --jobs 1 vs --jobs 2.

    python -m bench.long_units [--docs 8000] [--repeats 2] [--debian PATH]

The file is built from the Debian descriptions (bench/corpora.py) by concatenating rows: a
document is a run of consecutive descriptions (wrapping at the end) from a seeded random start,
140 to 420 of them (about 13 KB on average), joined by spaces; 8,000 documents are about 100 MB
of text in one Parquet file of 8 row groups. Documents whose starts fall close together overlap,
so the corpus has real near duplicates for MinHash to find.

The same run measures, from the same file:
  * ours: one minhash stage end to end, --jobs 2, units cut by rows and bytes (the default);
  * --jobs 1, same units rule: one process, which on a machine of C cores still sketches on C
    threads (threads per task = cores / jobs), so it is not a one-core run;
  * one core: --jobs 1 with the process pinned to a single core (its affinity mask, which
    curate reads as its core count): the speed-up over one core is ours / this;
  * baseline: --jobs 2 with units cut by rows only (`unit_bytes = 0`, the rule before), where
    the whole file is one unit and one core idles.
Kept ids must be identical in all three. Times are the best of `--repeats`.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from bench._harness import add_result_argument, pinned_to_one_core, removed_ids, start_run
from bench.corpora import debian_descriptions
from curate.pipeline import RunOptions, parse_pipeline, run_pipeline


def build_long_file(debian: Path, out: Path, docs: int, seed: int = 0, row_group: int = 1000) -> tuple[int, int]:
    """Write `docs` long documents (runs of 140-420 consecutive descriptions) to `out`;
    returns (rows, text bytes)."""
    texts = [t or "" for t in pq.read_table(debian, columns=["text"]).column(0).to_pylist()]
    n = len(texts)
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, n, docs)
    lengths = rng.integers(140, 421, docs)
    doubled = texts + texts
    documents = [" ".join(doubled[s : s + length]) for s, length in zip(starts.tolist(), lengths.tolist())]
    table = pa.table({"id": [f"doc-{i:05d}" for i in range(docs)], "text": documents})
    pq.write_table(table, out, row_group_size=row_group)
    return docs, sum(len(d.encode()) for d in documents)


def run_minhash(
    source: Path, out: Path, jobs: int, unit_bytes: int | None, one_core: bool = False
) -> tuple[float, set[str], dict]:
    with pinned_to_one_core(one_core):
        return _timed_minhash(source, out, jobs, unit_bytes)


def _timed_minhash(source: Path, out: Path, jobs: int, unit_bytes: int | None) -> tuple[float, set[str], dict]:
    spec = parse_pipeline({"stage": [{"kind": "minhash"}]}, "bench")
    shutil.rmtree(out, ignore_errors=True)
    options = RunOptions(jobs=jobs) if unit_bytes is None else RunOptions(jobs=jobs, unit_bytes=unit_bytes)
    started = time.perf_counter()
    result = run_pipeline(spec, source, out, options)
    seconds = time.perf_counter() - started
    stage = result.manifest["stages"][1]
    return seconds, removed_ids(out), {"units": stage.get("units"), **result.manifest["executor"]}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=8000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--debian", type=Path, default=None, help="the Debian descriptions' Parquet file")
    add_result_argument(parser, "long_units")
    args = parser.parse_args(argv)
    run = start_run("long_units", argv, args.result, __doc__.splitlines()[0], vars(args))
    with tempfile.TemporaryDirectory(prefix="curate-long-units-") as tmp:
        source = Path(tmp) / "long.parquet"
        rows, text_bytes = build_long_file(debian_descriptions(args.debian).path, source, args.docs)
        meta = pq.read_metadata(source)
        print(
            f"{rows:,} documents, {text_bytes / 1e6:.1f} MB of text, {meta.num_row_groups} row groups, "
            f"{source.stat().st_size / 1e6:.1f} MB on disk",
            flush=True,
        )
        run.params.update(rows=rows, text_bytes=text_bytes, row_groups=meta.num_row_groups)
        cases = {
            "jobs 2, by bytes (ours)": (2, None, False),
            "jobs 1, by bytes": (1, None, False),
            "jobs 2, rows only": (2, 0, False),
            "one core (jobs 1, pinned)": (1, None, True),
        }
        best: dict[str, float] = {}
        kept: dict[str, set[str]] = {}
        info: dict[str, dict] = {}
        for _ in range(args.repeats):
            for label, (jobs, unit_bytes, one_core) in cases.items():
                seconds, removed, detail = run_minhash(source, Path(tmp) / "out", jobs, unit_bytes, one_core)
                best[label] = min(best.get(label, float("inf")), seconds)
                kept[label], info[label] = removed, detail
                print(
                    f"  {label}: {seconds:.2f} s, unit_rows {detail['unit_rows']}, {len(removed):,} removed",
                    flush=True,
                )
        run.table(
            f"minhash on one file of {rows:,} long documents ({text_bytes / 1e6:.0f} MB), best of {args.repeats}",
            ["case", "seconds", "MB/s", "unit rows", "removed"],
            [
                [
                    label,
                    round(best[label], 2),
                    round(text_bytes / 1e6 / best[label], 1),
                    info[label]["unit_rows"],
                    len(kept[label]),
                ]
                for label in cases
            ],
        )
        labels = list(cases)
        run.compare("jobs 2 / one core (units by bytes)", best[labels[3]] / best[labels[0]], target=">= 1.5x")
        run.compare(
            "jobs 2 / jobs 1 (units by bytes; jobs 1 sketches on every core)", best[labels[1]] / best[labels[0]]
        )
        run.compare("jobs 2 by bytes / jobs 2 rows only (the old rule)", best[labels[2]] / best[labels[0]])
        run.check("same removed ids in every case", all(kept[label] == kept[labels[0]] for label in labels))
    run.write()


if __name__ == "__main__":
    main()
