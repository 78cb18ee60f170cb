from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pytest
from conftest import random_texts, write_shards
from hypothesis import given, settings
from hypothesis import strategies as st

from curate.algorithms.exact import FirstSeenIndex, hash128, normalize_texts
from curate.commands.inspect import verify_output
from curate.io.parts import read_parts
from curate.pipeline import parse_pipeline, run_pipeline

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "debian_descriptions.parquet"


def _exact(batch_size: int = 65_536, normalize: bool = False):
    return parse_pipeline({"batch_size": batch_size, "stage": [{"kind": "exact", "normalize": normalize}]})


@settings(max_examples=40, deadline=None)
@given(keys=st.lists(st.integers(0, 30), max_size=200), chunk=st.integers(1, 50))
def test_first_seen_index_matches_a_dict_oracle(keys, chunk):
    index = FirstSeenIndex()
    got = []
    for start in range(0, len(keys), chunk):
        part = np.array(keys[start : start + chunk], dtype=np.uint64)
        as_keys = np.stack([part % np.uint64(3), part], axis=1)
        got.extend(index.add(as_keys, np.arange(start, start + len(part), dtype=np.int64)).tolist())
    first: dict[int, int] = {}
    expected = [first.setdefault(k, i) for i, k in enumerate(keys)]
    assert got == expected
    assert len(index) == len(set(keys))


def test_first_seen_index_separates_keys_that_share_the_high_word():
    index = FirstSeenIndex()
    keys = np.array([[5, 1], [5, 2], [5, 1], [5, 3], [5, 2]], dtype=np.uint64)
    assert index.add(keys[:2], np.array([0, 1])).tolist() == [0, 1]
    assert index.add(keys[2:], np.array([2, 3, 4])).tolist() == [0, 3, 1]


def test_hash128_is_stable_and_distinguishes_texts():
    h = hash128(pa.array(["a", "b", "a", ""]))
    assert h.shape == (4, 2) and h.dtype == np.uint64
    assert (h[0] == h[2]).all() and not (h[0] == h[1]).all()


def test_normalization_folds_case_width_and_whitespace():
    out = normalize_texts(pa.array(["Hello   World", "hello world", "ＨＥＬＬＯ\tworld "])).to_pylist()
    assert out == ["hello world"] * 3


def _run_exact(tmp_path: Path, texts: list[str], shards: int, batch_size: int, normalize: bool = False) -> Path:
    source = write_shards(tmp_path / f"in-{shards}-{batch_size}", texts, shards=shards)
    out = tmp_path / f"out-{shards}-{batch_size}"
    run_pipeline(_exact(batch_size, normalize), source, out)
    return out


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), shards=st.integers(1, 5), batch=st.integers(1, 64), n=st.integers(0, 120))
def test_exact_matches_brute_force_for_any_layout(tmp_path_factory, seed, shards, batch, n):
    tmp = tmp_path_factory.mktemp("exact")
    texts = random_texts(n, seed=seed, dup_rate=0.4)
    out = _run_exact(tmp, texts, shards, batch)
    kept = read_parts(out / "kept")
    removed = read_parts(out / "removed")
    first: dict[str, str] = {}
    expected_removed = {}
    for i, t in enumerate(texts):
        if t in first:
            expected_removed[f"doc-{i:06d}"] = first[t]
        else:
            first[t] = f"doc-{i:06d}"
    kept_ids = kept.column("id").to_pylist() if kept.num_rows else []
    assert kept_ids == list(first.values())
    got_removed = (
        dict(zip(removed.column("id").to_pylist(), removed.column("duplicate_of").to_pylist()))
        if removed.num_rows
        else {}
    )
    assert got_removed == expected_removed
    assert verify_output(out).ok


def test_normalized_exact_dedup_removes_case_and_space_variants(tmp_path):
    texts = ["Hello World", "hello  world", "other", "OTHER "]
    out = _run_exact(tmp_path, texts, 1, 10, normalize=True)
    removed = read_parts(out / "removed").to_pylist()
    assert {(r["id"], r["duplicate_of"]) for r in removed} == {
        ("doc-000001", "doc-000000"),
        ("doc-000003", "doc-000002"),
    }


@pytest.mark.skipif(not SHARED.exists(), reason="../shared/data not present")
def test_debian_exact_dedup_matches_polars(tmp_path):
    out = tmp_path / "out"
    run_pipeline(_exact(), SHARED, out)
    frame = pl.read_parquet(SHARED).with_row_index("order")
    removed = pl.from_arrow(read_parts(out / "removed"))
    assert removed.height == frame.height - frame.get_column("text").n_unique() == 3662
    first = frame.group_by("text").agg(pl.col("id").sort_by("order").first().alias("first_id"))
    expected = frame.join(first, on="text").filter(pl.col("id") != pl.col("first_id")).select("id", "first_id")
    joined = removed.join(expected, on="id", how="full", coalesce=True)
    assert joined.height == removed.height
    assert (joined.get_column("duplicate_of") == joined.get_column("first_id")).all()
    assert verify_output(out).ok
