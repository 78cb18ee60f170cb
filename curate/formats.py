"""Input formats: Parquet shards, JSON Lines (plain, gzip, zstd) and datasets written by
Hugging Face `datasets.save_to_disk` (Arrow IPC stream files, read with pyarrow alone).

Each reader yields the raw record batches of one file; `shards.InputSet` conforms them to the
unified schema and numbers the rows. Order is the same contract for every format: sorted
files (a saved dataset's files in its state.json order), then row or line order.
"""

from __future__ import annotations

import glob
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.json as pj
import pyarrow.parquet as pq

from curate.errors import InputError, UsageError

PARQUET, JSONL, HF = "parquet", "jsonl", "hf"
FORMATS = (PARQUET, JSONL, HF)
FORMAT_HELP = "parquet | jsonl | hf"
# `.json` is read as JSON Lines (one object per line), as datatrove and NeMo Curator do.
JSONL_SUFFIXES = {".jsonl": None, ".json": None, ".jsonl.gz": "gzip", ".json.gz": "gzip", ".jsonl.zst": "zstd", ".json.zst": "zstd"}
HF_STATE = "state.json"
HF_INFO = "dataset_info.json"
HF_DICT = "dataset_dict.json"
_NAMES = {PARQUET: "Parquet", JSONL: "JSON Lines", HF: "saved Hugging Face dataset"}
# Decompressed bytes parsed at a time: bounds memory (the Arrow table of a block is about 2x
# its text) while leaving pyarrow enough to parse in parallel (it splits a block into 1 MiB
# pieces across threads).
JSONL_BLOCK_BYTES = 8 << 20
_ROW_COUNTER = "__curate_count"


def check_format(name: str | None) -> str | None:
    """None (detect from the file names) or one of FORMATS."""
    if name is None or name in FORMATS:
        return name
    raise UsageError(f"unknown input format {name!r}", fix=f"use --input-format {FORMAT_HELP} (or format = \"jsonl\" in [input])")


def format_of_name(path: Path) -> str | None:
    name = path.name.lower()
    if name.endswith(".parquet"):
        return PARQUET
    if any(name.endswith(suffix) for suffix in JSONL_SUFFIXES):
        return JSONL
    if name.endswith(".arrow"):
        return HF
    return None


def file_stem(path: str | Path) -> str:
    """The stem of synthesized ids '<file stem>:<row>': `x.jsonl.gz` -> `x`, `x.parquet` -> `x`."""
    path = Path(path)
    lowered = path.name.lower()
    for suffix in sorted(JSONL_SUFFIXES, key=len, reverse=True):
        if lowered.endswith(suffix):
            return path.name[: -len(suffix)]
    return path.stem


def jsonl_compression(path: Path) -> str | None:
    lowered = path.name.lower()
    for suffix, codec in sorted(JSONL_SUFFIXES.items(), key=lambda item: -len(item[0])):
        if lowered.endswith(suffix):
            return codec
    return None


# ---------------------------------------------------------------------------------------
# Which files an input names.


def resolve_inputs(source: str | Path, fmt: str | None = None) -> list[tuple[Path, str]]:
    """(file, format) in input order for a directory (searched recursively), a file, a saved
    dataset directory or a glob. One format per input unless forced: a directory holding two
    would otherwise change meaning when a stray file appears."""
    fmt = check_format(fmt)
    text = str(source)
    path = Path(text)
    if path.is_dir():
        return _resolve_directory(path, fmt)
    if path.is_file():
        return [(path, fmt or format_of_name(path) or PARQUET)]
    if any(ch in text for ch in "*?["):
        found: dict[str, list[Path]] = {PARQUET: [], JSONL: [], HF: []}
        for match in sorted(Path(p) for p in glob.glob(text, recursive=True)):
            if match.is_file():
                found[fmt or format_of_name(match) or PARQUET].append(match)
            elif match.is_dir() and _is_saved_dataset(match) and fmt in (None, HF):
                found[HF].extend(saved_dataset_files(match))
        if not any(found.values()):
            raise InputError("the glob matches no files", path=text, fix="check the pattern, e.g. 'data/*.parquet'")
        return _one_format(found, text, fmt)
    raise InputError("input does not exist", path=text, fix="pass an existing directory, file or glob with -i")


