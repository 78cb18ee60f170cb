"""The library entry point: load a pipeline file and run it.

    from curate.pipeline import load_pipeline, run_pipeline, RunOptions
    run_pipeline(load_pipeline("pipelines/quickstart.toml"), "shards/", "out/", RunOptions(jobs=2))

The pieces live in modules of one job each: `curate.spec` (the TOML spec), `curate.runner`
(the one runner), `curate.units` (work units), `curate.executors` (local processes or Dask),
`curate.tasks` (what a worker runs) and `curate.outputs` (the output directory).
"""

from curate.runner import RunOptions, RunResult, run_pipeline, run_stage
from curate.spec import PipelineSpec, StageSpec, load_pipeline, parse_pipeline

__all__ = ["PipelineSpec", "RunOptions", "RunResult", "StageSpec", "load_pipeline", "parse_pipeline", "run_pipeline", "run_stage"]
