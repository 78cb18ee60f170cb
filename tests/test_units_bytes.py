"""Work units cut by bytes as well as rows: one file of long documents fills every worker, and
the output does not depend on the cut."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from executor_parity import assert_same_everywhere, dask_executors  # noqa: F401 (a fixture)

from curate.engine.units import (
    DEFAULT_UNIT_BYTES,
    MIN_UNIT_ROWS,
    InputSource,
    input_bytes,
    plan_units,
    unit_rows_for,
)
from curate.io.inputs import InputSet
from curate.io.parts import read_parts
from curate.pipeline import RunOptions, parse_pipeline, run_pipeline


def long_documents(path: Path, docs: int, words: int, row_group: int, seed: int = 0) -> Path:
    """`docs` documents of about `words` words each; every fourth one is a near copy of the one
    before it (one word changed), so MinHash has duplicates to find across unit boundaries."""
    rng = np.random.default_rng(seed)
    vocabulary = np.array([f"w{i}" for i in range(5000)])
    texts: list[str] = []
    for i in range(docs):
        if i % 4 == 3:
            tokens = texts[-1].split()
            tokens[len(tokens) // 2] = "changed"
            texts.append(" ".join(tokens))
        else:
            texts.append(" ".join(vocabulary[rng.integers(0, len(vocabulary), words)]))
    pq.write_table(pa.table({"id": [f"d{i}" for i in range(docs)], "text": texts}), path, row_group_size=row_group)
    return path


def test_rows_per_unit_follow_bytes_for_long_documents():
    # 8,000 documents of 13 KB (104 MB): by rows alone one unit (the floor is 16,384 rows)
    assert unit_rows_for(8000, 2) == MIN_UNIT_ROWS
    by_bytes = unit_rows_for(8000, 2, total_bytes=8000 * 13_000)
    assert by_bytes == 1000  # 4 units per worker
    assert unit_rows_for(8000, 1, total_bytes=8000 * 13_000) == 2000
    # a single worker still gets units no bigger than DEFAULT_UNIT_BYTES
    huge = unit_rows_for(80_000, 1, total_bytes=80_000 * 13_000)
    assert huge * 13_000 <= DEFAULT_UNIT_BYTES < (huge + 1) * 13_000
    # short texts: the same units as before bytes counted (100 B a row is far from both limits)
    for rows, workers in ((10_000, 2), (1_000_000, 2), (5_000_000, 8)):
        assert unit_rows_for(rows, workers, total_bytes=rows * 100) == unit_rows_for(rows, workers)
    # the row cap still holds
    assert unit_rows_for(8000, 2, cap=300, total_bytes=8000 * 13_000) == 300


def test_one_long_file_becomes_several_units_covering_every_row_once(tmp_path):
    path = long_documents(tmp_path / "long.parquet", docs=240, words=4000, row_group=60)
    inputs = InputSet.scan(path)
    total = input_bytes(inputs)
    assert total >= 240 * 4000 * 4  # uncompressed: at least the text's bytes
    unit_rows = unit_rows_for(inputs.num_rows, 2, total_bytes=total, unit_bytes=2**20)
    assert unit_rows < 60  # below one row group: row groups are cut into row ranges
    source = InputSource(inputs, 16, False)
    units = plan_units(source, unit_rows)
    assert len(units) >= 8
    assert all(u.rows <= unit_rows for u in units)
    rows = np.concatenate([b.column("__curate_row").to_numpy() for u in units for b in u.batches(["text"])])
    assert np.array_equal(rows, np.arange(240))


def _kept_and_removed(out: Path) -> tuple[list, list]:
    kept = read_parts(out / "kept", columns=["id"]).column("id").to_pylist()
    removed = read_parts(out / "removed", columns=["id"]).column("id").to_pylist()
    return kept, removed


@pytest.mark.slow  # 14-18 s; test_minhash_stage compares unit sizes and executors in the default run
def test_minhash_on_one_long_file_same_output_for_any_cut(tmp_path, dask_executors):  # noqa: F811
    (tmp_path / "in").mkdir()
    path = long_documents(tmp_path / "in" / "long.parquet", docs=160, words=3000, row_group=40)
    spec = parse_pipeline({"stage": [{"kind": "minhash"}]}, "test")
    runs = {
        "rows only, jobs 1": RunOptions(jobs=1, unit_bytes=0),
        "bytes, jobs 1": RunOptions(jobs=1, unit_bytes=2**20),
        "bytes, jobs 2": RunOptions(jobs=2, unit_bytes=2**19),
        "bytes, dask 3": RunOptions(executor=dask_executors[3], unit_bytes=2**19),
        "bytes, dask 1": RunOptions(executor=dask_executors[1], unit_bytes=3 * 2**20),
    }
    outputs, units = {}, {}
    for name, options in runs.items():
        out = tmp_path / name.replace(" ", "_").replace(",", "")
        result = run_pipeline(spec, path.parent, out, options)
        outputs[name] = out
        units[name] = result.manifest["executor"]["unit_rows"]
    # rows only: one unit (the row floor); by bytes: units smaller than a row group (row ranges)
    assert units["rows only, jobs 1"] == MIN_UNIT_ROWS and units["bytes, jobs 2"] < 40, units
    assert_same_everywhere(outputs)
    kept, removed = _kept_and_removed(outputs["bytes, jobs 2"])
    assert len(removed) == 40 and kept == sorted(kept, key=lambda s: int(s[1:]))  # the near copies, input order


@pytest.mark.parametrize("unit_bytes", [0, 1])
def test_unit_bytes_zero_means_rows_only(unit_bytes):
    if unit_bytes == 0:
        assert unit_rows_for(1000, 2, total_bytes=0) == MIN_UNIT_ROWS
    else:  # a byte target of one byte: one row per unit, never zero rows
        assert unit_rows_for(1000, 2, total_bytes=10**6, unit_bytes=1) == 1
