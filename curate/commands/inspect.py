"""Read-only views of a finished output directory: conservation check and per-stage counts."""

from __future__ import annotations

from pathlib import Path

from curate.errors import UsageError
from curate.io import storage
from curate.io.inputs import ColumnSpec, InputFile
from curate.io.storage import StorageOptions
from curate.output.ledger import VerifyReport, count_problems, ledger_rows_by_stage, verify_conservation
from curate.output.local import schema_from_record
from curate.output.read import load_finished_manifest


def verify_output(out: Path, options: StorageOptions = ()) -> VerifyReport:
    """`options`: fsspec options for a URL input (else credentials come from the environment)."""
    manifest = load_finished_manifest(out)
    files = [InputFile(**f) for f in manifest["input"]["files"]]
    missing = [f.path for f in files if not storage.exists(f.path, options)]
    if missing:
        raise UsageError(
            "input file is gone, cannot verify against it",
            path=missing[0],
            fix="run verify where the input is still present",
        )
    config = manifest["config"]["input"]
    columns = ColumnSpec(text=config["text_column"], id=config["id_column"], storage_options=options)
    report = verify_conservation(
        files, columns, schema_from_record(manifest["input"]["schema"]), out / "kept", out / "removed"
    )
    totals = manifest.get("totals", {})
    if totals and (totals.get("kept_rows"), totals.get("removed_rows")) != (report.kept_rows, report.removed_rows):
        report.problems.append(
            f"manifest totals {totals} differ from the files (kept {report.kept_rows}, removed {report.removed_rows})"
        )
    # The same count check finalize ran before it marked the output finished.
    report.problems += count_problems(
        manifest["stages"],
        report.input_rows,
        report.kept_rows,
        report.removed_rows,
        ledger_rows_by_stage(out / "removed"),
    )
    return report
