"""Output to an object store: a real S3 endpoint on loopback (moto's server, s3fs as client).

A pipeline from s3://bucket/in/ to s3://bucket/out/ gives what the same run gives on local
disk; SIGKILL at chosen points of the commit protocol (after the uploads, before the manifest;
after the manifest, before the leftovers are removed) and at a random instant, then --resume,
gives the uninterrupted output, whether the staging directory survived (same machine) or not
(another machine); a 2-worker Dask cluster writes the same output; the readers (`verify`,
`inspect`, `report`-style writers) work on the URL; bad prefixes are one line, exit 2."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import xxhash
from conftest import BUCKET, cli, free_port, run_cli, start_server, stop_server, upload
from test_formats import make_rows, write_as

from curate.io.parts import read_parts
from curate.output.store import FILES_KEY
from curate.pipeline import RunOptions, parse_pipeline, run_pipeline

ROOT = Path(__file__).resolve().parent.parent

PIPELINE = """
[[stage]]
kind = "exact"
normalize = true
[[stage]]
kind = "minhash"
threshold = 0.7
ngram = 3
[[stage]]
kind = "embed"
model = "hashing"
[[stage]]
kind = "prototypes"
clusters = 4
keep = "hard"
fraction = 0.8
[[stage]]
kind = "pools"
score = "proto_distance"
pools = 3
"""

# Runs curate.cli.main in a child that SIGKILLs itself at the N-th commit step named in
# CURATE_TEST_KILL_AT ("write the manifest:N" or "remove leftovers:N"). Test-only.
CHILD = r"""
import os, signal, sys
event, _, nth = os.environ["CURATE_TEST_KILL_AT"].rpartition(":")
seen = {"n": 0}
from curate.io import storage
real_call = storage.call_backend
def call(url, what, fn, *args, **kwargs):
    if what == event:
        seen["n"] += 1
        if seen["n"] == int(nth):
            os.kill(os.getpid(), signal.SIGKILL)
    return real_call(url, what, fn, *args, **kwargs)
