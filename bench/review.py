"""`curate review` wall time and page size, on the bundled demo and on about 1M real rows (exact + minhash).

    python -m bench.review                       # demo, then 1M rows (bench.corpus_short, cached)
    python -m bench.review --rows 100000         # a quicker large run
    python -m bench.review --skip-demo --rows 0  # nothing large: demo only without --skip-demo

The large input is bench.corpus_short's corpus: real short texts (Debian package descriptions,
man and doc paragraphs, Python source lines), topped up with seeded edited copies (near
duplicates) when the sources fall short. The pipeline (exact, then minhash at 0.8) runs first and
is not timed; then `curate review OUT` runs as a user runs it (a fresh interpreter, the CLI) and
its wall time and the page's bytes are reported with the input size. Targets (issue #23): under
30 s and under 20 MB.
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
import time
from pathlib import Path

from bench._harness import add_result_argument, cli_env, curate_cli, start_run

WALL_TARGET_S = 30.0
SIZE_TARGET = 20_000_000
PIPELINE = '[[stage]]\nkind = "exact"\n\n[[stage]]\nkind = "minhash"\nthreshold = 0.8\n'


def _run(*args: str) -> float:
    started = time.perf_counter()
    subprocess.run(curate_cli(*args), check=True, env=cli_env(), stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def _input_bytes(path: Path) -> int:
    files = [path] if path.is_file() else sorted(path.glob("*.parquet"))
    return sum(f.stat().st_size for f in files)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows of the large corpus (0: skip it)")
    parser.add_argument("--shards", type=int, default=16)
    parser.add_argument("--skip-demo", action="store_true")
    parser.add_argument("--per-reason", type=int, default=10)
    add_result_argument(parser, "review")
    args = parser.parse_args(argv)
    run = start_run("review", argv, args.result, __doc__.splitlines()[0], vars(args))
    rows_out = []
    with tempfile.TemporaryDirectory() as tmp:
        cases = []
        if not args.skip_demo:
            demo = Path(tmp) / "demo"
            print("running the demo pipeline (not timed) ...", flush=True)
            _run("demo", "-o", str(demo), "-q")
            from curate.commands.demo import demo_corpus

            cases.append(("demo (quickstart pipeline)", demo, demo_corpus()))
        if args.rows:
            from bench.corpus_short import cached_corpus

            corpus = cached_corpus(args.rows, args.shards)
            pipeline = Path(tmp) / "pipeline.toml"
            pipeline.write_text(PIPELINE)
            out = Path(tmp) / "large"
            print(f"running exact + minhash over {args.rows:,} rows (not timed) ...", flush=True)
            seconds = _run("run", str(pipeline), "-i", str(corpus), "-o", str(out), "-q")
            run.note(
                f"exact + minhash pipeline over {args.rows:,} rows took {seconds:.1f} s (not the measured figure)"
            )
            cases.append((f"{args.rows:,} real short texts, exact + minhash", out, corpus))
        for label, out, source in cases:
            import json

            manifest = json.loads((out / "manifest.json").read_text())
            page = out / "review.html"
            wall = _run("review", str(out), "--per-reason", str(args.per_reason))
            size = page.stat().st_size
            rows_out.append(
                [
                    label,
                    manifest["input"]["rows"],
                    round(_input_bytes(Path(source)) / 1e6, 1),
                    manifest["totals"]["removed_rows"],
                    round(wall, 2),
                    round(size / 1e6, 3),
                ]
            )
            run.check(f"{label}: review under {WALL_TARGET_S:.0f} s", wall < WALL_TARGET_S)
            run.check(f"{label}: page under {SIZE_TARGET / 1e6:.0f} MB", size < SIZE_TARGET)
    run.table(
        "curate review (CLI, fresh interpreter)",
        ["output", "input rows", "input MB", "ledger rows", "review s", "page MB"],
        rows_out,
    )
    run.write()


if __name__ == "__main__":
    main()
