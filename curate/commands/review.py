"""`curate review OUT`: one self-contained HTML page of what each stage removed and kept."""

from __future__ import annotations

from pathlib import Path

from curate.errors import UsageError
from curate.io.atomic import atomic_write_text
from curate.report.review import build_review
from curate.report.review_page import render_review

REVIEW_NAME = "review.html"


def write_review(
    out: Path, target: Path | None = None, *, per_reason: int = 10, seed: int = 0, storage_options: tuple = ()
) -> Path:
    """Build the page from the finished output in `out` (a local directory or a local view of a
    store output) and write it to `target` (default OUT/review.html)."""
    if per_reason < 1:
        raise UsageError(f"--per-reason {per_reason}", fix="use 1 or more")
    data = build_review(Path(out), per_reason=per_reason, seed=seed, storage_options=storage_options)
    target = Path(target) if target is not None else Path(out) / REVIEW_NAME
    atomic_write_text(target, render_review(data, title=f"curate review: {data['output']}"))
    return target
