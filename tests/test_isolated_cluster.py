"""The isolated-cluster harness: each Dask worker sees its own empty directory at the hidden path
(like another machine with the same local path), yet imports this checkout's curate and reaches
loopback servers of the test process."""

from __future__ import annotations

import os
from pathlib import Path

import psutil
import pytest
from conftest import BUCKET
from isolated_cluster import REPO_ROOT, can_isolate, isolated_cluster, worker_environment

distributed = pytest.importorskip("distributed")

pytestmark = pytest.mark.skipif(
    not can_isolate(), reason="needs 'unshare --mount' and the right to mount a tmpfs (root or user namespaces)"
)


@pytest.fixture(scope="module")
def hidden(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("isolated") / "staging"


@pytest.fixture(scope="module")
def client(hidden):
    # PYTHONPATH emptied: the workers import this checkout's curate only if the harness adds it.
    with isolated_cluster(hidden, workers=2, env={"PYTHONPATH": "", "ISOLATED_PROBE": "passed"}) as address:
        with distributed.Client(address) as client:
            yield client


def worker_addresses(client) -> list[str]:
    return sorted(client.scheduler_info()["workers"])


def test_two_named_one_thread_workers(client):
    workers = client.scheduler_info()["workers"].values()
    assert sorted(w["name"] for w in workers) == ["isolated-0", "isolated-1"]
    assert [w["nthreads"] for w in workers] == [1, 1]


def test_workers_see_an_empty_directory_not_the_drivers(client, hidden):
    marker = hidden / "marker.txt"
    marker.write_text("driver")
    assert marker.exists()
    seen = client.run(lambda path: (os.path.isdir(os.path.dirname(path)), os.path.exists(path)), str(marker))
    assert len(seen) == 2
    assert all(seen_value == (True, False) for seen_value in seen.values()), seen


def test_a_workers_file_stays_on_that_worker(client, hidden):
    first, second = worker_addresses(client)
    path = str(hidden / "w.txt")

    def write(path: str) -> None:
        with open(path, "w") as handle:
            handle.write("worker")

    client.run(write, path, workers=[first])
    assert client.run(os.path.exists, path, workers=[first]) == {first: True}
    assert client.run(os.path.exists, path, workers=[second]) == {second: False}
    assert not os.path.exists(path)


def test_workers_import_this_checkout_with_the_given_environment(client):
    import curate

    def probe() -> tuple[str, str | None]:
        import curate

        return curate.__file__, os.environ.get("ISOLATED_PROBE")

    expected = (str(Path(curate.__file__).resolve()), "passed")
    assert Path(curate.__file__).resolve().is_relative_to(REPO_ROOT)
    seen = client.run(probe)
    assert {w: (str(Path(f).resolve()), v) for w, (f, v) in seen.items()} == dict.fromkeys(seen, expected)


def test_workers_reach_a_loopback_s3_server(client, s3):
    endpoint, fs = s3
    fs.pipe(f"{BUCKET}/isolated/probe.txt", b"from the driver")
    fs.invalidate_cache()

    def read(endpoint: str, key: str, secret: str, bucket: str) -> tuple[list[str], bytes]:
        import s3fs

        remote = s3fs.S3FileSystem(endpoint_url=endpoint, key=key, secret=secret, skip_instance_cache=True)
        return remote.ls(f"{bucket}/isolated"), remote.cat(f"{bucket}/isolated/probe.txt")

    seen = client.run(read, endpoint, "testing", "testing", BUCKET)
    assert list(seen.values()) == [([f"{BUCKET}/isolated/probe.txt"], b"from the driver")] * 2


def test_environment_puts_the_repository_first_on_pythonpath():
    env = worker_environment({"PYTHONPATH": os.pathsep.join(["/elsewhere", str(REPO_ROOT)]), "EXTRA": "1"})
    assert env["PYTHONPATH"].split(os.pathsep) == [str(REPO_ROOT), "/elsewhere"]
    assert env["EXTRA"] == "1" and env["PATH"] == os.environ["PATH"]


def test_every_process_ends_even_when_the_body_raises(tmp_path):
    # With a nanny the worker is the nanny's child: ending the nanny alone would orphan it.
    with pytest.raises(KeyError, match="body failed"):
        with isolated_cluster(tmp_path / "staging", workers=1, nanny=True) as address:
            with distributed.Client(address) as client:
                (worker,) = client.run(os.getpid).values()
                nanny = psutil.Process(worker).ppid()
                pids = [worker, nanny, client.run_on_scheduler(os.getpid)]
            assert nanny != os.getpid() and psutil.Process(nanny).ppid() == os.getpid()
            assert all(psutil.pid_exists(pid) for pid in pids)
            raise KeyError("body failed")
    assert [pid for pid in pids if psutil.pid_exists(pid)] == []


def test_a_worker_that_cannot_start_fails_fast_with_its_log(tmp_path):
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    with pytest.raises(
        RuntimeError, match=r"(?s)worker isolated-0 exited with code 1.*PYTHONHOME = '/nonexistent-home'"
    ):
        with isolated_cluster(tmp_path / "staging", workers=1, env={"PYTHONHOME": "/nonexistent-home"}):
            pytest.fail("the cluster must not start")
    left = [p for p in psutil.Process().children(recursive=True) if p.pid not in before]
    assert left == []
