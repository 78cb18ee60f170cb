"""SeTa's array core (1-D k-means, windows, annealing, pruning) and the loss_clusters stage."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from curate.algorithms.loss_clusters import (
    SeTaConfig,
    epoch_mode,
    kmeans_1d,
    prune_by_loss,
    schedule,
    select_epoch,
    window_clusters,
    window_size,
)
from curate.commands.inspect import verify_output
from curate.errors import UsageError
from curate.pipeline import RunOptions, parse_pipeline, run_pipeline


def sse(values: np.ndarray, labels: np.ndarray) -> float:
    return float(sum(((values[labels == j] - values[labels == j].mean()) ** 2).sum() for j in np.unique(labels)))


def optimal_sse_1d(values: np.ndarray, k: int) -> float:
    """Exact 1-D k-means by dynamic programming over the sorted values (small n only)."""
    x = np.sort(values)
    n = len(x)
    s1 = np.concatenate([[0], np.cumsum(x)])
    s2 = np.concatenate([[0], np.cumsum(x * x)])

    def cost(i: int, j: int) -> float:  # x[i:j]
        m = j - i
        return s2[j] - s2[i] - (s1[j] - s1[i]) ** 2 / m

    best = np.full((k + 1, n + 1), np.inf)
    best[0, 0] = 0.0
    for c in range(1, k + 1):
        for j in range(c, n + 1):
            best[c, j] = min(best[c - 1, i] + cost(i, j) for i in range(c - 1, j))
    return float(best[k, n])


# -- k-means ----------------------------------------------------------------------------


def test_kmeans_recovers_separated_groups_sorted_easy_to_hard():
    rng = np.random.default_rng(0)
    centers = np.array([5.0, 0.0, 10.0])
    truth = rng.integers(0, 3, 3000)
    values = centers[truth] + rng.normal(0, 0.2, 3000)
    labels, centroids = kmeans_1d(values, 3)
    assert np.all(np.diff(centroids) > 0)
    expected = np.argsort(np.argsort(centers))[truth]  # rank of each true center
    assert np.array_equal(labels, expected)


@pytest.mark.parametrize("seed", range(6))
def test_kmeans_is_near_the_exact_optimum(seed):
    rng = np.random.default_rng(seed)
    values = np.concatenate([rng.exponential(size=40), rng.normal(3, 0.5, 20)])
    labels, _ = kmeans_1d(values, 4, seed=seed)
    assert sse(values, labels) <= optimal_sse_1d(values, 4) * 1.02 + 1e-12


def test_equal_losses_share_a_cluster():
    values = np.repeat([0.1, 0.5, 0.9, 2.0, 4.0], [50, 50, 50, 3, 1]).astype(float)
    labels, _ = kmeans_1d(values, 3)
    for v in np.unique(values):
        assert len(np.unique(labels[values == v])) == 1
    order = np.argsort(values, kind="stable")
    assert np.all(np.diff(labels[order]) >= 0)


def test_fewer_distinct_values_than_clusters_gives_equal_ordered_groups():
    values = np.repeat([1.0, 2.0], [60, 40])
    labels, _ = kmeans_1d(values, 10, seed=0)
    assert np.array_equal(np.bincount(labels, minlength=10), np.full(10, 10))
    assert labels[values == 1.0].max() <= labels[values == 2.0].min()
    again, _ = kmeans_1d(values, 10, seed=0)
    assert np.array_equal(labels, again)


def test_kmeans_is_deterministic_and_order_free():
    values = np.random.default_rng(1).lognormal(size=5000)
    a, ca = kmeans_1d(values, 10, seed=3)
    b, cb = kmeans_1d(values, 10, seed=3)
    assert np.array_equal(a, b) and np.array_equal(ca, cb)
    perm = np.random.default_rng(2).permutation(len(values))
    c, _ = kmeans_1d(values[perm], 10, seed=3)
    assert np.array_equal(c, a[perm])


def test_kmeans_rejects_nan():
    with pytest.raises(ValueError):
        kmeans_1d(np.array([0.1, np.nan, 0.3]), 2)


def test_kmeans_on_a_million_losses_is_fast():
    values = np.random.default_rng(0).lognormal(-1.0, 1.5, 1_000_000)
    started = time.process_time()  # CPU time: the machine is shared
    labels, _ = kmeans_1d(values, 10)
    assert time.process_time() - started < 2.0
    assert labels.max() == 9


# -- the schedule -----------------------------------------------------------------------


def test_windows_slide_from_easy_to_hard_and_start_over():
    assert window_size(10, 0.5) == 5 and window_size(10, 0.25) == 3 and window_size(4, 0.1) == 1
    starts = [int(window_clusters(e, 10, 5)[0]) for e in range(1, 9)]
    assert starts == [1, 2, 3, 4, 5, 0, 1, 2]


def test_modes_first_epoch_full_then_window_then_annealed():
    config = SeTaConfig(epochs=16)
    modes = [epoch_mode(e, config) for e in range(16)]
    assert modes[0] == "full" and modes[14:] == ["annealed", "annealed"]
    assert set(modes[1:14]) == {"window"}
    plan = schedule(config)
    assert plan[3]["clusters"] == [3, 4, 5, 6, 7] and plan[15]["clusters"] == list(range(10))


def test_select_epoch_takes_the_window_of_loss_clusters():
    losses = np.arange(1000) / 1000.0
    config = SeTaConfig(epochs=10)
    chosen = select_epoch(losses, 2, config)  # clusters 2..6 of ten equal-width ranges
    assert 0.15 < losses[chosen].min() < 0.25 and 0.65 < losses[chosen].max() < 0.75
    assert np.array_equal(select_epoch(losses, 0, config), np.arange(1000))


def test_random_pruning_then_annealing_to_the_pruned_size():
    losses = np.random.default_rng(0).random(1000)
    config = SeTaConfig(epochs=8, prune_ratio=0.3)
    annealed = select_epoch(losses, 7, config, seed=1)
    assert len(annealed) == 700 and len(np.unique(annealed)) == 700
    assert not np.array_equal(annealed, select_epoch(losses, 7, config, seed=2))
    assert len(select_epoch(losses, 3, config, seed=1)) < 700


def test_config_rejects_bad_values():
    for bad in ({"prune_ratio": 1.0}, {"groups": 0}, {"window_scale": 0.0}, {"delta": 1.5}):
        with pytest.raises(ValueError):
            SeTaConfig(epochs=10, **bad)


def test_prune_by_loss_keeps_the_hard_or_the_easy_fraction():
    losses = np.array([0.5, 0.1, 0.9, 0.3, 0.7])
    assert np.array_equal(prune_by_loss(losses, "hard", 0.6), np.array([False, True, False, True, False]))
    assert np.array_equal(prune_by_loss(losses, "easy", 0.6), np.array([False, False, True, False, True]))
    assert not prune_by_loss(losses, "none", 1.0).any()


# -- the stage --------------------------------------------------------------------------


def write_corpus(path: Path, n: int = 400, null_labels: int = 0) -> pl.DataFrame:
    rng = np.random.default_rng(0)
    labels = np.array(["alpha", "beta", "gamma"])[rng.integers(0, 3, n)]
    texts = [f"{lab} thing number {i} {'common' if i % 2 else 'other'}" for i, lab in enumerate(labels)]
    frame = pl.DataFrame(
        {
            "id": [f"doc{i}" for i in range(n)],
            "text": texts,
            "label": labels.tolist(),
            "my_loss": rng.exponential(size=n),
        }
    )
    if null_labels:
        frame = frame.with_columns(
            pl.when(pl.int_range(pl.len()) < null_labels).then(None).otherwise(pl.col("label")).alias("label")
        )
    frame.write_parquet(path)
    return frame


def run_stage(tmp_path: Path, options: dict, n: int = 400, null_labels: int = 0, name: str = "out"):
    source = tmp_path / "in.parquet"
    frame = write_corpus(source, n, null_labels)
    spec = parse_pipeline({"stage": [{"kind": "loss_clusters", **options}], "batch_size": 64})
    out = tmp_path / name
    run_pipeline(spec, source, out, RunOptions(jobs=1))
    return frame, out


def test_stage_adds_loss_and_clusters_and_conserves_rows(tmp_path):
    frame, out = run_stage(tmp_path, {"loss_column": "my_loss", "epochs": 8})
    assert verify_output(out).ok
    kept = pl.read_parquet(out / "kept").sort("id")
    expected = frame.sort("id")
    assert kept.height == frame.height
    assert np.allclose(kept["loss"].to_numpy(), expected["my_loss"].to_numpy())
    labels, _ = kmeans_1d(frame["my_loss"].to_numpy(), 10)
    by_id = dict(zip(frame["id"].to_list(), labels.tolist()))
    assert kept["loss_cluster"].to_list() == [by_id[i] for i in kept["id"].to_list()]
    means = kept.group_by("loss_cluster").agg(pl.col("loss").mean()).sort("loss_cluster")["loss"].to_numpy()
    assert np.all(np.diff(means) > 0)  # 0 = easiest
    plan = json.loads((out / "seta_schedule.json").read_text())
    assert plan["epochs"] == 8 and len(plan["plan"]) == 8
    assert plan["plan"][0]["rows"] == 400 and plan["plan"][7]["mode"] == "annealed"
    assert sum(c["rows"] for c in plan["clusters"]) == 400
    assert plan["plan"][2]["rows"] == sum(plan["clusters"][j]["rows"] for j in plan["plan"][2]["clusters"])


def test_stage_keep_hard_prunes_the_easiest_into_the_ledger(tmp_path):
    frame, out = run_stage(tmp_path, {"loss_column": "my_loss", "keep": "hard", "fraction": 0.75})
    assert verify_output(out).ok
    removed = pl.read_parquet(out / "removed")
    kept = pl.read_parquet(out / "kept")
    assert removed.height == 100 and set(removed["reason"]) == {"pruned_easy"}
    assert removed["score"].max() <= kept["loss"].min()
    losses = dict(zip(frame["id"], frame["my_loss"]))
    assert np.allclose(removed["score"].to_numpy(), [losses[i] for i in removed["id"]])


def test_stage_keep_easy_prunes_the_hardest(tmp_path):
    _, out = run_stage(tmp_path, {"loss_column": "my_loss", "keep": "easy", "fraction": 0.5})
    removed = pl.read_parquet(out / "removed")
    assert set(removed["reason"]) == {"pruned_hard"} and removed.height == 200
    assert removed["score"].min() >= pl.read_parquet(out / "kept")["loss"].max()


def test_stage_trains_a_proxy_with_out_of_fold_losses(tmp_path):
    options = {"label_column": "label", "proxy_epochs": 2, "folds": 2, "num_buckets": 4096}
    frame, out = run_stage(tmp_path, options, n=300)
    assert verify_output(out).ok
    kept = pl.read_parquet(out / "kept")
    assert kept.height == 300 and kept["loss"].is_not_null().all()
    # The label word is in every text, so a trained proxy is confident: mean loss well below
    # chance (ln 3 ~ 1.1).
    assert kept["loss"].mean() < 0.9


def test_stage_null_labels_error_names_the_fix(tmp_path):
    with pytest.raises(UsageError, match="null_labels"):
        run_stage(
            tmp_path,
            {"label_column": "label", "proxy_epochs": 1, "folds": 2, "num_buckets": 1024},
            n=120,
            null_labels=5,
        )


def test_stage_null_labels_remove_sends_them_to_the_ledger(tmp_path):
    options = {"label_column": "label", "proxy_epochs": 1, "folds": 2, "num_buckets": 1024, "null_labels": "remove"}
    _, out = run_stage(tmp_path, options, n=120, null_labels=5)
    assert verify_output(out).ok
    removed = pl.read_parquet(out / "removed")
    assert removed.height == 5 and set(removed["reason"]) == {"null_label"} and removed["score"].is_null().all()


def test_stage_rejects_bad_options():
    for options in (
        {},
        {"loss_column": "a", "label_column": "b"},
        {"loss_column": "a", "keep": "auto"},
        {"loss_column": "a", "fraction": 0.5},
    ):
        with pytest.raises(UsageError):
            parse_pipeline({"stage": [{"kind": "loss_clusters", **options}]})


def test_stage_missing_column_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="no column"):
        run_stage(tmp_path, {"loss_column": "nope"})


def test_concat_bags_equals_hashing_everything_at_once():
    from curate.training.features import concat_bags, hashed_ngram_bags

    texts = ["a b c", "", "d e", "f", "g h i j"]
    whole = hashed_ngram_bags(texts, 1024)
    parts = concat_bags([hashed_ngram_bags(texts[:2], 1024), hashed_ngram_bags(texts[2:], 1024)])
    assert np.array_equal(parts.indices, whole.indices) and np.array_equal(parts.offsets, whole.offsets)


def test_stage_proxy_losses_are_deterministic(tmp_path):
    options = {"label_column": "label", "proxy_epochs": 1, "folds": 2, "num_buckets": 1024}
    _, first = run_stage(tmp_path, options, n=150, name="a")
    _, second = run_stage(tmp_path, options, n=150, name="b")
    a = pl.read_parquet(first / "kept").sort("id")
    b = pl.read_parquet(second / "kept").sort("id")
    assert a["loss"].to_list() == b["loss"].to_list() and a["loss_cluster"].to_list() == b["loss_cluster"].to_list()


# --- the same losses, clusters and ledger on every executor ----------------------------------

from tests.executor_parity import assert_same_everywhere, dask_executors, run_on_every_executor  # noqa: E402,F401


@pytest.mark.parametrize(
    "options",
    [
        pytest.param(
            {"loss_column": "my_loss", "keep": "hard", "fraction": 0.8, "null_labels": "remove"}, id="loss_column"
        ),
        pytest.param(  # about 17 s: proxy models trained on every executor
            {
                "label_column": "label",
                "keep": "easy",
                "fraction": 0.9,
                "null_labels": "remove",
                "proxy_epochs": 1,
                "folds": 2,
                "num_buckets": 1024,
            },
            id="proxy",
            marks=pytest.mark.slow,
        ),
    ],
)
def test_loss_clusters_are_the_same_on_every_executor(tmp_path, dask_executors, options):
    source = tmp_path / "in"
    source.mkdir()
    frame = write_corpus(tmp_path / "all.parquet", n=900, null_labels=0)
    frame = frame.with_columns(
        pl.when(pl.int_range(pl.len()) % 97 == 5).then(None).otherwise(pl.col("my_loss")).alias("my_loss"),
        pl.when(pl.int_range(pl.len()) % 89 == 7).then(None).otherwise(pl.col("label")).alias("label"),
    )
    for s in range(3):
        frame.slice(300 * s, 300).write_parquet(source / f"shard-{s}.parquet", row_group_size=100)
    stages = [{"kind": "loss_clusters", "epochs": 6, **options}]
    manifest = assert_same_everywhere(run_on_every_executor(tmp_path, stages, source, dask_executors))
    info = manifest["stages"][1]["info"]
    assert info["null_labels"] > 0 and info["pruned"] > 0
    assert "on workers" in info["fit"] and "on the driver" in info["fit"]


def test_proxy_folds_run_as_tasks_give_the_serial_out_of_fold_losses(tmp_path):
    import pyarrow as pa

    from curate.runtime import torch_threads
    from curate.training.features import hashed_ngram_bags
    from curate.training.proxy import ProxyConfig, encode_labels, out_of_fold_losses

    frame = write_corpus(tmp_path / "in.parquet", n=300)
    stages = [{"kind": "loss_clusters", "label_column": "label", "proxy_epochs": 2, "folds": 3, "num_buckets": 4096}]
    run_pipeline(
        parse_pipeline({"stage": stages, "batch_size": 64}),
        tmp_path / "in.parquet",
        tmp_path / "out",
        RunOptions(jobs=2, unit_rows=100),
    )
    codes, _ = encode_labels(pa.array(frame["label"].to_list()))
    with torch_threads(1):
        bags = hashed_ngram_bags(pa.array(frame["text"].to_list()), 4096, 2, 0)
        expected = out_of_fold_losses(bags, codes, folds=3, epochs=2, seed=0, config=ProxyConfig(num_buckets=4096))
    kept = pl.read_parquet(tmp_path / "out" / "kept")
    assert kept["id"].to_list() == frame["id"].to_list()
    assert np.array_equal(kept["loss"].to_numpy(), expected.astype(np.float64))
