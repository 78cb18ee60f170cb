"""Exact dedup: the first occurrence of each text (by 128-bit hash) in input order is kept."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from curate.ledger import empty_ledger, removed_rows
from curate.metrics.exact import FirstSeenIndex, hash128, normalize_texts
from curate.stages.base import BatchSource, IdLookup, Stage, StageContext, row_ordinals, sorted_member, split_batch


class ExactDedup(Stage):
    kind = "exact"
    needs_fit = True

    def __init__(self, *, normalize: bool = False):
        self.normalize = normalize

    def fit(self, source: BatchSource, ctx: StageContext) -> "ExactDedup":
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
        self.duplicate_rows_ = np.concatenate(dup_rows) if dup_rows else np.empty(0, np.int64)
        self.representatives_ = np.concatenate(dup_reps) if dup_reps else np.empty(0, np.int64)
        self.distinct_ = len(index)
        self.representative_ids_ = IdLookup.collect(source, self.representatives_, ctx.id_column)
        ctx.info.update(distinct_texts=self.distinct_, index_bytes=index.nbytes)
        return self

    def transform(self, batch: pa.RecordBatch, ctx: StageContext) -> tuple[pa.RecordBatch, pa.RecordBatch]:
        rows = row_ordinals(batch)
        is_dup = sorted_member(self.duplicate_rows_, rows)
        if not is_dup.any():
            return batch, empty_ledger()
        kept, removed = split_batch(batch, is_dup)
        where = np.searchsorted(self.duplicate_rows_, rows[is_dup])
        reps = self.representative_ids_(self.representatives_[where])
        return kept, removed_rows(removed.column(ctx.id_column), self.kind, "exact_duplicate", duplicate_of=reps)


STAGE = ExactDedup
