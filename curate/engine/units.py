"""What a stage reads, and how it is cut into ordered work units.

A stage's source is the validated input (`InputSource`) or the previous stage's kept parts
(`PartSource`). Both cut into work units: row groups of one input shard or one part file, in
input order, each a small picklable `BatchSource` of its own. Every executor (in-process,
process pool, Dask) runs the same tasks over the same units; results are put back in unit
order, so the output never depends on which unit finished first.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator, Sequence

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curate.io import mirror
from curate.io.formats import open_parquet
from curate.io.inputs import ROW_COLUMN, ColumnSpec, InputFile, InputSet
from curate.io.parts import count_part_rows, iter_part_batches, list_parts

DEFAULT_UNIT_ROWS = 1_000_000
# Smallest unit worth a task of its own: below this, task overhead (a Parquet open, a pickle
# round trip) is a visible share of the work.
MIN_UNIT_ROWS = 16_384
# Units are cut by bytes as well as rows: a unit holds at most DEFAULT_UNIT_BYTES of
# uncompressed input (Parquet's row-group byte sizes; a stream's file size), so one file of
# long documents still becomes several units; and the MIN_UNIT_ROWS floor gives way to
# MIN_UNIT_BYTES, since 16,384 documents of 13 KB are 200 MB of text, not a small task.
DEFAULT_UNIT_BYTES = 64 * 2**20
MIN_UNIT_BYTES = 4 * 2**20
# Units per worker when the source is cut for parallelism: a few per worker keeps every core
# busy while a slow unit finishes, without thousands of tiny tasks.
UNITS_PER_WORKER = 4


class InputSource:
    """The validated input, optionally without null-text rows (they went to the ledger)."""

    def __init__(self, inputs: InputSet, batch_size: int, drop_null_text: bool, null_rows: int = 0):
        self.inputs = inputs
        self.batch_size = batch_size
        self.drop_null_text = drop_null_text
        self.num_rows = inputs.num_rows - null_rows
        self.schema = inputs.schema.append(pa.field(ROW_COLUMN, pa.int64()))

    def batches(self, columns: Sequence[str] | None = None) -> Iterator[pa.RecordBatch]:
        for index in range(len(self.inputs.files)):
            yield from _input_batches(self.inputs, index, None, self.batch_size, self.drop_null_text, columns)


class PartSource:
    """A finished stage's kept rows."""

    def __init__(self, directory: Path, batch_size: int):
        self.directory = Path(directory)
        self.batch_size = batch_size
        self.num_rows = count_part_rows(self.directory)
        parts = list_parts(self.directory)
        self.schema = mirror.read_metadata(parts[0]).schema.to_arrow_schema() if parts else pa.schema([])

    def batches(self, columns: Sequence[str] | None = None) -> Iterator[pa.RecordBatch]:
        if columns is not None:
            columns = list(dict.fromkeys([*columns, ROW_COLUMN]))
        return iter_part_batches(self.directory, self.batch_size, columns)


def _input_batches(
    inputs: InputSet,
    index: int,
    row_groups: Sequence[int] | None,
    batch_size: int,
    drop_null_text: bool,
    columns: Sequence[str] | None,
    window: tuple[int, int] | None = None,
) -> Iterator[pa.RecordBatch]:
    """Batches of one input file (or some of its row groups, or the ordinals in `window`),
    with the null-text filter applied."""
    text = inputs.columns.text
    read = None if columns is None else list(dict.fromkeys([*columns, text] if drop_null_text else columns))
    batches = inputs.file_batches(index, batch_size, read, row_groups)
    for batch in batches if window is None else _within(batches, *window):
        if drop_null_text and batch.column(text).null_count:
            batch = batch.filter(pc.is_valid(batch.column(text)))
        if columns is not None and drop_null_text and text not in columns:
            batch = batch.drop_columns([text])
        yield batch


