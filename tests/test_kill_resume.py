"""SIGKILL a real `curate run` at many points, resume it, and get exactly the uninterrupted result.

Kills come two ways: at seeded random times, and at chosen instants injected into the child
(just before the manifest's atomic rename, in the middle of writing a part file, just before a
part's rename, between publishing kept/ and removed/), so the windows that random timing rarely
hits are covered on every run. After every kill the state is checked: manifest.json parses,
OUT/kept exists only once every stage is done, and stages recorded as done are never redone.
Injected kills run the child with `--jobs 1` (the events are counted in its process); the
random kills run it on the default process pool, whose workers must die with it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curate.commands.inspect import verify_output
from curate.io.parts import list_parts
from curate.stages.base import available_kinds
from tests.gen_corpus import write_corpus

ROOT = Path(__file__).resolve().parent.parent

# Runs curate.cli.main in the child, SIGKILLing itself at the N-th occurrence of an event
# named in CURATE_TEST_KILL_AT ("event:N"). Test-only: nothing in curate knows about it.
CHILD = r"""
import os, signal, sys
event, _, nth = os.environ.get("CURATE_TEST_KILL_AT", ":0").partition(":")
nth = int(nth or 0)
seen = {"n": 0}

def hit(name):
    if name == event:
        seen["n"] += 1
        if seen["n"] == nth:
            os.kill(os.getpid(), signal.SIGKILL)

real_replace = os.replace
def replace(src, dst, *a, **k):
    s, d = os.path.basename(str(src)), os.path.basename(str(dst))
    if d == "manifest.json":
        hit("manifest")
    elif s.startswith(".part-"):
        hit("part_rename")
    elif d in ("kept", "removed"):
        hit("publish")
    return real_replace(src, dst, *a, **k)
os.replace = replace

import pyarrow.parquet as pq
real_write_table = pq.ParquetWriter.write_table
def write_table(self, *a, **k):
    real_write_table(self, *a, **k)
    hit("part_write")  # a row group is in the temp part: the kill leaves it half-written
pq.ParquetWriter.write_table = write_table

