"""The embedding store every embedding-based stage reads through, and the tasks that fill it.

Store layout, `OUT/embeddings/`: `part-NNNNN.parquet` with `id`, `embedding`
(fixed_size_list<float32>, L2-normalized) and `text_hash` (xxh3-64 of the text), plus
`embeddings.json` (model, version, dim, rows) written last, so a directory without it is
unfinished and ignored.

Reuse rule: a row's stored embedding is reused when the store was made by the same model
(name and version) and holds a row with the same id and the same text hash; every other row
is embedded. So a resumed run, a later stage of the same run, or a later run pointed at an
earlier store (`cache = "OLD_OUT"`) embeds only rows it has not seen, and an edited text is
never served a stale vector. `column:NAME` vectors are always read from the input.

Parallel shape: one task per work unit (`EmbedUnit`). A task looks its rows up in the
stores (through one (id hash, text hash) -> (store, part, row) index the driver builds from
the stores' small columns), embeds the rest with the model its worker process loaded once,
and writes the unit's vectors under the stage's work dir: a float32 `.npy` that later passes
(k-means, assignment, within-cluster search) memory-map, and store-format parts. The driver
then renames the units' parts into `OUT/embeddings` in unit (input) order and writes
`embeddings.json` last; it never holds a vector of its own.

Reading in place (`stored_embeddings`): when the store holds exactly a later stage's rows in
its order (an embed stage ran on the same rows just before, the usual pipeline), unit u's
vectors are a row range of the store's parts. One task per unit checks that (same ids, same
text hashes: the reuse rule above) and returns its rows of the k-means sample; later passes
stream the vectors from the parts (`vector_blocks`): no index, no copy, no `.npy` written.
"""

from __future__ import annotations

import json
import shutil
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from curate.algorithms.exact import hash128
from curate.embeddings.hashing import DEFAULT_DIM
from curate.embeddings.models import (
    DEFAULT_MODEL,
    FITTED_MODEL,
    build_model_files_once,
    column_of,
    load_embedder,
    model_version,
    normalize_rows,
    validate_model_name,
)
from curate.errors import InputError, UsageError
from curate.io import mirror
from curate.io.atomic import atomic_path, atomic_write_json
from curate.io.mirror import replace_dir
from curate.io.parts import PartWriter, list_parts
from curate.output.ledger import ids_as_strings
from curate.stages.base import BatchSource, StageContext, row_ordinals

EMBEDDINGS_DIR = "embeddings"
META_NAME = "embeddings.json"
STORE_FORMAT = 1
# Rows per store row group: small enough that converting, encoding and compressing a batch
# stays in the CPU caches. Writing a 62,500-row unit (d = 384) took 0.26-0.32 s with 4,096
# rows whether one or two processes wrote at once, and 0.48 s each for two at once with
# 32,768 rows (0.27-0.36 s alone).
_WRITE_ROWS = 4_096
# A unit's vectors stay in memory (not a memory-mapped file) up to this size when only the
# store parts are wanted: 256 MiB is 170k rows at d = 384, a unit of a corpus up to ~5M rows.
_IN_MEMORY_BYTES = 256 << 20
_VECTORS = "vectors"
_PARTS = "parts"
_INDEX = "store-index.arrow"
# Rows per batch when streaming stored vectors (3 MiB at d = 384, cache-sized): decoding 340k
# stored rows took 0.80 s of CPU in 2,048-row batches and 1.01 s in 16,384-row ones (1 process;
# 2 processes at once the same), even with the batches copied into 16,384-row blocks after.
_READ_ROWS = 2_048


# Parquet options for store parts. Dictionary encoding and min/max statistics are useless on
# float vectors and cost most of the write: 50,000 hashing vectors (d = 384) took 0.40 s
# with pyarrow's defaults and 0.21 s without both (files 4% smaller; same values).
STORE_WRITE_OPTIONS = {"use_dictionary": False, "write_statistics": ["id", "text_hash"]}


def store_schema(dim: int) -> pa.Schema:
    return pa.schema(
        [
            pa.field("id", pa.string(), nullable=False),
            pa.field("embedding", pa.list_(pa.float32(), dim)),
            pa.field("text_hash", pa.uint64()),
        ]
    )


@dataclass(frozen=True)
class StoreSlice:
    """One work unit's vectors read in place: rows [first, end) of each listed store part, in order."""

    pieces: tuple[tuple[str, int, int], ...]

    @property
    def rows(self) -> int:
        return sum(end - first for _, first, end in self.pieces)


