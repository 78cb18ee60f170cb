"""Nothing lost, whatever the user does: one writer per output, an overwrite that cannot half
happen, a count check before an output is marked finished, and hostile inputs kept in bounds
with one line and exit 2. Real processes where the case is about processes."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import cli, random_texts, write_shards

from curate.commands.inspect import verify_output
from curate.output.lock import OutputLock

EXACT_MINHASH = '[[stage]]\nkind = "exact"\n[[stage]]\nkind = "minhash"\nthreshold = 0.8\n'
ROOT = Path(__file__).resolve().parents[1]


def curate(*args: str, env: dict | None = None, **kwargs) -> subprocess.CompletedProcess:
    """The real CLI in a new process."""
    full = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "curate.cli", *args], capture_output=True, text=True, env=full, timeout=240, **kwargs
    )


def one_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def tree_digest(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def work(tmp_path):
    data = write_shards(tmp_path / "in", random_texts(3000, seed=3))
    pipeline = tmp_path / "p.toml"
    pipeline.write_text(EXACT_MINHASH)
    return tmp_path, data, pipeline


# --- one writer per output ----------------------------------------------------------------------


@pytest.mark.parametrize("flags", [[], ["--overwrite"], ["--resume"]])
def test_a_second_run_on_a_locked_output_exits_2_naming_the_holder(work, flags):
    tmp, data, pipeline = work
    out = tmp / "out"
    with OutputLock(out):  # this process holds the output, as a running curate would
        done = curate("run", str(pipeline), "-i", str(data), "-o", str(out), "--quiet", *flags)
    assert done.returncode == 2, done.stderr
    line = one_line(done.stderr)
    assert "another curate run is writing this output" in line and f"pid {os.getpid()}" in line
    assert not (out / "manifest.json").exists(), "the refused run wrote nothing"


def test_two_runs_started_together_one_wins_and_the_output_verifies(work):
    tmp, data, pipeline = work
    out = tmp / "out"
    argv = [
        sys.executable,
        "-m",
        "curate.cli",
        "run",
        str(pipeline),
        "-i",
        str(data),
        "-o",
        str(out),
        "--quiet",
        "--overwrite",
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    first = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True, env=env)
    second = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True, env=env)
    codes = sorted([first.wait(240), second.wait(240)])
    errs = first.stderr.read() + second.stderr.read()
    assert codes in ([0, 0], [0, 2]), errs  # both finish one after the other, or the later exits 2
    if codes == [0, 2]:
        assert "another curate run is writing this output" in errs
    assert verify_output(out).ok


def test_a_dead_runs_lock_is_taken_over(work):
    tmp, data, pipeline = work
    out = tmp / "out"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"from curate.output.lock import OutputLock; import time; OutputLock({str(out)!r}).acquire(); print('held', flush=True); time.sleep(600)",
        ],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert holder.stdout.readline().strip() == "held"
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    done = curate("run", str(pipeline), "-i", str(data), "-o", str(out), "--quiet")
    assert done.returncode == 0, done.stderr
    assert verify_output(out).ok


# --- overwrite that cannot half-happen ----------------------------------------------------------


def test_against_itself_with_overwrite_leaves_the_output_byte_identical(work):
    tmp, data, pipeline = work
    out = tmp / "out"
    assert curate("dedup", "-i", str(data), "-o", str(out), "--method", "exact", "--index", "--quiet").returncode == 0
    before = tree_digest(out)
    done = curate(
        "dedup", "-i", str(data), "-o", str(out), "--against", str(out), "--method", "exact", "--overwrite", "--quiet"
    )
    assert done.returncode == 2 and "--against reads" in one_line(done.stderr)
    assert tree_digest(out) == before


def test_a_failing_overwrite_never_leaves_a_finished_manifest(work, monkeypatch, capsys):
    tmp, data, pipeline = work
    out = tmp / "out"
    assert cli(["run", str(pipeline), "-i", str(data), "-o", str(out), "--quiet"], capsys)[0] == 0
    import curate.output.local as local

    real = local.remove_path
    calls = []

    def fail_on_the_second(path):
        calls.append(path)
        if len(calls) == 2:
            raise PermissionError(13, "Permission denied", str(path))
        real(path)

    monkeypatch.setattr(local, "remove_path", fail_on_the_second)
    code, err = cli(["run", str(pipeline), "-i", str(data), "-o", str(out), "--quiet", "--overwrite"], capsys)
    assert code == 2 and "cannot write" in err
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest.get("finalized") is False, "a reader must not take the half-cleared output for finished"
    code, err = cli(["inspect", str(out)], capsys)
    assert code == 2 and "not finished" in err
    code, err = cli(["run", str(pipeline), "-i", str(data), "-o", str(out), "--quiet"], capsys)
    assert code == 2 and "--overwrite of this output did not finish" in err
    monkeypatch.setattr(local, "remove_path", real)
    assert cli(["run", str(pipeline), "-i", str(data), "-o", str(out), "--quiet", "--overwrite"], capsys)[0] == 0
    assert verify_output(out).ok


def test_overwrite_keeps_files_curate_did_not_write_and_says_so(work, capsys):
    tmp, data, pipeline = work
    out = tmp / "out"
    assert cli(["run", str(pipeline), "-i", str(data), "-o", str(out), "--quiet"], capsys)[0] == 0
    (out / "NOTES.md").write_text("mine")
    code, err = cli(["run", str(pipeline), "-i", str(data), "-o", str(out), "--quiet", "--overwrite"], capsys)
    assert code == 0 and "NOTES.md" in err and "did not write" in err
    assert (out / "NOTES.md").read_text() == "mine"


# --- a count check before success ---------------------------------------------------------------


def test_finalize_refuses_counts_that_do_not_add_up(work, monkeypatch, capsys):
    tmp, data, pipeline = work
    out = tmp / "out"
    import curate.output.local as local

    real = local.count_part_rows
    monkeypatch.setattr(
        local, "count_part_rows", lambda d: real(d) - (1 if Path(d).name == "kept" else 0)
    )  # a row "lost"
    code, err = cli(["run", str(pipeline), "-i", str(data), "-o", str(out), "--quiet"], capsys)
    assert code == 1 and "does not add up" in err
    assert json.loads((out / "manifest.json").read_text())["finalized"] is False


def test_verify_reports_a_stage_whose_ledger_differs_from_its_count(work, capsys):
    tmp, data, pipeline = work
    out = tmp / "out"
    assert cli(["run", str(pipeline), "-i", str(data), "-o", str(out), "--quiet"], capsys)[0] == 0
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["stages"][1]["rows_removed"] += 1
    manifest["stages"][2]["rows_removed"] -= 1  # the total still adds up; the per-stage count does not
    (out / "manifest.json").write_text(json.dumps(manifest))
    report = verify_output(out)
    assert not report.ok and any("ledger rows" in p for p in report.problems)


# --- bounded inputs ------------------------------------------------------------------------------


def test_json_lines_with_a_3_mib_line_parse(tmp_path):
    data = tmp_path / "in" / "a.jsonl"
    data.parent.mkdir()
    data.write_text(
        json.dumps({"id": "a", "text": "word " * (600 << 10)}) + "\n" + json.dumps({"id": "b", "text": "short"}) + "\n"
    )
    done = curate("dedup", "-i", str(data.parent), "-o", str(tmp_path / "out"), "--method", "exact", "--quiet")
    assert done.returncode == 0, done.stderr


def test_a_line_free_compressed_file_is_refused_in_bounded_memory(tmp_path):
    data = tmp_path / "in" / "huge.jsonl.gz"
    data.parent.mkdir()
    with gzip.open(data, "wb", compresslevel=9) as handle:  # 1 GiB of one line, about 1 MB on disk
        block = b"a" * (1 << 20)
        for _ in range(1024):
            handle.write(block)
    # The run's own peak: a wrapper process whose only child is the run (this test process's
    # RUSAGE_CHILDREN would include every earlier test's children).
    wrapper = (
        "import resource, subprocess, sys; done = subprocess.run(sys.argv[1:]); "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(done.returncode)"
    )
    argv = ["dedup", "-i", str(data.parent), "-o", str(tmp_path / "out"), "--method", "exact", "--quiet"]
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", wrapper, sys.executable, "-m", "curate.cli", *argv],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=240,
    )
    seconds = time.perf_counter() - started
    line = one_line(done.stderr)
    assert done.returncode == 2 and "huge.jsonl.gz" in line and "line 1 is longer than 64 MiB" in line
    peak_mib = int(done.stdout.split()[-1]) / 1024
    assert peak_mib < 1024, f"peak RSS {peak_mib:.0f} MiB"
    assert seconds < 60
    assert not (tmp_path / "out").exists(), "exit 2 before the first stage leaves no output behind"


@pytest.mark.parametrize("column", ["id", "source"])
def test_invalid_utf8_in_any_string_column_is_exit_2_naming_it(tmp_path, column):
    bad = pa.array([b"ok", b"\xff\xfe bad"], pa.binary()).cast(pa.string(), safe=False)
    good = pa.array(["a", "b"])
    table = pa.table(
        {
            "id": bad if column == "id" else good,
            "text": ["one text", "another"],
            "source": bad if column == "source" else good,
        }
    )
    (tmp_path / "in").mkdir()
    pq.write_table(table, tmp_path / "in" / "s.parquet")
    done = curate("dedup", "-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--method", "exact", "--quiet")
    line = one_line(done.stderr)
    assert done.returncode == 2 and f"column '{column}'" in line and "UTF-8" in line and "s.parquet" in line
    assert not (tmp_path / "out").exists()


# --- sane parallelism ----------------------------------------------------------------------------


@pytest.mark.slow  # 9-10 s: two CLI runs; test_jobs_zero_is_refused keeps the --jobs checks in the default run
def test_jobs_above_the_cores_is_capped_and_gives_the_same_output(work):
    tmp, data, pipeline = work
    started = time.perf_counter()
    many = curate("run", str(pipeline), "-i", str(data), "-o", str(tmp / "many"), "--quiet", "--jobs", "1000")
    assert many.returncode == 0, many.stderr
    assert time.perf_counter() - started < 120
    assert "--jobs 1000 is more than" in many.stderr
    two = curate("run", str(pipeline), "-i", str(data), "-o", str(tmp / "two"), "--quiet", "--jobs", "2")
    assert two.returncode == 0
    for name in ("kept", "removed"):
        assert pq.read_table(tmp / "many" / name).equals(pq.read_table(tmp / "two" / name))


def test_jobs_zero_is_refused(work):
    tmp, data, pipeline = work
    done = curate("run", str(pipeline), "-i", str(data), "-o", str(tmp / "out"), "--quiet", "--jobs", "0")
    assert done.returncode == 2 and "--jobs must be at least 1" in one_line(done.stderr)


def test_the_local_pool_starts_no_more_processes_than_tasks():
    from curate.engine.executors import LocalExecutor

    with LocalExecutor(2) as executor:
        assert (
            executor.map(os.getpid.__class__.__call__ if False else _pid, [0]) and executor._pool is None
        )  # one item runs here
        pids = executor.map(_pid, [0, 1])
        assert executor._pool_size == 2 and len(pids) == 2


def _pid(_: int) -> int:
    return os.getpid()


from tests.executor_parity import dask_executors  # noqa: E402,F401

# --- every failure in its class ------------------------------------------------------------------


def _serve(reply: bytes | None) -> tuple[socket.socket, int]:
    """A loopback server that accepts and then says nothing (reply None) or sends `reply`."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()

    def loop() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            if reply is not None:
                conn.sendall(reply)

    threading.Thread(target=loop, daemon=True).start()
    return server, server.getsockname()[1]


