"""The library entry point: load a pipeline file and run it.

    from curate.pipeline import load_pipeline, run_pipeline, RunOptions
    run_pipeline(load_pipeline("quickstart"), "shards/", "out/", RunOptions(jobs=2))

The pieces live in packages of one job each: `curate.engine` (the TOML spec, the one runner,
work units, executors, tasks), `curate.io` (bytes in and out), `curate.output` (the output
directory), `curate.stages` and `curate.algorithms`; the report comes from `curate.report`.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

from curate.engine import runner
from curate.engine.progress import Progress
from curate.engine.runner import RunOptions, RunResult, run_stage
from curate.engine.spec import PipelineSpec, StageSpec, load_pipeline, parse_pipeline

__all__ = [
    "PipelineSpec",
    "RunOptions",
    "RunResult",
    "StageSpec",
    "load_pipeline",
    "parse_pipeline",
    "run_pipeline",
    "run_stage",
]


def build_report(out: Path, progress: Progress) -> Path:
    """The budget-aware report of a finished output (matplotlib is imported only here)."""
    from curate.report import build_pipeline_report

    return build_pipeline_report(out, progress=progress)


def run_pipeline(
    spec: PipelineSpec, source: str | os.PathLike, output: str | os.PathLike, options: RunOptions = RunOptions()
) -> RunResult:
    """Run the pipeline over the input into `output` (a directory or an object-store URL); a
    pipeline with a `[report]` table ends with its report."""
    if options.build_report is None:
        options = replace(options, build_report=build_report)
    return runner.run_pipeline(spec, source, output, options)
