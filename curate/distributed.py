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
cluster a shared filesystem (NFS, Lustre, a FUSE mount of object storage).
"""

from __future__ import annotations

import logging
import operator
import os
import shutil
import uuid
from collections import OrderedDict
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import cloudpickle
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curate.errors import InputError, UsageError
from curate.ledger import LEDGER_SCHEMA
from curate.pipeline import InputSource, PartSource, PipelineSpec, RunOptions, RunResult, run_pipeline
from curate.progress import QUIET
from curate.shards import ROW_COLUMN, ColumnSpec, InputFile, InputSet, PartWriter, _conform_to, _first_line, _with_required, list_parts
from curate.stages.base import Stage, StageContext

DEFAULT_UNIT_ROWS = 1_000_000
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
        for groups, rows, _ in _row_group_slices(pq.read_metadata(part), unit_rows):
            units.append(PartUnit(len(units), str(part), groups, rows, source.schema, source.batch_size))
    return units


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


def _fit_shard_task(stage: Stage, unit: Unit, ctx: StageContext) -> Any:
    return stage.fit_shard(unit, replace(ctx, shard=unit.index, info={}))


def _fit_reduce_task(stage: Stage, bucket: int, pieces: list[Any], ctx: StageContext) -> Any:
    return stage.fit_reduce(bucket, pieces, replace(ctx, info={}))


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
    try:
        os.rename(attempt, final)
    except OSError:  # another attempt got there first; its output is the same
        shutil.rmtree(attempt, ignore_errors=True)
    return _unit_counts(final)


def _assemble(units_dir: Path, count: int, stage_dir: Path) -> tuple[int, int]:
    """Move every unit's parts into stage_dir/{kept,removed} in unit (input) order. Empty parts
    are dropped unless nothing else is left, so the directory still carries the schema."""
    totals = []
    for kind in ("kept", "removed"):
        target = stage_dir / kind
        target.mkdir(parents=True, exist_ok=True)
        index = rows = 0
        first_schema: pa.Schema | None = None
        spare: Path | None = None
        for unit in range(count):
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
    return totals[0], totals[1]


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
        if not items:
            return []
        futures = self.client.map(fn, list(items), pure=False)
        try:
            return self.client.gather(futures)
        finally:
            self.client.cancel(futures)

    def run_stage(self, stage: Stage, source: InputSource | PartSource, ctx: StageContext, stage_dir: Path) -> tuple[int, int]:
        """fit (map-reduce or on the driver), transform shard-parallel, assemble in input order."""
        import time

        ctx.workers = self.threads()
        ctx.work_dir.mkdir(parents=True, exist_ok=True)
        units = plan_units(source, self.unit_rows)
        worker_ctx = replace(ctx, progress=QUIET, info={}, report=dict(ctx.report))
        prefix = f"curate-{ctx.name}-{uuid.uuid4().hex[:8]}"
        timing = self.timings.setdefault(ctx.name, {})
        started = time.perf_counter()
        if stage.needs_fit:
            if stage.supports_shard_fit():
                partials = self._fit_map_reduce(stage, units, worker_ctx, ctx, prefix, timing)
                merge_started = time.perf_counter()
                stage.fit_merge(partials, source, ctx)
                timing["fit_merge_driver"] = time.perf_counter() - merge_started
                ctx.info.setdefault("executor", "dask: map-reduce fit")
            else:
                stage.fit(source, ctx)
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

    def _fit_map_reduce(self, stage: Stage, units: list[Unit], worker_ctx: StageContext, ctx: StageContext, prefix: str, timing: dict) -> list[Any]:
        import time

        started = time.perf_counter()
        client = self.client
        maps = [client.submit(_fit_shard_task, stage, unit, worker_ctx, key=f"{prefix}-fit-{unit.index}", pure=False) for unit in units]
        buckets = stage.fit_buckets(worker_ctx)
        try:
            self._follow(maps, units, ctx, f"{ctx.name}: fitting")
            timing["fit_map"] = time.perf_counter() - started
            if buckets <= 0:
                return client.gather(maps)
            started = time.perf_counter()
            reduced = []
            for bucket in range(buckets):
                pieces = [client.submit(operator.getitem, m, bucket, key=f"{prefix}-piece-{unit.index}-{bucket}", pure=False) for m, unit in zip(maps, units)]
                reduced.append(client.submit(_fit_reduce_task, stage, bucket, pieces, worker_ctx, key=f"{prefix}-reduce-{bucket}", pure=False))
            result = client.gather(reduced)
            timing["fit_reduce"] = time.perf_counter() - started
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
