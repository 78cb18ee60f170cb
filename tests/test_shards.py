from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import random_texts, write_shards
from hypothesis import given, settings
from hypothesis import strategies as st

from curate.errors import InputError
from curate.io.inputs import ROW_COLUMN, ColumnSpec, InputSet, resolve_input_files
from curate.io.parts import PartWriter, list_parts, read_parts


def test_directory_glob_and_file_resolve_to_the_same_sorted_files(tmp_path):
    write_shards(tmp_path / "in", random_texts(30), shards=3)
    by_dir = resolve_input_files(tmp_path / "in")
    by_glob = resolve_input_files(str(tmp_path / "in" / "*.parquet"))
    assert by_dir == by_glob == sorted(by_dir)
    assert resolve_input_files(by_dir[1]) == [by_dir[1]]


def test_missing_input_names_the_path(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        resolve_input_files(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no .parquet files"):
        resolve_input_files(tmp_path / "empty")


@settings(max_examples=25, deadline=None)
@given(sizes=st.lists(st.integers(0, 40), min_size=1, max_size=5), batch=st.integers(1, 17))
def test_stream_keeps_input_order_and_global_ordinals(tmp_path_factory, sizes, batch):
    root = tmp_path_factory.mktemp("shards")
    total = sum(sizes)
    texts = [f"text {i}" for i in range(total)]
    start = 0
    for s, size in enumerate(sizes):
        pq.write_table(
            pa.table(
                {"id": [f"d{i}" for i in range(start, start + size)], "text": texts[start : start + size]},
                schema=pa.schema([("id", pa.string()), ("text", pa.string())]),
            ),
            root / f"s{s:02d}.parquet",
        )
        start += size
    inputs = InputSet.scan(root)
    batches = list(inputs.batches(batch_size=batch))
    got_text = [t for b in batches for t in b.column("text").to_pylist()]
    got_rows = np.concatenate([b.column(ROW_COLUMN).to_numpy() for b in batches]) if batches else np.array([])
    assert got_text == texts
    assert list(got_rows) == list(range(total))
    assert all(b.num_rows <= batch for b in batches)


def test_absent_id_column_gives_stem_and_row_ids(tmp_path):
    pq.write_table(pa.table({"text": ["a", "b"]}), tmp_path / "alpha.parquet")
    pq.write_table(pa.table({"text": ["c"]}), tmp_path / "beta.parquet")
    inputs = InputSet.scan(tmp_path)
    ids = [i for b in inputs.batches() for i in b.column("id").to_pylist()]
    assert ids == ["alpha:0", "alpha:1", "beta:0"]
    assert inputs.synthesized_ids


def test_custom_columns_and_passthrough(tmp_path):
    pq.write_table(pa.table({"key": [7, 8], "body": ["x", "y"], "meta": [b"\xff", b"\x00"]}), tmp_path / "a.parquet")
    inputs = InputSet.scan(tmp_path, ColumnSpec(text="body", id="key"))
    batch = next(inputs.batches())
    assert batch.column("key").to_pylist() == [7, 8]
    assert batch.column("meta").to_pylist() == [b"\xff", b"\x00"]


def test_mixed_schemas_are_conformed_with_nulls(tmp_path):
    pq.write_table(pa.table({"id": ["a"], "text": ["x"], "lang": ["en"]}), tmp_path / "a.parquet")
    pq.write_table(pa.table({"id": ["b"], "text": ["y"]}), tmp_path / "b.parquet")
    rows = [r for b in InputSet.scan(tmp_path).batches() for r in b.to_pylist()]
    assert [r["lang"] for r in rows] == ["en", None]


def test_text_column_of_wrong_type_is_an_input_error(tmp_path):
    pq.write_table(pa.table({"id": ["a"], "text": [3]}), tmp_path / "a.parquet")
    with pytest.raises(InputError, match="not string") as info:
        InputSet.scan(tmp_path)
    assert "a.parquet" in str(info.value)


def test_corrupt_file_is_an_input_error_naming_it(tmp_path):
    write_shards(tmp_path, random_texts(20), shards=1)
    good = next(tmp_path.glob("*.parquet"))
    (tmp_path / "zz-bad.parquet").write_bytes(good.read_bytes()[:-40])
    with pytest.raises(InputError, match="zz-bad.parquet"):
        InputSet.scan(tmp_path)


def test_part_writer_rolls_parts_and_leaves_no_temp_files(tmp_path):
    table = pa.table({"x": np.arange(10_000)})
    with PartWriter(tmp_path / "out", max_bytes=20_000) as writer:
        for batch in table.to_batches(max_chunksize=1000):
            writer.write(batch)
    parts = list_parts(tmp_path / "out")
    assert len(parts) > 1
    assert [p.name for p in parts] == [f"part-{i:05d}.parquet" for i in range(len(parts))]
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]
    assert read_parts(tmp_path / "out").column("x").to_pylist() == list(range(10_000))


def test_part_writer_abort_removes_the_partial_part(tmp_path):
    with pytest.raises(RuntimeError):
        with PartWriter(tmp_path / "out") as writer:
            writer.write(pa.table({"x": [1, 2]}))
            raise RuntimeError("killed")
    assert list((tmp_path / "out").iterdir()) == []


def test_empty_output_still_has_a_schema_part(tmp_path):
    schema = pa.schema([("x", pa.int64())])
    PartWriter(tmp_path / "out", schema=schema).close()
    parts = list_parts(tmp_path / "out")
    assert len(parts) == 1 and pq.read_schema(parts[0]).names == ["x"]


def _encodings(part) -> dict[str, set[str]]:
    metadata = pq.read_metadata(part)
    group = metadata.row_group(0)
    return {group.column(i).path_in_schema: set(group.column(i).encodings) for i in range(group.num_columns)}


def test_the_text_and_id_columns_are_written_without_a_dictionary_and_the_others_keep_theirs(tmp_path):
    texts = random_texts(3_000, seed=1)
    table = pa.table(
        {
            "id": [f"row-{i}" for i in range(len(texts))],
            "text": texts,
            "lang": ["en", "de", "fr"] * 1_000,
            "meta": [{"source": "web", "year": 2020 + i % 3} for i in range(len(texts))],
            "tags": [["a", "b"][: i % 3] for i in range(len(texts))],
            "attrs": pa.array([[("k", i % 2)] for i in range(len(texts))], pa.map_(pa.string(), pa.int64())),
        }
    )
    with PartWriter(tmp_path / "out", plain_columns=("text", "id")) as writer:
        writer.write(table)
    encodings = _encodings(list_parts(tmp_path / "out")[0])
    assert "RLE_DICTIONARY" not in encodings["text"] and "RLE_DICTIONARY" not in encodings["id"]
    others = set(encodings) - {"text", "id"}
    assert others == {
        "lang",
        "meta.source",
        "meta.year",
        "tags.list.element",
        "attrs.key_value.key",
        "attrs.key_value.value",
    }
    assert all("RLE_DICTIONARY" in encodings[c] for c in others)
    assert read_parts(tmp_path / "out").equals(table)
    with PartWriter(tmp_path / "default") as writer:  # without plain columns: Parquet's default
        writer.write(table)
    assert "RLE_DICTIONARY" in _encodings(list_parts(tmp_path / "default")[0])["text"]


def test_a_run_writes_kept_text_and_ledger_ids_without_a_dictionary(tmp_path):
    from curate.pipeline import RunOptions, parse_pipeline, run_pipeline

    texts = random_texts(2_000, seed=2)
    pq.write_table(pa.table({"id": [f"r{i}" for i in range(4_000)], "text": texts + texts}), tmp_path / "in.parquet")
    spec = parse_pipeline({"stage": [{"kind": "exact"}]}, "test")
    run_pipeline(spec, tmp_path / "in.parquet", tmp_path / "out", RunOptions(jobs=1))
    kept = _encodings(list_parts(tmp_path / "out" / "kept")[0])
    removed = _encodings(list_parts(tmp_path / "out" / "removed")[0])
    assert "RLE_DICTIONARY" not in kept["text"] and "RLE_DICTIONARY" not in kept["id"]
    assert "RLE_DICTIONARY" not in removed["id"] and "RLE_DICTIONARY" in removed["reason"]
