"""Dask workers on "other machines": each worker sees its own empty disk where the driver keeps
its staging directory (a private tmpfs in a mount namespace, tests/isolated_cluster.py), so the
only thing they share with the driver is the S3 endpoint. A pipeline from s3:// to s3:// on such
a cluster gives what the same pipeline gives on local disk: every file a task hands to another
task or to the driver went through the store (curate.io.mirror)."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import BUCKET, cli, upload
from isolated_cluster import can_isolate, isolated_cluster
from test_formats import make_rows, write_as

from curate.io import mirror
from curate.io.parts import read_parts
from curate.output.store import FILES_KEY
from curate.pipeline import RunOptions, parse_pipeline, run_pipeline

pytestmark = [
    pytest.mark.skipif(
        not can_isolate(), reason="needs mount namespaces (unshare --mount) to give each worker its own disk"
    )
]

STAGES = [
    {"kind": "exact", "normalize": True},
    {"kind": "minhash", "threshold": 0.7, "ngram": 3},
    {"kind": "embed", "model": "hashing"},
    {"kind": "semdedup", "model": "hashing", "threshold": 0.9, "clusters": 4, "index": True},
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


def _spec(endpoint: str, stages: list[dict], **more):
    options = {"endpoint_url": endpoint, "key": "testing", "secret": "testing"}
    return parse_pipeline(
        {"stage": stages, "input": {"storage_options": options}, "output": {"storage_options": options}, **more},
        "test",
    )


@pytest.mark.slow  # about 18 s: a Dask cluster over an S3 emulator
def test_workers_without_the_drivers_disk_write_the_same_output(tmp_path, capsys, s3, isolated, monkeypatch):
    from curate.engine.executors import DaskExecutor

    fetched = []  # what the driver downloads: never row data
    real_ensure = mirror.ensure

    def spy(path):
        if (
            mirror.relative(path) is not None and not Path(path).exists() and Path(path).suffix != ".json"
        ):  # metadata is fine
            fetched.append(mirror.relative(path))
        return real_ensure(path)

    monkeypatch.setattr(mirror, "ensure", spy)

    endpoint, fs = s3
    address, staging = isolated
    rows = make_rows(600, seed=11)
    source = write_as(tmp_path / "in", ".parquet", rows, parts=3)
    url_in = upload(fs, source, f"{tmp_path.name}/in")
    # An evaluation set of three corpus texts: decontaminate's matches come back from each unit
    # as a side table, which the driver reads through the store.
    evals = tmp_path / "evals.jsonl"
    evals.write_text("".join(json.dumps({"text": rows[i]["text"]}) + "\n" for i in (5, 250, 590)))
    stages = [*STAGES[:1], {"kind": "decontaminate", "ngram": 5, "eval_sets": [{"name": "e", "path": str(evals)}]}]
    stages += STAGES[1:]
    local = tmp_path / "local"
    run_pipeline(parse_pipeline({"stage": stages}, "test"), source, local, RunOptions(jobs=1))
    url_out = f"s3://{BUCKET}/{tmp_path.name}/out"
    with DaskExecutor.connect(address) as executor:
        assert not executor.shares_directory(str(staging)), "the harness must hide the driver's disk"
        result = run_pipeline(_spec(endpoint, stages), url_in, url_out, RunOptions(executor=executor, unit_rows=100))
        leftovers = executor.client.run(
            lambda: sorted(str(p) for p in Path(staging).rglob("*") if p.is_file() and not p.name.startswith("."))
        )
    assert mirror.active() is None
    assert not fetched, sorted({f.rsplit("/", 1)[0] for f in fetched})
    assert str(result.output) == url_out
    assert result.manifest["stages"][1]["info"]["work_units"] > 2, "the units must spread over both workers"
    assert result.manifest["executor"]["files_between_tasks"] == "store"
    pulled = tmp_path / "pulled"
    fs.get(url_out[len("s3://") :], str(pulled), recursive=True)
    for name in ("kept", "removed", "embeddings"):
        assert read_parts(pulled / name).equals(read_parts(local / name)), name
    for name in (
        "vectors.npy",
        "cluster_offsets.npy",
        "centroids.npy",
        "ids.parquet",
    ):  # each unit's vectors came back from its task
        index_file = Path("index") / "semdedup" / name
        assert (pulled / index_file).read_bytes() == (local / index_file).read_bytes(), name
    matches = Path("decontamination") / "decontaminate" / "matches.json"
    assert json.loads((local / matches).read_text()), "the evaluation items are in the corpus"
    assert (pulled / matches).read_bytes() == (local / matches).read_bytes()
    manifest = json.loads((pulled / "manifest.json").read_text())
    stored = {p[len(fs._strip_protocol(url_out)) + 1 :] for p in fs.find(url_out)}
    assert set(manifest[FILES_KEY]) == stored - {"manifest.json"}, (
        "the record lists exactly what the store holds: no scratch left"
    )
    assert not any(name.startswith("_stages") for name in stored)
    assert all(not files for files in leftovers.values()), f"workers keep no copies after the run: {leftovers}"
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


@pytest.mark.slow  # about 19 s: kill and resume over an S3 emulator
def test_an_interrupted_run_resumes_from_the_store_alone(tmp_path, s3, isolated, monkeypatch):
    """Stopped after its second stage and resumed on the same isolated cluster: the driver starts
    from the store's last commit (its own staging directory is new), and the result is the
    uninterrupted local run's, a loss-clusters stage (a proxy model shared through a file) and
    the report included."""
    from curate.engine.executors import DaskExecutor

    endpoint, fs = s3
    address, _ = isolated
    rng = np.random.default_rng(5)
    labels = np.array(["alpha", "beta", "gamma"])[rng.integers(0, 3, 900)]
    texts = [f"{label} thing number {i % 700} {'common' if i % 2 else 'other'}" for i, label in enumerate(labels)]
    source = tmp_path / "in"
    source.mkdir()
    frame = pa.table({"id": [f"doc{i}" for i in range(900)], "text": texts, "label": labels.tolist()})
    for s in range(3):
        pq.write_table(frame.slice(300 * s, 300), source / f"shard-{s}.parquet", row_group_size=100)
    url_in = upload(fs, source, f"{tmp_path.name}/in")
    stages = [
        {"kind": "exact"},
        {
            "kind": "loss_clusters",
            "label_column": "label",
            "epochs": 6,
            "keep": "easy",
            "fraction": 0.9,
            "proxy_epochs": 1,
            "folds": 2,
            "num_buckets": 1024,
        },
        {"kind": "embed", "model": "hashing"},
    ]
    local = tmp_path / "local"
    run_pipeline(parse_pipeline({"stage": stages, "report": {}}, "test"), source, local, RunOptions(jobs=1))
    spec = _spec(endpoint, stages, report={})
    url_out = f"s3://{BUCKET}/{tmp_path.name}/out"
    monkeypatch.setattr("curate.output.store._PULL_BYTES", 0)  # the resume pulls no file but the manifest

    class Stop(Exception):
        pass

    def stop_after_loss_clusters(name: str) -> None:
        if name == "loss_clusters":
            raise Stop

    with DaskExecutor.connect(address) as executor:
        with pytest.raises(Stop):
            run_pipeline(
                spec,
                url_in,
                url_out,
                RunOptions(executor=executor, unit_rows=100, on_stage_done=stop_after_loss_clusters),
            )
        committed = json.loads(fs.cat_file(f"{url_out}/manifest.json"))
        assert [s["status"] for s in committed["stages"]] == ["done", "done", "done", "pending"]
        result = run_pipeline(spec, url_in, url_out, RunOptions(executor=executor, unit_rows=100, resume=True))
    assert mirror.active() is None
    assert result.manifest["stages"][2]["info"] == committed["stages"][2]["info"], "finished stages are not run again"
    pulled = tmp_path / "pulled"
    fs.get(url_out[len("s3://") :], str(pulled), recursive=True)
    for name in ("kept", "removed", "embeddings"):
        assert read_parts(pulled / name).equals(read_parts(local / name)), name
    assert json.loads((pulled / "seta_schedule.json").read_text()) == json.loads(
        (local / "seta_schedule.json").read_text()
    )
    assert (pulled / "report.html").is_file() and (pulled / "report.json").is_file()
    stored = {p[len(fs._strip_protocol(url_out)) + 1 :] for p in fs.find(url_out)}
    assert set(json.loads((pulled / "manifest.json").read_text())[FILES_KEY]) == stored - {"manifest.json"}


@pytest.mark.slow  # about 14 s over the S3 emulator
def test_against_an_earlier_output_in_the_store(tmp_path, s3, isolated):
    """Workers without the driver's disk read an earlier output's indexes from its store: B run
    against A on the isolated cluster removes what it removes on local disk. An earlier output on
    the driver's disk is refused in one line before anything is written."""
    from curate.engine.executors import DaskExecutor
    from curate.errors import UsageError

    endpoint, fs = s3
    address, _ = isolated
    rows = make_rows(400, seed=7)
    first = write_as(tmp_path / "a", ".parquet", rows[:200], parts=2)
    second = write_as(tmp_path / "b", ".parquet", rows[200:], parts=2)
    url_b_in = upload(fs, second, f"{tmp_path.name}/b-in")
    stages = [
        {"kind": "exact", "normalize": True, "index": True},
        {"kind": "minhash", "threshold": 0.7, "ngram": 3, "index": True},
        {"kind": "semdedup", "model": "hashing", "threshold": 0.9, "clusters": 4, "index": True},
    ]
    base = f"s3://{BUCKET}/{tmp_path.name}"
    run_pipeline(_spec(endpoint, stages), first, f"{base}/a", RunOptions(jobs=1))
    run_pipeline(parse_pipeline({"stage": stages}, "test"), first, tmp_path / "local-a", RunOptions(jobs=1))
    run_pipeline(
        parse_pipeline({"stage": stages}, "test"),
        second,
        tmp_path / "local-b",
        RunOptions(jobs=1, against=(str(tmp_path / "local-a"),)),
    )
    with DaskExecutor.connect(address) as executor:
        run_pipeline(
            _spec(endpoint, stages),
            url_b_in,
            f"{base}/b",
            RunOptions(executor=executor, unit_rows=50, against=(f"{base}/a",)),
        )
        with pytest.raises(UsageError, match="cannot read an earlier output"):
            run_pipeline(
                _spec(endpoint, stages),
                url_b_in,
                f"{base}/c",
                RunOptions(executor=executor, against=(str(tmp_path / "local-a"),)),
            )
    assert not fs.exists(f"{base}/c")
    pulled = tmp_path / "pulled-b"
    fs.get(f"{BUCKET}/{tmp_path.name}/b", str(pulled), recursive=True)
    removed = read_parts(pulled / "removed")
    reasons = set(removed.column("reason").to_pylist())
    assert {"exact_duplicate_of_earlier", "near_duplicate_of_earlier"} <= reasons, reasons
    assert removed.equals(read_parts(tmp_path / "local-b" / "removed"))
    assert read_parts(pulled / "kept").equals(read_parts(tmp_path / "local-b" / "kept"))