@dataclass
class Embeddings:
    """A source's embeddings, per work unit: a float32 `.npy` in the stage's work dir, or a
    `StoreSlice` of OUT/embeddings read in place (`stored_embeddings`). Unit u holds stream
    positions `offsets[u]:offsets[u + 1]` (row i = the i-th row streamed)."""

    paths: list[str | StoreSlice]
    rows: np.ndarray  # int64 ordinals of every row, ascending
    offsets: np.ndarray  # int64, units + 1
    dim: int
    model: str
    version: str
    reused: int
    computed: int
    reused_from_output: bool  # every row came from OUT/embeddings: nothing new to publish
    parts_dir: str | None = None  # the units' store-format parts, when they were written
    sample: tuple[np.ndarray, np.ndarray] | None = None  # (positions, vectors) gathered while reading in place
    fit: dict | None = None  # minilm-fitted: the fit's sample size, fingerprint and whether it was cached

    @property
    def num_rows(self) -> int:
        return len(self.rows)

    @property
    def read_in_place(self) -> bool:
        return any(isinstance(p, StoreSlice) for p in self.paths)

    def unit_vectors(self, unit: int) -> np.ndarray:
        return load_vectors(self.paths[unit], self.dim)

    def gather(self, positions: np.ndarray, map: Callable | None = None) -> np.ndarray:
        """Vectors at ascending stream positions (a k-means sample), read unit by unit; with
        `map` (ctx.map), one task per unit reads them where the vectors are, so the driver
        receives the sample, not the units' files (workers on other machines, curate.io.mirror)."""
        positions = np.asarray(positions, dtype=np.int64)
        if self.sample is not None and np.array_equal(positions, self.sample[0]):
            return self.sample[1]
        out = np.empty((len(positions), self.dim), dtype=np.float32)
        cuts = np.searchsorted(positions, self.offsets)
        jobs = [
            (unit, self.paths[unit], positions[cuts[unit] : cuts[unit + 1]] - self.offsets[unit])
            for unit in range(len(self.paths))
            if cuts[unit + 1] > cuts[unit]
        ]
        read = _UnitRows(self.dim)
        found = map(read, jobs) if map is not None else [read(job) for job in jobs]
        for (unit, _, _), vectors in zip(jobs, found):
            out[cuts[unit] : cuts[unit + 1]] = vectors
        return out


@dataclass(frozen=True)
class _UnitRows:
    """A unit's vectors at the given local positions."""

    dim: int

    def __call__(self, job: tuple[int, str | StoreSlice, np.ndarray]) -> np.ndarray:
        _, path, local = job
        return np.ascontiguousarray(load_vectors(path, self.dim)[local])


def load_vectors(path: str | StoreSlice, dim: int) -> np.ndarray:
    """A unit's vectors: a `.npy` memory-mapped read-only (an empty unit has no file to map),
    a `StoreSlice` read into memory (stream it with `vector_blocks` where memory matters)."""
    if isinstance(path, StoreSlice):
        blocks = list(vector_blocks(path, dim, _READ_ROWS))
        return np.concatenate(blocks) if blocks else np.zeros((0, dim), np.float32)
    vectors = np.load(mirror.ensure(path), mmap_mode="r")
    return vectors if vectors.shape[0] else np.zeros((0, dim), np.float32)


def vector_blocks(path: str | StoreSlice, dim: int, rows: int) -> Iterator[np.ndarray]:
    """A unit's vectors as consecutive float32 blocks of `rows` rows (the last may be shorter),
    so a pass over a unit holds one block, whichever way the unit is stored."""
    if isinstance(path, StoreSlice):
        arrays = (_flat_vectors(batch.column(0), dim) for batch in _store_batches(path, ["embedding"], _READ_ROWS))
        yield from _rechunk(arrays, rows)
        return
    vectors = load_vectors(path, dim)
    for start in range(0, len(vectors), rows):
        yield vectors[start : start + rows]


def read_store_meta(directory: Path) -> dict | None:
    meta_path = mirror.ensure(Path(directory) / META_NAME)
    if not meta_path.is_file():
        return None
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) and meta.get("format") == STORE_FORMAT else None


def resolve_model(model: str, output_dir: Path) -> str:
    """'' means: whatever this run already embedded with, else the default model."""
    if model:
        return model
    meta = read_store_meta(Path(output_dir) / EMBEDDINGS_DIR)
    return meta["model"] if meta else DEFAULT_MODEL


