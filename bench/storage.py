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
                                  every file a task hands on goes through the store (curate.scratch)

Prints wall seconds, rows/s and the ratio to the baseline, and checks that every run kept the
same ids.

    python bench/storage.py                       # 1M rows from bench/corpus_short.py (cached)
    python bench/storage.py --rows 200000 --repeats 2
    python bench/storage.py --rows 200000 --cluster   # + the two Dask runs

A loopback server shares this machine's cores with curate, so the ratio is an upper bound on
what the store costs; read `load`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pyarrow.parquet as pq  # noqa: E402

from bench.corpus_short import cached_corpus  # noqa: E402

# bench/dask.py would shadow the dask package for the cluster harness: drop this script's folder.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from isolated_cluster import isolated_cluster  # noqa: E402

PIPELINE = '[[stage]]\nkind = "exact"\n\n[[stage]]\nkind = "minhash"\nthreshold = 0.8\n'
BUCKET = "curate-bench"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_moto() -> tuple[subprocess.Popen, str]:
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
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
    done = subprocess.run([sys.executable, "-m", "curate.cli", *args, "--quiet"], env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"curate {' '.join(args)} failed: {done.stderr.strip()}")
    return seconds


def kept_ids(directory: Path) -> list:
    parts = sorted((directory / "kept").glob("part-*.parquet"))
    return [i for p in parts for i in pq.read_table(p, columns=["id"]).column("id").to_pylist()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--shards", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=1, help="runs per configuration; the fastest is kept")
    parser.add_argument("--endpoint", default=None, help="a real S3-compatible endpoint instead of a loopback moto server")
    parser.add_argument("--jobs", type=int, default=None, help="worker processes (default: every core)")
    parser.add_argument("--cluster", action="store_true", help="also run s3 -> s3 on 2 Dask workers, with and without a shared disk")
    args = parser.parse_args()

    import s3fs

    corpus = cached_corpus(args.rows, args.shards)
    work = Path(tempfile.mkdtemp(prefix="curate-bench-storage-"))
    server = None
    if args.endpoint:
        endpoint = args.endpoint
    else:
        server, endpoint = start_moto()
        os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1")
    env = {**os.environ, "AWS_ENDPOINT_URL": endpoint, "CURATE_STAGING_DIR": str(work / "staging"), "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
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
        print(f"corpus: {args.rows:,} rows, {size / 1e6:.1f} MB in {args.shards} Parquet shards; pipeline: exact -> minhash(0.8)")
        print(f"endpoint: {endpoint} ({'given' if args.endpoint else 'moto server on loopback'}); upload of the corpus {upload:.1f} s")
        print(f"cpus: {os.cpu_count()}   load before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        best: dict[str, float] = {}
        server_cpu: dict[str, float] = {}
        with ExitStack() as stack:
            executors = {name: jobs for name in configs}
            if args.cluster:
                configs["s3 -> s3, dask, shared disk"] = (f"s3://{prefix}/in", f"s3://{prefix}/out-dask")
                executors["s3 -> s3, dask, shared disk"] = ["--workers", "2"]
                address = stack.enter_context(isolated_cluster(work / "staging", 2, {"AWS_ENDPOINT_URL": endpoint, "CURATE_STAGING_DIR": str(work / "staging")}))
                configs["s3 -> s3, dask, no shared disk"] = (f"s3://{prefix}/in", f"s3://{prefix}/out-isolated")
                executors["s3 -> s3, dask, no shared disk"] = ["--scheduler", address]
            for _ in range(args.repeats):
                for name, (source, out) in configs.items():
                    before = cpu_seconds(server.pid) if server else None
                    seconds = run_cli(["run", str(pipeline), "-i", source, "-o", out, "--overwrite", *executors[name]], env)
                    if seconds < best.get(name, float("inf")):
                        best[name] = seconds
                        if before is not None:
                            server_cpu[name] = (cpu_seconds(server.pid) or before) - before
        base = best["local -> local"]
        print(f"\n{'run':<32}{'wall s':>9}{'rows/s':>12}{'vs local':>10}{'server cpu s':>14}")
        for name, seconds in best.items():
            taken = f"{server_cpu[name]:>14.2f}" if name in server_cpu else f"{'-':>14}"
            print(f"{name:<32}{seconds:>9.2f}{args.rows / seconds:>12,.0f}{seconds / base:>9.2f}x{taken}")
        print("server cpu s: CPU the loopback endpoint used during the run, on the cores curate also uses")
        fs.get(f"{prefix}/out/kept", str(work / "s3-s3" / "kept"), recursive=True)
        reference = kept_ids(work / "local")
        same = kept_ids(work / "s3-local") == reference and kept_ids(work / "s3-s3") == reference
        for name, out in (("s3 -> s3, dask, shared disk", "out-dask"), ("s3 -> s3, dask, no shared disk", "out-isolated")):
            if name in configs:
                fs.get(f"{prefix}/{out}/kept", str(work / out / "kept"), recursive=True)
                same = same and kept_ids(work / out) == reference
        print(f"(vs local: wall time over the local run's; above 1 = slower)\nsame kept ids in every run: {same}   load after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
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
