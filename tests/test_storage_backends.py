"""Azure Blob (az://, abfs://) and Google Cloud Storage (gs://) against local emulators:
Azurite's blob service with adlfs as the client, gcp-storage-emulator with gcsfs.

A run from local files to a URL writes the bytes a local run writes (the manifest aside),
with a commit record listing exactly the objects there; a run reading the URL keeps the same
ids with the same removed ledger; a missing container or bucket and a wrong account key are one
line naming the URL, exit 2. Each emulator starts once per session on a free loopback port;
without its binary or the backend package the tests skip, saying which is missing."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import xxhash
from conftest import cli, free_port, start_server, stop_server
from test_formats import DEDUP, make_rows, write_as

from curate.io.parts import read_parts
from curate.output.store import FILES_KEY

ROOT = Path(__file__).resolve().parent.parent
# Azurite's published development account (the same for every install; not a secret).
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


def connection_string(endpoint: str, key: str = AZURITE_KEY) -> str:
    return f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={key};BlobEndpoint={endpoint}/{AZURITE_ACCOUNT};"


@pytest.fixture(scope="session")
def azurite():
    """(connection string, adlfs filesystem) of an in-memory Azurite blob service."""
    adlfs = pytest.importorskip("adlfs")
    binary = shutil.which("azurite-blob")
    if binary is None:
        pytest.skip("azurite-blob is not on PATH (npm install azurite; .ci/run does)")
    port = free_port()
    argv = [
        binary,
        "--blobHost",
        "127.0.0.1",
        "--blobPort",
        str(port),
        "--inMemoryPersistence",
        "--disableTelemetry",
        "--silent",
        "--skipApiVersionCheck",
    ]
    process = start_server(argv, port, "azurite-blob")
    connection = connection_string(f"http://127.0.0.1:{port}")
    yield connection, adlfs.AzureBlobFileSystem(connection_string=connection, skip_instance_cache=True)
    stop_server(process)


@pytest.fixture(scope="session")
def gcs_emulator():
    """(endpoint URL, gcsfs filesystem) of an in-memory gcp-storage-emulator."""
    pytest.importorskip("gcsfs")
    pytest.importorskip("gcp_storage_emulator")
    from gcsfs.core import GCSFileSystem

    port = free_port()
    argv = [sys.executable, "-m", "gcp_storage_emulator", "start", "--host=127.0.0.1", f"--port={port}", "--in-memory"]
    process = start_server(argv, port, "gcp-storage-emulator")
    endpoint = f"http://127.0.0.1:{port}"
    yield endpoint, GCSFileSystem(endpoint_url=endpoint, token="anon", skip_instance_cache=True)
    stop_server(process)


@pytest.fixture
def container(azurite):
    """A fresh container: (its name, adlfs filesystem, connection string)."""
    connection, fs = azurite
    return _fresh(fs, "c"), fs, connection


@pytest.fixture
def bucket(gcs_emulator):
    """A fresh bucket: (its name, gcsfs filesystem, endpoint)."""
    endpoint, fs = gcs_emulator
    return _fresh(fs, "b"), fs, endpoint


def _fresh(fs, letter: str) -> str:
    """A new top-level container or bucket of a unique name."""
    name = f"{letter}{uuid.uuid4().hex[:16]}"
    fs.mkdir(name)
    return name


@pytest.fixture
def local_run(tmp_path, capsys, monkeypatch):
    """(input dir, pipeline, local output) of the reference run on local disk."""
    monkeypatch.setenv("CURATE_STAGING_DIR", str(tmp_path / "staging"))
    source = write_as(tmp_path, ".parquet", make_rows(300, seed=7), parts=3)
    pipeline = tmp_path / "p.toml"
    pipeline.write_text(DEDUP)
    code, err = cli(["run", str(pipeline), "-i", str(source), "-o", str(tmp_path / "local"), "--quiet"], capsys)
    assert code == 0, err
    return source, pipeline, tmp_path / "local"


def ledger(out: Path) -> tuple[list[str], dict[str, bytes]]:
    """Kept ids in order, and every removed/ file's bytes."""
    kept = read_parts(out / "kept").column("id").to_pylist()
    return kept, {
        p.relative_to(out).as_posix(): p.read_bytes() for p in sorted((out / "removed").rglob("*")) if p.is_file()
    }


