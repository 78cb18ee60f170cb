"""Small proxy trainings per quality pool at several budgets, written as RUNS.csv rows.

A scaling-law fit needs runs on each pool alone, some past one pass (else its half-life is
unidentified). Each pool (and, as extra evidence, each quality prefix 0+1, 0+1+2, ...) is
trained with the fast hashed n-gram proxy (curate.training.proxy) for a number of passes,
and the held-out loss is measured at checkpoints. With a constant learning rate and a fixed
seed, the checkpoint after n samples is exactly the run that stops at n samples, so one
trajectory gives all of a pool's budgets. The held-out rows are drawn from every pool: the
target distribution is the whole corpus, not the pool trained on."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import pyarrow as pa
import torch

from curate.engine.progress import QUIET, Progress
from curate.training.features import Bags, hashed_ngram_bags
from curate.training.proxy import ProxyConfig, build_model, out_of_fold_losses, predict_losses, train_steps

METRICS = ("loss", "error")


@dataclass(frozen=True)
class ProxyRunSettings:
    """What to train: checkpoints in passes over the pool (or prefix mix), and the proxy's knobs."""

    epochs: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0)
    mix_epochs: tuple[float, ...] = (0.5, 1.0, 2.0)  # prefix mixes (0+1, ...): extra evidence; () to skip
    budgets: tuple[float, ...] = ()  # if given: the same absolute checkpoints (samples seen) for every pool and mix
    heldout_fraction: float = 0.2
    heldout_max: int = 5000
    classes: int = 20  # the largest label classes; other rows are left out
    seeds: int = 1
    metric: str = "error"  # held-out 1 - accuracy, or "loss" (cross-entropy; it rises once repetition overfits, which no monotone law fits)
    seed: int = 0
    proxy: ProxyConfig = field(default_factory=lambda: ProxyConfig(lr=0.005, batch_size=32, num_buckets=1 << 18))


