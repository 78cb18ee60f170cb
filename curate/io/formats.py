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

from curate.errors import InputError, UsageError, first_line
from curate.io import storage
from curate.io.storage import StorageOptions

PARQUET, JSONL, HF = "parquet", "jsonl", "hf"
FORMATS = (PARQUET, JSONL, HF)
FORMAT_HELP = "parquet | jsonl | hf"
# `.json` is read as JSON Lines (one object per line), as datatrove and NeMo Curator do.
JSONL_SUFFIXES = {
    ".jsonl": None,
    ".json": None,
    ".jsonl.gz": "gzip",
    ".json.gz": "gzip",
    ".jsonl.zst": "zstd",
    ".json.zst": "zstd",
}
HF_STATE = "state.json"
HF_INFO = "dataset_info.json"
HF_DICT = "dataset_dict.json"
_NAMES = {PARQUET: "Parquet", JSONL: "JSON Lines", HF: "saved Hugging Face dataset"}
# Decompressed bytes parsed at a time: bounds memory (the Arrow table of a block is about 2x
# its text) while leaving pyarrow enough to parse in parallel (it splits a block into 1 MiB
# pieces across threads).
JSONL_BLOCK_BYTES = 8 << 20
# The longest JSON Lines record read (contract: documented in docs/storage.md); a longer line is
# exit 2 naming the file and the line.
MAX_LINE_BYTES = 64 << 20
_ROW_COUNTER = "__curate_count"


def check_format(name: str | None) -> str | None:
    """None (detect from the file names) or one of FORMATS."""
    if name is None or name in FORMATS:
        return name
    raise UsageError(
        f"unknown input format {name!r}", fix=f'use --input-format {FORMAT_HELP} (or format = "jsonl" in [input])'
    )


def format_of_name(path: str | Path) -> str | None:
    name = storage.name(str(path)).lower()
    if name.endswith(".parquet"):
        return PARQUET
    if any(name.endswith(suffix) for suffix in JSONL_SUFFIXES):
        return JSONL
    if name.endswith(".arrow"):
        return HF
    return None


def file_stem(path: str | Path) -> str:
    """The stem of synthesized ids '<file stem>:<row>': `x.jsonl.gz` -> `x`, `x.parquet` -> `x`."""
    name = storage.name(str(path))
    lowered = name.lower()
    for suffix in sorted(JSONL_SUFFIXES, key=len, reverse=True):
        if lowered.endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


def jsonl_compression(path: str | Path) -> str | None:
    lowered = storage.name(str(path)).lower()
    for suffix, codec in sorted(JSONL_SUFFIXES.items(), key=lambda item: -len(item[0])):
        if lowered.endswith(suffix):
            return codec
    return None


# ---------------------------------------------------------------------------------------
# Which files an input names.


def resolve_inputs(source: str | Path, fmt: str | None = None, options: StorageOptions = ()) -> list[tuple[str, str]]:
    """(file location, format) in input order for a directory (searched recursively), a file,
    a saved dataset directory or a glob; local, or an fsspec URL. One format per input unless
    forced: a directory holding two would otherwise change meaning when a stray file appears."""
    fmt = check_format(fmt)
    text = storage.local_or_url(str(source))
    if storage.is_url(text):
        storage.check_scheme(text)
        return _resolve_remote(text, fmt, options)
    path = Path(text)
    if path.is_dir():
        files = [str(p) for p in path.rglob("*") if p.is_file()]
        root = "" if str(path) == "." else str(path)  # rglob under "." yields "a.parquet", not "./a.parquet"
        return _resolve_listing(root, files, fmt, options)
    if path.is_file():
        return [(str(path), fmt or format_of_name(text) or PARQUET)]
    if _is_glob(text):
        matches = [Path(p) for p in glob.glob(text, recursive=True)]
        files = [str(p) for p in matches if p.is_file()]
        datasets = [str(p) for p in matches if p.is_dir() and (p / HF_STATE).is_file() and (p / HF_INFO).is_file()]
        return _resolve_matches(text, files, datasets, fmt, options)
    raise InputError("input does not exist", path=text, fix="pass an existing directory, file or glob with -i")


def _is_glob(text: str) -> bool:
    return any(ch in text for ch in "*?[")