def _resolve_directory(path: Path, fmt: str | None) -> list[tuple[Path, str]]:
    if (path / HF_DICT).is_file():
        splits = sorted(p.name for p in path.iterdir() if p.is_dir() and _is_saved_dataset(p))
        raise UsageError(
            f"a saved DatasetDict (splits: {', '.join(splits) or 'none'})",
            path=path,
            fix=f"point -i at one split, e.g. -i {path / (splits[0] if splits else 'train')}",
        )
    if _is_saved_dataset(path) and fmt in (None, HF):
        return [(p, HF) for p in saved_dataset_files(path)]
    datasets = sorted(p.parent for p in path.rglob(HF_STATE) if _is_saved_dataset(p.parent))
    found: dict[str, list[Path]] = {PARQUET: [], JSONL: [], HF: []}
    for file in sorted(path.rglob("*")):
        if file.name.startswith(".") or not file.is_file() or any(d in file.parents for d in datasets):
            continue
        kind = format_of_name(file)
        if kind in (PARQUET, JSONL):
            found[kind].append(file)
    for dataset in datasets:
        if (dataset.parent / HF_DICT).is_file():
            raise UsageError("a split of a saved DatasetDict inside the input", path=dataset, fix=f"point -i at one split, e.g. -i {dataset}")
        found[HF].extend(saved_dataset_files(dataset))
    if fmt is not None and not found[fmt]:
        raise InputError(f"no {_NAMES[fmt]} files in this directory", path=path, fix=f"point -i at a folder of {_NAMES[fmt]} files, or drop --input-format")
    if not any(found.values()):
        raise InputError(
            "no .parquet files (nor .jsonl, .json, .jsonl.gz, .jsonl.zst or a saved Hugging Face dataset) in this directory",
            path=path,
            fix="point -i at a folder of Parquet shards, JSON Lines files or a datasets.save_to_disk directory",
        )
    return _one_format(found, path, fmt)


def _one_format(found: dict[str, list[Path]], where: object, fmt: str | None) -> list[tuple[Path, str]]:
    if fmt is not None:
        return [(p, fmt) for p in found[fmt]]
    present = [kind for kind in FORMATS if found[kind]]
    if len(present) > 1:
        counts = " and ".join(f"{len(found[k])} {_NAMES[k]}" for k in present)
        raise UsageError(f"the input holds {counts} files", path=where, fix=f"choose one with --input-format {FORMAT_HELP}")
    return [(p, present[0]) for p in found[present[0]]]


def _is_saved_dataset(directory: Path) -> bool:
    return (directory / HF_STATE).is_file() and (directory / HF_INFO).is_file()


