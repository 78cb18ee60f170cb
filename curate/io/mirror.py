"""A run's staging directory mirrored through the store, when the Dask workers share no disk with the driver: the store is the one copy.

With an object-store `-o` a run works in a local staging directory (curate.output.store). When
every worker sees that directory (one machine, or an NFS mount), tasks and the driver hand files
to each other through it. When they do not (workers on other machines, each with its own disk),
the staging directory becomes a *mirror* of the output prefix: the same absolute path on every
machine, each machine's copy a local cache, and the store the copy that everybody sees:

- a finished file under the staging directory (a unit's parts, a shuffle piece, a MinHash
  signature file, a fitted stage) is uploaded by the process that wrote it, to the same relative
  key under the output prefix (`published`, called where a write becomes final);
- a reader that lacks a file locally downloads it first (`ensure`), or reads a Parquet file's
  footer and columns from the store (`parquet_file`), so the driver reads footers, not rows;
- moves, copies and removals that the driver makes (a stage's unit parts assembled in order,
  finalize) are store-side operations: row data never passes through the driver.

Every uploaded file is recorded with its size and digest by the process that uploads it (a
unit's parts become a stage's by a move, which carries the record); tasks hand their records
back with their results (`InMirror`), and the driver's commit lists the output files of the
merged record in the manifest (curate.output.store). A stage's scratch (its `work` folder) is never
listed there, and the next commit removes it from the store.

The mirror is run state: the runner activates it for the run (`activated`), in a context
variable, so two runs in one process (threads, a notebook) never see each other's; a task on a
worker activates the mirror its function carries (`InMirror`). Without an active mirror every
function here is the plain local operation.
"""

from __future__ import annotations

import contextvars
import os
import shutil
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import pyarrow.parquet as pq

from curate.io import storage
from curate.io.atomic import on_publish, remove_path
from curate.io.storage import StorageOptions, call_output, file_digest


class Mirror:
    """One run's mirror: where its staging directory is, the output prefix in the store, and what
    this process has learned of the store (uploads and listings) during the run. Pickled (into a
    task) it carries its settings only; each process keeps its own record."""

    def __init__(self, root: str, url: str, options: StorageOptions = (), held_back: tuple[str, ...] = ()):
        self.root = root  # the local staging directory: the same absolute path on every machine
        self.url = url  # the output prefix in the store
        self.options = options
        self.held_back = tuple(held_back)  # relative names never uploaded here (the commit writes them)
        self.fs: tuple[Any, str] | None = None  # (filesystem, the prefix's path in it)
        # relative name -> {"size", "xxh3"} of the files this process uploaded or learned of (the
        # commit lists those that are output files)
        self.uploads: dict[str, dict[str, Any]] = {}
        self.sizes: dict[str, int] = {}  # relative name -> size, from listings and uploads (saves HEADs)
        self.snapshots: dict[str, list[str]] = {}  # relative directory -> the store's files under it
        self.lock = threading.Lock()  # a Dask worker may run tasks in several threads

    def __getstate__(self) -> dict[str, Any]:
        return {"root": self.root, "url": self.url, "options": self.options, "held_back": self.held_back}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Mirror) and self.__getstate__() == other.__getstate__()

    def __hash__(self) -> int:
        return hash((self.root, self.url))

    def __repr__(self) -> str:
        return f"Mirror({self.root!r} -> {self.url!r})"


_CURRENT: contextvars.ContextVar[Mirror | None] = contextvars.ContextVar("curate_mirror", default=None)


def activate(mirror: Mirror | None, record: dict[str, dict[str, Any]] | None = None) -> contextvars.Token:
    """Make `mirror` the one of this context (None: plain local files), seeded with `record`
    (what the output already holds); returns the token that `deactivate` takes."""
    if mirror is not None and record is not None:
        mirror.uploads.update(record)
    return _CURRENT.set(mirror)


def deactivate(token: contextvars.Token) -> None:
    _CURRENT.reset(token)


@contextmanager
def activated(mirror: Mirror | None, record: dict[str, dict[str, Any]] | None = None) -> Iterator[Mirror | None]:
    """The block runs with `mirror` active (a run's driver)."""
    token = activate(mirror, record)
    try:
        yield mirror
    finally:
        deactivate(token)


