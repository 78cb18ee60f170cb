"""Pipeline spec (TOML) -> stages, and the local streaming runner with resume.

Run layout inside OUT while a run is under way:
  _stages/NN-name/kept/      that stage's kept rows (the next stage's input)
  _stages/NN-name/removed/   that stage's ledger rows
  _stages/NN-name/work/      scratch (memory maps), removed when the stage is done
A stage counts as done only once the manifest says so; a resumed run wipes and redoes the
first stage that is not. Finalizing renames the last kept dir to OUT/kept and links the
ledgers, in stage order, into OUT/removed: kept/ never holds rows of an unfinished run.
"""

from __future__ import annotations

import errno
import functools
import gc
import json
import os
import shutil
import sys
import time
import tomllib
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curate import __version__
from curate.errors import InputError, OutputError, UsageError
from curate.ledger import LEDGER_SCHEMA, ids_as_strings, removed_rows
from curate.manifest import package_versions, read_manifest, write_manifest
from curate.metrics.exact import FirstSeenIndex, hash128
from curate.progress import QUIET, Progress
from curate.shards import (
    DEFAULT_BATCH_SIZE,
    ROW_COLUMN,
    ColumnSpec,
    InputSet,
    PartWriter,
    close_quietly,
    count_part_rows,
    iter_part_batches,
    list_parts,
)
from curate.stages.base import Stage, StageContext, row_ordinals, stage_class

STAGES_DIR = "_stages"
INPUT_STAGE = "input"


@dataclass
class StageSpec:
    kind: str
    options: dict[str, Any]
    name: str


@dataclass
class PipelineSpec:
    stages: list[StageSpec]
    columns: ColumnSpec = field(default_factory=ColumnSpec)
    seed: int = 0
    drop_null_text: bool = False
    batch_size: int = DEFAULT_BATCH_SIZE
    report: dict[str, Any] | None = None
    source: str = "pipeline"

    def resolved(self) -> dict[str, Any]:
        """The config as it will run: every stage option with its default filled in."""
        stages = []
        for spec in self.stages:
            cls = stage_class(spec.kind, self.source)
            options = {**cls.option_defaults(), **spec.options}
            stages.append({"name": spec.name, "kind": spec.kind, "options": options})
        return {
            "input": {"text_column": self.columns.text, "id_column": self.columns.id, "drop_null_text": self.drop_null_text},
            "seed": self.seed,
            "stages": stages,
            "report": self.report,
        }


_TOP_KEYS = {"input", "stage", "report", "seed", "batch_size"}
_INPUT_KEYS = {"text_column", "id_column", "drop_null_text"}


def load_pipeline(path: str | os.PathLike) -> PipelineSpec:
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
    except FileNotFoundError:
        raise UsageError("pipeline file does not exist", path=path, fix="pass a TOML pipeline, e.g. pipelines/quickstart.toml") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"malformed TOML ({exc})", path=path, fix="fix the TOML syntax") from None
    return parse_pipeline(data, str(path))


def parse_pipeline(data: dict[str, Any], source: str = "pipeline") -> PipelineSpec:
    unknown = sorted(set(data) - _TOP_KEYS)
    if unknown:
        raise UsageError(f"unknown top-level key(s) {unknown}", path=source, fix=f"valid keys: {sorted(_TOP_KEYS)}")
    input_table = data.get("input", {})
    if not isinstance(input_table, dict):
        raise UsageError("[input] must be a table", path=source, fix="write [input] with text_column / id_column")
    bad = sorted(set(input_table) - _INPUT_KEYS)
    if bad:
        raise UsageError(f"unknown [input] key(s) {bad}", path=source, fix=f"valid keys: {sorted(_INPUT_KEYS)}")
    raw_stages = data.get("stage", [])
    if not isinstance(raw_stages, list) or not all(isinstance(s, dict) for s in raw_stages):
        raise UsageError("stages must be [[stage]] tables", path=source, fix="write each stage as a [[stage]] table with a kind")
    stages: list[StageSpec] = []
    seen: dict[str, int] = {}
    for position, raw in enumerate(raw_stages, start=1):
        options = dict(raw)
        kind = options.pop("kind", None)
        if not isinstance(kind, str):
            raise UsageError(f"stage {position} has no kind", path=source, fix='add kind = "exact" (or another stage kind)')
        stage_class(kind, source).from_options(options, where=f"{source} (stage {position}, {kind})")
        seen[kind] = seen.get(kind, 0) + 1
        name = kind if seen[kind] == 1 else f"{kind}_{seen[kind]}"
        stages.append(StageSpec(kind, options, name))
    seed = data.get("seed", 0)
    batch_size = data.get("batch_size", DEFAULT_BATCH_SIZE)
    if not isinstance(seed, int) or not isinstance(batch_size, int) or batch_size <= 0:
        raise UsageError("seed and batch_size must be integers (batch_size > 0)", path=source, fix="e.g. seed = 0, batch_size = 65536")
    report = data.get("report")
    if report is not None and not isinstance(report, dict):
        raise UsageError("[report] must be a table", path=source, fix="write [report] with budgets = [...]")
    if report is not None:
        from curate.report.config import parse_report_table

        parse_report_table(report, source)
    return PipelineSpec(
        stages=stages,
        columns=ColumnSpec(text=input_table.get("text_column", "text"), id=input_table.get("id_column", "id")),
        seed=seed,
        drop_null_text=bool(input_table.get("drop_null_text", False)),
        batch_size=batch_size,
        report=report,
        source=source,
    )


