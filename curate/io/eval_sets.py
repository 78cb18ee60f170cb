"""Evaluation sets for decontamination: one named set is a file, folder, glob or URL in any
input format curate reads (Parquet, JSON Lines, a saved Hugging Face dataset; local or an
object store), read through the same `InputSet` as the corpus. An item is one row: its text
columns joined with a newline, its id from an id column or else its row number in the set.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from curate.errors import CurateError, UsageError
from curate.io import storage
from curate.io.formats import FORMATS
from curate.io.inputs import ROW_COLUMN, ColumnSpec, InputSet
from curate.io.storage import StorageOptions

# A set name becomes the prefix of `duplicate_of` (`<set>:<item id>`) and a key in the manifest.
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*")
_NO_ID = "\x00curate-no-id"  # a column no file has: InputSet then numbers rows itself
_KEYS = {"name", "path", "text_columns", "id_column", "format"}
_READ_ROWS = 65_536


@dataclass(frozen=True)
class EvalSetSpec:
    """Where one evaluation set is and which columns make an item."""

    name: str
    path: str
    text_columns: tuple[str, ...] = ("text",)
    id_column: str | None = None
    format: str | None = None

    @classmethod
    def parse(cls, table: dict[str, Any]) -> EvalSetSpec:
        """From a pipeline table {name, path, text_columns?, id_column?, format?}; ValueError
        saying what is wrong (the stage's option check turns it into the one-line message)."""
        if not isinstance(table, dict):
            raise ValueError("not a table")
        unknown = sorted(set(table) - _KEYS)
        if unknown:
            raise ValueError(f"unknown key(s) {unknown}")
        name, path = table.get("name"), table.get("path")
        if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
            raise ValueError("name must be letters, digits, '_', '.' or '-'")
        if not isinstance(path, str) or not path:
            raise ValueError("path must be a non-empty string")
        columns = table.get("text_columns", ["text"])
        if isinstance(columns, str):
            columns = [columns]
        if not isinstance(columns, list) or not columns or not all(isinstance(c, str) and c for c in columns):
            raise ValueError("text_columns must be a non-empty list of column names")
        id_column = table.get("id_column")
        if id_column is not None and (not isinstance(id_column, str) or not id_column):
            raise ValueError("id_column must be a column name")
        fmt = table.get("format")
        if fmt is not None and fmt not in FORMATS:
            raise ValueError(f"format must be one of {sorted(FORMATS)}")
        return cls(name, path, tuple(columns), id_column, fmt)


def check_eval_set(table: Any) -> None:
    """The option check: raises ValueError for a table `EvalSetSpec.parse` refuses."""
    EvalSetSpec.parse(table)


@dataclass(frozen=True)
class EvalItems:
    """The items of one set, in set order: texts (joined columns) and string ids."""

    name: str
    texts: pa.Array
    ids: pa.Array


def load_eval_set(spec: EvalSetSpec, options: StorageOptions = ()) -> EvalItems:
    """Read every item of the set; a missing set, a missing column or an empty set is a
    UsageError naming the set, its path and the fix."""
    where = f"evaluation set '{spec.name}'"
    if not storage.is_url(spec.path) and not any(ch in spec.path for ch in "*?[") and not Path(spec.path).exists():
        raise UsageError(
            f"{where} does not exist",
            path=spec.path,
            fix="point it at a Parquet or JSON Lines file, a folder of them or a saved dataset",
        )
    columns = ColumnSpec(
        text=spec.text_columns[0], id=spec.id_column or _NO_ID, format=spec.format, storage_options=options
    )
    try:
        inputs = InputSet.scan(spec.path, columns)
    except CurateError as exc:
        raise _about_set(where, exc) from None
    names = [n for n in inputs.schema.names if n != ROW_COLUMN and n != _NO_ID]
    if spec.id_column and inputs.synthesized_ids and spec.id_column in names:
        names.remove(spec.id_column)  # InputSet numbered the rows itself under that name
    for column in (*spec.text_columns, *([spec.id_column] if spec.id_column else [])):
        if column not in names:
            raise UsageError(
                f"{where} has no column '{column}'",
                path=spec.path,
                fix=f"use text_columns / id_column from {names}",
            )
    for column in spec.text_columns:
        dtype = inputs.schema.field(column).type
        if not (pa.types.is_string(dtype) or pa.types.is_large_string(dtype)):
            raise UsageError(
                f"{where}: column '{column}' is {dtype}, not text", path=spec.path, fix="name string columns only"
            )
    if inputs.num_rows == 0:
        raise UsageError(f"{where} has no items", path=spec.path, fix="point it at a set with at least one row")
    texts: list[pa.Array] = []
    ids: list[pa.Array] = []
    try:
        for batch in inputs.batches(_READ_ROWS, columns=list(spec.text_columns)):
            parts = [batch.column(c).cast(pa.large_string()).fill_null("") for c in spec.text_columns]
            texts.append(
                parts[0]
                if len(parts) == 1
                else pc.binary_join_element_wise(*parts, pa.scalar("\n", pa.large_string()))
            )
            if spec.id_column:
                ids.append(_as_strings(batch.column(spec.id_column)))
            else:
                ids.append(pc.cast(batch.column(ROW_COLUMN), pa.string()))
    except CurateError as exc:
        raise _about_set(where, exc) from None
    return EvalItems(spec.name, pa.concat_arrays(texts), pa.concat_arrays(ids).cast(pa.string()))


def _about_set(where: str, exc: CurateError) -> UsageError:
    """The reader's message about the set, with a fix in the evaluation set's own terms (the
    reader's own fix speaks of the corpus options)."""
    reason = str(exc).split(" -- fix: ")[0]
    return UsageError(
        f"{where}: {reason}",
        fix="check the set's path and format, and its text_columns / id_column (--eval-text-column, --eval-id-column)",
    )


def _as_strings(ids: pa.Array) -> pa.Array:
    if pa.types.is_string(ids.type) or pa.types.is_large_string(ids.type):
        return ids.cast(pa.string()).fill_null("")
    return pc.cast(ids, pa.string()).fill_null("")
