"""The same stages on a Dask cluster: shard-parallel transform, map-reduce fit, same output.

`run_pipeline` keeps the manifest, resume and finalize; `DaskExecutor` only replaces how one
stage runs (`run_stage_local`). A stage's source is cut into ordered work units (an input
shard, a part file, or a slice of row groups of a big one). Fit: stages with the map-reduce
protocol of `curate.stages.base` fit as map (+ shuffle) + reduce on workers and a merge on the
driver; the others stream `fit` on the driver. Transform: one task per unit, each writing its
own kept/removed parts under a fresh attempt directory that is renamed into place when whole,
so a task re-run after a worker dies is harmless. The driver then moves the parts into the
stage directory in unit order, so rows come out in input order, never in completion order.
Workers read and write the same paths as the driver: on one machine the local disk, on a
cluster a shared POSIX filesystem with atomic rename (NFS, Lustre, CephFS); see docs/dask.md.
"""

from __future__ import annotations

import logging
import os
import shutil
import uuid
from collections import OrderedDict
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import cloudpickle
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curate.errors import InputError, OutputError, UsageError
from curate.ledger import LEDGER_SCHEMA, ids_as_strings, removed_rows
from curate.metrics.exact import hash128
from curate.pipeline import INPUT_STAGE, InputSource, PartSource, PipelineSpec, RunOptions, RunResult, _stage_dir_name, run_pipeline
from curate.progress import QUIET, Progress
from curate.shards import ROW_COLUMN, ColumnSpec, InputFile, InputSet, PartWriter, _conform_to, _first_line, _with_required, list_parts
from curate.stages.base import Stage, StageContext, scan_ids

DEFAULT_UNIT_ROWS = 1_000_000
# The steps in DaskExecutor.timings that are shard-parallel tasks; the others run on the driver.
PARALLEL_STEPS = frozenset({"check_map", "check_reduce", "fit_map", "fit_reduce", "transform", "map"})
CONNECT_TIMEOUT = 10.0
WAIT_FOR_WORKERS = 120.0
_UNITS = "units"


# ---------------------------------------------------------------------------------------
# Work units: ordered, picklable slices of a stage's source, each a BatchSource of its own.


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
        """As InputSource.batches, for this slice: same conforming, ordinals and null filter."""
        text = self.columns.text
        read = None if columns is None else list(dict.fromkeys([*columns, text] if self.drop_null_text else columns))
        for batch in self._read(read):
            if self.drop_null_text and batch.column(text).null_count:
                batch = batch.filter(pc.is_valid(batch.column(text)))
            if columns is not None and self.drop_null_text and text not in columns:
                batch = batch.drop_columns([text])
            yield batch

    def _read(self, columns: Sequence[str] | None) -> Iterator[pa.RecordBatch]:
        inputs = InputSet([self.file], self.input_schema, self.columns)
        path = Path(self.file.path)
        parquet = pq.ParquetFile(path)
        wanted = list(self.input_schema.names) if columns is None else _with_required(columns, self.columns, self.input_schema)
        read_cols = [c for c in wanted if c in set(parquet.schema_arrow.names)]
        start = self.first_row
        groups = list(self.row_groups) if self.row_groups is not None else None
        try:
            for batch in parquet.iter_batches(batch_size=self.batch_size, row_groups=groups, columns=read_cols, use_threads=False):
                yield inputs._conform(batch, wanted, self.file, start, batch.num_rows)
                start += batch.num_rows
        except InputError:
            raise
        except (pa.ArrowException, OSError) as exc:
            raise InputError(f"cannot read rows ({_first_line(exc)})", path=path, fix="the shard is corrupt or truncated; re-export it") from None
        if start != self.first_row + self.rows:
            raise InputError("row count differs from the Parquet footer", path=path, fix="re-export the shard")


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

    @property
    def num_rows(self) -> int:
        return self.rows

    def batches(self, columns: Sequence[str] | None = None) -> Iterator[pa.RecordBatch]:
        if columns is not None:
            columns = list(dict.fromkeys([*columns, ROW_COLUMN]))
        groups = list(self.row_groups) if self.row_groups is not None else None
        yield from pq.ParquetFile(self.path).iter_batches(batch_size=self.batch_size, row_groups=groups, columns=columns, use_threads=False)


