"""How far `minilm-static` (and `hashing`, as a floor) agree with MiniLM, on real texts.

    python -m bench.static_agreement [--corpus debian_descriptions.parquet] [--rows 20000]
                                     [--docstrings PYTHON_SOURCE_DIR] [--docstring-rows 10000]
                                     [--threshold 0.95] [--clusters 100]
    python -m bench.static_agreement --rows 2000 --clusters 20     # a quick run

Texts are made unique first (exact copies are the exact stage's job, and every embedding finds
them). Semantic dedup: MiniLM's duplicate pairs are the pairs at cosine >= `--threshold` (the
semdedup default, 0.95), found exactly (FAISS range search). For the fast model, every pair
at cosine >= t is a prediction; precision and recall against MiniLM's pairs are swept over t,
and the t with the best F1 is reported. That t is found on the first corpus and then checked
on the second (docstrings: the first paragraph of every module, class and function docstring
under `--docstrings`, e.g. a Python standard library directory, whitespace collapsed, 20+
characters), next to the second corpus's own best t.

Prototypes: spherical k-means (`--clusters`) on each embedding separately, each row's cosine
distance to its nearest centroid, and the Spearman rank correlation of those distances between
MiniLM and the fast model (what `prototypes` keeps and `pools` buckets is a ranking); also with
the fast model's distances measured in MiniLM's clusters (same partition, only the embedding
differs), and MiniLM against itself with another k-means seed (the noise floor of k-means).

MiniLM vectors come from the ONNX backend when onnxruntime is installed (cosine >= 0.999 to
torch), else torch; texts are encoded in length-sorted windows as the embed stage does.
"""

from __future__ import annotations

import argparse
import ast
import os
import re
import time
from pathlib import Path

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from scipy.stats import spearmanr

from bench._harness import Run, add_result_argument, importable, start_run
from bench.corpora import DEBIAN_DESCRIPTIONS as DEBIAN
from curate.algorithms.kmeans import spherical_kmeans
from curate.algorithms.prototypes import prototype_distance
from curate.embeddings.models import load_embedder

SWEEP = np.round(np.arange(0.80, 0.9951, 0.005), 3)
WINDOW = 4096


