"""The one runner: manifest, resume, the input check, each stage's fit and transform, finalize.

It is the same code whatever the executor (`curate.engine.executors`: this process, `--jobs N`
processes, or Dask): every piece of per-row work is a task over ordered work units
(`curate.engine.units`) run through `executor.map`, and the driver only merges small results and
moves files. A stage's fit either follows the map-reduce protocol of `curate.stages.base`
(`fit_shard`/`fit_buckets`/`fit_reduce`/`fit_merge`, run here) or is a `fit` that spreads its
own work with `ctx.map`.
"""

from __future__ import annotations

import functools
import gc
import json
import os
import sys
import time
import traceback
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from curate.engine.executors import Executor, LocalExecutor
from curate.engine.mirrored import MirroredExecutor
from curate.engine.progress import QUIET, Progress
from curate.engine.spec import PipelineSpec, earlier_output
from curate.engine.tasks import (
    CheckUnit,
    FirstRepeatedId,
    FitMap,
    FitReduce,
    Transform,
    assemble,
    read_side,
    save_stage,
)
from curate.engine.units import (
    DEFAULT_UNIT_BYTES,
    DEFAULT_UNIT_ROWS,
    InputSource,
    InputUnit,
    PartSource,
    input_bytes,
    plan_units,
    unit_rows_for,
)
from curate.errors import CurateError, InputError, OutputError, UsageError, as_write_error, redact_all
from curate.index import origin as index_origin
from curate.index.store import INDEX_DIR
from curate.io import mirror, storage
from curate.io.atomic import atomic_path, remove_path
from curate.io.cache import staging_root
from curate.io.inputs import ROW_COLUMN, InputSet, refuse_output_inside_input, resolved
from curate.io.parts import PartWriter, list_parts
from curate.output.layout import INPUT_STAGE, LEASE_NAME, LOCK_NAME, STAGE_WORK, STAGES_DIR, output_names
from curate.output.ledger import LEDGER_SCHEMA, ids_as_strings
from curate.output.local import finalize, foreign_entries, new_manifest, prepare_output, stage_dir_name
from curate.output.lock import OutputLease, OutputLock
from curate.output.manifest import MANIFEST_NAME, write_manifest
from curate.output.store import OutputStore, is_remote, local_outputs
from curate.runtime import cpu_count, tune_allocator
from curate.stages.base import Stage, StageContext, all_side_outputs, stage_class

_UNITS = "units"


@dataclass
class RunOptions:
    resume: bool = False
    overwrite: bool = False
    progress: Progress = QUIET
    # Where tasks run; None: a LocalExecutor over `jobs` processes (None = every core), made
    # and closed by the run.
    executor: Executor | None = None
    jobs: int | None = None
    # Rows per work unit at most; units are cut smaller so every worker gets a few.
    unit_rows: int = DEFAULT_UNIT_ROWS
    # Uncompressed input bytes per work unit at most (0: cut by rows only), so one file of long
    # documents still becomes a few units per worker (curate.engine.units.unit_rows_for).
    unit_bytes: int = DEFAULT_UNIT_BYTES
    on_stage_done: Callable[[str], None] | None = None
    # Earlier outputs whose index dedup stages match against (curate.index), oldest first.
    against: tuple[str, ...] = ()
    # Builds the budget-aware report of a finished output whose pipeline has a [report] table
    # (curate.pipeline passes curate.report's builder; the engine knows nothing of reports).
    build_report: Callable[[Path, Progress], Any] | None = None


@dataclass
class RunResult:
    output: Path
    manifest: dict
    kept_rows: int
    removed_rows: int
    notes: list[str] = field(default_factory=list)  # one-line remarks for the user


def _output_errors_are_user_errors(run: Callable[..., RunResult]) -> Callable[..., RunResult]:
    """A full disk or an unwritable path anywhere in a run (parts, manifest, finalize) becomes
    one OutputError line (exit 2). Every write is atomic (temp name, then rename) and the
    manifest only records finished stages, so the state left behind is resumable as is."""

    @functools.wraps(run)
    def wrapper(*args: Any, **kwargs: Any) -> RunResult:
        try:
            return run(*args, **kwargs)
        except OutputError as exc:
            _collect_failed_writers(exc)
            raise
        except OSError as exc:
            error = as_write_error(exc, args[2] if len(args) > 2 else kwargs.get("output"))
            if error is None:
                raise
            _collect_failed_writers(exc)
            raise error from None

    return wrapper