def active() -> Mirror | None:
    return _CURRENT.get()


def _active() -> Mirror:
    found = _CURRENT.get()
    assert found is not None
    return found


def record() -> dict[str, dict[str, Any]]:
    """What this process knows the output to hold (the driver: the whole run so far)."""
    found = _CURRENT.get()
    return {} if found is None else dict(found.uploads)


def drain() -> dict[str, dict[str, Any]]:
    """This process's uploads since the last drain, handed back to the driver with a task's result."""
    found = _active()
    with found.lock:
        uploads = dict(found.uploads)
        found.uploads.clear()
    return uploads


def merge(entries: dict[str, dict[str, Any]]) -> None:
    found = _active()
    with found.lock:
        found.uploads.update(entries)


def _store() -> tuple[Any, str]:
    found = _active()
    if found.fs is None:
        fs, root = storage.filesystem(found.url, found.options)
        found.fs = fs, root.rstrip("/")
    return found.fs


def _call(what: str, fn: Callable, *args: Any, **kwargs: Any) -> Any:
    return call_output(_active().url, what, fn, *args, **kwargs)


def relative(path: str | os.PathLike) -> str | None:
    """`path` relative to the mirrored staging directory, None when not under it (or no mirror)."""
    found = _CURRENT.get()
    if found is None:
        return None
    text = os.path.abspath(path)
    root = found.root.rstrip("/")
    if not text.startswith(root + "/"):
        return None
    return text[len(root) + 1 :]


def _key(rel: str) -> str:
    return f"{_store()[1]}/{rel}"


def _hidden(rel: str) -> bool:
    """A temp name or an unfinished attempt (dot-named): never published."""
    return any(part.startswith(".") for part in rel.split("/"))


def _local_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    return sorted(p for p in path.rglob("*") if p.is_file() and not _hidden(p.relative_to(path).as_posix()))


# ---------------------------------------------------------------------------------------
# Writes.


def published(path: str | os.PathLike) -> None:
    """A file (or a directory of files) is finished at `path`: upload it to its key, and record
    output files. Called where writes become final (atomic renames, part writers)."""
    rel = relative(path)
    if rel is None or _hidden(rel) or rel in _active().held_back:
        return
    found = _active()
    files = _local_files(Path(path))
    root = Path(found.root)
    names = [f.relative_to(root).as_posix() for f in files]
    if not files:
        return
    fs, _ = _store()
    entries = {}
    for name, file in zip(names, files):
        # put_file, not put: put checks every target for a directory first (a HEAD and a LIST
        # per file, measured against moto: 30% of a run's requests).
        _call("upload the output", fs.put_file, str(file), _key(name))
        entries[name] = {"size": file.stat().st_size, "xxh3": file_digest(file)}
        found.sizes[name] = entries[name]["size"]
    with found.lock:  # scratch too: a unit's parts become a stage's by a move
        found.uploads.update(entries)


def move(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Rename a file or directory; with a mirror, in the store too (server-side copies): files
    that only this process held (written under a temp name) are uploaded under the new name."""
    src, dst = Path(src), Path(dst)
    moved: set[str] = set()
    if relative(src) is not None:
        moved = set(_transfer(src, dst, keep_source=False))
    if src.exists():
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.replace(src, dst)
        if relative(dst) is not None:
            root = Path(_active().root)
            for file in _local_files(dst):
                if file.relative_to(root).as_posix() not in moved:
                    published(file)


def copy(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Copy one file: a hard link locally where possible; with a mirror, a store-side copy."""
    src, dst = Path(src), Path(dst)
    if relative(src) is not None:
        _transfer(src, dst, keep_source=True)
    if src.exists():
        dst.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)