# ---------------------------------------------------------------------------------------
# Sources a stage reads from.


class InputSource:
    """The validated input, optionally without null-text rows (they went to the ledger)."""

    def __init__(self, inputs: InputSet, batch_size: int, drop_null_text: bool, null_rows: int = 0):
        self.inputs = inputs
        self.batch_size = batch_size
        self.drop_null_text = drop_null_text
        self.num_rows = inputs.num_rows - null_rows
        self.schema = inputs.schema.append(pa.field(ROW_COLUMN, pa.int64()))

    def batches(self, columns: Sequence[str] | None = None) -> Iterator[pa.RecordBatch]:
        text = self.inputs.columns.text
        read = None if columns is None else list(dict.fromkeys([*columns, text] if self.drop_null_text else columns))
        for batch in self.inputs.batches(self.batch_size, read):
            if self.drop_null_text and batch.column(text).null_count:
                batch = batch.filter(pc.is_valid(batch.column(text)))
            if columns is not None and self.drop_null_text and text not in columns:
                batch = batch.drop_columns([text])
            yield batch


class PartSource:
    """A finished stage's kept rows."""

    def __init__(self, directory: Path, batch_size: int):
        self.directory = directory
        self.batch_size = batch_size
        self.num_rows = count_part_rows(directory)
        parts = list_parts(directory)
        self.schema = pq.read_schema(parts[0]) if parts else pa.schema([])

    def batches(self, columns: Sequence[str] | None = None) -> Iterator[pa.RecordBatch]:
        if columns is not None:
            columns = list(dict.fromkeys([*columns, ROW_COLUMN]))
        return iter_part_batches(self.directory, self.batch_size, columns)


# ---------------------------------------------------------------------------------------
# The run.


class StageExecutor(Protocol):
    """Where the stages run (datatrove's split: the executor is separate from the steps).
    None in RunOptions means this process (`run_stage_local`); curate.distributed.DaskExecutor
    runs the same stage objects on a Dask cluster. Manifest, resume and finalize stay here."""

    def run_stage(self, stage: Stage, source: "InputSource | PartSource", ctx: StageContext, stage_dir: Path) -> tuple[int, int]: ...

    def map(self, fn: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]: ...

    def check_input(self, inputs: InputSet, spec: PipelineSpec, stages_root: Path, entry: dict, progress: Progress) -> None: ...


@dataclass
class RunOptions:
    resume: bool = False
    overwrite: bool = False
    progress: Progress = QUIET
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)
    on_stage_done: Callable[[str], None] | None = None
    executor: StageExecutor | None = None


@dataclass
class RunResult:
    output: Path
    manifest: dict
    kept_rows: int
    removed_rows: int


# OS errors that mean "this output location cannot take the writes" (not a bug in curate).
_OUTPUT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR, errno.EISDIR, errno.EFBIG}


def _output_errors_are_user_errors(run: Callable[..., "RunResult"]) -> Callable[..., "RunResult"]:
    """A full disk or an unwritable path anywhere in a run (parts, manifest, finalize) becomes
    one OutputError line (exit 2). Every write is atomic (temp name, then rename) and the
    manifest only records finished stages, so the state left behind is resumable as is."""

    @functools.wraps(run)
    def wrapper(*args: Any, **kwargs: Any) -> "RunResult":
        try:
            return run(*args, **kwargs)
        except OutputError as exc:
            _collect_failed_writers(exc)
            raise
        except OSError as exc:
            if exc.errno not in _OUTPUT_ERRNOS:
                raise
            _collect_failed_writers(exc)
            where = exc.filename or (args[2] if len(args) > 2 else kwargs.get("output"))
            raise OutputError(
                f"cannot write ({os.strerror(exc.errno)})",
                path=where,
                fix="free disk space or make the output writable, then rerun with --resume (finished stages are kept)",
            ) from None

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