@pytest.mark.parametrize(
    "reply", [None, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok" * 64], ids=["silent", "http"]
)
def test_a_scheduler_that_is_not_dask_is_exit_2(reply, dask_executors):
    from curate.engine.executors import DaskExecutor
    from curate.errors import UsageError

    server, port = _serve(reply)
    try:
        started = time.perf_counter()
        with pytest.raises(UsageError, match="does not answer as a Dask scheduler|cannot reach the Dask scheduler"):
            DaskExecutor.connect(f"tcp://127.0.0.1:{port}", timeout=1.0)
        assert time.perf_counter() - started < 30
    finally:
        server.close()
    # The handshake left hanging must not become the process's default client: a library user's
    # executor made before it still works (it hung in as_completed when it did).
    assert dask_executors[1].map(abs, [-1, -2]) == [1, 2]


def test_a_short_write_is_exit_2_cannot_write(work):
    tmp, data, pipeline = work
    limit = lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (64 << 10, 64 << 10))  # noqa: E731  (ulimit -f 64)
    done = curate(
        "dedup", "-i", str(data), "-o", str(tmp / "out"), "--method", "minhash", "--index", "--quiet", preexec_fn=limit
    )
    line = one_line(done.stderr)
    assert done.returncode == 2 and "cannot write" in line


