"""`curate export`: the kept rows of a finished output as JSON Lines, for trainers that read
JSONL. kept/ stays the record (Parquet); the export is a copy, one file per kept part (or one
file in all), each written under a temp name and renamed when complete."""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from curate.errors import OutputError, UsageError
from curate.io.atomic import atomic_path
from curate.io.formats import JSONL_SUFFIXES
from curate.io.inputs import DEFAULT_BATCH_SIZE
from curate.io.parts import list_parts

COMPRESSIONS = {"none": (None, ".jsonl"), "gzip": ("gzip", ".jsonl.gz"), "zstd": ("zstd", ".jsonl.zst")}
DEFAULT_DIRECTORY = "kept-jsonl"
_EXPORTED_PART = re.compile(r"^part-\d{5,}\.jsonl(\.gz|\.zst)?$")


@dataclass
class ExportResult:
    target: Path
    files: list[Path]
    rows: int


def export_jsonl(out: Path, target: Path | None = None, compression: str | None = None) -> ExportResult:
    """Write OUT/kept as JSON Lines. `target` ending in .jsonl/.jsonl.gz/.jsonl.zst is one file
    (compression from its name); anything else is a directory of `part-NNNNN.jsonl[.gz|.zst]`
    beside the kept parts (default OUT/kept-jsonl, no compression)."""
    from curate.output.read import load_finished_manifest

    out = Path(out)
    manifest = load_finished_manifest(out)
    parts = list_parts(out / "kept")
    single = target is not None and any(target.name.lower().endswith(s) for s in JSONL_SUFFIXES)
    if single:
        named = _compression_of_name(target)
        if compression is not None and compression != named:
            raise UsageError(
                f"--compression {compression} but the file name says {named}",
                path=target,
                fix=f"name the file *{COMPRESSIONS[compression][1]} or drop --compression",
            )
        compression = named
    compression = compression or "none"
    if compression not in COMPRESSIONS:
        raise UsageError(f"unknown --compression {compression!r}", fix="use gzip, zstd or none")
    codec, suffix = COMPRESSIONS[compression]
    if single:
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(
                f"cannot create the directory ({exc.strerror})", path=target.parent, fix="choose a writable -o"
            ) from None
        rows = _write_atomically(target, parts, codec)
        files = [target]
        directory = target
    else:
        directory = target if target is not None else out / DEFAULT_DIRECTORY
        _prepare_directory(directory)
        files, rows = [], 0
        for part in parts:
            path = directory / (part.name[: -len(".parquet")] + suffix)
            rows += _write_atomically(path, [part], codec)
            files.append(path)
        for stale in directory.iterdir():  # parts of an earlier, larger export
            if _EXPORTED_PART.match(stale.name) and stale not in files:
                stale.unlink()
    expected = manifest.get("totals", {}).get("kept_rows")
    if expected is not None and rows != expected:
        raise OutputError(
            f"exported {rows} rows but the manifest lists {expected} kept rows",
            path=out,
            fix="check the output with 'curate verify', then export again",
        )
    return ExportResult(directory, files, rows)


def _compression_of_name(path: Path) -> str:
    name = path.name.lower()
    return "gzip" if name.endswith(".gz") else "zstd" if name.endswith(".zst") else "none"


def _prepare_directory(directory: Path) -> None:
    """An export directory holds exports only: refuse to mix them with someone else's files."""
    if directory.exists():
        if not directory.is_dir():
            raise OutputError(
                "exists and is not a directory",
                path=directory,
                fix="name a directory, or a file ending in .jsonl, .jsonl.gz or .jsonl.zst",
            )
        others = sorted(
            p.name for p in directory.iterdir() if not _EXPORTED_PART.match(p.name) and not p.name.startswith(".")
        )
        if others:
            raise OutputError(
                f"the export directory holds other files ({', '.join(others[:3])})",
                path=directory,
                fix="choose an empty or new -o",
            )
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(
            f"cannot create the export directory ({exc.strerror})", path=directory, fix="choose a writable -o"
        ) from None


def _write_atomically(path: Path, parts: list[Path], codec: str | None) -> int:
    rows = 0
    try:
        with atomic_path(path) as tmp, pa.output_stream(str(tmp), compression=codec) as sink:
            for part in parts:
                for batch in pq.ParquetFile(part).iter_batches(batch_size=DEFAULT_BATCH_SIZE):
                    sink.write(ndjson_bytes(batch))
                    rows += batch.num_rows
    except OSError as exc:
        raise OutputError(
            f"cannot write ({exc.strerror or exc})", path=path, fix="free disk space or choose another -o"
        ) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return rows


def ndjson_bytes(batch: pa.RecordBatch) -> bytes:
    """One JSON object per row, UTF-8 unescaped. polars' writer (Rust) rather than a row loop;
    JSON has no NaN or infinity, so those floats become null."""
    buffer = io.BytesIO()
    pl.from_arrow(batch).write_ndjson(buffer)
    return buffer.getvalue()