def _resolve_remote(url: str, fmt: str | None, options: StorageOptions) -> list[tuple[str, str]]:
    remote = storage.Remote(url, options)
    remote.fs.invalidate_cache()  # fsspec reuses filesystem objects: list afresh, as a new process would
    if _is_glob(remote.path):
        files, datasets = [], []
        for path, info in remote.call("list", remote.fs.glob, remote.path, detail=True).items():
            location = remote.location(path)
            if info.get("type") == "directory":
                if storage.exists(storage.join(location, HF_STATE), options) and storage.exists(
                    storage.join(location, HF_INFO), options
                ):
                    datasets.append(location)
            else:
                files.append(location)
        return _resolve_matches(url, files, datasets, fmt, options)
    if remote.isdir():
        return _resolve_listing(url.rstrip("/"), remote.find(), fmt, options)
    if remote.isfile():
        return [(url, fmt or format_of_name(url) or PARQUET)]
    raise InputError(
        "input does not exist",
        path=url,
        fix=f"pass an existing prefix, object or glob with -i; check the {storage.bucket_word(url)} name",
    )


def _resolve_matches(
    pattern: str, files: list[str], datasets: list[str], fmt: str | None, options: StorageOptions
) -> list[tuple[str, str]]:
    found: dict[str, list[str]] = {PARQUET: [], JSONL: [], HF: []}
    for file in sorted(files, key=storage.order_key):
        found[fmt or format_of_name(file) or PARQUET].append(file)
    if fmt in (None, HF):
        for dataset in sorted(datasets, key=storage.order_key):
            found[HF].extend(saved_dataset_files(dataset, options))
    if not any(found.values()):
        raise InputError("the glob matches no files", path=pattern, fix="check the pattern, e.g. 'data/*.parquet'")
    return _one_format(found, pattern, fmt)


def _resolve_listing(root: str, files: list[str], fmt: str | None, options: StorageOptions) -> list[tuple[str, str]]:
    """A directory (or prefix), given every file under it."""
    present = set(files)
    where = root or "."
    datasets = sorted(
        {
            storage.parent(f)
            for f in files
            if storage.name(f) == HF_STATE and storage.join(storage.parent(f), HF_INFO) in present
        },
        key=storage.order_key,
    )
    if storage.join(root, HF_DICT) in present:
        splits = sorted(storage.name(d) for d in datasets if storage.parent(d) == root)
        raise UsageError(
            f"a saved DatasetDict (splits: {', '.join(splits) or 'none'})",
            path=where,
            fix=f"point -i at one split, e.g. -i {storage.join(root, splits[0] if splits else 'train')}",
        )
    if root in datasets and fmt in (None, HF):
        return [(f, HF) for f in saved_dataset_files(root, options, present)]
    found: dict[str, list[str]] = {PARQUET: [], JSONL: [], HF: []}
    for file in sorted(files, key=storage.order_key):
        if storage.name(file).startswith(".") or any(file.startswith(d + "/") for d in datasets):
            continue
        kind = format_of_name(file)
        if kind in (PARQUET, JSONL):
            found[kind].append(file)
    for dataset in datasets:
        if storage.join(storage.parent(dataset), HF_DICT) in present:
            raise UsageError(
                "a split of a saved DatasetDict inside the input",
                path=dataset,
                fix=f"point -i at one split, e.g. -i {dataset}",
            )
        found[HF].extend(saved_dataset_files(dataset, options, present))
    if fmt is not None and not found[fmt]:
        raise InputError(
            f"no {_NAMES[fmt]} files in this directory",
            path=where,
            fix=f"point -i at a folder of {_NAMES[fmt]} files, or drop --input-format",
        )
    if not any(found.values()):
        raise InputError(
            "no .parquet files (nor .jsonl, .json, .jsonl.gz, .jsonl.zst or a saved Hugging Face dataset) in this directory",
            path=where,
            fix="point -i at a folder of Parquet shards, JSON Lines files or a datasets.save_to_disk directory",
        )
    return _one_format(found, where, fmt)


def _one_format(found: dict[str, list[str]], where: object, fmt: str | None) -> list[tuple[str, str]]:
    if fmt is not None:
        return [(p, fmt) for p in found[fmt]]
    present = [kind for kind in FORMATS if found[kind]]
    if len(present) > 1:
        counts = " and ".join(f"{len(found[k])} {_NAMES[k]}" for k in present)
        raise UsageError(
            f"the input holds {counts} files", path=where, fix=f"choose one with --input-format {FORMAT_HELP}"
        )
    return [(p, present[0]) for p in found[present[0]]]


