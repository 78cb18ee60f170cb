"""Fixtures: small corpora generated in code (no network, no shared data needed)."""

from __future__ import annotations

import logging
import socket
import subprocess
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

WORDS = (
    "data curation pipeline shard parquet text model train budget pool prune dedup near exact "
    "semantic embedding cluster prototype loss window epoch sample token corpus quality score"
).split()


def random_texts(n: int, seed: int = 0, dup_rate: float = 0.2, min_words: int = 3, max_words: int = 12) -> list[str]:
    """Texts with planted exact duplicates (copies of earlier texts)."""
    rng = np.random.default_rng(seed)
    texts: list[str] = []
    for i in range(n):
        if texts and rng.random() < dup_rate:
            texts.append(texts[int(rng.integers(len(texts)))])
        else:
            k = int(rng.integers(min_words, max_words + 1))
            texts.append(" ".join(rng.choice(WORDS, size=k)) + f" {i % 7}")
    return texts


def write_shards(
    directory: Path, texts: Sequence[str], shards: int = 3, ids: Sequence[str] | None = None, extra: dict | None = None
) -> Path:
    """Split texts into `shards` files in order; ids default to 'doc-<i>'."""
    directory.mkdir(parents=True, exist_ok=True)
    ids = list(ids) if ids is not None else [f"doc-{i:06d}" for i in range(len(texts))]
    bounds = np.linspace(0, len(texts), shards + 1).astype(int)
    for s in range(shards):
        lo, hi = bounds[s], bounds[s + 1]
        columns = {"id": ids[lo:hi], "text": list(texts[lo:hi]), "n": list(range(lo, hi))}
        for name, values in (extra or {}).items():
            columns[name] = list(values[lo:hi])
        types = {"id": pa.string(), "text": pa.string(), "n": pa.int64()}
        table = pa.table({k: pa.array(v, types.get(k)) for k, v in columns.items()})
        pq.write_table(table, directory / f"shard-{s:03d}.parquet")
    return directory


@pytest.fixture
def corpus(tmp_path: Path) -> tuple[Path, list[str]]:
    texts = random_texts(500, seed=1)
    return write_shards(tmp_path / "in", texts, shards=4), texts


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    """Run the real CLI in-process: (exit code, stdout, stderr)."""
    from curate.cli import main

    try:
        main(argv)
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def cli(argv: list[str], capsys) -> tuple[int, str]:
    """(exit code, stderr) of the real CLI run in-process."""
    code, _, err = run_cli(argv, capsys)
    return code, err


# ---------------------------------------------------------------------------------------
# Servers on loopback for the object-store tests.


def free_port() -> int:
    """A loopback port nobody listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(argv: list[str], port: int, what: str, env: dict | None = None) -> subprocess.Popen:
    """Start a server process and wait (up to 30 s) until its port accepts connections."""
    process = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"{what} exited: {process.stderr.read().decode(errors='replace')[-500:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return process
        except OSError:
            time.sleep(0.1)
    process.kill()
    pytest.fail(f"{what} did not listen on port {port} within 30 s")


def stop_server(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


BUCKET = "curate-test"


@pytest.fixture(scope="session")
def s3():
    """(endpoint URL, s3fs filesystem) of a moto server on a free loopback port, one per test
    session (moto keeps its buckets per process, so servers in one process share them)."""
    s3fs = pytest.importorskip("s3fs")
    server_module = pytest.importorskip("moto.server")
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no request log on stderr
    port = free_port()
    server = server_module.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    fs = s3fs.S3FileSystem(endpoint_url=endpoint, key="testing", secret="testing", skip_instance_cache=True)
    fs.mkdir(BUCKET)
    yield endpoint, fs
    server.stop()


@pytest.fixture
def aws_env(s3, monkeypatch):
    """Credentials the way users set them: the standard AWS variables, the endpoint included."""
    endpoint, _ = s3
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    return endpoint


def upload(fs, local, prefix: str) -> str:
    fs.put(str(local), f"{BUCKET}/{prefix}", recursive=True)
    fs.invalidate_cache()
    return f"s3://{BUCKET}/{prefix}"
