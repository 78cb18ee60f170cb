"""Readers of a finished output: its manifest once it says the run finished, the kept rows,
per-stage counts and removal reasons (what `inspect`, `export`, `evaluate` and the report read)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import polars as pl
import pyarrow.parquet as pq

from curate.errors import UsageError
from curate.io.parts import list_parts
from curate.output.manifest import read_manifest


def load_finished_manifest(out: Path) -> dict:
    """The manifest of a finished run; exit 2 naming the directory otherwise."""
    manifest = read_manifest(Path(out))
    if manifest is None:
        raise UsageError(
            "no manifest.json: not a curate output directory", path=out, fix="pass the -o directory of a curate run"
        )
    if not manifest.get("finalized"):
        raise UsageError("this run has not finished", path=out, fix="finish it with 'curate run ... --resume'")
    return manifest


def read_kept(out: Path, columns: Sequence[str] | None = None) -> pl.DataFrame:
    parts = list_parts(out / "kept")
    if not parts:
        return pl.DataFrame()
    return pl.concat(
        [pl.read_parquet(p, columns=list(columns) if columns else None) for p in parts], how="vertical_relaxed"
    )


def prototypes_keep(manifest: dict) -> str | None:
    """The keep rule the run's prototypes stage used (for the direction of proto_distance)."""
    keep = None
    for entry in manifest.get("stages", []):
        if entry.get("kind") == "prototypes" and entry.get("status") == "done":
            keep = (entry.get("info") or {}).get("keep", keep)
    return keep


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
                entry["name"],
                entry["kind"],
                entry.get("rows_in", 0),
                entry.get("rows_out", 0),
                entry.get("rows_removed", 0),
                entry.get("seconds", 0.0),
                reasons.get(entry["name"], {}),
            )
        )
    return summaries


@dataclass
class EvalSetSummary:
    """What one decontaminate stage found of one evaluation set (its manifest info)."""

    stage: str
    name: str
    items: int
    items_found: int
    rows_removed: int


def decontamination_summaries(manifest: dict) -> list[EvalSetSummary]:
    """Per decontaminate stage and evaluation set: items, items found in the corpus, rows removed."""
    found = []
    for entry in manifest.get("stages", []):
        if entry.get("kind") != "decontaminate" or entry.get("status") != "done":
            continue
        for name, counts in ((entry.get("info") or {}).get("eval_sets") or {}).items():
            found.append(
                EvalSetSummary(entry["name"], name, counts["items"], counts["items_found"], counts["rows_removed"])
            )
    return found


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
