"""Every pipeline we ship parses with the stages we ship (a renamed option breaks this test)."""

from __future__ import annotations

from pathlib import Path

import pytest

from curate.pipeline import load_pipeline

PIPELINES = sorted((Path(__file__).resolve().parents[1] / "curate" / "pipelines").glob("*.toml"))


@pytest.mark.parametrize("path", PIPELINES, ids=[p.stem for p in PIPELINES])
def test_bundled_pipeline_parses(path):
    spec = load_pipeline(path)
    assert spec.stages, f"{path.name} has no stages"
    assert spec.stages[0].kind == "exact"


def test_quickstart_covers_the_product():
    spec = load_pipeline(PIPELINES[[p.stem for p in PIPELINES].index("quickstart")])
    assert [s.kind for s in spec.stages] == ["exact", "minhash", "embed", "prototypes", "pools"]
    assert spec.report is not None
