"""Exact-dedup index: the 128-bit key and the id of every distinct text an output kept (the
first occurrence of each key), sorted by key. Matching a new row is a binary search."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl
import pyarrow as pa

from curate.index.earlier import EarlierMatches, without
from curate.index.store import StoredIndex, check_settings, find_index, index_dir, write_index
from curate.ledger import ids_as_strings
from curate.metrics.exact import _lookup, hash128, normalize_texts
from curate.stages.base import BatchSource, StageContext, row_ordinals, sorted_member

KIND = "exact"


def settings(normalize: bool) -> dict:
    """What makes two runs' keys comparable. polars' string hash may change between polars
    versions (its docs say so), so the version is part of the key's definition."""
    return {"normalize": bool(normalize), "key": f"polars-{pl.__version__}"}


def after_fit(stage, source: BatchSource, ctx: StageContext) -> None:
    """Hook at the end of the exact stage's fit: match against `ctx.against`, then write this
    run's index when the stage has `index = true`."""
    stage.earlier_ = None
    if ctx.against:
        indexes = [find_index(path, ctx.name, KIND) for path in ctx.against]
        for stored in indexes:
            check_settings(stored, settings(stage.normalize))
        stage.earlier_ = match(source, ctx, indexes, stage.normalize)
        keep = without(stage.duplicate_rows_, stage.earlier_.rows)
        stage.duplicate_rows_ = stage.duplicate_rows_[keep]
        stage.representatives_ = stage.representatives_[keep]
        ctx.info["earlier_duplicates"] = len(stage.earlier_)
    if getattr(stage, "index", False):
        removed = np.union1d(stage.duplicate_rows_, stage.earlier_.rows if stage.earlier_ is not None else np.empty(0, np.int64))
        stored = build(source, ctx, stage.normalize, removed)
        ctx.info["stored_index_bytes"] = stored.nbytes


def match(source: BatchSource, ctx: StageContext, indexes: list[StoredIndex], normalize: bool) -> EarlierMatches:
    """Rows whose key is in an earlier index (the first index listed wins), one task per unit."""
    units = ctx.units(source)
    found = ctx.map(_Match(ctx.text_column, normalize, tuple(indexes)), units, label=f"{ctx.name}: against earlier", sizes=[u.rows for u in units])
    rows = np.concatenate([f[0] for f in found]) if found else np.empty(0, np.int64)
    which = np.concatenate([f[1] for f in found]) if found else np.empty(0, np.int64)
    where = np.concatenate([f[2] for f in found]) if found else np.empty(0, np.int64)
    ids = pa.nulls(len(rows), pa.string())
    parts, positions = [], []
    for k, stored in enumerate(indexes):
        mine = np.flatnonzero(which == k)
        if len(mine):
            parts.append(ids_as_strings(stored.table().column("id")).take(pa.array(where[mine])))
            positions.append(mine)
    if parts:
        order = np.argsort(np.concatenate(positions), kind="stable")
        ids = pa.concat_arrays(parts).take(pa.array(order))
    return EarlierMatches(rows, ids)


@dataclass(frozen=True)
class _Match:
    text_column: str
    normalize: bool
    indexes: tuple[StoredIndex, ...]

    def __call__(self, unit) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        keys_of = [stored.array("keys") for stored in self.indexes]
        rows, which, where = [], [], []
        for batch in unit.batches(columns=[self.text_column]):
            texts = batch.column(self.text_column)
            key = hash128(normalize_texts(texts) if self.normalize else texts)
            ordinals = row_ordinals(batch)
            unseen = np.ones(len(ordinals), dtype=bool)
            for k, keys in enumerate(keys_of):
                found, pos = _lookup(keys[:, 0], keys[:, 1], key[:, 0], key[:, 1])
                hit = found & unseen
                rows.append(ordinals[hit])
                which.append(np.full(int(hit.sum()), k, np.int64))
                where.append(pos[hit])
                unseen &= ~found
        cat = lambda parts, dtype: np.concatenate(parts).astype(dtype) if parts else np.empty(0, dtype)  # noqa: E731
        return cat(rows, np.int64), cat(which, np.int64), cat(where, np.int64)


def build(source: BatchSource, ctx: StageContext, normalize: bool, removed_sorted: np.ndarray) -> StoredIndex:
    """Keys and ids of the rows the stage keeps (every first occurrence), one task per unit."""
    units = ctx.units(source)
    found = ctx.map(_Kept(ctx.text_column, ctx.id_column, normalize, removed_sorted), units, label=f"{ctx.name}: index", sizes=[u.rows for u in units])
    keys = np.concatenate([f[0] for f in found]) if found else np.empty((0, 2), np.uint64)
    ids = pa.concat_arrays([f[1] for f in found]) if found else pa.array([], pa.string())
    return _write(index_dir(ctx.output_dir, ctx.name), ctx.name, normalize, keys, ids)


def _write(directory, stage: str, normalize: bool, keys: np.ndarray, ids: pa.Array, stored_settings: dict | None = None) -> StoredIndex:
    order = np.lexsort((keys[:, 1], keys[:, 0]))
    return write_index(
        directory, kind=KIND, stage=stage, settings=stored_settings or settings(normalize),
        arrays={"keys": keys[order]}, table=pa.table({"id": ids.take(pa.array(order))}),
    )


@dataclass(frozen=True)
class _Kept:
    text_column: str
    id_column: str
    normalize: bool
    removed_sorted: np.ndarray

    def __call__(self, unit) -> tuple[np.ndarray, pa.Array]:
        keys, ids = [], []
        for batch in unit.batches(columns=[self.text_column, self.id_column]):
            keep = ~sorted_member(self.removed_sorted, row_ordinals(batch))
            texts = batch.column(self.text_column).filter(pa.array(keep))
            keys.append(hash128(normalize_texts(texts) if self.normalize else texts))
            ids.append(ids_as_strings(batch.column(self.id_column)).filter(pa.array(keep)))
        return (np.concatenate(keys) if keys else np.empty((0, 2), np.uint64)), (pa.concat_arrays(ids) if ids else pa.array([], pa.string()))


def merge(base: StoredIndex, later: StoredIndex, directory) -> StoredIndex:
    """One index of both outputs: every key once, with the earlier output's id when both hold it."""
    check_settings(later, base.settings)
    keys = np.concatenate([np.asarray(base.array("keys")), np.asarray(later.array("keys"))])
    ids = pa.concat_arrays([ids_as_strings(base.table().column("id")), ids_as_strings(later.table().column("id"))])
    order = np.lexsort((np.arange(len(keys)), keys[:, 1], keys[:, 0]))
    keys = keys[order]
    first = np.ones(len(keys), dtype=bool)
    first[1:] = (keys[1:, 0] != keys[:-1, 0]) | (keys[1:, 1] != keys[:-1, 1])
    return write_index(directory, kind=KIND, stage=base.stage, settings=base.settings, arrays={"keys": keys[first]}, table=pa.table({"id": ids.take(pa.array(order[first]))}))
