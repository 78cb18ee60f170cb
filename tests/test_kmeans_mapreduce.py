"""k-means as map-reduce: the same centroids however the sample is sharded or ordered."""

from __future__ import annotations

import numpy as np

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