def embeddings_for(
    source: BatchSource,
    ctx: StageContext,
    model: str,
    *,
    cache: str = "",
    window: int = 4096,
    encode_batch: int = 64,
    write_parts: bool = False,
    keep_vectors: bool = True,
    device: str = "auto",
    backend: str = "torch",
    dtype: str = "auto",
    fit_rows: int | None = None,
) -> Embeddings:
    """Embeddings for every row of `source`, one task per work unit: reused from the store(s)
    where the rule allows, computed otherwise. `write_parts` also writes each unit's
    store-format parts (for `publish`); `keep_vectors=False` drops the `.npy` files once the
    parts are written (the embed stage needs nothing else). minilm-fitted is fitted first on
    about `fit_rows` sampled rows (or found in the cache: curate.embeddings.fitted)."""
    model = resolve_model(model, ctx.output_dir)
    try:
        validate_model_name(model)
    except ValueError as exc:
        raise UsageError(
            str(exc), fix='set model = "minilm", "minilm-static", "minilm-fitted", "hashing" or "column:NAME"'
        ) from None
    work = Path(ctx.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    units = ctx.units(source)
    column = column_of(model)
    version = model_version(model) if column is None else model
    fitted, fit = "", None
    if model == FITTED_MODEL:
        from curate.embeddings.fitted import DEFAULT_FIT_ROWS, ensure_fitted, fitted_version

        encode = EncodeTexts(ctx.threads, backend, device)
        directory, fit = ensure_fitted(units, ctx, fit_rows or DEFAULT_FIT_ROWS, encode, backend)
        fitted, version = str(directory), fitted_version(fit["fingerprint"])
    if column is not None:
        if column not in source.schema.names:
            raise UsageError(
                f"no column {column!r} for model {model!r} (columns: {', '.join(n for n in source.schema.names if not n.startswith('__'))})",
                fix="name an existing vector column: --model column:NAME",
            )
        task: EmbedUnit | ColumnUnit = ColumnUnit(column, ctx, write_parts, keep_vectors)
    else:
        own_store = Path(ctx.output_dir) / EMBEDDINGS_DIR
        stores = [own_store] + ([_store_dir(Path(cache))] if cache else [])
        usable = [s for s in stores if _usable(read_store_meta(s), model, version)]
        index = _build_index(usable, ctx) if usable else None
        from_output = 0 if own_store in usable else -1
        if index is None:  # every row is computed: workers need the model's files
            build_model_files_once(model, backend, ctx.executor)
        task = EmbedUnit(
            model,
            ctx,
            index,
            tuple(str(s) for s in usable),
            from_output,
            window,
            encode_batch,
            write_parts,
            keep_vectors,
            device,
            backend,
            dtype,
            fitted,
        )
    done = ctx.map(task, units, label=f"{ctx.name}: embedding", sizes=[u.rows for u in units])
    dims = sorted({d.dim for d in done if len(d.rows)})
    if len(dims) > 1:
        raise InputError(
            f"embedding column {column!r} has vectors of length {dims[0]} and {dims[1]}",
            fix="give every row a vector of the same length",
        )
    dim = dims[0] if dims else (DEFAULT_DIM if column is None else 0)
    rows = np.concatenate([d.rows for d in done]) if done else np.empty(0, np.int64)
    offsets = np.concatenate([[0], np.cumsum([len(d.rows) for d in done], dtype=np.int64)]).astype(np.int64)
    reused = sum(d.reused for d in done)
    from_output = sum(d.from_output for d in done)
    n = len(rows)
    return Embeddings(
        paths=[str(_vectors_path(work, u.index)) for u in units],
        rows=rows,
        offsets=offsets,
        dim=dim,
        model=model,
        version=version,
        reused=reused,
        computed=n - reused,
        reused_from_output=from_output == n and n > 0,
        parts_dir=str(work / _PARTS) if write_parts else None,
        fit=fit,
    )


def stored_embeddings(
    source: BatchSource, ctx: StageContext, model: str, sample: np.ndarray | None = None
) -> Embeddings | None:
    """The source's embeddings read in place from OUT/embeddings, or None when the store does not
    hold exactly the source's rows in its order (then `embeddings_for` looks rows up by id).

    One task per work unit checks that its rows are the store's rows at the same positions (same
    ids, same text hashes: the reuse rule) and returns its rows of `sample` (ascending stream
    positions, e.g. a k-means sample), which `Embeddings.gather` then serves. Measured on 675k
    short texts (hashing, d = 384, 16 units, Dask, best of 4 alternated runs): looking rows up
    by id and copying them into `.npy` files (1 GB written) took 3.0 s of task CPU on 1 worker
    and 4.7 s on 2, whose tasks also waited on the disk; checking in place and streaming the
    vectors to the assignment take 4.7 s of CPU on 1 worker and 4.9 s on 2 (the vectors are
    decoded twice, but nothing is written), so 2 workers now pay almost nothing for sharing."""
    try:
        model = resolve_model(model, ctx.output_dir)
        validate_model_name(model)
    except ValueError:
        return None  # embeddings_for says what is wrong with the name
    if column_of(model) is not None:
        return None  # user vectors are always read from the input
    store = Path(ctx.output_dir) / EMBEDDINGS_DIR
    meta = read_store_meta(store)
    version = model_version(model)
    if model == FITTED_MODEL and meta is not None and str(meta.get("version", "")).startswith(version + "-"):
        version = meta["version"]  # the store's own fitted table: its rows are checked one by one below
    if not _usable(meta, model, version):
        return None
    part_rows = [(str(part), mirror.read_metadata(part).num_rows) for part in list_parts(store)]
    units = ctx.units(source)
    unit_rows = [u.rows for u in units]
    total = sum(unit_rows)
    if total == 0 or total != sum(rows for _, rows in part_rows):
        return None
    offsets = np.concatenate([[0], np.cumsum(unit_rows)]).astype(np.int64)
    slices = _store_slices(part_rows, offsets)
    dim = int(meta["dim"])
    sample = np.asarray(sample if sample is not None else np.empty(0), dtype=np.int64)
    cuts = np.searchsorted(sample, offsets)
    jobs = [(unit, slices[u], sample[cuts[u] : cuts[u + 1]] - offsets[u]) for u, unit in enumerate(units)]
    found = ctx.map(
        StoredUnit(ctx.id_column, ctx.text_column, dim),
        jobs,
        label=f"{ctx.name}: checking stored vectors",
        sizes=unit_rows,
    )
    if any(f is None for f in found):
        return None
    rows = np.concatenate([f[0] for f in found])
    gathered = np.concatenate([f[1] for f in found]) if found else np.zeros((0, dim), np.float32)
    return Embeddings(
        paths=list(slices),
        rows=rows,
        offsets=offsets,
        dim=dim,
        model=model,
        version=version,
        reused=total,
        computed=0,
        reused_from_output=True,
        sample=(sample, gathered),
    )


def _store_slices(part_rows: list[tuple[str, int]], offsets: np.ndarray) -> list[StoreSlice]:
    """Each unit's stream positions [offsets[u], offsets[u + 1]) as row ranges of the store's parts."""
    starts = np.concatenate([[0], np.cumsum([rows for _, rows in part_rows])]).astype(np.int64)
    slices = []
    for lo, hi in zip(offsets[:-1], offsets[1:]):
        pieces = []
        for p in range(int(np.searchsorted(starts, lo, side="right")) - 1, len(part_rows)):
            if starts[p] >= hi:
                break
            first, end = max(lo, starts[p]) - starts[p], min(hi, starts[p + 1]) - starts[p]
            if end > first:
                pieces.append((part_rows[p][0], int(first), int(end)))
        slices.append(StoreSlice(tuple(pieces)))
    return slices


def publish(emb: Embeddings, output_dir: Path) -> Path:
    """Rename the units' parts into OUT/embeddings in unit (input) order, write
    embeddings.json last, and put the directory in place of an older store."""
    if emb.parts_dir is None:
        raise RuntimeError("publish needs embeddings computed with write_parts=True")
    final = Path(output_dir) / EMBEDDINGS_DIR
    tmp = Path(output_dir) / f".{EMBEDDINGS_DIR}.tmp"
    mirror.remove(tmp)
    tmp.mkdir(parents=True)
    index = 0
    for unit in range(len(emb.paths)):
        for part in list_parts(Path(emb.parts_dir) / f"{unit:05d}"):
            if mirror.read_metadata(part).num_rows == 0:
                continue
            mirror.move(part, tmp / f"part-{index:05d}.parquet")
            index += 1
    if index == 0:  # no rows: one empty part still carries the schema
        PartWriter(tmp, schema=store_schema(emb.dim)).close()
    atomic_write_json(
        tmp / META_NAME,
        {"format": STORE_FORMAT, "model": emb.model, "version": emb.version, "dim": emb.dim, "rows": emb.num_rows},
    )
    replace_dir(tmp, final)
    return final


def publish_if_absent(emb: Embeddings, ctx: StageContext) -> bool:
    """A stage that had to embed leaves the vectors in OUT/embeddings unless a store is there."""
    if not emb.computed or emb.parts_dir is None or read_store_meta(Path(ctx.output_dir) / EMBEDDINGS_DIR) is not None:
        return False
    publish(emb, ctx.output_dir)
    return True


def needs_own_store(ctx: StageContext) -> bool:
    """Whether a stage that embeds should write parts to publish (no store in OUT yet)."""
    return read_store_meta(Path(ctx.output_dir) / EMBEDDINGS_DIR) is None


# ---------------------------------------------------------------------------------------
# The per-unit tasks.


@dataclass(frozen=True)
class UnitEmbedded:
    """What one unit's task reports back: its ordinals and counts (the vectors are on disk)."""

    rows: np.ndarray
    dim: int
    reused: int
    from_output: int


@dataclass(frozen=True)
class EncodeTexts:
    """MiniLM vectors of one chunk of minilm-fitted's sample (length-sorted inside, returned in order)."""

    threads: int
    backend: str
    device: str

    def __call__(self, texts: pa.Array) -> np.ndarray:
        embedder = load_embedder("minilm", threads=self.threads, backend=self.backend, device=self.device)
        order = np.argsort(pc.utf8_length(texts.fill_null("")).to_numpy(zero_copy_only=False), kind="stable")
        out = np.empty((len(texts), embedder.dim), np.float32)
        out[order] = embedder.encode(texts.take(pa.array(order)))
        return out


@dataclass(frozen=True)
class EmbedUnit:
    """Embed one unit: stored vectors where the reuse rule allows, the model for the rest.
    Pure in its inputs and written under unique temp names, so a re-run is harmless."""

    model: str
    ctx: StageContext
    index_path: str | None
    stores: tuple[str, ...]
    own_store: int  # position of OUT/embeddings in `stores`, -1 if not usable
    window: int
    encode_batch: int
    write_parts: bool
    keep_vectors: bool
    device: str = "auto"
    backend: str = "torch"
    dtype: str = "auto"
    fitted: str = ""

    def __call__(self, unit) -> UnitEmbedded:
        ctx = self.ctx
        rows, ids, text_hash = _scan_texts(unit, ctx.id_column, ctx.text_column)
        hits = _lookup(self.index_path, ids, text_hash)
        missing = (
            np.setdiff1d(np.arange(len(rows)), hits["pos"].to_numpy(), assume_unique=True)
            if hits.height
            else np.arange(len(rows))
        )
        embedder = (
            load_embedder(
                self.model,
                threads=ctx.threads,
                encode_batch=self.encode_batch,
                device=self.device,
                backend=self.backend,
                dtype=self.dtype,
                fitted=self.fitted,
            )
            if len(missing)
            else None
        )
        dim = embedder.dim if embedder is not None else (_store_dim(self.stores[0]) if self.stores else DEFAULT_DIM)
        work = Path(ctx.work_dir)
        with _unit_matrix(work, unit.index, len(rows), dim, keep=self.keep_vectors) as matrix:
            _fill_from_stores(self.stores, hits, matrix)
            if embedder is not None:
                _compute_missing(unit, ctx, embedder, missing, matrix, self.window)
            if self.write_parts:
                _write_unit_parts(work, unit.index, ids, matrix, text_hash)
        from_output = int((hits["store"] == self.own_store).sum()) if hits.height and self.own_store >= 0 else 0
        return UnitEmbedded(rows, dim, hits.height, from_output)


@dataclass(frozen=True)
class ColumnUnit:
    """Read and check one unit's user vectors (`column:NAME`)."""

    column: str
    ctx: StageContext
    write_parts: bool
    keep_vectors: bool

    def __call__(self, unit) -> UnitEmbedded:
        ctx = self.ctx
        rows, ids, chunks = [], [], []
        dim = None
        for batch in unit.batches(columns=[ctx.id_column, self.column]):
            batch_ids = ids_as_strings(batch.column(ctx.id_column))
            vectors = _vectors_of(batch.column(self.column), batch_ids, self.column)
            if dim is None:
                dim = vectors.shape[1]
            elif vectors.shape[1] != dim:
                raise InputError(
                    f"embedding column {self.column!r} has vectors of length {vectors.shape[1]} and {dim}",
                    fix="give every row a vector of the same length",
                )
            rows.append(row_ordinals(batch))
            ids.append(batch_ids)
            chunks.append(vectors)
        all_rows = np.concatenate(rows) if rows else np.empty(0, np.int64)
        all_ids = pa.concat_arrays(ids) if ids else pa.array([], pa.string())
        work = Path(ctx.work_dir)
        with _unit_matrix(work, unit.index, len(all_rows), dim or 0) as matrix:
            offset = 0
            for vectors in chunks:
                matrix[offset : offset + len(vectors)] = vectors
                offset += len(vectors)
            if self.write_parts:
                _write_unit_parts(work, unit.index, all_ids, matrix, np.zeros(len(all_rows), np.uint64))
        if not self.keep_vectors:
            _vectors_path(work, unit.index).unlink(missing_ok=True)
        return UnitEmbedded(all_rows, dim or 0, 0, 0)


@dataclass(frozen=True)
class StoredUnit:
    """Check that one unit's rows are the store's rows in its `StoreSlice` (same ids, same text
    hashes) and gather its rows of the sample; None when they are not."""

    id_column: str
    text_column: str
    dim: int

    def __call__(self, job: tuple[BatchSource, StoreSlice, np.ndarray]) -> tuple[np.ndarray, np.ndarray] | None:
        unit, where, sample = job
        rows, ids, text_hash = _scan_texts(unit, self.id_column, self.text_column)
        if len(rows) != where.rows:
            return None
        if len(rows):
            stored = pa.Table.from_batches(list(_store_batches(where, ["id", "text_hash"], _READ_ROWS)))
            stored_ids = stored.column("id").combine_chunks()
            if stored_ids.type != ids.type:
                stored_ids = stored_ids.cast(ids.type)
            if not stored_ids.equals(ids) or not np.array_equal(stored.column("text_hash").to_numpy(), text_hash):
                return None
        gathered = np.empty((len(sample), self.dim), np.float32)
        if len(sample):
            start = 0
            for block in vector_blocks(where, self.dim, _READ_ROWS):
                lo, hi = np.searchsorted(sample, [start, start + len(block)])
                gathered[lo:hi] = block[sample[lo:hi] - start]
                start += len(block)
                if hi == len(sample):
                    break
        return rows, gathered


# ---------------------------------------------------------------------------------------


def _store_batches(where: StoreSlice, columns: list[str], batch_rows: int) -> Iterator[pa.RecordBatch]:
    """The slice's rows of the store's `columns`, in order, reading only the row groups they are in."""
    for path, first, end in where.pieces:
        parquet = mirror.parquet_file(path)
        metadata = parquet.metadata
        starts = np.concatenate(
            [[0], np.cumsum([metadata.row_group(g).num_rows for g in range(metadata.num_row_groups)])]
        ).astype(np.int64)
        groups = range(
            int(np.searchsorted(starts, first, side="right")) - 1, int(np.searchsorted(starts, end, side="left"))
        )
        position = int(starts[groups.start])
        for batch in parquet.iter_batches(
            batch_size=batch_rows, row_groups=groups, columns=columns, use_threads=False
        ):
            lo, hi = max(first, position), min(end, position + batch.num_rows)
            if hi > lo:
                yield batch.slice(lo - position, hi - lo)
            position += batch.num_rows
            if position >= end:
                break


def _flat_vectors(values: pa.Array, dim: int) -> np.ndarray:
    """(rows, dim) float32 view of a fixed-size-list column (no copy)."""
    return values.flatten().to_numpy(zero_copy_only=False).reshape(len(values), dim)


def _rechunk(arrays: Iterator[np.ndarray], rows: int) -> Iterator[np.ndarray]:
    """The rows of `arrays`, in order, as blocks of exactly `rows` rows (the last may be shorter)."""
    pending: list[np.ndarray] = []
    have = 0
    for array in arrays:
        while len(array):
            take = min(rows - have, len(array))
            pending.append(array[:take])
            have += take
            array = array[take:]
            if have == rows:
                yield pending[0] if len(pending) == 1 else np.concatenate(pending)
                pending, have = [], 0
    if have:
        yield pending[0] if len(pending) == 1 else np.concatenate(pending)


def _vectors_path(work: Path, unit: int) -> Path:
    return Path(work) / _VECTORS / f"{unit:05d}.npy"


@contextmanager
def _unit_matrix(work: Path, unit: int, m: int, dim: int, keep: bool = True) -> Iterator[np.ndarray]:
    """A unit's (m, dim) float32 `.npy`, memory-mapped for writing under a unique temp name and
    renamed into place when the block succeeds (bounded memory whatever the unit size). When
    the vectors are not kept (the embed stage only needs the store parts) and they fit in
    _IN_MEMORY_BYTES, a plain array instead: no file written and deleted (measured on 500k
    short texts, hashing, 2 cores, best of 3: the embed stage with --jobs 2 took 7.6 s with
    the file and 6.8 s without; --jobs 1 11.5-11.7 s either way)."""
    if not keep and m * dim * 4 <= _IN_MEMORY_BYTES:
        yield np.zeros((m, dim), np.float32)
        return
    with atomic_path(_vectors_path(work, unit), unique=True) as tmp:
        if m == 0 or dim == 0:
            matrix = np.zeros((m, dim), np.float32)
            yield matrix
            with open(tmp, "wb") as handle:
                np.save(handle, matrix)
        else:
            matrix = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(m, dim))
            yield matrix
            matrix.flush()
    if not keep:
        mirror.remove(_vectors_path(work, unit))