def assert_store_equals_local(fs, root: str, local: Path) -> None:
    """The objects under `root` are the local output's files with the same bytes (the manifest
    aside: it holds times), and the manifest's record lists exactly the other objects."""
    fs.invalidate_cache()
    remote = {k[len(root) + 1 :]: xxhash.xxh3_128_hexdigest(fs.cat_file(k)) for k in fs.find(root)}
    here = {
        p.relative_to(local).as_posix(): xxhash.xxh3_128_hexdigest(p.read_bytes())
        for p in local.rglob("*")
        if p.is_file() and p.name != ".curate-lock"  # a local output's writer lock stays
    }
    assert set(remote) == set(here)
    assert [n for n in here if n != "manifest.json" and remote[n] != here[n]] == []
    manifest = json.loads(fs.cat_file(f"{root}/manifest.json"))
    assert manifest["finalized"] and set(manifest[FILES_KEY]) == set(remote) - {"manifest.json"}


def assert_one_line_error(code: int, err: str, url: str) -> None:
    assert code == 2 and url.rstrip("/") in err and len(err.strip().splitlines()) == 1, err


# ---------------------------------------------------------------------------------------
# Azure Blob Storage (Azurite)


def test_az_output_equals_a_local_run_and_overwrite_clears_it(tmp_path, capsys, local_run, container):
    source, pipeline, local = local_run
    name, fs, connection = container
    option = ["--storage-option", f"connection_string={connection}"]
    url = f"az://{name}/out/"
    code, err = cli(["run", str(pipeline), "-i", str(source), "-o", url, "--quiet", *option], capsys)
    assert code == 0, err
    assert_store_equals_local(fs, f"{name}/out", local)
    fs.pipe_file(f"{name}/out/kept/part-99999.parquet", b"a leftover of a dead attempt")
    code, err = cli(["run", str(pipeline), "-i", str(source), "-o", url, "--quiet", "--overwrite", *option], capsys)
    assert code == 0, err
    assert_store_equals_local(fs, f"{name}/out", local)
    code, err = cli(["verify", url, *option], capsys)
    assert code == 0, err


# curate.cli.main in a child that SIGKILLs itself at the N-th step named in KILL_AT
# ("write the manifest:N": after that commit's uploads, before its manifest).
KILLED_CHILD = r"""
import os, signal, sys
from curate.output import store
event, _, nth = os.environ["KILL_AT"].rpartition(":")
seen = [0]
real_call = store.OutputStore.call
def call(self, what, fn, *args, **kwargs):
    seen[0] += what == event
    if what == event and seen[0] == int(nth):
        os.kill(os.getpid(), signal.SIGKILL)
    return real_call(self, what, fn, *args, **kwargs)
store.OutputStore.call = call
from curate.cli import main
main(sys.argv[1:])
"""


def test_az_killed_run_resumes_from_the_store_elsewhere(tmp_path, capsys, local_run, container):
    """Killed between a commit's uploads and its manifest, then resumed without the staging
    directory (another machine): the resume pulls the last commit from Azure, and the next
    commit deletes the dead attempt's unlisted objects."""
    source, pipeline, local = local_run
    name, fs, connection = container
    url = f"az://{name}/out/"
    argv = [
        "run",
        str(pipeline),
        "-i",
        str(source),
        "-o",
        url,
        "--quiet",
        "--storage-option",
        f"connection_string={connection}",
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "KILL_AT": "write the manifest:3"}
    done = subprocess.run([sys.executable, "-c", KILLED_CHILD, *argv], env=env, capture_output=True, timeout=120)
    assert done.returncode == -9, done.stderr
    fs.invalidate_cache()
    manifest = json.loads(fs.cat_file(f"{name}/out/manifest.json"))
    unlisted = set(fs.find(f"{name}/out")) - {f"{name}/out/{n}" for n in [*manifest[FILES_KEY], "manifest.json"]}
    assert not manifest["finalized"] and unlisted  # the killed commit's uploads
    shutil.rmtree(tmp_path / "staging")
    code, err = cli([*argv, "--resume"], capsys)
    assert code == 0, err
    assert_store_equals_local(fs, f"{name}/out", local)


