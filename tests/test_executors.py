"""One runner, any executor: `--jobs 1`, `--jobs 2` (a process pool) and Dask clusters of 1 and 3
workers give byte-identical kept rows, ledgers and side outputs for every stage kind, also when
a Dask worker is SIGKILLed mid-run. Real process pools and LocalClusters on loopback."""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import free_port

import curate.data
from curate.commands.inspect import verify_output
from curate.engine.executors import DaskExecutor, make_executor
from curate.engine.tasks import Transform, assemble
from curate.engine.units import InputSource, InputUnit, plan_units
from curate.errors import UsageError
from curate.io.inputs import InputSet
from curate.io.parts import read_parts
from curate.pipeline import RunOptions, parse_pipeline, run_pipeline
from curate.stages.base import StageContext, available_kinds
from curate.stages.exact import ExactDedup

distributed = pytest.importorskip("distributed")

WORDS = np.array(
    "data model train token shard batch loss cluster prune dedup hash vector embed sample epoch "
    "budget scale pool quality score text corpus filter window anneal random seed worker graph".split()
)


def make_corpus(
    directory: Path,
    *,
    shards: int = 5,
    rows: int = 1200,
    seed: int = 0,
    ids: bool = True,
    null_texts: int = 0,
    row_group: int = 200,
) -> Path:
    """Shards of word soup with exact copies, case/space variants and one-word edits across
    shards, so exact, normalized and near-duplicate stages all have work to do."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    originals: list[str] = []
    for s in range(shards):
        texts: list[str | None] = []
        for _ in range(rows):
            roll = rng.random()
            if originals and roll < 0.2:
                texts.append(originals[rng.integers(len(originals))])
            elif originals and roll < 0.3:
                texts.append("  " + originals[rng.integers(len(originals))].upper().replace(" ", "   "))
            elif originals and roll < 0.4:
                words = originals[rng.integers(len(originals))].split(" ")
                words[rng.integers(len(words))] = str(rng.choice(WORDS))
                texts.append(" ".join(words))
            else:
                text = " ".join(rng.choice(WORDS, size=rng.integers(8, 30)))
                originals.append(text)
                texts.append(text)
        for i in rng.choice(rows, size=null_texts, replace=False):
            texts[i] = None
        columns = {
            "text": pa.array(texts, pa.string()),
            "label": pa.array(rng.integers(0, 4, rows)),
            "extra": pa.array(rng.random(rows)),
        }
        if ids:
            columns = {"id": pa.array([f"doc-{s}-{i}" for i in range(rows)]), **columns}
        pq.write_table(pa.table(columns), directory / f"shard-{s:03d}.parquet", row_group_size=row_group)
    return directory


def assert_same_output(local: Path, dask: Path) -> None:
    """Every published table identical row for row, side outputs identical, same stage counts."""
    for name in ("kept", "removed", "embeddings"):
        if (local / name).exists() or (dask / name).exists():
            a, b = read_parts(local / name), read_parts(dask / name)
            assert a.num_rows == b.num_rows, name
            assert a.equals(b), f"{name}/ differs"
    for path in sorted(local.rglob("*.npy")):
        assert np.array_equal(np.load(path), np.load(dask / path.relative_to(local))), path
    counts = lambda out: [
        (s["name"], s["rows_in"], s["rows_out"], s["rows_removed"])
        for s in json.loads((out / "manifest.json").read_text())["stages"]
    ]
    assert counts(local) == counts(dask)
    assert verify_output(dask).ok
    assert not (dask / "_stages").exists()


SERIAL = RunOptions(jobs=1)


def run_both(
    tmp_path: Path, client, stages: list[dict], corpus: Path, *, unit_rows: int = 1_000_000, **top
) -> tuple[Path, Path]:
    """The serial run and a Dask run of the same pipeline."""
    spec = parse_pipeline({"stage": stages, **top}, "test")
    local = run_pipeline(spec, corpus, tmp_path / "local", SERIAL).output
    dask = run_pipeline(
        spec, corpus, tmp_path / "dask", RunOptions(executor=DaskExecutor(client), unit_rows=unit_rows)
    ).output
    return local, dask


def _cluster(workers: int):
    from distributed import Client, LocalCluster

    with LocalCluster(
        n_workers=workers,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address="127.0.0.1:0",
        silence_logs=logging.ERROR,
    ) as cluster:
        with Client(cluster) as c:
            yield c


@pytest.fixture(scope="module")
def client():
    yield from _cluster(2)


@pytest.fixture(scope="module")
def clients():
    """Dask clusters of 1 and 3 workers, for the every-kind equality test."""
    from contextlib import ExitStack, contextmanager

    with ExitStack() as stack:
        yield {n: stack.enter_context(contextmanager(_cluster)(n)) for n in (1, 3)}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return make_corpus(tmp_path_factory.mktemp("corpus"))


# ---------------------------------------------------------------------------------------
# Equality with the local runner.


def test_exact_on_dask_keeps_the_same_rows_and_ledger_as_local(tmp_path, client, corpus):
    local, dask = run_both(tmp_path, client, [{"kind": "exact"}], corpus)
    removed = read_parts(dask / "removed")
    assert removed.num_rows > 500  # the corpus really has duplicates across shards
    assert set(removed.column("duplicate_of").to_pylist()) <= set(read_parts(dask / "kept").column("id").to_pylist())
    assert_same_output(local, dask)


def test_row_group_slices_and_chained_stages_match_local(tmp_path, client, corpus):
    # unit_rows below the shard size: every shard and every part is cut into row-group slices
    stages = [{"kind": "exact"}, {"kind": "exact", "normalize": True}]
    local, dask = run_both(tmp_path, client, stages, corpus, unit_rows=500)
    manifest = json.loads((dask / "manifest.json").read_text())
    assert manifest["stages"][1]["info"]["work_units"] > 5
    assert manifest["stages"][2]["info"]["work_units"] > 5
    assert_same_output(local, dask)


def test_null_texts_and_synthesized_ids_match_local(tmp_path, client):
    corpus = make_corpus(tmp_path / "in", shards=3, rows=500, ids=False, null_texts=7, seed=3)
    local, dask = run_both(
        tmp_path, client, [{"kind": "exact", "normalize": True}], corpus, unit_rows=250, input={"drop_null_text": True}
    )
    assert read_parts(dask / "removed").column("reason").to_pylist().count("null_text") == 21
    assert_same_output(local, dask)


# Pipelines that exercise each stage kind. Every registered kind must have an entry: a new
# stage kind fails the suite until it is shown to give the same output on every executor.
EMBED = {"kind": "embed", "model": "hashing"}
DEMO_CORPUS = str(Path(curate.data.__file__).parent / "demo.parquet")
PROTOTYPES = {"kind": "prototypes", "clusters": 4, "keep": "hard", "fraction": 0.8}
KIND_PIPELINES: dict[str, list[dict]] = {
    "exact": [{"kind": "exact", "normalize": True}],
    "minhash": [{"kind": "minhash", "threshold": 0.8}],
    "embed": [EMBED],
    "semdedup": [EMBED, {"kind": "semdedup", "threshold": 0.9}],
    "prototypes": [EMBED, PROTOTYPES],
    "pools": [EMBED, PROTOTYPES, {"kind": "pools", "score": "proto_distance", "pools": 4}],
    "loss_clusters": [{"kind": "loss_clusters", "loss_column": "extra", "keep": "hard", "fraction": 0.8}],
    # the bundled demo corpus as the evaluation set: its package descriptions share word pairs with the soup
    "decontaminate": [{"kind": "decontaminate", "ngram": 2, "eval_sets": [{"name": "demo", "path": DEMO_CORPUS}]}],
}


def test_every_registered_stage_kind_has_an_executor_equality_case():
    assert set(available_kinds()) == set(KIND_PIPELINES), "add the new kind to KIND_PIPELINES"


# Kinds whose own test files compare every executor in the default run (test_semdedup,
# test_prototypes, test_pools, test_decontaminate, test_minhash_stage, test_embed,
# test_loss_clusters): here they run with the slow tests, which CI runs too.
_SLOW_KINDS = {"semdedup", "prototypes", "pools", "decontaminate", "minhash", "embed", "loss_clusters"}


@pytest.mark.parametrize(
    "kind", [pytest.param(k, marks=pytest.mark.slow) if k in _SLOW_KINDS else k for k in sorted(KIND_PIPELINES)]
)
def test_every_stage_kind_gives_the_same_output_on_every_executor(tmp_path, clients, corpus, kind):
    """--jobs 1 is the reference; --jobs 2 and Dask with 1 and 3 workers, with units small
    enough that every shard is cut, must give the same bytes."""
    spec = parse_pipeline({"stage": KIND_PIPELINES[kind]}, "test")
    reference = run_pipeline(spec, corpus, tmp_path / "jobs1", SERIAL).output
    runs = {"jobs2": RunOptions(jobs=2, unit_rows=700)}
    runs.update({f"dask{n}": RunOptions(executor=DaskExecutor(c), unit_rows=600) for n, c in clients.items()})
    for name, options in runs.items():
        out = run_pipeline(spec, corpus, tmp_path / name, options).output
        assert_same_output(reference, out)
        units = json.loads((out / "manifest.json").read_text())["stages"][1]["info"]["work_units"]
        assert units > 5, name  # the source really was cut into several units


def test_ledger_stage_column_names_the_stage_not_its_kind(tmp_path, corpus):
    """Two exact stages: the second one's rows say exact_2 (it removes the case/space variants)."""
    spec = parse_pipeline({"stage": [{"kind": "exact"}, {"kind": "exact", "normalize": True}]}, "test")
    out = run_pipeline(spec, corpus, tmp_path / "out", SERIAL).output
    removed = read_parts(out / "removed")
    counts = {name: removed.column("stage").to_pylist().count(name) for name in ("exact", "exact_2")}
    assert counts["exact"] > 0 and counts["exact_2"] > 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert [s["rows_removed"] for s in manifest["stages"][1:]] == [counts["exact"], counts["exact_2"]]