def top_classes(labels: Sequence, classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows whose label is among the `classes` most frequent (ties by value), and dense class ids for them."""
    values = np.asarray([str(v) for v in labels], dtype=object)
    names, counts = np.unique(values, return_counts=True)
    order = np.lexsort((names, -counts))[:classes]
    keep_names = names[order]
    index = {n: i for i, n in enumerate(keep_names)}
    rows = np.nonzero(np.isin(values, keep_names))[0]
    return rows, np.array([index[v] for v in values[rows]], dtype=np.int64)


def score_pools(bags: Bags, labels: np.ndarray, pools: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Fallback pools when the run has no `pool` column: out-of-fold proxy loss, quantile-bucketed,
    pool 0 = lowest loss (labels the rest of the corpus agrees with). Returns (pool, proxy_loss)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        score = out_of_fold_losses(
            bags, labels, folds=4, epochs=2, seed=seed, config=ProxyConfig(batch_size=128, lr=0.02)
        )
    finally:
        torch.set_num_threads(threads)
    ranks = np.argsort(np.argsort(score, kind="stable"), kind="stable")
    return (ranks * pools // len(score)).astype(np.int64), score


def _split(n: int, settings: ProxyRunSettings) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng([settings.seed, 1])
    order = rng.permutation(n)
    held = min(int(round(settings.heldout_fraction * n)), settings.heldout_max)
    return np.sort(order[:held]), np.sort(order[held:])


def _trajectory(
    bags: Bags,
    labels: np.ndarray,
    num_classes: int,
    rows: np.ndarray,
    heldout: np.ndarray,
    epochs: Sequence[float],
    metric: str,
    seed: int,
    proxy: ProxyConfig,
) -> list[tuple[int, float, float]]:
    """(samples_seen, metric value, error) after each checkpoint of one training over `rows` repeated."""
    size = len(rows)
    checkpoints = sorted({max(1, int(round(e * size))) for e in epochs})
    passes = int(np.ceil(checkpoints[-1] / size))
    rng = np.random.default_rng([seed, 2])
    order = np.concatenate([rows[rng.permutation(size)] for _ in range(passes)])
    model, optimizer = build_model(proxy, num_classes, seed)
    out, done = [], 0
    for checkpoint in checkpoints:
        train_steps(model, optimizer, bags, labels, order[done:checkpoint], proxy.batch_size)
        done = checkpoint
        losses, correct = predict_losses(model, bags, labels, heldout)
        error = float(1.0 - correct.mean())
        out.append((checkpoint, float(losses.mean()) if metric == "loss" else max(error, 1e-6), error))
    return out


def run_proxy_trainings(
    texts,
    labels: Sequence,
    pools: Sequence[int],
    settings: ProxyRunSettings = ProxyRunSettings(),
    progress: Progress = QUIET,
    random_pools: bool = False,
) -> list[dict]:
    """RUNS.csv rows (pool, pool_size, samples_seen, loss, plus seed, epochs, error) for every
    pool alone at settings.epochs and every prefix mix at settings.mix_epochs.

    `random_pools`: the random baseline. The training rows are dealt into pools of exactly the
    same sizes at random (a fresh deal per seed), then trained with the same checkpoints, seeds
    and held-out rows; random prefix 0..j-1 is a uniform random subset of the size of quality
    prefix 0..j-1, so a law fitted to these runs predicts "random data of the same size"."""
    if settings.metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}")
    rows, y = top_classes(labels, settings.classes)
    pools = np.asarray(pools, dtype=np.int64)[rows]
    bags = hashed_ngram_bags(_take(texts, rows), num_buckets=settings.proxy.num_buckets)
    num_classes = int(y.max()) + 1
    heldout, train = _split(len(y), settings)
    pool_ids = sorted(int(p) for p in np.unique(pools[train]))
    plans: list[tuple[list[int], Sequence[float]]] = [([p], settings.epochs) for p in pool_ids]
    if settings.mix_epochs or settings.budgets:
        plans += [(pool_ids[:j], settings.mix_epochs) for j in range(2, len(pool_ids) + 1)]
    sizes = {p: int(np.sum(pools[train] == p)) for p in pool_ids}
    if settings.budgets:
        plans = [(mix, tuple(b / sum(sizes[p] for p in mix) for b in settings.budgets)) for mix, _ in plans]
    total = sum(sum(sizes[p] for p in mix) * max(epochs) * settings.seeds for mix, epochs in plans)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny batches: threading costs more than it gives
    out: list[dict] = []
    try:
        with progress.task(
            "proxy trainings (random baseline)" if random_pools else "proxy trainings",
            total=int(total),
            unit="samples",
        ) as bar:
            for s in range(settings.seeds):
                train_pools = (
                    np.random.default_rng([settings.seed, 3, s]).permutation(pools[train])
                    if random_pools
                    else pools[train]
                )
                members = {p: train[train_pools == p] for p in pool_ids}
                for mix, epochs in plans:
                    mix_rows = np.concatenate([members[p] for p in mix])
                    for seen, value, error in _trajectory(
                        bags,
                        y,
                        num_classes,
                        mix_rows,
                        heldout,
                        epochs,
                        settings.metric,
                        settings.seed + 1000 * s + 17 * len(mix),
                        settings.proxy,
                    ):
                        out.append(
                            {
                                "pool": "+".join(str(p) for p in mix),
                                "pool_size": len(mix_rows),
                                "samples_seen": seen,
                                "loss": round(value, 6),
                                "seed": s,
                                "epochs": round(seen / len(mix_rows), 4),
                                "error": round(error, 6),
                            }
                        )
                    bar.advance(int(len(mix_rows) * max(epochs)))
    finally:
        torch.set_num_threads(threads)
    order = {label: i for i, label in enumerate(dict.fromkeys("+".join(str(p) for p in mix) for mix, _ in plans))}
    return sorted(
        out, key=lambda r: (order[r["pool"]], r["seed"])
    )  # stable: per pool, seeds in order, checkpoints ascending


EXTRA_COLUMNS = ("seed", "epochs", "error")


def _take(texts, rows: np.ndarray):
    if isinstance(texts, (pa.Array, pa.ChunkedArray)):
        return texts.take(pa.array(rows))
    return [texts[int(i)] for i in rows]
