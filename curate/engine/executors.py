"""Where tasks run: this process, a pool of processes on this machine, or a Dask cluster.

An executor does one thing: `map(fn, items)` with the results in item order. The runner and
the stages express all their parallel work as such maps over work units (datatrove's split:
the executor is separate from the steps), so the same pipeline gives the same output on any
executor and any worker count. `fn` is pickled once per map (cloudpickle) and unpickled once
per worker process, so a fitted stage or a loaded model is not shipped with every item.
"""

from __future__ import annotations

import hashlib
import logging
import os
import signal
import time
from collections import OrderedDict
from concurrent.futures import FIRST_EXCEPTION, Future, ProcessPoolExecutor, wait
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Protocol, Sequence

import cloudpickle

from curate.engine.progress import QUIET, Progress
from curate.errors import OutputError, UsageError, first_line
from curate.runtime import _SLOT_VAR, allocator_environment, cpu_count, tune_allocator

CONNECT_TIMEOUT = 10.0
WAIT_FOR_WORKERS = 120.0
_THREAD_VARS = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "POLARS_MAX_THREADS",
    "RAYON_NUM_THREADS",
    "NUMEXPR_NUM_THREADS",
)


class Executor(Protocol):
    """What the runner needs from an executor."""

    workers: int  # tasks that can run at once
    threads_per_task: int  # cores one task may use (threads inside a task)
    busy_seconds: float  # wall time spent inside map(), for the driver-vs-parallel split

    def map(
        self,
        fn: Callable[[Any], Any],
        items: Sequence[Any],
        *,
        progress: Progress = QUIET,
        label: str | None = None,
        sizes: Sequence[int] | None = None,
    ) -> list[Any]: ...

    def check_storage(
        self, work_dir: str, input_path: str, *, work_via_store: bool = False, input_via_store: bool = False
    ) -> None: ...

    def shares_directory(self, directory: str) -> bool: ...

    def run_everywhere(self, fn: Callable[..., Any], *args: Any) -> None: ...

    def preload_in_workers(self, module: str) -> None: ...

    def start_early(self, preload: Sequence[str] = ()) -> None: ...

    def describe(self) -> list[str]: ...

    def close(self) -> None: ...


# ---------------------------------------------------------------------------------------
# Worker side: a per-process cache of unpickled functions.

_FUNCTIONS: OrderedDict[str, Callable[[Any], Any]] = OrderedDict()


def _digest(payload: bytes) -> str:
    return hashlib.blake2b(payload, digest_size=16).hexdigest()


def invoke(payload: bytes, digest: str, item: Any) -> Any:
    """Run one item: the function is unpickled once per process and kept for the next items."""
    fn = _FUNCTIONS.get(digest)
    if fn is None:
        tune_allocator()  # a Dask worker process runs no initializer of ours
        fn = cloudpickle.loads(payload)
        _FUNCTIONS[digest] = fn
        while len(_FUNCTIONS) > 4:
            _FUNCTIONS.popitem(last=False)
    return fn(item)


class _Timed:
    """Adds the wall time of each map to `busy_seconds`."""

    busy_seconds: float = 0.0

    def _timed(self, started: float) -> None:
        self.busy_seconds += time.perf_counter() - started


# ---------------------------------------------------------------------------------------
# This machine.