def saved_dataset_files(directory: Path) -> list[Path]:
    """The Arrow files of a `save_to_disk` directory, in the order its state.json lists them."""
    state_path = directory / HF_STATE
    try:
        state = json.loads(state_path.read_text(encoding="utf-8"))
        names = [entry["filename"] for entry in state["_data_files"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(f"not a readable state.json of a saved dataset ({type(exc).__name__}: {exc})", path=state_path, fix="re-save the dataset with datasets.save_to_disk") from None
    files = [directory / name for name in names]
    for file in files:
        if not file.is_file():
            raise InputError("listed in state.json but missing", path=file, fix="re-save the dataset with datasets.save_to_disk")
    return files


# ---------------------------------------------------------------------------------------
# One file's schema and row count (scan), and its batches (read).


@dataclass(frozen=True)
class FileScan:
    """What a scan learns of one file; `schema` is None for a JSON Lines file without records."""

    schema: pa.Schema | None
    rows: int


def scan_file(path: Path, fmt: str, text_column: str) -> FileScan:
    if fmt == PARQUET:
        parquet = open_parquet(path)
        return FileScan(parquet.schema_arrow, parquet.metadata.num_rows)
    if fmt == JSONL:
        return _scan_jsonl(path, text_column)
    if fmt == HF:
        return _scan_arrow_stream(path)
    raise ValueError(f"unknown format {fmt!r}")


def read_batches(
    path: Path,
    fmt: str,
    schema: pa.Schema,
    batch_size: int,
    row_groups: Sequence[int] | None = None,
) -> Iterator[tuple[int, pa.RecordBatch]]:
    """(first row of the batch within the file, batch) holding the columns of `schema` that the
    file has (JSON Lines: all of them, null where a line lacks the field)."""
    if fmt == PARQUET:
        yield from _parquet_batches(path, schema, batch_size, row_groups)
        return
    if row_groups is not None:
        raise ValueError(f"row groups are a Parquet notion; {fmt} files are read whole (row_groups=None)")
    names = schema.names
    if not names:  # ids only, synthesized: read a stand-in column, since rows need a column to count
        schema = pa.schema([pa.field(_ROW_COUNTER, pa.null())])
    if fmt == JSONL:
        batches: Iterable[pa.RecordBatch] = _jsonl_batches(path, schema)
    elif fmt == HF:
        batches = _arrow_stream_batches(path, schema)
    else:
        raise ValueError(f"unknown format {fmt!r}")
    row = 0
    for batch in rebatch(batches, batch_size):
        yield row, batch.select(names)
        row += batch.num_rows


def rebatch(batches: Iterable[pa.RecordBatch], batch_size: int) -> Iterator[pa.RecordBatch]:
    """Batches of exactly `batch_size` rows (the last one shorter), as Parquet reads give."""
    pending: list[pa.RecordBatch] = []
    count = 0
    for batch in batches:
        if batch.num_rows == 0:
            continue
        pending.append(batch)
        count += batch.num_rows
        while count >= batch_size:
            table = pa.Table.from_batches(pending)
            yield table.slice(0, batch_size).combine_chunks().to_batches()[0]
            pending = table.slice(batch_size).to_batches()
            count -= batch_size
    if count:
        yield pa.Table.from_batches(pending).combine_chunks().to_batches()[0]


# ---------------------------------------------------------------------------------------
# Parquet


def open_parquet(path: Path) -> pq.ParquetFile:
    try:
        return pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        raise InputError(f"not a readable Parquet file ({first_line(exc)})", path=path, fix="re-export the shard or remove it from the input") from None


def _parquet_batches(path: Path, schema: pa.Schema, batch_size: int, row_groups: Sequence[int] | None) -> Iterator[tuple[int, pa.RecordBatch]]:
    parquet = open_parquet(path)
    names = set(parquet.schema_arrow.names)
    columns = [name for name in schema.names if name in names]
    metadata = parquet.metadata
    if row_groups is None:
        runs: list[list[int] | None] = [None]
    else:
        runs = _contiguous_runs(row_groups, metadata.num_row_groups, path)
    starts = np.concatenate([[0], np.cumsum([metadata.row_group(g).num_rows for g in range(metadata.num_row_groups)])]).astype(int)
    for run in runs:
        row = 0 if run is None else int(starts[run[0]])
        for batch in parquet.iter_batches(batch_size=batch_size, row_groups=run, columns=columns, use_threads=True):
            yield row, batch
            row += batch.num_rows


def _contiguous_runs(row_groups: Sequence[int], count: int, path: Path) -> list[list[int]]:
    """Row groups in runs of consecutive indices, so each run is one reader call with one
    starting row (a unit of work is normally a single run)."""
    groups = list(row_groups)
    if any(not 0 <= g < count for g in groups) or groups != sorted(set(groups)):
        raise ValueError(f"{path}: row groups {groups} are not distinct, ascending indices below {count}")
    runs: list[list[int]] = []
    for g in groups:
        if runs and runs[-1][-1] == g - 1:
            runs[-1].append(g)
        else:
            runs.append([g])
    return runs


def parquet_row_group_rows(path: Path, row_groups: Sequence[int] | None) -> int:
    metadata = open_parquet(path).metadata
    groups = range(metadata.num_row_groups) if row_groups is None else row_groups
    return sum(metadata.row_group(g).num_rows for g in groups)


# ---------------------------------------------------------------------------------------
# JSON Lines
#
# Parsed with pyarrow.json, one block of whole lines at a time, over pyarrow's decompressing
# input stream. Against a streaming decoder (json.loads per line, RecordBatch.from_pylist per
# batch) on 191k real short texts, 32.8 MB (`python bench/jsonl_read.py`, 2 shared cores):
# read 0.11 / 0.16 / 0.20 s (plain / gzip / zstd) vs 0.69 / 0.78 / 1.06 s, 5-6.5x faster, and
# 2.4-3.1x faster even counting our scan (a second parse, which learns the schema and row
# counts before any stage runs), with no Python object per row. pyarrow's own streaming reader
# (open_json) parses as fast but fixes the schema from the first block, so a field that first
# appears later (or an int column that later holds 1.5) fails; parsing our own blocks lets the
# scan infer each block and unify, and gives line numbers for errors.


def _jsonl_blocks(path: Path) -> Iterator[tuple[int, bytes]]:
    """(number of the block's first line, whole lines) of the decompressed file."""
    codec = jsonl_compression(path)
    line = 1
    rest = b""
    try:
        stream = pa.input_stream(str(path), compression=codec)
    except (pa.ArrowException, OSError) as exc:
        raise InputError(f"cannot open ({first_line(exc)})", path=path, fix="check the file exists and is readable") from None
    with stream:
        while True:
            try:
                block = stream.read(JSONL_BLOCK_BYTES)
            except (pa.ArrowException, OSError) as exc:
                what = f"cannot decompress ({codec}: {first_line(exc)})" if codec else f"cannot read ({first_line(exc)})"
                raise InputError(what, path=path, fix="the file is corrupt or truncated; re-create it or remove it from the input") from None
            if not block:
                break
            data = rest + block if rest else block
            cut = data.rfind(b"\n") + 1
            if cut == 0:
                rest = data
                continue
            chunk, rest = data[:cut], data[cut:]
            if not chunk.isspace():
                yield line, chunk
            line += chunk.count(b"\n")
    if rest and not rest.isspace():
        yield line, rest


def _parse_block(path: Path, first: int, block: bytes, schema: pa.Schema | None = None) -> pa.Table:
    options = pj.ParseOptions() if schema is None else pj.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore")
    try:
        return pj.read_json(pa.BufferReader(block), parse_options=options)
    except (pa.ArrowException, UnicodeDecodeError) as exc:  # invalid UTF-8 surfaces as UnicodeDecodeError
        raise _diagnose(path, first, block, exc) from None


def _scan_jsonl(path: Path, text_column: str) -> FileScan:
    schema: pa.Schema | None = None
    rows = 0
    for first, block in _jsonl_blocks(path):
        table = _parse_block(path, first, block)
        try:  # the parser passes invalid UTF-8 inside strings through; a full validation finds it (2 ms per 8 MiB block)
            table.validate(full=True)
        except pa.ArrowInvalid as exc:
            raise _diagnose(path, first, block, exc) from None
        block_schema = pa.schema([field.with_type(_json_type(field.type)) for field in table.schema])
        _check_text_field(path, first, block, table, text_column)
        schema = block_schema if schema is None else _unify_block(path, first, block, schema, block_schema)
        rows += table.num_rows
    return FileScan(schema, rows)


def _jsonl_batches(path: Path, schema: pa.Schema) -> Iterator[pa.RecordBatch]:
    # An explicit schema: values parse to the scan's (unified) types, strings that look like
    # dates stay strings, and fields not asked for are skipped.
    for first, block in _jsonl_blocks(path):
        yield from _parse_block(path, first, block, schema).to_batches()


def _json_type(dtype: pa.DataType) -> pa.DataType:
    """JSON has no dates: pyarrow infers timestamps from ISO-looking strings, which would make
    a string field's type depend on its values (and clash across blocks); keep them strings."""
    if pa.types.is_timestamp(dtype) or pa.types.is_date(dtype) or pa.types.is_time(dtype):
        return pa.string()
    if pa.types.is_struct(dtype):
        return pa.struct([dtype.field(i).with_type(_json_type(dtype.field(i).type)) for i in range(dtype.num_fields)])
    if pa.types.is_list(dtype):
        return pa.list_(dtype.value_field.with_type(_json_type(dtype.value_type)))
    return dtype


def _record_lines(first: int, block: bytes) -> list[tuple[int, bytes]]:
    """(line number, line) of the non-blank lines: record i of the block is entry i."""
    return [(first + i, raw) for i, raw in enumerate(block.split(b"\n")) if raw.strip()]


def _check_text_field(path: Path, first: int, block: bytes, table: pa.Table, text_column: str) -> None:
    """A record without the text field is an error; `"text": null` is a null text (the input
    check reports it, or --drop-null-text sends it to the ledger, as for Parquet)."""
    fix = f"give every line a '{text_column}' field (null if empty), or name the text field with --text-column"
    if text_column not in table.column_names:
        number = _record_lines(first, block)[0][0]
        raise InputError(f"line {number} has no '{text_column}' field", path=path, fix=fix)
    column = table.column(text_column)
    if not column.null_count:
        return
    lines = _record_lines(first, block)
    for row in np.flatnonzero(np.asarray(column.is_null())):  # error path and null texts only
        if row >= len(lines):
            break  # several objects on one line: rows no longer map to lines
        number, raw = lines[int(row)]
        record = _loads(raw)
        if isinstance(record, dict) and text_column not in record:
            raise InputError(f"line {number} has no '{text_column}' field", path=path, fix=fix)


def _unify_block(path: Path, first: int, block: bytes, schema: pa.Schema, block_schema: pa.Schema) -> pa.Schema:
    try:
        return pa.unify_schemas([schema, block_schema], promote_options="permissive")
    except (pa.ArrowException, TypeError) as exc:
        for field in block_schema:
            if field.name in schema.names and not _unifies(schema.field(field.name).type, field.type):
                earlier = schema.field(field.name).type
                for number, raw in _record_lines(first, block):
                    record = _loads(raw)
                    value = record.get(field.name) if isinstance(record, dict) else None
                    if value is not None and not _unifies(earlier, _json_type(pa.array([value]).type)):
                        raise InputError(
                            f"field '{field.name}' is {_kind(value)} on line {number} but {_type_kind(earlier)} on earlier lines",
                            path=path,
                            fix=f"give '{field.name}' one JSON type on every line",
                        ) from None
        raise InputError(f"lines {first}.. do not match the types of earlier lines ({first_line(exc)})", path=path, fix="give each field one JSON type on every line") from None


def _unifies(a: pa.DataType, b: pa.DataType) -> bool:
    try:
        pa.unify_schemas([pa.schema([("f", a)]), pa.schema([("f", b)])], promote_options="permissive")
    except (pa.ArrowException, TypeError):
        return False
    return True


def _diagnose(path: Path, first: int, block: bytes, exc: BaseException) -> InputError:
    """Name the line pyarrow failed on (its error counts records, not lines, and never names
    the file): decode line by line, on the error path only."""
    kinds: dict[str, tuple[str, int]] = {}
    last = first
    for number, raw in _record_lines(first, block):
        last = number
        try:
            value = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError:
            return InputError(f"line {number} is not valid UTF-8", path=path, fix="re-encode the file as UTF-8 (e.g. iconv -t UTF-8)")
        except json.JSONDecodeError as err:
            return InputError(f"line {number} is not valid JSON ({err.msg} at column {err.colno})", path=path, fix="fix or remove that line; JSON Lines holds one JSON object per line")
        if not isinstance(value, dict):
            return InputError(f"line {number} is {_kind(value)}, not a JSON object", path=path, fix="JSON Lines holds one JSON object per line, e.g. {\"id\": 1, \"text\": \"...\"}")
        for key, item in value.items():
            kind = _kind(item)
            if kind is None:
                continue
            seen = kinds.setdefault(key, (kind, number))
            if seen[0] != kind:
                return InputError(f"field '{key}' is {kind} on line {number} but {seen[0]} on line {seen[1]}", path=path, fix=f"give '{key}' one JSON type on every line")
    return InputError(f"cannot parse lines {first}-{last} ({first_line(exc)})", path=path, fix="check those lines hold one JSON object each with one type per field")


def _loads(raw: bytes) -> object:
    try:
        return json.loads(raw)
    except ValueError:
        return None


def _kind(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _type_kind(dtype: pa.DataType) -> str:
    if pa.types.is_boolean(dtype):
        return "a boolean"
    if pa.types.is_integer(dtype) or pa.types.is_floating(dtype):
        return "a number"
    if pa.types.is_string(dtype) or pa.types.is_large_string(dtype):
        return "a string"
    if pa.types.is_list(dtype) or pa.types.is_large_list(dtype):
        return "an array"
    if pa.types.is_struct(dtype):
        return "an object"
    return str(dtype)


# ---------------------------------------------------------------------------------------
# Saved Hugging Face datasets: Arrow IPC stream files, memory-mapped (zero copy).


def _open_stream(path: Path) -> pa.ipc.RecordBatchStreamReader:
    try:
        return pa.ipc.open_stream(pa.memory_map(str(path)))
    except (pa.ArrowException, OSError) as exc:
        raise InputError(f"not a readable Arrow stream file ({first_line(exc)})", path=path, fix="re-save the dataset with datasets.save_to_disk") from None


def _scan_arrow_stream(path: Path) -> FileScan:
    reader = _open_stream(path)
    rows = 0
    try:
        for batch in reader:  # headers only: the bodies stay in the memory map
            rows += batch.num_rows
    except (pa.ArrowException, OSError) as exc:
        raise InputError(f"cannot read record batches ({first_line(exc)})", path=path, fix="the file is corrupt or truncated; re-save the dataset") from None
    return FileScan(reader.schema.remove_metadata(), rows)


def _arrow_stream_batches(path: Path, schema: pa.Schema) -> Iterator[pa.RecordBatch]:
    reader = _open_stream(path)
    names = [name for name in schema.names if name in reader.schema.names] or reader.schema.names[:1]
    try:
        for batch in reader:
            yield batch.select(names)
    except (pa.ArrowException, OSError) as exc:
        raise InputError(f"cannot read record batches ({first_line(exc)})", path=path, fix="the file is corrupt or truncated; re-save the dataset") from None


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
