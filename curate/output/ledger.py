"""The removed-row ledger and the conservation check: nothing is lost, nothing is counted twice."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from curate.io.inputs import ColumnSpec, InputFile, InputSet
from curate.io.parts import iter_part_batches, list_parts

LEDGER_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("stage", pa.string(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("duplicate_of", pa.string()),
        pa.field("score", pa.float64()),
    ]
)
LEDGER_PLAIN = ("id",)  # written without a dictionary: every removed row has its own id (PartWriter)


def ids_as_strings(ids: pa.Array | pa.ChunkedArray) -> pa.Array:
    """Ledger ids are strings whatever the input id type, so one ledger serves every corpus."""
    if isinstance(ids, pa.ChunkedArray):
        ids = ids.combine_chunks()
    if pa.types.is_dictionary(ids.type):
        ids = ids.dictionary_decode()
    return ids if ids.type == pa.string() else ids.cast(pa.string())


def removed_rows(
    ids: pa.Array | pa.ChunkedArray,
    stage: str,
    reason: str | pa.Array | Sequence[str],
    duplicate_of: pa.Array | Sequence[str | None] | None = None,
    score: np.ndarray | pa.Array | Sequence[float | None] | None = None,
) -> pa.RecordBatch:
    """Ledger rows for `ids` removed by `stage`; `reason` is one string or one per row."""
    ids = ids_as_strings(ids)
    n = len(ids)
    reasons = (
        pa.repeat(pa.scalar(reason, pa.string()), n) if isinstance(reason, str) else pa.array(reason, pa.string())
    )
    if duplicate_of is None:
        dup = pa.nulls(n, pa.string())
    elif isinstance(duplicate_of, (pa.Array, pa.ChunkedArray)):
        dup = ids_as_strings(duplicate_of)
    else:
        dup = pa.array(duplicate_of, pa.string())
    if score is None:
        scores = pa.nulls(n, pa.float64())
    elif isinstance(score, np.ndarray):
        scores = pa.array(score.astype(np.float64, copy=False))
    else:
        scores = pa.array(score, pa.float64())
    stages = pa.repeat(pa.scalar(stage, pa.string()), n)
    return pa.RecordBatch.from_arrays([ids, stages, reasons, dup, scores], schema=LEDGER_SCHEMA)


def empty_ledger() -> pa.RecordBatch:
    return pa.RecordBatch.from_pylist([], schema=LEDGER_SCHEMA)


@dataclass
class VerifyReport:
    input_rows: int
    kept_rows: int
    removed_rows: int
    missing: list[str] = field(default_factory=list)
    duplicated: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.duplicated or self.unknown or self.problems)


class ConservationError(RuntimeError):
    """The counts of a finished run do not add up: a bug in curate (exit 1), never bad input."""


def count_problems(
    stages: list[dict], input_rows: int, kept_rows: int, removed_rows: int, ledger_rows: dict[str, int] | None = None
) -> list[str]:
    """What the counts alone say is lost or counted twice: kept + removed = input, the stages'
    removed rows add up to the ledger, and (given the ledger's rows per stage) each stage's
    ledger rows equal its `rows_removed`. Finalize runs this before it marks an output
    finished; `curate verify` runs it beside the id-by-id check."""
    problems = []
    if kept_rows + removed_rows != input_rows:
        problems.append(
            f"kept {kept_rows:,} + removed {removed_rows:,} = {kept_rows + removed_rows:,} rows, but the input has {input_rows:,}"
        )
    recorded = sum(int(s.get("rows_removed") or 0) for s in stages)
    if recorded != removed_rows:
        problems.append(f"the stages record {recorded:,} removed rows, the ledger holds {removed_rows:,}")
    for stage in stages if ledger_rows is not None else []:
        found, want = ledger_rows.get(stage["name"], 0), int(stage.get("rows_removed") or 0)
        if found != want:
            problems.append(f"stage {stage['name']!r}: {found:,} ledger rows, but it recorded {want:,} removed")
    return problems


def ledger_rows_by_stage(removed_dir: Path) -> dict[str, int]:
    """Rows of the ledger per `stage` value (reads that column only)."""
    counts: dict[str, int] = {}
    for batch in iter_part_batches(removed_dir, columns=["stage"]):
        for stage, count in pl.from_arrow(batch.column(0)).value_counts().iter_rows():
            counts[stage] = counts.get(stage, 0) + count
    return counts


def _id_frame(batches, id_column: str) -> pl.DataFrame:
    chunks = [ids_as_strings(b.column(id_column)) for b in batches]
    if not chunks:
        return pl.DataFrame({"id": pl.Series([], dtype=pl.String)})
    return pl.DataFrame({"id": pl.from_arrow(pa.chunked_array(chunks, pa.string()))})


def verify_conservation(
    input_files: list[InputFile],
    columns: ColumnSpec,
    schema: pa.Schema,
    kept_dir: Path,
    removed_dir: Path,
    show: int = 20,
) -> VerifyReport:
    """Every input id exactly once in kept or removed, and nothing else there."""
    inputs = InputSet(input_files, schema, columns)
    source = _id_frame(inputs.batches(columns=[columns.id]), columns.id)
    kept = _id_frame(iter_part_batches(kept_dir, columns=[columns.id]), columns.id)
    removed = _id_frame(iter_part_batches(removed_dir, columns=["id"]), "id")
    everything = pl.concat([kept, removed])
    counts = everything.group_by("id").len()
    duplicated = counts.filter(pl.col("len") > 1).get_column("id").sort()
    missing = source.join(everything, on="id", how="anti").get_column("id").sort()
    unknown = everything.join(source, on="id", how="anti").get_column("id").unique().sort()
    report = VerifyReport(source.height, kept.height, removed.height)
    report.missing = missing.head(show).to_list()
    report.duplicated = duplicated.head(show).to_list()
    report.unknown = unknown.head(show).to_list()
    if len(missing) > show or len(duplicated) > show or len(unknown) > show:
        report.problems.append(
            f"{len(missing)} missing, {len(duplicated)} duplicated, {len(unknown)} unknown ids in all (first {show} shown)"
        )
    for path in list_parts(removed_dir):
        got = pq.read_schema(path)
        if got.names != LEDGER_SCHEMA.names:
            report.problems.append(f"{path}: ledger columns {got.names} != {LEDGER_SCHEMA.names}")
    return report
