"""Embed stage, and the embedding store every embedding-based stage reads through.

Store layout, `OUT/embeddings/`: `part-NNNNN.parquet` with `id`, `embedding`
(fixed_size_list<float32>, L2-normalized) and `text_hash` (xxh3-64 of the text), plus
`embeddings.json` (model, version, dim, rows) written last, so a directory without it is
unfinished and ignored.

Reuse rule: a row's stored embedding is reused when the store was made by the same model
(name and version) and holds a row with the same id and the same text hash; every other row
is embedded. So a resumed run, a later stage of the same run, or a later run pointed at an
earlier store (`cache = "OLD_OUT"`) embeds only rows it has not seen, and an edited text is
never served a stale vector. `column:NAME` vectors are always read from the input.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from curate.embedders import (
    DEFAULT_MODEL,
    column_of,
    describe,
    load_embedder,
    model_version,
    normalize_rows,
    validate_backend,
    validate_device,
    validate_dtype,
    validate_model_name,
)
from curate.errors import InputError, UsageError
from curate.ledger import empty_ledger, ids_as_strings
from curate.manifest import atomic_write_json
from curate.metrics.exact import hash128
from curate.metrics.hashing_embed import DEFAULT_DIM
from curate.shards import PartWriter, iter_part_batches, list_parts
from curate.stages.base import BatchSource, Stage, StageContext, row_ordinals

EMBEDDINGS_DIR = "embeddings"
META_NAME = "embeddings.json"
STORE_FORMAT = 1
_WRITE_ROWS = 32_768


@dataclass
class Embeddings:
    """Embeddings aligned with a source's stream order (row i = the i-th row streamed)."""

    matrix: np.ndarray  # (n, dim) float32 memmap in the stage's work dir
    rows: np.ndarray  # int64 ordinals, ascending
    ids: pa.Array  # string ids
    text_hash: np.ndarray  # uint64, zeros for column: models
    model: str
    version: str
    reused: int
    computed: int
    reused_from_output: bool  # every row came from OUT/embeddings: nothing new to publish

    @property
    def dim(self) -> int:
        return int(self.matrix.shape[1])


def read_store_meta(directory: Path) -> dict | None:
    meta_path = Path(directory) / META_NAME
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
    device: str = "auto",
    backend: str = "torch",
    dtype: str = "auto",
) -> Embeddings:
    """Embeddings for every row of `source`: reused from the store(s) where the rule allows,
    computed otherwise, in a float32 memmap in `ctx.work_dir` (bounded memory at any size)."""
    model = resolve_model(model, ctx.output_dir)
    try:
        validate_model_name(model)
    except ValueError as exc:
        raise UsageError(str(exc), fix="set model = \"minilm\", \"minilm-static\", \"hashing\" or \"column:NAME\"") from None
    column = column_of(model)
    if column is not None:
        return _column_embeddings(source, ctx, model, column)

    rows, ids, text_hash = _scan_texts(source, ctx)
    n, dim, version = len(rows), DEFAULT_DIM, model_version(model)
    matrix = _new_matrix(ctx, n, dim)
    filled = np.zeros(n, dtype=bool)
    own_store = Path(ctx.output_dir) / EMBEDDINGS_DIR
    stores = [own_store] + ([_store_dir(Path(cache))] if cache else [])
    from_output = 0
    for index, store in enumerate(stores):
        if filled.all():
            break
        got = _fill_from_store(store, model, version, ids, text_hash, filled, matrix)
        if index == 0:
            from_output = got
    reused = int(filled.sum())
    missing = np.nonzero(~filled)[0]
    if len(missing):
        embedder = load_embedder(model, threads=ctx.workers, encode_batch=encode_batch, device=device, backend=backend, dtype=dtype)
        _compute_missing(source, ctx, embedder, missing, matrix, window)
    if isinstance(matrix, np.memmap):  # an empty input gets a plain array: nothing to flush
        matrix.flush()
    return Embeddings(matrix, rows, ids, text_hash, model, version, reused, len(missing), from_output == n and n > 0)