storage.call_backend = call
from curate.cli import main
main(sys.argv[1:])
"""


@pytest.fixture
def corpus(tmp_path, s3):
    """(local input dir, its s3:// URL, pipeline path)."""
    _, fs = s3
    source = write_as(tmp_path, ".parquet", make_rows(400, seed=11), parts=3)
    pipeline = tmp_path / "p.toml"
    pipeline.write_text(PIPELINE)
    return source, upload(fs, source, f"{tmp_path.name}/in"), pipeline


@pytest.fixture
def staging(tmp_path, monkeypatch):
    path = tmp_path / "staging"
    monkeypatch.setenv("CURATE_STAGING_DIR", str(path))
    return path


def store_files(fs, url: str) -> dict[str, str]:
    """Every object under the URL (path relative to it -> xxh3 of its bytes)."""
    fs.invalidate_cache()
    root = url[len("s3://") :]
    return {k[len(root) + 1 :]: xxhash.xxh3_128_hexdigest(fs.cat_file(k)) for k in fs.find(root)}


def local_files(out: Path) -> dict[str, str]:
    return {
        p.relative_to(out).as_posix(): xxhash.xxh3_128_hexdigest(p.read_bytes())
        for p in out.rglob("*")
        if p.is_file() and p.name != ".curate-lock"  # a local output's writer lock stays (flock)
    }


def assert_same_output(fs, url: str, local: Path) -> None:
    """Same files with the same bytes (the manifest aside: times differ), nothing else in the
    store, and the manifest's record lists exactly the objects there."""
    remote = store_files(fs, url)
    here = local_files(local)
    assert set(remote) == set(here)
    differ = [name for name in here if name != "manifest.json" and remote[name] != here[name]]
    assert not differ
    manifest = json.loads(fs.cat_file(f"{url[len('s3://') :]}/manifest.json"))
    assert manifest["finalized"]
    assert set(manifest[FILES_KEY]) == set(remote) - {"manifest.json"}


@pytest.mark.slow  # 18-23 s; the default run keeps the S3 output killed at a commit step and resumed
def test_s3_to_s3_equals_local_and_readers_work(tmp_path, capsys, s3, aws_env, corpus, staging):
    _, fs = s3
    source, url_in, pipeline = corpus
    assert cli(["run", str(pipeline), "-i", str(source), "-o", str(tmp_path / "local"), "--quiet"], capsys)[0] == 0
    url_out = f"s3://{BUCKET}/{tmp_path.name}/out"
    code, err = cli(["run", str(pipeline), "-i", url_in, "-o", url_out, "--quiet"], capsys)
    assert code == 0, err
    local = tmp_path / "local"
    # The input's paths differ (s3:// vs local) only inside the manifest; every data file is equal.
    assert_same_output(fs, url_out, local)
    assert not any(name.startswith("_stages/") for name in store_files(fs, url_out))
    assert not any(staging.iterdir()), "the staging directory is removed after a finished run"
    assert cli(["verify", url_out], capsys)[0] == 0
    assert cli(["inspect", url_out], capsys)[0] == 0
    code, said, err = run_cli(["export", url_out], capsys)
    assert code == 0, err
    assert f"to {url_out}/kept-jsonl " in said, "the export is shown where the user finds it, not in staging"
    exported = store_files(fs, url_out)
    assert any(name.startswith("kept-jsonl/") for name in exported)
    manifest = json.loads(fs.cat_file(f"{url_out[len('s3://') :]}/manifest.json"))
    assert set(manifest[FILES_KEY]) == set(exported) - {"manifest.json"}, (
        "an added file is committed, earlier ones kept"
    )
    # Writing again needs --resume or --overwrite, like a local output.
    code, err = cli(["run", str(pipeline), "-i", url_in, "-o", url_out, "--quiet"], capsys)
    assert code == 2 and "not empty" in err
    code, err = cli(["run", str(pipeline), "-i", url_in, "-o", url_out, "--quiet", "--overwrite"], capsys)
    assert code == 0, err
    assert_same_output(fs, url_out, local)  # kept-jsonl/ of the replaced output is gone


def resume_and_compare(capsys, fs, pipeline: Path, url_in: str, url_out: str, local: Path) -> None:
    code, err = cli(["run", str(pipeline), "-i", url_in, "-o", url_out, "--quiet", "--resume"], capsys)
    assert code == 0, err
    assert_same_output(fs, url_out, local)


def _child(args: list[str], kill_at: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", CHILD, *args],
        env={**env, "CURATE_TEST_KILL_AT": kill_at},
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )


@pytest.mark.parametrize(
    "kill_at, lose_staging",
    [
        ("write the manifest:4", False),  # stage 2's files uploaded, its commit not written
        # committed, leftovers not yet removed; resumed elsewhere (slow: about 10 s each, and the
        # default run keeps the first case; CI runs all three)
        pytest.param("remove leftovers:3", True, marks=pytest.mark.slow),
        pytest.param("upload the output:7", True, marks=pytest.mark.slow),  # finalize's uploads not done
    ],
)
def test_kill_at_a_commit_step_then_resume(tmp_path, capsys, s3, aws_env, corpus, staging, kill_at, lose_staging):
    _, fs = s3
    source, url_in, pipeline = corpus
    assert cli(["run", str(pipeline), "-i", str(source), "-o", str(tmp_path / "local"), "--quiet"], capsys)[0] == 0
    url_out = f"s3://{BUCKET}/{tmp_path.name}/out"
    args = ["run", str(pipeline), "-i", url_in, "-o", url_out, "--quiet", "--jobs", "1"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    killed = _child(args, kill_at, env)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    committed = json.loads(fs.cat_file(f"{url_out[len('s3://') :]}/manifest.json"))
    assert not committed["finalized"]
    present = set(store_files(fs, url_out))
    assert set(committed[FILES_KEY]) <= present, "every file a commit lists is in the store"
    if lose_staging:
        shutil.rmtree(staging)
    resume_and_compare(capsys, fs, pipeline, url_in, url_out, tmp_path / "local")


@pytest.mark.slow  # about 10 s; the injected commit-step kills stay in the default run
def test_random_kill_then_resume_on_another_machine(tmp_path, capsys, s3, aws_env, corpus, staging):
    _, fs = s3
    source, url_in, pipeline = corpus
    assert cli(["run", str(pipeline), "-i", str(source), "-o", str(tmp_path / "local"), "--quiet"], capsys)[0] == 0
    url_out = f"s3://{BUCKET}/{tmp_path.name}/out"
    args = [sys.executable, "-m", "curate.cli", "run", str(pipeline), "-i", url_in, "-o", url_out, "--quiet"]
    child = subprocess.Popen(
        args,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        cwd=ROOT,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    key = f"{url_out[len('s3://') :]}/manifest.json"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and child.poll() is None:  # kill once two stages are committed
        fs.invalidate_cache()
        if fs.exists(key) and sum(s["status"] == "done" for s in json.loads(fs.cat_file(key))["stages"]) >= 2:
            break
        time.sleep(0.05)
    os.killpg(child.pid, signal.SIGKILL)
    child.wait()
    shutil.rmtree(staging, ignore_errors=True)  # resumed where none of the local state is
    resume_and_compare(capsys, fs, pipeline, url_in, url_out, tmp_path / "local")


@pytest.mark.slow  # 9 s
def test_leftovers_of_a_dead_attempt_are_never_read_and_are_removed(tmp_path, capsys, s3, aws_env, corpus, staging):
    _, fs = s3
    source, url_in, pipeline = corpus
    url_out = f"s3://{BUCKET}/{tmp_path.name}/out"
    killed = _child(
        ["run", str(pipeline), "-i", url_in, "-o", url_out, "--quiet", "--jobs", "1"],
        "write the manifest:3",
        {**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert killed.returncode == -signal.SIGKILL
    root = url_out[len("s3://") :]
    # A dead attempt's part under a name a later stage will use, with other rows in it.
    fs.pipe_file(f"{root}/kept/part-00000.parquet", next(source.glob("*.parquet")).read_bytes())
    fs.pipe_file(f"{root}/_stages/09-ghost/kept/part-00000.parquet", b"not parquet")
    # And an upload the kill cut short: invisible, but kept (and billed) by S3 until aborted.
    bucket, _, prefix = root.partition("/")
    fs.call_s3("create_multipart_upload", Bucket=bucket, Key=f"{prefix}/kept/part-00001.parquet")
    elsewhere = fs.call_s3("create_multipart_upload", Bucket=bucket, Key=f"{prefix}-other/x")
    code, err = cli(["run", str(pipeline), "-i", url_in, "-o", url_out, "--quiet", "--resume"], capsys)
    assert code == 0, err
    open_uploads = fs.call_s3("list_multipart_uploads", Bucket=bucket, Prefix=prefix).get("Uploads", [])
    assert [u["Key"] for u in open_uploads] == [f"{prefix}-other/x"], "only this output's dead uploads are aborted"
    fs.call_s3("abort_multipart_upload", Bucket=bucket, Key=f"{prefix}-other/x", UploadId=elsewhere["UploadId"])
    assert cli(["run", str(pipeline), "-i", str(source), "-o", str(tmp_path / "local"), "--quiet"], capsys)[0] == 0
    assert_same_output(fs, url_out, tmp_path / "local")


@pytest.mark.slow  # 10 s; Dask parity stays in the default run (test_executors)
def test_dask_two_workers_write_the_same_output(tmp_path, capsys, s3, corpus, staging):
    pytest.importorskip("distributed")
    from curate.engine.executors import DaskExecutor

    endpoint, fs = s3
    source, url_in, pipeline = corpus
    stages = [
        {"kind": "exact", "normalize": True},
        {"kind": "minhash", "threshold": 0.7, "ngram": 3},
        {"kind": "embed", "model": "hashing"},
    ]
    run_pipeline(parse_pipeline({"stage": stages}, "test"), source, tmp_path / "local", RunOptions(jobs=1))
    # Credentials from the pipeline file's [input] and [output] tables (no AWS_* variables here).
    options = {"endpoint_url": endpoint, "key": "testing", "secret": "testing"}
    spec = parse_pipeline(
        {"stage": stages, "input": {"storage_options": options}, "output": {"storage_options": options}}, "test"
    )
    url_out = f"s3://{BUCKET}/{tmp_path.name}/dask"
    with DaskExecutor.local(2) as executor:
        result = run_pipeline(spec, url_in, url_out, RunOptions(executor=executor, unit_rows=100))
    assert str(result.output) == url_out
    assert result.manifest["executor"]["files_between_tasks"] == "disk", "workers on this machine share its disk"
    # Work units differ from the serial run's, so parts split differently: compare the rows.
    local = tmp_path / "local"
    pulled = tmp_path / "pulled"
    fs.get(url_out[len("s3://") :], str(pulled), recursive=True)
    for name in ("kept", "removed", "embeddings"):
        assert read_parts(pulled / name).equals(read_parts(local / name)), name
    manifest = json.loads((pulled / "manifest.json").read_text())
    assert set(manifest[FILES_KEY]) == set(store_files(fs, url_out)) - {"manifest.json"}
    code, err = cli(
        [
            "verify",
            url_out,
            "--storage-option",
            f"endpoint_url={endpoint}",
            "--storage-option",
            "key=testing",
            "--storage-option",
            "secret=testing",
        ],
        capsys,
    )
    assert code == 0, err


def test_bad_output_prefixes_are_one_line(tmp_path, capsys, s3, aws_env, staging):
    _, fs = s3
    source = write_as(tmp_path, ".parquet", make_rows(50, seed=3), parts=1)
    dedup = ["dedup", "-i", str(source), "--quiet"]
    code, err = cli([*dedup, "-o", "s3://no-such-bucket-here/out"], capsys)
    assert code == 2 and "s3://no-such-bucket-here/out" in err and "bucket" in err
    fs.pipe_file(f"{BUCKET}/{tmp_path.name}/theirs/notes.txt", b"someone else's")
    code, err = cli([*dedup, "-o", f"s3://{BUCKET}/{tmp_path.name}/theirs"], capsys)
    assert code == 2 and "not a curate output" in err
    code, err = cli([*dedup, "-o", f"s3://{BUCKET}/{tmp_path.name}/theirs", "--overwrite"], capsys)
    assert code == 2 and "not a curate output" in err
    assert fs.cat_file(f"{BUCKET}/{tmp_path.name}/theirs/notes.txt") == b"someone else's"
    code, err = cli(["verify", f"s3://{BUCKET}/{tmp_path.name}/nothing"], capsys)
    assert code == 2 and "no manifest.json" in err
    assert not list((tmp_path / "staging").glob("view-*"))


def test_unreachable_endpoint_fails_fast(tmp_path, capsys, staging, monkeypatch):
    pytest.importorskip("s3fs")
    port = free_port()
    for name, value in {
        "AWS_ACCESS_KEY_ID": "x",
        "AWS_SECRET_ACCESS_KEY": "y",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    source = write_as(tmp_path, ".parquet", make_rows(20, seed=1), parts=1)
    started = time.monotonic()
    code, err = cli(
        [
            "dedup",
            "-i",
            str(source),
            "-o",
            "s3://bucket/out",
            "--quiet",
            "--storage-option",
            f"endpoint_url=http://127.0.0.1:{port}",
        ],
        capsys,
    )
    assert code == 2 and "s3://bucket/out" in err and "connect" in err.lower()
    assert time.monotonic() - started < 10


@pytest.fixture
def strict_s3(tmp_path):
    """A moto server that checks credentials (moto accepts any key unless told otherwise), in
    its own process so the session's lenient server is untouched."""
    pytest.importorskip("s3fs")
    pytest.importorskip("moto.server")
    port = free_port()
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "0"}
    server = start_server(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], port, "moto server", env
    )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_server(server)


def test_wrong_credentials_are_one_line_naming_the_url(tmp_path, capsys, strict_s3, staging, monkeypatch):
    for name, value in {
        "AWS_ACCESS_KEY_ID": "not-a-key",
        "AWS_SECRET_ACCESS_KEY": "not-a-secret",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    endpoint = ["--storage-option", f"endpoint_url={strict_s3}"]
    source = write_as(tmp_path, ".parquet", make_rows(20, seed=1), parts=1)
    code, err = cli(["dedup", "-i", str(source), "-o", "s3://bucket/out", "--quiet", *endpoint], capsys)
    assert code == 2 and "s3://bucket/out" in err and "credentials" in err and len(err.strip().splitlines()) == 1
    local = tmp_path / "out"
    code, err = cli(["dedup", "-i", "s3://bucket/in/", "-o", str(local), "--quiet", *endpoint], capsys)
    assert code == 2 and "s3://bucket/in" in err and "credentials" in err and len(err.strip().splitlines()) == 1
    assert not local.exists()


@pytest.mark.slow  # 7 s
def test_against_an_earlier_output_in_the_store(tmp_path, capsys, s3, aws_env, staging):
    """B deduplicated against A's index in the store removes what it removes against a local A;
    only A's index is fetched (its kept rows are deleted from the store first)."""
    _, fs = s3
    rows = make_rows(300, seed=5)
    first = write_as(tmp_path / "a", ".parquet", rows[:150], parts=2)
    second = write_as(tmp_path / "b", ".parquet", rows[150:], parts=2)
    base = f"s3://{BUCKET}/{tmp_path.name}"
    dedup = ["dedup", "--method", "minhash", "--quiet"]
    for out in (f"{base}/a", str(tmp_path / "local-a")):
        assert cli([*dedup, "-i", str(first), "-o", out, "--index"], capsys)[0] == 0
    fs.rm(f"{BUCKET}/{tmp_path.name}/a/kept", recursive=True)
    for out, against in ((f"{base}/b", f"{base}/a"), (str(tmp_path / "local-b"), str(tmp_path / "local-a"))):
        code, err = cli([*dedup, "-i", str(second), "-o", out, "--against", against], capsys)
        assert code == 0, err
    pulled = tmp_path / "pulled-b"
    fs.get(f"{BUCKET}/{tmp_path.name}/b", str(pulled), recursive=True)
    removed = read_parts(pulled / "removed")
    assert removed.num_rows > 0 and "near_duplicate_of_earlier" in removed.column("reason").to_pylist()
    assert removed.equals(read_parts(tmp_path / "local-b" / "removed"))


def test_commit_digests_and_uploads_in_tasks_and_only_what_changed(tmp_path, s3, aws_env, staging):
    """The row data of a commit moves in executor tasks (workers), not in the driver; a file
    already committed with the same bytes is neither digested again nor uploaded."""
    from curate.output.store import OutputStore, file_digest, upload_batches

    _, fs = s3
    local = tmp_path / "staged"
    (local / "kept").mkdir(parents=True)
    (local / "manifest.json").write_text(
        json.dumps({"finalized": False, "stages": [], "input": {"files": []}, "config": {}})
    )
    rng = np.random.default_rng(3)
    for i, size in enumerate([5000, 300, 70000, 1200, 9]):
        (local / "kept" / f"part-{i:05d}.parquet").write_bytes(rng.bytes(size))
    url = f"s3://{BUCKET}/{tmp_path.name}/out"
    store = OutputStore(url)
    sent: list[list[str]] = []

    def mapper(fn, items):
        sent.append([name for batch in items for name, *_ in batch])
        return [fn(batch) for batch in items]

    store.commit(local, map=mapper, workers=2)
    names = sorted(f"kept/part-{i:05d}.parquet" for i in range(5))
    assert sorted(sent[0]) == names
    record = json.loads(fs.cat_file(f"{BUCKET}/{tmp_path.name}/out/manifest.json"))[FILES_KEY]
    for name in names:
        assert record[name] == {"size": (local / name).stat().st_size, "xxh3": file_digest(local / name)}
        assert fs.cat_file(f"{BUCKET}/{tmp_path.name}/out/{name}") == (local / name).read_bytes()
    store.commit(local, map=mapper, workers=2)
    assert len(sent) == 1, "nothing changed: no task"
    (local / "kept" / "part-00001.parquet").write_bytes(b"changed")
    store.commit(local, map=mapper, workers=2)
    assert sent[-1] == ["kept/part-00001.parquet"]
    assert fs.cat_file(f"{BUCKET}/{tmp_path.name}/out/kept/part-00001.parquet") == b"changed"
    # Batches: every file once, about two per worker, the bytes spread evenly.
    files = [(f"f{i}", "", size, 0, None) for i, size in enumerate([100, 90, 80, 10, 10, 10, 5])]
    batches = upload_batches(files, 2)
    assert len(batches) == 4 and sorted(f for b in batches for f in b) == sorted(files)
    assert max(sum(f[2] for f in b) for b in batches) == 100
    assert len(upload_batches(files, 1)) == 1
