"""A full disk or an unwritable output: exit 2 with one line naming the path, a state that
`--resume` finishes to the uninterrupted result, and nothing already written corrupted.

Tests run as root, where chmod does not stop writes, so unwritable means "under a regular
file", and a full disk is ENOSPC injected at the N-th Parquet or manifest write in-process
(plus a real tiny tmpfs when this machine lets us mount one)."""

from __future__ import annotations

import errno
import gc
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import cli

from curate.cli import main
from curate.commands.inspect import verify_output
from curate.io.parts import list_parts
from tests.gen_corpus import write_corpus

ROOT = Path(__file__).resolve().parent.parent

# A writer left open on a full disk fails again in __del__; under pytest that is a warning,
# which would otherwise hide the traceback a user sees printed at exit.
pytestmark = pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")

PIPELINE = """
batch_size = 200
[[stage]]
kind = "exact"
normalize = false
[[stage]]
kind = "exact"
normalize = true
"""


def read_dir(directory: Path) -> pa.Table:
    parts = list_parts(directory)
    return pa.concat_tables([pq.read_table(p) for p in parts]) if parts else pa.table({})


def assert_one_line_error(code: int, err: str, *needles: str) -> None:
    assert code == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1, err
    for needle in needles:
        assert needle in err, err


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("disk")
    data = write_corpus(root / "in", [700, 500, 800], seed=3, dup_rate=0.4)
    pipeline = root / "pipeline.toml"
    pipeline.write_text(PIPELINE)
    reference = root / "reference"
    try:
        main(["run", str(pipeline), "-i", str(data), "-o", str(reference), "--quiet"])
    except SystemExit as exc:
        assert not exc.code
    return data, pipeline, read_dir(reference / "kept"), read_dir(reference / "removed")


def test_output_under_a_regular_file_exits_2_naming_the_path(corpus, tmp_path, capsys):
    data, pipeline, _, _ = corpus
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file")
    out = blocker / "out"
    code, err = cli(["run", str(pipeline), "-i", str(data), "-o", str(out), "--quiet"], capsys)
    assert_one_line_error(code, err, str(out), "writable")
    assert blocker.read_text() == "a file"


class EnospcAt:
    """Raise ENOSPC from the N-th call of a write function (what a full disk does)."""

    def __init__(self, real, nth: int):
        self.real = real
        self.nth = nth
        self.calls = 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        if self.calls == self.nth:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return self.real(*args, **kwargs)


def manifest_done(out: Path) -> dict[str, dict]:
    manifest = json.loads((out / "manifest.json").read_text())
    return {e["name"]: e for e in manifest["stages"] if e["status"] == "done"}


def count_calls(owner, name: str, run) -> int:
    """How many times a clean run calls owner.name (so failure points can be placed by share)."""
    real = getattr(owner, name)
    counter = EnospcAt(real, nth=-1)
    setattr(owner, name, (lambda self, *a, **k: counter(self, *a, **k)) if owner is pq.ParquetWriter else counter)
    try:
        run()
    finally:
        setattr(owner, name, real)
    return counter.calls


@pytest.fixture(scope="module")
def write_counts(corpus, tmp_path_factory):
    data, pipeline, _, _ = corpus
    root = tmp_path_factory.mktemp("count")

    def run(tag: str):
        def go():
            try:
                main(["run", str(pipeline), "-i", str(data), "-o", str(root / tag), "--quiet", "--jobs", "1"])
            except SystemExit as exc:
                assert not exc.code

        return go

    return {
        "parquet": count_calls(pq.ParquetWriter, "write_table", run("p")),
        "fsync": count_calls(os, "fsync", run("f")),
    }