@pytest.mark.parametrize("content", ["[]", '{"finalized": true}', "not json"])
@pytest.mark.parametrize("command", ["verify", "inspect", "export", "against"])
def test_a_manifest_of_the_wrong_shape_is_not_a_curate_output(work, content, command):
    tmp, data, pipeline = work
    out = tmp / "out"
    out.mkdir()
    (out / "manifest.json").write_text(content)
    args = {
        "verify": ["verify", str(out)],
        "inspect": ["inspect", str(out)],
        "export": ["export", str(out)],
        "against": [
            "dedup",
            "-i",
            str(data),
            "-o",
            str(tmp / "new"),
            "--method",
            "exact",
            "--against",
            str(out),
            "--quiet",
        ],
    }[command]
    done = curate(*args)
    assert done.returncode == 2, done.stderr
    assert "not a curate output" in one_line(done.stderr)


def test_a_symlink_loop_as_input_is_exit_2(tmp_path):
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    done = curate("dedup", "-i", str(tmp_path / "loop"), "-o", str(tmp_path / "out"), "--method", "exact", "--quiet")
    assert done.returncode == 2 and "points back to itself" in one_line(done.stderr)


def test_http_input_is_refused_with_the_supported_schemes(tmp_path):
    done = curate(
        "dedup",
        "-i",
        "http://127.0.0.1:9/data/part.parquet?sig=abc",
        "-o",
        str(tmp_path / "out"),
        "--method",
        "exact",
        "--quiet",
    )
    line = one_line(done.stderr)
    assert done.returncode == 2 and "http:// input is not supported" in line and "s3://" in line
    assert "http://127.0.0.1:9/data/part.parquet?sig=abc" in line, "the URL is quoted as given"


