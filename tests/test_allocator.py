"""The allocator thresholds are set in the driver and in every worker process, and a user's own
glibc settings win."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

from curate.engine.executors import LocalExecutor

glibc = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's"
)


def _tuned_here(_: int) -> bool:
    from curate import runtime

    return runtime._tuned


def _run(code: str, **env: str) -> str:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    result = subprocess.run(
        [sys.executable, "-c", code], env={**environ, **env}, capture_output=True, text=True, check=True
    )
    return result.stdout.strip()


@glibc
def test_thresholds_are_set_once_and_a_users_own_setting_wins():
    code = "from curate.runtime import tune_allocator; print(tune_allocator(), tune_allocator())"
    assert _run(code) == "True True"
    assert _run(code, MALLOC_MMAP_THRESHOLD_="131072") == "False False"


@glibc
def test_every_local_worker_process_is_tuned():
    with LocalExecutor(2) as executor:
        assert executor.map(_tuned_here, range(4)) == [True] * 4


@glibc
def test_cli_tunes_the_driver(tmp_path):
    code = "import sys; from curate import cli, runtime\ntry:\n    cli.main(['--help'])\nexcept SystemExit:\n    pass\nprint(runtime._tuned)"
    assert _run(code).splitlines()[-1] == "True"


@glibc
def test_a_local_dask_cluster_starts_its_workers_with_the_thresholds():
    pytest.importorskip("distributed")
    from curate.engine.executors import DaskExecutor
    from curate.runtime import allocator_environment

    with DaskExecutor.local(1) as executor:
        seen = executor.client.run(lambda: {k: os.environ.get(k) for k in allocator_environment()})
    assert list(seen.values()) == [allocator_environment()]