def _write_unit_parts(work: Path, unit: int, ids: pa.Array, matrix: np.ndarray, text_hash: np.ndarray) -> None:
    """The unit's rows in store format, under `parts/NNNNN/`, renamed into place when whole."""
    from curate.io.parts import publish_attempt

    parts = Path(work) / _PARTS
    attempt = parts / f".{unit:05d}.{uuid.uuid4().hex}.tmp"
    dim = matrix.shape[1]
    schema = store_schema(dim)
    try:
        with PartWriter(attempt, schema=schema, compression="lz4", options=STORE_WRITE_OPTIONS) as writer:
            for start in range(0, len(ids), _WRITE_ROWS):
                stop = min(start + _WRITE_ROWS, len(ids))
                flat = pa.array(np.ascontiguousarray(matrix[start:stop]).ravel(), pa.float32())
                writer.write(
                    pa.RecordBatch.from_arrays(
                        [
                            ids.slice(start, stop - start),
                            pa.FixedSizeListArray.from_arrays(flat, dim),
                            pa.array(text_hash[start:stop], pa.uint64()),
                        ],
                        schema=schema,
                    )
                )
    except BaseException:
        shutil.rmtree(attempt, ignore_errors=True)
        raise
    publish_attempt(attempt, parts / f"{unit:05d}")


