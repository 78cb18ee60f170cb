"""Readers of a finished output: its manifest, once it says the run finished."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import polars as pl

from curate.errors import UsageError
from curate.io.parts import list_parts
from curate.output.manifest import read_manifest


def load_finished_manifest(out: Path) -> dict:
    """The manifest of a finished run; exit 2 naming the directory otherwise."""
    manifest = read_manifest(Path(out))
    if manifest is None:
        raise UsageError("no manifest.json: not a curate output directory", path=out, fix="pass the -o directory of a curate run")
    if not manifest.get("finalized"):
        raise UsageError("this run has not finished", path=out, fix="finish it with 'curate run ... --resume'")
    return manifest


def read_kept(out: Path, columns: Sequence[str] | None = None) -> pl.DataFrame:
    parts = list_parts(out / "kept")
    if not parts:
        return pl.DataFrame()
    return pl.concat([pl.read_parquet(p, columns=list(columns) if columns else None) for p in parts], how="vertical_relaxed")


def prototypes_keep(manifest: dict) -> str | None:
    """The keep rule the run's prototypes stage used (for the direction of proto_distance)."""
    keep = None
    for entry in manifest.get("stages", []):
        if entry.get("kind") == "prototypes" and entry.get("status") == "done":
            keep = (entry.get("info") or {}).get("keep", keep)
    return keep