def _transfer(src: Path, dst: Path, *, keep_source: bool) -> list[str]:
    """Copy (or move) the store's files at `src` to `dst`; their new relative names."""
    src_rel, dst_rel = relative(src), relative(dst)
    assert src_rel is not None and dst_rel is not None
    found = _active()
    uploads, sizes = found.uploads, found.sizes
    names = [src_rel] if src_rel in uploads else _store_files(src_rel)  # a known file: no listing
    pairs = [(n, dst_rel + n[len(src_rel) :]) for n in names]
    fs, _ = _store()
    for old, new in pairs:
        # cp_file and rm_file, not copy and rm: those expand each path first (a HEAD and a
        # LIST per file, measured against moto).
        _call("copy in the output", fs.cp_file, _key(old), _key(new))
        if old not in uploads:
            # The task that uploaded it died before its result came back (its retry found the
            # unit done): digest the object where it is. Only on that recovery path does the
            # driver read such a file.
            uploads[old] = _store_entry(old)
    if not keep_source and names:
        for name in names:
            _call("remove from the output", fs.rm_file, _key(name))
    for old, new in pairs:
        size = sizes.get(old) if keep_source else sizes.pop(old, None)
        if size is not None:
            sizes[new] = size
        entry = uploads.get(old) if keep_source else uploads.pop(old, None)
        if entry is not None:
            uploads[new] = entry
    return [new for _, new in pairs]


def _store_entry(rel: str) -> dict[str, Any]:
    fs, _ = _store()
    with _call("read the output", fs.open, _key(rel), "rb") as handle:
        digest = storage.digest_stream(handle)
        size = handle.tell()
    return {"size": size, "xxh3": digest.hexdigest()}


DONE_NAME = "_DONE"  # a finished task directory in the store: uploaded after all its files


def mark_done(directory: str | os.PathLike) -> None:
    """A directory's files are all in the store. Object stores have no directory rename, so a
    second attempt (a retry, a task of a killed run) must not take a half-uploaded directory
    for a finished one: this marker, written last, is what `is_done` looks for."""
    rel = relative(directory)
    if rel is None or _hidden(rel):
        return
    fs, _ = _store()
    _call("upload the output", fs.pipe_file, _key(f"{rel}/{DONE_NAME}"), b"")


def is_done(directory: str | os.PathLike) -> bool:
    """A task's output directory is finished: renamed into place here, or marked in the store."""
    rel = relative(directory)
    if rel is None:
        return Path(directory).is_dir()
    fs, _ = _store()

    def marked() -> bool:
        try:
            fs.cat_file(_key(f"{rel}/{DONE_NAME}"))  # one GET; info() adds a LIST when absent
        except FileNotFoundError:
            return False
        return True

    return _call("read the output", marked)


def remove(path: str | os.PathLike) -> None:
    """Remove a file or directory here and, with a mirror, from the store and the record."""
    path = Path(path)
    remove_path(path)
    rel = relative(path)
    if rel is None:
        return
    found = _active()
    with found.lock:
        for known in (found.uploads, found.sizes):
            for name in [n for n in known if n == rel or n.startswith(rel + "/")]:
                del known[name]
    names = _store_files(rel)
    if names:
        fs, _ = _store()
        _call("remove from the output", fs.rm, [_key(n) for n in names])


# ---------------------------------------------------------------------------------------
# Reads.


def _store_files(rel: str) -> list[str]:
    """Relative names of the store's files at `rel` (a file) or under it (a directory)."""
    fs, root = _store()
    key = _key(rel)
    fs.invalidate_cache(key)  # other processes write here

    def find() -> dict[str, Any]:
        try:
            return fs.find(key, detail=True)
        except FileNotFoundError:
            return {}

    found = {k: v for k, v in _call("list the output", find).items() if k == key or k.startswith(key + "/")}
    names = {k[len(root) + 1 :]: v.get("size") for k, v in found.items()}
    _active().sizes.update((n, size) for n, size in names.items() if size is not None)
    return sorted(names)


def _store_kind(rel: str) -> str | None:
    fs, _ = _store()
    key = _key(rel)
    fs.invalidate_cache(key)

    def info() -> str | None:
        try:
            return fs.info(key)["type"]
        except FileNotFoundError:
            return None

    return _call("read the output", info)


def ensure(path: str | os.PathLike) -> Path:
    """`path`, downloaded from the store first when it is missing here (a file, or every file
    of a directory); without a mirror, or outside the staging directory, `path` as it is."""
    path = Path(path)
    rel = relative(path)
    if rel is None or path.is_file():
        return path
    if not path.is_dir() and _get_file(rel, path):  # one GET, no listing: the usual case
        return path
    root = Path(_active().root)
    for name in _store_files(rel):  # a directory: each file this machine lacks
        if not (root / name).is_file():
            _get_file(name, root / name)
    return path