def test_a_run_interrupted_on_dask_resumes_to_the_local_result(tmp_path, client, corpus):
    stages = [{"kind": "exact"}, {"kind": "exact", "normalize": True}]
    spec = parse_pipeline({"stage": stages}, "test")
    local = run_pipeline(spec, corpus, tmp_path / "local", SERIAL).output

    def stop_after_first_stage(name: str) -> None:
        if name == "exact":
            raise KeyboardInterrupt

    executor = DaskExecutor(client)
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(
            spec,
            corpus,
            tmp_path / "dask",
            RunOptions(executor=executor, unit_rows=500, on_stage_done=stop_after_first_stage),
        )
    run_pipeline(spec, corpus, tmp_path / "dask", RunOptions(executor=executor, unit_rows=500, resume=True))
    assert_same_output(local, tmp_path / "dask")


# ---------------------------------------------------------------------------------------
# The map-reduce fit on its own: the same fitted state as streaming `fit`, whatever the split.


@pytest.mark.parametrize("unit_rows,buckets", [(10_000, 1), (300, 3), (200, 8)])
@pytest.mark.parametrize("normalize", [False, True])
def test_exact_map_reduce_fit_equals_streaming_fit(tmp_path, corpus, unit_rows, buckets, normalize):
    source = InputSource(InputSet.scan(corpus), 128, False)
    ctx = StageContext(name="exact", workers=buckets)
    streamed = ExactDedup(normalize=normalize).fit(source, StageContext(name="exact"))
    stage = ExactDedup(normalize=normalize)
    units = plan_units(source, unit_rows)
    maps = [stage.fit_shard(unit, ctx) for unit in reversed(units)][::-1]  # completion order must not matter
    reduced = [stage.fit_reduce(b, [m[b] for m in maps], ctx) for b in range(stage.fit_buckets(ctx))]
    stage.fit_merge(reduced, source, ctx)
    assert np.array_equal(stage.duplicate_rows_, streamed.duplicate_rows_)
    assert np.array_equal(stage.representatives_, streamed.representatives_)
    assert stage.distinct_ == streamed.distinct_
    assert stage.representative_ids_(stage.representatives_).equals(
        streamed.representative_ids_(streamed.representatives_)
    )


