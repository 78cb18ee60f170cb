"""The input: ordered streaming reads of every input file, with validation.

The input is Parquet, JSON Lines or a saved Hugging Face dataset (readers in `formats`);
every per-file read goes through `InputSet.file_batches`. Input order is the sorted file
list, then row order inside each file. Every row carries a
global ordinal (`ROW_COLUMN`) fixed at read time from the files' row counts, so any stage,
local or distributed, can pick "the earliest row" without seeing the whole stream.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from itertools import takewhile
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import xxhash

from curate.errors import InputError, UsageError, first_line
from curate.io import storage
from curate.io.formats import (
    JSONL,
    PARQUET,
    check_format,
    file_stem,
    parquet_row_group_rows,
    read_batches,
    resolve_inputs,
    scan_file,
)
from curate.io.parts import DEFAULT_BATCH_SIZE, ROW_COLUMN
from curate.io.storage import StorageOptions
from curate.runtime import ContextThreadPool

_FINGERPRINT_SPAN = 1 << 16
_ID_TYPES_HINT = "an id column of string or integer type"


@dataclass(frozen=True)
class ColumnSpec:
    """How to read the input: which columns hold the text and the id, the file format (None:
    from the file names; see `formats.FORMATS`) and fsspec options for a URL input."""

    text: str = "text"
    id: str = "id"
    format: str | None = None
    storage_options: StorageOptions = ()  # for an fsspec URL input; never written to the manifest


@dataclass(frozen=True)
class InputFile:
    path: str
    size: int
    rows: int
    fingerprint: str
    row_offset: int
    has_id: bool
    format: str = PARQUET  # manifests written before other formats existed list Parquet files only

    def to_json(self) -> dict:
        return asdict(self)


def resolve_input_files(
    source: str | os.PathLike, fmt: str | None = None, options: StorageOptions = ()
) -> list[Path | str]:
    """A directory (searched recursively), a single file, a saved dataset or a glob, in input
    order: local paths as Paths, URLs as strings."""
    return [loc if storage.is_url(loc) else Path(loc) for loc, _ in resolve_inputs(source, fmt, options)]


def refuse_output_inside_input(source: str | os.PathLike, output: str | os.PathLike) -> None:
    """-o inside -i would make the next run over the input read this run's parts as shards;
    -i inside -o would let --overwrite clear the input. Both are refused before anything is
    written. A glob counts from its directory part (`data/*.jsonl` -> `data`)."""
    text = storage.local_or_url(str(source))
    if storage.is_url(text) or storage.is_url(str(output)):
        return  # another filesystem than the (local) output
    base = Path(text)
    if not base.exists() and any(ch in text for ch in "*?["):
        base = Path(*[part for part in takewhile(lambda p: not any(ch in p for ch in "*?["), base.parts)] or ["."])
    base, out = resolved(base), resolved(Path(output))
    fix = "write the output next to the input, not inside it (or the input inside the output)"
    if out == base or base in out.parents:
        raise UsageError(
            f"the output {output} is inside the input {source}; a later run over the input would read this output as shards",
            path=output,
            fix=fix,
        )
    if out in base.parents:
        raise UsageError(
            f"the input {source} is inside the output {output}, which --overwrite would clear", path=output, fix=fix
        )


def resolved(path: Path) -> Path:
    """`path.resolve()`, with a symlink loop as a one-line exit 2."""
    try:
        return path.resolve()
    except (RuntimeError, OSError) as exc:
        raise UsageError(
            f"cannot resolve the path ({first_line(exc)})",
            path=path,
            fix="a symbolic link on it points back to itself; fix or remove the link",
        ) from None


def fingerprint_file(path: str | Path, fmt: str = PARQUET, options: StorageOptions = ()) -> str:
    """Parquet and Arrow files: size plus xxh3 of the head and the footer, cheap on huge shards;
    any rewrite of a Parquet file changes its footer (row-group offsets and sizes). JSON Lines
    has no footer, and the scan reads every byte anyway, so it is hashed whole (xxh3 runs at
    several GB/s, far above the JSON parse)."""
    size = storage.size(str(path), options)
    digest = xxhash.xxh3_128()
    digest.update(str(size).encode())
    opened = storage.open_binary(str(path), options) if storage.is_url(str(path)) else open(path, "rb")
    if fmt == JSONL:
        with opened as handle:
            return storage.digest_stream(handle, digest).hexdigest()
    with opened as handle:
        digest.update(handle.read(_FINGERPRINT_SPAN))
        if size > _FINGERPRINT_SPAN:
            handle.seek(max(size - _FINGERPRINT_SPAN, _FINGERPRINT_SPAN))
            digest.update(handle.read())
    return digest.hexdigest()


def _check_text_type(path: Path, name: str, dtype: pa.DataType) -> None:
    if pa.types.is_null(dtype):  # every value null (JSON Lines): the input check reports null texts
        return
    if pa.types.is_string(dtype) or pa.types.is_large_string(dtype) or pa.types.is_string_view(dtype):
        return
    if pa.types.is_dictionary(dtype) and (
        pa.types.is_string(dtype.value_type) or pa.types.is_large_string(dtype.value_type)
    ):
        return
    if pa.types.is_binary(dtype) or pa.types.is_large_binary(dtype):
        fix = f"decode column '{name}' to UTF-8 strings before curating (e.g. polars .cast(pl.String)), or pick the text column with --text-column"
    else:
        fix = f"pick the text column with --text-column, or cast '{name}' to string"
    raise InputError(f"text column '{name}' has type {dtype}, not string", path=path, fix=fix)


def _check_id_type(path: Path, name: str, dtype: pa.DataType) -> None:
    if (
        pa.types.is_string(dtype)
        or pa.types.is_large_string(dtype)
        or pa.types.is_integer(dtype)
        or pa.types.is_string_view(dtype)
    ):
        return
    if pa.types.is_dictionary(dtype) or pa.types.is_null(dtype):
        return
    raise InputError(
        f"id column '{name}' has type {dtype}",
        path=path,
        fix=f"use {_ID_TYPES_HINT}, pick another with --id-column, or drop it to get '<file stem>:<row>' ids",
    )


class InputSet:
    """The validated input corpus: files in order, their unified schema, and an ordered reader."""

    def __init__(self, files: list[InputFile], schema: pa.Schema, columns: ColumnSpec):
        self.files = files
        self.schema = schema
        self.columns = columns

    @property
    def num_rows(self) -> int:
        return sum(f.rows for f in self.files)

    @property
    def synthesized_ids(self) -> bool:
        return not any(f.has_id for f in self.files)

    @classmethod
    def scan(
        cls, source: str | os.PathLike, columns: ColumnSpec = ColumnSpec(), output: str | os.PathLike | None = None
    ) -> InputSet:
        """Open every file once (Parquet: footer only; JSON Lines: parsed once, to learn its
        fields and row count): schema, types and row counts are checked up front. With
        `output`, an output inside the input (or the reverse) is refused first."""
        if output is not None:
            refuse_output_inside_input(source, output)
        fmt = check_format(columns.format)
        options = columns.storage_options
        found = resolve_inputs(source, fmt, options)
        scans = []
        looked = _look_at_files(found, columns.text, options)
        for (path, _kind), (scan, _, _) in zip(found, looked):
            if scan.schema is not None:
                _check_columns(path, scan.schema, columns)
            scans.append(scan)
        with_schema = [(path, scan) for (path, _), scan in zip(found, scans) if scan.schema is not None]
        has_ids = {columns.id in scan.schema.names for _, scan in with_schema}
        if len(has_ids) > 1:
            odd = next(
                path
                for path, scan in with_schema
                if (columns.id in scan.schema.names) != (columns.id in with_schema[0][1].schema.names)
            )
            raise InputError(
                f"some shards have the id column '{columns.id}' and some do not",
                path=odd,
                fix="give every shard an id column, or none (ids are then '<file stem>:<row>')",
            )
        has_id = has_ids.pop() if has_ids else False  # files without records (empty JSON Lines) follow the others
        files: list[InputFile] = []
        offset = 0
        for (path, kind), (scan, size, fingerprint) in zip(found, looked):
            files.append(InputFile(path, size, scan.rows, fingerprint, offset, has_id, kind))
            offset += scan.rows
        if not with_schema:  # nothing but empty files: zero rows of id and text
            unified = pa.schema([pa.field(columns.id, pa.string()), pa.field(columns.text, pa.string())])
        else:
            unified = _unify([scan.schema for _, scan in with_schema], [path for path, _ in with_schema], columns)
        return cls(files, unified, columns)

    def batches(
        self, batch_size: int = DEFAULT_BATCH_SIZE, columns: Sequence[str] | None = None
    ) -> Iterator[pa.RecordBatch]:
        """Stream batches in input order, conformed to the unified schema, with ids and ordinals.

        `columns` restricts what is read (the id and ordinal columns are always present)."""
        for file in self.files:
            yield from self._file_batches(file, batch_size, columns)

    def file_batches(
        self,
        index: int,
        batch_size: int = DEFAULT_BATCH_SIZE,
        columns: Sequence[str] | None = None,
        row_groups: tuple[int, ...] | None = None,
    ) -> Iterator[pa.RecordBatch]:
        """One file's batches (or, for Parquet, those of `row_groups`, ascending indices): the
        unit of work for parallel execution. Conformed as `batches`, with global ordinals."""
        return self._file_batches(self.files[index], batch_size, columns, row_groups)

    def _file_batches(
        self,
        file: InputFile,
        batch_size: int,
        columns: Sequence[str] | None,
        row_groups: tuple[int, ...] | None = None,
    ) -> Iterator[pa.RecordBatch]:
        path = file.path
        options = self.columns.storage_options
        wanted = list(self.schema.names) if columns is None else _with_required(columns, self.columns, self.schema)
        read = [name for name in wanted if file.has_id or name != self.columns.id]
        read_schema = pa.schema([self.schema.field(name) for name in read])
        known = (file.size, file.fingerprint)
        expected = (
            file.rows
            if row_groups is None or file.format != PARQUET
            else parquet_row_group_rows(path, row_groups, options, known)
        )
        seen = 0
        try:
            for row, batch in read_batches(path, file.format, read_schema, batch_size, row_groups, options, known):
                n = batch.num_rows
                yield self._conform(batch, wanted, file, file.row_offset + row, n)
                seen += n
        except InputError:
            raise
        except (pa.ArrowException, OSError) as exc:
            raise InputError(
                f"cannot read rows ({first_line(exc)})",
                path=path,
                fix="the shard is corrupt, truncated or not valid UTF-8; re-export it or remove it from the input",
            ) from None
        if seen != expected:
            what = "the Parquet footer" if file.format == PARQUET else "when the input was scanned"
            raise InputError(
                f"row count differs from {what} ({seen} != {expected})",
                path=path,
                fix="re-export the file; do not change the input during a run",
            )

    def _conform(
        self, batch: pa.RecordBatch, wanted: list[str], file: InputFile, start: int, n: int
    ) -> pa.RecordBatch:
        path = file.path
        arrays = []
        names = []
        for name in wanted:
            target = self.schema.field(name).type
            if name == self.columns.id and not file.has_id:
                local = pa.array(np.arange(start - file.row_offset, start - file.row_offset + n, dtype=np.int64)).cast(
                    pa.string()
                )
                column = pc.binary_join_element_wise(pa.scalar(file_stem(path)), local, ":")
            elif name in batch.schema.names:
                column = batch.column(name)
                if column.type != target:
                    try:
                        column = column.cast(target)
                    except pa.ArrowException as exc:
                        raise InputError(
                            f"column '{name}' has type {column.type}, other shards have {target} ({first_line(exc)})",
                            path=path,
                            fix="give the column one type across all shards",
                        ) from None
            else:
                column = pa.nulls(n, target)
            arrays.append(column)
            names.append(name)
        arrays.append(pa.array(np.arange(start, start + n, dtype=np.int64)))
        names.append(ROW_COLUMN)
        return pa.RecordBatch.from_arrays(arrays, names=names)


# Files of an object-store input looked at concurrently: each costs a few round trips (size,
# head and footer for the fingerprint, footer for the schema), ~5 ms each even on loopback, so
# 16 shards took 0.5 s one after another. Local files stay sequential (no latency to hide).
_REMOTE_SCANS = 16


def _look_at_files(found: list[tuple[str, str]], text_column: str, options: StorageOptions) -> list[tuple]:
    """(scan, size, fingerprint) per file, in input order; the first error in order is raised."""

    def look(item: tuple[str, str]) -> tuple:
        path, kind = item
        return (
            scan_file(path, kind, text_column, options),
            storage.size(path, options),
            fingerprint_file(path, kind, options),
        )

    if len(found) < 2 or not any(storage.is_url(path) for path, _ in found):
        return [look(item) for item in found]

    with ContextThreadPool(min(_REMOTE_SCANS, len(found))) as pool:
        return list(pool.map(look, found))


def _check_columns(path: Path, schema: pa.Schema, columns: ColumnSpec) -> None:
    if columns.text not in schema.names:
        raise InputError(
            f"missing text column '{columns.text}' (columns: {', '.join(schema.names) or 'none'})",
            path=path,
            fix="name the text column with --text-column (or [input] text_column in the pipeline)",
        )
    _check_text_type(path, columns.text, schema.field(columns.text).type)
    if columns.id in schema.names:
        _check_id_type(path, columns.id, schema.field(columns.id).type)
    if ROW_COLUMN in schema.names:
        raise InputError(f"column '{ROW_COLUMN}' is reserved by curate", path=path, fix="rename or drop that column")


def _with_required(columns: Sequence[str], spec: ColumnSpec, schema: pa.Schema) -> list[str]:
    wanted = [spec.id] + [c for c in columns if c != spec.id and c != ROW_COLUMN]
    missing = [c for c in wanted if c not in schema.names]
    if missing:
        raise KeyError(f"columns not in the input: {missing}")
    return wanted


def _plain_text_and_id(schema: pa.Schema, columns: ColumnSpec) -> pa.Schema:
    """Dictionary-encoded text or ids (polars categoricals, pandas category) read as their
    values, so a shard written that way unifies with plain-string shards."""
    for name in (columns.text, columns.id):
        if name in schema.names and pa.types.is_dictionary(schema.field(name).type):
            index = schema.get_field_index(name)
            schema = schema.set(index, schema.field(index).with_type(schema.field(index).type.value_type))
    return schema


def _unify(schemas: list[pa.Schema], paths: list[str], columns: ColumnSpec) -> pa.Schema:
    schemas = [_plain_text_and_id(s, columns) for s in schemas]
    try:
        unified = pa.unify_schemas([s.remove_metadata() for s in schemas], promote_options="permissive")
    except (pa.ArrowException, TypeError) as exc:
        for path, schema in zip(paths[1:], schemas[1:]):
            try:
                pa.unify_schemas(
                    [schemas[0].remove_metadata(), schema.remove_metadata()], promote_options="permissive"
                )
            except (pa.ArrowException, TypeError):
                raise InputError(
                    f"schema does not match {storage.name(paths[0])} ({first_line(exc)})",
                    path=path,
                    fix="give every shard the same column types",
                ) from None
        raise InputError(
            f"shards have incompatible schemas ({first_line(exc)})",
            path=paths[0],
            fix="give every shard the same column types",
        ) from None
    fields = [f for f in unified if f.name != columns.id]
    id_type = unified.field(columns.id).type if columns.id in unified.names else pa.string()
    if pa.types.is_dictionary(id_type):
        id_type = id_type.value_type
    if pa.types.is_null(id_type):
        id_type = pa.string()
    text_field = unified.field(columns.text)
    if pa.types.is_dictionary(text_field.type):
        fields = [pa.field(f.name, text_field.type.value_type) if f.name == columns.text else f for f in fields]
    elif pa.types.is_null(text_field.type):  # every text null: still a string column downstream
        fields = [pa.field(f.name, pa.string()) if f.name == columns.text else f for f in fields]
    return pa.schema([pa.field(columns.id, id_type)] + fields)


# ---------------------------------------------------------------------------------------
# Part directories: the format of kept/, removed/, embeddings/ and stage outputs.
