"""Budget-aware mix report: HTML + PNG plots + JSON, from a fitted law or a pipeline output."""

from __future__ import annotations


def build_law_report(law, budgets, directory, plan_options=None):
    """See curate.report.build.build_law_report (imported lazily: matplotlib is slow to load)."""
    from curate.report.build import build_law_report as build

    return build(law, budgets, directory, plan_options)


def build_pipeline_report(out, overrides=None, rerun=False, progress=None):
    """See curate.report.build.build_pipeline_report."""
    from curate.engine.progress import QUIET
    from curate.report.build import build_pipeline_report as build

    return build(out, overrides=overrides, rerun=rerun, progress=progress or QUIET)