def publish(emb: Embeddings, output_dir: Path) -> Path:
    """Write OUT/embeddings from `emb` (atomically replacing an older store)."""
    final = Path(output_dir) / EMBEDDINGS_DIR
    tmp = Path(output_dir) / f".{EMBEDDINGS_DIR}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    schema = pa.schema(
        [
            pa.field("id", pa.string(), nullable=False),
            pa.field("embedding", pa.list_(pa.float32(), emb.dim)),
            pa.field("text_hash", pa.uint64()),
        ]
    )
    with PartWriter(tmp, schema=schema, compression="lz4") as writer:
        for start in range(0, len(emb.rows), _WRITE_ROWS):
            stop = min(start + _WRITE_ROWS, len(emb.rows))
            flat = pa.array(np.ascontiguousarray(emb.matrix[start:stop]).ravel(), pa.float32())
            writer.write(
                pa.RecordBatch.from_arrays(
                    [emb.ids.slice(start, stop - start), pa.FixedSizeListArray.from_arrays(flat, emb.dim), pa.array(emb.text_hash[start:stop])],
                    schema=schema,
                )
            )
    atomic_write_json(tmp / META_NAME, {"format": STORE_FORMAT, "model": emb.model, "version": emb.version, "dim": emb.dim, "rows": len(emb.rows)})
    old = Path(output_dir) / f".{EMBEDDINGS_DIR}.old"
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def publish_if_absent(emb: Embeddings, ctx: StageContext) -> bool:
    """A stage that had to embed leaves the vectors in OUT/embeddings unless a store is there."""
    if read_store_meta(Path(ctx.output_dir) / EMBEDDINGS_DIR) is not None:
        return False
    publish(emb, ctx.output_dir)
    return True


# ---------------------------------------------------------------------------------------


def _store_dir(path: Path) -> Path:
    """Accept either an output directory or its embeddings/ directory."""
    return path if (path / META_NAME).is_file() else path / EMBEDDINGS_DIR


def _new_matrix(ctx: StageContext, n: int, dim: int) -> np.ndarray:
    Path(ctx.work_dir).mkdir(parents=True, exist_ok=True)
    path = Path(ctx.work_dir) / f"embeddings-{ctx.name}.f32"
    if n == 0:
        return np.zeros((0, dim), dtype=np.float32)
    return np.memmap(path, dtype=np.float32, mode="w+", shape=(n, dim))


def _scan_texts(source: BatchSource, ctx: StageContext) -> tuple[np.ndarray, pa.Array, np.ndarray]:
    """Ordinals, string ids and 64-bit text hashes of every row, in stream order."""
    rows, ids, hashes = [], [], []
    for batch in source.batches(columns=[ctx.id_column, ctx.text_column]):
        rows.append(row_ordinals(batch))
        ids.append(ids_as_strings(batch.column(ctx.id_column)))
        hashes.append(hash128(batch.column(ctx.text_column))[:, 1])
    if not rows:
        return np.empty(0, np.int64), pa.array([], pa.string()), np.empty(0, np.uint64)
    ordinals = np.concatenate(rows)
    if len(ordinals) > 1 and not (np.diff(ordinals) > 0).all():
        raise RuntimeError("source rows are not in ascending ordinal order")
    return ordinals, pa.concat_arrays(ids), np.concatenate(hashes)


def _fill_from_store(store: Path, model: str, version: str, ids: pa.Array, text_hash: np.ndarray, filled: np.ndarray, matrix: np.ndarray) -> int:
    """Copy stored vectors for rows whose (id, text hash) the store has; returns how many."""
    meta = read_store_meta(store)
    if meta is None or meta.get("model") != model or meta.get("dim") != matrix.shape[1]:
        return 0
    if meta.get("version") != version and not version.endswith("-unknown"):
        return 0
    parts = list_parts(store)
    if not parts:
        return 0
    stored = pl.concat([pl.read_parquet(p, columns=["id", "text_hash"]) for p in parts]).with_row_index("stored")
    wanted = pl.DataFrame({"id": pl.from_arrow(ids), "text_hash": pl.Series(text_hash, dtype=pl.UInt64)}).with_row_index("pos")
    wanted = wanted.filter(~pl.Series(filled))
    hits = wanted.join(stored, on=["id", "text_hash"], how="inner").sort("stored")
    if hits.height == 0:
        return 0
    stored_pos = hits.get_column("stored").to_numpy().astype(np.int64)
    target = hits.get_column("pos").to_numpy().astype(np.int64)
    offset = 0
    for batch in iter_part_batches(store, columns=["embedding"]):
        n = batch.num_rows
        lo, hi = np.searchsorted(stored_pos, [offset, offset + n])
        if hi > lo:
            values = batch.column("embedding").values.to_numpy(zero_copy_only=False).reshape(n, -1)
            matrix[target[lo:hi]] = values[stored_pos[lo:hi] - offset]
        offset += n
    filled[target] = True
    return len(target)


def _compute_missing(source: BatchSource, ctx: StageContext, embedder, missing: np.ndarray, matrix: np.ndarray, window: int) -> None:
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
                    order = np.argsort(pc.utf8_length(chunk.fill_null("")).to_numpy(zero_copy_only=False), kind="stable")
                    vectors = embedder.encode(chunk.take(pa.array(order)))
                    matrix[offset + local[start + order]] = vectors
                    bar.advance(len(chunk))
            offset += n