@_output_errors_are_user_errors
def run_pipeline(spec: PipelineSpec, source: str | os.PathLike, output: str | os.PathLike, options: RunOptions = RunOptions()) -> RunResult:
    out = Path(output)
    config = json.loads(json.dumps(spec.resolved()))
    inputs = InputSet.scan(source, spec.columns)
    input_record = [f.to_json() for f in inputs.files]
    manifest = _prepare_output(out, config, input_record, options)
    if manifest is None:
        manifest = _new_manifest(config, input_record, inputs, spec)
        write_manifest(out, manifest)
    if manifest.get("finalized"):
        return _result(out, manifest)

    stages_root = out / STAGES_DIR
    input_entry = manifest["stages"][0]
    if input_entry["status"] != "done":
        check_input = _run_input_check if options.executor is None else options.executor.check_input
        check_input(inputs, spec, stages_root, input_entry, options.progress)
        write_manifest(out, manifest)
        _notify(options, INPUT_STAGE)
    current: InputSource | PartSource = InputSource(inputs, spec.batch_size, spec.drop_null_text, input_entry["rows_removed"])

    for position, stage_spec in enumerate(spec.stages, start=1):
        entry = manifest["stages"][position]
        stage_dir = stages_root / _stage_dir_name(position, stage_spec.name)
        if entry["status"] == "done":
            current = PartSource(stage_dir / "kept", spec.batch_size)
            continue
        shutil.rmtree(stage_dir, ignore_errors=True)
        ctx = StageContext(
            name=stage_spec.name,
            columns=spec.columns,
            seed=spec.seed,
            batch_size=spec.batch_size,
            workers=options.workers,
            work_dir=stage_dir / "work",
            output_dir=out,
            progress=options.progress,
            report=dict(spec.report or {}),
        )
        stage = stage_class(stage_spec.kind).from_options(stage_spec.options, where=spec.source)
        started = time.perf_counter()
        run_stage = run_stage_local if options.executor is None else options.executor.run_stage
        kept_rows, removed_count = run_stage(stage, current, ctx, stage_dir)
        entry.update(
            status="done",
            rows_in=current.num_rows,
            rows_out=kept_rows,
            rows_removed=removed_count,
            seconds=round(time.perf_counter() - started, 3),
            info=ctx.info,
        )
        write_manifest(out, manifest)
        shutil.rmtree(ctx.work_dir, ignore_errors=True)
        if isinstance(current, PartSource):
            shutil.rmtree(current.directory, ignore_errors=True)
        current = PartSource(stage_dir / "kept", spec.batch_size)
        _notify(options, stage_spec.name)

    _finalize(out, spec, manifest, inputs, current, options.executor)
    if spec.report is not None:  # the budget-aware report reads the finished output
        from curate.report import build_pipeline_report

        build_pipeline_report(out, progress=options.progress)
    return _result(out, manifest)


def run_stage_local(stage: Stage, source: InputSource | PartSource, ctx: StageContext, stage_dir: Path) -> tuple[int, int]:
    """fit (if the stage needs it), then stream transform into the stage's kept and removed parts."""
    ctx.work_dir.mkdir(parents=True, exist_ok=True)
    if stage.needs_fit:
        stage.fit(source, ctx)
    kept_writer = PartWriter(stage_dir / "kept", schema=None)
    removed_writer = PartWriter(stage_dir / "removed", schema=LEDGER_SCHEMA)
    removed_total = 0
    with ctx.progress.task(f"{ctx.name}: writing", total=source.num_rows) as bar:
        for batch in source.batches():
            kept, removed = stage.transform(batch, ctx)
            kept_writer.write(kept)
            removed_writer.write(removed)
            removed_total += removed.num_rows
            bar.advance(batch.num_rows)
    if kept_writer.schema is None:
        kept_writer.schema = source.schema
    stage.finish(ctx)
    kept_writer.close()
    removed_writer.close()
    return kept_writer.rows_written, removed_total