@pytest.mark.parametrize("scheme", ["az", "abfs"])
def test_az_input_keeps_the_local_ids_and_ledger(tmp_path, capsys, local_run, container, monkeypatch, scheme):
    source, pipeline, local = local_run
    name, fs, connection = container
    fs.put(str(source), f"{name}/in", recursive=True)
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", connection)  # credentials the usual Azure way
    code, err = cli(
        ["run", str(pipeline), "-i", f"{scheme}://{name}/in/", "-o", str(tmp_path / "remote"), "--quiet"], capsys
    )
    assert code == 0, err
    assert ledger(tmp_path / "remote") == ledger(local)


def test_az_missing_container_names_the_url(tmp_path, capsys, local_run, azurite):
    source, pipeline, _ = local_run
    option = ["--storage-option", f"connection_string={azurite[0]}"]
    url = f"az://no-such-container-{uuid.uuid4().hex[:8]}/in/"
    code, err = cli(["run", str(pipeline), "-i", url, "-o", str(tmp_path / "x"), "--quiet", *option], capsys)
    assert_one_line_error(code, err, url)
    assert "does not exist" in err and "check the container name" in err
    url = f"az://no-such-container-{uuid.uuid4().hex[:8]}/out/"
    code, err = cli(["run", str(pipeline), "-i", str(source), "-o", url, "--quiet", *option], capsys)
    assert_one_line_error(code, err, url)
    assert "create the container first" in err
    assert not (tmp_path / "x").exists()


def test_az_wrong_key_names_the_url(tmp_path, capsys, local_run, container):
    source, pipeline, _ = local_run
    name, fs, connection = container
    fs.put(str(source), f"{name}/in", recursive=True)
    wrong = ["--storage-option", f"connection_string={connection.replace(AZURITE_KEY, 'A' * 86 + '==')}"]
    url = f"az://{name}/in/"
    code, err = cli(["run", str(pipeline), "-i", url, "-o", str(tmp_path / "x"), "--quiet", *wrong], capsys)
    assert_one_line_error(code, err, url)
    assert "authenticate" in err
    url = f"az://{name}/out/"
    code, err = cli(["run", str(pipeline), "-i", str(source), "-o", url, "--quiet", *wrong], capsys)
    assert_one_line_error(code, err, url)
    assert "authenticate" in err and not fs.exists(f"{name}/out")


# ---------------------------------------------------------------------------------------
# Google Cloud Storage (gcp-storage-emulator)


@pytest.mark.slow  # about 10 s; the default run keeps the GCS emulator test below
def test_gs_output_and_input_equal_a_local_run(tmp_path, capsys, local_run, bucket):
    source, pipeline, local = local_run
    name, fs, endpoint = bucket
    options = ["--storage-option", f"endpoint_url={endpoint}", "--storage-option", "token=anon"]
    started = time.monotonic()
    code, err = cli(["run", str(pipeline), "-i", str(source), "-o", f"gs://{name}/out/", "--quiet", *options], capsys)
    assert code == 0, err
    # gcsfs's default class spends 60 s per bucket call on a gRPC probe an emulator cannot answer
    assert time.monotonic() - started < 30
    assert_store_equals_local(fs, f"{name}/out", local)
    fs.put(str(source), f"{name}/in", recursive=True)
    # A process of its own: gcsfs's default read cache left prefetch tasks that asyncio
    # reported on stderr only when the interpreter exited.
    argv = [
        sys.executable,
        "-m",
        "curate.cli",
        "run",
        str(pipeline),
        "-i",
        f"gs://{name}/in/",
        "-o",
        str(tmp_path / "remote"),
        "--quiet",
        *options,
    ]
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)}
    )
    assert done.returncode == 0 and done.stderr == "", done.stderr
    assert ledger(tmp_path / "remote") == ledger(local)


def test_gs_emulator_from_the_environment(tmp_path, capsys, local_run, bucket, monkeypatch):
    source, pipeline, local = local_run
    name, fs, endpoint = bucket
    fs.put(str(source), f"{name}/in", recursive=True)
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", endpoint)
    code, err = cli(
        [
            "run",
            str(pipeline),
            "-i",
            f"gcs://{name}/in",
            "-o",
            str(tmp_path / "remote"),
            "--quiet",
            "--storage-option",
            "token=anon",
        ],
        capsys,
    )
    assert code == 0, err
    assert ledger(tmp_path / "remote") == ledger(local)