def _store_dir(path: Path) -> Path:
    """Accept either an output directory or its embeddings/ directory."""
    return path if mirror.ensure(path / META_NAME).is_file() else path / EMBEDDINGS_DIR


def _usable(meta: dict | None, model: str, version: str) -> bool:
    if meta is None or meta.get("model") != model:
        return False
    return meta.get("version") == version or version.endswith("-unknown")


def _store_dim(store: str) -> int:
    meta = read_store_meta(Path(store)) or {}
    return int(meta.get("dim", DEFAULT_DIM))


def _index_part(part: str) -> np.ndarray:
    """(id hash high, id hash low, text hash) of every row of one store part."""
    table = mirror.parquet_file(part).read(columns=["id", "text_hash"])
    keys = np.empty((table.num_rows, 3), np.uint64)
    if table.num_rows:
        keys[:, :2] = hash128(table.column("id"))
        keys[:, 2] = table.column("text_hash").to_numpy()
    return keys


def _build_index(stores: list[Path], ctx: StageContext) -> str | None:
    """One lookup table over the usable stores: key (id hash, text hash) -> (store, part,
    row), the first store (and within it the first row) winning; 40 bytes a stored row, built
    from the stores' id and text-hash columns only, one task per part."""
    parts = [(s, p, part) for s, store in enumerate(stores) for p, part in enumerate(list_parts(store))]
    if not parts:
        return None
    keys = ctx.map(_index_part, [str(part) for _, _, part in parts], label=f"{ctx.name}: reading the store index")
    frames = [
        pl.DataFrame(
            {
                "id_hi": k[:, 0],
                "id_lo": k[:, 1],
                "text_hash": k[:, 2],
                "store": np.full(len(k), s, np.int32),
                "part": np.full(len(k), p, np.int32),
                "row": np.arange(len(k), dtype=np.int64),
            }
        )
        for (s, p, _), k in zip(parts, keys)
    ]
    index = pl.concat(frames).unique(subset=["id_hi", "id_lo", "text_hash"], keep="first", maintain_order=True)
    path = Path(ctx.work_dir) / _INDEX
    with atomic_path(path, unique=True) as tmp:
        index.write_ipc(tmp)
    return str(path)