def saved_dataset_files(directory: str, options: StorageOptions = (), present: set[str] | None = None) -> list[str]:
    """The Arrow files of a `save_to_disk` directory, in the order its state.json lists them."""
    state_path = storage.join(directory, HF_STATE)
    try:
        state = json.loads(storage.read_bytes(state_path, options).decode("utf-8"))
        names = [entry["filename"] for entry in state["_data_files"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(
            f"not a readable state.json of a saved dataset ({type(exc).__name__}: {exc})",
            path=state_path,
            fix="re-save the dataset with datasets.save_to_disk",
        ) from None
    files = [storage.join(directory, name) for name in names]
    for file in files:
        if not (file in present if present is not None else storage.exists(file, options)):
            raise InputError(
                "listed in state.json but missing", path=file, fix="re-save the dataset with datasets.save_to_disk"
            )
    return files


# ---------------------------------------------------------------------------------------
# One file's schema and row count (scan), and its batches (read).


@dataclass(frozen=True)
class FileScan:
    """What a scan learns of one file; `schema` is None for a JSON Lines file without records."""

    schema: pa.Schema | None
    rows: int


def scan_file(path: str, fmt: str, text_column: str, options: StorageOptions = ()) -> FileScan:
    if fmt == PARQUET:
        parquet = open_parquet(path, options)
        return FileScan(parquet.schema_arrow, parquet.metadata.num_rows)
    if fmt == JSONL:
        return _scan_jsonl(path, text_column, options)
    if fmt == HF:
        return _scan_arrow_stream(path, options)
    raise ValueError(f"unknown format {fmt!r}")


def read_batches(
    path: str,
    fmt: str,
    schema: pa.Schema,
    batch_size: int,
    row_groups: Sequence[int] | None = None,
    options: StorageOptions = (),
    known: tuple[int, str] | None = None,
) -> Iterator[tuple[int, pa.RecordBatch]]:
    """(first row of the batch within the file, batch) holding the columns of `schema` that the
    file has (JSON Lines: all of them, null where a line lacks the field). `known`: see
    `open_parquet`."""
    if fmt == PARQUET:
        yield from _parquet_batches(path, schema, batch_size, row_groups, options, known)
        return
    if row_groups is not None:
        raise ValueError(f"row groups are a Parquet notion; {fmt} files are read whole (row_groups=None)")
    names = schema.names
    if not names:  # ids only, synthesized: read a stand-in column, since rows need a column to count
        schema = pa.schema([pa.field(_ROW_COUNTER, pa.null())])
    if fmt == JSONL:
        batches: Iterable[pa.RecordBatch] = _jsonl_batches(path, schema, options)
    elif fmt == HF:
        batches = _arrow_stream_batches(path, schema, options)
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


def _source(path: str, options: StorageOptions, size: int | None = None) -> object:
    """What pyarrow opens: a local path as is (its native reader), a URL as an fsspec file."""
    return storage.open_binary(path, options, size) if storage.is_url(path) else path


# Footers of object-store Parquet files this process has read, by (URL, fingerprint): the
# input's fingerprint covers the footer, so a hit is the same bytes. Every work unit of a shard
# opens it again (the input check, then each stage's fit and transform); without this each
# open costs a HEAD and one or two footer GETs (on a loopback S3 endpoint, exact + minhash
# over 200k rows in 16 shards: 128 opens).
_FOOTERS: dict[tuple[str, str], pq.FileMetaData] = {}
_FOOTERS_KEPT = 256


def open_parquet(path: str, options: StorageOptions = (), known: tuple[int, str] | None = None) -> pq.ParquetFile:
    """`known`: the file's (size, fingerprint) from the input scan, which lets a URL be opened
    without a HEAD request and its footer come from this process's cache."""
    cached = None
    if known is not None and storage.is_url(path):
        cached = _FOOTERS.get((path, known[1]))
    try:
        parquet = pq.ParquetFile(_source(path, options, known[0] if known else None), metadata=cached)
    except (pa.ArrowException, OSError) as exc:
        raise InputError(
            f"not a readable Parquet file ({first_line(exc)})",
            path=path,
            fix="re-export the shard or remove it from the input",
        ) from None
    if known is not None and cached is None and storage.is_url(path):
        if len(_FOOTERS) >= _FOOTERS_KEPT:
            _FOOTERS.pop(next(iter(_FOOTERS)))
        _FOOTERS[(path, known[1])] = parquet.metadata
    return parquet


def _parquet_batches(
    path: str,
    schema: pa.Schema,
    batch_size: int,
    row_groups: Sequence[int] | None,
    options: StorageOptions,
    known: tuple[int, str] | None = None,
) -> Iterator[tuple[int, pa.RecordBatch]]:
    parquet = open_parquet(path, options, known)
    names = set(parquet.schema_arrow.names)
    columns = [name for name in schema.names if name in names]
    metadata = parquet.metadata
    if row_groups is None:
        runs: list[list[int] | None] = [None]
    else:
        runs = _contiguous_runs(row_groups, metadata.num_row_groups, path)
    starts = np.concatenate(
        [[0], np.cumsum([metadata.row_group(g).num_rows for g in range(metadata.num_row_groups)])]
    ).astype(int)
    for run in runs:
        row = 0 if run is None else int(starts[run[0]])
        # One thread: curate runs a process per core, and pyarrow's threaded reader cost 2.7x the
        # CPU on 8,192-row groups read as 65,536-row batches (0.29 s against 0.11 s for 50 MB of
        # short texts; 6x on 13 KB documents), for no gain in wall time on 2 cores.
        batches = parquet.iter_batches(batch_size=batch_size, row_groups=run, columns=columns, use_threads=False)
        for batch in batches:
            yield row, batch
            row += batch.num_rows


def _contiguous_runs(row_groups: Sequence[int], count: int, path: str) -> list[list[int]]:
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


def parquet_row_group_rows(
    path: str, row_groups: Sequence[int] | None, options: StorageOptions = (), known: tuple[int, str] | None = None
) -> int:
    metadata = open_parquet(path, options, known).metadata
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


def _jsonl_blocks(path: str, options: StorageOptions = ()) -> Iterator[tuple[int, bytes]]:
    """(number of the block's first line, whole lines) of the decompressed file. Memory stays
    within a block plus one line: a line longer than MAX_LINE_BYTES is refused as soon as it
    is (a 6 GB line-free file is not read to the end first), and its pieces are joined once."""
    codec = jsonl_compression(path)
    line = 1
    pending: list[bytes] = []  # the start of a line not ended yet, in pieces (never re-concatenated)
    pending_bytes = 0
    try:
        stream = pa.input_stream(_source(path, options), compression=codec)
    except (pa.ArrowException, OSError) as exc:
        raise InputError(
            f"cannot open ({first_line(exc)})", path=path, fix="check the file exists and is readable"
        ) from None
    with stream:
        while True:
            try:
                block = stream.read(JSONL_BLOCK_BYTES)
            except (pa.ArrowException, OSError) as exc:
                what = (
                    f"cannot decompress ({codec}: {first_line(exc)})" if codec else f"cannot read ({first_line(exc)})"
                )
                raise InputError(
                    what, path=path, fix="the file is corrupt or truncated; re-create it or remove it from the input"
                ) from None
            if not block:
                break
            first_end = block.find(b"\n")
            if pending_bytes + (len(block) if first_end < 0 else first_end) > MAX_LINE_BYTES:
                raise _line_too_long(path, line, pending_bytes + (len(block) if first_end < 0 else first_end))
            if first_end < 0:
                pending.append(block)
                pending_bytes += len(block)
                continue
            cut = block.rfind(b"\n") + 1
            chunk = b"".join([*pending, block[:cut]]) if pending else block[:cut]
            pending, pending_bytes = ([block[cut:]], len(block) - cut) if cut < len(block) else ([], 0)
            if not chunk.isspace():
                yield line, chunk
            line += chunk.count(b"\n")
    rest = b"".join(pending)
    if rest and not rest.isspace():
        yield line, rest


def _line_too_long(path: str, line: int, size: int) -> InputError:
    return InputError(
        f"line {line} is longer than {MAX_LINE_BYTES >> 20} MiB (at least {size:,} bytes without a line break)",
        path=path,
        fix="split that record into smaller ones, or store the data as Parquet",
    )


def _parse_block(path: str, first: int, block: bytes, schema: pa.Schema | None = None) -> pa.Table:
    options = (
        pj.ParseOptions()
        if schema is None
        else pj.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore")
    )
    try:
        try:
            return pj.read_json(pa.BufferReader(block), parse_options=options)
        except pa.ArrowInvalid as exc:
            if "straddl" not in str(exc):
                raise
            # A line longer than pyarrow's parse block (1 MiB): parse the chunk as one block
            # (its lines are whole, each at most MAX_LINE_BYTES).
            return pj.read_json(
                pa.BufferReader(block), read_options=pj.ReadOptions(block_size=len(block) + 1), parse_options=options
            )
    except (pa.ArrowException, UnicodeDecodeError) as exc:  # invalid UTF-8 surfaces as UnicodeDecodeError
        raise _diagnose(path, first, block, exc) from None


def _scan_jsonl(path: str, text_column: str, options: StorageOptions = ()) -> FileScan:
    schema: pa.Schema | None = None
    rows = 0
    for first, block in _jsonl_blocks(path, options):
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


def _jsonl_batches(path: str, schema: pa.Schema, options: StorageOptions = ()) -> Iterator[pa.RecordBatch]:
    # An explicit schema: values parse to the scan's (unified) types, strings that look like
    # dates stay strings, and fields not asked for are skipped.
    for first, block in _jsonl_blocks(path, options):
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


def _check_text_field(path: str, first: int, block: bytes, table: pa.Table, text_column: str) -> None:
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


def _unify_block(path: str, first: int, block: bytes, schema: pa.Schema, block_schema: pa.Schema) -> pa.Schema:
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
        raise InputError(
            f"lines {first}.. do not match the types of earlier lines ({first_line(exc)})",
            path=path,
            fix="give each field one JSON type on every line",
        ) from None


def _unifies(a: pa.DataType, b: pa.DataType) -> bool:
    try:
        pa.unify_schemas([pa.schema([("f", a)]), pa.schema([("f", b)])], promote_options="permissive")
    except (pa.ArrowException, TypeError):
        return False
    return True


def _diagnose(path: str, first: int, block: bytes, exc: BaseException) -> InputError:
    """Name the line pyarrow failed on (its error counts records, not lines, and never names
    the file): decode line by line, on the error path only."""
    kinds: dict[str, tuple[str, int]] = {}
    last = first
    for number, raw in _record_lines(first, block):
        last = number
        try:
            value = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError:
            return InputError(
                f"line {number} is not valid UTF-8", path=path, fix="re-encode the file as UTF-8 (e.g. iconv -t UTF-8)"
            )
        except json.JSONDecodeError as err:
            return InputError(
                f"line {number} is not valid JSON ({err.msg} at column {err.colno})",
                path=path,
                fix="fix or remove that line; JSON Lines holds one JSON object per line",
            )
        if not isinstance(value, dict):
            return InputError(
                f"line {number} is {_kind(value)}, not a JSON object",
                path=path,
                fix='JSON Lines holds one JSON object per line, e.g. {"id": 1, "text": "..."}',
            )
        for key, item in value.items():
            kind = _kind(item)
            if kind is None:
                continue
            seen = kinds.setdefault(key, (kind, number))
            if seen[0] != kind:
                return InputError(
                    f"field '{key}' is {kind} on line {number} but {seen[0]} on line {seen[1]}",
                    path=path,
                    fix=f"give '{key}' one JSON type on every line",
                )
    return InputError(
        f"cannot parse lines {first}-{last} ({first_line(exc)})",
        path=path,
        fix="check those lines hold one JSON object each with one type per field",
    )


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


def _open_stream(path: str, options: StorageOptions = ()) -> pa.ipc.RecordBatchStreamReader:
    try:
        return pa.ipc.open_stream(storage.open_binary(path, options) if storage.is_url(path) else pa.memory_map(path))
    except (pa.ArrowException, OSError) as exc:
        raise InputError(
            f"not a readable Arrow stream file ({first_line(exc)})",
            path=path,
            fix="re-save the dataset with datasets.save_to_disk",
        ) from None


def _scan_arrow_stream(path: str, options: StorageOptions = ()) -> FileScan:
    reader = _open_stream(path, options)
    rows = 0
    try:
        for batch in reader:  # headers only: the bodies stay in the memory map
            rows += batch.num_rows
    except (pa.ArrowException, OSError) as exc:
        raise InputError(
            f"cannot read record batches ({first_line(exc)})",
            path=path,
            fix="the file is corrupt or truncated; re-save the dataset",
        ) from None
    return FileScan(reader.schema.remove_metadata(), rows)


def _arrow_stream_batches(path: str, schema: pa.Schema, options: StorageOptions = ()) -> Iterator[pa.RecordBatch]:
    reader = _open_stream(path, options)
    names = [name for name in schema.names if name in reader.schema.names] or reader.schema.names[:1]
    try:
        for batch in reader:
            yield batch.select(names)
    except (pa.ArrowException, OSError) as exc:
        raise InputError(
            f"cannot read record batches ({first_line(exc)})",
            path=path,
            fix="the file is corrupt or truncated; re-save the dataset",
        ) from None
