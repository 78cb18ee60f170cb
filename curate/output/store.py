"""An output in an object store (s3://, gs://, az://): staged locally, committed without rename.

Object stores have no atomic rename of a directory, but they do write one object atomically
(a PUT, or a multipart upload, is visible whole or not at all). So a run whose `-o` is a URL
works in a local staging directory with the usual layout, and at every commit point (the
first manifest, each finished stage, finalize, the report) the committer:

  1. uploads every finished file that the store does not hold with the same size and digest,
  2. writes `manifest.json` last, with a `files` record (path -> size, xxh3) of what it holds:
     that PUT is the commit,
  3. deletes objects under the prefix that the record does not list (leftovers of dead
     attempts and superseded stage parts).

Readers (`verify`, `inspect`, `report`, `--resume`, `--against`) trust only files that the
manifest lists. A kill between 1 and 2 leaves new objects that no manifest lists (removed by
the next commit) next to the previous commit, which is still whole; a kill between 2 and 3
leaves only garbage that the next commit removes. Every listed file keeps its bytes until a
commit stops listing it: outputs are deterministic, so a path written again (a resumed stage)
gets the same bytes, and only one process, the driver, writes the record (the digests and
uploads of step 1 run as executor tasks, so the workers move the bytes). Unique names per
attempt are still used where several processes write at once: the task attempts in the
staging directory.

`--resume` continues from the staging directory when it holds the same run as the store (same
machine), and otherwise rebuilds it from the store's last commit (another machine, or the
staging directory lost), so an interrupted run can be finished anywhere that reaches the store.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import xxhash

from curate.errors import OutputError, UsageError
from curate.io import mirror, storage
from curate.io.cache import staging_root
from curate.io.storage import StorageOptions, call_output, file_digest
from curate.output.layout import LEASE_NAME, MANIFEST_NAME, is_committed, is_hidden, is_stage_work, output_names
from curate.output.manifest import OVERWRITING, check_manifest

FILES_KEY = "files"
# A mirrored resume pulls committed files up to this size to the driver (manifests, metadata,
# centroids); bigger ones (row data) are read from the store where they are needed.
_PULL_BYTES = 1 << 20


def is_remote(output: str | os.PathLike) -> bool:
    """A URL other than file:// (those are plain local paths)."""
    return storage.is_url(storage.local_or_url(str(output)))


Mapper = Callable[[Callable[[Any], Any], list[Any]], list[Any]]
# (relative name, local path, size, mtime_ns, the store's entry for the name or None)
Upload = tuple[str, str, int, int, "dict[str, Any] | None"]


def _in_process(fn: Callable[[Any], Any], items: list[Any]) -> list[Any]:
    return [fn(item) for item in items]


def upload_batches(files: list[Upload], workers: int) -> list[list[Upload]]:
    """About two batches per worker of similar byte counts (one in-process), each file whole,
    in name order within a batch (a task per file would cost a filesystem set-up per file)."""
    if not files:
        return []
    count = 1 if workers <= 1 else min(len(files), 2 * workers)
    batches: list[list[Upload]] = [[] for _ in range(count)]
    loads = [0] * count
    for item in sorted(files, key=lambda f: (-f[2], f[0])):  # largest first onto the lightest
        lightest = loads.index(min(loads))
        batches[lightest].append(item)
        loads[lightest] += item[2]
    return [sorted(b) for b in batches if b]


class UploadFiles:
    """A commit task: digest each file and upload those whose entry differs from the store's."""

    def __init__(self, url: str, options: StorageOptions):
        self.url, self.options = url, options

    def __call__(self, batch: list[Upload]) -> list[dict[str, Any]]:
        fs, root = storage.filesystem(self.url, self.options)
        root = root.rstrip("/")
        entries, puts = [], []
        for name, path, size, _, stored in batch:
            entry = {"size": size, "xxh3": file_digest(Path(path))}
            entries.append(entry)
            if stored != entry:
                puts.append((path, f"{root}/{name}"))
        if puts:
            call_output(self.url, "upload the output", fs.put, [p for p, _ in puts], [k for _, k in puts])
        return entries


