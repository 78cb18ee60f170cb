"""The per-unit tasks every executor runs, and how their outputs come back in input order.

A task writes under its own attempt directory (`.NNNNN.<uuid>.tmp`) and renames it to
`NNNNN` when whole, so a task re-run after its worker died is harmless and a half-written
attempt is never read. The driver then moves the parts into the stage directory in unit
order: rows come out in input order, never in completion order.
"""

from __future__ import annotations

import shutil
import uuid
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import cloudpickle
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curate.algorithms.exact import hash128
from curate.engine.units import InputUnit, Unit
from curate.errors import OutputError
from curate.io import mirror
from curate.io.atomic import atomic_path
from curate.io.parts import (
    ROW_COLUMN,
    PartWriter,
    conform_to,
    list_parts,
    piece_path,
    publish_attempt,
    read_pieces,
    write_piece,
)
from curate.output.layout import INPUT_STAGE, STAGE_WORK
from curate.output.ledger import LEDGER_PLAIN, LEDGER_SCHEMA, ids_as_strings, removed_rows
from curate.stages.base import Stage, StageContext

# ---------------------------------------------------------------------------------------
# Shuffle pieces: files under a stage's work dir, one per (bucket, unit).


# ---------------------------------------------------------------------------------------
# The map-reduce fit protocol of curate.stages.base, as tasks.


@dataclass(frozen=True)
class FitMap:
    """Map one unit; with a shuffle the pieces go to files and only their count comes back
    (the shuffle is files on shared storage, as NeMo Curator and Spark do, not thousands of
    tiny tasks moving pieces between workers)."""

    stage: Stage
    ctx: StageContext
    shuffle_dir: str | None
    buckets: int

    def __call__(self, unit: Unit) -> Any:
        partial = self.stage.fit_shard(unit, replace(self.ctx, shard=unit.index, info={}))
        if self.shuffle_dir is None:
            return partial
        if len(partial) != self.buckets:
            raise ValueError(
                f"{type(self.stage).__name__}.fit_shard returned {len(partial)} pieces, fit_buckets said {self.buckets}"
            )
        for bucket, piece in enumerate(partial):
            write_piece(piece_path(self.shuffle_dir, bucket, unit.index), piece)
        return self.buckets


@dataclass(frozen=True)
class FitReduce:
    """Reduce one bucket over every unit's piece, read in unit (input) order."""

    stage: Stage
    ctx: StageContext
    shuffle_dir: str
    units: int

    def __call__(self, bucket: int) -> Any:
        return self.stage.fit_reduce(
            bucket, read_pieces(self.shuffle_dir, bucket, self.units), replace(self.ctx, info={})
        )


# ---------------------------------------------------------------------------------------
# Transform.

SIDE = "side"  # a unit's side table (Stage.side_schema), beside its kept/ and removed/ parts

_STAGES: dict[str, Stage] = {}


def load_stage(path: str) -> Stage:
    """A fitted stage, unpickled once per worker process (the file name is unique per run)."""
    stage = _STAGES.get(path)
    if stage is None:
        with open(mirror.ensure(path), "rb") as handle:
            stage = cloudpickle.load(handle)
        _STAGES.clear()  # one stage at a time: drop the previous stage's fitted state
        _STAGES[path] = stage
    return stage


def save_stage(stage: Stage, work_dir: Path) -> str:
    """Pickle the fitted stage once for the transform tasks to load."""
    path = Path(work_dir) / f"stage-{uuid.uuid4().hex}.pkl"
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        cloudpickle.dump(stage, handle, protocol=5)
    return str(path)


def unit_counts(directory: Path) -> tuple[int, int]:
    return tuple(
        sum(mirror.read_metadata(p).num_rows for p in list_parts(directory / kind)) for kind in ("kept", "removed")
    )  # type: ignore[return-value]