def _lookup(index_path: str | None, ids: pa.Array, text_hash: np.ndarray) -> pl.DataFrame:
    """Stored (store, part, row) of the rows whose (id, text hash) is in the index, with `pos`
    their position in the unit, sorted by where they are stored."""
    empty = pl.DataFrame(schema={"pos": pl.Int64, "store": pl.Int32, "part": pl.Int32, "row": pl.Int64})
    if index_path is None or len(ids) == 0:
        return empty
    key = hash128(ids)
    wanted = pl.DataFrame(
        {"id_hi": key[:, 0], "id_lo": key[:, 1], "text_hash": text_hash, "pos": np.arange(len(ids), dtype=np.int64)}
    )
    index = pl.read_ipc(mirror.ensure(index_path))
    return (
        wanted.join(index, on=["id_hi", "id_lo", "text_hash"], how="inner")
        .select("pos", "store", "part", "row")
        .sort("store", "part", "row")
    )


def _fill_from_stores(stores: tuple[str, ...], hits: pl.DataFrame, matrix: np.ndarray) -> None:
    """Copy the hit rows' stored vectors into `matrix`, reading only the row groups they are in."""
    if hits.height == 0:
        return
    for (store, part), group in hits.group_by(["store", "part"], maintain_order=True):
        path = list_parts(stores[store])[part]
        parquet = mirror.parquet_file(path)
        sizes = [parquet.metadata.row_group(g).num_rows for g in range(parquet.metadata.num_row_groups)]
        starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        stored = group.get_column("row").to_numpy()
        target = group.get_column("pos").to_numpy()
        needed = np.unique(np.searchsorted(starts, stored, side="right") - 1)
        table = parquet.read_row_groups(needed.tolist(), columns=["embedding"])
        values = (
            table.column("embedding")
            .combine_chunks()
            .values.to_numpy(zero_copy_only=False)
            .reshape(table.num_rows, -1)
        )
        # where each needed row group starts in `values`
        read_start = np.zeros(len(starts) - 1, np.int64)
        read_start[needed] = np.concatenate([[0], np.cumsum(np.asarray(sizes)[needed])[:-1]])
        group_of = np.searchsorted(starts, stored, side="right") - 1
        matrix[target] = values[read_start[group_of] + stored - starts[group_of]]