def test_units_cover_every_row_once_in_input_order(corpus):
    source = InputSource(InputSet.scan(corpus), 100, False)
    units = plan_units(source, 450)
    rows = np.concatenate([b.column("__curate_row").to_numpy() for u in units for b in u.batches(["text"])])
    assert np.array_equal(rows, np.arange(source.num_rows))
    assert (
        all(isinstance(u, InputUnit) for u in units) and len(units) == 5 * 2
    )  # 1200 rows in groups of 200, cut once 450 is reached: 600 + 600


# ---------------------------------------------------------------------------------------
# Faults.


def test_a_rerun_transform_task_is_harmless(tmp_path, corpus):
    """A killed attempt leaves a temp dir; a rerun, and a second finished attempt, change nothing."""
    source = InputSource(InputSet.scan(corpus), 256, False)
    stage = ExactDedup().fit(source, StageContext(name="exact"))
    unit = plan_units(source, 1200)[2]
    stage_file = tmp_path / "stage.pkl"
    import cloudpickle

    stage_file.write_bytes(cloudpickle.dumps(stage))
    units_dir = tmp_path / "units"
    (units_dir / ".00002.deadbeef.tmp" / "kept").mkdir(parents=True)  # a dead attempt's leftovers
    ctx = StageContext(name="exact", work_dir=tmp_path / "work")
    task = Transform(str(stage_file), ctx, str(units_dir))
    first = task(unit)
    before = {p: p.read_bytes() for p in (units_dir / "00002").rglob("*.parquet")}
    second = task(unit)
    assert first == second and sum(first) == unit.rows and first[1] > 0
    assert {p: p.read_bytes() for p in (units_dir / "00002").rglob("*.parquet")} == before
    assert not [p for p in units_dir.iterdir() if p.name.startswith(".00002.") and p.name != ".00002.deadbeef.tmp"]


