"""manifest.json: what went in, how it was configured, what each stage did, and what is done.

Written atomically at every state change, so after a kill it always describes finished work."""

from __future__ import annotations

import json
import platform
import time
from importlib import metadata
from pathlib import Path

from curate.errors import OutputError, redact_all
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


# What `--overwrite` writes over a manifest before it deletes anything: the output stays
# recognisably curate's (a retry may finish the clearing) and no reader takes it for finished.
OVERWRITING = {"curate_overwriting": True, "finalized": False}


def read_manifest(out_dir: Path) -> dict | None:
    """The manifest, None when there is none; exit 2 "not a curate output" for a file of another
    shape (hand-edited, truncated, someone else's)."""
    path = Path(out_dir) / MANIFEST_NAME
    if not path.exists():
        return None
    try:
        with open(path, encoding="utf-8") as handle:
            manifest = json.load(handle)
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise _not_curate(path, f"cannot read it as JSON ({type(exc).__name__})") from None
    check_manifest(manifest, path)
    return manifest


def check_manifest(manifest: object, where: object) -> None:
    """A dict with the keys every reader relies on, of the right types (or the overwrite mark)."""
    if isinstance(manifest, dict) and manifest.get("curate_overwriting") is True:
        return
    if not isinstance(manifest, dict):
        raise _not_curate(where, f"it holds {type(manifest).__name__}, not an object")
    wanted = {"input": dict, "config": dict, "stages": list, "finalized": bool}
    for key, kind in wanted.items():
        if not isinstance(manifest.get(key), kind):
            raise _not_curate(where, f"'{key}' is missing or not {kind.__name__}")
    if not isinstance(manifest["input"].get("files"), list) or not all(
        isinstance(s, dict) and "name" in s and "status" in s for s in manifest["stages"]
    ):
        raise _not_curate(where, "its input files or stages are not curate's")
    if manifest["finalized"] and not isinstance(manifest.get("totals"), dict):
        raise _not_curate(where, "it says finished but has no totals")


def _not_curate(where: object, why: str) -> OutputError:
    return OutputError(
        f"not a curate output: manifest.json is not a curate manifest ({why})",
        path=where,
        fix="pass the -o directory of a finished curate run, or rerun the pipeline with --overwrite",
    )


def write_manifest(out_dir: Path, manifest: dict) -> None:
    manifest["updated"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    atomic_write_json(Path(out_dir) / MANIFEST_NAME, redact_all(manifest), fsync=True)  # no URL password on disk