def _collect_failed_writers(exc: BaseException) -> None:
    """Free the failed run's frames now. A Parquet writer left open on a full disk retries its
    close in __del__, which fails again and would print a traceback at exit after our one-line
    message; collected here, that repeat of an error already reported is ignored."""
    previous = sys.unraisablehook

    def ignore_os_errors(unraisable: Any) -> None:
        if not isinstance(unraisable.exc_value, OSError):
            previous(unraisable)

    sys.unraisablehook = ignore_os_errors
    try:
        cause: BaseException | None = exc
        while cause is not None:
            traceback.clear_frames(cause.__traceback__)
            cause = cause.__context__
        gc.collect()
    finally:
        sys.unraisablehook = previous


def run_pipeline(
    spec: PipelineSpec, source: str | os.PathLike, output: str | os.PathLike, options: RunOptions = RunOptions()
) -> RunResult:
    """Run the pipeline over the input into `output` (a local directory, or a URL of an object
    store: see `curate.output.store`), on options.executor (or local processes)."""
    tune_allocator()
    if options.executor is not None:
        return _run_somewhere(spec, source, output, options, options.executor)
    with LocalExecutor(options.jobs) as executor:
        return _run_somewhere(spec, source, output, options, executor)


def _run_somewhere(
    spec: PipelineSpec, source: str | os.PathLike, output: str | os.PathLike, options: RunOptions, executor: Executor
) -> RunResult:
    earlier = earlier_outputs(spec, options)
    refuse_overlaps(source, output, earlier)  # before anything is read, locked or deleted
    if is_remote(output):
        return _run_locked(spec, source, output, options, executor, earlier)
    lock = OutputLock(Path(storage.local_or_url(str(output))))
    with lock:
        try:
            return _run_locked(spec, source, output, options, executor, earlier)
        except CurateError:
            _remove_if_only_lock(lock)
            raise


def refuse_overlaps(source: str | os.PathLike, output: str | os.PathLike, earlier: list[str]) -> None:
    """-o that is, or holds, the input or an earlier output (--against) is refused: --overwrite
    would delete what the run reads. Checked before anything is written or deleted."""
    refuse_output_inside_input(source, output)
    out_text = storage.local_or_url(str(output))
    for location in earlier:
        text = storage.local_or_url(str(location))
        if storage.is_url(text) != storage.is_url(out_text):
            continue
        if storage.is_url(text):
            same = text.rstrip("/") == out_text.rstrip("/") or text.startswith(out_text.rstrip("/") + "/")
        else:
            found, out = resolved(Path(text)), resolved(Path(out_text))
            same = found == out or out in found.parents
        if same:
            raise UsageError(
                f"the output is the earlier output {location} that --against reads (or holds it)",
                path=output,
                fix="write the new output elsewhere, then merge its index into the earlier one with: curate index EARLIER --add NEW",
            )


def _remove_if_only_lock(lock: OutputLock) -> None:
    """A directory this run created for its lock, left holding only the lock: removed, so an
    exit-2 failure leaves no trace."""
    out = lock.out
    if lock.created_directory and out.is_dir() and all(c.name == LOCK_NAME for c in out.iterdir()):
        lock.release()
        remove_path(out)


def _undo_fresh_run(out: Path, manifest: dict) -> None:
    """A fresh run that fails with exit 2 before any stage finished (a bad id, bad UTF-8, a
    missing column) leaves OUT as if it had not started: its manifest and stage folders go."""
    if manifest.get("finalized") or any(s.get("status") == "done" for s in manifest["stages"][1:]):
        return  # finished stages stay for --resume
    remove_path(out / STAGES_DIR)
    (out / MANIFEST_NAME).unlink(missing_ok=True)


def _run_locked(
    spec: PipelineSpec,
    source: str | os.PathLike,
    output: str | os.PathLike,
    options: RunOptions,
    executor: Executor,
    earlier: list[str],
) -> RunResult:
    executor.start_early(storage.worker_modules([source, output, *earlier]))  # overlaps the input scan below
    # Earlier outputs in an object store: only their index is read, so only it is fetched.
    with local_outputs(earlier, spec.output_options, wanted=lambda name: name.startswith(f"{INDEX_DIR}/")) as against:
        if against:
            from curate.index.check import check_against

            check_against(spec, against)  # a bad earlier index is exit 2 before anything is written
        if not is_remote(output):
            return _run(
                spec, source, storage.local_or_url(str(output)), options, executor, against_paths=tuple(against)
            )
        store = OutputStore(str(output), spec.output_options, side_outputs=all_side_outputs())
        # The first calls on the store: a missing bucket or bad credentials are one line here.
        store.reach()
        lease = store.call(
            "take the output's writer lease", OutputLease(store.fs, store._key(LEASE_NAME), store.url).acquire
        )
        try:
            return _run_in_store(spec, source, options, executor, earlier, against, store)
        finally:
            lease.release()