def committable_files(root: Path) -> dict[str, Path]:
    """Finished files under a local output: no temp (dot-named) files, no stage mirror."""
    found: dict[str, Path] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath).relative_to(root).as_posix()
        prefix = "" if here == "." else f"{here}/"
        dirnames[:] = sorted(d for d in dirnames if not is_hidden(d) and not is_stage_work(f"{prefix}{d}/"))
        for name in filenames:
            path = Path(dirpath) / name
            rel = path.relative_to(root).as_posix()
            if is_committed(rel):
                found[rel] = path
    return found


class OutputStore:
    """One output prefix in an object store, and the local staging directory that feeds it."""

    def __init__(self, url: str, options: StorageOptions = (), side_outputs: tuple[str, ...] = ()):
        self.url = url.rstrip("/")
        self.options = options
        # the top-level names of a curate output here: anything else is not curate's, and a run
        # refuses to write over it (it would be deleted as a leftover)
        self.names = output_names(side_outputs)
        self.fs, self.root = storage.filesystem(self.url, options)
        self.root = self.root.rstrip("/")
        self.staging = staging_root() / xxhash.xxh3_64_hexdigest(self.url.encode())
        # path -> (size, mtime_ns, xxh3): a commit digests only files new since the last one
        # (every stage boundary would otherwise re-read the whole output so far).
        self._digests: dict[str, tuple[int, int, str]] = {}
        self.committed_files: dict[str, dict[str, Any]] = {}  # a mirrored resume's starting record

    # -- errors -----------------------------------------------------------------------------

    def call(self, what: str, fn: Callable, *args: Any, **kwargs: Any) -> Any:
        return call_output(self.url, what, fn, *args, **kwargs)

    def _key(self, relative: str) -> str:
        return f"{self.root}/{relative}"

    # -- reading the committed state ----------------------------------------------------------

    def manifest(self) -> dict | None:
        """The last commit record, or None when the prefix holds no curate output."""

        def read() -> bytes | None:
            try:
                return self.fs.cat_file(self._key(MANIFEST_NAME))
            except FileNotFoundError:
                return None

        data = self.call("read the manifest", read)
        if data is None:
            return None
        try:
            manifest = json.loads(data)
        except ValueError:
            raise OutputError(
                "not a curate output: manifest.json in the store is not valid JSON",
                path=f"{self.url}/{MANIFEST_NAME}",
                fix="rerun with --overwrite",
            ) from None
        check_manifest(manifest, f"{self.url}/{MANIFEST_NAME}")
        return manifest

    def reach(self) -> None:
        """A missing bucket or container as one line that says to create it; backends such as
        adlfs raise their own not-found type on a write, so this asks with `info` first."""
        self.call(f"reach the {storage.bucket_word(self.url)}", self.fs.info, self.root.split("/")[0])

    def objects(self) -> list[str]:
        """Every object under the prefix, relative to it."""
        self.fs.invalidate_cache()
        self.reach()
        keys = self.call("list the output", self.fs.find, self.root)
        return sorted(k[len(self.root) + 1 :] for k in keys if k.startswith(self.root + "/"))

    def pull(self, dest: Path, manifest: dict, wanted: Callable[[str], bool] = lambda _: True) -> None:
        """Download the committed files `wanted` selects (and the manifest) into `dest`."""
        record = manifest.get(FILES_KEY, {})
        names = sorted(name for name in record if wanted(name))
        dest.mkdir(parents=True, exist_ok=True)
        for name in names:
            (dest / name).parent.mkdir(parents=True, exist_ok=True)

        def download() -> None:
            try:
                self.fs.get([self._key(n) for n in names], [str(dest / n) for n in names])
            except FileNotFoundError:
                missing = next(n for n in names if not self.fs.exists(self._key(n)))
                raise OutputError(
                    "a file the manifest lists is missing from the store",
                    path=f"{self.url}/{missing}",
                    fix="rerun with --overwrite",
                ) from None

        if names:
            self.call("download the output", download)
        for name in names:
            if (dest / name).stat().st_size != record[name]["size"]:
                raise OutputError(
                    "a file in the store differs from its manifest record",
                    path=f"{self.url}/{name}",
                    fix="rerun with --overwrite",
                )
        local = {k: v for k, v in manifest.items() if k != FILES_KEY}
        (dest / MANIFEST_NAME).write_text(json.dumps(local, indent=2) + "\n", encoding="utf-8")

    # -- the run's side ------------------------------------------------------------------------

    def prepare(self, *, resume: bool, overwrite: bool, mirrored: bool = False) -> Path:
        """Check the prefix against --resume/--overwrite and return the staging directory: empty
        for a fresh run, or holding the state to resume (kept from this machine, or pulled).

        `mirrored` (workers without the driver's disk, curate.io.mirror): a staging directory of
        this run's own, with the store as the state to resume from; only the small committed
        files (manifests, metadata) are pulled, and `committed_files` is the record."""
        committed = self.manifest()
        objects = [o for o in self.objects() if o != LEASE_NAME]  # this run's own lease
        foreign = sorted({o.split("/")[0] for o in objects} - self.names)
        if foreign or (objects and committed is None):
            what = foreign[0] if foreign else objects[0]
            raise OutputError(
                f"the output prefix holds objects that are not a curate output (e.g. {what})",
                path=self.url,
                fix="choose an empty prefix for -o",
            )
        if committed is not None and committed.get("curate_overwriting") and not overwrite:
            raise OutputError(
                "an --overwrite of this output did not finish", path=self.url, fix="rerun with --overwrite"
            )
        if committed is not None and not resume and not overwrite:
            raise OutputError(
                "output prefix is not empty",
                path=self.url,
                fix="pass --resume to continue, --overwrite to start over, or another -o",
            )
        self._abort_dead_uploads()
        if overwrite and committed is not None:
            # First the manifest becomes the overwrite mark (one PUT): from then on no reader
            # takes the prefix for a finished output, and a retry still knows it for curate's.
            # The mark goes last.
            self.call(
                "clear the output", self.fs.pipe_file, self._key(MANIFEST_NAME), json.dumps(OVERWRITING).encode()
            )
            doomed = [self._key(o) for o in objects if o not in (MANIFEST_NAME, LEASE_NAME)]
            if doomed:
                self.call("clear the output", self.fs.rm, doomed)
            self.call("clear the output", self.fs.rm, self._key(MANIFEST_NAME))
            committed = None
        if mirrored:
            self.staging = self.staging.with_name(f"{self.staging.name}-{uuid.uuid4().hex[:12]}")
            self._clear_staging()
            if committed is not None and resume:
                self.committed_files = dict(committed.get(FILES_KEY, {}))
                self.pull(self.staging, committed, lambda name: committed[FILES_KEY][name]["size"] <= _PULL_BYTES)
            return self.staging
        if committed is None or not resume:
            self._clear_staging()
            return self.staging
        if not self._staging_matches(committed):
            # A commit lists only finished stages' files (it follows the manifest write that
            # marks the stage done), which is exactly what the resume needs.
            self._clear_staging()
            self.pull(self.staging, committed)
        return self.staging

    def _abort_dead_uploads(self) -> None:
        """S3 multipart uploads a killed run left under this prefix: never visible, but stored
        (and billed) until aborted. Other stores have no such state."""
        if storage.EXTRAS.get(storage.protocol(self.url)) != "s3":
            return
        bucket, _, prefix = self.root.partition("/")
        listing = self.call(
            "list unfinished uploads", self.fs.call_s3, "list_multipart_uploads", Bucket=bucket, Prefix=f"{prefix}/"
        )
        for upload in listing.get("Uploads", []) or []:
            self.call(
                "abort an unfinished upload",
                self.fs.call_s3,
                "abort_multipart_upload",
                Bucket=bucket,
                Key=upload["Key"],
                UploadId=upload["UploadId"],
            )

    def _staging_matches(self, committed: dict) -> bool:
        """The staging directory holds this run (same start) at or after the committed state."""
        path = self.staging / MANIFEST_NAME
        if not path.is_file():
            return False
        try:
            local = json.loads(path.read_text(encoding="utf-8"))
        except ValueError:
            return False
        if local.get("created") != committed.get("created") or local.get("config") != committed.get("config"):
            return False
        done_local = [s["status"] == "done" for s in local.get("stages", [])]
        done_store = [s["status"] == "done" for s in committed.get("stages", [])]
        return all(a or not b for a, b in zip(done_local, done_store)) and (
            local.get("finalized") or not committed.get("finalized")
        )

    def _clear_staging(self) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)
        self.staging.mkdir(parents=True, exist_ok=True)

    def commit(self, local: Path, *, prune: bool = True, map: Mapper | None = None, workers: int = 1) -> None:
        """Upload what changed under `local`, write the manifest (the commit), then (with
        `prune`) delete objects the new record does not list. Without `prune` the record keeps
        the earlier files too (a reader that pulled part of an output and added files).

        With `map` (an executor's), the files not digested before are digested and uploaded
        by tasks, so the workers move the row data and the driver only writes the record."""
        before = self.manifest() or {}
        old = before.get(FILES_KEY, {})
        files = committable_files(local)
        record = dict(old) if not prune else {}
        if mirror.active() is not None:
            # Workers without the driver's disk uploaded their files as they wrote them; the
            # driver uploads the few it wrote outside the hooks (curate.io.mirror).
            record.update((name, entry) for name, entry in mirror.record().items() if is_committed(name))
            files = {name: path for name, path in files.items() if name not in record}
            map = None
        work: list[Upload] = []  # new or changed since the last digest, or not in the store yet
        for name, path in files.items():
            stat = path.stat()
            known = self._digests.get(str(path))
            if known is not None and known[:2] == (stat.st_size, stat.st_mtime_ns):
                record[name] = {"size": stat.st_size, "xxh3": known[2]}
                if old.get(name) == record[name]:
                    continue
            work.append((name, str(path), stat.st_size, stat.st_mtime_ns, old.get(name)))
        batches = upload_batches(work, workers)
        task = UploadFiles(self.url, self.options)
        results = (map or _in_process)(task, batches) if batches else []
        for batch, entries in zip(batches, results):
            for (name, path, size, mtime, _), entry in zip(batch, entries):
                record[name] = entry
                self._digests[path] = (size, mtime, entry["xxh3"])
        manifest = json.loads((local / MANIFEST_NAME).read_text(encoding="utf-8"))
        manifest[FILES_KEY] = dict(sorted(record.items()))
        self.call(
            "write the manifest",
            self.fs.pipe_file,
            self._key(MANIFEST_NAME),
            (json.dumps(manifest, indent=2) + "\n").encode("utf-8"),
        )
        if prune:
            self.call("remove leftovers", self._remove_unlisted, record)

    def _remove_unlisted(self, record: dict) -> None:
        stale = [o for o in self.objects() if o not in (MANIFEST_NAME, LEASE_NAME) and o not in record]
        if stale:
            self.fs.rm([self._key(o) for o in stale])

    def discard_staging(self) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)


