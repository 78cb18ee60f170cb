"""A Dask cluster on loopback whose workers behave like other machines for one local directory.

Each worker runs in a private Linux mount namespace with a fresh empty tmpfs over `hidden`: the
driver and every worker see a different directory under the same path, as separate machines
with the same local path would. Everything else (the repository, other temp dirs, loopback TCP)
is shared, so the workers import this checkout's `curate` and reach test servers such as moto.

Needs `unshare` (util-linux) and the right to mount a tmpfs: root, or unprivileged user
namespaces; tests skip with `pytest.mark.skipif(not can_isolate(), reason=...)`.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Iterator

REPO_ROOT = Path(__file__).resolve().parents[1]
SCHEDULER_TIMEOUT = 30.0
WORKERS_TIMEOUT = 60.0
STOP_GRACE = 5.0  # SIGTERM, then SIGKILL: a dask worker closes in well under a second here
LOG_TAIL = 3000  # characters of each log quoted in a startup error

# Mount a fresh tmpfs over $1, then become the command after it ($2...): with `exec` the worker
# *is* the process we started, so killing its process group leaves nothing behind.
_MOUNT_AND_EXEC = 'mount -t tmpfs tmpfs "$1" && shift && exec "$@"'


def _namespace_prefixes() -> list[list[str]]:
    """`unshare` invocations to try: a plain mount namespace (root with CAP_SYS_ADMIN), else one
    inside a user namespace mapping us to root (unprivileged users, or root in a container
    without CAP_SYS_ADMIN, on hosts that allow user namespaces)."""
    plain = ["unshare", "--mount", "--propagation", "private", "--"]
    mapped = ["unshare", "--user", "--map-root-user", "--mount", "--propagation", "private", "--"]
    return [plain, mapped] if os.geteuid() == 0 else [mapped]  # plain needs root


@functools.lru_cache(maxsize=1)
def _isolating_prefix() -> tuple[str, ...] | None:
    """The first `unshare` prefix that mounts a private tmpfs invisible to this process."""
    if shutil.which("unshare") is None:
        return None
    with tempfile.TemporaryDirectory(prefix="isolation-probe-") as probe:
        for prefix in _namespace_prefixes():
            command = [*prefix, "sh", "-c", 'mount -t tmpfs tmpfs "$1" && touch "$1/inside"', "sh", probe]
            try:
                done = subprocess.run(command, capture_output=True, timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                continue
            if done.returncode == 0 and not os.path.exists(os.path.join(probe, "inside")):
                return tuple(prefix)
    return None


def can_isolate() -> bool:
    """True when this machine can give a process its own tmpfs over a directory (checked once)."""
    return _isolating_prefix() is not None


def _pdeathsig_prefix() -> list[str]:
    """`setpriv --pdeathsig KILL` when available: the scheduler and workers die with the test
    process even if it is SIGKILLed and never reaches the cleanup (it survives the execs of
    unshare and sh, which keep the pid)."""
    return ["setpriv", "--pdeathsig", "KILL", "--"] if shutil.which("setpriv") else []


def _tail(path: Path) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"(no log: {exc})"
    return text[-LOG_TAIL:] if text else "(empty)"


def _logs(paths: list[Path]) -> str:
    return "\n".join(f"--- {p.name} (last {LOG_TAIL} chars) ---\n{_tail(p)}" for p in paths)


def _start(command: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
    # cwd away from the checkout: `python -m` puts the cwd first on sys.path, which would hide
    # a missing PYTHONPATH entry.
    with open(log, "wb") as out:
        # A session of its own: os.killpg reaches the process and anything it spawned.
        return subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=log.parent,
            start_new_session=True,
        )


def _stop(processes: list[subprocess.Popen]) -> None:
    """SIGTERM every process group, then SIGKILL those still alive after STOP_GRACE."""
    for proc in processes:
        with suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE
    for proc in processes:
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
        # The group may hold children (a nanny's worker) even when the leader has exited.
        with suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _read_scheduler_address(scheduler_file: Path, proc: subprocess.Popen, logs: list[Path]) -> str:
    deadline = time.monotonic() + SCHEDULER_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the Dask scheduler exited with code {proc.returncode} while starting\n{_logs(logs)}")
        with suppress(OSError, ValueError):  # not written yet, or written half
            return json.loads(scheduler_file.read_text())["address"]
        time.sleep(0.05)
    raise RuntimeError(f"the Dask scheduler did not start within {SCHEDULER_TIMEOUT:g} s\n{_logs(logs)}")


def _wait_for_workers(address: str, workers: int, procs: list[subprocess.Popen], logs: list[Path]) -> None:
    """Bounded wait for `workers` workers; a worker process that dies ends the wait at once."""
    from distributed import Client

    deadline = time.monotonic() + WORKERS_TIMEOUT
    with Client(address, timeout=SCHEDULER_TIMEOUT) as client:
        while True:
            dead = [(i, p.returncode) for i, p in enumerate(procs) if p.poll() is not None]
            if dead:
                i, code = dead[0]
                raise RuntimeError(f"Dask worker isolated-{i} exited with code {code} while starting\n{_logs(logs)}")
            left = deadline - time.monotonic()
            if left <= 0:
                joined = len(client.scheduler_info().get("workers", {}))
                raise RuntimeError(
                    f"only {joined} of {workers} Dask workers joined within {WORKERS_TIMEOUT:g} s\n{_logs(logs)}"
                )
            try:
                client.wait_for_workers(workers, timeout=min(1.0, left))
                return
            except TimeoutError:
                continue


def worker_environment(env: dict[str, str] | None = None) -> dict[str, str]:
    """os.environ plus `env`, with the repository root first on PYTHONPATH so workers import the
    same `curate` as the test process."""
    merged = {**os.environ, **(env or {})}
    paths = [p for p in merged.get("PYTHONPATH", "").split(os.pathsep) if p]
    merged["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), *(p for p in paths if Path(p).resolve() != REPO_ROOT)])
    return merged


@contextmanager
def isolated_cluster(
    hidden: Path,
    workers: int = 2,
    env: dict[str, str] | None = None,
    *,
    nanny: bool = False,
    log_dir: Path | None = None,
) -> Iterator[str]:
    """A scheduler and `workers` one-thread workers on 127.0.0.1; each worker sees its own empty
    tmpfs at `hidden` (created here if missing). Yields the scheduler address tcp://127.0.0.1:PORT.

    `nanny=True` starts workers under a nanny as `dask worker` does by default (one more process
    each, slower to start). Logs go to `log_dir` when given (kept), else to a temp dir removed on
    exit; a startup error quotes their tails. Processes end on exit, also when the body raised.
    """
    prefix = _isolating_prefix()
    if prefix is None:
        raise RuntimeError(
            "cannot isolate workers here: 'unshare --mount' with a tmpfs mount is not permitted (guard tests with can_isolate())"
        )
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    hidden = Path(hidden).resolve()
    hidden.mkdir(parents=True, exist_ok=True)
    own_logs = log_dir is None
    logs_root = Path(tempfile.mkdtemp(prefix="isolated-cluster-")) if own_logs else Path(log_dir)
    logs_root.mkdir(parents=True, exist_ok=True)
    if logs_root.resolve().is_relative_to(hidden):
        raise ValueError(
            f"log_dir {logs_root} is under the hidden directory {hidden}: workers would not see their own logs"
        )
    python = sys.executable
    guard = _pdeathsig_prefix()
    scheduler_log = logs_root / "scheduler.log"
    worker_logs = [logs_root / f"worker-{i}.log" for i in range(workers)]
    scheduler_file = logs_root / "scheduler.json"
    processes: list[subprocess.Popen] = []
    try:
        scheduler = _start(
            [
                *guard,
                python,
                "-m",
                "distributed.cli.dask_scheduler",
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--no-dashboard",
                "--scheduler-file",
                str(scheduler_file),
            ],
            scheduler_log,
            worker_environment(),
        )
        processes.append(scheduler)
        address = _read_scheduler_address(scheduler_file, scheduler, [scheduler_log])
        worker_env = worker_environment(env)
        worker_procs = []
        for i in range(workers):
            scratch = logs_root / f"worker-{i}-scratch"
            command = [
                python, "-m", "distributed.cli.dask_worker", address,
                "--host", "127.0.0.1", "--nthreads", "1", "--nworkers", "1", "--no-dashboard",
                "--nanny" if nanny else "--no-nanny", "--name", f"isolated-{i}",
                "--local-directory", str(scratch), "--death-timeout", "30",
            ]  # fmt: skip
            proc = _start(
                [*guard, *prefix, "sh", "-c", _MOUNT_AND_EXEC, "sh", str(hidden), *command], worker_logs[i], worker_env
            )
            processes.append(proc)
            worker_procs.append(proc)
        _wait_for_workers(address, workers, worker_procs, [scheduler_log, *worker_logs])
        yield address
    finally:
        _stop(processes[1:])  # workers first: a worker without its scheduler retries and logs
        _stop(processes[:1])
        if own_logs:
            shutil.rmtree(logs_root, ignore_errors=True)