def _scan_texts(source: BatchSource, id_column: str, text_column: str) -> tuple[np.ndarray, pa.Array, np.ndarray]:
    """Ordinals, string ids and 64-bit text hashes of every row, in stream order."""
    rows, ids, hashes = [], [], []
    for batch in source.batches(columns=[id_column, text_column]):
        rows.append(row_ordinals(batch))
        ids.append(ids_as_strings(batch.column(id_column)))
        hashes.append(hash128(batch.column(text_column))[:, 1])
    if not rows:
        return np.empty(0, np.int64), pa.array([], pa.string()), np.empty(0, np.uint64)
    ordinals = np.concatenate(rows)
    if len(ordinals) > 1 and not (np.diff(ordinals) > 0).all():
        raise RuntimeError("source rows are not in ascending ordinal order")
    return ordinals, pa.concat_arrays(ids), np.concatenate(hashes)


def _compute_missing(
    source: BatchSource, ctx: StageContext, embedder, missing: np.ndarray, matrix: np.ndarray, window: int
) -> None:
    """Embed the rows at `missing` positions, a length-sorted window at a time (padding waste
    is what makes transformer batches slow), writing each vector back to its row."""
    offset = 0
    with ctx.progress.task(f"{ctx.name}: embedding ({embedder.name})", total=len(missing)) as bar:
        for batch in source.batches(columns=[ctx.text_column]):
            n = batch.num_rows
            lo, hi = np.searchsorted(missing, [offset, offset + n])
            local = missing[lo:hi] - offset
            if len(local):
                texts = batch.column(ctx.text_column)
                texts = texts.combine_chunks() if isinstance(texts, pa.ChunkedArray) else texts
                texts = texts.take(pa.array(local)) if len(local) < n else texts
                for start in range(0, len(local), window):
                    chunk = texts.slice(start, window)
                    order = np.argsort(
                        pc.utf8_length(chunk.fill_null("")).to_numpy(zero_copy_only=False), kind="stable"
                    )
                    vectors = embedder.encode(chunk.take(pa.array(order)))
                    matrix[offset + local[start + order]] = vectors
                    bar.advance(len(chunk))
            offset += n