def test_credentials_in_urls_are_masked_in_messages_and_manifests(tmp_path):
    from curate.errors import UsageError, redact
    from curate.output.manifest import write_manifest

    assert redact("s3://user:SECRET@host/b/x and https://a:b@c/d") == "s3://user:***@host/b/x and https://a:***@c/d"
    assert "SECRET" not in str(UsageError("cannot list s3://u:SECRET@h/b", path="s3://u:SECRET@h/b", fix="x"))
    write_manifest(tmp_path, {"input": {"files": [{"path": "s3://key:SECRET@minio/b/p.parquet"}]}})
    assert "SECRET" not in (tmp_path / "manifest.json").read_text()


# --- errors before writes, Ctrl-C, small things -------------------------------------------------


def test_a_bad_input_leaves_no_output_and_the_rerun_needs_no_overwrite(tmp_path):
    data = write_shards(tmp_path / "in", ["a b c", "d e f", "g h i"], shards=1, ids=["x", "y", "x"])
    out = tmp_path / "out"
    done = curate("dedup", "-i", str(data), "-o", str(out), "--method", "exact", "--quiet")
    assert done.returncode == 2 and "duplicate id" in one_line(done.stderr)
    assert not out.exists()
    write_shards(tmp_path / "in", ["a b c", "d e f", "g h i"], shards=1, ids=["x", "y", "z"])
    assert curate("dedup", "-i", str(data), "-o", str(out), "--method", "exact", "--quiet").returncode == 0