def _get_file(rel: str, path: Path) -> bool:
    """Download the object at `rel` to `path`; False when there is no such object."""
    fs, _ = _store()
    return _call("download from the output", storage.download_file, fs, _key(rel), path)


def exists(path: str | os.PathLike) -> bool:
    path = Path(path)
    if path.exists():
        return True
    rel = relative(path)
    return rel is not None and _store_kind(rel) is not None


def is_dir(path: str | os.PathLike) -> bool:
    path = Path(path)
    if path.is_dir() or relative(path) is None:
        return path.is_dir()
    return _store_kind(relative(path)) == "directory"  # type: ignore[arg-type]


@contextmanager
def listed(directory: str | os.PathLike) -> Iterator[None]:
    """List the store under `directory` once and answer `list_names` below it from that list
    (the driver assembling a stage: one listing instead of two per work unit). For blocks in
    which nobody else adds files there."""
    rel = relative(directory)
    if rel is not None:
        _active().snapshots[rel] = _store_files(rel)
    try:
        yield
    finally:
        if rel is not None:
            _active().snapshots.pop(rel, None)


def _listing(rel: str) -> list[str]:
    for top, names in _active().snapshots.items():
        if rel == top or rel.startswith(top + "/"):
            return [n for n in names if n.startswith(rel + "/")]
    return _store_files(rel)


def list_names(directory: str | os.PathLike) -> list[str]:
    """Names of the entries of a directory: the local ones and, with a mirror, the store's."""
    directory = Path(directory)
    names = {p.name for p in directory.iterdir()} if directory.is_dir() else set()
    rel = relative(directory)
    if rel is not None:
        prefix = rel + "/"
        names |= {n[len(prefix) :].split("/")[0] for n in _listing(rel) if n.startswith(prefix)}
    return sorted(names)


def known_size(path: str | os.PathLike) -> int | None:
    """The size of a store file this process has listed or written, None if unknown."""
    rel = relative(path)
    return None if rel is None else _active().sizes.get(rel)


def parquet_file(path: str | os.PathLike, size: int | None = None) -> pq.ParquetFile:
    """A Parquet file here, or read from the store in place: the footer and the columns asked
    for, not the whole file (the driver reads footers of parts the workers wrote)."""
    path = Path(path)
    rel = relative(path)
    if rel is None or path.is_file():
        return pq.ParquetFile(path)
    fs, _ = _store()
    size = size if size is not None else _active().sizes.get(rel)
    known = {"size": size} if size is not None else {}  # from a listing: no HEAD
    handle = _call("read the output", fs.open, _key(rel), "rb", **known)
    return pq.ParquetFile(handle)


def read_metadata(path: str | os.PathLike) -> pq.FileMetaData:
    return parquet_file(path).metadata


def local_paths(paths: list[Path]) -> list[Path]:
    """The files, downloaded where they are missing here (whole-table reads)."""
    return [ensure(p) for p in paths]


# ---------------------------------------------------------------------------------------
# Tasks.


@dataclass(frozen=True)
class InMirror:
    """A task run on a worker of a mirrored run: the mirror set, and the task's uploads handed
    back with its result for the driver's record."""

    fn: Callable[[Any], Any]
    mirror: Mirror

    def __call__(self, item: Any) -> tuple[Any, dict[str, dict[str, Any]]]:
        token = activate(self.mirror)
        try:
            # What this process uploaded since the last drain: this task's files, and those of a
            # task that failed (or ran beside it in another thread); the driver merges the union.
            return self.fn(item), drain()
        finally:
            deactivate(token)


def forget_local(path: str) -> None:
    """On a worker: drop this machine's copies under `path` (the store keeps the files)."""
    shutil.rmtree(path, ignore_errors=True)


def replace_dir(tmp: str | os.PathLike, final: str | os.PathLike) -> None:
    """Put a finished directory in place of `final` (which may exist): old moved aside, new
    renamed in, old removed. A kill in between leaves `final` or its `.old` twin, never a mix.
    The moves are plain renames here, and also move the store's copy in a mirrored run."""
    tmp, final = Path(tmp), Path(final)
    old = final.with_name(f".{final.name}.old")
    remove(old)
    if exists(final):
        move(final, old)
    move(tmp, final)
    remove(old)


on_publish(published)
