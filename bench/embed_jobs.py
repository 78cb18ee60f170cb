"""`curate embed` speed-up from --jobs 1 to --jobs 2 on real short texts, per model, same run.

    python -m bench.embed_jobs [--rows 4000] [--fast-rows 0] [--repeats 2] [--corpus PATH]

MiniLM (ONNX backend when onnxruntime is installed, else torch) on `--rows` seeded rows of the
Debian descriptions; `minilm-static` and `hashing` on `--fast-rows` rows (0: all of them). Each
model runs a whole embed pipeline with --jobs 1 and --jobs 2, alternating, best of `--repeats`;
the ratio is jobs 1 time / jobs 2 time. On C cores --jobs 1 already runs C threads per task
(ONNX Runtime and torch use them), so the speed-up over one core is measured too: --jobs 1
with the process pinned to a single core (its affinity mask, which curate reads as its core
count), target 1.6x on two free cores.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from bench._harness import add_result_argument, importable, pinned_to_one_core, start_run
from bench.corpora import debian_descriptions
from curate.pipeline import RunOptions, parse_pipeline, run_pipeline


def one_run(source: Path, out: Path, stage: dict, jobs: int, one_core: bool = False) -> float:
    shutil.rmtree(out, ignore_errors=True)
    with pinned_to_one_core(one_core):
        started = time.perf_counter()
        run_pipeline(parse_pipeline({"stage": [stage]}, "bench"), source, out, RunOptions(jobs=jobs))
        return time.perf_counter() - started


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=4000)
    parser.add_argument("--fast-rows", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--corpus", type=Path, default=None)
    add_result_argument(parser, "embed_jobs")
    args = parser.parse_args(argv)
    run = start_run("embed_jobs", argv, args.result, __doc__.splitlines()[0], vars(args))
    table = pq.read_table(debian_descriptions(args.corpus).path, columns=["id", "text"])
    backend = "onnx" if importable("onnxruntime") else "torch"
    cases = [
        ({"kind": "embed", "model": "minilm", "backend": backend, "device": "cpu"}, args.rows),
        ({"kind": "embed", "model": "minilm-static"}, args.fast_rows),
        ({"kind": "embed", "model": "hashing"}, args.fast_rows),
    ]
    rows_out = []
    with tempfile.TemporaryDirectory(prefix="curate-embed-jobs-") as tmp:
        for stage, rows in cases:
            n = rows or table.num_rows
            picked = np.sort(np.random.default_rng(0).choice(table.num_rows, min(n, table.num_rows), replace=False))
            source = Path(tmp) / f"in-{stage['model']}"
            source.mkdir()
            pq.write_table(table.take(picked), source / "part.parquet")
            one_run(source, Path(tmp) / "warm", stage, 1)  # model load, export and distillation caches
            best = {"one core": float("inf"), 1: float("inf"), 2: float("inf")}
            for _ in range(args.repeats):
                for jobs in best:
                    seconds = one_run(
                        source, Path(tmp) / "out", stage, 1 if jobs == "one core" else int(jobs), jobs == "one core"
                    )
                    best[jobs] = min(best[jobs], seconds)
            label = stage["model"] + (f" ({backend})" if stage["model"] == "minilm" else "")
            rows_out.append(
                [label, len(picked)]
                + [round(best[k], 2) for k in ("one core", 1, 2)]
                + [round(best["one core"] / best[2], 2), round(best[1] / best[2], 2)]
            )
            run.compare(f"{label}: jobs 2 / one core speed", best["one core"] / best[2], target=">= 1.6x")
            run.compare(f"{label}: jobs 2 / jobs 1 speed (jobs 1 runs a thread per core)", best[1] / best[2])
    run.table(
        "curate embed, whole pipeline, best of repeats",
        ["model", "rows", "one core s", "jobs 1 s", "jobs 2 s", "jobs 2 / one core", "jobs 2 / jobs 1"],
        rows_out,
    )
    run.write()


if __name__ == "__main__":
    main()
