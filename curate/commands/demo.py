"""`curate demo`: the quickstart pipeline on the bundled corpus, safe to run again."""

from __future__ import annotations

from dataclasses import replace
from importlib import resources
from pathlib import Path

from curate.engine.progress import Progress
from curate.errors import OutputError
from curate.output.manifest import read_manifest
from curate.pipeline import RunOptions, RunResult, load_pipeline, run_pipeline

# The report the demo ends with when the pipeline file has none: proxy trainings per pool on
# the corpus's `section` labels, a fitted law, and the best mix for each budget.
DEMO_REPORT = {"label_column": "section", "budgets": [1e3, 3e3, 1e4, 3e4, 1e5, 1e6]}


def demo_corpus() -> Path:
    return Path(str(resources.files("curate.data") / "demo.parquet"))


def quickstart_pipeline() -> Path:
    return Path(str(resources.files("curate.pipelines") / "quickstart.toml"))


def run_demo(output: Path, progress: Progress) -> RunResult:
    output = Path(output)
    if output.exists() and any(output.iterdir()) and read_manifest(output) is None:
        raise OutputError("exists and is not a curate output", path=output, fix="pass another -o for the demo")
    spec = load_pipeline(quickstart_pipeline())
    if spec.report is None:  # the demo always ends with the budget-aware report
        spec = replace(spec, report=dict(DEMO_REPORT))
    return run_pipeline(spec, demo_corpus(), output, RunOptions(overwrite=True, progress=progress))
