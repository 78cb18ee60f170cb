"""Where curate keeps files between runs: exported and distilled models, and the local staging
directory of a run whose output is in an object store."""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "CURATE_CACHE_DIR"


def cache_dir() -> Path:
    """Where exported and distilled models live: $CURATE_CACHE_DIR, else $XDG_CACHE_HOME/curate,
    else ~/.cache/curate."""
    override = os.environ.get(CACHE_ENV)
    if override:
        return Path(override)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "curate"


STAGING_ENV = "CURATE_STAGING_DIR"


def staging_root() -> Path:
    """$CURATE_STAGING_DIR, else the curate cache directory's `staging/`."""
    override = os.environ.get(STAGING_ENV)
    if override:
        return Path(override)
    return cache_dir() / "staging"
