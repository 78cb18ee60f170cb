"""Read-only views of a finished output directory: conservation check and per-stage counts."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq

from curate.io import storage
from curate.errors import UsageError
from curate.output.ledger import VerifyReport, verify_conservation
from curate.output.read import load_finished_manifest
from curate.output.local import schema_from_record
from curate.io.inputs import ColumnSpec, InputFile
from curate.io.parts import list_parts
from curate.io.storage import StorageOptions


def verify_output(out: Path, options: StorageOptions = ()) -> VerifyReport:
    """`options`: fsspec options for a URL input (else credentials come from the environment)."""
    manifest = load_finished_manifest(out)
    files = [InputFile(**f) for f in manifest["input"]["files"]]
    missing = [f.path for f in files if not storage.exists(f.path, options)]
    if missing:
        raise UsageError("input file is gone, cannot verify against it", path=missing[0], fix="run verify where the input is still present")
    config = manifest["config"]["input"]
    columns = ColumnSpec(text=config["text_column"], id=config["id_column"], storage_options=options)
    report = verify_conservation(files, columns, schema_from_record(manifest["input"]["schema"]), out / "kept", out / "removed")
    totals = manifest.get("totals", {})
    if totals and (totals.get("kept_rows"), totals.get("removed_rows")) != (report.kept_rows, report.removed_rows):
        report.problems.append(f"manifest totals {totals} differ from the files (kept {report.kept_rows}, removed {report.removed_rows})")
    return report


@dataclass
class StageSummary:
    name: str
    kind: str
    rows_in: int
    rows_out: int
    rows_removed: int
    seconds: float
    reasons: dict[str, int]


def stage_summaries(out: Path) -> list[StageSummary]:
    manifest = load_finished_manifest(out)
    reasons = removal_reasons(out)
    summaries = []
    for entry in manifest["stages"]:
        summaries.append(
            StageSummary(
                entry["name"], entry["kind"], entry.get("rows_in", 0), entry.get("rows_out", 0), entry.get("rows_removed", 0),
                entry.get("seconds", 0.0), reasons.get(entry["name"], {}),
            )
        )
    return summaries


def removal_reasons(out: Path) -> dict[str, dict[str, int]]:
    parts = list_parts(out / "removed")
    if not parts:
        return {}
    frame = pl.concat([pl.read_parquet(p, columns=["stage", "reason"]) for p in parts])
    counts = frame.group_by(["stage", "reason"]).len().sort(["stage", "reason"])
    result: dict[str, dict[str, int]] = {}
    for stage, reason, n in counts.iter_rows():
        result.setdefault(stage, {})[reason] = n
    return result


def directory_bytes(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file()) if directory.exists() else 0


def pool_counts(out: Path) -> dict[int, int] | None:
    parts = list_parts(out / "kept")
    if not parts or "pool" not in pq.read_schema(parts[0]).names:
        return None
    frame = pl.concat([pl.read_parquet(p, columns=["pool"]) for p in parts])
    return {int(k): int(v) for k, v in frame.group_by("pool").len().sort("pool").iter_rows()}