@dataclass(frozen=True)
class InputUnit:
    """Row groups of one input shard (all of them when `row_groups` is None)."""

    index: int
    file: InputFile
    row_groups: tuple[int, ...] | None
    rows: int
    first_row: int
    input_schema: pa.Schema
    columns: ColumnSpec
    batch_size: int
    drop_null_text: bool

    @property
    def path(self) -> str:
        return self.file.path

    @property
    def schema(self) -> pa.Schema:
        return self.input_schema.append(pa.field(ROW_COLUMN, pa.int64()))

    @property
    def ordinal_range(self) -> tuple[int, int]:
        return self.first_row, self.first_row + self.rows - 1

    @property
    def num_rows(self) -> int:
        if not self.drop_null_text:
            return self.rows
        return sum(b.num_rows for b in self.batches(columns=[self.columns.text]))

    def batches(self, columns: Sequence[str] | None = None) -> Iterator[pa.RecordBatch]:
        inputs = InputSet([self.file], self.input_schema, self.columns)
        window = (self.first_row, self.first_row + self.rows)
        return _input_batches(inputs, 0, self.row_groups, self.batch_size, self.drop_null_text, columns, window)

    def with_nulls(self) -> InputUnit:
        """The same rows before the null-text filter (the input check sees every row)."""
        return replace(self, drop_null_text=False)


@dataclass(frozen=True)
class PartUnit:
    """Row groups of one part file of a finished stage's kept rows."""

    index: int
    path: str
    row_groups: tuple[int, ...] | None
    rows: int
    schema: pa.Schema
    batch_size: int
    ordinal_range: tuple[int, int] = (0, 2**62)  # from the Parquet statistics when present
    size: int | None = None  # bytes, when known (a store's listing): a reader skips the HEAD

    @property
    def num_rows(self) -> int:
        return self.rows

    def batches(self, columns: Sequence[str] | None = None) -> Iterator[pa.RecordBatch]:
        if columns is not None:
            columns = list(dict.fromkeys([*columns, ROW_COLUMN]))
        groups = list(self.row_groups) if self.row_groups is not None else None
        yield from mirror.parquet_file(self.path, self.size).iter_batches(
            batch_size=self.batch_size, row_groups=groups, columns=columns, use_threads=False
        )


Unit = InputUnit | PartUnit


def _within(batches: Iterator[pa.RecordBatch], start: int, stop: int) -> Iterator[pa.RecordBatch]:
    """The rows whose ordinal is in [start, stop): a unit that is part of one big row group
    reads the group and keeps its slice (ordinals are contiguous within a file)."""
    for batch in batches:
        if batch.num_rows == 0:
            continue
        first = batch.column(ROW_COLUMN)[0].as_py()
        low, high = max(start, first), min(stop, first + batch.num_rows)
        if high <= low:
            if first >= stop:
                return
            continue
        yield batch if (low, high) == (first, first + batch.num_rows) else batch.slice(low - first, high - low)