def test_workers_that_cannot_see_the_paths_are_refused_with_the_reason(tmp_path, client):
    executor = DaskExecutor(client)
    with pytest.raises(UsageError, match="cannot read the input file"):
        executor.check_storage(str(tmp_path / "work"), str(tmp_path / "not-on-this-worker.parquet"))
    assert not list((tmp_path / "work").iterdir())  # probe markers cleaned up or never kept


def test_assembly_refuses_a_missing_unit_output(tmp_path):
    from curate.errors import OutputError

    (tmp_path / "units" / "00000" / "kept").mkdir(parents=True)
    with pytest.raises(OutputError, match="work unit 1"):
        assemble(tmp_path / "units", 2, tmp_path / "stage")


def test_unreachable_scheduler_is_a_usage_error_naming_the_address():
    address = f"tcp://127.0.0.1:{free_port()}"
    started = time.monotonic()
    with pytest.raises(UsageError, match=address):
        DaskExecutor.connect(address, timeout=2)
    assert time.monotonic() - started < 10


@pytest.mark.slow  # waits out the CLI's 10 s connect timeout
def test_cli_with_unreachable_scheduler_exits_2(tmp_path, corpus, capsys):
    from curate.cli import main

    pipeline = tmp_path / "p.toml"
    pipeline.write_text('[[stage]]\nkind = "exact"\n')
    address = f"tcp://127.0.0.1:{free_port()}"
    started = time.monotonic()
    with pytest.raises(SystemExit) as exit_info:
        main(["run", str(pipeline), "-i", str(corpus), "-o", str(tmp_path / "out"), "--scheduler", address, "-q"])
    assert exit_info.value.code == 2
    assert address in capsys.readouterr().err
    assert time.monotonic() - started < 20


@pytest.mark.parametrize("choice", [{"workers": 2, "scheduler": "tcp://127.0.0.1:1"}, {"jobs": 2, "workers": 2}])
def test_executor_options_are_exclusive(choice):
    with pytest.raises(UsageError, match="exclusive"):
        make_executor(**choice)


def test_jobs_below_one_is_a_usage_error():
    with pytest.raises(UsageError, match="--jobs"):
        make_executor(jobs=-1)


# ---------------------------------------------------------------------------------------
# Connecting to an existing cluster, the CLI, progress.


def test_scheduler_address_runs_on_that_cluster_and_matches_local(tmp_path, client, corpus):
    spec = parse_pipeline({"stage": [{"kind": "exact"}]}, "test")
    local = run_pipeline(spec, corpus, tmp_path / "local", SERIAL).output
    with make_executor(scheduler=client.scheduler.address) as executor:
        lines = executor.describe()
        result = run_pipeline(spec, corpus, tmp_path / "dask", RunOptions(executor=executor))
    assert lines[0].startswith(f"dask: {client.scheduler.address}, 2 workers")
    assert any(line.startswith("dask dashboard:") for line in lines)
    assert_same_output(local, result.output)