def _run_in_store(
    spec: PipelineSpec,
    source: str | os.PathLike,
    options: RunOptions,
    executor: Executor,
    earlier: list[str],
    against: list[str],
    store: OutputStore,
) -> RunResult:
    """A run whose output is an object-store URL, staged locally (curate.output.store)."""
    staging_root().mkdir(parents=True, exist_ok=True)
    # Workers that do not see the driver's staging directory (other machines) hand files
    # over through the store instead (curate.io.mirror).
    mirrored = not executor.shares_directory(str(staging_root()))
    if mirrored:
        _check_views_for_workers(earlier)
    staging = store.prepare(resume=options.resume, overwrite=options.overwrite, mirrored=mirrored)
    # The staging directory is now empty (a fresh run) or holds the run to continue.
    run_mirror = (
        mirror.Mirror(str(staging.absolute()), store.url, spec.output_options, held_back=(MANIFEST_NAME,))
        if mirrored
        else None
    )
    views = list(zip(against, earlier)) if mirrored else []
    with (
        mirror.activated(run_mirror, record=store.committed_files),
        index_origin.registered(views, spec.output_options),
    ):
        run_executor = MirroredExecutor(executor, run_mirror) if run_mirror is not None else executor
        try:
            result = _run(
                spec,
                source,
                staging,
                replace(options, resume=True, overwrite=False),
                run_executor,
                commit=lambda out: store.commit(
                    out,
                    map=lambda fn, items: run_executor.map(fn, items, label="committing"),
                    workers=executor.workers,
                ),
                output_name=store.url,
                against_paths=tuple(against),
            )
        finally:
            if mirrored:
                for path in (staging, *against):
                    executor.run_everywhere(mirror.forget_local, str(path))
                store.discard_staging()
    store.discard_staging()
    return RunResult(store.url, result.manifest, result.kept_rows, result.removed_rows, result.notes)  # type: ignore[arg-type]


def _check_views_for_workers(earlier: list[str]) -> None:
    """Workers without the driver's disk read an earlier output's index from its store; an
    earlier output on the driver's disk is out of their reach."""
    for location in earlier:
        if not is_remote(location):
            raise UsageError(
                "the Dask workers do not share this machine's disk, so they cannot read an earlier output on it",
                path=location,
                fix="give --against the earlier output's object-store URL (or run curate on a machine whose disk the workers mount)",
            )


def earlier_outputs(spec: PipelineSpec, options: RunOptions) -> list[str]:
    """The pipeline file's earlier outputs, then the run's, each once, as the config records them."""
    return list(dict.fromkeys(earlier_output(p) for p in (*spec.against, *options.against)))


def _no_commit(_: Path) -> None:
    """A local output is its own commit record: every write there is already atomic."""


@_output_errors_are_user_errors
def _run(
    spec: PipelineSpec,
    source: str | os.PathLike,
    output: str | os.PathLike,
    options: RunOptions,
    executor: Executor,
    commit: Callable[[Path], None] = _no_commit,
    output_name: str | None = None,
    against_paths: tuple[str, ...] | None = None,
) -> RunResult:
    """`against_paths`: local copies of `earlier_outputs` (URLs fetched); the config keeps
    the outputs as given."""
    out = Path(output)
    config = redact_all(json.loads(json.dumps(spec.resolved())))
    if options.against:  # part of the config (after the pipeline file's), so --resume refuses another set
        config["against"] = earlier_outputs(spec, options)
    inputs = InputSet.scan(source, spec.columns, output=output_name or out)  # an output inside the input is refused
    input_record = redact_all([f.to_json() for f in inputs.files])  # as the manifest records them
    known = output_names(all_side_outputs())
    foreign = foreign_entries(out, known) if options.overwrite else []
    manifest = prepare_output(
        out, config, input_record, resume=options.resume, overwrite=options.overwrite, side_outputs=all_side_outputs()
    )
    notes = (
        [
            f"--overwrite left {len(foreign)} entr{'y' if len(foreign) == 1 else 'ies'} that curate did not write in place: {', '.join(foreign[:5])}{', ...' if len(foreign) > 5 else ''}"
        ]
        if foreign and manifest is None
        else []
    )
    if not spec.stages:
        notes.append("the pipeline has no stages: kept/ holds the input as read (add [[stage]] tables to curate it)")
    fresh = manifest is None
    if manifest is None:
        manifest = new_manifest(config, input_record, inputs, [(s.name, s.kind) for s in spec.stages], spec.seed)
        write_manifest(out, manifest)
        commit(out)
    if manifest.get("finalized"):
        return _result(out, manifest, notes)
    try:
        return _run_stages(spec, out, options, executor, commit, against_paths, config, inputs, manifest, notes)
    except CurateError:
        if fresh and commit is _no_commit:
            _undo_fresh_run(out, manifest)
        raise