def test_gs_missing_bucket_names_the_url(tmp_path, capsys, local_run, gcs_emulator):
    source, pipeline, _ = local_run
    options = ["--storage-option", f"endpoint_url={gcs_emulator[0]}", "--storage-option", "token=anon"]
    url = f"gs://no-such-bucket-{uuid.uuid4().hex[:8]}/in/"
    code, err = cli(["run", str(pipeline), "-i", url, "-o", str(tmp_path / "x"), "--quiet", *options], capsys)
    assert_one_line_error(code, err, url)
    assert "does not exist" in err
    url = f"gs://no-such-bucket-{uuid.uuid4().hex[:8]}/out/"
    code, err = cli(["run", str(pipeline), "-i", str(source), "-o", url, "--quiet", *options], capsys)
    assert_one_line_error(code, err, url)
    assert "create the bucket" in err


@pytest.mark.parametrize(
    ("url", "module", "extra"), [("gs://bucket/in/", "gcsfs", "gcs"), ("az://container/in/", "adlfs", "azure")]
)
def test_a_missing_backend_names_the_extra(tmp_path, capsys, monkeypatch, url, module, extra):
    from fsspec.registry import _registry  # classes fsspec has imported already

    monkeypatch.setitem(sys.modules, module, None)  # as if not installed: importing it fails
    monkeypatch.delitem(_registry, url.split("://")[0], raising=False)
    code, err = cli(["dedup", "-i", url, "-o", str(tmp_path / "out"), "--quiet"], capsys)
    assert_one_line_error(code, err, url)
    assert f"pip install 'curate[{extra}]'" in err


def test_a_connection_error_is_not_a_missing_input(tmp_path, capsys, monkeypatch):
    """fsspec's isdir/exists answer False on any OSError; aiohttp's connection errors are
    OSErrors, so a backend built on it (gcsfs) once made an unreachable store "does not exist"."""
    from fsspec.implementations.memory import MemoryFileSystem

    def refuse(self, path, **kwargs):
        raise ConnectionRefusedError(111, "Connect call failed ('127.0.0.1', 1)")

    monkeypatch.setattr(MemoryFileSystem, "info", refuse)
    url = "memory://bucket/in/"
    code, err = cli(["dedup", "-i", url, "-o", str(tmp_path / "out"), "--quiet"], capsys)
    assert_one_line_error(code, err, url)
    assert "cannot list (ConnectionRefusedError" in err and "does not exist" not in err


@pytest.mark.parametrize("scheme", ["gs", "az"])
def test_an_unreachable_endpoint_fails_fast_in_one_line(tmp_path, capsys, scheme):
    """Azure's SDK and gcsfs retry a refused connection with back-off (86 s and 34 s measured);
    curate connects to the endpoint once first."""
    pytest.importorskip("gcsfs" if scheme == "gs" else "adlfs")
    endpoint = f"http://127.0.0.1:{free_port()}"
    if scheme == "gs":
        url, options = "gs://bucket/in/", [f"endpoint_url={endpoint}", "token=anon"]
    else:
        url, options = "az://container/in/", [f"connection_string={connection_string(endpoint)}"]
    started = time.monotonic()
    code, err = cli(
        [
            "dedup",
            "-i",
            url,
            "-o",
            str(tmp_path / "out"),
            "--quiet",
            *(f for o in options for f in ("--storage-option", o)),
        ],
        capsys,
    )
    assert time.monotonic() - started < 10
    assert_one_line_error(code, err, url)
    assert "cannot connect to http://127.0.0.1:" in err
    assert not (tmp_path / "out").exists()


def test_the_endpoint_check_stands_aside_for_a_proxy(monkeypatch):
    """Behind HTTPS_PROXY / HTTP_PROXY the client connects through the proxy: a direct connect
    would fail on networks that only allow the proxy, so the check is skipped there."""
    from types import SimpleNamespace

    from curate.errors import UsageError
    from curate.io import storage

    for name in (
        "HTTP_PROXY",
        "http_proxy",
        "HTTPS_PROXY",
        "https_proxy",
        "ALL_PROXY",
        "all_proxy",
        "NO_PROXY",
        "no_proxy",
    ):
        monkeypatch.delenv(name, raising=False)
    fs = SimpleNamespace(service_client=SimpleNamespace(url=f"http://127.0.0.1:{free_port()}/account"))
    with pytest.raises(UsageError, match="cannot connect to http://127.0.0.1:"):
        storage._check_reachable("az://container/in/", fs)
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:3128")
    storage._check_reachable("az://container/in/", fs)  # through the proxy: not checked
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    with pytest.raises(UsageError):
        storage._check_reachable("az://container/in/", fs)