from curate.cli import main
main(sys.argv[1:])
"""

EXACT_PIPELINE = """
batch_size = {batch_size}
[[stage]]
kind = "exact"
normalize = false
[[stage]]
kind = "exact"
normalize = true
[[stage]]
kind = "exact"
normalize = false
"""

# Small settings for stages other branches add; used when those kinds are registered.
OTHER_STAGES = {
    "minhash": {"threshold": 0.8},
    "embed": {"model": "hashing"},
    "prototypes": {"clusters": 4, "keep": "hard", "fraction": 0.8},
    "pools": {"score": "proto_distance", "pools": 4},
}


def full_pipeline(batch_size: int) -> str:
    """Exact stages, then whichever of minhash -> embed -> prototypes -> pools are present."""
    text = EXACT_PIPELINE.format(batch_size=batch_size)
    kinds = set(available_kinds())
    have = set()
    for kind, options in OTHER_STAGES.items():
        if (
            kind not in kinds
            or (kind == "prototypes" and "embed" not in have)
            or (kind == "pools" and "prototypes" not in have)
        ):
            continue
        have.add(kind)
        text += f'[[stage]]\nkind = "{kind}"\n' + "".join(f"{k} = {json.dumps(v)}\n" for k, v in options.items())
    return text


def _env(kill_at: str | None = None) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("CURATE_TEST_KILL_AT", None)
    if kill_at:
        env["CURATE_TEST_KILL_AT"] = kill_at
    return env


def start_run(pipeline: Path, corpus: Path, out: Path, resume: bool, kill_at: str | None = None) -> subprocess.Popen:
    argv = [sys.executable, "-c", CHILD, "run", str(pipeline), "-i", str(corpus), "-o", str(out), "--quiet"]
    if resume:
        argv.append("--resume")
    if kill_at:  # injected kill points are counted in this process: run every task in it
        argv += ["--jobs", "1"]
    return subprocess.Popen(argv, cwd=ROOT, env=_env(kill_at), stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def finish(proc: subprocess.Popen, timeout: float = 120) -> int:
    _, err = proc.communicate(timeout=timeout)
    assert proc.returncode in (0, -signal.SIGKILL), f"run failed ({proc.returncode}): {err.decode()[-2000:]}"
    return proc.returncode


def read_dir(directory: Path) -> pa.Table:
    parts = list_parts(directory)
    return pa.concat_tables([pq.read_table(p) for p in parts]) if parts else pa.table({})


def done_stages(out: Path) -> dict[str, dict]:
    """Stage entries the manifest marks done; also checks the state a kill left behind."""
    path = out / "manifest.json"
    if not path.exists():
        assert not (out / "kept").exists()
        return {}
    manifest = json.loads(path.read_text())  # must always parse: the manifest is written atomically
    done = {e["name"]: e for e in manifest["stages"] if e["status"] == "done"}
    if (out / "kept").exists():
        assert len(done) == len(manifest["stages"]), "OUT/kept published before every stage was done"
    return done


def check_not_redone(before: dict[str, dict], out: Path) -> None:
    after = done_stages(out)
    for name, entry in before.items():
        assert after.get(name) == entry, f"stage {name} was redone after resume"


def reference_run(pipeline: Path, corpus: Path, out: Path) -> tuple[pa.Table, pa.Table, float]:
    started = time.perf_counter()
    assert finish(start_run(pipeline, corpus, out, resume=False)) == 0
    return read_dir(out / "kept"), read_dir(out / "removed"), time.perf_counter() - started


def assert_same_result(out: Path, kept: pa.Table, removed: pa.Table) -> None:
    assert read_dir(out / "kept").equals(kept)
    assert read_dir(out / "removed").equals(removed)
    report = verify_output(out)  # what `curate verify` checks, in-process to save a start-up
    assert report.ok, (report.missing, report.duplicated, report.unknown, report.problems)


def resume_to_end(pipeline: Path, corpus: Path, out: Path, kill_plan: list[str | float]) -> int:
    """Apply each planned kill (an injected event or a delay in seconds) in turn, each on a
    resumed run, then resume until done. Returns how many runs were actually killed."""
    kills = 0
    before: dict[str, dict] = {}
    first = True
    for plan in kill_plan:
        if isinstance(plan, str):
            proc = start_run(pipeline, corpus, out, resume=not first, kill_at=plan)
        else:
            proc = start_run(pipeline, corpus, out, resume=not first)
            try:
                proc.wait(timeout=plan)
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
        first = False
        code = finish(proc)
        check_not_redone(before, out)
        before = done_stages(out)
        if code == 0:
            return kills
        kills += 1
    assert finish(start_run(pipeline, corpus, out, resume=not first)) == 0
    check_not_redone(before, out)
    return kills


def _case(root: Path, pipeline_text: str):
    corpus = root.parent / "in"
    if not corpus.exists():
        write_corpus(corpus, [900, 700, 0, 800, 600], seed=7, dup_rate=0.4)
    root.mkdir()
    pipeline = root / "pipeline.toml"
    pipeline.write_text(pipeline_text)
    kept, removed, seconds = reference_run(pipeline, corpus, root / "reference")
    assert removed.num_rows > 0 and kept.num_rows > 0
    return root, corpus, pipeline, kept, removed, seconds


@pytest.fixture(scope="module")
def kill_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("kill")


@pytest.fixture(scope="module")
def setup(kill_root):
    """Three exact stages: cheap to start, so many kills fit in the default run."""
    return _case(kill_root / "exact", EXACT_PIPELINE.format(batch_size=50))


@pytest.fixture(scope="module")
def full_setup(kill_root):
    """The exact stages, then minhash -> embed -> prototypes -> pools where registered."""
    return _case(kill_root / "full", full_pipeline(batch_size=50))


# Events count from 1 within each (resumed) process; for input check + 3 exact stages this walks:
# before the first manifest lands (resume must start fresh), before the input check's marker,
# in the middle of a part file, before a part's rename, before a stage's marker, before kept/
# is published, between publishing kept/ and removed/, and before the finalized manifest.
INJECTED_CHAIN = [
    "manifest:1",
    "manifest:2",
    "part_write:7",
    "part_rename:2",
    "manifest:1",
    "publish:1",
    "publish:2",
    "manifest:1",
]


@pytest.mark.slow  # 18 s; the default run keeps the store's kill-at-a-commit-step resumes
def test_injected_kill_points_resume_to_the_same_result(setup):
    root, corpus, pipeline, kept, removed, _ = setup
    out = root / "out-injected"
    assert resume_to_end(pipeline, corpus, out, INJECTED_CHAIN) == len(INJECTED_CHAIN)
    assert_same_result(out, kept, removed)


@pytest.mark.slow  # about 13 s; the injected kill points stay in the default run
def test_random_sigkills_resume_to_the_same_result(full_setup):
    root, corpus, pipeline, kept, removed, seconds = full_setup
    rng = np.random.default_rng(2024)
    kills = 0
    for attempt in range(3):  # the machine is shared: if the run outpaced every kill, kill sooner
        delays = [float(d) for d in seconds * rng.uniform(0.15, 0.8, size=3) / 2**attempt]
        out = root / f"out-random-{attempt}"
        kills = resume_to_end(pipeline, corpus, out, delays)
        assert_same_result(out, kept, removed)
        if kills:
            break
    assert kills >= 1


@pytest.mark.slow
def test_injected_kill_points_on_the_full_pipeline(full_setup):
    root, corpus, pipeline, kept, removed, _ = full_setup
    out = root / "out-injected-full"
    # before exact's marker, mid-part in its redo, before exact_2's marker, before a part rename
    # in exact_3, before minhash's marker, then the three finalize windows
    chain = [
        "manifest:3",
        "part_write:30",
        "manifest:2",
        "part_rename:3",
        "manifest:2",
        "publish:1",
        "publish:2",
        "manifest:1",
    ]
    kills = resume_to_end(pipeline, corpus, out, chain)
    assert_same_result(out, kept, removed)
    assert kills == len(chain)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(5))
def test_many_random_sigkills_on_a_bigger_corpus(tmp_path, seed):
    corpus = write_corpus(tmp_path / "in", [4000, 3000, 5000, 0, 2000, 6000, 1000], seed=seed, dup_rate=0.35)
    pipeline = tmp_path / "pipeline.toml"
    pipeline.write_text(full_pipeline(batch_size=64))
    kept, removed, seconds = reference_run(pipeline, corpus, tmp_path / "reference")
    rng = np.random.default_rng(seed)
    plan: list[str | float] = [float(d) for d in rng.uniform(0.3, seconds, size=8)]
    plan.insert(int(rng.integers(len(plan))), f"part_write:{int(rng.integers(1, 200))}")
    plan.insert(int(rng.integers(len(plan))), f"manifest:{int(rng.integers(1, 6))}")
    out = tmp_path / "out"
    resume_to_end(pipeline, corpus, out, plan)
    assert_same_result(out, kept, removed)