class LocalExecutor(_Timed):
    """`--jobs N`: N worker processes on this machine (`--jobs 1`: everything in this process).

    Processes, not threads: MinHash shingling, Arrow conversion and tokenizers hold the GIL for
    part of their time. Workers are never forked from this process (polars and torch keep
    thread pools that a fork would copy in a locked state): they come from a fork server that
    imported curate's task modules and nothing else, so a pool starts in about 0.05 s instead
    of 1.3 s for spawned workers (measured: 2 workers, 3 pools each way). A pool is started
    once per run and reused by every map; each worker caps its native thread pools at
    cores / N so N workers never oversubscribe, and exits when the driver does (even after a
    `kill -9`). As with any process pool, a script that runs
    a pipeline must guard its entry point with `if __name__ == "__main__":`."""

    def __init__(self, jobs: int | None = None):
        cores = cpu_count()
        self.notes: list[str] = []  # one-line remarks for the user (a capped --jobs)
        jobs = cores if jobs is None else jobs
        if jobs < 1:
            raise UsageError(
                f"--jobs must be at least 1, got {jobs}", fix="e.g. --jobs 2, or leave it out to use every core"
            )
        if jobs > cores:  # more processes than cores only thrash (and each costs memory)
            self.notes.append(
                f"--jobs {jobs} is more than the {cores} cores this process may use: running {cores} worker processes"
            )
            jobs = cores
        self.workers = jobs
        self.threads_per_task = max(1, cores // jobs)
        self.busy_seconds = 0.0
        self.preload: list[str] = []  # modules the fork server imports once for every worker
        self._pool: ProcessPoolExecutor | None = None
        self._pool_size = 0

    def _get_pool(self, tasks: int) -> ProcessPoolExecutor:
        """A pool of at most one process per task: a map over 3 units starts 3 processes, not
        --jobs of them (a later, larger map grows it)."""
        size = max(1, min(self.workers, tasks))
        if self._pool is not None and self._pool_size < size:
            self._pool.shutdown(wait=True)
            self._pool = None
        if self._pool is None:
            context = _process_context(self.preload)
            self._pool_size = size
            self._pool = ProcessPoolExecutor(
                max_workers=size,
                mp_context=context,
                initializer=_init_worker_process,
                initargs=(self.threads_per_task, os.getpid(), dict(os.environ), context.Value("i", 0)),
            )
        return self._pool

    def map(
        self,
        fn: Callable[[Any], Any],
        items: Sequence[Any],
        *,
        progress: Progress = QUIET,
        label: str | None = None,
        sizes: Sequence[int] | None = None,
    ) -> list[Any]:
        items = list(items)
        started = time.perf_counter()
        sizes = list(sizes) if sizes is not None else [1] * len(items)
        try:
            with progress.task(label or "working", total=sum(sizes)) as bar:
                if self.workers == 1 or len(items) <= 1:
                    results = []
                    for item, size in zip(items, sizes):
                        results.append(fn(item))
                        bar.advance(size)
                    return results
                payload = cloudpickle.dumps(fn)
                digest = _digest(payload)
                with _ctrl_c_deferred():
                    pool = self._get_pool(len(items))
                    futures = [pool.submit(invoke, payload, digest, item) for item in items]
                return _gather(futures, sizes, bar)
        finally:
            self._timed(started)

    def check_storage(
        self, work_dir: str, input_path: str, *, work_via_store: bool = False, input_via_store: bool = False
    ) -> None:
        """Every worker is on this machine: it sees what the driver sees."""

    def shares_directory(self, directory: str) -> bool:
        return True

    def run_everywhere(self, fn: Callable[..., Any], *args: Any) -> None:
        """Every worker runs on this machine: once, here."""
        fn(*args)

    def preload_in_workers(self, module: str) -> None:
        """Import `module` once in the fork server rather than in every worker (for a run that
        touches an object store: s3fs and botocore cost ~0.3 s CPU per process to import). Takes
        effect for a pool started after the call."""
        if module not in self.preload:
            self.preload.append(module)

    def start_early(self, preload: Sequence[str] = ()) -> None:
        """Start the fork server now, with `preload` added to its imports, while the driver
        still imports and scans the input.

        Its preload (curate's task modules, pandas) costs about 0.9 s of one core, and started
        at the first map all of it was wall time before any task ran. Started by the command
        line before it imports the pipeline, `curate dedup --method minhash` on the bundled
        6,000-row demo took 2.60 s instead of 3.00 s (median of 6 alternating runs each, 2-core
        AMD EPYC); on a 201 MB run the difference is within the noise. Modules named by
        `preload_in_workers` after this call are imported by each worker instead."""
        for module in preload:
            self.preload_in_workers(module)
        if self.workers > 1:
            _process_context(self.preload)

    def describe(self) -> list[str]:
        if self.workers == 1:
            return ["local: 1 process (serial)"]
        return [f"local: {self.workers} worker processes x {self.threads_per_task} thread(s)"]

    def close(self, *, stop_running: bool = False) -> None:
        """Shut the pool down; `stop_running` (Ctrl-C, an error): end the running tasks now
        instead of waiting for them (every task's output is written under a temp name)."""
        if self._pool is not None:
            processes = list((getattr(self._pool, "_processes", None) or {}).values())
            manager = getattr(self._pool, "_executor_manager_thread", None)
            if stop_running:
                for process in processes:
                    process.terminate()
            self._pool.shutdown(wait=not stop_running, cancel_futures=True)
            if stop_running:
                # Wait (briefly) for them to be gone: a worker still starting when the driver
                # exits finds the pool's semaphores unlinked and prints a traceback. And for the
                # pool's manager thread: while it is still closing its wake-up pipe, the
                # interpreter's exit hook may write to that pipe and print an ignored
                # "Bad file descriptor" traceback under the one-line error.
                deadline = time.monotonic() + 5
                for process in processes:
                    process.join(max(0.0, deadline - time.monotonic()))
                if manager is not None:
                    manager.join(max(0.0, deadline - time.monotonic()))
            self._pool = None

    def __enter__(self) -> LocalExecutor:
        return self

    def __exit__(self, exc_type: type | None, *exc: object) -> None:
        self.close(stop_running=exc_type is not None)


def _process_context(preload: Sequence[str] = ()):
    """A fork server preloaded with the task modules where the platform has one, else spawn."""
    import multiprocessing

    if "forkserver" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("forkserver")
        # pandas too (skipped if absent): pyarrow imports it on a process's first numpy ->
        # Arrow conversion, 0.2-0.4 s CPU in every worker of every run (measured); imported
        # once in the fork server, the workers inherit it.
        context.set_forkserver_preload(["curate.engine.tasks", "pandas", *preload])
        _start_fork_server_deaf_to_ctrl_c()
        return context
    return multiprocessing.get_context("spawn")


@contextmanager
def _ctrl_c_deferred() -> Iterator[None]:
    """Hold a Ctrl-C until the pool's processes are started and registered.

    A KeyboardInterrupt raised inside a process start leaves a worker the pool does not know:
    nobody stops it, and it dies printing a traceback when the driver's semaphores are gone.
    Deferred to the end of the block, the interrupt stops every worker (close(stop_running)).
    A process started with SIGINT ignored (a background job of a script: the shell ignores it
    there) keeps ignoring it: catching it here made such a run stop when a Ctrl-C landed in
    this block, and run on when it landed anywhere else."""
    import threading

    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        yield
        return
    caught: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught:
        raise KeyboardInterrupt


def _start_fork_server_deaf_to_ctrl_c() -> None:
    """Start the fork server with SIGINT blocked, so a Ctrl-C during its preload prints nothing.

    The fork server ignores SIGINT itself only after importing its preload list (seconds);
    a Ctrl-C in that window printed its own traceback beside the driver's one line. A blocked
    signal mask survives fork and exec, so the server holds SIGINT pending until it ignores it
    (which discards it), and the workers it forks ignore it too (`_init_worker_process`).
    Blocked, not ignored, in the driver: an ignored Ctrl-C during the start was lost and the
    run went on to the end (measured: an interrupt sent as the manifest appeared, exit 0);
    a blocked one is delivered when the mask is restored, and the driver stops the run."""
    import threading
    from multiprocessing import forkserver, resource_tracker

    if threading.current_thread() is not threading.main_thread():
        forkserver.ensure_running()
        return
    # The fork server starts the resource tracker first, whose start unblocks SIGINT when it
    # is done (CPython's own guard for that child): start it before blocking.
    resource_tracker.ensure_running()
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        forkserver.ensure_running()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _gather(futures: list[Future], sizes: list[int], bar: Any) -> list[Any]:
    """Results in submission order; progress as they complete; the first error cancels the rest."""
    pending = set(futures)
    size_of = {id(f): s for f, s in zip(futures, sizes)}
    try:
        while pending:
            done, pending = wait(pending, return_when=FIRST_EXCEPTION)
            for future in done:
                if future.exception() is not None:
                    raise future.exception()  # type: ignore[misc]
                bar.advance(size_of[id(future)])
    except BaseException:
        for future in pending:
            future.cancel()
        raise
    return [f.result() for f in futures]


def _init_worker_process(threads: int, driver_pid: int, environ: dict[str, str], counter: Any) -> None:
    """Runs first in each worker: cap native thread pools, and exit when the driver does.

    A `kill -9` of `curate` must not leave workers behind writing into its output or holding
    its stdout open. A worker cannot count on EOF for that: it holds both ends of the pool's
    queues, and the fork server it came from holds its own, so each worker watches the
    driver's pid (a pidfd where Linux has one, else a poll every second). The driver's
    environment is copied in (credentials, offline switches): the fork server that made this
    process may have started before they were set."""
    os.environ.clear()
    os.environ.update(environ)
    with counter.get_lock():
        os.environ[_SLOT_VAR] = str(counter.value)
        counter.value += 1
    for name in _THREAD_VARS:
        os.environ[name] = str(threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # Ctrl-C reaches every process of the terminal's group: the driver handles it (one line and
    # the --resume command) and stops the workers; a worker would print its own traceback.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    tune_allocator()
    try:  # BLAS was loaded by the fork server before these variables were set
        from threadpoolctl import threadpool_limits

        threadpool_limits(threads)
    except ImportError:
        pass
    import threading

    threading.Thread(target=_exit_when_gone, args=(driver_pid,), name="curate-driver-watch", daemon=True).start()


def _exit_when_gone(pid: int) -> None:
    import select

    try:
        fd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        fd = None
    if fd is not None:
        select.select([fd], [], [])  # readable once the process has exited
        os._exit(1)
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            os._exit(1)
        except PermissionError:
            pass
        time.sleep(1.0)


# ---------------------------------------------------------------------------------------
# A Dask cluster.


class DaskExecutor(_Timed):
    """`--workers N` (a LocalCluster on loopback) or `--scheduler ADDR` (a running cluster).

    Workers read and write the same paths as the driver (`check_storage` verifies it), or, for
    an object-store output on workers that do not see the driver's disk, hand files over
    through the store (curate.io.mirror)."""

    def __init__(self, client: Any, *, cluster: Any = None):
        self.client = client
        self.cluster = cluster
        self.busy_seconds = 0.0
        self.threads_per_task = 1
        self._storage_checked: set[tuple[str, str]] = set()

    @classmethod
    def local(cls, workers: int, *, threads_per_worker: int = 1) -> DaskExecutor:
        from distributed import Client, LocalCluster

        if workers < 1:
            raise UsageError(f"--workers must be at least 1, got {workers}", fix="e.g. --workers 2")
        import dask

        # Dask's nanny starts workers with MALLOC_TRIM_THRESHOLD_=64 KiB (to give memory back
        # for its memory monitor), which makes every large NumPy buffer a fresh mmap: this
        # cluster's workers start with curate's thresholds instead (curate.runtime says why).
        with dask.config.set(
            {
                "distributed.nanny.pre-spawn-environ": {
                    **dask.config.get("distributed.nanny.pre-spawn-environ", {}),
                    **allocator_environment(),
                }
            }
        ):
            cluster = LocalCluster(
                n_workers=workers,
                threads_per_worker=threads_per_worker,
                processes=True,
                host="127.0.0.1",
                dashboard_address="127.0.0.1:0",  # a free port: never collide with another cluster
                silence_logs=logging.ERROR,
            )
        try:
            client = Client(cluster)
        except BaseException:
            cluster.close()
            raise
        executor = cls(client, cluster=cluster)
        executor.threads_per_task = threads_per_worker
        return executor

    @classmethod
    def connect(cls, address: str, *, timeout: float = CONNECT_TIMEOUT) -> DaskExecutor:

        client = _connect(address, timeout)
        return cls(client)

    @property
    def workers(self) -> int:
        """Worker threads on the cluster, waiting (bounded) for the first worker to join."""
        workers = self.client.scheduler_info().get("workers", {})
        if not workers:
            try:
                self.client.wait_for_workers(1, timeout=WAIT_FOR_WORKERS)
            except TimeoutError:
                raise UsageError(
                    f"no Dask worker joined the scheduler at {self.client.scheduler.address} within {WAIT_FOR_WORKERS:g} s",
                    fix="start workers with 'dask worker tcp://HOST:PORT'",
                ) from None
            workers = self.client.scheduler_info().get("workers", {})
        return max(1, sum(w.get("nthreads", 1) for w in workers.values()))

    def map(
        self,
        fn: Callable[[Any], Any],
        items: Sequence[Any],
        *,
        progress: Progress = QUIET,
        label: str | None = None,
        sizes: Sequence[int] | None = None,
    ) -> list[Any]:
        from distributed import as_completed

        items = list(items)
        if not items:
            return []
        started = time.perf_counter()
        sizes = list(sizes) if sizes is not None else [1] * len(items)
        payload = cloudpickle.dumps(fn)
        digest = _digest(payload)
        client = self.client
        shipped = client.scatter(payload, broadcast=True, hash=False)
        prefix = f"curate-{(label or 'map').split(':')[0].replace(' ', '_')}-{digest[:8]}-{time.monotonic_ns()}"
        futures = [
            client.submit(invoke, shipped, digest, item, key=f"{prefix}-{i}", pure=False)
            for i, item in enumerate(items)
        ]
        size_of = {f.key: s for f, s in zip(futures, sizes)}
        try:
            with progress.task(label or "working", total=sum(sizes)) as bar:
                for future in as_completed(futures, loop=client.loop):  # not the process's default client
                    if future.status == "error":
                        future.result()  # re-raises the worker's exception (InputError stays exit 2)
                    bar.advance(size_of[future.key])
            return client.gather(futures)
        except BaseException:
            client.cancel(futures)
            raise
        finally:
            self._timed(started)

    def check_storage(
        self, work_dir: str, input_path: str, *, work_via_store: bool = False, input_via_store: bool = False
    ) -> None:
        """Every worker must read the input and write the output under the driver's paths; a
        worker on its own disk would otherwise write parts the driver never sees. `*_via_store`:
        that path is handed over through the output's store instead (curate.io.mirror)."""
        import uuid
        from pathlib import Path

        if (work_dir, input_path) in self._storage_checked:
            return
        token = uuid.uuid4().hex
        try:
            seen = self.client.run(_probe_storage, work_dir, input_path, token)
        except OSError as exc:
            raise OutputError(
                f"a Dask worker cannot create the run's working directory ({exc.strerror or exc})",
                path=work_dir,
                fix="set CURATE_STAGING_DIR to a local directory path that every machine can create (an object-store -o), or put -o on storage every worker mounts",
            ) from None
        unseen = []
        for worker, (_, marker) in seen.items():
            try:
                (Path(work_dir) / marker).unlink()
            except FileNotFoundError:
                if not work_via_store:
                    unseen.append(worker)
        blind = [worker for worker, (sees_input, _) in seen.items() if not sees_input and not input_via_store]
        fix = "put the input and -o on storage every worker mounts under the same path (NFS, Lustre, ...), or use object-store URLs for both"
        if blind:
            raise UsageError(f"Dask worker {blind[0]} cannot read the input file {input_path}", fix=fix)
        if unseen:
            raise OutputError(
                f"Dask worker {unseen[0]} writes somewhere this machine cannot see", path=work_dir, fix=fix
            )
        self._storage_checked.add((work_dir, input_path))

    def shares_directory(self, directory: str) -> bool:
        """Does every worker see this directory of the driver's (the same machine, or a shared
        mount)? A marker file written here must show on each worker."""
        from pathlib import Path

        marker = Path(directory) / f".shared-probe-{os.getpid()}-{time.monotonic_ns()}"
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_bytes(b"")
        try:
            seen = self.client.run(os.path.exists, str(marker))
        finally:
            marker.unlink(missing_ok=True)
        return all(seen.values())

    def run_everywhere(self, fn: Callable[..., Any], *args: Any) -> None:
        """`fn(*args)` once on every worker (dropping a machine's local copies, say)."""
        self.client.run(fn, *args)

    def preload_in_workers(self, module: str) -> None:
        """Dask workers import what their tasks need themselves."""

    def start_early(self, preload: Sequence[str] = ()) -> None:
        """A cluster's workers are already running."""

    def describe(self) -> list[str]:
        """One-time lines for the user: where the cluster is and where to watch it."""
        info = self.client.scheduler_info()
        workers = info.get("workers", {})
        threads = sum(w.get("nthreads", 0) for w in workers.values())
        lines = [f"dask: {info.get('address', '?')}, {len(workers)} workers, {threads} threads"]
        has_page = "dashboard" in info.get("services", {})
        if has_page and dashboard_available():
            lines.append(f"dask dashboard: {self.client.dashboard_link}")
        elif has_page and self.cluster is None:  # the remote scheduler may have bokeh even if we do not
            lines.append(f"dask dashboard: {self.client.dashboard_link} (if bokeh is installed on the scheduler)")
        else:
            lines.append("dask dashboard: not available (it needs bokeh: pip install bokeh)")
        return lines

    def close(self) -> None:
        self.client.close()
        if self.cluster is not None:
            self.cluster.close()

    def __enter__(self) -> DaskExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _probe_storage(work_dir: str, input_file: str, token: str) -> tuple[bool, str]:
    """On each worker: can it read the input, and which marker file did it write in work_dir."""
    import uuid
    from pathlib import Path

    name = f".probe-{token}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    Path(work_dir).mkdir(parents=True, exist_ok=True)
    (Path(work_dir) / name).write_bytes(b"")
    if "://" in input_file:  # an object store: each worker reaches it over the network itself
        return True, name
    return os.access(input_file, os.R_OK), name


def dashboard_available() -> bool:
    """The Dask dashboard needs bokeh; without it we run fine and say so once."""
    try:
        import bokeh  # noqa: F401
    except ImportError:
        return False
    return True


def _connect(address: str, timeout: float) -> Any:
    """A Client of the scheduler at `address`, or exit 2 within about `timeout` seconds.

    distributed's own timeout covers the TCP connect but not its handshake: a port that accepts
    and then says nothing (any HTTP server, the dashboard port) hangs it, and one that answers
    with other bytes reads them as a message length (a 3 EiB allocation). So the connection is
    made on a helper thread and given up on after the timeout plus a margin."""
    import threading

    from distributed import Client

    outcome: dict[str, Any] = {}

    def connect() -> None:
        try:
            # not the default client: one that never finishes its handshake would stay the default
            outcome["client"] = Client(address, timeout=timeout, set_as_default=False)
        except BaseException as exc:  # MemoryError from a non-Dask reply included
            outcome["error"] = exc

    fix = "check the address: it is the scheduler's tcp://HOST:PORT (8786 by default), not its dashboard; start one with 'dask scheduler'"
    thread = threading.Thread(target=connect, name="curate-dask-connect", daemon=True)
    thread.start()
    thread.join(timeout + 5.0)
    if thread.is_alive():
        raise UsageError(f"{address} does not answer as a Dask scheduler within {timeout + 5.0:g} s", fix=fix)
    error = outcome.get("error")
    if isinstance(error, (OSError, TimeoutError)) and not isinstance(error, MemoryError):
        raise UsageError(
            f"cannot reach the Dask scheduler at {address} within {timeout:g} s ({first_line(error)})", fix=fix
        ) from None
    if error is not None:
        raise UsageError(
            f"{address} does not answer as a Dask scheduler ({type(error).__name__}: {first_line(error)})", fix=fix
        ) from None
    return outcome["client"]


def make_executor(
    *, jobs: int | None = None, workers: int | None = None, scheduler: str | None = None
) -> LocalExecutor | DaskExecutor:
    """The executor the command line asked for: --jobs (default), --workers or --scheduler."""
    chosen = [
        name
        for name, value in (("--jobs", jobs), ("--workers", workers), ("--scheduler", scheduler))
        if value is not None
    ]
    if len(chosen) > 1:
        raise UsageError(
            f"{' and '.join(chosen)} are exclusive",
            fix="--jobs N runs on this machine; --workers N starts a local Dask cluster; --scheduler ADDR joins a running one",
        )
    if scheduler is not None:
        return DaskExecutor.connect(scheduler)
    if workers is not None:
        return DaskExecutor.local(workers)
    return LocalExecutor(jobs)
