"""manifest.json: what went in, how it was configured, what each stage did, and what is done.

Written atomically at every state change, so after a kill it always describes finished work."""

from __future__ import annotations

import json
import platform
import time
from importlib import metadata
from pathlib import Path

from curate.io.atomic import atomic_write_json
from curate.output.layout import MANIFEST_NAME

__all__ = ["MANIFEST_NAME", "package_versions", "read_manifest", "write_manifest"]

_PACKAGES = (
    "curate",
    "pyarrow",
    "polars",
    "numpy",
    "xxhash",
    "faiss-cpu",
    "datasketch",
    "torch",
    "dask",
    "distributed",
)


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def read_manifest(out_dir: Path) -> dict | None:
    path = Path(out_dir) / MANIFEST_NAME
    if not path.exists():
        return None
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def write_manifest(out_dir: Path, manifest: dict) -> None:
    manifest["updated"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    atomic_write_json(Path(out_dir) / MANIFEST_NAME, manifest, fsync=True)