@pytest.mark.slow  # starts its own cluster
def test_cli_workers_option_starts_a_local_cluster(tmp_path, corpus, capsys):
    from curate.cli import main

    pipeline = tmp_path / "p.toml"
    pipeline.write_text('[[stage]]\nkind = "exact"\n')
    main(["run", str(pipeline), "-i", str(corpus), "-o", str(tmp_path / "local"), "-q"])
    main(["run", str(pipeline), "-i", str(corpus), "-o", str(tmp_path / "dask"), "--workers", "2"])
    err = capsys.readouterr().err
    assert "2 workers" in err and "dask dashboard:" in err
    assert_same_output(tmp_path / "local", tmp_path / "dask")


class CountingProgress:
    """A Progress stand-in that records what each bar was advanced by."""

    enabled = True

    def __init__(self) -> None:
        self.bars: dict[str, int] = {}

    def task(self, description, total=None, unit="rows"):
        from contextlib import contextmanager

        owner = self

        class Bar:
            def advance(self, n: int = 1) -> None:
                owner.bars[description] = owner.bars.get(description, 0) + n

        @contextmanager
        def cm():
            owner.bars.setdefault(description, 0)
            yield Bar()

        return cm()


def test_progress_follows_task_completion(tmp_path, client, corpus):
    progress = CountingProgress()
    spec = parse_pipeline({"stage": [{"kind": "exact"}]}, "test")
    run_pipeline(
        spec, corpus, tmp_path / "dask", RunOptions(executor=DaskExecutor(client), unit_rows=500, progress=progress)
    )
    assert progress.bars["exact: fitting"] == 6000
    assert progress.bars["exact: writing"] == 6000


# ---------------------------------------------------------------------------------------
# The input check on the cluster raises what the local check raises.


def _local_and_dask_errors(tmp_path: Path, client, corpus: Path, **top) -> tuple[str, str]:
    from curate.errors import InputError

    spec = parse_pipeline({"stage": [{"kind": "exact"}], **top}, "test")
    messages = []
    for name, options in (
        ("local", RunOptions(jobs=2, unit_rows=250)),
        ("dask", RunOptions(executor=DaskExecutor(client), unit_rows=250)),
    ):
        with pytest.raises(InputError) as info:
            run_pipeline(spec, corpus, tmp_path / name, options)
        messages.append(str(info.value))
    return messages[0], messages[1]


def test_duplicate_ids_across_shards_fail_on_dask_as_locally(tmp_path, client):
    corpus = make_corpus(tmp_path / "in", shards=3, rows=400, seed=9)
    table = pq.read_table(corpus / "shard-002.parquet")
    ids = table.column("id").to_pylist()
    ids[321] = "doc-0-17"
    pq.write_table(table.set_column(0, "id", pa.array(ids)), corpus / "shard-002.parquet", row_group_size=100)
    local, dask = _local_and_dask_errors(tmp_path, client, corpus)
    assert "duplicate id 'doc-0-17'" in dask and "shard-002" in dask
    assert local == dask


def test_null_texts_without_drop_fail_on_dask_as_locally(tmp_path, client):
    corpus = make_corpus(tmp_path / "in", shards=3, rows=400, seed=4, null_texts=2)
    local, dask = _local_and_dask_errors(tmp_path, client, corpus, batch_size=400)
    assert "null text at row" in dask and "shard-000" in dask
    assert local == dask


# ---------------------------------------------------------------------------------------
# A worker dies.


class SlowExact(ExactDedup):
    """Exact dedup whose map and transform take a while, so a worker can be killed mid-stage."""

    def fit_shard(self, source, ctx):
        time.sleep(0.4)
        return super().fit_shard(source, ctx)

    def transform(self, batch, ctx):
        time.sleep(0.2)
        return super().transform(batch, ctx)


