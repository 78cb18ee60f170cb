"""Group ids for balanced pruning and pooling: the k-means cluster of each row, or the value of a
label column (read once from the stage's source, nulls as a group of their own)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curate.algorithms.prototypes import check_balance
from curate.errors import UsageError
from curate.stages.base import BatchSource, row_ordinals
from curate.stages.constraints import Together


def _balance_fits_label(options: dict) -> bool:
    try:
        check_balance(options["balance"], options["label_column"])
    except ValueError:
        return False
    return True


# A stage with `balance` and `label_column` options (prototypes): the two go together.
BALANCE_NEEDS_LABEL = Together(
    "balance",
    _balance_fits_label,
    "'label' exactly when label_column is set (here label_column = {label_column!r})",
    fix='set balance = "label" with label_column = "COLUMN", or another balance without label_column',
)


def label_groups(source: BatchSource, label_column: str, rows: np.ndarray) -> np.ndarray:
    """Dense group id per row of `rows` (ascending ordinals) from `label_column`, by sorted value."""
    if label_column not in source.schema.names:
        names = ", ".join(n for n in source.schema.names if not n.startswith("__"))
        raise UsageError(
            f"balance: no label column {label_column!r} (columns: {names})",
            fix="set label_column to a column of the input",
        )
    ordinals, chunks = [], []
    for batch in source.batches(columns=[label_column]):
        ordinals.append(row_ordinals(batch))
        chunks.append(batch.column(label_column))
    values = (
        pa.chunked_array(chunks, type=source.schema.field(label_column).type).combine_chunks()
        if chunks
        else pa.array([], pa.string())
    )
    if pa.types.is_dictionary(values.type):
        values = values.dictionary_decode()
    classes = pc.unique(values.drop_null())
    classes = classes.take(pc.sort_indices(classes))
    codes = pc.fill_null(pc.index_in(values, value_set=classes), len(classes))
    ids = np.asarray(codes).astype(np.int64)
    order = np.concatenate(ordinals) if ordinals else np.empty(0, np.int64)
    return ids[np.searchsorted(order, rows)] if len(rows) else np.empty(0, np.int64)


def balance_groups(
    balance: str, label_column: str, clusters: np.ndarray, rows: np.ndarray, source: BatchSource
) -> np.ndarray | None:
    """The groups `select_by_difficulty` keeps the mix of: None (no balance), clusters or labels."""
    if balance == "cluster":
        return np.asarray(clusters, dtype=np.int64)
    if balance == "label":
        return label_groups(source, label_column, rows)
    return None


def fit_group_values(source: BatchSource, column: str) -> pa.Array:
    """The sorted distinct non-null values of a balance column (a group per value, nulls last)."""
    if column not in source.schema.names:
        names = ", ".join(n for n in source.schema.names if not n.startswith("__"))
        raise UsageError(
            f"balance: no column {column!r} (columns: {names})",
            fix="set balance_column to a column of the input, e.g. proto_cluster after a prototypes stage",
        )
    chunks = [batch.column(column) for batch in source.batches(columns=[column])]
    values = (
        pa.chunked_array(chunks, type=source.schema.field(column).type).combine_chunks()
        if chunks
        else pa.array([], source.schema.field(column).type)
    )
    if pa.types.is_dictionary(values.type):
        values = values.dictionary_decode()
    distinct = pc.unique(values.drop_null())
    return distinct.take(pc.sort_indices(distinct))


def group_ids(column: pa.Array | pa.ChunkedArray, values: pa.Array) -> np.ndarray:
    """Group id per row: the index of its value in `values`; nulls and unseen values get len(values)."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if pa.types.is_dictionary(column.type):
        column = column.dictionary_decode()
    return np.asarray(pc.fill_null(pc.index_in(column, value_set=values), len(values))).astype(np.int64)
