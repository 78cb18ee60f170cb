"""Which member of a duplicate group is kept: the representative rule shared by the dedup stages.

A rule is "first" (input order, the historical behaviour), "longest" or "shortest" (text length in
characters), or "max:COLUMN" / "min:COLUMN" (a numeric column, e.g. a quality score). It turns into
one float64 key per row where LOWER is preferred, so every stage picks the same way: the group's
member with the smallest (key, global input ordinal). Nulls and NaN get +inf so a row without a
value is chosen only when no member has one. A key is a pure function of its own row, so it can
travel through a map/shuffle and the pick does not depend on how rows were split.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curate.errors import UsageError

RULES = ("first", "longest", "shortest", "max", "min")
_COLUMN_RULES = ("max", "min")


def parse_representative(rule: str) -> tuple[str, str | None]:
    """("first"|"longest"|"shortest"|"max"|"min", column or None); ValueError on a bad rule."""
    if not isinstance(rule, str):
        raise ValueError(f"representative must be a string, got {rule!r}")
    kind, sep, column = rule.partition(":")
    kind = kind.strip()
    if kind in _COLUMN_RULES:
        column = column.strip()
        if not sep or not column:
            raise ValueError(f"representative {rule!r} needs a column: write '{kind}:COLUMN'")
        return kind, column
    if kind in RULES:
        if sep:
            raise ValueError(f"representative {rule!r}: '{kind}' takes no column")
        return kind, None
    raise ValueError(f"representative {rule!r} is not one of first, longest, shortest, max:COLUMN, min:COLUMN")


def rule_columns(rule: str, text_column: str) -> list[str]:
    """The input columns the rule reads (none for "first"): what a stage adds to its batch reads."""
    kind, column = parse_representative(rule)
    if kind == "first":
        return []
    if kind in ("longest", "shortest"):
        return [text_column]
    return [column]  # type: ignore[list-item]


def check_representative_column(rule: str, schema: pa.Schema, stage: str) -> None:
    """Raise the stage's exit-2 error when a max:/min: rule names a column that is missing or not numeric."""
    kind, column = parse_representative(rule)
    if column is None:
        return
    if column not in schema.names:
        names = ", ".join(n for n in schema.names if not n.startswith("__"))
        raise UsageError(
            f"stage '{stage}': representative {rule!r} names column {column!r}, which the input lacks",
            fix=f"name a numeric column of the input ({names})",
        )
    dtype = schema.field(column).type
    if not (pa.types.is_integer(dtype) or pa.types.is_floating(dtype) or pa.types.is_decimal(dtype)):
        raise UsageError(
            f"stage '{stage}': representative {rule!r} names column {column!r} of type {dtype}, not a number",
            fix="name a numeric column (int or float) in representative",
        )


def representative_key(rule: str, table: pa.Table | pa.RecordBatch, text_column: str) -> np.ndarray:
    """A float64 per row, lower preferred: first -> 0, longest -> -chars, shortest -> chars,
    max:C -> -C, min:C -> C; null or NaN -> +inf. Ties are the caller's to break by input order."""
    kind, column = parse_representative(rule)
    n = table.num_rows
    if kind == "first":
        return np.zeros(n, dtype=np.float64)
    if kind in ("longest", "shortest"):
        values = pc.utf8_length(_column(table, text_column))
    else:
        values = _column(table, column)  # type: ignore[arg-type]
    valid = np.asarray(pc.is_valid(values).to_numpy(zero_copy_only=False), dtype=bool) if n else np.zeros(0, bool)
    arr = pc.cast(values, pa.float64()).to_numpy(zero_copy_only=False) if n else np.zeros(0)
    arr = np.asarray(arr, dtype=np.float64).copy()
    if kind in ("longest", "max"):
        arr = -arr
    arr[~valid | np.isnan(arr)] = np.inf
    return arr


def pick_order(keys: np.ndarray, ordinals: np.ndarray) -> np.ndarray:
    """Indices sorting rows by (key, ordinal): the preferred member of a group comes first."""
    return np.lexsort((ordinals, keys))


def pick_in_groups(group: np.ndarray, keys: np.ndarray, ordinals: np.ndarray) -> np.ndarray:
    """Per member, the position (into these arrays) of its group's pick: the member with the
    lowest (key, ordinal). `group` is any label shared by a group's members."""
    n = len(group)
    if n == 0:
        return np.empty(0, dtype=np.int64)
    order = np.lexsort((ordinals, keys, group))
    sorted_group = group[order]
    start = np.ones(n, dtype=bool)
    start[1:] = sorted_group[1:] != sorted_group[:-1]
    out = np.empty(n, dtype=np.int64)
    out[order] = order[start][np.cumsum(start) - 1]
    return out


def _column(table: pa.Table | pa.RecordBatch, name: str) -> pa.Array | pa.ChunkedArray:
    column = table.column(name)
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    return column