@pytest.mark.parametrize("phase", [pytest.param("fit", marks=pytest.mark.slow), "transform"])  # 9 s each
def test_killing_a_worker_mid_run_gives_the_same_output(tmp_path, monkeypatch, client, phase):
    """Killed while the map tasks write the shuffle, or while transform tasks write parts.
    Last in the file: the nanny restarts the killed worker, the shared cluster lives on."""
    corpus = make_corpus(tmp_path / "in", shards=10, rows=400, seed=5)
    spec = parse_pipeline({"stage": [{"kind": "exact"}], "batch_size": 200}, "test")
    local = run_pipeline(spec, corpus, tmp_path / "local", SERIAL).output
    import curate.engine.runner

    monkeypatch.setattr(curate.engine.runner, "stage_class", lambda kind, where="pipeline": SlowExact)
    executor = DaskExecutor(client)
    out = tmp_path / "dask"
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["result"] = run_pipeline(spec, corpus, out, RunOptions(executor=executor))
        except BaseException as exc:  # surfaced by the assertion below
            outcome["error"] = exc

    runner = threading.Thread(target=run)
    runner.start()
    work = out / "_stages" / "01-exact" / "work"
    # first bucket's finished map pieces, or finished transform units
    done = (
        (lambda: list((work / "shuffle" / "0000").glob("*.pkl")))
        if phase == "fit"
        else (lambda: [p for p in (work / "units").glob("[0-9]*")])
    )
    deadline = time.monotonic() + 60
    while not done():
        assert time.monotonic() < deadline and runner.is_alive(), outcome
        time.sleep(0.01)
    pids = client.run(os.getpid)
    victim = sorted(pids.values())[0]
    psutil.Process(victim).send_signal(signal.SIGKILL)
    finished = len(done())
    assert runner.is_alive() and finished < 10  # the kill landed mid-phase
    runner.join(timeout=120)
    assert not runner.is_alive() and "error" not in outcome, outcome
    assert victim not in client.run(os.getpid).values()
    assert_same_output(local, out)


# ---------------------------------------------------------------------------------------
# The local process pool on its own.


def _slow_square(x: int) -> int:
    time.sleep(0.05 * (5 - x))  # later items finish first
    return x * x


def test_local_pool_returns_results_in_item_order_whatever_finishes_first():
    from curate.engine.executors import LocalExecutor

    with LocalExecutor(2) as executor:
        assert executor.map(_slow_square, range(5), sizes=[1] * 5) == [0, 1, 4, 9, 16]
        offset = 7
        assert executor.map(lambda x: x + offset, [1, 2, 3]) == [8, 9, 10]  # closures travel (cloudpickle)
        pids = set(executor.map(lambda _: os.getpid(), range(8)))
    assert os.getpid() not in pids and 1 <= len(pids) <= 2


START_EARLY = """
import multiprocessing, psutil, sys
from curate.engine.executors import LocalExecutor

def servers():
    return [c for c in psutil.Process().children() if "forkserver" in " ".join(c.cmdline())]

if __name__ == "__main__":
    jobs = int(sys.argv[1])
    executor = LocalExecutor(jobs)
    assert not servers()
    executor.start_early()
    print(len(servers()))
    assert executor.map(abs, [-1, -2, -3]) == [1, 2, 3]
    print(len(servers()))
    executor.close()
"""


@pytest.mark.parametrize("jobs, started", [(2, 1), (1, 0)])
def test_start_early_starts_the_fork_server_before_the_first_map(tmp_path, jobs, started):
    """--jobs 2: the fork server is running right after start_early (its imports overlap the
    driver's) and the first map uses it, not a second one; --jobs 1 starts no process."""
    import subprocess
    import sys

    script = tmp_path / "start_early.py"
    script.write_text(START_EARLY)
    done = subprocess.run([sys.executable, str(script), str(jobs)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [str(started), str(started)]


def test_only_s3_locations_preload_s3fs_in_the_fork_server():
    from curate.io.storage import worker_modules

    assert worker_modules(["in", Path("out"), "file:///data/x", "gs://b/x"]) == []
    assert worker_modules(["in", "s3://bucket/out"]) == ["s3fs"]
    assert worker_modules(["s3a://bucket/in", "s3://bucket/out"]) == ["s3fs"]


def test_an_input_error_in_a_worker_process_reaches_the_driver_as_itself():
    from curate.engine.executors import LocalExecutor
    from curate.errors import InputError

    def fail(x: int) -> int:
        if x == 3:
            raise InputError("bad row", path="shard-3.parquet", fix="re-export it")
        return x

    with LocalExecutor(2) as executor, pytest.raises(InputError, match="shard-3.parquet"):
        executor.map(fail, range(6))


def test_worker_processes_cap_their_thread_pools_at_their_share_of_the_cores():
    from curate.engine.executors import LocalExecutor

    with LocalExecutor(2) as executor:
        share = executor.threads_per_task
        seen = executor.map(lambda _: os.environ.get("OMP_NUM_THREADS"), range(2))
    assert seen == [str(share)] * 2
