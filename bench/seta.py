"""SeTa vs full data, InfoBatch and random pruning at equal cost, on real text classification.

Data: shared/data/debian_descriptions.parquet (beside the checkout, see bench.corpora). Model: the proxy BagClassifier (hashed
word + bigram bag, linear head), Adam, batch 256, fixed held-out test split (20%, its own
seed). Tasks:
  top20   predict `section` among the 20 largest sections (clean labels)
  noisy   all sections, 30% of training labels flipped to another random section
          (test labels clean): a harder task where curricula are claimed to help most
Methods, all `--epochs` epochs: full data; SeTa defaults; SeTa window_scale=0.3; SeTa with
prune_ratio=0.3; InfoBatch (r=0.5, rescaled); random pruning with SeTa-default's exact
per-epoch sample counts (same visits, uniform choice); and full data for fewer epochs
(round(SeTa visits / n) whole epochs: the other way to spend the same budget). Also times
the SeTa selection (k-means + window + shuffle) on 1M losses.

    python -m bench.seta --seeds 0 1 2 --tasks top20 noisy
    python -m bench.seta --seeds 0 --tasks top20 --epochs 2 --methods full seta random@seta --skip-overhead   # a quick run

The result file is rewritten after every training, so a stopped run leaves what it measured.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import polars as pl
import torch

from bench._harness import add_result_argument, start_run
from bench.corpora import DEBIAN_DESCRIPTIONS
from curate.algorithms.loss_clusters import kmeans_1d
from curate.training import InfoBatchSampler, SeTaSampler
from curate.training.features import hashed_ngram_bags
from curate.training.proxy import ProxyConfig, build_model, predict_losses, train_steps

DATA = str(DEBIAN_DESCRIPTIONS)
SPLIT_SEED = 12345
METHODS = ["full", "seta", "seta_w0.3", "seta_p0.3", "infobatch", "random@seta", "fewer_epochs@seta"]


def load_task(task: str, noise: float) -> dict:
    df = pl.read_parquet(DATA, columns=["text", "section"])
    if task == "top20":
        top = (
            df.get_column("section")
            .value_counts()
            .sort(["count", "section"], descending=[True, False])
            .head(20)
            .get_column("section")
        )
        df = df.filter(pl.col("section").is_in(top.implode()))
    classes = sorted(df.get_column("section").unique().to_list())
    labels = (
        df.get_column("section")
        .replace_strict({c: i for i, c in enumerate(classes)}, return_dtype=pl.Int64)
        .to_numpy()
    )
    rng = np.random.default_rng(SPLIT_SEED)
    perm = rng.permutation(df.height)
    n_test = df.height // 5
    test, train = np.sort(perm[:n_test]), np.sort(perm[n_test:])
    train_labels = labels[train].copy()
    flipped = np.zeros(len(train), bool)
    if task == "noisy":
        flipped = rng.random(len(train)) < noise
        shift = rng.integers(1, len(classes), size=int(flipped.sum()))
        train_labels[flipped] = (train_labels[flipped] + shift) % len(classes)  # always a different class
    bags = hashed_ngram_bags(df.get_column("text"), ProxyConfig().num_buckets, 2, 0)
    return {
        "train_bags": bags.take(train),
        "test_bags": bags.take(test),
        "train_labels": train_labels,
        "test_labels": labels[test],
        "classes": len(classes),
        "flipped": flipped,
    }


class FixedCountSampler:
    """Uniform random subsets with a given size per epoch: the equal-cost random baseline."""

    def __init__(self, n: int, counts: list[int], seed: int):
        self.n, self.counts, self.seed = n, counts, seed

    def order(self, epoch: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, epoch, 7])
        return rng.choice(self.n, size=self.counts[epoch], replace=False)


def train(
    task: dict, method: str, seed: int, epochs: int, counts: list[int] | None = None, lr: float = ProxyConfig().lr
) -> dict:
    n = task["train_bags"].rows
    config = ProxyConfig(lr=lr)
    model, optimizer = build_model(config, task["classes"], seed)
    labels = task["train_labels"]
    sampler = None
    if method == "seta":
        sampler = SeTaSampler(n, epochs, seed=seed)
    elif method == "seta_w0.3":
        sampler = SeTaSampler(n, epochs, seed=seed, window_scale=0.3)
    elif method == "seta_p0.3":
        sampler = SeTaSampler(n, epochs, seed=seed, prune_ratio=0.3)
    elif method == "infobatch":
        sampler = InfoBatchSampler(n, epochs, seed=seed)
    fixed = FixedCountSampler(n, counts, seed) if method == "random@seta" else None
    if method == "fewer_epochs@seta":
        epochs = max(1, round(sum(counts) / n))
    per_epoch, flipped_share = [], []
    started = time.perf_counter()
    for epoch in range(epochs):
        if sampler is not None:
            sampler.set_epoch(epoch)
            order = np.fromiter(iter(sampler), dtype=np.int64)
        elif fixed is not None:
            order = fixed.order(epoch)
        else:
            order = np.random.default_rng([seed, epoch, 1]).permutation(n)
        weights = sampler.weights if isinstance(sampler, InfoBatchSampler) else None
        wfn = (lambda rows: weights(rows).numpy()) if weights is not None else None
        update = sampler.update if sampler is not None else None
        train_steps(
            model, optimizer, task["train_bags"], labels, order, config.batch_size, weights=wfn, on_batch=update
        )
        per_epoch.append(len(order))
        flipped_share.append(float(task["flipped"][order].mean()) if len(order) else 0.0)
    seconds = time.perf_counter() - started
    _, correct = predict_losses(model, task["test_bags"], task["test_labels"])
    return {
        "method": method,
        "seed": seed,
        "accuracy": float(correct.mean()),
        "visits": int(sum(per_epoch)),
        "visit_fraction": sum(per_epoch) / (n * len(counts or per_epoch))
        if method == "fewer_epochs@seta"
        else sum(per_epoch) / (n * epochs),
        "per_epoch": per_epoch,
        "flipped_share": flipped_share,
        "seconds": seconds,
    }


def overhead(n: int = 1_000_000, repeats: int = 3) -> dict:
    """Time the sampler's own work per epoch on n samples: k-means alone, and a whole
    windowed epoch selection + shuffle, after realistic (skewed) losses were recorded."""
    rng = np.random.default_rng(0)
    losses = rng.lognormal(-1.0, 1.5, n)
    kmeans, kmeans_cpu = [], []
    for r in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        kmeans_1d(losses, 10, seed=r)
        kmeans.append(time.perf_counter() - t)
        kmeans_cpu.append(time.process_time() - c)
    sampler = SeTaSampler(n, 10, seed=0)
    sampler.update(np.arange(n), losses)
    epoch_times, epoch_cpu = [], []
    for epoch in range(1, 1 + repeats):
        sampler.set_epoch(epoch)
        t, c = time.perf_counter(), time.process_time()
        order = sampler.order()
        epoch_times.append(time.perf_counter() - t)
        epoch_cpu.append(time.process_time() - c)
    t = time.perf_counter()
    for start in range(0, n, 256):
        sampler.update(order[start : start + 256], losses[order[start : start + 256]])
    update_time = time.perf_counter() - t
    return {
        "n": n,
        "kmeans_seconds": min(kmeans),
        "kmeans_cpu_seconds": min(kmeans_cpu),
        "select_and_shuffle_seconds": min(epoch_times),
        "select_and_shuffle_cpu_seconds": min(epoch_cpu),
        "update_seconds_per_epoch_batch256": update_time * n / max(len(order), 1),
    }


SUMMARY_COLUMNS = [
    "method",
    "test accuracy % (mean ± sd) (vs full)",
    "visits vs full",
    "flipped labels among visits",
    "seconds",
    "seeds",
]


def summarize(results: list[dict]) -> list[list]:
    """One row per method of SUMMARY_COLUMNS, over the seeds."""
    lines = []
    full = [r for r in results if r["method"] == "full"]
    full_acc = statistics.mean(r["accuracy"] for r in full) if full else float("nan")
    for method in METHODS:
        rows = [r for r in results if r["method"] == method]
        if not rows:
            continue
        acc = [100 * r["accuracy"] for r in rows]
        sd = statistics.stdev(acc) if len(acc) > 1 else 0.0
        vis = statistics.mean(r["visit_fraction"] for r in rows)
        sec = statistics.mean(r["seconds"] for r in rows)
        delta = statistics.mean(acc) - 100 * full_acc
        flipped = statistics.mean(
            sum(f * c for f, c in zip(r["flipped_share"], r["per_epoch"])) / max(sum(r["per_epoch"]), 1) for r in rows
        )
        lines.append(
            [
                method,
                f"{statistics.mean(acc):.2f} ± {sd:.2f} ({delta:+.2f})",
                f"{100 * vis:.1f}%",
                f"{100 * flipped:.1f}%",
                round(sec, 1),
                len(rows),
            ]
        )
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--tasks", nargs="+", default=["top20", "noisy"], choices=["top20", "noisy"])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--noise", type=float, default=0.3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--lr", type=float, default=ProxyConfig().lr, help="Adam learning rate (default: the proxy's 0.02)"
    )
    parser.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS)
    parser.add_argument("--skip-overhead", action="store_true")
    add_result_argument(parser, "seta")
    args = parser.parse_args(argv)
    run = start_run(
        "seta",
        argv,
        args.result,
        "SeTa vs full data, InfoBatch and random pruning at equal cost: test accuracy of the proxy classifier, Debian sections.",
        vars(args),
    )
    torch.set_num_threads(args.threads)
    report = run.data
    report["tasks"] = {}
    if not args.skip_overhead:
        report["overhead"] = overhead()
        o = report["overhead"]
        print(
            f"sampler overhead on {o['n']:,} samples: k-means {o['kmeans_seconds']:.3f} s wall ({o['kmeans_cpu_seconds']:.3f} s CPU), "
            f"selection+shuffle per epoch {o['select_and_shuffle_seconds']:.3f} s wall ({o['select_and_shuffle_cpu_seconds']:.3f} s CPU), "
            f"update() calls over a 1M-sample epoch at batch 256 {o['update_seconds_per_epoch_batch256']:.3f} s",
            flush=True,
        )
        run.table(
            f"sampler overhead on {o['n']:,} samples",
            ["step", "wall s", "CPU s"],
            [
                ["k-means", round(o["kmeans_seconds"], 3), round(o["kmeans_cpu_seconds"], 3)],
                [
                    "selection + shuffle per epoch",
                    round(o["select_and_shuffle_seconds"], 3),
                    round(o["select_and_shuffle_cpu_seconds"], 3),
                ],
                [
                    "update() calls over a 1M-sample epoch, batch 256",
                    round(o["update_seconds_per_epoch_batch256"], 3),
                    None,
                ],
            ],
            show=False,
        )
    for task_name in args.tasks:
        task = load_task(task_name, args.noise)
        n = task["train_bags"].rows
        print(
            f"task {task_name}: {n:,} train rows, {task['test_bags'].rows:,} test rows, {task['classes']} classes",
            flush=True,
        )
        results = []
        for seed in args.seeds:
            seta_counts = None
            for method in args.methods:
                if method in ("random@seta", "fewer_epochs@seta") and seta_counts is None:
                    seta_counts = train(task, "seta", seed, args.epochs, lr=args.lr)["per_epoch"]
                result = train(task, method, seed, args.epochs, seta_counts, lr=args.lr)
                if method == "seta":
                    seta_counts = result["per_epoch"]
                results.append(result)
                print(
                    f"  seed {seed} {method:12s} acc {100 * result['accuracy']:.2f}%  visits {100 * result['visit_fraction']:.1f}%  {result['seconds']:.1f}s  per-epoch {result['per_epoch']}",
                    flush=True,
                )
                report["tasks"][task_name] = {"train_rows": n, "classes": task["classes"], "results": results}
                run.write(complete=False)
        report["tasks"][task_name] = {"train_rows": n, "classes": task["classes"], "results": results}
        run.table(
            f"{task_name}: {n:,} train rows, {task['classes']} classes, {args.epochs} epochs",
            SUMMARY_COLUMNS,
            summarize(results),
        )
        accuracy = {
            m: statistics.mean(r["accuracy"] for r in results if r["method"] == m)
            for m in {r["method"] for r in results}
        }
        if "seta" in accuracy and "random@seta" in accuracy:
            run.compare(
                f"{task_name}: SeTa minus random pruning at the same visits, test accuracy (points)",
                100 * (accuracy["seta"] - accuracy["random@seta"]),
                unit="",
            )
        if "seta" in accuracy and "full" in accuracy:
            run.compare(
                f"{task_name}: SeTa minus full data, test accuracy (points)",
                100 * (accuracy["seta"] - accuracy["full"]),
                unit="",
            )
    run.write()


if __name__ == "__main__":
    main()