def _column_embeddings(source: BatchSource, ctx: StageContext, model: str, column: str) -> Embeddings:
    """User vectors from `column`: every row a fixed-length, finite, non-null, non-zero vector."""
    if column not in source.schema.names:
        raise UsageError(f"no column {column!r} for model {model!r} (columns: {', '.join(n for n in source.schema.names if not n.startswith('__'))})", fix="name an existing vector column: --model column:NAME")
    rows, ids, chunks = [], [], []
    dim = None
    for batch in source.batches(columns=[ctx.id_column, column]):
        batch_ids = ids_as_strings(batch.column(ctx.id_column))
        vectors = _vectors_of(batch.column(column), batch_ids, column)
        if dim is None:
            dim = vectors.shape[1]
        elif vectors.shape[1] != dim:
            raise InputError(f"embedding column {column!r} has vectors of length {vectors.shape[1]} and {dim}", fix="give every row a vector of the same length")
        rows.append(row_ordinals(batch))
        ids.append(batch_ids)
        chunks.append(vectors)
    n = sum(len(r) for r in rows)
    matrix = _new_matrix(ctx, n, dim or 0)
    offset = 0
    for vectors in chunks:
        matrix[offset : offset + len(vectors)] = vectors
        offset += len(vectors)
    if n:
        matrix.flush()
    all_ids = pa.concat_arrays(ids) if ids else pa.array([], pa.string())
    all_rows = np.concatenate(rows) if rows else np.empty(0, np.int64)
    return Embeddings(matrix, all_rows, all_ids, np.zeros(n, np.uint64), model, model, 0, n, False)


def _vectors_of(values: pa.Array | pa.ChunkedArray, ids: pa.Array, column: str) -> np.ndarray:
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    kind = values.type
    if not (pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind)) or not (
        pa.types.is_floating(kind.value_type) or pa.types.is_integer(kind.value_type)
    ):
        raise InputError(f"embedding column {column!r} has type {kind}", fix="store vectors as list<float32> (or fixed_size_list) per row")
    if values.null_count:
        bad = ids.filter(pc.is_null(values))[0].as_py()
        raise InputError(f"embedding column {column!r} is null for id {bad!r}", fix="give every row a vector, or drop rows without one")
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
        raise InputError(f"embedding column {column!r} has null elements inside vectors", fix="replace null elements with numbers")
    vectors = flat.to_numpy(zero_copy_only=False).astype(np.float32).reshape(n, int(lengths[0]))
    finite = np.isfinite(vectors).all(axis=1)
    if not finite.all():
        raise InputError(f"embedding column {column!r}: id {ids[int(np.nonzero(~finite)[0][0])].as_py()!r} has NaN or infinite values", fix="replace non-finite values")
    normalized = normalize_rows(vectors)
    zero = ~normalized.any(axis=1)
    if zero.any():
        raise InputError(f"embedding column {column!r}: id {ids[int(np.nonzero(zero)[0][0])].as_py()!r} is the zero vector", fix="a zero vector has no direction; drop the row or give it a real vector")
    return normalized


class Embed(Stage):
    """Embed every row into OUT/embeddings; keeps every row (it removes nothing)."""

    kind = "embed"
    needs_fit = True

    def __init__(
        self, *, model: str = DEFAULT_MODEL, cache: str = "", window: int = 4096, encode_batch: int = 64,
        device: str = "auto", backend: str = "torch", dtype: str = "auto",
    ):
        validate_model_name(model)
        validate_device(device)
        validate_backend(backend)
        validate_dtype(dtype)
        if window <= 0 or encode_batch <= 0:
            raise ValueError("window and encode_batch must be positive")
        self.model = model
        self.cache = cache
        self.window = window
        self.encode_batch = encode_batch
        self.device = device
        self.backend = backend
        self.dtype = dtype

    def fit(self, source: BatchSource, ctx: StageContext) -> "Embed":
        started = time.perf_counter()
        emb = embeddings_for(
            source, ctx, self.model, cache=self.cache, window=self.window, encode_batch=self.encode_batch,
            device=self.device, backend=self.backend, dtype=self.dtype,
        )
        if not emb.reused_from_output:
            publish(emb, ctx.output_dir)
        seconds = time.perf_counter() - started
        runs_on = describe(emb.model, device=self.device, backend=self.backend, dtype=self.dtype) if column_of(emb.model) is None else {}
        ctx.info.update(
            model=emb.model, model_version=emb.version, dim=emb.dim, rows=len(emb.rows), reused=emb.reused, computed=emb.computed,
            seconds=round(seconds, 3), rows_per_second=round(len(emb.rows) / seconds, 1) if seconds > 0 else None, **runs_on,
        )
        return self

    def transform(self, batch: pa.RecordBatch, ctx: StageContext) -> tuple[pa.RecordBatch, pa.RecordBatch]:
        return batch, empty_ledger()


STAGE = Embed