def docstring_texts(root: Path, limit: int, seed: int = 0) -> list[str]:
    """First paragraphs of docstrings in the .py files under `root`, a seeded sample of `limit`."""
    texts: list[str] = []
    for path in sorted(root.rglob("*.py")):
        try:
            tree = ast.parse(path.read_text(encoding="utf-8", errors="replace"))
        except (SyntaxError, ValueError, OSError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc:
                    paragraph = re.sub(r"\s+", " ", doc.split("\n\n")[0]).strip()
                    if len(paragraph) >= 20:
                        texts.append(paragraph)
    rng = np.random.default_rng(seed)
    if len(texts) > limit:
        texts = [texts[i] for i in np.sort(rng.choice(len(texts), limit, replace=False))]
    return texts


def unique(texts: list[str]) -> list[str]:
    """First occurrence of each distinct text: exact copies are the exact stage's job (it runs
    before semdedup), and every embedding finds them, which would flatter the fast models."""
    return list(dict.fromkeys(texts))


def encode(embedder, texts: list[str]) -> np.ndarray:
    """Vectors in input order, encoded in length-sorted windows (as the embed stage does)."""
    array = pa.array(texts)
    out = np.zeros((len(texts), 384), dtype=np.float32)
    for start in range(0, len(texts), WINDOW):
        chunk = array.slice(start, WINDOW)
        order = np.argsort([len(t) for t in chunk.to_pylist()], kind="stable")
        out[start + order] = embedder.encode(chunk.take(pa.array(order)))
    return out


def pairs_at(x: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """(pair keys i * n + j for i < j, cosine) of every pair at cosine >= threshold (exact)."""
    n = len(x)
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    keys, sims = [], []
    for start in range(0, n, 2048):
        lims, dist, labels = index.range_search(x[start : start + 2048], float(threshold))
        rows = np.repeat(np.arange(start, start + len(lims) - 1), np.diff(lims).astype(np.int64))
        keep = labels > rows
        keys.append(rows[keep].astype(np.int64) * n + labels[keep].astype(np.int64))
        sims.append(dist[keep])
    return np.concatenate(keys), np.concatenate(sims)


def sweep(
    reference: np.ndarray, predicted: np.ndarray, sims: np.ndarray
) -> list[tuple[float, float, float, float, int]]:
    """(t, precision, recall, F1, predicted pairs) for every t of SWEEP."""
    hit = np.isin(predicted, reference)
    rows = []
    for t in SWEEP:
        chosen = sims >= t
        tp, n_pred = int(hit[chosen].sum()), int(chosen.sum())
        precision = tp / n_pred if n_pred else 1.0
        recall = tp / len(reference) if len(reference) else 1.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        rows.append((float(t), precision, recall, f1, n_pred))
    return rows


def measure(name: str, texts: list[str], models: dict, args, run: Run) -> dict:
    print(f"\n== {name}: {len(texts)} texts, mean {np.mean([len(t) for t in texts]):.0f} characters", flush=True)
    vectors, speed = {}, {}
    for label, embedder in models.items():
        started = time.perf_counter()
        vectors[label] = encode(embedder, texts)
        speed[label] = len(texts) / (time.perf_counter() - started)
        print(f"  {label}: {speed[label]:,.0f} rows/s", flush=True)
    reference, _ = pairs_at(vectors["minilm"], args.threshold)
    print(f"  minilm pairs at cosine >= {args.threshold}: {len(reference):,}")
    centroids = spherical_kmeans(vectors["minilm"], args.clusters, seed=0)
    base_labels, base_distance = prototype_distance(vectors["minilm"], centroids)
    reseeded = prototype_distance(vectors["minilm"], spherical_kmeans(vectors["minilm"], args.clusters, seed=1))[1]
    floor = float(spearmanr(base_distance, reseeded).statistic)
    print(f"  k-means noise floor: Spearman of minilm's distances, seed 0 vs seed 1: {floor:.3f}")
    results = {}
    summary = [["minilm", round(speed["minilm"]), len(reference), None, None, None, None, None, round(floor, 3), None]]
    for label in models:
        if label == "minilm":
            continue
        predicted, sims = pairs_at(vectors[label], SWEEP[0])
        table = sweep(reference, predicted, sims)
        distance = prototype_distance(vectors[label], spherical_kmeans(vectors[label], args.clusters, seed=0))[1]
        rho = float(spearmanr(base_distance, distance).statistic)
        same = _distance_in_partition(vectors[label], base_labels, args.clusters)
        rho_same = float(spearmanr(base_distance, same).statistic)
        results[label] = {"sweep": table, "spearman": rho, "spearman_same_clusters": rho_same}
        best = max(table, key=lambda r: r[3])
        at_default = next(r for r in table if abs(r[0] - args.threshold) < 1e-9)
        print(
            f"  {label}: best F1 {best[3]:.3f} at t = {best[0]:.3f} (precision {best[1]:.3f}, recall {best[2]:.3f}, {best[4]:,} pairs); "
            f"at t = {args.threshold}: precision {at_default[1]:.3f}, recall {at_default[2]:.3f}; "
            f"Spearman of distance to centroid vs minilm: {rho:.3f} (own k-means), {rho_same:.3f} (minilm's clusters)",
            flush=True,
        )
        summary.append(
            [
                label,
                round(speed[label]),
                best[4],
                round(best[0], 3),
                round(best[3], 3),
                round(at_default[1], 3),
                round(at_default[2], 3),
                round(rho, 3),
                None,
                round(rho_same, 3),
            ]
        )
        run.compare(f"{name}: {label} / minilm encode speed", speed[label] / speed["minilm"])
    run.table(
        f"{name}: {len(texts)} unique texts; minilm pairs at cosine >= {args.threshold} are the reference",
        [
            "model",
            "rows/s",
            "pairs (minilm: at T; others: at best t)",
            "best t",
            "best F1",
            f"precision at {args.threshold}",
            f"recall at {args.threshold}",
            "Spearman vs minilm (own k-means)",
            "Spearman, minilm reseeded (noise floor)",
            "Spearman vs minilm (minilm's clusters)",
        ],
        summary,
        show=False,
    )
    return results


def _distance_in_partition(x: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """Cosine distance of each row to the normalized mean of its cluster under `labels`: the
    same partition as MiniLM's, so only the embedding differs."""
    sums = np.zeros((k, x.shape[1]), dtype=np.float64)
    np.add.at(sums, labels, x)
    centroids = (sums / np.maximum(np.linalg.norm(sums, axis=1, keepdims=True), 1e-12)).astype(np.float32)
    return 1.0 - np.einsum("ij,ij->i", x, centroids[labels])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=DEBIAN, help="Parquet file with a text column")
    parser.add_argument("--text-column", default="text")
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--docstrings", type=Path, help="directory of Python sources for the second corpus")
    parser.add_argument("--docstring-rows", type=int, default=10_000)
    parser.add_argument("--threshold", type=float, default=0.95, help="MiniLM duplicate threshold (cosine)")
    parser.add_argument("--clusters", type=int, default=100)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    add_result_argument(parser, "static_agreement")
    args = parser.parse_args(argv)
    run = start_run(
        "static_agreement",
        argv,
        args.result,
        "How far minilm-static (and hashing, as a floor) agree with MiniLM: duplicate pairs and prototype distances.",
        vars(args),
    )

    backend = "onnx" if importable("onnxruntime") else "torch"
    run.params["minilm_backend"] = backend
    models = {
        "minilm": load_embedder("minilm", threads=args.threads, backend=backend, device="cpu"),
        "minilm-static": load_embedder("minilm-static", threads=args.threads),
        "hashing": load_embedder("hashing"),
    }
    column = pq.read_table(args.corpus, columns=[args.text_column]).column(0).to_pylist()
    rng = np.random.default_rng(0)
    texts = [column[i] or "" for i in np.sort(rng.choice(len(column), min(args.rows, len(column)), replace=False))]
    first = measure(args.corpus.name, unique(texts), models, args, run)
    run.data[args.corpus.name] = first
    if args.docstrings:
        second = measure(
            f"docstrings under {args.docstrings.name}/",
            unique(docstring_texts(args.docstrings, args.docstring_rows)),
            models,
            args,
            run,
        )
        run.data["docstrings"] = second
        transfer = []
        for label, result in first.items():
            t = max(result["sweep"], key=lambda r: r[3])[0]
            there = next(r for r in second[label]["sweep"] if r[0] == t)
            own = max(second[label]["sweep"], key=lambda r: r[3])
            transfer.append(
                [
                    label,
                    round(t, 3),
                    round(there[1], 3),
                    round(there[2], 3),
                    round(there[3], 3),
                    round(own[0], 3),
                    round(own[3], 3),
                ]
            )
        run.table(
            "threshold found on the first corpus, checked on the second",
            ["model", "t", "precision", "recall", "F1", "its own best t", "its own best F1"],
            transfer,
        )
    run.write()


if __name__ == "__main__":
    main()
