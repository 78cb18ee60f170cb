"""Semantic dedup: planted near duplicates in user vectors (`column:`), against brute force."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from curate.algorithms.semdedup import greedy_duplicates, keep_priority, semantic_duplicates
from curate.commands.inspect import verify_output
from curate.io.parts import read_parts
from curate.pipeline import RunOptions, parse_pipeline, run_pipeline


def planted(n: int = 1200, d: int = 24, groups: int = 60, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors around a few topic centres; `groups` sets of 2-4 near copies (cosine > 0.99).
    Returns (vectors, group id per row or -1)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(8, d))
    x = centres[rng.integers(0, 8, n)] + 1.5 * rng.normal(size=(n, d))
    group = np.full(n, -1)
    rows = rng.permutation(n)
    at = 0
    for g in range(groups):
        size = int(rng.integers(2, 5))
        members = rows[at : at + size]
        at += size
        x[members[1:]] = x[members[0]] + 0.01 * np.linalg.norm(x[members[0]]) * rng.normal(
            size=(size - 1, d)
        ) / np.sqrt(d)
        group[members] = g
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32), group


def brute_force_groups(x: np.ndarray, threshold: float) -> np.ndarray:
    sims = x @ x.T
    i, j = np.nonzero(np.triu(sims >= threshold, k=1))
    return connected_components(coo_matrix((np.ones(len(i)), (i, j)), shape=(len(x), len(x))), directed=False)[1]


def write_vectors(path: Path, x: np.ndarray) -> Path:
    ids = [f"r{i:05d}" for i in range(len(x))]
    pq.write_table(
        pa.table(
            {
                "id": ids,
                "text": [f"text {i}" for i in range(len(x))],
                "vec": pa.array(x.tolist(), pa.list_(pa.float32())),
            }
        ),
        path,
    )
    return path


def run_semdedup(tmp_path: Path, x: np.ndarray, out: str = "out", **options) -> tuple[Path, dict]:
    source = tmp_path / "in.parquet"
    if not source.exists():
        write_vectors(source, x)
    spec = parse_pipeline(
        {"stage": [{"kind": "semdedup", "model": "column:vec", **options}], "batch_size": 500}, "test"
    )
    result = run_pipeline(spec, source, tmp_path / out, RunOptions(jobs=1))
    assert verify_output(tmp_path / out).ok
    return tmp_path / out, result.manifest


def test_one_cluster_matches_brute_force_exactly():
    x, _ = planted()
    result = semantic_duplicates(x, threshold=0.95, clusters=1)
    labels = brute_force_groups(x, 0.95)
    sizes = np.bincount(labels)
    assert len(result.removed) == int((sizes[sizes > 1] - 1).sum())
    assert (labels[result.removed] == labels[result.representative]).all()
    kept = np.setdiff1d(np.arange(len(x)), result.removed)
    assert len(np.unique(labels[kept])) == len(kept)  # one survivor per group


def test_stage_removes_the_planted_copies_and_keeps_one_per_group(tmp_path):
    x, group = planted()
    out, manifest = run_semdedup(tmp_path, x, clusters=4)
    removed = read_parts(out / "removed").to_pydict()
    removed_rows = np.array([int(i[1:]) for i in removed["id"]])
    expected = int(sum(np.sum(group == g) - 1 for g in range(group.max() + 1)))
    assert len(removed_rows) == expected
    assert (group[removed_rows] >= 0).all()
    kept_ids = read_parts(out / "kept").column("id").to_pylist()
    kept_groups = group[[int(i[1:]) for i in kept_ids]]
    assert len(np.unique(kept_groups[kept_groups >= 0])) == group.max() + 1
    assert set(removed["stage"]) == {"semdedup"} and set(removed["reason"]) == {"semantic_duplicate"}
    reps = np.array([int(i[1:]) for i in removed["duplicate_of"]])
    assert (group[reps] == group[removed_rows]).all() and set(removed["duplicate_of"]) <= set(kept_ids)
    np.testing.assert_allclose(removed["score"], np.einsum("ij,ij->i", x[removed_rows], x[reps]), atol=1e-5)


def test_higher_threshold_removes_what_brute_force_says():
    x, _ = planted(n=600, groups=30, seed=3)
    for threshold in (0.9, 0.999, 0.99999):
        labels = brute_force_groups(x, threshold)
        sizes = np.bincount(labels)
        result = semantic_duplicates(x, threshold=threshold, clusters=1)
        assert len(result.removed) == int((sizes[sizes > 1] - 1).sum())


def test_chains_keep_both_ends_greedily():
    # a ~ b and b ~ c but a !~ c: greedy in keep order removes only b (a kept row covers it);
    # connected components would remove two. Every removed row sits within T of its keeper.
    a = np.array([1.0, 0.0, 0.0])
    b = np.array([np.cos(0.25), np.sin(0.25), 0.0])
    c = np.array([np.cos(0.5), np.sin(0.5), 0.0])
    x = np.stack([a, b, c, [0, 0, 1.0]]).astype(np.float32)
    threshold = float(np.cos(0.3))
    result = semantic_duplicates(x, threshold=threshold, clusters=1, keep="random")
    order = np.argsort(-keep_priority(result.centroid_similarity, "random", 0), kind="stable")
    expected = set()
    kept = []
    for row in order:
        if any(float(x[row] @ x[k]) >= threshold for k in kept):
            expected.add(int(row))
        else:
            kept.append(row)
    assert set(result.removed.tolist()) == expected
    assert np.all(np.einsum("ij,ij->i", x[result.removed], x[result.representative]) >= threshold)


def test_greedy_matches_a_row_by_row_reference_on_dense_duplicates():
    rng = np.random.default_rng(5)
    base = rng.normal(size=(40, 16)).astype(np.float32)
    x = base[rng.integers(0, 40, 3000)] + 0.08 * rng.normal(size=(3000, 16)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    priority = rng.random(3000)
    ordinals = np.arange(3000)
    gone, reps, sims, comparisons = greedy_duplicates(x, priority, ordinals, 0.97, block=128)
    kept, expected = [], {}
    for row in np.lexsort((ordinals, -priority)):
        hit = [k for k in kept if float(np.dot(x[row], x[k])) >= 0.97]
        if hit:
            expected[int(row)] = int(hit[0])
        else:
            kept.append(row)
    assert dict(zip(gone.tolist(), reps.tolist())) == expected
    assert comparisons < 3000 * 2999 // 2 // 4  # rows x kept rows, far from all pairs


def test_oversized_clusters_are_split_and_still_find_planted_copies():
    x, group = planted(n=2000, groups=100, seed=7)
    whole = semantic_duplicates(x, threshold=0.95, clusters=1, max_cluster_rows=0)
    split = semantic_duplicates(x, threshold=0.95, clusters=1, max_cluster_rows=300)
    assert split.comparisons < whole.comparisons
    hit = len(np.intersect1d(split.removed, whole.removed))
    assert hit == len(split.removed)  # nothing removed that the whole-cluster search keeps
    assert hit >= 0.95 * len(whole.removed)


@pytest.mark.parametrize("keep", ["hard", "easy"])
def test_keep_rule_picks_by_distance_to_centroid(keep):
    x, group = planted(seed=2)
    result = semantic_duplicates(x, threshold=0.95, clusters=3, keep=keep)
    sim = result.centroid_similarity
    for rep in np.unique(result.representative):
        members = np.concatenate([[rep], result.removed[result.representative == rep]])
        best = members[np.argmin(sim[members])] if keep == "hard" else members[np.argmax(sim[members])]
        assert sim[rep] == sim[best]


def test_exact_copies_tie_to_the_earlier_row():
    x = np.tile(np.array([[0.6, 0.8, 0.0]], dtype=np.float32), (5, 1))
    x = np.vstack([x, [[0.0, 0.0, 1.0]]]).astype(np.float32)
    for keep in ("hard", "easy"):
        result = semantic_duplicates(x, threshold=0.95, clusters=1, keep=keep)
        assert result.representative.tolist() == [0, 0, 0, 0] and result.removed.tolist() == [1, 2, 3, 4]


def test_random_keep_is_seeded(tmp_path):
    x, _ = planted(seed=4)
    one = semantic_duplicates(x, 0.95, clusters=3, keep="random", seed=7)
    two = semantic_duplicates(x, 0.95, clusters=3, keep="random", seed=7)
    assert np.array_equal(one.removed, two.removed)


def test_same_input_and_seed_give_identical_kept_ids(tmp_path):
    x, _ = planted(n=2000, groups=100, seed=5)
    out1, _ = run_semdedup(tmp_path, x, "out1")
    out2, _ = run_semdedup(tmp_path, x, "out2")
    assert read_parts(out1 / "kept").column("id").to_pylist() == read_parts(out2 / "kept").column("id").to_pylist()


def test_invalid_threshold_is_a_usage_error():
    from curate.errors import UsageError

    with pytest.raises(UsageError, match="threshold"):
        parse_pipeline({"stage": [{"kind": "semdedup", "threshold": 1.5}]}, "test")


# --- the same result on every executor -------------------------------------------------------

from tests.executor_parity import assert_same_everywhere, dask_executors, run_on_every_executor  # noqa: E402,F401


def write_vector_shards(directory: Path, x: np.ndarray, shards: int = 3) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    bounds = np.linspace(0, len(x), shards + 1).astype(int)
    for s in range(shards):
        lo, hi = bounds[s], bounds[s + 1]
        table = pa.table(
            {
                "id": [f"r{i:05d}" for i in range(lo, hi)],
                "text": [f"text {i}" for i in range(lo, hi)],
                "vec": pa.array(x[lo:hi].tolist(), pa.list_(pa.float32())),
            }
        )
        pq.write_table(table, directory / f"shard-{s}.parquet", row_group_size=100)
    return directory


@pytest.mark.parametrize("keep, max_cluster_rows", [("hard", 4096), ("random", 4096), ("hard", 120)])
def test_semdedup_gives_the_same_duplicates_on_every_executor(tmp_path, dask_executors, keep, max_cluster_rows):
    x, group = planted(n=900, groups=50, seed=4)
    source = write_vector_shards(tmp_path / "in", x)
    stages = [
        {"kind": "semdedup", "model": "column:vec", "clusters": 6, "keep": keep, "max_cluster_rows": max_cluster_rows}
    ]
    manifest = assert_same_everywhere(run_on_every_executor(tmp_path, stages, source, dask_executors))
    info = manifest["stages"][1]["info"]
    planted_removed = int((np.bincount(group[group >= 0]) - 1).sum())  # one kept per planted group
    if max_cluster_rows > 900:
        assert info["removed"] == planted_removed and info["split_parts"] <= 6
    else:  # split: a copy landing in another part than its original is missed, never a false removal
        assert info["split_parts"] > 6 and 0.8 * planted_removed <= info["removed"] <= planted_removed
    assert "assignment on workers" in info["fit"] and "within-cluster search on workers" in info["fit"]


def test_search_buckets_do_not_change_the_result():
    """The stage's split (clusters searched per bucket, merged) equals the whole-array function."""
    from curate.algorithms.kmeans import assign, spherical_kmeans
    from curate.algorithms.semdedup import cluster_duplicates, merge_duplicates, plan_buckets

    x, _ = planted(n=1500, groups=80, seed=9)
    whole = semantic_duplicates(x, threshold=0.95, clusters=7, keep="random", seed=3)
    labels, sims = assign(x, spherical_kmeans(x, 7, seed=3))
    for buckets in (1, 3, 7):
        bucket_of = plan_buckets(np.bincount(labels, minlength=7), buckets)
        found = []
        for b in reversed(range(buckets)):  # order of completion must not matter
            for c in np.nonzero(bucket_of == b)[0]:
                members = np.nonzero(labels == c)[0]
                found.append(cluster_duplicates(x[members], members, sims[members], 0.95, "random", 3))
        removed, reps, similarity = merge_duplicates(
            [f.removed for f in found], [f.representative for f in found], [f.similarity for f in found]
        )
        assert np.array_equal(removed, whole.removed) and np.array_equal(reps, whole.representative)
        assert np.array_equal(similarity, whole.similarity)