@contextmanager
def local_output(
    output: str | os.PathLike,
    options: StorageOptions = (),
    *,
    writes: bool = False,
    wanted: Callable[[str], bool] = lambda _: True,
) -> Iterator[Path]:
    """A local directory holding a finished output: the path itself, or for a URL a temporary
    copy of its committed files (`wanted` selects which). With `writes`, files the block adds
    are committed back to the store on success."""
    if not is_remote(output):
        yield Path(storage.local_or_url(str(output)))
        return
    store = OutputStore(str(output), options)
    manifest = store.manifest()
    if manifest is None:
        raise UsageError(
            "no manifest.json: not a curate output", path=store.url, fix="pass the -o URL of a curate run"
        )
    staging_root().mkdir(parents=True, exist_ok=True)
    view = Path(tempfile.mkdtemp(prefix="view-", dir=staging_root()))
    try:
        store.pull(view, manifest, wanted if manifest.get("finalized") else (lambda _: False))
        yield view
        if writes:
            store.commit(view, prune=False)
    finally:
        shutil.rmtree(view, ignore_errors=True)


@contextmanager
def local_outputs(
    outputs: tuple[str, ...] | list[str],
    options: StorageOptions = (),
    *,
    wanted: Callable[[str], bool] = lambda _: True,
) -> Iterator[list[str]]:
    """`local_output` for several outputs at once (the earlier outputs of --against)."""
    with ExitStack() as stack:
        yield [str(stack.enter_context(local_output(o, options, wanted=wanted))) for o in outputs]