def _run_stages(
    spec: PipelineSpec,
    out: Path,
    options: RunOptions,
    executor: Executor,
    commit: Callable[[Path], None],
    against_paths: tuple[str, ...] | None,
    config: dict,
    inputs: InputSet,
    manifest: dict,
    notes: list[str],
) -> RunResult:
    """The input check, each stage's fit and transform, finalize and the report."""
    workers = executor.workers
    total_bytes = input_bytes(inputs) if options.unit_bytes > 0 else 0
    unit_rows = unit_rows_for(inputs.num_rows, workers, options.unit_rows, total_bytes, options.unit_bytes or 1)
    manifest["executor"] = {
        "description": executor.describe()[0],
        "workers": workers,
        "threads_per_task": executor.threads_per_task,
        "unit_rows": unit_rows,
        "input_bytes": total_bytes,
        "files_between_tasks": "disk" if mirror.active() is None else "store",  # curate.io.mirror
    }

    stages_root = out / STAGES_DIR
    input_entry = manifest["stages"][0]
    if input_entry["status"] != "done":
        busy = executor.busy_seconds
        _check_input(inputs, spec, stages_root, input_entry, executor, options.progress, unit_rows)
        input_entry["parallel_seconds"] = round(executor.busy_seconds - busy, 3)
        write_manifest(out, manifest)
        commit(out)
        _notify(options, INPUT_STAGE)
    current: InputSource | PartSource = InputSource(
        inputs, spec.batch_size, spec.drop_null_text, input_entry["rows_removed"]
    )

    for position, stage_spec in enumerate(spec.stages, start=1):
        entry = manifest["stages"][position]
        stage_dir = stages_root / stage_dir_name(position, stage_spec.name)
        if entry["status"] == "done":
            current = PartSource(stage_dir / "kept", spec.batch_size)
            continue
        _drop(stage_dir, executor)
        ctx = StageContext(
            name=stage_spec.name,
            columns=spec.columns,
            seed=spec.seed,
            batch_size=spec.batch_size,
            workers=executor.workers,
            threads=cpu_count(),
            task_threads=executor.threads_per_task,
            work_dir=stage_dir / STAGE_WORK,
            output_dir=out,
            progress=options.progress,
            report=dict(spec.report or {}),
            unit_rows=unit_rows,
            executor=executor,
            against=tuple(config.get("against", ())) if against_paths is None else against_paths,
        )
        stage = stage_class(stage_spec.kind).from_options(stage_spec.options, where=spec.source)
        started, busy = time.perf_counter(), executor.busy_seconds
        kept_rows, removed_count = run_stage(stage, current, ctx, stage_dir, last=position == len(spec.stages))
        seconds = time.perf_counter() - started
        entry.update(
            status="done",
            rows_in=current.num_rows,
            rows_out=kept_rows,
            rows_removed=removed_count,
            seconds=round(seconds, 3),
            parallel_seconds=round(executor.busy_seconds - busy, 3),
            info=ctx.info,
        )
        write_manifest(out, manifest)
        _drop(ctx.work_dir, executor)
        if isinstance(current, PartSource):
            _drop(current.directory, executor)
        current = PartSource(stage_dir / "kept", spec.batch_size)
        commit(out)
        _notify(options, stage_spec.name)

    started, busy = time.perf_counter(), executor.busy_seconds
    finalize(
        out,
        manifest,
        inputs.num_rows,
        functools.partial(_publish_kept, current, (spec.columns.text, spec.columns.id)),
        lambda fn, parts: executor.map(fn, parts),
    )
    manifest["finalize_seconds"] = {
        "total": round(time.perf_counter() - started, 3),
        "parallel": round(executor.busy_seconds - busy, 3),
    }
    write_manifest(out, manifest)
    commit(out)
    if spec.report is not None and options.build_report is not None:  # reads the finished output
        for name in ("kept", "removed"):  # the report reads the finished output where it runs
            mirror.ensure(out / name)
        options.build_report(out, options.progress)
        commit(out)
    return _result(out, manifest, notes)


