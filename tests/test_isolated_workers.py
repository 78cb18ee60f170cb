"""Dask workers on "other machines": each worker sees its own empty disk where the driver keeps
its staging directory (a private tmpfs in a mount namespace, tests/isolated_cluster.py), so the
only thing they share with the driver is the S3 endpoint. A pipeline from s3:// to s3:// on such
a cluster gives what the same pipeline gives on local disk: every file a task hands to another
task or to the driver went through the store (curate.scratch)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from curate import scratch
from curate.output_store import FILES_KEY
from curate.pipeline import RunOptions, parse_pipeline, run_pipeline
from curate.shards import read_parts
from conftest import BUCKET, cli, upload
from isolated_cluster import can_isolate, isolated_cluster
from test_formats import make_rows, write_as

pytestmark = [pytest.mark.skipif(not can_isolate(), reason="needs mount namespaces (unshare --mount) to give each worker its own disk")]

STAGES = [
    {"kind": "exact", "normalize": True},
    {"kind": "minhash", "threshold": 0.7, "ngram": 3},
    {"kind": "embed", "model": "hashing"},
    {"kind": "semdedup", "model": "hashing", "threshold": 0.9, "clusters": 4},
    {"kind": "prototypes", "clusters": 4, "keep": "hard", "fraction": 0.8},
    {"kind": "pools", "score": "proto_distance", "pools": 3},
]


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """(scheduler address, staging root): the driver's staging root is hidden from both workers."""
    pytest.importorskip("distributed")
    staging = tmp_path / "staging"
    monkeypatch.setenv("CURATE_STAGING_DIR", str(staging))
    with isolated_cluster(staging, workers=2, env={"CURATE_STAGING_DIR": str(staging)}) as address:
        yield address, staging


def _spec(endpoint: str, stages: list[dict]):
    options = {"endpoint_url": endpoint, "key": "testing", "secret": "testing"}
    return parse_pipeline({"stage": stages, "input": {"storage_options": options}, "output": {"storage_options": options}}, "test")


def test_workers_without_the_drivers_disk_write_the_same_output(tmp_path, capsys, s3, isolated, monkeypatch):
    from curate.executors import DaskExecutor

    fetched = []  # what the driver downloads: never row data
    real_ensure = scratch.ensure

    def spy(path):
        if scratch.relative(path) is not None and not Path(path).exists() and Path(path).suffix != ".json":  # metadata is fine
            fetched.append(scratch.relative(path))
        return real_ensure(path)

    monkeypatch.setattr(scratch, "ensure", spy)

    endpoint, fs = s3
    address, staging = isolated
    source = write_as(tmp_path / "in", ".parquet", make_rows(600, seed=11), parts=3)
    url_in = upload(fs, source, f"{tmp_path.name}/in")
    local = tmp_path / "local"
    run_pipeline(parse_pipeline({"stage": STAGES}, "test"), source, local, RunOptions(jobs=1))
    url_out = f"s3://{BUCKET}/{tmp_path.name}/out"
    with DaskExecutor.connect(address) as executor:
        assert not executor.shares_directory(str(staging)), "the harness must hide the driver's disk"
        result = run_pipeline(_spec(endpoint, STAGES), url_in, url_out, RunOptions(executor=executor, unit_rows=100))
        leftovers = executor.client.run(lambda: sorted(str(p) for p in Path(staging).rglob("*") if p.is_file() and not p.name.startswith(".")))
    assert scratch.active() is None
    assert not fetched, sorted({f.rsplit("/", 1)[0] for f in fetched})
    assert str(result.output) == url_out
    assert result.manifest["stages"][1]["info"]["work_units"] > 2, "the units must spread over both workers"
    pulled = tmp_path / "pulled"
    fs.get(url_out[len("s3://") :], str(pulled), recursive=True)
    for name in ("kept", "removed", "embeddings"):
        assert read_parts(pulled / name).equals(read_parts(local / name)), name
    manifest = json.loads((pulled / "manifest.json").read_text())
    stored = {p[len(fs._strip_protocol(url_out)) + 1 :] for p in fs.find(url_out)}
    assert set(manifest[FILES_KEY]) == stored - {"manifest.json"}, "the record lists exactly what the store holds: no scratch left"
    assert not any(name.startswith("_stages") for name in stored)
    assert all(not files for files in leftovers.values()), f"workers keep no copies after the run: {leftovers}"
    code, err = cli(["verify", url_out, "--storage-option", f"endpoint_url={endpoint}", "--storage-option", "key=testing", "--storage-option", "secret=testing"], capsys)
    assert code == 0, err