# Where the disk fills, as a share of a clean run's writes: the first write, inside the first
# and second stages, and the very last one (the finalize rewrite of kept/ for Parquet, the
# finalized manifest for fsync, which only manifest writes use).
@pytest.mark.parametrize("target", ["parquet", "fsync"])
@pytest.mark.parametrize("share", [0.0, 0.3, 0.7, 1.0])
def test_disk_full_exits_2_and_resume_gives_the_same_result(
    corpus, write_counts, tmp_path, capsys, monkeypatch, target, share
):
    data, pipeline, kept, removed = corpus
    out = tmp_path / "out"
    nth = max(1, round(share * write_counts[target]))
    if target == "parquet":
        fail = EnospcAt(pq.ParquetWriter.write_table, nth)
        monkeypatch.setattr(pq.ParquetWriter, "write_table", lambda self, *a, **k: fail(self, *a, **k))
        real_close = pq.ParquetWriter.close

        def close(self):  # the disk stays full: closing a writer (flushing its footer) fails too
            if fail.calls >= nth:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            real_close(self)

        monkeypatch.setattr(pq.ParquetWriter, "close", close)
    else:
        fail = EnospcAt(os.fsync, nth)
        monkeypatch.setattr(os, "fsync", fail)
    code, err = cli(["run", str(pipeline), "-i", str(data), "-o", str(out), "--quiet", "--jobs", "1"], capsys)
    gc.collect()  # a writer still open would complain now, into the captured stderr
    err += capsys.readouterr().err
    monkeypatch.undo()
    assert fail.calls >= nth, "the injected failure never fired: adjust nth to the pipeline"
    assert_one_line_error(code, err, "No space left on device", "--resume")
    if (out / "manifest.json").exists():
        done = manifest_done(out)  # parses: never a torn manifest
        assert not (out / "kept").exists() or len(done) == 3
    else:
        done = {}
    code, err = cli(["run", str(pipeline), "-i", str(data), "-o", str(out), "--quiet", "--resume"], capsys)
    assert code == 0, err
    after = manifest_done(out)
    for name, entry in done.items():
        assert after[name] == entry, f"{name} was redone"
    assert read_dir(out / "kept").equals(kept)
    assert read_dir(out / "removed").equals(removed)
    assert verify_output(out).ok


def _mount_tmpfs(path: Path, size: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    try:
        result = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True, timeout=20
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0


@pytest.mark.slow  # about 10 s; the injected disk-full failures stay in the default run
def test_real_full_tmpfs_exits_2_then_resumes_after_space_is_freed(tmp_path):
    """A real ENOSPC from the kernel, through a subprocess `curate run`."""
    data = write_corpus(tmp_path / "in", [8000, 8000], seed=5, dup_rate=0.2)
    pipeline = tmp_path / "pipeline.toml"
    pipeline.write_text(PIPELINE)
    reference = tmp_path / "reference"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = [sys.executable, "-m", "curate.cli", "run", str(pipeline), "-i", str(data), "--quiet"]
    assert subprocess.run([*run, "-o", str(reference)], cwd=ROOT, env=env, capture_output=True).returncode == 0
    mount = tmp_path / "tiny"
    if not _mount_tmpfs(mount, "200k"):
        pytest.skip("cannot mount a tmpfs here")
    try:
        out = mount / "out"
        full = subprocess.run([*run, "-o", str(out)], cwd=ROOT, env=env, capture_output=True, text=True)
        assert full.returncode == 2, full.stderr
        assert "No space left on device" in full.stderr and "Traceback" not in full.stderr
        assert not (out / "kept").exists()
        grow = subprocess.run(["mount", "-o", "remount,size=64m", str(mount)], capture_output=True)
        assert grow.returncode == 0, grow.stderr
        resumed = subprocess.run([*run, "-o", str(out), "--resume"], cwd=ROOT, env=env, capture_output=True, text=True)
        assert resumed.returncode == 0, resumed.stderr
        assert read_dir(out / "kept").equals(read_dir(reference / "kept"))
        assert read_dir(out / "removed").equals(read_dir(reference / "removed"))
        assert verify_output(out).ok
    finally:
        subprocess.run(["umount", str(mount)], capture_output=True)
        shutil.rmtree(mount, ignore_errors=True)
