"""The acceptance check every fitted stage shares: the same output for `--jobs 1`, `--jobs 2`
with small work units, and Dask LocalClusters of 1 and 3 workers.

"The same" is row for row: kept rows with every added column, the ledger (with
`duplicate_of` and `score`), the embeddings store, and every side output (`*.npy`, `*.json`
beside the tables). The Dask clusters are started once per test session and shared."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from curate.commands.inspect import verify_output
from curate.io.parts import read_parts
from curate.pipeline import RunOptions, parse_pipeline, run_pipeline

_CLUSTERS: dict[int, object] = {}
# Dedup stages with a representative rule other than "first" (curate.algorithms.representative):
# the rule's pick must be the same row on every executor (tests/test_representative_stages.py).
REPRESENTATIVE_CASES: dict[str, dict] = {
    "exact": {"kind": "exact", "representative": "max:q"},
    "minhash": {"kind": "minhash", "representative": "longest"},
}
SIDE_OUTPUTS = (
    "prototypes/centroids.npy",
    "seta_schedule.json",
    "decontamination/decontaminate/summary.json",
    "decontamination/decontaminate/matches.json",
)


@pytest.fixture(scope="session")
def dask_executors():
    """DaskExecutor.local(1) and DaskExecutor.local(3), shared by every module that uses them."""
    pytest.importorskip("distributed")
    from curate.engine.executors import DaskExecutor

    for workers in (1, 3):
        if workers not in _CLUSTERS:
            _CLUSTERS[workers] = DaskExecutor.local(workers)
    yield dict(_CLUSTERS)
    while _CLUSTERS:
        _CLUSTERS.popitem()[1].close()


def run_on_every_executor(
    tmp_path: Path, stages: list[dict], source: Path, executors: dict, *, unit_rows: int = 150, **top
) -> dict[str, Path]:
    """The pipeline's output directory for each executor and unit size."""
    spec = parse_pipeline({"stage": stages, **top}, "test")
    runs = {
        "jobs=1": RunOptions(jobs=1),
        f"jobs=2, unit_rows={unit_rows}": RunOptions(jobs=2, unit_rows=unit_rows),
        f"dask 1 worker, unit_rows={2 * unit_rows}": RunOptions(executor=executors[1], unit_rows=2 * unit_rows),
        f"dask 3 workers, unit_rows={unit_rows}": RunOptions(executor=executors[3], unit_rows=unit_rows),
    }
    outputs = {}
    for name, options in runs.items():
        out = tmp_path / name.replace(" ", "_").replace(",", "").replace("=", "")
        run_pipeline(spec, source, out, options)
        assert verify_output(out).ok, name
        outputs[name] = out
    return outputs


def assert_same_everywhere(outputs: dict[str, Path]) -> dict:
    """Every output equals the first (the serial run); returns the serial run's manifest."""
    (first_name, first), *others = outputs.items()
    manifest = json.loads((first / "manifest.json").read_text())
    units = [s["info"].get("work_units") for s in manifest["stages"][1:]]
    splits = set()
    for name, out in others:
        for table in ("kept", "removed", "embeddings"):
            a, b = read_parts(first / table), read_parts(out / table)
            assert a.schema.equals(b.schema), f"{table}/ schema differs: {first_name} vs {name}"
            assert a.equals(b), f"{table}/ differs: {first_name} vs {name}"
        for side in SIDE_OUTPUTS:
            if (first / side).exists() or (out / side).exists():
                if side.endswith(".npy"):
                    assert np.array_equal(np.load(first / side), np.load(out / side)), (
                        f"{side}: {first_name} vs {name}"
                    )
                else:
                    assert (first / side).read_bytes() == (out / side).read_bytes(), f"{side}: {first_name} vs {name}"
        other = json.loads((out / "manifest.json").read_text())
        counts = lambda m: [(s["name"], s["rows_in"], s["rows_out"], s["rows_removed"]) for s in m["stages"]]
        assert counts(other) == counts(manifest), f"stage counts: {first_name} vs {name}"
        splits.add(tuple(s["info"].get("work_units") for s in other["stages"][1:]))
    assert splits - {tuple(units)}, "no run cut the input into other work units than the serial run"
    return manifest
