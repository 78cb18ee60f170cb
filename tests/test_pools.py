"""Quality pools: exact quantile buckets, pool 0 best, direction rules."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curate.algorithms.pools import assign_pools, pool_edges
from curate.commands.inspect import verify_output
from curate.errors import UsageError
from curate.io.parts import read_parts
from curate.pipeline import RunOptions, parse_pipeline, run_pipeline


def pools_of(scores, k, higher=True):
    scores = np.asarray(scores, dtype=np.float64)
    return assign_pools(scores, pool_edges(scores, k, higher), higher)


def test_pools_are_equal_rank_buckets_with_pool_zero_best():
    scores = np.random.default_rng(0).permutation(1000).astype(float)
    pools = pools_of(scores, 4)
    assert np.bincount(pools).tolist() == [250, 250, 250, 250]
    assert scores[pools == 0].min() > scores[pools == 1].max()
    assert (pools == np.floor((999 - scores) * 4 / 1000)).all()


def test_lower_is_better_reverses_the_order():
    scores = np.arange(10, dtype=float)
    assert pools_of(scores, 2, higher=False).tolist() == [0] * 5 + [1] * 5


def test_ties_share_the_better_pool_and_nan_goes_last():
    pools = pools_of([1.0, 1.0, 1.0, 0.0, np.nan], 2)
    assert pools.tolist() == [0, 0, 0, 1, 1]


def test_fewer_rows_than_pools_still_orders_them():
    assert pools_of([3.0, 1.0], 4).tolist() == [0, 2]


def write_scores(path: Path, scores: np.ndarray) -> Path:
    pq.write_table(
        pa.table({"id": [f"r{i}" for i in range(len(scores))], "text": ["t"] * len(scores), "quality": scores}), path
    )
    return path


def test_stage_adds_pool_column_and_keeps_every_row(tmp_path):
    scores = np.random.default_rng(1).normal(size=999)
    source = write_scores(tmp_path / "in.parquet", scores)
    spec = parse_pipeline({"stage": [{"kind": "pools", "score": "quality", "pools": 3}], "batch_size": 100}, "test")
    result = run_pipeline(spec, source, tmp_path / "out", RunOptions(jobs=1))
    assert verify_output(tmp_path / "out").ok
    kept = read_parts(tmp_path / "out" / "kept")
    assert kept.num_rows == 999 and kept.schema.field("pool").type == pa.int32()
    pools = kept.column("pool").to_numpy()
    assert np.bincount(pools).tolist() == [333, 333, 333]
    quality = kept.column("quality").to_numpy()
    assert quality[pools == 0].min() > quality[pools == 1].max() > quality[pools == 2].max()
    assert result.manifest["stages"][1]["info"]["higher_is_better"] is True


def test_loss_like_columns_default_to_lower_is_better(tmp_path):
    source = tmp_path / "in.parquet"
    pq.write_table(pa.table({"id": ["a", "b"], "text": ["x", "y"], "loss": [0.1, 2.0]}), source)
    spec = parse_pipeline({"stage": [{"kind": "pools", "score": "loss", "pools": 2}]}, "test")
    run_pipeline(spec, source, tmp_path / "out", RunOptions(jobs=1))
    kept = read_parts(tmp_path / "out" / "kept").to_pydict()
    assert dict(zip(kept["id"], kept["pool"])) == {"a": 0, "b": 1}


@pytest.mark.parametrize("keep, best_is_far", [("hard", True), ("easy", False)])
def test_proto_distance_direction_follows_the_prototypes_keep(tmp_path, keep, best_is_far):
    rng = np.random.default_rng(2)
    x = rng.normal(size=(400, 8))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    source = tmp_path / "in.parquet"
    pq.write_table(
        pa.table(
            {
                "id": [f"r{i}" for i in range(400)],
                "text": ["t"] * 400,
                "vec": pa.array(x.tolist(), pa.list_(pa.float32())),
            }
        ),
        source,
    )
    stages = [
        {"kind": "prototypes", "model": "column:vec", "clusters": 4, "keep": keep, "fraction": 0.9},
        {"kind": "pools", "score": "proto_distance", "pools": 2, "higher_is_better": "auto"},
    ]
    run_pipeline(parse_pipeline({"stage": stages}, "test"), source, tmp_path / "out", RunOptions(jobs=1))
    kept = read_parts(tmp_path / "out" / "kept")
    distance, pools = kept.column("proto_distance").to_numpy(), kept.column("pool").to_numpy()
    assert (distance[pools == 0].mean() > distance[pools == 1].mean()) == best_is_far


def test_missing_or_text_score_column_is_a_usage_error(tmp_path):
    source = write_scores(tmp_path / "in.parquet", np.zeros(3))
    for score in ("nope", "text"):
        spec = parse_pipeline({"stage": [{"kind": "pools", "score": score}]}, "test")
        with pytest.raises(UsageError, match="score column"):
            run_pipeline(spec, source, tmp_path / f"out-{score}", RunOptions(jobs=1))


# --- the same pools on every executor --------------------------------------------------------

from tests.executor_parity import assert_same_everywhere, dask_executors, run_on_every_executor  # noqa: E402,F401


@pytest.mark.parametrize("kind", [pa.float32(), pa.float64()])
def test_pools_are_the_same_on_every_executor(tmp_path, dask_executors, kind):
    rng = np.random.default_rng(7)
    source = tmp_path / "in"
    source.mkdir()
    for s in range(3):
        scores = np.round(rng.normal(size=300), 2)  # rounding makes ties across units
        mask = rng.random(300) < 0.05
        table = pa.table(
            {
                "id": [f"s{s}-{i}" for i in range(300)],
                "text": ["t"] * 300,
                "quality": pa.array(scores, kind, mask=mask),
            }
        )
        pq.write_table(table, source / f"shard-{s}.parquet", row_group_size=100)
    stages = [{"kind": "pools", "score": "quality", "pools": 4}]
    outputs = run_on_every_executor(tmp_path, stages, source, dask_executors)
    manifest = assert_same_everywhere(outputs)
    info = manifest["stages"][1]["info"]
    assert sum(info["pool_rows"]) == 900 and info["missing_scores"] > 0
    kept = read_parts(next(iter(outputs.values())) / "kept")
    expected = pools_of(kept.column("quality").to_numpy(zero_copy_only=False).astype(np.float64), 4)
    assert kept.column("pool").to_numpy().tolist() == expected.tolist()


def test_stage_records_rows_and_whitespace_tokens_per_pool(tmp_path):
    """Plans in tokens need each pool's tokens: the manifest carries them beside the rows."""
    rng = np.random.default_rng(3)
    scores = rng.normal(size=300)
    words = rng.integers(1, 30, size=300)
    texts = [" ".join(["w"] * int(n)) + "  " for n in words]  # trailing spaces are no word
    path = tmp_path / "in.parquet"
    pq.write_table(pa.table({"id": np.arange(300), "text": texts, "quality": scores}), path)
    spec = parse_pipeline({"stage": [{"kind": "pools", "score": "quality", "pools": 3}], "batch_size": 64}, "test")
    result = run_pipeline(spec, path, tmp_path / "out", RunOptions(jobs=1))
    info = result.manifest["stages"][-1]["info"]
    kept = read_parts(tmp_path / "out" / "kept")
    pools = kept.column("pool").to_numpy()
    order = {int(i): n for i, n in zip(range(300), words)}
    expected = [int(sum(order[int(i)] for i in kept.column("id").to_numpy()[pools == p])) for p in range(3)]
    assert info["pool_rows"] == [100, 100, 100] and info["pool_tokens"] == expected
    assert info["tokenizer"] == "whitespace"
