"""Where a local copy of an earlier output came from, so that workers without the driver's disk
can fetch its index files from the store themselves (`--against` URL on such a cluster).

The driver reads an earlier output in an object store through a local copy of its index
(curate.output.store.local_outputs); the indexes it opens there remember the store URL
(`StoredIndex.origin`), and a task that lacks a file downloads it from there."""

from __future__ import annotations

import contextvars
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from curate.errors import OutputError
from curate.io import storage
from curate.io.storage import StorageOptions

Copies = dict[str, tuple[str, StorageOptions]]  # local copy -> (its output's URL, options)
# The run's copies: a context variable, so two runs in one process never see each other's.
_COPIES: contextvars.ContextVar[Copies | None] = contextvars.ContextVar("curate_earlier_copies", default=None)


@contextmanager
def registered(copies: list[tuple[str | os.PathLike, str]], options: StorageOptions) -> Iterator[None]:
    """The block runs knowing that each local copy came from its URL."""
    token = _COPIES.set({os.path.abspath(local): (url.rstrip("/"), options) for local, url in copies})
    try:
        yield
    finally:
        _COPIES.reset(token)


def origin_of(path: str | os.PathLike) -> tuple[str, StorageOptions] | None:
    """The store URL of a path inside a registered local copy, None otherwise."""
    text = os.path.abspath(path)
    for local, (url, options) in (_COPIES.get() or {}).items():
        if text == local or text.startswith(local + "/"):
            return url + text[len(local) :], options
    return None


def fetch(url: str, options: StorageOptions, path: str | os.PathLike) -> Path:
    """One file of an earlier output, downloaded to `path`."""
    fs, key = storage.filesystem(url, options)
    found = storage.call_backend(url, "download", storage.download_file, fs, key, path, error=OutputError)
    if not found:
        raise OutputError(
            "a file the earlier output's index lists is missing from the store",
            path=url,
            fix="rebuild that index: curate index OUT",
        )
    return Path(path)
