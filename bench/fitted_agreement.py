"""minilm-fitted vs minilm-static against MiniLM's duplicate pairs, on rows the fit never saw.

    python -m bench.fitted_agreement [--rows 0] [--fit 20000] [--long-join 12] [--long-fit 3000]
    python -m bench.fitted_agreement --rows 6000 --fit 3000 --long-fit 1000     # a quicker run

Short texts: the unique Debian descriptions (`--rows` of them, 0: all). Long texts: every
`--long-join` consecutive descriptions joined by spaces (non-overlapping). MiniLM (ONNX when
installed) embeds every text once; a seeded `--fit` rows (`--long-fit` for long) are the fitting
sample, and the rest are held out. MiniLM's held-out pairs at cosine >= 0.95 are the truth; each
static model's pairs at cosine >= t (t = 0.93 .. 0.96) are scored by precision and recall.
The fit is `curate.embeddings.fitted.fit_table`, the code `--model minilm-fitted` runs. A third
row, `fitted in-sample`, fits the same way on the held-out rows themselves and is scored on
them: no sample of any size can do better with this text model, so it is the model's ceiling
on the corpus, not a result a user gets. Speed:
each static model's `encode` (the stage's classes, one thread) over the held-out rows, best of 3.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from bench._harness import add_result_argument, importable, start_run
from bench.corpora import debian_descriptions
from bench.static_agreement import encode, unique
from curate.embeddings.fitted import META_FILE, TABLE_FILE, FittedEmbedder, fit_table, token_counts
from curate.embeddings.minilm import normalize_rows
from curate.embeddings.models import load_embedder

THRESHOLDS = (0.93, 0.94, 0.95, 0.96)


def pair_keys(x: np.ndarray, threshold: float) -> np.ndarray:
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    lims, _, labels = index.range_search(x, float(threshold))
    rows = np.repeat(np.arange(len(x)), np.diff(lims).astype(np.int64))
    keep = labels > rows
    return rows[keep].astype(np.int64) * len(x) + labels[keep]


def rows_per_second(embedder, texts: pa.Array, repeats: int = 3) -> float:
    """Best of `repeats` passes of `embedder.encode` over `texts` in windows of 4,096 (one thread:
    the embedders are built with threads=1 and the BLAS pools capped), rows per CPU second."""
    from threadpoolctl import threadpool_limits

    best = float("inf")
    with threadpool_limits(1):
        for _ in range(repeats):
            started = time.process_time()
            for lo in range(0, len(texts), 4096):
                embedder.encode(texts.slice(lo, 4096))
            best = min(best, time.process_time() - started)
    return len(texts) / best


def fitted_embedder(table: np.ndarray) -> FittedEmbedder:
    """The stage's FittedEmbedder over `table`, from a temporary model directory."""
    directory = Path(tempfile.mkdtemp(prefix="curate-fitted-bench-"))
    np.save(directory / TABLE_FILE, np.ascontiguousarray(table, dtype=np.float32))
    (directory / META_FILE).write_text(json.dumps({"fingerprint": "bench"}), encoding="utf-8")
    return FittedEmbedder(directory, threads=1)


def score(name: str, texts: list[str], fit: int, minilm, static, run) -> None:
    started = time.perf_counter()
    truth = encode(minilm, texts)
    print(
        f"{name}: {len(texts):,} texts, minilm {len(texts) / (time.perf_counter() - started):,.0f} rows/s", flush=True
    )
    order = np.random.default_rng(0).permutation(len(texts))
    train, held = np.sort(order[:fit]), np.sort(order[fit:])
    array = pa.array(texts)
    started = time.perf_counter()
    table = fit_table(array.take(pa.array(train)), truth[train], static)
    fit_seconds = time.perf_counter() - started
    reference = pair_keys(np.ascontiguousarray(truth[held]), 0.95)
    held_texts = array.take(pa.array(held))
    ceiling = fit_table(held_texts, truth[held], static)
    vocabulary = static.table.shape[0]
    counts = token_counts(held_texts, static.model.tokenizer, static.model.unk_token_id, vocabulary)
    rows = []
    for label, matrix in (("minilm-static", None), ("minilm-fitted", table), ("fitted in-sample", ceiling)):
        x = static.encode(held_texts) if matrix is None else normalize_rows(np.asarray(counts @ matrix, np.float32))
        for t in THRESHOLDS:
            predicted = pair_keys(x, t)
            hit = int(np.isin(predicted, reference).sum())
            rows.append(
                [
                    label,
                    t,
                    round(hit / max(1, len(predicted)), 3),
                    round(hit / max(1, len(reference)), 3),
                    len(predicted),
                ]
            )
    run.table(
        f"{name}: fit on {len(train):,}, scored on {len(held):,} held-out rows; {len(reference):,} minilm pairs at 0.95 "
        f"(fit {fit_seconds:.0f} s)",
        ["model", "t", "precision", "recall", "pairs"],
        rows,
    )
    at = {r[0]: r for r in rows if r[1] == 0.95}
    run.compare(f"{name}: minilm-fitted precision at 0.95", at["minilm-fitted"][2], "", ">= 0.8")
    run.compare(f"{name}: minilm-fitted recall at 0.95", at["minilm-fitted"][3], "", ">= 0.8")
    one_thread_static = type(static)(threads=1, model=static.model)
    fitted = fitted_embedder(table)
    for label, embedder in (("minilm-static", one_thread_static), ("minilm-fitted", fitted)):
        speed = rows_per_second(embedder, held_texts)
        run.compare(
            f"{name}: {label} encode, one thread, held-out rows in windows of 4,096",
            speed,
            " rows per CPU s",
            ">= 20000" if label == "minilm-fitted" else "",
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=0)
    parser.add_argument("--fit", type=int, default=20_000)
    parser.add_argument("--long-join", type=int, default=12)
    parser.add_argument("--long-fit", type=int, default=3000)
    parser.add_argument("--corpus", default=None)
    add_result_argument(parser, "fitted_agreement")
    args = parser.parse_args(argv)
    run = start_run("fitted_agreement", argv, args.result, __doc__.splitlines()[0], vars(args))
    column = [
        t or "" for t in pq.read_table(debian_descriptions(args.corpus).path, columns=["text"]).column(0).to_pylist()
    ]
    backend = "onnx" if importable("onnxruntime") else "torch"
    minilm = load_embedder("minilm", threads=2, backend=backend, device="cpu")
    static = load_embedder("minilm-static")
    short = unique(column)
    short = short[: args.rows] if args.rows else short
    score("short (Debian descriptions)", short, min(args.fit, len(short) // 2), minilm, static, run)
    j = args.long_join
    long_texts = [" ".join(column[i : i + j]) for i in range(0, len(column) - j + 1, j)]
    long_texts = long_texts[: args.rows] if args.rows else long_texts
    score(f"long ({j} descriptions joined)", long_texts, min(args.long_fit, len(long_texts) // 2), minilm, static, run)
    run.write()


if __name__ == "__main__":
    main()