def test_buckets_balance_the_pairwise_cost():
    from curate.algorithms.semdedup import plan_buckets

    bucket_of = plan_buckets(np.array([100, 10, 10, 10, 90, 5]), 2)
    cost = np.bincount(bucket_of, weights=np.array([100, 10, 10, 10, 90, 5]) ** 2.0)
    assert bucket_of[0] != bucket_of[4] and cost.max() / cost.sum() < 0.6


def test_representative_rule_orders_before_keep_on_every_executor(tmp_path, dask_executors):
    """`representative = "max:quality"`: in each planted group the row with the highest quality
    is kept (the keep rule only breaks its ties), the same on every executor."""
    x, group = planted(n=600, groups=40, seed=6)
    quality = np.random.default_rng(1).random(len(x))
    source = write_vector_shards(tmp_path / "in", x)
    for path in sorted(source.glob("*.parquet")):
        table = pq.read_table(path)
        rows = np.array([int(i[1:]) for i in table.column("id").to_pylist()])
        pq.write_table(table.append_column("quality", pa.array(quality[rows])), path)
    stages = [{"kind": "semdedup", "model": "column:vec", "clusters": 4, "representative": "max:quality"}]
    outputs = run_on_every_executor(tmp_path, stages, source, dask_executors)
    assert_same_everywhere(outputs)
    removed = {int(i[1:]) for i in part_table_ids(next(iter(outputs.values())) / "removed")}
    for g in np.unique(group[group >= 0]):
        members = np.flatnonzero(group == g)
        best = members[np.argmax(quality[members])]
        assert best not in removed and set(members) - {best} <= removed


def test_representative_names_a_missing_column_with_exit_2(tmp_path):
    from curate.errors import UsageError
    from curate.pipeline import RunOptions, parse_pipeline, run_pipeline

    x, _ = planted(n=60, groups=5, seed=1)
    source = write_vector_shards(tmp_path / "in", x)
    spec = parse_pipeline({"stage": [{"kind": "semdedup", "model": "column:vec", "representative": "max:nope"}]}, "t")
    with pytest.raises(UsageError, match="nope"):
        run_pipeline(spec, source, tmp_path / "out", RunOptions(jobs=1))


def part_table_ids(directory: Path) -> list[str]:
    from curate.io.parts import read_parts

    return read_parts(directory, columns=["id"]).column("id").to_pylist()
