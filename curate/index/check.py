"""Before a run with earlier outputs starts: each has a sound index for every dedup stage."""

from __future__ import annotations

from curate.errors import UsageError
from curate.index import exact, minhash, semantic
from curate.index.store import check_settings, find_index
from curate.stages.base import stage_class

INDEXED_KINDS = (exact.KIND, minhash.KIND, semantic.KIND)


def check_against(spec, against: list[str] | tuple[str, ...]) -> None:
    """Every earlier output has an index for every dedup stage with this run's settings (exact,
    minhash; a semdedup stage's model is known only once it runs, so its settings are checked
    when it fits), so a bad index is exit 2 before any output is written."""
    if not against:
        return
    stages = [s for s in spec.stages if s.kind in INDEXED_KINDS]
    if not stages:
        raise UsageError(
            "--against (or against in the pipeline file) needs a dedup stage (exact, minhash or semdedup) in the pipeline",
            path=spec.source,
            fix="add one, or drop the earlier outputs",
        )
    for stage_spec in stages:
        stage = stage_class(stage_spec.kind).from_options(stage_spec.options, where=spec.source)
        if stage_spec.kind == semantic.KIND:
            wanted = {"threshold": float(stage.threshold)}
        elif stage_spec.kind == exact.KIND:
            wanted = exact.settings(stage.normalize)
        else:
            wanted = minhash.settings(stage, spec.seed)
        for path in against:
            check_settings(find_index(path, stage_spec.name, stage_spec.kind), wanted)