Unit = InputUnit | PartUnit


def _row_group_slices(metadata: pq.FileMetaData, unit_rows: int) -> list[tuple[tuple[int, ...] | None, int, int]]:
    """(row groups or None for all, rows, rows before the slice) for one file, cut near unit_rows."""
    total = metadata.num_rows
    if total <= unit_rows or metadata.num_row_groups <= 1:
        return [(None, total, 0)]
    slices: list[tuple[tuple[int, ...] | None, int, int]] = []
    groups: list[int] = []
    rows = before = 0
    for g in range(metadata.num_row_groups):
        groups.append(g)
        rows += metadata.row_group(g).num_rows
        if rows >= unit_rows:
            slices.append((tuple(groups), rows, before))
            before += rows
            groups, rows = [], 0
    if groups:
        slices.append((tuple(groups), rows, before))
    return slices


def plan_units(source: InputSource | PartSource, unit_rows: int = DEFAULT_UNIT_ROWS) -> list[Unit]:
    """The source's work units in input order."""
    units: list[Unit] = []
    if isinstance(source, InputSource):
        inputs = source.inputs
        for file in inputs.files:
            for groups, rows, before in _row_group_slices(pq.read_metadata(file.path), unit_rows):
                units.append(
                    InputUnit(len(units), file, groups, rows, file.row_offset + before, inputs.schema, inputs.columns, source.batch_size, source.drop_null_text)
                )
        return units
    for part in list_parts(source.directory):
        metadata = pq.read_metadata(part)
        for groups, rows, _ in _row_group_slices(metadata, unit_rows):
            bounds = _ordinal_bounds(metadata, groups)
            units.append(PartUnit(len(units), str(part), groups, rows, source.schema, source.batch_size, bounds))
    return units


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


class ClusterSource:
    """The whole source as the driver sees it, plus `scan_ids` (used by IdLookup.collect)
    done as one task per unit, each given only the wanted ordinals in its range."""

    def __init__(self, source: InputSource | PartSource, units: list[Unit], client: Any):
        self.source = source
        self.units = units
        self.client = client
        self.num_rows = source.num_rows
        self.schema = source.schema

    def batches(self, columns: Sequence[str] | None = None) -> Iterator[pa.RecordBatch]:
        return self.source.batches(columns)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.source, name)

    def scan_ids(self, wanted: np.ndarray, id_column: str) -> tuple[np.ndarray, pa.Array]:
        futures = []
        for unit in self.units:
            low, high = unit.ordinal_range
            mine = wanted[np.searchsorted(wanted, low) : np.searchsorted(wanted, high, side="right")]
            if len(mine):
                futures.append(self.client.submit(scan_ids, unit, mine, id_column, pure=False))
        found = self.client.gather(futures)
        rows = np.concatenate([f[0] for f in found]) if found else np.empty(0, np.int64)
        ids = pa.concat_arrays([f[1] for f in found]) if found else pa.array([], pa.string())
        return rows, ids


# ---------------------------------------------------------------------------------------
# Tasks: module-level functions, so workers import them by name.

_STAGE_CACHE: "OrderedDict[str, Stage]" = OrderedDict()


def _load_stage(path: str) -> Stage:
    """A fitted stage, unpickled once per worker process (the file name is unique per run)."""
    stage = _STAGE_CACHE.get(path)
    if stage is None:
        with open(path, "rb") as handle:
            stage = cloudpickle.load(handle)
        _STAGE_CACHE[path] = stage
        while len(_STAGE_CACHE) > 2:
            _STAGE_CACHE.popitem(last=False)
    return stage


