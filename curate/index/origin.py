"""Where a local copy of an earlier output came from, so that workers without the driver's disk
can fetch its index files from the store themselves (`--against` URL on such a cluster).

The driver reads an earlier output in an object store through a local copy of its index
(curate.output_store.local_outputs); the indexes it opens there remember the store URL
(`StoredIndex.origin`), and a task that lacks a file downloads it from there."""

from __future__ import annotations

import os
from pathlib import Path

from curate import storage
from curate.errors import OutputError
from curate.storage import StorageOptions

_COPIES: dict[str, tuple[str, StorageOptions]] = {}  # local copy -> (its output's URL, options)


def register(local: str | os.PathLike, url: str, options: StorageOptions) -> None:
    _COPIES[os.path.abspath(local)] = (url.rstrip("/"), options)


def forget() -> None:
    _COPIES.clear()


def origin_of(path: str | os.PathLike) -> tuple[str, StorageOptions] | None:
    """The store URL of a path inside a registered local copy, None otherwise."""
    text = os.path.abspath(path)
    for local, (url, options) in _COPIES.items():
        if text == local or text.startswith(local + "/"):
            return url + text[len(local) :], options
    return None


def fetch(url: str, options: StorageOptions, path: str | os.PathLike) -> Path:
    """One file of an earlier output, downloaded to `path`."""
    fs, key = storage.filesystem(url, options)
    found = storage.call_backend(url, "download", storage.download_file, fs, key, path, error=OutputError)
    if not found:
        raise OutputError("a file the earlier output's index lists is missing from the store", path=url, fix="rebuild that index: curate index OUT")
    return Path(path)
