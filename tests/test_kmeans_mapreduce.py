"""k-means as map-reduce: the same centroids however the sample is sharded or ordered."""

from __future__ import annotations

import numpy as np
import pytest

from curate.algorithms.kmeans import MAX_CLUSTERS, auto_clusters, centroid_sums, initial_picks, lloyd, merge_sums


def unit_rows(n: int, d: int = 16, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_one_step_is_the_same_bits_for_any_sharding_and_order():
    x = unit_rows(3000)
    centroids = x[initial_picks(len(x), 12, seed=1)]
    whole = merge_sums(centroids, [centroid_sums(x, centroids)])
    rng = np.random.default_rng(3)
    for _ in range(3):
        cuts = np.sort(rng.choice(np.arange(1, len(x)), size=int(rng.integers(1, 30)), replace=False))
        shards = [centroid_sums(part, centroids) for part in np.split(x, cuts)]
        assert np.array_equal(merge_sums(centroids, shards[::-1]), whole)


def test_a_step_moves_each_centroid_to_its_rows_normalised_mean():
    x = unit_rows(500)
    centroids = x[:5].copy()
    moved = merge_sums(centroids, [centroid_sums(x, centroids)])
    labels = np.argmax(x @ centroids.T, axis=1)
    for c in range(5):
        mean = x[labels == c].astype(np.float64).mean(axis=0)
        np.testing.assert_allclose(moved[c], mean / np.linalg.norm(mean), atol=1e-6)


def test_lloyd_does_not_depend_on_its_shard_size():
    x = unit_rows(5000, seed=2)
    assert np.array_equal(lloyd(x, 20, seed=4, shard_rows=1 << 16), lloyd(x, 20, seed=4, shard_rows=777))


def test_a_centroid_no_row_chooses_stays_put():
    x = unit_rows(50)
    far = -x[:1]  # the antipode of a row: nearest to nothing while x[0] is a centroid too
    centroids = np.concatenate([x[:1], far])
    moved = merge_sums(centroids, [centroid_sums(x[:1], centroids)])
    assert np.array_equal(moved[1], far[0])


def test_cluster_count_is_capped():
    assert auto_clusters(100_000_000) == min(10_000, MAX_CLUSTERS)
    assert auto_clusters(10**12) == MAX_CLUSTERS


@pytest.mark.parametrize("workers", [1, 3])
@pytest.mark.parametrize("sample_in_memory", [False, True])
def test_the_stage_fit_is_lloyd_on_its_sample_with_picks_across_shards(
    tmp_path, monkeypatch, sample_in_memory, workers
):
    from curate.embeddings.store import Embeddings
    from curate.stages import _kmeans
    from curate.stages.base import StageContext

    monkeypatch.setattr(_kmeans, "SHARD_ROWS", 400)  # the sample and the picks span several shards
    monkeypatch.setattr(_kmeans, "MIN_SHARD_ROWS", 97)
    x = unit_rows(2000, seed=5)
    bounds = [0, 700, 701, 1500, 2000]
    paths = []
    for u, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:])):
        paths.append(str(tmp_path / f"unit-{u}.npy"))
        np.save(paths[-1], x[lo:hi])
    sample = np.sort(np.random.default_rng(6).choice(len(x), size=900, replace=False))
    emb = Embeddings(
        paths=paths,
        rows=np.arange(len(x)),
        offsets=np.array(bounds),
        dim=x.shape[1],
        model="test",
        version="test",
        reused=0,
        computed=len(x),
        reused_from_output=False,
        sample=(sample, x[sample].copy()) if sample_in_memory else None,
    )
    ctx = StageContext(name="fit", seed=3, work_dir=tmp_path / "work", workers=workers)
    fitted = _kmeans.fit_centroids(emb, sample, 25, ctx, 20)
    assert np.array_equal(fitted.centroids, lloyd(x[sample], 25, seed=3))
    shards = sorted((tmp_path / "work" / "kmeans").glob("sample-*.npy"))
    assert [len(np.load(p)) for p in shards] == ([400, 400, 100] if workers == 1 else [300, 300, 300])
