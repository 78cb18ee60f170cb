"""Prototype scores: distances match the saved centroids, exact keep fractions, the auto rule."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curate.algorithms.prototypes import choose_keep, keep_count, select_by_difficulty
from curate.commands.inspect import verify_output
from curate.io.parts import read_parts
from curate.pipeline import RunOptions, parse_pipeline, run_pipeline


def clustered(n: int = 1000, d: int = 16, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(6, d)) * 3
    x = centres[rng.integers(0, 6, n)] + rng.normal(size=(n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def write_input(path: Path, x: np.ndarray) -> Path:
    words = ["apt", "lib", "dev", "doc", "python", "perl", "font", "data", "tool", "game"]
    rng = np.random.default_rng(1)
    texts = [" ".join(rng.choice(words, size=int(rng.integers(2, 8)))) for _ in range(len(x))]
    pq.write_table(
        pa.table(
            {
                "id": [f"r{i:05d}" for i in range(len(x))],
                "text": texts,
                "vec": pa.array(x.tolist(), pa.list_(pa.float32())),
            }
        ),
        path,
    )
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
    assert (
        abundant["stages"][1]["info"]["keep"] == "hard" and "abundant" in abundant["stages"][1]["info"]["keep_reason"]
    )
    assert scarce["stages"][1]["info"]["keep"] == "easy" and "[report]" in scarce["stages"][1]["info"]["keep_reason"]
    assert choose_keep(1000, None)[0] == "hard"


def test_clusters_are_capped_for_small_data(tmp_path):
    x = clustered(n=120)
    _, manifest = run(tmp_path, x, keep="none", clusters=200)
    assert manifest["stages"][1]["info"]["clusters"] == 3


def test_without_embeddings_it_embeds_first_with_the_given_model(tmp_path):
    x = clustered(n=300)
    source = write_input(tmp_path / "in.parquet", x)
    spec = parse_pipeline(
        {"stage": [{"kind": "prototypes", "model": "hashing", "clusters": 4, "keep": "hard", "fraction": 0.8}]}, "test"
    )
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
        pq.write_table(
            pa.table({"id": [f"s{s}-{i}" for i in range(400)], "text": texts}),
            source / f"shard-{s}.parquet",
            row_group_size=100,
        )
    stages = [{"kind": "prototypes", "model": "hashing", "clusters": 5, "keep": "hard", "fraction": 0.7}]
    manifest = assert_same_everywhere(run_on_every_executor(tmp_path, stages, source, dask_executors))
    info = manifest["stages"][1]["info"]
    assert info["embeddings_published"] and info["kept"] == 840
    assert "k-means map-reduce over" in info["fit"] and "distances on workers" in info["fit"]


def test_distances_do_not_depend_on_how_rows_are_batched():
    from curate.algorithms.prototypes import prototype_distance

    x = clustered(n=3000, d=32, seed=5)
    centroids = x[[3, 700, 1400, 2100]]
    labels, distance = prototype_distance(x, centroids)
    cuts = [0, 1, 999, 1003, 3000]
    pieces = [prototype_distance(x[a:b], centroids) for a, b in zip(cuts[:-1], cuts[1:])]
    assert np.array_equal(np.concatenate([p[0] for p in pieces]), labels)
    assert np.array_equal(np.concatenate([p[1] for p in pieces]), distance)


# --- vectors read in place from the store -------------------------------------------------------


def write_shards(directory: Path, shards: int = 3, rows: int = 400, seed: int = 2) -> Path:
    rng = np.random.default_rng(seed)
    words = ["apt", "lib", "dev", "doc", "python", "perl", "font", "data", "tool", "game", "rust", "go"]
    directory.mkdir()
    for s in range(shards):
        texts = [" ".join(rng.choice(words, size=int(rng.integers(2, 9)))) for _ in range(rows)]
        pq.write_table(
            pa.table({"id": [f"s{s}-{i}" for i in range(rows)], "text": texts}),
            directory / f"shard-{s}.parquet",
            row_group_size=100,
        )
    return directory


def input_source(directory: Path):
    from curate.engine.units import InputSource
    from curate.io.inputs import ColumnSpec, InputSet

    return InputSource(InputSet.scan(directory, ColumnSpec()), 64, drop_null_text=False)


def test_stored_vectors_are_read_in_place_only_when_the_rows_line_up(tmp_path):
    from curate.embeddings.store import load_vectors, stored_embeddings, vector_blocks
    from curate.stages.base import StageContext

    source = write_shards(tmp_path / "in")
    out = tmp_path / "out"
    run_pipeline(
        parse_pipeline({"stage": [{"kind": "embed", "model": "hashing"}]}, "test"),
        source,
        out,
        RunOptions(jobs=1, unit_rows=250),
    )
    store = read_parts(out / "embeddings")
    stored = np.asarray(store.column("embedding").combine_chunks().flatten()).reshape(store.num_rows, -1)
    # units of 200 rows over store parts of 300: some units span two parts
    ctx = StageContext(name="prototypes", output_dir=out, work_dir=tmp_path / "work", unit_rows=170)
    sample = np.array([0, 5, 299, 300, 301, 777, 1199])
    emb = stored_embeddings(input_source(source), ctx, "hashing", sample)
    assert emb is not None and emb.read_in_place and emb.reused == 1200 and emb.computed == 0
    assert any(len(p.pieces) > 1 for p in emb.paths)
    assert np.array_equal(np.concatenate([load_vectors(p, emb.dim) for p in emb.paths]), stored)
    assert np.array_equal(np.concatenate([b for p in emb.paths for b in vector_blocks(p, emb.dim, 7)]), stored)
    assert np.array_equal(emb.gather(sample), stored[sample])
    assert np.array_equal(emb.gather(np.array([1, 2, 900])), stored[[1, 2, 900]])
    assert np.array_equal(emb.rows, np.arange(1200))

    assert stored_embeddings(input_source(source), ctx, "minilm", sample) is None  # another model's store
    edited = tmp_path / "edited"
    shutil.copytree(source, edited)
    table = pq.read_table(edited / "shard-1.parquet")
    texts = table.column("text").to_pylist()
    texts[150] += " edited"
    pq.write_table(table.set_column(1, "text", pa.array(texts)), edited / "shard-1.parquet", row_group_size=100)
    assert stored_embeddings(input_source(edited), ctx, "hashing", sample) is None  # same id, new text
    (edited / "shard-1.parquet").unlink()
    assert stored_embeddings(input_source(edited), ctx, "hashing") is None  # fewer rows than the store


def test_reading_in_place_gives_what_the_lookup_by_id_gives(tmp_path, monkeypatch):
    """embed -> prototypes reads the store in place; forced through the id lookup (the path a
    store that does not line up takes) every output is the same."""
    import curate.stages.prototypes as prototypes_stage

    source = write_shards(tmp_path / "in")
    spec = parse_pipeline(
        {
            "stage": [
                {"kind": "embed", "model": "hashing"},
                {"kind": "prototypes", "clusters": 5, "keep": "hard", "fraction": 0.7},
            ]
        },
        "test",
    )
    fast = run_pipeline(spec, source, tmp_path / "fast", RunOptions(jobs=1, unit_rows=250))
    monkeypatch.setattr(prototypes_stage, "stored_embeddings", lambda *args, **kwargs: None)
    slow = run_pipeline(spec, source, tmp_path / "slow", RunOptions(jobs=1, unit_rows=250))
    assert "read in place" in fast.manifest["stages"][2]["info"]["fit"]
    assert "read in place" not in slow.manifest["stages"][2]["info"]["fit"]
    for name in ("kept", "removed"):
        assert read_parts(tmp_path / "fast" / name).equals(read_parts(tmp_path / "slow" / name))
    assert (tmp_path / "fast" / "prototypes" / "centroids.npy").read_bytes() == (
        tmp_path / "slow" / "prototypes" / "centroids.npy"
    ).read_bytes()
    assert read_parts(tmp_path / "fast" / "kept").num_rows == 840


def test_rescoring_a_few_rows_at_a_time_gives_the_same_bits_as_whole_blocks():
    from curate.algorithms.kmeans import _rescore, row_dot

    x = clustered(n=3000, d=32, seed=6)
    centroids = x[[3, 700, 1400, 2100, 2999]]
    ids = np.random.default_rng(0).integers(0, len(centroids), size=(len(x), 3))
    whole = np.column_stack([row_dot(x, centroids[ids[:, j]]) for j in range(3)])
    assert np.array_equal(_rescore(x, centroids, ids, rows=7), whole)
    assert np.array_equal(_rescore(x, centroids, ids), whole)
