"""Does prototype pruning beat random pruning? Sorscher et al. (2022) on real labelled text.

    python bench/prototypes_repro.py [--model minilm|hashing] [--cache /tmp/curate-bench/debian-minilm]

Task: predict the Debian `section` of a package from its short description, top 20 sections.
Split: seeded 80% train / 20% test (test fixed for every run). Pruning scores: the prototypes
metric (spherical k-means on the train embeddings, distance = 1 - cosine to the nearest
centroid), computed once, without labels. For each kept fraction the same classifier is trained
on the kept train rows: the hardest (largest distance), the easiest, or a uniform random
subset (mean and spread over 2 seeds). Classifier: multinomial logistic regression (a torch
linear layer, full-batch L-BFGS, 50 iterations, L2 1e-4) on the embedding. This is the
"linear probe on self-supervised features" end of the paper's experiments; the paper's claim to
check: keep hard examples when data is abundant (large fractions), easy ones when scarce
(small fractions), and both beat random in their regime.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import polars as pl  # noqa: E402
import torch  # noqa: E402

from curate.metrics.hashing_embed import hashing_embed  # noqa: E402
from curate.metrics.kmeans import set_threads, spherical_kmeans  # noqa: E402
from curate.metrics.prototypes import prototype_distance, select_by_difficulty  # noqa: E402
from curate.pipeline import RunOptions, parse_pipeline, run_pipeline  # noqa: E402
from curate.shards import read_parts  # noqa: E402

DEBIAN = Path("/work/shared/data/debian_descriptions.parquet")
FRACTIONS = (0.2, 0.4, 0.6, 0.8)


def load(model: str, cache: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    frame = pl.read_parquet(DEBIAN, columns=["id", "section", "text"])
    top = frame.get_column("section").value_counts(sort=True).head(20).get_column("section").to_list()
    frame = frame.filter(pl.col("section").is_in(top))
    if model == "hashing":
        x = hashing_embed(frame.get_column("text").to_arrow())
    else:
        if not (cache / "embeddings" / "embeddings.json").exists():
            print(f"embedding with {model} into {cache} (once) ...", flush=True)
            run_pipeline(parse_pipeline({"stage": [{"kind": "embed", "model": model}]}, "bench"), DEBIAN, cache, RunOptions(overwrite=True))
        store = pl.from_arrow(read_parts(cache / "embeddings", columns=["id", "embedding"]))
        joined = frame.select("id").join(store, on="id", how="left", maintain_order="left")
        x = np.asarray(joined.get_column("embedding").to_numpy(), dtype=np.float32).reshape(frame.height, -1)
    labels = np.searchsorted(np.array(sorted(top)), frame.get_column("section").to_numpy())
    return np.ascontiguousarray(x, dtype=np.float32), labels.astype(np.int64), sorted(top)


def train_and_test(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray, classes: int) -> float:
    """Test accuracy of multinomial logistic regression trained to convergence (deterministic)."""
    torch.manual_seed(0)
    mean = x_train.mean(axis=0)
    scale = x_train.std(axis=0) + 1e-6
    xt = torch.from_numpy((x_train - mean) / scale)
    yt = torch.from_numpy(y_train)
    layer = torch.nn.Linear(x_train.shape[1], classes)
    torch.nn.init.zeros_(layer.weight)
    torch.nn.init.zeros_(layer.bias)
    optimizer = torch.optim.LBFGS(layer.parameters(), lr=1.0, max_iter=50, history_size=10, line_search_fn="strong_wolfe", tolerance_grad=1e-6)

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(layer(xt), yt) + 1e-4 * layer.weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        predicted = layer(torch.from_numpy((x_test - mean) / scale)).argmax(dim=1).numpy()
    return float((predicted == y_test).mean())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="minilm", choices=["minilm", "hashing"])
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "curate-bench" / "debian-minilm")
    parser.add_argument("--clusters", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--random-seeds", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    set_threads(os.cpu_count() or 1)
    started = time.perf_counter()
    x, y, sections = load(args.model, args.cache)
    rng = np.random.default_rng(args.seed)
    order = rng.permutation(len(x))
    cut = int(0.8 * len(x))
    train, test = np.sort(order[:cut]), np.sort(order[cut:])
    x_train, y_train, x_test, y_test = x[train], y[train], x[test], y[test]
    centroids = spherical_kmeans(x_train, args.clusters, seed=args.seed)
    _, distance = prototype_distance(x_train, centroids)
    print(f"Debian top-20 sections: {len(x):,} rows ({len(train):,} train / {len(test):,} test), {args.model} embeddings "
          f"({x.shape[1]}-d), {args.clusters} prototypes; majority class {np.bincount(y_test).max() / len(y_test):.3f}", flush=True)
    full = train_and_test(x_train, y_train, x_test, y_test, len(sections))
    print(f"  all {len(train):,} train rows: test accuracy {full:.4f}", flush=True)
    rows = [("kept fraction", "kept rows", "hard (prototypes)", "easy (prototypes)", "random (mean ± sd)", "best")]
    for fraction in FRACTIONS:
        results = {}
        for keep in ("hard", "easy"):
            mask = select_by_difficulty(distance, fraction, keep)
            results[keep] = train_and_test(x_train[mask], y_train[mask], x_test, y_test, len(sections))
        randoms = []
        for seed in range(args.random_seeds):
            pick = np.random.default_rng(1000 + seed).permutation(len(train))[: int(mask.sum())]
            randoms.append(train_and_test(x_train[pick], y_train[pick], x_test, y_test, len(sections)))
        mean, sd = float(np.mean(randoms)), float(np.std(randoms))
        best = max(("hard", results["hard"]), ("easy", results["easy"]), ("random", mean), key=lambda kv: kv[1])[0]
        rows.append((f"{fraction:.1f}", f"{int(mask.sum()):,}", f"{results['hard']:.4f}", f"{results['easy']:.4f}", f"{mean:.4f} ± {sd:.4f}", best))
        print(f"  fraction {fraction:.1f} done", flush=True)
    print()
    widths = [max(len(str(r[c])) for r in rows) for c in range(len(rows[0]))]
    for n, row in enumerate(rows):
        print("| " + " | ".join(str(v).ljust(w) for v, w in zip(row, widths)) + " |")
        if n == 0:
            print("| " + " | ".join("-" * w for w in widths) + " |")
    print(f"| 1.0 | {len(train):,} | {full:.4f} (no pruning) | | | |")
    print(f"\n({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
