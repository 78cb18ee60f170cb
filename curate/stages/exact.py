"""Exact dedup: one row per distinct text (by 128-bit hash) is kept: the first in input order, or
the one the `representative` rule picks (curate.stages._representative)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from curate.algorithms.exact import FirstSeenIndex, hash128, normalize_texts
from curate.index import exact as exact_index
from curate.index.earlier import drop_duplicates
from curate.index.store import INDEX_DIR
from curate.stages import _representative as rep
from curate.stages.base import BatchSource, IdLookup, Stage, StageContext, row_ordinals
from curate.stages.constraints import Boolean


class ExactDedup(Stage):
    kind = "exact"
    side_outputs = (INDEX_DIR,)  # with index = true or --against
    needs_fit = True
    option_constraints = {"normalize": [Boolean()], "index": [Boolean()], "representative": [rep.REPRESENTATIVE]}

    def __init__(self, *, normalize: bool = False, index: bool = False, representative: str = rep.DEFAULT):
        self.normalize = normalize
        self.index = index  # keep OUT/index/<name>/ for later runs' --against (curate.index)
        self.representative = representative  # which member of a group is kept (first, longest, max:COLUMN, ...)

    def fit(self, source: BatchSource, ctx: StageContext) -> ExactDedup:
        rep.check(self.representative, source, ctx)
        index = FirstSeenIndex()
        dup_rows: list[np.ndarray] = []
        dup_reps: list[np.ndarray] = []
        with ctx.progress.task(f"{ctx.name}: hashing", total=source.num_rows) as bar:
            for batch in source.batches(columns=[ctx.text_column]):
                texts = batch.column(ctx.text_column)
                if self.normalize:
                    texts = normalize_texts(texts)
                rows = row_ordinals(batch)
                earliest = index.add(hash128(texts), rows)
                is_dup = earliest != rows
                dup_rows.append(rows[is_dup])
                dup_reps.append(earliest[is_dup])
                bar.advance(batch.num_rows)
        self.duplicate_rows_, self.representatives_ = rep.repick(
            self.representative,
            source,
            ctx,
            np.concatenate(dup_rows) if dup_rows else np.empty(0, np.int64),
            np.concatenate(dup_reps) if dup_reps else np.empty(0, np.int64),
        )
        self.distinct_ = len(index)
        self.representative_ids_ = IdLookup.collect(source, self.representatives_, ctx)
        ctx.info.update(distinct_texts=self.distinct_, index_bytes=index.nbytes)
        exact_index.after_fit(self, source, ctx)
        return self

    # Map-reduce fit for cluster executors: hash per unit, shuffle on the hash, and in each
    # bucket keep the lowest ordinal per key, so the result is `fit`'s whatever the split.

    def fit_buckets(self, ctx: StageContext) -> int:
        return max(1, 2 * ctx.workers)

    def fit_shard(self, source: BatchSource, ctx: StageContext) -> list[np.ndarray]:
        """Per bucket, an (n, 3) int64 array of (hash high, hash low, ordinal) as raw bits."""
        rep.check(self.representative, source, ctx)
        keys: list[np.ndarray] = []
        rows: list[np.ndarray] = []
        for batch in source.batches(columns=[ctx.text_column]):
            texts = batch.column(ctx.text_column)
            if self.normalize:
                texts = normalize_texts(texts)
            keys.append(hash128(texts))
            rows.append(row_ordinals(batch))
        key = np.concatenate(keys) if keys else np.empty((0, 2), np.uint64)
        triples = np.column_stack([key.view(np.int64), np.concatenate(rows) if rows else np.empty(0, np.int64)])
        buckets = self.fit_buckets(ctx)
        which = key[:, 0] % np.uint64(buckets)
        return [triples[which == b] for b in range(buckets)]

    def fit_reduce(
        self, bucket: int, pieces: list[np.ndarray], ctx: StageContext
    ) -> tuple[np.ndarray, np.ndarray, int]:
        """(duplicate ordinals, their representatives' ordinals, distinct keys) of one bucket."""
        triples = np.concatenate(pieces) if pieces else np.empty((0, 3), np.int64)
        hi, lo, rows = triples[:, 0], triples[:, 1], triples[:, 2]
        order = np.lexsort((rows, lo, hi))
        hi, lo, rows = hi[order], lo[order], rows[order]
        first = np.ones(len(rows), dtype=bool)
        first[1:] = (hi[1:] != hi[:-1]) | (lo[1:] != lo[:-1])
        earliest = rows[first][np.cumsum(first) - 1]
        return rows[~first], earliest[~first], int(first.sum())

    def fit_merge(
        self, partials: list[tuple[np.ndarray, np.ndarray, int]], source: BatchSource, ctx: StageContext
    ) -> ExactDedup:
        dup_rows = np.concatenate([p[0] for p in partials]) if partials else np.empty(0, np.int64)
        reps = np.concatenate([p[1] for p in partials]) if partials else np.empty(0, np.int64)
        order = np.argsort(dup_rows, kind="stable")
        self.duplicate_rows_, self.representatives_ = rep.repick(
            self.representative,
            source,
            ctx,
            dup_rows[order].astype(np.int64, copy=False),
            reps[order].astype(np.int64, copy=False),
        )
        self.distinct_ = sum(p[2] for p in partials)
        self.representative_ids_ = IdLookup.collect(source, self.representatives_, ctx)
        ctx.info.update(distinct_texts=self.distinct_, index_bytes=24 * self.distinct_, shuffle_buckets=len(partials))
        exact_index.after_fit(self, source, ctx)
        return self

    def transform(self, batch: pa.RecordBatch, ctx: StageContext) -> tuple[pa.RecordBatch, pa.RecordBatch]:
        return drop_duplicates(
            batch,
            getattr(self, "earlier_", None),
            self.duplicate_rows_,
            self.representatives_,
            self.representative_ids_,
            ctx,
            reason="exact_duplicate",
        )


STAGE = ExactDedup