def _sigint_as_in_a_terminal() -> None:
    """A foreground command in a terminal gets SIGINT at its default, whatever pytest got: a
    test run started in the background of a script inherits SIGINT ignored (the shell ignores
    it for background jobs), and so would the child, which then rightly ignores a Ctrl-C."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def _sigint_ignored() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _start_cli(args: list[str], sigint: Callable[[], None]) -> subprocess.Popen:
    """The real CLI in its own process group (a terminal's Ctrl-C reaches the whole group),
    with SIGINT set by `sigint` before it starts."""
    return subprocess.Popen(
        [sys.executable, "-m", "curate.cli", *args],
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        start_new_session=True,
        preexec_fn=sigint,
    )


@pytest.mark.slow  # 10-14 s
def test_a_run_started_with_ctrl_c_ignored_keeps_ignoring_it(tmp_path):
    """A background job of a script starts with SIGINT ignored; a Ctrl-C in the terminal must not
    stop it, whichever step of the run it lands in (it once did while a pool was starting)."""
    data = write_shards(tmp_path / "in", random_texts(40_000, seed=5), shards=4)
    out = tmp_path / "out"
    process = _start_cli(
        ["dedup", "-i", str(data), "-o", str(out), "--method", "minhash", "--quiet"], sigint=_sigint_ignored
    )
    deadline = time.monotonic() + 120
    sent = 0
    while process.poll() is None and time.monotonic() < deadline:
        if (out / "manifest.json").exists():
            os.killpg(process.pid, signal.SIGINT)  # again and again, through every step of the run
            sent += 1
        time.sleep(0.02)
    err = process.stderr.read()
    assert process.wait(120) == 0, err
    assert sent > 0 and verify_output(out).ok


def test_ctrl_c_prints_one_line_with_the_resume_command(tmp_path):
    data = write_shards(tmp_path / "in", random_texts(40_000, seed=5), shards=4)
    pipeline = tmp_path / "p.toml"
    pipeline.write_text(
        '[[stage]]\nkind = "minhash"\n[[stage]]\nkind = "embed"\nmodel = "hashing"\n[[stage]]\nkind = "prototypes"\nclusters = 20\n'
    )
    out = tmp_path / "out"
    process = _start_cli(
        ["run", str(pipeline), "-i", str(data), "-o", str(out), "--quiet"], sigint=_sigint_as_in_a_terminal
    )
    deadline = time.monotonic() + 120
    while not (out / "manifest.json").exists() and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.01)
    # At once: the first map is starting the fork server then, and a Ctrl-C in that window was
    # once ignored (the run went on to exit 0); the rest of the run takes seconds.
    os.killpg(process.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole group
    err = process.stderr.read()
    code = process.wait(120)
    assert code == 130, err
    line = one_line(err)
    assert line.startswith("interrupted; continue with: curate run") and line.endswith("--resume")
    resumed = curate("run", str(pipeline), "-i", str(data), "-o", str(out), "--quiet", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert verify_output(out).ok


def test_an_empty_pipeline_says_so(tmp_path):
    data = write_shards(tmp_path / "in", ["a b", "c d"], shards=1)
    pipeline = tmp_path / "empty.toml"
    pipeline.write_text("seed = 1\n")
    done = curate("run", str(pipeline), "-i", str(data), "-o", str(tmp_path / "out"), "--quiet")
    assert done.returncode == 0 and "no stages" in done.stderr


def test_more_pools_than_rows_is_exit_2(tmp_path):
    data = write_shards(tmp_path / "in", random_texts(300, seed=2), shards=1)
    pipeline = tmp_path / "p.toml"
    pipeline.write_text(
        '[[stage]]\nkind = "embed"\nmodel = "hashing"\n[[stage]]\nkind = "prototypes"\nclusters = 4\n[[stage]]\nkind = "pools"\npools = 100000\n'
    )
    done = curate("run", str(pipeline), "-i", str(data), "-o", str(tmp_path / "out"), "--quiet")
    line = one_line(done.stderr)
    assert done.returncode == 2 and "100000 pools for" in line and "rows" in line
