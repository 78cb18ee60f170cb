"""The library entry point: load a pipeline file and run it.

    from curate.pipeline import load_pipeline, run_pipeline, RunOptions
    run_pipeline(load_pipeline("quickstart"), "shards/", "out/", RunOptions(jobs=2))

The pieces live in modules of one job each: `curate.engine.spec` (the TOML spec), `curate.engine.runner`
(the one runner), `curate.engine.units` (work units), `curate.engine.executors` (local processes or Dask),
`curate.engine.tasks` (what a worker runs) and `curate.output.local` (the output directory).
"""

from curate.engine.runner import RunOptions, RunResult, run_pipeline, run_stage
from curate.engine.spec import PipelineSpec, StageSpec, load_pipeline, parse_pipeline

__all__ = ["PipelineSpec", "RunOptions", "RunResult", "StageSpec", "load_pipeline", "parse_pipeline", "run_pipeline", "run_stage"]
