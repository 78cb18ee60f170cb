"""Prototype scores: distances match the saved centroids, exact keep fractions, the auto rule."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curate.inspect_output import verify_output
from curate.metrics.prototypes import choose_keep, keep_count, select_by_difficulty
from curate.pipeline import RunOptions, parse_pipeline, run_pipeline
from curate.shards import read_parts


def clustered(n: int = 1000, d: int = 16, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(6, d)) * 3
    x = centres[rng.integers(0, 6, n)] + rng.normal(size=(n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def write_input(path: Path, x: np.ndarray) -> Path:
    words = ["apt", "lib", "dev", "doc", "python", "perl", "font", "data", "tool", "game"]
    rng = np.random.default_rng(1)
    texts = [" ".join(rng.choice(words, size=int(rng.integers(2, 8)))) for _ in range(len(x))]
    pq.write_table(pa.table({"id": [f"r{i:05d}" for i in range(len(x))], "text": texts, "vec": pa.array(x.tolist(), pa.list_(pa.float32()))}), path)
    return path


def run(tmp_path: Path, x: np.ndarray, out: str = "out", report: dict | None = None, **options) -> tuple[Path, dict]:
    source = tmp_path / "in.parquet"
    if not source.exists():
        write_input(source, x)
    data = {"stage": [{"kind": "prototypes", "model": "column:vec", "clusters": 6, **options}], "batch_size": 256}
    if report is not None:
        data["report"] = report
    result = run_pipeline(parse_pipeline(data, "test"), source, tmp_path / out, RunOptions(jobs=1))
    assert verify_output(tmp_path / out).ok
    return tmp_path / out, result.manifest


def test_proto_distance_is_one_minus_max_cosine_to_saved_centroids(tmp_path):
    x = clustered()
    out, _ = run(tmp_path, x, keep="none")
    centroids = np.load(out / "prototypes" / "centroids.npy")
    assert centroids.dtype == np.float32 and centroids.shape == (6, 16)
    kept = read_parts(out / "kept")
    rows = np.array([int(i[1:]) for i in kept.column("id").to_pylist()])
    unit = centroids / np.linalg.norm(centroids, axis=1, keepdims=True)
    cosine = x[rows] @ unit.T
    np.testing.assert_allclose(kept.column("proto_distance").to_numpy(), 1 - cosine.max(axis=1), atol=1e-5)
    assert (kept.column("proto_cluster").to_numpy() == cosine.argmax(axis=1)).mean() > 0.999


def test_keep_hard_half_keeps_exactly_half_at_or_above_the_median(tmp_path):
    x = clustered(n=1000)
    out, manifest = run(tmp_path, x, keep="hard", fraction=0.5)
    kept = read_parts(out / "kept").column("proto_distance").to_numpy()
    removed = read_parts(out / "removed").to_pydict()
    assert len(kept) == 500 and len(removed["id"]) == 500
    everything = np.concatenate([kept, np.array(removed["score"], dtype=np.float32)])
    assert kept.min() >= np.median(everything) >= max(removed["score"]) - 1e-7
    assert set(removed["reason"]) == {"pruned_easy"} and set(removed["stage"]) == {"prototypes"}
    assert manifest["stages"][1]["info"]["keep"] == "hard"


def test_keep_easy_keeps_the_closest_rows(tmp_path):
    x = clustered(n=501)
    out, _ = run(tmp_path, x, keep="easy", fraction=0.3)
    kept = read_parts(out / "kept").column("proto_distance").to_numpy()
    removed = read_parts(out / "removed").to_pydict()
    assert len(kept) == keep_count(501, 0.3) == 150
    assert kept.max() <= min(removed["score"]) + 1e-7 and set(removed["reason"]) == {"pruned_hard"}


def test_selection_breaks_ties_by_input_order():
    distance = np.array([0.5, 0.2, 0.5, 0.5, 0.1], dtype=np.float32)
    assert select_by_difficulty(distance, 0.4, "hard").tolist() == [True, False, True, False, False]
    assert select_by_difficulty(distance, 0.6, "easy").tolist() == [True, True, False, False, True]


def test_auto_keeps_hard_when_data_is_abundant_and_easy_when_scarce(tmp_path):
    x = clustered(n=400)
    _, abundant = run(tmp_path, x, "abundant", keep="auto", fraction=0.5, budget=100)
    _, scarce = run(tmp_path, x, "scarce", keep="auto", fraction=0.5, report={"budget": 10_000})
    assert abundant["stages"][1]["info"]["keep"] == "hard" and "abundant" in abundant["stages"][1]["info"]["keep_reason"]
    assert scarce["stages"][1]["info"]["keep"] == "easy" and "[report]" in scarce["stages"][1]["info"]["keep_reason"]
    assert choose_keep(1000, None)[0] == "hard"


def test_clusters_are_capped_for_small_data(tmp_path):
    x = clustered(n=120)
    _, manifest = run(tmp_path, x, keep="none", clusters=200)
    assert manifest["stages"][1]["info"]["clusters"] == 3


def test_without_embeddings_it_embeds_first_with_the_given_model(tmp_path):
    x = clustered(n=300)
    source = write_input(tmp_path / "in.parquet", x)
    spec = parse_pipeline({"stage": [{"kind": "prototypes", "model": "hashing", "clusters": 4, "keep": "hard", "fraction": 0.8}]}, "test")
    run_pipeline(spec, source, tmp_path / "out", RunOptions(jobs=1))
    meta = json.loads((tmp_path / "out" / "embeddings" / "embeddings.json").read_text())
    assert meta["model"] == "hashing" and meta["rows"] == 300
    assert read_parts(tmp_path / "out" / "kept").num_rows == 240


def test_same_seed_same_kept_ids(tmp_path):
    x = clustered(n=800, seed=3)
    one, _ = run(tmp_path, x, "one", keep="hard", fraction=0.7)
    two, _ = run(tmp_path, x, "two", keep="hard", fraction=0.7)
    assert read_parts(one / "kept").column("id").to_pylist() == read_parts(two / "kept").column("id").to_pylist()


def test_bad_keep_is_a_usage_error():
    from curate.errors import UsageError

    with pytest.raises(UsageError, match="keep"):
        parse_pipeline({"stage": [{"kind": "prototypes", "keep": "medium"}]}, "test")


# --- the same result on every executor -------------------------------------------------------

from tests.executor_parity import assert_same_everywhere, dask_executors, run_on_every_executor  # noqa: E402,F401


def test_prototypes_give_the_same_scores_on_every_executor(tmp_path, dask_executors):
    """Without an embed stage: the stage embeds per unit (hashing), publishes the store, and
    k-means, distances and selection come out identical for any split."""
    rng = np.random.default_rng(2)
    words = ["apt", "lib", "dev", "doc", "python", "perl", "font", "data", "tool", "game", "rust", "go"]
    source = tmp_path / "in"
    source.mkdir()
    for s in range(3):
        texts = [" ".join(rng.choice(words, size=int(rng.integers(2, 9)))) for _ in range(400)]
        pq.write_table(pa.table({"id": [f"s{s}-{i}" for i in range(400)], "text": texts}), source / f"shard-{s}.parquet", row_group_size=100)
    stages = [{"kind": "prototypes", "model": "hashing", "clusters": 5, "keep": "hard", "fraction": 0.7}]
    manifest = assert_same_everywhere(run_on_every_executor(tmp_path, stages, source, dask_executors))
    info = manifest["stages"][1]["info"]
    assert info["embeddings_published"] and info["kept"] == 840
    assert "driver k-means on" in info["fit"] and "distances on workers" in info["fit"]


def test_distances_do_not_depend_on_how_rows_are_batched():
    from curate.metrics.prototypes import prototype_distance

    x = clustered(n=3000, d=32, seed=5)
    centroids = x[[3, 700, 1400, 2100]]
    labels, distance = prototype_distance(x, centroids)
    cuts = [0, 1, 999, 1003, 3000]
    pieces = [prototype_distance(x[a:b], centroids) for a, b in zip(cuts[:-1], cuts[1:])]
    assert np.array_equal(np.concatenate([p[0] for p in pieces]), labels)
    assert np.array_equal(np.concatenate([p[1] for p in pieces]), distance)
