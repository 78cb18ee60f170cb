"""Does prototype pruning beat random pruning? Sorscher et al. (2022) on real labelled text.

    python -m bench.prototypes_repro [--model minilm|hashing] [--cache bench/out/debian-minilm] [--seeds 0 1 2]
    python -m bench.prototypes_repro --model hashing --rows 10000 --seeds 0 --fractions 0.4 0.8   # a quick run

Task: predict the Debian `section` of a package from its short description, top 20 sections.
Split: seeded 80% train / 20% test (test fixed for every run). Pruning scores: the prototypes
metric (spherical k-means on the train embeddings, distance = 1 - cosine to the nearest
centroid), computed once, without labels. For each kept fraction the same classifier is trained
on the kept train rows: the hardest (largest distance), the easiest, or a uniform random
subset; and the same two rules balanced (`select_by_difficulty(..., groups=cluster)`: each
k-means cluster keeps its share of the rows, its hardest or easiest ones, so the kept data keeps
the cluster mix). Every method runs once per seed (k-means seed and random subset seed; the
split is fixed): mean and sample sd over the seeds. Classifier: multinomial logistic regression (a torch
linear layer, full-batch L-BFGS, 50 iterations, L2 1e-4) on the embedding. This is the
"linear probe on self-supervised features" end of the paper's experiments; the paper's claim to
check: keep hard examples when data is abundant (large fractions), easy ones when scarce
(small fractions), and both beat random in their regime. `--rows N`: a seeded sample of N rows
of the corpus.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import polars as pl
import torch

from bench._harness import REPO_ROOT, add_result_argument, start_run
from bench.corpora import DEBIAN_DESCRIPTIONS as DEBIAN
from curate.algorithms.kmeans import set_threads, spherical_kmeans
from curate.algorithms.prototypes import prototype_distance, select_by_difficulty
from curate.embeddings.hashing import hashing_embed
from curate.io.parts import read_parts
from curate.pipeline import RunOptions, parse_pipeline, run_pipeline

METHODS = ("hard", "easy", "balanced-hard", "balanced-easy", "random")
FRACTIONS = (0.2, 0.4, 0.6, 0.8)


def load(
    model: str, cache: Path, data: Path = DEBIAN, vectors: Path | None = None, rows: int = 0
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    frame = pl.read_parquet(data, columns=["id", "section", "text"]).with_row_index("row")
    if rows and rows < frame.height:
        frame = frame.sample(n=rows, seed=0).sort("row")
    top = frame.get_column("section").value_counts(sort=True).head(20).get_column("section").to_list()
    frame = frame.filter(pl.col("section").is_in(top))
    if vectors is not None:  # precomputed (rows x d, the corpus file's row order), e.g. from an earlier store
        x = np.load(vectors, mmap_mode="r")[frame.get_column("row").to_numpy()]
    elif model == "hashing":
        x = hashing_embed(frame.get_column("text").to_arrow())
    else:
        if not (cache / "embeddings" / "embeddings.json").exists():
            print(f"embedding with {model} into {cache} (once) ...", flush=True)
            run_pipeline(
                parse_pipeline({"stage": [{"kind": "embed", "model": model}]}, "bench"),
                data,
                cache,
                RunOptions(overwrite=True),
            )
        store = pl.from_arrow(read_parts(cache / "embeddings", columns=["id", "embedding"]))
        joined = frame.select("id").join(store, on="id", how="left", maintain_order="left")
        x = np.asarray(joined.get_column("embedding").to_numpy(), dtype=np.float32).reshape(frame.height, -1)
    labels = np.searchsorted(np.array(sorted(top)), frame.get_column("section").to_numpy())
    return np.ascontiguousarray(x, dtype=np.float32), labels.astype(np.int64), sorted(top)


def train_and_test(
    x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray, classes: int
) -> float:
    """Test accuracy of multinomial logistic regression trained to convergence (deterministic)."""
    torch.manual_seed(0)
    mean = x_train.mean(axis=0)
    scale = x_train.std(axis=0) + 1e-6
    xt = torch.from_numpy((x_train - mean) / scale)
    yt = torch.from_numpy(y_train)
    layer = torch.nn.Linear(x_train.shape[1], classes)
    torch.nn.init.zeros_(layer.weight)
    torch.nn.init.zeros_(layer.bias)
    optimizer = torch.optim.LBFGS(
        layer.parameters(), lr=1.0, max_iter=50, history_size=10, line_search_fn="strong_wolfe", tolerance_grad=1e-6
    )

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(layer(xt), yt) + 1e-4 * layer.weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        predicted = layer(torch.from_numpy((x_test - mean) / scale)).argmax(dim=1).numpy()
    return float((predicted == y_test).mean())


def select(method: str, distance: np.ndarray, clusters: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Row mask (or indices for random) of the kept train rows for one method."""
    if method == "random":
        n = len(distance)
        return np.sort(np.random.default_rng(1000 + seed).permutation(n)[: int(np.floor(fraction * n + 0.5))])
    keep = method.removeprefix("balanced-")
    return select_by_difficulty(distance, fraction, keep, clusters if method.startswith("balanced-") else None)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="minilm", choices=["minilm", "hashing"])
    parser.add_argument("--data", type=Path, default=DEBIAN, help="debian_descriptions.parquet")
    parser.add_argument("--rows", type=int, default=0, help="a seeded sample of N rows (0: all)")
    parser.add_argument(
        "--cache",
        type=Path,
        default=REPO_ROOT / "bench" / "out" / "debian-minilm",
        help="minilm store (embedded once; default bench/out/debian-minilm)",
    )
    parser.add_argument(
        "--vectors",
        type=Path,
        default=None,
        help="precomputed embeddings .npy (rows in the corpus file's order) instead of embedding",
    )
    parser.add_argument("--clusters", type=int, default=100)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--fractions", type=float, nargs="+", default=list(FRACTIONS))
    add_result_argument(parser, None, "prototypes_repro-MODEL")
    args = parser.parse_args(argv)
    run = start_run(
        "prototypes_repro",
        argv,
        args.result or f"prototypes_repro-{args.model}",
        "Prototype pruning vs random pruning (Sorscher et al. 2022): test accuracy of a linear probe on the kept train rows, Debian sections.",
        vars(args),
    )
    torch.set_num_threads(os.cpu_count() or 1)
    set_threads(os.cpu_count() or 1)
    started = time.perf_counter()
    x, y, sections = load(args.model, args.cache, args.data, args.vectors, args.rows)
    order = np.random.default_rng(0).permutation(len(x))
    cut = int(0.8 * len(x))
    train, test = np.sort(order[:cut]), np.sort(order[cut:])
    x_train, y_train, x_test, y_test = x[train], y[train], x[test], y[test]
    print(
        f"Debian top-20 sections: {len(x):,} rows ({len(train):,} train / {len(test):,} test), {args.model} embeddings "
        f"({x.shape[1]}-d), {args.clusters} prototypes, seeds {args.seeds}; majority class {np.bincount(y_test).max() / len(y_test):.3f}",
        flush=True,
    )
    full = train_and_test(x_train, y_train, x_test, y_test, len(sections))
    print(f"  all {len(train):,} train rows: test accuracy {full:.4f}", flush=True)
    scores: dict[tuple[float, str], list[float]] = {}
    for seed in args.seeds:
        centroids = spherical_kmeans(x_train, args.clusters, seed=seed)
        clusters, distance = prototype_distance(x_train, centroids)
        for fraction in args.fractions:
            for method in METHODS:
                pick = select(method, distance, clusters, fraction, seed)
                scores.setdefault((fraction, method), []).append(
                    train_and_test(x_train[pick], y_train[pick], x_test, y_test, len(sections))
                )
            print(f"  seed {seed} fraction {fraction:.1f} done ({time.perf_counter() - started:.0f} s)", flush=True)
    rows = []
    for fraction in args.fractions:
        cells, means = [], {}
        for method in METHODS:
            values = scores[(fraction, method)]
            means[method] = float(np.mean(values))
            sd = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
            cells.append(f"{means[method]:.4f} ± {sd:.4f}")
        rows.append((f"{fraction:.1f}", int(np.floor(fraction * len(train) + 0.5)), *cells, max(means, key=means.get)))
        best_pruned = max(means[m] for m in METHODS if m != "random")
        run.compare(
            f"kept {fraction:.1f}: best prototype rule minus random, test accuracy",
            best_pruned - means["random"],
            unit="",
        )
    rows.append(("1.0", len(train), *[""] * len(METHODS), f"{full:.4f} (no pruning)"))
    run.table(
        f"test accuracy, mean ± sample sd over {len(args.seeds)} seeds; {len(x):,} rows ({len(train):,} train / {len(test):,} test), "
        f"{args.model} embeddings, {args.clusters} prototypes",
        ["kept fraction", "kept rows", *METHODS, "best"],
        rows,
    )
    run.data.update(full=full, seeds=args.seeds, scores={f"{f}:{m}": v for (f, m), v in scores.items()})
    print(f"({time.perf_counter() - started:.0f} s)")
    run.write()


if __name__ == "__main__":
    main()