@dataclass(frozen=True)
class Transform:
    """Transform one unit into units_dir/NNNNN/{kept,removed}; idempotent and safe to re-run."""

    stage_path: str
    ctx: StageContext
    units_dir: str
    drop_ordinals: bool = False  # the last stage: kept parts as they will be published

    def __call__(self, unit: Unit) -> tuple[int, int]:
        final = Path(self.units_dir) / f"{unit.index:05d}"
        if mirror.is_done(final):  # an earlier attempt finished before its worker died
            return unit_counts(final)
        attempt = Path(self.units_dir) / f".{unit.index:05d}.{uuid.uuid4().hex}.tmp"
        stage = load_stage(self.stage_path)
        unit_ctx = replace(self.ctx, shard=unit.index, work_dir=attempt / STAGE_WORK, info={})
        try:
            unit_ctx.work_dir.mkdir(parents=True)
            kept_writer = PartWriter(
                attempt / "kept", schema=None, plain_columns=(self.ctx.text_column, self.ctx.id_column)
            )
            removed_writer = PartWriter(attempt / "removed", schema=LEDGER_SCHEMA, plain_columns=LEDGER_PLAIN)
            side_writer = None if stage.side_schema is None else PartWriter(attempt / SIDE, schema=stage.side_schema)
            for batch in unit.batches():
                if side_writer is None:
                    kept, removed = stage.transform(batch, unit_ctx)
                else:
                    kept, removed, side = stage.transform_with_side(batch, unit_ctx)
                    side_writer.write(side)
                kept_writer.write(kept.drop_columns([ROW_COLUMN]) if self.drop_ordinals else kept)
                removed_writer.write(removed)
            if side_writer is not None:
                side_writer.close()
            if kept_writer.schema is None:
                schema = unit.schema
                kept_writer.schema = (
                    schema.remove(schema.get_field_index(ROW_COLUMN)) if self.drop_ordinals else schema
                )
            kept_writer.close()
            removed_writer.close()
            shutil.rmtree(unit_ctx.work_dir, ignore_errors=True)
        except BaseException:
            shutil.rmtree(attempt, ignore_errors=True)
            raise
        publish_attempt(attempt, final)
        return kept_writer.rows_written, removed_writer.rows_written


def read_side(units_dir: Path, count: int, schema: pa.Schema) -> pa.Table:
    """Every unit's side table (Stage.side_schema), in unit (input) order."""
    with mirror.listed(units_dir):
        parts = [p for unit in range(count) for p in list_parts(units_dir / f"{unit:05d}" / SIDE)]
    tables = []
    for part in parts:
        with mirror.parquet_file(part) as file:  # read from the store in place, if it is there
            tables.append(conform_to(file.read(), schema))
    return pa.concat_tables(tables) if tables else schema.empty_table()


def assemble(
    units_dir: Path, count: int, stage_dir: Path, kinds: tuple[str, ...] = ("kept", "removed")
) -> tuple[int, ...]:
    """Move every unit's parts into stage_dir/{kept,removed} in unit (input) order. Empty parts
    are dropped unless nothing else is left, so the directory still carries the schema."""
    with mirror.listed(units_dir):
        return _assemble(units_dir, count, stage_dir, kinds)


def _assemble(units_dir: Path, count: int, stage_dir: Path, kinds: tuple[str, ...]) -> tuple[int, ...]:
    totals = []
    for kind in kinds:
        target = stage_dir / kind
        target.mkdir(parents=True, exist_ok=True)
        index = rows = 0
        first_schema: pa.Schema | None = None
        spare: Path | None = None
        for unit in range(count):
            if not mirror.is_done(units_dir / f"{unit:05d}"):
                raise OutputError(
                    f"the output of work unit {unit} is missing",
                    path=units_dir,
                    fix="put -o on storage every worker mounts under the same path, then rerun with --resume",
                )
            for part in list_parts(units_dir / f"{unit:05d}" / kind):
                metadata = mirror.read_metadata(part)
                if metadata.num_rows == 0:
                    spare = spare or part
                    continue
                schema = metadata.schema.to_arrow_schema()
                if first_schema is None:
                    first_schema = schema
                elif not schema.equals(first_schema, check_metadata=False):
                    _rewrite_conformed(part, first_schema)  # as one PartWriter over every unit would
                mirror.move(part, target / f"part-{index:05d}.parquet")
                index += 1
                rows += metadata.num_rows
        if index == 0 and spare is not None:
            mirror.move(spare, target / "part-00000.parquet")
        totals.append(rows)
    return tuple(totals)


def _rewrite_conformed(part: Path, schema: pa.Schema) -> None:
    table = conform_to(pq.read_table(mirror.ensure(part)), schema)
    with atomic_path(part) as tmp:
        pq.write_table(table, tmp, compression="zstd")


# ---------------------------------------------------------------------------------------
# The input check: null ids, duplicate ids (a shuffle on the id hash), null texts.


@dataclass(frozen=True)
class CheckFindings:
    """What one unit of the input check found; errors are raised on the driver, earliest first.
    The id hashes, (n, 3) int64 of (high, low, ordinal) per bucket, went to the shuffle dir."""

    null_id: int  # first ordinal with a null id, -1 if none
    null_text: int  # first ordinal with a null text, -1 if none
    null_text_in_batch: int
    null_texts: int
    bad_utf8: int  # first ordinal with a string value that is not valid UTF-8, -1 if none
    bad_utf8_column: str = ""  # and its column