def _publish_kept(last: InputSource | PartSource, plain_columns: tuple[str, ...], kept_final: Path) -> None:
    """The last stage's kept rows become OUT/kept; with no stages, the input as read."""
    if isinstance(last, InputSource):
        with atomic_path(kept_final) as tmp, PartWriter(tmp, plain_columns=plain_columns) as writer:
            writer.schema = last.schema
            writer.write_all(last.batches())
    else:
        mirror.move(last.directory, kept_final)


def run_stage(
    stage: Stage, source: InputSource | PartSource, ctx: StageContext, stage_dir: Path, *, last: bool = False
) -> tuple[int, int]:
    """Fit (map-reduce protocol, or the stage's own fit with ctx.map), then transform every
    work unit as a task and assemble the units' parts in input order. The last stage writes
    its kept parts without the internal ordinal, so finalize publishes them as they are
    (a rewrite of every kept row saved: 0.2 s of a 1.3 s MinHash run on 79 MB)."""
    stage.validate_options()  # a stage built directly, not by from_options, is checked here
    ctx.work_dir.mkdir(parents=True, exist_ok=True)
    units = ctx.units(source)
    if units and ctx.executor is not None:
        ctx.executor.check_storage(str(ctx.work_dir), units[0].path, **_via_store(ctx.work_dir, units[0].path))
    if stage.needs_fit:
        if stage.supports_shard_fit():
            _fit_map_reduce(stage, source, units, ctx)
        else:
            stage.fit(source, ctx)
    ctx.info["work_units"] = len(units)
    units_dir = ctx.work_dir / _UNITS
    units_dir.mkdir(parents=True, exist_ok=True)
    task = Transform(save_stage(stage, ctx.work_dir), ctx, str(units_dir), drop_ordinals=last)
    ctx.map(task, units, label=f"{ctx.name}: writing", sizes=[u.rows for u in units])
    kept_rows, removed_rows = assemble(units_dir, len(units), stage_dir)
    if kept_rows == 0 and not list_parts(stage_dir / "kept"):
        schema = source.schema
        if last and ROW_COLUMN in schema.names:
            schema = schema.remove(schema.get_field_index(ROW_COLUMN))
        PartWriter(stage_dir / "kept", schema=schema).close()
    if not list_parts(stage_dir / "removed"):
        PartWriter(stage_dir / "removed", schema=LEDGER_SCHEMA).close()
    if stage.side_schema is not None:
        stage.gather_side(read_side(units_dir, len(units), stage.side_schema), ctx)
    stage.finish(ctx)
    return kept_rows, removed_rows


def _fit_map_reduce(stage: Stage, source: InputSource | PartSource, units: list, ctx: StageContext) -> None:
    """map per unit (+ shuffle through files + reduce per bucket), then merge on the driver."""
    buckets = stage.fit_buckets(ctx)
    shuffle_dir = str(ctx.work_dir / "shuffle") if buckets > 0 else None
    task_ctx = replace(ctx, info={}, report=dict(ctx.report))
    partials = ctx.map(
        FitMap(stage, task_ctx, shuffle_dir, buckets),
        units,
        label=f"{ctx.name}: fitting",
        sizes=[u.rows for u in units],
    )
    if shuffle_dir is not None:
        partials = ctx.map(
            FitReduce(stage, task_ctx, shuffle_dir, len(units)), range(buckets), label=f"{ctx.name}: reducing"
        )
        _drop(Path(shuffle_dir), ctx.executor)
    stage.fit_merge(partials, source, ctx)