def unit_rows_for(
    total_rows: int,
    workers: int,
    cap: int = DEFAULT_UNIT_ROWS,
    total_bytes: int = 0,
    unit_bytes: int = DEFAULT_UNIT_BYTES,
) -> int:
    """Rows per unit: about UNITS_PER_WORKER units per worker, within [floor, ceiling], where
    the floor is MIN_UNIT_ROWS rows or MIN_UNIT_BYTES of input, whichever is fewer rows, and
    the ceiling is `cap` rows or `unit_bytes` of input, whichever is fewer rows. Bytes are the
    input's uncompressed size (`input_bytes`), spread evenly over its rows; 0 means unknown
    (rows only). Deterministic: the same input and worker count give the same units."""
    wanted = -(-total_rows // max(1, workers * UNITS_PER_WORKER))
    floor, ceiling = MIN_UNIT_ROWS, cap
    if total_bytes > 0 and total_rows > 0:
        row_bytes = total_bytes / total_rows
        floor = min(floor, max(1, int(MIN_UNIT_BYTES // row_bytes)))
        ceiling = min(ceiling, max(1, int(unit_bytes // row_bytes)))
    return max(1, min(ceiling, max(floor, wanted)))


def input_bytes(inputs: InputSet) -> int:
    """Uncompressed bytes of the input: the sum of Parquet row-group sizes from each footer (a
    stream's file size), for cutting units by bytes. Reads only footers."""
    total = 0
    for file in inputs.files:
        if getattr(file, "format", "parquet") != "parquet":
            total += int(file.size)
            continue
        metadata = open_parquet(file.path, inputs.columns.storage_options, (file.size, file.fingerprint)).metadata
        total += sum(metadata.row_group(g).total_byte_size for g in range(metadata.num_row_groups))
    return total


def plan_units(source: InputSource | PartSource | Unit, unit_rows: int = DEFAULT_UNIT_ROWS) -> list[Unit]:
    """The source's work units in input order (a unit is its own single unit)."""
    if isinstance(source, (InputUnit, PartUnit)):
        return [source]
    units: list[Unit] = []
    if isinstance(source, InputSource):
        inputs = source.inputs
        for file in inputs.files:
            if getattr(file, "format", "parquet") != "parquet":  # a stream: one unit per file
                units.append(
                    InputUnit(
                        len(units),
                        file,
                        None,
                        file.rows,
                        file.row_offset,
                        inputs.schema,
                        inputs.columns,
                        source.batch_size,
                        source.drop_null_text,
                    )
                )
                continue
            metadata = open_parquet(
                file.path, inputs.columns.storage_options, (file.size, file.fingerprint)
            ).metadata  # local path or fsspec URL
            for groups, rows, before in _row_group_slices(metadata, unit_rows, split_groups=True):
                units.append(
                    InputUnit(
                        len(units),
                        file,
                        groups,
                        rows,
                        file.row_offset + before,
                        inputs.schema,
                        inputs.columns,
                        source.batch_size,
                        source.drop_null_text,
                    )
                )
        return units
    for part in list_parts(source.directory):
        metadata = mirror.read_metadata(part)
        for groups, rows, _ in _row_group_slices(metadata, unit_rows):
            bounds = _ordinal_bounds(metadata, groups)
            units.append(
                PartUnit(
                    len(units),
                    str(part),
                    groups,
                    rows,
                    source.schema,
                    source.batch_size,
                    bounds,
                    mirror.known_size(part),
                )
            )
    return units


def _row_group_slices(
    metadata: pq.FileMetaData, unit_rows: int, split_groups: bool = False
) -> list[tuple[tuple[int, ...] | None, int, int]]:
    """(row groups or None for all, rows, rows before the slice) for one file, cut near
    unit_rows at row-group boundaries; with `split_groups`, a row group bigger than unit_rows
    is cut into row ranges too (each range reads its group and keeps its slice)."""
    total = metadata.num_rows
    if total <= unit_rows:
        return [(None, total, 0)]
    slices: list[tuple[tuple[int, ...] | None, int, int]] = []
    groups: list[int] = []
    rows = before = 0
    for g in range(metadata.num_row_groups):
        size = metadata.row_group(g).num_rows
        if split_groups and size > unit_rows:
            if groups:
                slices.append((tuple(groups), rows, before))
                before += rows
                groups, rows = [], 0
            pieces = -(-size // unit_rows)
            bounds = [size * i // pieces for i in range(pieces + 1)]
            slices += [((g,), bounds[i + 1] - bounds[i], before + bounds[i]) for i in range(pieces)]
            before += size
            continue
        groups.append(g)
        rows += size
        if rows >= unit_rows:
            slices.append((tuple(groups), rows, before))
            before += rows
            groups, rows = [], 0
    if groups:
        slices.append((tuple(groups), rows, before))
    if len(slices) == 1:
        return [(None, total, 0)]
    return slices


def _ordinal_bounds(metadata: pq.FileMetaData, groups: tuple[int, ...] | None) -> tuple[int, int]:
    """Smallest and largest row ordinal in these row groups, from the column statistics."""
    unknown = (0, 2**62)
    leaf = next((i for i in range(metadata.num_columns) if metadata.schema.column(i).path == ROW_COLUMN), None)
    if leaf is None:
        return unknown
    low, high = 2**62, -1
    for g in groups if groups is not None else range(metadata.num_row_groups):
        stats = metadata.row_group(g).column(leaf).statistics
        if stats is None or not stats.has_min_max:
            return unknown
        low, high = min(low, int(stats.min)), max(high, int(stats.max))
    return (low, high) if high >= 0 else unknown
