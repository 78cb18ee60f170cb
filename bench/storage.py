"""Object store vs local disk: exact + minhash over about a million real short texts, read from a
loopback S3 endpoint (and written back to it) against the same run on local disk, same run.

The endpoint is moto's S3 server started in a process of its own on a free loopback port (the
client is s3fs, as for any S3 endpoint); `--endpoint URL` measures a real one instead (the bucket
must exist, credentials from the AWS_* variables). Each configuration runs the CLI in a fresh
process on every core:

    local -> local   the baseline
    s3    -> local   input read through fsspec (row groups fetched with read-ahead)
    s3    -> s3      and the output committed to the store (staged locally; README, "Object stores (output)")

With `--cluster`, two more, each on a 2-worker Dask cluster on this machine:

    s3 -> s3, dask, shared disk   the workers see the driver's staging directory
    s3 -> s3, dask, no shared disk  each worker has its own empty disk at that path (a private
                                  tmpfs in a mount namespace: needs root or user namespaces), so
                                  every file a task hands on goes through the store (curate.io.mirror)

Prints wall seconds, rows/s and the ratio to the baseline, and checks that every run kept the
same ids.

    python -m bench.storage                       # 1M rows from bench.corpus_short (cached)
    python -m bench.storage --rows 200000 --repeats 2
    python -m bench.storage --rows 200000 --cluster   # + the two Dask runs
    python -m bench.storage --rows 20000 --shards 4   # a quick run

A loopback server shares this machine's cores with curate, so the ratio is an upper bound on
what the store costs.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

from bench._harness import REPO_ROOT, add_result_argument, cli_env, curate_cli, kept_ids, start_run
from bench.corpus_short import cached_corpus

PIPELINE = '[[stage]]\nkind = "exact"\n\n[[stage]]\nkind = "minhash"\nthreshold = 0.8\n'
BUCKET = "curate-bench"


def isolated_cluster(hidden: Path, workers: int, env: dict):
    """The test suite's Dask cluster whose workers each see an empty disk at `hidden`
    (tests/isolated_cluster.py, loaded from the checkout: `tests` is not a package)."""
    spec = importlib.util.spec_from_file_location("isolated_cluster", REPO_ROOT / "tests" / "isolated_cluster.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.isolated_cluster(hidden, workers, env)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_moto() -> tuple[subprocess.Popen, str]:
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return server, endpoint
        except OSError:
            time.sleep(0.2)
    server.kill()
    raise SystemExit("moto server did not start (pip install 'moto[server]')")


def cpu_seconds(pid: int) -> float | None:
    """CPU time a process has used (Linux /proc), to show what the loopback server took."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_cli(args: list[str], env: dict) -> float:
    started = time.perf_counter()
    done = subprocess.run(curate_cli(*args, "--quiet"), env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"curate {' '.join(args)} failed: {done.stderr.strip()}")
    return seconds


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--shards", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=1, help="runs per configuration; the fastest is kept")
    parser.add_argument(
        "--endpoint", default=None, help="a real S3-compatible endpoint instead of a loopback moto server"
    )
    parser.add_argument("--jobs", type=int, default=None, help="worker processes (default: every core)")
    parser.add_argument(
        "--cluster", action="store_true", help="also run s3 -> s3 on 2 Dask workers, with and without a shared disk"
    )
    add_result_argument(parser, "storage")
    args = parser.parse_args(argv)
    run = start_run(
        "storage",
        argv,
        args.result,
        "Object store vs local disk: exact + minhash read from (and written to) an S3 endpoint against the same run on local disk.",
        vars(args),
    )

    import s3fs

    corpus = cached_corpus(args.rows, args.shards)
    work = Path(tempfile.mkdtemp(prefix="curate-bench-storage-"))
    server = None
    if args.endpoint:
        endpoint = args.endpoint
    else:
        server, endpoint = start_moto()
        os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1")
    env = cli_env({"AWS_ENDPOINT_URL": endpoint, "CURATE_STAGING_DIR": str(work / "staging")})
    try:
        fs = s3fs.S3FileSystem(endpoint_url=endpoint)
        if not args.endpoint:
            fs.mkdir(BUCKET)
        prefix = f"{BUCKET}/{work.name}"
        started = time.perf_counter()
        fs.put(str(corpus), f"{prefix}/in", recursive=True)
        upload = time.perf_counter() - started
        size = sum(p.stat().st_size for p in corpus.glob("*.parquet"))
        pipeline = work / "pipeline.toml"
        pipeline.write_text(PIPELINE)
        jobs = ["--jobs", str(args.jobs)] if args.jobs else []
        configs = {
            "local -> local": (str(corpus), str(work / "local")),
            "s3 -> local": (f"s3://{prefix}/in", str(work / "s3-local")),
            "s3 -> s3": (f"s3://{prefix}/in", f"s3://{prefix}/out"),
        }
        print(
            f"corpus: {args.rows:,} rows, {size / 1e6:.1f} MB in {args.shards} Parquet shards; pipeline: exact -> minhash(0.8)"
        )
        print(
            f"endpoint: {endpoint} ({'given' if args.endpoint else 'moto server on loopback'}); upload of the corpus {upload:.1f} s"
        )
        run.params.update(
            endpoint="given" if args.endpoint else "moto server on loopback",
            corpus_megabytes=round(size / 1e6, 1),
            upload_seconds=round(upload, 1),
        )
        best: dict[str, float] = {}
        server_cpu: dict[str, float] = {}
        with ExitStack() as stack:
            executors = {name: jobs for name in configs}
            if args.cluster:
                configs["s3 -> s3, dask, shared disk"] = (f"s3://{prefix}/in", f"s3://{prefix}/out-dask")
                executors["s3 -> s3, dask, shared disk"] = ["--workers", "2"]
                address = stack.enter_context(
                    isolated_cluster(
                        work / "staging",
                        2,
                        {"AWS_ENDPOINT_URL": endpoint, "CURATE_STAGING_DIR": str(work / "staging")},
                    )
                )
                configs["s3 -> s3, dask, no shared disk"] = (f"s3://{prefix}/in", f"s3://{prefix}/out-isolated")
                executors["s3 -> s3, dask, no shared disk"] = ["--scheduler", address]
            for _ in range(args.repeats):
                for name, (source, out) in configs.items():
                    before = cpu_seconds(server.pid) if server else None
                    seconds = run_cli(
                        ["run", str(pipeline), "-i", source, "-o", out, "--overwrite", *executors[name]], env
                    )
                    if seconds < best.get(name, float("inf")):
                        best[name] = seconds
                        if before is not None:
                            server_cpu[name] = (cpu_seconds(server.pid) or before) - before
        base = best["local -> local"]
        run.table(
            f"{args.rows:,} rows, best of {args.repeats}; vs local: wall time over the local run's (above 1 = slower); "
            "server CPU s: CPU the loopback endpoint used during the run, on the cores curate also uses",
            ["run", "wall s", "rows/s", "vs local", "server CPU s"],
            [
                [
                    name,
                    round(seconds, 2),
                    round(args.rows / seconds),
                    seconds / base,
                    round(server_cpu[name], 2) if name in server_cpu else None,
                ]
                for name, seconds in best.items()
            ],
        )
        for name, seconds in best.items():
            if name != "local -> local":
                run.compare(f"{name} / local -> local, wall", seconds / base)
        fs.get(f"{prefix}/out/kept", str(work / "s3-s3" / "kept"), recursive=True)
        reference = kept_ids(work / "local")
        same = kept_ids(work / "s3-local") == reference and kept_ids(work / "s3-s3") == reference
        for name, out in (
            ("s3 -> s3, dask, shared disk", "out-dask"),
            ("s3 -> s3, dask, no shared disk", "out-isolated"),
        ):
            if name in configs:
                fs.get(f"{prefix}/{out}/kept", str(work / out / "kept"), recursive=True)
                same = same and kept_ids(work / out) == reference
        run.check("same kept ids in every run", same)
        run.write()
        fs.rm(prefix, recursive=True)
    finally:
        if server is not None:
            server.terminate()
            server.wait()
        shutil.rmtree(work, ignore_errors=True)
    if not same:
        sys.exit(1)


if __name__ == "__main__":
    main()