def _run_input_check(inputs: InputSet, spec: PipelineSpec, stages_root: Path, entry: dict, progress: Progress) -> None:
    """One pass over ids and texts: null texts (error or ledger), null and duplicate ids."""
    check_dir = stages_root / _stage_dir_name(0, INPUT_STAGE)
    shutil.rmtree(check_dir, ignore_errors=True)
    started = time.perf_counter()
    ids_seen = FirstSeenIndex()
    id_col, text_col = spec.columns.id, spec.columns.text
    null_text = 0
    writer = PartWriter(check_dir / "removed", schema=LEDGER_SCHEMA)
    with progress.task("input: checking", total=inputs.num_rows) as bar:
        for index, file in enumerate(inputs.files):
            for batch in inputs.file_batches(index, spec.batch_size, [text_col]):
                ids = batch.column(id_col)
                if ids.null_count:
                    row = int(row_ordinals(batch)[np.asarray(pc.is_null(ids))][0]) - file.row_offset
                    raise InputError(f"null id at row {row}", path=file.path, fix=f"give every row an id in '{id_col}', or drop the column to get '<file stem>:<row>' ids")
                str_ids = ids_as_strings(ids)
                rows = row_ordinals(batch)
                first = ids_seen.add(hash128(str_ids), rows)
                repeated = first != rows
                if repeated.any():
                    bad = str_ids[int(np.nonzero(repeated)[0][0])].as_py()
                    raise InputError(f"duplicate id {bad!r}", path=file.path, fix=f"make '{id_col}' unique across all shards, or pick another --id-column")
                texts = batch.column(text_col)
                _check_utf8(texts, int(rows[0]) - file.row_offset if len(rows) else 0, file.path)
                if texts.null_count:
                    nulls = pc.is_null(texts)
                    if not spec.drop_null_text:
                        row = int(rows[np.asarray(nulls)][0]) - file.row_offset
                        raise InputError(
                            f"null text at row {row} ({texts.null_count} in this batch)",
                            path=file.path,
                            fix="fill or drop null texts, or pass --drop-null-text to send them to the ledger",
                        )
                    writer.write(removed_rows(str_ids.filter(nulls), INPUT_STAGE, "null_text"))
                    null_text += texts.null_count
                bar.advance(batch.num_rows)
    writer.close()
    entry.update(status="done", rows_in=inputs.num_rows, rows_out=inputs.num_rows - null_text, rows_removed=null_text, seconds=round(time.perf_counter() - started, 3), info={})


def _check_utf8(texts: pa.Array, first_row: int, path: str) -> None:
    """Parquet readers do not validate UTF-8; normalizers and tokenizers downstream need it."""
    try:
        texts.validate(full=True)
    except pa.ArrowInvalid:
        values = texts.cast(pa.large_binary()).to_pylist()  # error path only: find the row to name
        bad = next(i for i, v in enumerate(values) if v is not None and not _decodes(v))
        raise InputError(
            f"text at row {first_row + bad} is not valid UTF-8",
            path=path,
            fix="re-encode the text column as UTF-8 (e.g. decode with errors='replace') before curating",
        ) from None


def _decodes(value: bytes) -> bool:
    try:
        value.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _stage_dir_name(position: int, name: str) -> str:
    return f"{position:02d}-{name}"


def _notify(options: RunOptions, name: str) -> None:
    if options.on_stage_done is not None:
        options.on_stage_done(name)


def _new_manifest(config: dict, input_record: list[dict], inputs: InputSet, spec: PipelineSpec) -> dict:
    stages = [{"name": INPUT_STAGE, "kind": INPUT_STAGE, "status": "pending"}]
    stages += [{"name": s.name, "kind": s.kind, "status": "pending"} for s in spec.stages]
    return {
        "curate_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "input": {"files": input_record, "rows": inputs.num_rows, "synthesized_ids": inputs.synthesized_ids, "schema": _schema_record(inputs.schema)},
        "config": config,
        "seed": spec.seed,
        "packages": package_versions(),
        "stages": stages,
        "finalized": False,
    }


def _schema_record(schema: pa.Schema) -> str:
    return schema.serialize().to_pybytes().hex()


def schema_from_record(record: str) -> pa.Schema:
    return pa.ipc.read_schema(pa.py_buffer(bytes.fromhex(record)))


