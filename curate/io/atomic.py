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
from typing import Any, Callable, Iterator


def temp_sibling(path: str | os.PathLike, unique: bool = False) -> Path:
    """The temp name for `path`: hidden, same directory, `.tmp` suffix; `unique` when several
    writers may race for the same target (tasks re-run after a worker died)."""
    path = Path(path)
    tag = f".{uuid.uuid4().hex[:12]}" if unique else ""
    return path.with_name(f".{path.name}{tag}.tmp")


@contextmanager
def atomic_path(
    path: str | os.PathLike, *, unique: bool = False, fsync: bool = False, publish: bool = True
) -> Iterator[Path]:
    """Yield a temp path to write `path` through; renamed into place only if the block succeeds.
    `publish=False`: a copy of something published elsewhere (a download), not a new file."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(final, unique)
    remove_path(tmp)  # a killed earlier attempt's leftover
    try:
        yield tmp
        if fsync and tmp.is_file():
            with open(tmp, "rb") as handle:
                os.fsync(handle.fileno())
        rename_into_place(tmp, final, publish=publish)
    except BaseException:
        remove_path(tmp)
        raise


def rename_into_place(
    tmp: str | os.PathLike, final: str | os.PathLike, *, overwrite: bool = True, publish: bool = True
) -> None:
    """The one rename that makes a finished temp file or directory visible. `overwrite=False`:
    an existing non-empty `final` wins (OSError), as when two attempts of one task race."""
    (os.replace if overwrite else os.rename)(tmp, final)
    if publish:
        _published(Path(final))


_PUBLISH_HOOKS: list[Callable[[Path], None]] = []


def on_publish(hook: Callable[[Path], None]) -> None:
    """Call `hook(path)` after every file this module puts in place. The store mirror registers
    one when it is imported (curate.io.mirror: each hook decides from its run's state whether the
    file concerns it), so this lowest write layer knows nothing of stores."""
    if hook not in _PUBLISH_HOOKS:
        _PUBLISH_HOOKS.append(hook)


def _published(path: Path) -> None:
    for hook in _PUBLISH_HOOKS:
        hook(path)


def remove_path(path: str | os.PathLike) -> None:
    """Remove a file, a link or a directory tree; nothing when it is absent."""
    path = Path(path)
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


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")
