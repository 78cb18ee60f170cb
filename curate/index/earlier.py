"""Rows of a new input that duplicate rows of an earlier output: what a dedup stage keeps after
matching against an index, and its transform (those rows go to the ledger with the earlier
row's id and a reason ending in `_of_earlier`; the rest are deduplicated as usual)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from curate.output.ledger import empty_ledger, removed_rows
from curate.stages.base import IdLookup, StageContext, drop_fitted_duplicates, row_ordinals, sorted_member, split_batch


@dataclass
class EarlierMatches:
    """Ordinals (ascending) of this run's rows that duplicate an earlier output's row, with that
    row's id (and a score where the stage has one)."""

    rows: np.ndarray
    ids: pa.Array
    scores: np.ndarray | None = None

    @classmethod
    def empty(cls) -> EarlierMatches:
        return cls(np.empty(0, np.int64), pa.array([], pa.string()))

    def __len__(self) -> int:
        return len(self.rows)


def without(sorted_rows: np.ndarray, drop: np.ndarray) -> np.ndarray:
    """Mask over `sorted_rows` of the entries not in the sorted `drop`."""
    return ~sorted_member(drop, sorted_rows)


def drop_duplicates(
    batch: pa.RecordBatch,
    earlier: EarlierMatches | None,
    removed_sorted: np.ndarray,
    representatives: np.ndarray,
    representative_ids: IdLookup,
    ctx: StageContext,
    *,
    reason: str,
    scores: np.ndarray | None = None,
) -> tuple[pa.RecordBatch, pa.RecordBatch]:
    """`drop_fitted_duplicates`, after sending rows matched against an earlier output to the
    ledger as `<reason>_of_earlier` (the fit keeps the two sets disjoint)."""
    if earlier is None or len(earlier) == 0:
        return drop_fitted_duplicates(
            batch,
            removed_sorted,
            representatives,
            representative_ids,
            stage=ctx.name,
            reason=reason,
            id_column=ctx.id_column,
            scores=scores,
        )
    rows = row_ordinals(batch)
    hit = sorted_member(earlier.rows, rows)
    ledger = empty_ledger()
    if hit.any():
        batch, removed = split_batch(batch, hit)
        where = np.searchsorted(earlier.rows, rows[hit])
        score = (
            None if earlier.scores is None else pa.array(earlier.scores[where], pa.float64(), from_pandas=True)
        )  # NaN: no score
        ledger = removed_rows(
            removed.column(ctx.id_column),
            ctx.name,
            f"{reason}_of_earlier",
            duplicate_of=earlier.ids.take(pa.array(where)),
            score=score,
        )
    rest = row_ordinals(batch)
    kept, later = drop_fitted_duplicates(
        batch,
        removed_sorted,
        representatives,
        representative_ids,
        stage=ctx.name,
        reason=reason,
        id_column=ctx.id_column,
        scores=scores,
    )
    if later.num_rows == 0:
        return kept, ledger
    if ledger.num_rows == 0:
        return kept, later
    # Both kinds in input order, as without --against: the ledger must not depend on where
    # batches and work units are cut (it did: all of a batch's earlier matches came first).
    order = np.argsort(np.concatenate([rows[hit], rest[sorted_member(removed_sorted, rest)]]), kind="stable")
    both = pa.Table.from_batches([ledger, later]).combine_chunks().take(pa.array(order))
    return kept, both.combine_chunks().to_batches()[0]