@dataclass(frozen=True)
class CheckUnit:
    buckets: int
    units_dir: str
    shuffle_dir: str

    def __call__(self, unit: InputUnit) -> CheckFindings:
        id_col, text_col = unit.columns.id, unit.columns.text
        keys: list[np.ndarray] = []
        null_id = null_text = bad_utf8 = -1
        bad_column = ""
        in_batch = nulls = 0
        # Parquet readers do not validate UTF-8: every string column is checked, not only the
        # text (polars, tokenizers and JSON writers downstream refuse invalid strings).
        strings = [f.name for f in unit.schema if _is_string(f.type) and f.name not in (text_col, ROW_COLUMN)]
        attempt = Path(self.units_dir) / f".{unit.index:05d}.{uuid.uuid4().hex}.tmp"
        try:
            writer = PartWriter(attempt / "removed", schema=LEDGER_SCHEMA, plain_columns=LEDGER_PLAIN)
            for batch in unit.with_nulls().batches([text_col, *strings]):
                rows = batch.column(ROW_COLUMN).to_numpy()
                ids = batch.column(id_col)
                if ids.null_count:
                    null_id = int(rows[np.asarray(pc.is_null(ids))][0])
                    break
                str_ids = ids_as_strings(ids)
                keys.append(np.column_stack([hash128(str_ids).view(np.int64), rows]))
                texts = batch.column(text_col)
                found = [
                    (first_invalid_utf8(batch.column(name)), name)
                    for name in dict.fromkeys([text_col, id_col, *strings])
                    if _is_string(batch.schema.field(name).type)
                ]
                found = [(row, name) for row, name in found if row >= 0]
                if found:
                    bad, bad_column = min(found)
                    bad_utf8 = int(rows[bad])
                    break
                if texts.null_count:
                    is_null = pc.is_null(texts)
                    if null_text < 0:
                        null_text, in_batch = int(rows[np.asarray(is_null)][0]), texts.null_count
                    if unit.drop_null_text:
                        writer.write(removed_rows(str_ids.filter(is_null), INPUT_STAGE, "null_text"))
                    nulls += texts.null_count
            writer.close()
        except BaseException:
            shutil.rmtree(attempt, ignore_errors=True)
            raise
        publish_attempt(attempt, Path(self.units_dir) / f"{unit.index:05d}")
        triples = np.concatenate(keys) if keys else np.empty((0, 3), np.int64)
        which = triples[:, 0].view(np.uint64) % np.uint64(self.buckets)
        for bucket in range(self.buckets):
            write_piece(piece_path(self.shuffle_dir, bucket, unit.index), triples[which == bucket])
        return CheckFindings(null_id, null_text, in_batch, nulls, bad_utf8, bad_column)


@dataclass(frozen=True)
class FirstRepeatedId:
    """Lowest ordinal whose id hash was seen at an earlier ordinal, -1 if none."""

    shuffle_dir: str
    units: int

    def __call__(self, bucket: int) -> int:
        pieces = read_pieces(self.shuffle_dir, bucket, self.units)
        triples = np.concatenate(pieces) if pieces else np.empty((0, 3), np.int64)
        # Sort by the high half alone, then fully only the rows whose high half repeats (none in
        # a clean input): a three-key lexsort of every row took 0.23 s per million ids.
        high = np.sort(triples[:, 0])
        repeated = high[np.flatnonzero(high[1:] == high[:-1])]
        triples = triples[np.isin(triples[:, 0], repeated)] if len(repeated) else triples[:0]
        order = np.lexsort((triples[:, 2], triples[:, 1], triples[:, 0]))
        hi, lo, rows = triples[order, 0], triples[order, 1], triples[order, 2]
        repeat = np.zeros(len(rows), dtype=bool)
        repeat[1:] = (hi[1:] == hi[:-1]) & (lo[1:] == lo[:-1])
        return int(rows[repeat].min()) if repeat.any() else -1


def _is_string(dtype: pa.DataType) -> bool:
    return pa.types.is_string(dtype) or pa.types.is_large_string(dtype) or pa.types.is_string_view(dtype)


def first_invalid_utf8(texts: pa.Array) -> int:
    """Index of the first text that is not valid UTF-8, -1 if all are (Parquet readers do not
    validate UTF-8; normalizers and tokenizers downstream need it)."""
    try:
        texts.validate(full=True)
        return -1
    except pa.ArrowInvalid:
        values = texts.cast(pa.large_binary()).to_pylist()  # error path only: find the row to name
        return next(i for i, v in enumerate(values) if v is not None and not _decodes(v))


def _decodes(value: bytes) -> bool:
    try:
        value.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True
