"""Evidence for a SeTa schedule: a short proxy training of full data, SeTa and random subsets
with SeTa's per-epoch counts (equal visits)."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from curate.engine.progress import QUIET, Progress
from curate.scaling.baseline import MARGIN_SD


def seta_check(
    texts,
    labels: Sequence,
    config,
    *,
    seeds: int = 3,
    classes: int = 20,
    max_rows: int = 10_000,
    seed: int = 0,
    progress: Progress = QUIET,
) -> dict:
    """Full data, SeTa (online, the proxy's own losses) and random subsets with SeTa's per-epoch
    counts, `config.epochs` epochs each, held-out accuracy over `seeds` seeds. Rows are capped at
    `max_rows` (a seeded sample) to keep it short."""
    import torch

    from curate.scaling.proxy_runs import _take, top_classes
    from curate.training.features import hashed_ngram_bags
    from curate.training.proxy import ProxyConfig, build_model, predict_losses, train_steps
    from curate.training.seta import SeTaSampler

    rows, y = top_classes(labels, classes)
    rng = np.random.default_rng([seed, 5])
    if len(rows) > max_rows:
        pick = np.sort(rng.choice(len(rows), size=max_rows, replace=False))
        rows, y = rows[pick], y[pick]
    bags = hashed_ngram_bags(_take(texts, rows))
    order = rng.permutation(len(y))
    held = max(1, len(y) // 5)
    test, train = np.sort(order[:held]), np.sort(order[held:])
    train_bags, test_bags = bags.take(train), bags.take(test)
    train_y, test_y = y[train], y[test]
    n, num_classes = len(train), int(y.max()) + 1
    proxy = ProxyConfig()  # lr 0.02, batch 256: the settings bench/seta.py measured
    results: dict[str, list[dict]] = {"full": [], "seta": [], "random@seta": []}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with progress.task("SeTa check (full, SeTa, random at equal visits)", total=seeds * 3, unit="runs") as bar:
            for s in range(seeds):
                counts = None
                for method in ("seta", "random@seta", "full"):
                    model, optimizer = build_model(proxy, num_classes, seed + s)
                    sampler = (
                        SeTaSampler(
                            n,
                            config.epochs,
                            seed=seed + s,
                            prune_ratio=config.prune_ratio,
                            groups=config.groups,
                            window_scale=config.window_scale,
                            delta=config.delta,
                        )
                        if method == "seta"
                        else None
                    )
                    per_epoch = []
                    for epoch in range(config.epochs):
                        epoch_rng = np.random.default_rng([seed + s, epoch, 7])
                        if sampler is not None:
                            sampler.set_epoch(epoch)
                            batch_order = np.fromiter(iter(sampler), dtype=np.int64)
                        elif method == "random@seta":
                            batch_order = epoch_rng.choice(n, size=counts[epoch], replace=False)
                        else:
                            batch_order = epoch_rng.permutation(n)
                        train_steps(
                            model,
                            optimizer,
                            train_bags,
                            train_y,
                            batch_order,
                            proxy.batch_size,
                            on_batch=sampler.update if sampler is not None else None,
                        )
                        per_epoch.append(len(batch_order))
                    if method == "seta":
                        counts = per_epoch
                    _, correct = predict_losses(model, test_bags, test_y)
                    results[method].append(
                        {
                            "seed": s,
                            "accuracy": float(correct.mean()),
                            "visits": int(sum(per_epoch)),
                            "per_epoch": per_epoch,
                        }
                    )
                    bar.advance(1)
    finally:
        torch.set_num_threads(threads)
    summary = {}
    for method, runs in results.items():
        acc = np.array([r["accuracy"] for r in runs])
        summary[method] = {
            "accuracy_mean": float(acc.mean()),
            "accuracy_sd": float(acc.std(ddof=1)) if len(acc) > 1 else float("nan"),
            "visits": int(np.mean([r["visits"] for r in runs])),
            "visit_fraction": float(np.mean([r["visits"] for r in runs]) / (n * config.epochs)),
            "runs": runs,
        }
    gain = np.array([a["accuracy"] - b["accuracy"] for a, b in zip(results["seta"], results["random@seta"])])
    sd = float(gain.std(ddof=1)) if len(gain) > 1 else float("nan")
    if np.isfinite(sd) and gain.mean() > MARGIN_SD * sd / np.sqrt(len(gain)):
        verdict = "beats_random"
    elif np.isfinite(sd) and gain.mean() < -MARGIN_SD * sd / np.sqrt(len(gain)):
        verdict = "worse_than_random"
    else:
        verdict = "no_better_than_random"
    return {
        "rows": int(n),
        "heldout": int(len(test)),
        "classes": num_classes,
        "epochs": config.epochs,
        "seeds": seeds,
        "methods": summary,
        "seta_minus_random": float(gain.mean()),
        "seta_minus_random_sd": sd,
        "seta_minus_full": summary["seta"]["accuracy_mean"] - summary["full"]["accuracy_mean"],
        "verdict": verdict,
    }