def _vectors_of(values: pa.Array | pa.ChunkedArray, ids: pa.Array, column: str) -> np.ndarray:
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    kind = values.type
    if not (pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind)) or not (
        pa.types.is_floating(kind.value_type) or pa.types.is_integer(kind.value_type)
    ):
        raise InputError(
            f"embedding column {column!r} has type {kind}",
            fix="store vectors as list<float32> (or fixed_size_list) per row",
        )
    if values.null_count:
        bad = ids.filter(pc.is_null(values))[0].as_py()
        raise InputError(
            f"embedding column {column!r} is null for id {bad!r}",
            fix="give every row a vector, or drop rows without one",
        )
    n = len(values)
    if n == 0:
        return np.zeros((0, kind.list_size if pa.types.is_fixed_size_list(kind) else 0), np.float32)
    lengths = pc.list_value_length(values).to_numpy(zero_copy_only=False)
    if (lengths != lengths[0]).any() or lengths[0] == 0:
        bad = int(np.nonzero(lengths != lengths[0])[0][0]) if (lengths != lengths[0]).any() else 0
        raise InputError(
            f"embedding column {column!r}: id {ids[bad].as_py()!r} has a vector of length {lengths[bad]}, the first row {lengths[0]}",
            fix="give every row a non-empty vector of the same length",
        )
    flat = pc.list_flatten(values)
    if flat.null_count:
        raise InputError(
            f"embedding column {column!r} has null elements inside vectors", fix="replace null elements with numbers"
        )
    vectors = flat.to_numpy(zero_copy_only=False).astype(np.float32).reshape(n, int(lengths[0]))
    finite = np.isfinite(vectors).all(axis=1)
    if not finite.all():
        raise InputError(
            f"embedding column {column!r}: id {ids[int(np.nonzero(~finite)[0][0])].as_py()!r} has NaN or infinite values",
            fix="replace non-finite values",
        )
    normalized = normalize_rows(vectors)
    zero = ~normalized.any(axis=1)
    if zero.any():
        raise InputError(
            f"embedding column {column!r}: id {ids[int(np.nonzero(zero)[0][0])].as_py()!r} is the zero vector",
            fix="a zero vector has no direction; drop the row or give it a real vector",
        )
    return normalized
