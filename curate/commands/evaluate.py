"""`curate evaluate OUT`: random baselines for the run's pools and for each score column, written
into OUT's report (the computations live in `curate.scaling.baseline`)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from curate.engine.progress import QUIET, Progress
from curate.scaling.baseline import evaluate_score


def evaluate_output(
    out: str | Path,
    label_column: str,
    scores: Sequence[str] = (),
    *,
    direction: str = "auto",
    budgets: Sequence[float] | None = None,
    seeds: int | None = None,
    rerun: bool = False,
    progress: Progress = QUIET,
) -> Path:
    """`curate evaluate`: random baselines for the run's pools and for each score column, then the
    report (report.json + report.html) rebuilt with them. Returns the report path."""
    from curate.errors import UsageError
    from curate.output.read import load_finished_manifest, prototypes_keep, read_kept
    from curate.report.build import build_pipeline_report
    from curate.report.config import parse_report_table

    out = Path(out)
    manifest = load_finished_manifest(out)
    overrides: dict = {
        "label_column": label_column,
        "law": None,
        "runs": None,
    }  # evidence comes from proxy runs, not a given law
    if budgets:
        overrides["budgets"] = list(budgets)
    if seeds:
        overrides["seeds"] = seeds
    settings = parse_report_table(
        {**(manifest.get("config", {}).get("report") or {}), **overrides}, str(out / "manifest.json")
    )
    kept = read_kept(out)
    if label_column not in kept.columns:
        raise UsageError(
            f"no label column {label_column!r} in kept/", path=out / "kept", fix=f"use one of {kept.columns}"
        )
    for column in scores:
        if column not in kept.columns:
            raise UsageError(
                f"no score column {column!r} in kept/", path=out / "kept", fix=f"use one of {kept.columns}"
            )
        if not kept.schema[column].is_numeric():
            raise UsageError(
                f"score column {column!r} is {kept.schema[column]}, not numeric",
                path=out / "kept",
                fix="pass a numeric column",
            )
    text_column = manifest["config"]["input"]["text_column"]
    for column in scores:
        evaluate_score(
            out,
            kept,
            column,
            settings,
            text_column,
            int(manifest.get("seed", 0)),
            direction,
            prototypes_keep(manifest),
            rerun,
            progress,
        )
    return build_pipeline_report(out, overrides=overrides, rerun=rerun, progress=progress)