def _check_input(
    inputs: InputSet,
    spec: PipelineSpec,
    stages_root: Path,
    entry: dict,
    executor: Executor,
    progress: Progress,
    unit_rows: int,
) -> None:
    """Null ids, duplicate ids (a shuffle on the id hash), invalid UTF-8 and null texts, as unit
    tasks; the earliest problem in input order is the one raised."""
    started = time.perf_counter()
    check_dir = stages_root / stage_dir_name(0, INPUT_STAGE)
    _drop(check_dir, executor)
    units_dir = check_dir / STAGE_WORK / _UNITS
    units_dir.mkdir(parents=True)
    units = plan_units(InputSource(inputs, spec.batch_size, spec.drop_null_text), unit_rows)
    if units:
        executor.check_storage(str(units_dir), units[0].path, **_via_store(units_dir, units[0].path))
    buckets = max(1, 2 * executor.workers)
    shuffle_dir = str(check_dir / STAGE_WORK / "shuffle")
    findings = executor.map(
        CheckUnit(buckets, str(units_dir), shuffle_dir),
        units,
        progress=progress,
        label="input: checking",
        sizes=[u.rows for u in units],
    )
    repeats = executor.map(FirstRepeatedId(shuffle_dir, len(units)), range(buckets))
    problems: list[tuple[int, int, str]] = []  # (ordinal, rank within a batch as the check goes, what)
    problems += [(f.null_id, 0, "null_id") for f in findings if f.null_id >= 0]
    problems += [(r, 1, "duplicate_id") for r in repeats if r >= 0]
    problems += [(f.bad_utf8, 2, f"bad_utf8:{f.bad_utf8_column}") for f in findings if f.bad_utf8 >= 0]
    if not spec.drop_null_text:
        problems += [(f.null_text, 3, f"null_text:{f.null_text_in_batch}") for f in findings if f.null_text >= 0]
    if problems:
        _raise_input_problem(inputs, spec, *min(problems))
    null_texts = sum(f.null_texts for f in findings)
    assemble(units_dir, len(units), check_dir, kinds=("removed",))
    if not list_parts(check_dir / "removed"):
        PartWriter(check_dir / "removed", schema=LEDGER_SCHEMA).close()
    _drop(check_dir / STAGE_WORK, executor)
    entry.update(
        status="done",
        rows_in=inputs.num_rows,
        rows_out=inputs.num_rows - null_texts,
        rows_removed=null_texts,
        seconds=round(time.perf_counter() - started, 3),
        info={},
    )


def _raise_input_problem(inputs: InputSet, spec: PipelineSpec, ordinal: int, _rank: int, what: str) -> None:
    """One line naming the file, the row and the fix for the problem at `ordinal`."""
    file = next(f for f in reversed(inputs.files) if f.row_offset <= ordinal)
    row = ordinal - file.row_offset
    id_col = spec.columns.id
    if what == "null_id":
        raise InputError(
            f"null id at row {row}",
            path=file.path,
            fix=f"give every row an id in '{id_col}', or drop the column to get '<file stem>:<row>' ids",
        )
    if what.startswith("bad_utf8:"):
        column = what.partition(":")[2] or spec.columns.text
        raise InputError(
            f"column '{column}' at row {row} is not valid UTF-8",
            path=file.path,
            fix=f"re-encode '{column}' as UTF-8 (e.g. decode with errors='replace') before curating",
        )
    if what == "duplicate_id":
        unit = InputUnit(
            0, file, None, file.rows, file.row_offset, inputs.schema, inputs.columns, spec.batch_size, False
        )
        batch = next(b for b in unit.batches([id_col]) if b.column(ROW_COLUMN)[-1].as_py() >= ordinal)
        first = batch.column(ROW_COLUMN)[0].as_py()
        bad = ids_as_strings(batch.column(id_col))[ordinal - first].as_py()
        raise InputError(
            f"duplicate id {bad!r}",
            path=file.path,
            fix=f"make '{id_col}' unique across all shards, or pick another --id-column",
        )
    in_batch = what.partition(":")[2]
    raise InputError(
        f"null text at row {row} ({in_batch} in this batch)",
        path=file.path,
        fix="fill or drop null texts, or pass --drop-null-text to send them to the ledger",
    )


def _drop(path: Path, executor: Executor | None) -> None:
    """Remove a stage's directory or scratch: here, in the store of a mirrored run, and the
    workers' copies of it (curate.io.mirror)."""
    mirror.remove(path)
    if mirror.active() is not None and executor is not None:
        executor.run_everywhere(mirror.forget_local, str(path))


def _via_store(work_dir: str | os.PathLike, input_path: str) -> dict[str, bool]:
    """Which of the two paths a mirrored run hands over through the store (curate.io.mirror)."""
    return {
        "work_via_store": mirror.relative(work_dir) is not None,
        "input_via_store": mirror.relative(input_path) is not None,
    }


def _notify(options: RunOptions, name: str) -> None:
    if options.on_stage_done is not None:
        options.on_stage_done(name)


def _result(out: Path, manifest: dict, notes: list[str] | None = None) -> RunResult:
    totals = manifest.get("totals", {})
    return RunResult(out, manifest, totals.get("kept_rows", 0), totals.get("removed_rows", 0), list(notes or []))