def _fit_shard_task(stage: Stage, unit: Unit, ctx: StageContext, shuffle_dir: str | None, buckets: int) -> Any:
    """Map one unit. With a shuffle, the pieces go to shuffle_dir/BBBB/UUUUU.pkl and only their
    count comes back: the shuffle is files on the shared storage (as NeMo Curator and Spark do),
    not thousands of tiny Dask tasks moving pieces between workers."""
    partial = stage.fit_shard(unit, replace(ctx, shard=unit.index, info={}))
    if shuffle_dir is None:
        return partial
    if len(partial) != buckets:
        raise ValueError(f"{type(stage).__name__}.fit_shard returned {len(partial)} pieces, fit_buckets said {buckets}")
    for bucket, piece in enumerate(partial):
        _write_piece(Path(shuffle_dir) / f"{bucket:04d}" / f"{unit.index:05d}.pkl", piece)
    return buckets


def _write_piece(path: Path, piece: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    with open(tmp, "wb") as handle:
        cloudpickle.dump(piece, handle, protocol=5)
    os.replace(tmp, path)


def _read_pieces(shuffle_dir: str, bucket: int, count: int) -> list[Any]:
    pieces = []
    for unit in range(count):
        with open(Path(shuffle_dir) / f"{bucket:04d}" / f"{unit:05d}.pkl", "rb") as handle:
            pieces.append(cloudpickle.load(handle))
    return pieces


def _fit_reduce_task(stage: Stage, bucket: int, shuffle_dir: str, count: int, ctx: StageContext, _maps_done: list[Any]) -> Any:
    """Reduce one bucket over every unit's piece, read in unit (input) order."""
    return stage.fit_reduce(bucket, _read_pieces(shuffle_dir, bucket, count), replace(ctx, info={}))


def _unit_counts(directory: Path) -> tuple[int, int]:
    return tuple(sum(pq.read_metadata(p).num_rows for p in list_parts(directory / kind)) for kind in ("kept", "removed"))  # type: ignore[return-value]


def _transform_task(stage_path: str, unit: Unit, ctx: StageContext, units_dir: str) -> tuple[int, int]:
    """Transform one unit into units_dir/NNNNN/{kept,removed}; idempotent and safe to re-run."""
    final = Path(units_dir) / f"{unit.index:05d}"
    if final.is_dir():  # an earlier attempt finished before its worker died
        return _unit_counts(final)
    attempt = Path(units_dir) / f".{unit.index:05d}.{uuid.uuid4().hex}.tmp"
    stage = _load_stage(stage_path)
    unit_ctx = replace(ctx, shard=unit.index, work_dir=attempt / "work", info={})
    try:
        unit_ctx.work_dir.mkdir(parents=True)
        kept_writer = PartWriter(attempt / "kept", schema=None)
        removed_writer = PartWriter(attempt / "removed", schema=LEDGER_SCHEMA)
        for batch in unit.batches():
            kept, removed = stage.transform(batch, unit_ctx)
            kept_writer.write(kept)
            removed_writer.write(removed)
        if kept_writer.schema is None:
            kept_writer.schema = unit.schema
        kept_writer.close()
        removed_writer.close()
        shutil.rmtree(unit_ctx.work_dir, ignore_errors=True)
    except BaseException:
        shutil.rmtree(attempt, ignore_errors=True)
        raise
    _publish(attempt, final)
    return _unit_counts(final)


@dataclass(frozen=True)
class _CheckFindings:
    """What one unit of the input check found; errors are raised on the driver, earliest first.
    The id hashes, (n, 3) int64 of (high, low, ordinal) per bucket, went to the shuffle dir."""

    null_id: int  # first ordinal with a null id, -1 if none
    null_text: int  # first ordinal with a null text, -1 if none
    null_text_in_batch: int
    null_texts: int


def _check_task(unit: InputUnit, buckets: int, units_dir: str, shuffle_dir: str) -> _CheckFindings:
    """The local input check on one unit: ids hashed for the global duplicate-id shuffle, null
    ids and texts located, null-text ledger rows written (idempotently) when they are dropped."""
    id_col, text_col = unit.columns.id, unit.columns.text
    keys: list[np.ndarray] = []
    null_id = null_text = -1
    in_batch = nulls = 0
    attempt = Path(units_dir) / f".{unit.index:05d}.{uuid.uuid4().hex}.tmp"
    try:
        writer = PartWriter(attempt / "removed", schema=LEDGER_SCHEMA)
        for batch in replace(unit, drop_null_text=False).batches([text_col]):
            rows = batch.column(ROW_COLUMN).to_numpy()
            ids = batch.column(id_col)
            if ids.null_count:
                null_id = int(rows[np.asarray(pc.is_null(ids))][0])
                break
            str_ids = ids_as_strings(ids)
            keys.append(np.column_stack([hash128(str_ids).view(np.int64), rows]))
            texts = batch.column(text_col)
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
    _publish(attempt, Path(units_dir) / f"{unit.index:05d}")
    triples = np.concatenate(keys) if keys else np.empty((0, 3), np.int64)
    which = triples[:, 0].view(np.uint64) % np.uint64(buckets)
    for bucket in range(buckets):
        _write_piece(Path(shuffle_dir) / f"{bucket:04d}" / f"{unit.index:05d}.pkl", triples[which == bucket])
    return _CheckFindings(null_id, null_text, in_batch, nulls)


def _first_repeated_id(bucket: int, shuffle_dir: str, count: int, _checks_done: list[Any]) -> int:
    """Lowest ordinal whose id hash was seen at an earlier ordinal, -1 if none."""
    pieces = _read_pieces(shuffle_dir, bucket, count)
    triples = np.concatenate(pieces) if pieces else np.empty((0, 3), np.int64)
    order = np.lexsort((triples[:, 2], triples[:, 1], triples[:, 0]))
    hi, lo, rows = triples[order, 0], triples[order, 1], triples[order, 2]
    repeat = np.zeros(len(rows), dtype=bool)
    repeat[1:] = (hi[1:] == hi[:-1]) & (lo[1:] == lo[:-1])
    return int(rows[repeat].min()) if repeat.any() else -1


def _publish(attempt: Path, final: Path) -> None:
    """Rename a finished attempt into place; if another attempt won, keep that one (same bytes)."""
    try:
        os.rename(attempt, final)
    except OSError:
        shutil.rmtree(attempt, ignore_errors=True)


def _probe_storage(work_dir: str, input_file: str, token: str) -> tuple[bool, str]:
    """On each worker: can it read the input, and which marker file did it write in work_dir."""
    name = f".probe-{token}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    Path(work_dir).mkdir(parents=True, exist_ok=True)
    (Path(work_dir) / name).write_bytes(b"")
    return os.access(input_file, os.R_OK), name


def _assemble(units_dir: Path, count: int, stage_dir: Path, kinds: tuple[str, ...] = ("kept", "removed")) -> tuple[int, ...]:
    """Move every unit's parts into stage_dir/{kept,removed} in unit (input) order. Empty parts
    are dropped unless nothing else is left, so the directory still carries the schema."""
    totals = []
    for kind in kinds:
        target = stage_dir / kind
        target.mkdir(parents=True, exist_ok=True)
        index = rows = 0
        first_schema: pa.Schema | None = None
        spare: Path | None = None
        for unit in range(count):
            if not (units_dir / f"{unit:05d}").is_dir():
                raise OutputError(f"the output of work unit {unit} is missing", path=units_dir, fix="put -o on storage every Dask worker mounts under the same path, then rerun with --resume")
            for part in list_parts(units_dir / f"{unit:05d}" / kind):
                metadata = pq.read_metadata(part)
                if metadata.num_rows == 0:
                    spare = spare or part
                    continue
                schema = metadata.schema.to_arrow_schema()
                if first_schema is None:
                    first_schema = schema
                elif not schema.equals(first_schema, check_metadata=False):
                    _rewrite_conformed(part, first_schema)  # as the local PartWriter would
                os.replace(part, target / f"part-{index:05d}.parquet")
                index += 1
                rows += metadata.num_rows
        if index == 0 and spare is not None:
            os.replace(spare, target / "part-00000.parquet")
        totals.append(rows)
    return tuple(totals)


def _rewrite_conformed(part: Path, schema: pa.Schema) -> None:
    table = _conform_to(pq.read_table(part), schema)
    tmp = part.with_name(f".{part.name}.conform.tmp")
    pq.write_table(table, tmp, compression="zstd")
    os.replace(tmp, part)


# ---------------------------------------------------------------------------------------
# The executor.


class DaskExecutor:
    """Runs stages on a dask.distributed cluster; plug into RunOptions(executor=...)."""

    def __init__(self, client: Any, *, cluster: Any = None, unit_rows: int = DEFAULT_UNIT_ROWS):
        self.client = client
        self.cluster = cluster
        self.unit_rows = unit_rows
        self.timings: dict[str, dict[str, float]] = {}
        self._storage_checked: set[tuple[str, str]] = set()

    @classmethod
    def local(cls, workers: int, *, threads_per_worker: int = 1, unit_rows: int = DEFAULT_UNIT_ROWS) -> "DaskExecutor":
        """Start a LocalCluster of `workers` processes on loopback (the --workers N path)."""
        from distributed import Client, LocalCluster

        if workers < 1:
            raise UsageError(f"--workers must be at least 1, got {workers}", fix="e.g. --workers 2")
        cluster = LocalCluster(
            n_workers=workers,
            threads_per_worker=threads_per_worker,
            processes=True,
            host="127.0.0.1",
            dashboard_address="127.0.0.1:0",  # a free port: never collide with another cluster
            silence_logs=logging.ERROR,
        )
        try:
            client = Client(cluster)
        except BaseException:
            cluster.close()
            raise
        return cls(client, cluster=cluster, unit_rows=unit_rows)

    @classmethod
    def connect(cls, address: str, *, timeout: float = CONNECT_TIMEOUT, unit_rows: int = DEFAULT_UNIT_ROWS) -> "DaskExecutor":
        """Connect to a running scheduler (the --scheduler ADDR path); exit 2 if unreachable."""
        from distributed import Client

        try:
            client = Client(address, timeout=timeout)
        except (OSError, TimeoutError, ValueError) as exc:
            raise UsageError(
                f"cannot reach the Dask scheduler at {address} within {timeout:g} s ({_first_line(exc)})",
                fix="start one with 'dask scheduler' and 'dask worker ADDR', or check the address (tcp://HOST:PORT)",
            ) from None
        return cls(client, unit_rows=unit_rows)

    def close(self) -> None:
        self.client.close()
        if self.cluster is not None:
            self.cluster.close()

    def __enter__(self) -> "DaskExecutor":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- what the run prints ---------------------------------------------------------

    def describe(self) -> list[str]:
        """One-time lines for the user: where the cluster is and where to watch it."""
        info = self.client.scheduler_info()
        workers = info.get("workers", {})
        threads = sum(w.get("nthreads", 0) for w in workers.values())
        lines = [f"dask: {info.get('address', '?')}, {len(workers)} workers, {threads} threads"]
        has_page = "dashboard" in info.get("services", {})
        if has_page and dashboard_available():
            lines.append(f"dask dashboard: {self.client.dashboard_link}")
        elif has_page and self.cluster is None:  # the remote scheduler may have bokeh even if we do not
            lines.append(f"dask dashboard: {self.client.dashboard_link} (if bokeh is installed on the scheduler)")
        else:
            lines.append("dask dashboard: not available (it needs bokeh: pip install bokeh)")
        return lines

    def threads(self) -> int:
        """Worker threads on the cluster, waiting (bounded) for the first worker to join."""
        workers = self.client.scheduler_info().get("workers", {})
        if not workers:
            try:
                self.client.wait_for_workers(1, timeout=WAIT_FOR_WORKERS)
            except TimeoutError:
                raise UsageError(
                    f"no Dask worker joined the scheduler at {self.client.scheduler.address} within {WAIT_FOR_WORKERS:g} s",
                    fix="start workers with 'dask worker tcp://HOST:PORT'",
                ) from None
            workers = self.client.scheduler_info().get("workers", {})
        return max(1, sum(w.get("nthreads", 1) for w in workers.values()))

    # -- the StageExecutor protocol ----------------------------------------------------

    def map(self, fn: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
        """fn over items on the workers, results in item order (used by finalize)."""
        import time

        if not items:
            return []
        started = time.perf_counter()
        futures = self.client.map(fn, list(items), pure=False)
        try:
            return self.client.gather(futures)
        finally:
            self.client.cancel(futures)
            self.timings.setdefault("finalize", {})["map"] = time.perf_counter() - started

    def check_input(self, inputs: InputSet, spec: PipelineSpec, stages_root: Path, entry: dict, progress: Progress) -> None:
        """The local runner's input check (null ids, duplicate ids, null texts) as shard tasks
        plus a shuffle on the id hash; the earliest problem in input order is the one raised."""
        import time

        started = time.perf_counter()
        check_dir = stages_root / _stage_dir_name(0, INPUT_STAGE)
        shutil.rmtree(check_dir, ignore_errors=True)
        units_dir = check_dir / "work" / _UNITS
        units_dir.mkdir(parents=True)
        units = plan_units(InputSource(inputs, spec.batch_size, spec.drop_null_text), self.unit_rows)
        self._check_shared_storage(units_dir, Path(inputs.files[0].path))
        buckets = 2 * self.threads()
        prefix = f"curate-input-{uuid.uuid4().hex[:8]}"
        client = self.client
        shuffle_dir = str(check_dir / "work" / "shuffle")
        checks = [client.submit(_check_task, unit, buckets, str(units_dir), shuffle_dir, key=f"{prefix}-check-{unit.index}", pure=False) for unit in units]
        try:
            ctx = StageContext(name=INPUT_STAGE, progress=progress)
            self._follow(checks, units, ctx, "input: checking")
            timing = self.timings.setdefault(INPUT_STAGE, {})
            timing["check_map"] = time.perf_counter() - started
            repeated = [client.submit(_first_repeated_id, b, shuffle_dir, len(units), checks, key=f"{prefix}-repeat-{b}", pure=False) for b in range(buckets)]
            summaries = [(f.null_id, f.null_text, f.null_text_in_batch, f.null_texts) for f in client.gather(checks)]
            first_repeat = [r for r in client.gather(repeated) if r >= 0]
            timing["check_reduce"] = time.perf_counter() - started - timing["check_map"]
        except BaseException:
            client.cancel(checks)
            raise
        problems: list[tuple[int, int, str]] = []  # (ordinal, rank within a batch as the local check goes, what)
        problems += [(s[0], 0, "null_id") for s in summaries if s[0] >= 0]
        if first_repeat:
            problems.append((min(first_repeat), 1, "duplicate_id"))
        if not spec.drop_null_text:
            problems += [(s[1], 2, f"null_text:{s[2]}") for s in summaries if s[1] >= 0]
        if problems:
            _raise_input_problem(inputs, spec, *min(problems))
        null_texts = sum(s[3] for s in summaries)
        _assemble(units_dir, len(units), check_dir, kinds=("removed",))
        if not list_parts(check_dir / "removed"):
            PartWriter(check_dir / "removed", schema=LEDGER_SCHEMA).close()
        shutil.rmtree(check_dir / "work", ignore_errors=True)
        entry.update(status="done", rows_in=inputs.num_rows, rows_out=inputs.num_rows - null_texts, rows_removed=null_texts, seconds=round(time.perf_counter() - started, 3), info={})

    def run_stage(self, stage: Stage, source: InputSource | PartSource, ctx: StageContext, stage_dir: Path) -> tuple[int, int]:
        """fit (map-reduce or on the driver), transform shard-parallel, assemble in input order."""
        import time

        ctx.workers = self.threads()
        ctx.work_dir.mkdir(parents=True, exist_ok=True)
        units = plan_units(source, self.unit_rows)
        if units:
            self._check_shared_storage(ctx.work_dir, Path(units[0].file.path if isinstance(units[0], InputUnit) else units[0].path))
        worker_ctx = replace(ctx, progress=QUIET, info={}, report=dict(ctx.report))
        prefix = f"curate-{ctx.name}-{uuid.uuid4().hex[:8]}"
        timing = self.timings.setdefault(ctx.name, {})
        started = time.perf_counter()
        if stage.needs_fit:
            if stage.supports_shard_fit():
                partials = self._fit_map_reduce(stage, units, worker_ctx, ctx, prefix, timing)
                merge_started = time.perf_counter()
                stage.fit_merge(partials, ClusterSource(source, units, self.client), ctx)
                timing["fit_merge_driver"] = time.perf_counter() - merge_started
                ctx.info.setdefault("executor", "dask: map-reduce fit")
            else:
                stage.fit(source, ctx)  # the local runner's source, exactly
                timing["fit_driver"] = time.perf_counter() - started
                ctx.info.setdefault("executor", "dask: fitted on the driver")
        ctx.info["work_units"] = len(units)

        transform_started = time.perf_counter()
        stage_file = ctx.work_dir / f"stage-{uuid.uuid4().hex}.pkl"
        tmp = stage_file.with_name(f".{stage_file.name}.tmp")
        with open(tmp, "wb") as handle:
            cloudpickle.dump(stage, handle)
        os.replace(tmp, stage_file)
        units_dir = ctx.work_dir / _UNITS
        units_dir.mkdir(parents=True, exist_ok=True)
        futures = [
            self.client.submit(_transform_task, str(stage_file), unit, worker_ctx, str(units_dir), key=f"{prefix}-transform-{unit.index}", pure=False)
            for unit in units
        ]
        try:
            self._follow(futures, units, ctx, f"{ctx.name}: writing")
        except BaseException:
            self.client.cancel(futures)
            raise
        timing["transform"] = time.perf_counter() - transform_started
        assemble_started = time.perf_counter()
        kept_rows, removed_rows = _assemble(units_dir, len(units), stage_dir)
        if kept_rows == 0 and not list_parts(stage_dir / "kept"):
            PartWriter(stage_dir / "kept", schema=source.schema).close()
        stage.finish(ctx)
        timing["assemble_finish_driver"] = time.perf_counter() - assemble_started
        return kept_rows, removed_rows

    def _check_shared_storage(self, work_dir: Path, input_file: Path) -> None:
        """Every worker must read the input and write the output under the driver's paths; a
        worker on its own disk would otherwise write parts the driver never sees."""
        if (str(work_dir), str(input_file)) in self._storage_checked:
            return
        token = uuid.uuid4().hex
        seen = self.client.run(_probe_storage, str(work_dir), str(input_file), token)
        unseen = []
        for worker, (_, marker) in seen.items():
            try:
                (Path(work_dir) / marker).unlink()
            except FileNotFoundError:
                unseen.append(worker)
        blind = [worker for worker, (sees_input, _) in seen.items() if not sees_input]
        fix = "put the input and -o on storage every worker mounts under the same path (NFS, Lustre, ...)"
        if blind:
            raise UsageError(f"Dask worker {blind[0]} cannot read the input file {input_file}", fix=fix)
        if unseen:
            raise OutputError(f"Dask worker {unseen[0]} writes somewhere this machine cannot see", path=work_dir, fix=fix)
        self._storage_checked.add((str(work_dir), str(input_file)))

    def _fit_map_reduce(self, stage: Stage, units: list[Unit], worker_ctx: StageContext, ctx: StageContext, prefix: str, timing: dict) -> list[Any]:
        import time

        started = time.perf_counter()
        client = self.client
        buckets = stage.fit_buckets(worker_ctx)
        shuffle_dir = str(ctx.work_dir / "shuffle") if buckets > 0 else None
        maps = [client.submit(_fit_shard_task, stage, unit, worker_ctx, shuffle_dir, buckets, key=f"{prefix}-fit-{unit.index}", pure=False) for unit in units]
        try:
            self._follow(maps, units, ctx, f"{ctx.name}: fitting")
            timing["fit_map"] = time.perf_counter() - started
            if buckets <= 0:
                return client.gather(maps)
            started = time.perf_counter()
            reduced = [client.submit(_fit_reduce_task, stage, b, shuffle_dir, len(units), worker_ctx, maps, key=f"{prefix}-reduce-{b}", pure=False) for b in range(buckets)]
            result = client.gather(reduced)
            timing["fit_reduce"] = time.perf_counter() - started
            shutil.rmtree(shuffle_dir, ignore_errors=True)
            return result
        except BaseException:
            client.cancel(maps)
            raise

    def _follow(self, futures: list[Any], units: list[Unit], ctx: StageContext, label: str) -> None:
        """Wait for every task, advancing the progress bar as each completes; raise the first error."""
        from distributed import as_completed

        rows_of = {f.key: unit.rows for f, unit in zip(futures, units)}
        with ctx.progress.task(label, total=sum(u.rows for u in units)) as bar:
            for future in as_completed(futures):
                if future.status == "error":
                    future.result()  # re-raises the worker's exception (InputError stays exit 2)
                bar.advance(rows_of[future.key])


def _raise_input_problem(inputs: InputSet, spec: PipelineSpec, ordinal: int, _rank: int, what: str) -> None:
    """The same InputError the local check raises for the problem at `ordinal`."""
    file = next(f for f in reversed(inputs.files) if f.row_offset <= ordinal)
    row = ordinal - file.row_offset
    id_col = spec.columns.id
    if what == "null_id":
        raise InputError(f"null id at row {row}", path=file.path, fix=f"give every row an id in '{id_col}', or drop the column to get '<file stem>:<row>' ids")
    if what == "duplicate_id":
        unit = InputUnit(0, file, None, file.rows, file.row_offset, inputs.schema, inputs.columns, spec.batch_size, False)
        batch = next(b for b in unit.batches([id_col]) if b.column(ROW_COLUMN)[-1].as_py() >= ordinal)
        first = batch.column(ROW_COLUMN)[0].as_py()
        bad = ids_as_strings(batch.column(id_col))[ordinal - first].as_py()
        raise InputError(f"duplicate id {bad!r}", path=file.path, fix=f"make '{id_col}' unique across all shards, or pick another --id-column")
    in_batch = what.partition(":")[2]
    raise InputError(
        f"null text at row {row} ({in_batch} in this batch)",
        path=file.path,
        fix="fill or drop null texts, or pass --drop-null-text to send them to the ledger",
    )


def dashboard_available() -> bool:
    """The Dask dashboard needs bokeh; without it we run fine and say so once."""
    try:
        import bokeh  # noqa: F401
    except ImportError:
        return False
    return True


def run_pipeline_on_dask(
    spec: PipelineSpec,
    source: str | os.PathLike,
    output: str | os.PathLike,
    options: RunOptions,
    *,
    workers: int | None = None,
    scheduler: str | None = None,
    log: Callable[[str], None] | None = None,
) -> RunResult:
    """What `curate run --workers N | --scheduler ADDR` does: start or join a cluster, run, close."""
    if workers is not None and scheduler is not None:
        raise UsageError("--workers and --scheduler are exclusive", fix="--workers N starts a local cluster; --scheduler ADDR joins a running one")
    executor = DaskExecutor.connect(scheduler) if scheduler is not None else DaskExecutor.local(workers or 1)
    with executor:
        if log is not None:
            for line in executor.describe():
                log(line)
        return run_pipeline(spec, source, output, replace(options, executor=executor))
