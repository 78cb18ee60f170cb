"""What this process runs on: its cores, its worker slot in a run, thread caps and the allocator.

The allocator: keep freed NumPy buffers in the heap instead of handing them back to the kernel.

The array code (hashing embeddings, MinHash signatures, k-means batches) allocates and frees
buffers of 1-60 MB thousands of times per unit. glibc serves such sizes with a fresh `mmap`
and unmaps them on free (or trims the heap top once 2x the threshold is free), so every batch
pays page faults to zero new pages: on a 2-core machine, hashing-embedding
60,000 short texts took 1.28 s of CPU with glibc's defaults and 0.65 s with the thresholds
below (same bits; peak RSS 404 -> 421 MB, +4%). The faults also cost more when two workers
fault at once, which is part of why two processes cost more CPU than one.

Applied in the driver, in every local worker process and in the workers of the Dask cluster
that `--workers N` starts. A user who sets glibc's own variables (`MALLOC_MMAP_THRESHOLD_`,
`MALLOC_TRIM_THRESHOLD_`) keeps them, and so do the workers of a running cluster
(`--scheduler`), which Dask starts with `MALLOC_TRIM_THRESHOLD_=65536` unless its config says
otherwise (docs/design/dask.md). Elsewhere than glibc (macOS, musl) this does nothing.

Arrow's own buffers stay in pyarrow's default pool (mimalloc). Moving them onto this heap
(`pa.set_memory_pool(pa.system_memory_pool())`) was measured and left out: on 66 MB of long
documents it cut decontaminate's CPU per MB by 10-30%, but on 107 MB of longer ones
(`python -m bench.decontaminate --long-docs 12000`, three alternating pairs, 2-core AMD EPYC)
`--jobs 2` took 8.1-9.2 CPU s against 7.0-8.2 and peaked 3.0-3.2 GiB against 2.5-2.7 GiB, and
MinHash on one file of long documents (`python -m bench.long_units`) did not change. A user
can still choose it with Arrow's `ARROW_DEFAULT_MEMORY_POOL=system`.
"""

from __future__ import annotations

import contextvars
import ctypes
import os
import re
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, Callable, Iterator

MMAP_THRESHOLD = 64 << 20  # buffers below this come from the heap and are reused
TRIM_THRESHOLD = 256 << 20  # free heap kept before returning memory to the kernel
_M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter numbers (malloc.h)
_M_MMAP_THRESHOLD = -3
_USER_VARIABLES = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")

_tuned = False


def allocator_environment() -> dict[str, str]:
    """The same thresholds as glibc environment variables, for processes started by others
    (a Dask nanny's workers), which glibc reads at start."""
    return {"MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD), "MALLOC_TRIM_THRESHOLD_": str(TRIM_THRESHOLD)}


def tune_allocator() -> bool:
    """Set the thresholds once per process; True when they were set by this call or before."""
    global _tuned
    if _tuned:
        return True
    if any(os.environ.get(name) for name in _USER_VARIABLES):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    _tuned = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    return _tuned


# Environment variables that cap the thread pools of the native libraries a task may use.
_SLOT_VAR = "CURATE_WORKER_SLOT"


def cpu_count() -> int:
    """Cores this process may use (the affinity mask, which containers and taskset narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def worker_slot() -> int | None:
    """This worker's number in the run (0, 1, ...), None outside a worker: a local worker's
    from the pool's start order, a Dask worker's from its name (a LocalCluster numbers them)."""
    slot = os.environ.get(_SLOT_VAR)
    if slot is not None:
        return int(slot)
    try:
        from distributed import get_worker

        name = get_worker().name
    except (ImportError, ValueError):
        return None
    if isinstance(name, int):
        return name
    digits = re.search(r"(\d+)$", str(name))
    return int(digits.group(1)) if digits else None


@contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """torch's intra-op threads for the block, never more than this process's cores
    (oversubscription on a shared machine costs more than it gives: on a busy 2-core machine the
    proxy classifier's small sparse batches ran ~100x slower on 2 threads than on 1)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(max(1, min(int(threads), cpu_count())))
    try:
        yield
    finally:
        torch.set_num_threads(before)


class ContextThreadPool(ThreadPoolExecutor):
    """A thread pool whose tasks see the submitting thread's context variables: run state such as
    the store mirror (curate.io.mirror) lives in them, and a plain pool's threads start without."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        return super().submit(contextvars.copy_context().run, fn, *args, **kwargs)
