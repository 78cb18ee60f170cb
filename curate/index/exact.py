"""Exact-dedup index: the 128-bit key and the id of every distinct text an output kept (the
first occurrence of each key), sorted by key. Matching a new row is a binary search."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa

from curate.algorithms.exact import _lookup, hash128, normalize_texts
from curate.index.earlier import EarlierMatches, without
from curate.index.store import StoredIndex, check_settings, find_index, index_dir, write_index
from curate.output.ledger import ids_as_strings
from curate.stages.base import BatchSource, StageContext, row_ordinals, sorted_member

KIND = "exact"


def settings(normalize: bool) -> dict:
    """What makes two runs' keys comparable. polars' string hash may change between polars
    versions (its docs say so), so the version is part of the key's definition."""
    return {"normalize": bool(normalize), "key": f"polars-{pl.__version__}"}


def after_fit(stage, source: BatchSource, ctx: StageContext) -> None:
    """Hook at the end of the exact stage's fit: match against `ctx.against`, then write this
    run's index when the stage has `index = true`, in one pass of tasks over the units."""
    stage.earlier_ = None
    want_index = bool(getattr(stage, "index", False))
    if not ctx.against and not want_index:
        return
    indexes = [find_index(path, ctx.name, KIND) for path in ctx.against]
    for stored in indexes:
        check_settings(stored, settings(stage.normalize))
    units = ctx.units(source)
    task = _Pass(ctx.text_column, ctx.id_column, stage.normalize, tuple(indexes), stage.duplicate_rows_, want_index)
    found = ctx.map(
        task,
        units,
        label=f"{ctx.name}: against earlier" if indexes else f"{ctx.name}: index",
        sizes=[u.rows for u in units],
    )
    if indexes:
        stage.earlier_ = _matches(found, indexes)
        keep = without(stage.duplicate_rows_, stage.earlier_.rows)
        stage.duplicate_rows_ = stage.duplicate_rows_[keep]
        stage.representatives_ = stage.representatives_[keep]
        ctx.info["earlier_duplicates"] = len(stage.earlier_)
    if want_index:  # the first occurrences, less the rows an earlier output already holds
        rows = np.concatenate([f.kept_rows for f in found]) if found else np.empty(0, np.int64)
        keys = np.concatenate([f.kept_keys for f in found]) if found else np.empty((0, 2), np.uint64)
        ids = pa.concat_arrays([f.kept_ids for f in found]) if found else pa.array([], pa.string())
        if stage.earlier_ is not None:
            mask = without(rows, stage.earlier_.rows)
            keys, ids = keys[mask], ids.filter(pa.array(mask))
        stored = _write(index_dir(ctx.output_dir, ctx.name), ctx.name, stage.normalize, keys, ids)
        ctx.info["stored_index_bytes"] = stored.nbytes


def _matches(found: list[_Found], indexes: list[StoredIndex]) -> EarlierMatches:
    """Rows whose key is in an earlier index (the first index listed wins), with its id."""
    rows = np.concatenate([f.rows for f in found]) if found else np.empty(0, np.int64)
    which = np.concatenate([f.which for f in found]) if found else np.empty(0, np.int64)
    where = np.concatenate([f.where for f in found]) if found else np.empty(0, np.int64)
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
    # ascending rows: a unit lists its matches index by index within each batch
    order = np.argsort(rows, kind="stable")
    return EarlierMatches(rows[order], ids.take(pa.array(order)))


@dataclass(frozen=True)
class _Found:
    rows: np.ndarray  # ordinals matched in an earlier index (by batch, then index)
    which: np.ndarray  # which index
    where: np.ndarray  # the stored key's position
    kept_rows: np.ndarray  # first occurrences (when building an index): ordinals, keys, ids
    kept_keys: np.ndarray
    kept_ids: pa.Array


@dataclass(frozen=True)
class _Pass:
    """One unit: hash every text once; look the keys up in the earlier indexes, and keep the
    keys and ids of this run's first occurrences when an index is being built."""

    text_column: str
    id_column: str
    normalize: bool
    indexes: tuple[StoredIndex, ...]
    removed_sorted: np.ndarray
    want_index: bool

    def __call__(self, unit) -> _Found:
        # each index's two key words as contiguous arrays, once per task (searchsorted would
        # copy a strided column of the memory map on every batch)
        keys_of = [
            (np.ascontiguousarray(keys[:, 0]), np.ascontiguousarray(keys[:, 1]))
            for keys in (stored.array("keys") for stored in self.indexes)
        ]
        rows, which, where, kept_rows, kept_keys, kept_ids = [], [], [], [], [], []
        columns = [self.text_column, self.id_column] if self.want_index else [self.text_column]
        for batch in unit.batches(columns=columns):
            texts = batch.column(self.text_column)
            key = hash128(normalize_texts(texts) if self.normalize else texts)
            ordinals = row_ordinals(batch)
            unseen = np.ones(len(ordinals), dtype=bool)
            for k, (hi, lo) in enumerate(keys_of):
                found, pos = _lookup(hi, lo, key[:, 0], key[:, 1])
                hit = found & unseen
                rows.append(ordinals[hit])
                which.append(np.full(int(hit.sum()), k, np.int64))
                where.append(pos[hit])
                unseen &= ~found
            if self.want_index:
                first = ~sorted_member(self.removed_sorted, ordinals)
                kept_rows.append(ordinals[first])
                kept_keys.append(key[first])
                kept_ids.append(ids_as_strings(batch.column(self.id_column)).filter(pa.array(first)))
        cat = lambda parts, dtype: np.concatenate(parts).astype(dtype) if parts else np.empty(0, dtype)  # noqa: E731
        return _Found(
            cat(rows, np.int64),
            cat(which, np.int64),
            cat(where, np.int64),
            cat(kept_rows, np.int64),
            np.concatenate(kept_keys) if kept_keys else np.empty((0, 2), np.uint64),
            pa.concat_arrays(kept_ids) if kept_ids else pa.array([], pa.string()),
        )


def _write(directory, stage: str, normalize: bool, keys: np.ndarray, ids: pa.Array) -> StoredIndex:
    order = np.lexsort((keys[:, 1], keys[:, 0]))
    return write_index(
        directory,
        kind=KIND,
        stage=stage,
        settings=settings(normalize),
        arrays={"keys": keys[order]},
        table=pa.table({"id": ids.take(pa.array(order))}),
    )


def merge(base: StoredIndex, later: StoredIndex, directory) -> StoredIndex:
    """One index of both outputs: every key once, with the earlier output's id when both hold it."""
    check_settings(later, base.settings, here=f"in the index of {Path(base.directory).parent.parent}")
    keys = np.concatenate([np.asarray(base.array("keys")), np.asarray(later.array("keys"))])
    ids = pa.concat_arrays([ids_as_strings(base.table().column("id")), ids_as_strings(later.table().column("id"))])
    order = np.lexsort((np.arange(len(keys)), keys[:, 1], keys[:, 0]))
    keys = keys[order]
    first = np.ones(len(keys), dtype=bool)
    first[1:] = (keys[1:, 0] != keys[:-1, 0]) | (keys[1:, 1] != keys[:-1, 1])
    return write_index(
        directory,
        kind=KIND,
        stage=base.stage,
        settings=base.settings,
        arrays={"keys": keys[first]},
        table=pa.table({"id": ids.take(pa.array(order[first]))}),
    )
