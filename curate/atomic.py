"""One way to write a file or a directory so that readers see all of it or none of it.

Every write in curate goes through here: a temp name in the same directory, then a rename.
A kill at any point leaves either the old file, the new one, or a dot-named `.tmp` leftover
that readers ignore (they list `part-*.parquet`, `manifest.json`, ... by name)."""

from __future__ import annotations

import json
import os
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator


def temp_sibling(path: str | os.PathLike, unique: bool = False) -> Path:
    """The temp name for `path`: hidden, same directory, `.tmp` suffix; `unique` when several
    writers may race for the same target (tasks re-run after a worker died)."""
    path = Path(path)
    tag = f".{uuid.uuid4().hex[:12]}" if unique else ""
    return path.with_name(f".{path.name}{tag}.tmp")


@contextmanager
def atomic_path(path: str | os.PathLike, *, unique: bool = False, fsync: bool = False) -> Iterator[Path]:
    """Yield a temp path to write `path` through; renamed into place only if the block succeeds."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(final, unique)
    _remove(tmp)  # a killed earlier attempt's leftover
    try:
        yield tmp
        if fsync and tmp.is_file():
            with open(tmp, "rb") as handle:
                os.fsync(handle.fileno())
        os.replace(tmp, final)
    except BaseException:
        _remove(tmp)
        raise
    _published(final)


def _published(path: Path) -> None:
    """A run whose workers share no disk uploads each finished file (curate.scratch)."""
    from curate import scratch

    if scratch.active() is not None:
        scratch.published(path)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, fsync: bool = False) -> None:
    with atomic_path(path, unique=True, fsync=fsync) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str, *, fsync: bool = False) -> None:
    atomic_write_bytes(path, text.encode("utf-8"), fsync=fsync)


def atomic_write_json(path: str | os.PathLike, data: Any, *, fsync: bool = False) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, default=_json_default) + "\n", fsync=fsync)


def replace_dir(tmp: str | os.PathLike, final: str | os.PathLike) -> None:
    """Put a finished directory in place of `final` (which may exist): old moved aside, new
    renamed in, old removed. A kill in between leaves `final` or its `.old` twin, never a mix.
    Through curate.scratch, whose moves are plain renames here and also move the store's copy
    in a run whose workers share no disk."""
    from curate import scratch

    tmp, final = Path(tmp), Path(final)
    old = final.with_name(f".{final.name}.old")
    scratch.remove(old)
    if scratch.exists(final):
        scratch.move(final, old)
    scratch.move(tmp, final)
    scratch.remove(old)


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")
