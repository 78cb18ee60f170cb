"""GPU check, prepared to run when a CUDA device is at hand: MiniLM fp16 through `curate embed`
vs bare sentence-transformers fp16 on the same texts, and k-means on GPU FAISS vs CPU FAISS.

    python -m bench.gpu_embed [--rows 200000] [--repeats 2] [--kmeans-rows 1000000] [--corpus PATH]

Texts: `--rows` rows of the Debian descriptions (bench/corpora.py), repeated when the corpus is
smaller (a GPU needs many rows to reach its rate). Bare = `SentenceTransformer.encode(texts,
batch_size=512, normalize_embeddings=True)` with fp16 weights on cuda:0 after a warm-up batch.
Ours = a whole `curate embed --model minilm --device cuda` run (input check, token-budget
batches, Parquet store, manifest), --jobs 1. Target: ours at least 80% of bare's rows/s. Both
sides are timed in the same run, alternating, best of `--repeats`.

k-means: `faiss.Kmeans(d=384, k=sqrt(n), spherical=True, niter=20, gpu=True)` vs the same on the
CPU, on `--kmeans-rows` random unit vectors, where faiss has GPU support (faiss-gpu); skipped
with a message otherwise.

Without a CUDA device (or without a CUDA build of torch) it prints why and exits 0 having
measured nothing, so it can sit in a benchmark list on CPU-only machines.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from bench._harness import add_result_argument, start_run
from bench.corpora import debian_descriptions


def cuda_device() -> str | None:
    """Why there is no usable CUDA device, or None when there is one."""
    try:
        import torch
    except ImportError:
        return "torch is not installed"
    if not torch.cuda.is_available():
        return f"torch {torch.__version__} sees no CUDA device"
    return None


def texts_for(corpus: Path, rows: int) -> list[str]:
    column = [t or "" for t in pq.read_table(corpus, columns=["text"]).column(0).to_pylist()]
    return (column * (rows // len(column) + 1))[:rows]


def bare_fp16(texts: list[str]) -> float:
    import torch

    from curate.embeddings.minilm import load_sentence_transformer

    model = load_sentence_transformer("cuda").half().eval()
    model.encode(texts[:1024], batch_size=512, normalize_embeddings=True)  # warm-up: kernels, allocator
    torch.cuda.synchronize()
    started = time.perf_counter()
    model.encode(texts, batch_size=512, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)
    torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    del model
    torch.cuda.empty_cache()
    return len(texts) / seconds


def ours_fp16(texts: list[str], tmp: Path) -> tuple[float, dict]:
    from curate.embeddings.models import clear_loaded
    from curate.pipeline import RunOptions, parse_pipeline, run_pipeline

    source = tmp / "in"
    source.mkdir(exist_ok=True)
    pq.write_table(pa.table({"id": np.arange(len(texts)), "text": texts}), source / "texts.parquet")
    spec = parse_pipeline({"stage": [{"kind": "embed", "model": "minilm", "device": "cuda"}]}, "bench")
    out = tmp / "out"
    shutil.rmtree(out, ignore_errors=True)
    clear_loaded()
    started = time.perf_counter()
    result = run_pipeline(spec, source, out, RunOptions(jobs=1))
    seconds = time.perf_counter() - started
    return len(texts) / seconds, result.manifest["stages"][1]["info"]


def kmeans_gpu_vs_cpu(rows: int) -> tuple[float, float] | str:
    import faiss

    if not hasattr(faiss, "get_num_gpus") or faiss.get_num_gpus() < 1:
        return "faiss has no GPU support here (install faiss-gpu)"
    rng = np.random.default_rng(0)
    x = rng.standard_normal((rows, 384), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    k = int(np.sqrt(rows))
    times = []
    for gpu in (True, False):
        km = faiss.Kmeans(384, k, niter=20, spherical=True, seed=0, gpu=gpu, max_points_per_centroid=64)
        started = time.perf_counter()
        km.train(x)
        times.append(time.perf_counter() - started)
    return times[0], times[1]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--kmeans-rows", type=int, default=1_000_000)
    parser.add_argument("--corpus", type=Path, default=None)
    add_result_argument(parser, "gpu_embed")
    args = parser.parse_args(argv)
    why = cuda_device()
    if why is not None:
        print(f"no GPU to measure: {why}. Nothing measured; run this on a machine with a CUDA device.")
        sys.exit(0)
    run = start_run("gpu_embed", argv, args.result, __doc__.splitlines()[0], vars(args))
    import torch

    run.params["gpu"] = torch.cuda.get_device_name(0)
    texts = texts_for(debian_descriptions(args.corpus).path, args.rows)
    bare, ours, info = 0.0, 0.0, {}
    with tempfile.TemporaryDirectory(prefix="curate-gpu-embed-") as tmp:
        for _ in range(args.repeats):
            bare = max(bare, bare_fp16(texts))
            rate, info = ours_fp16(texts, Path(tmp))
            ours = max(ours, rate)
            print(f"  bare {bare:,.0f} rows/s, curate embed {ours:,.0f} rows/s", flush=True)
    run.table(
        f"MiniLM fp16 on {run.params['gpu']}, {len(texts):,} texts, best of {args.repeats}",
        ["side", "rows/s"],
        [["bare sentence-transformers fp16, batch 512", round(bare)], ["curate embed --device cuda", round(ours)]],
    )
    run.data["embed_info"] = info
    run.compare("curate embed / bare fp16", ours / bare, target=">= 0.8x")
    kmeans = kmeans_gpu_vs_cpu(args.kmeans_rows)
    if isinstance(kmeans, str):
        run.note(f"k-means on GPU FAISS skipped: {kmeans}")
    else:
        run.table(
            f"spherical k-means, {args.kmeans_rows:,} x 384, k = sqrt(n), 20 iterations",
            ["side", "seconds"],
            [["GPU FAISS", round(kmeans[0], 2)], ["CPU FAISS", round(kmeans[1], 2)]],
        )
        run.compare("k-means CPU / GPU time", kmeans[1] / kmeans[0])
    run.write()


if __name__ == "__main__":
    main()