@pytest.mark.slow  # about 11 s each over the S3 emulator
@pytest.mark.parametrize(
    "kill_at", ["copy in the output:5", "write the manifest:3"], ids=["mid-assemble", "before-commit"]
)
def test_driver_killed_then_resumed_without_a_shared_disk(tmp_path, capsys, s3, isolated, kill_at):
    """SIGKILL of the driver in the middle of moving a stage's parts in the store, or with a
    stage's files uploaded but not committed; `--resume` (a new driver, a new staging
    directory, the same workers, possibly tasks of the dead run still finishing) gives the
    uninterrupted local run's rows."""
    from test_storage_output import ROOT, _child

    endpoint, fs = s3
    address, _ = isolated
    source = write_as(tmp_path / "in", ".parquet", make_rows(600, seed=13), parts=3)
    url_in = upload(fs, source, f"{tmp_path.name}/in")
    stages = STAGES[:3]
    run_pipeline(parse_pipeline({"stage": stages}, "test"), source, tmp_path / "local", RunOptions(jobs=1))
    options = f'{{ endpoint_url = "{endpoint}", key = "testing", secret = "testing" }}'
    pipeline = tmp_path / "p.toml"
    pipeline.write_text(
        f"[input]\nstorage_options = {options}\n[output]\nstorage_options = {options}\n"
        + "".join("[[stage]]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in stage.items()) for stage in stages)
    )
    url_out = f"s3://{BUCKET}/{tmp_path.name}/out"
    args = ["run", str(pipeline), "-i", url_in, "-o", url_out, "--quiet", "--scheduler", address]
    killed = _child(args, kill_at, {**os.environ, "PYTHONPATH": str(ROOT)})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    committed = json.loads(fs.cat_file(f"{url_out}/manifest.json"))
    assert not committed["finalized"]
    code, err = cli([*args, "--resume"], capsys)
    assert code == 0, err
    pulled = tmp_path / "pulled"
    fs.get(url_out[len("s3://") :], str(pulled), recursive=True)
    for name in ("kept", "removed", "embeddings"):
        assert read_parts(pulled / name).equals(read_parts(tmp_path / "local" / name)), name
    stored = {p[len(fs._strip_protocol(url_out)) + 1 :] for p in fs.find(url_out)}
    assert set(json.loads((pulled / "manifest.json").read_text())[FILES_KEY]) == stored - {"manifest.json"}