def _prepare_output(out: Path, config: dict, input_record: list[dict], options: RunOptions) -> dict | None:
    """The manifest to resume from, or None for a fresh run (the directory is then empty)."""
    existing = read_manifest(out) if out.exists() else None
    non_empty = out.exists() and any(out.iterdir())
    if options.resume and existing is None and non_empty and _only_start_debris(out):
        non_empty = False  # killed before the first manifest landed: nothing to keep, start fresh
    if options.resume and existing is not None:
        if _fingerprints(existing["input"]["files"]) != _fingerprints(input_record):
            raise UsageError("--resume: the input files changed since this output was started", path=out, fix="rerun with --overwrite")
        if existing["config"] != config:
            raise UsageError("--resume: the pipeline config differs from the one this output was started with", path=out, fix="rerun with --overwrite, or use the original pipeline")
        return existing
    if non_empty:
        if not options.overwrite and not options.resume:
            raise OutputError("output directory is not empty", path=out, fix="pass --resume to continue, --overwrite to start over, or another -o")
        if existing is None and options.overwrite:
            raise OutputError("refusing to overwrite a directory that is not a curate output (no manifest.json)", path=out, fix="choose an empty or new -o")
        if existing is None and options.resume:
            raise OutputError("--resume: no manifest.json here", path=out, fix="start without --resume")
        _clear_directory(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".curate-write-probe"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise OutputError(f"cannot write the output directory ({exc.strerror})", path=out, fix="choose a writable -o") from None
    return None


def _only_start_debris(out: Path) -> bool:
    """True when OUT holds nothing but what a run writes before its first manifest: the write
    probe, a temp manifest, an empty _stages tree (all curate names, so nothing of the user's)."""
    for child in out.iterdir():
        if child.name in (".curate-write-probe", ".manifest.json.tmp"):
            continue
        if child.name == STAGES_DIR and child.is_dir() and not any(p.is_file() for p in child.rglob("*")):
            continue
        return False
    return True


def _clear_directory(out: Path) -> None:
    for child in out.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


def _fingerprints(files: list[dict]) -> list[tuple[str, str]]:
    return [(f["path"], f["fingerprint"]) for f in files]


def _finalize(out: Path, spec: PipelineSpec, manifest: dict, inputs: InputSet, last: InputSource | PartSource, executor: StageExecutor | None = None) -> None:
    """Publish kept/ and removed/ from the stage directories; safe to redo after a kill."""
    stages_root = out / STAGES_DIR
    kept_final = out / "kept"
    if not kept_final.exists():
        if isinstance(last, InputSource):  # a pipeline with no stages: the input, as read
            tmp = out / ".kept.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            with PartWriter(tmp) as writer:
                writer.schema = last.schema
                writer.write_all(last.batches())
            os.replace(tmp, kept_final)
        else:
            os.replace(last.directory, kept_final)
    _strip_row_column(kept_final, executor)
    removed_final = out / "removed"
    if not removed_final.exists():
        tmp = out / ".removed.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        index = 0
        stage_dirs = [_stage_dir_name(0, INPUT_STAGE)] + [_stage_dir_name(i, s.name) for i, s in enumerate(spec.stages, start=1)]
        for name in stage_dirs:
            for part in list_parts(stages_root / name / "removed"):
                if pq.read_metadata(part).num_rows == 0:
                    continue
                _link_or_copy(part, tmp / f"part-{index:05d}.parquet")
                index += 1
        if index == 0:
            PartWriter(tmp, schema=LEDGER_SCHEMA).close()
        os.replace(tmp, removed_final)
    shutil.rmtree(stages_root, ignore_errors=True)
    manifest["finalized"] = True
    manifest["totals"] = {"input_rows": inputs.num_rows, "kept_rows": count_part_rows(kept_final), "removed_rows": count_part_rows(removed_final)}
    write_manifest(out, manifest)


def _strip_row_column(kept_dir: Path, executor: StageExecutor | None = None) -> None:
    """Drop the internal ordinal from published parts (rewritten atomically, part by part,
    on the executor's workers when there is one)."""
    parts = list_parts(kept_dir)
    if executor is None:
        for part in parts:
            _strip_part(part)
    else:
        executor.map(_strip_part, parts)


def _strip_part(part: Path) -> None:
    schema = pq.read_schema(part)
    if ROW_COLUMN not in schema.names:
        return
    tmp = part.with_name(f".{part.name}.tmp")
    source = pq.ParquetFile(part)
    writer = pq.ParquetWriter(tmp, schema.remove(schema.get_field_index(ROW_COLUMN)), compression="zstd")
    try:
        for batch in source.iter_batches(batch_size=DEFAULT_BATCH_SIZE):
            writer.write_batch(batch.drop_columns([ROW_COLUMN]))
        writer.close()
    except BaseException:
        close_quietly(writer)  # a full disk must not leave a writer that retries at exit
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, part)


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _result(out: Path, manifest: dict) -> RunResult:
    totals = manifest.get("totals", {})
    return RunResult(out, manifest, totals.get("kept_rows", 0), totals.get("removed_rows", 0))
