"""curate.io.mirror against a real S3 endpoint (moto): a mirrored staging directory whose files
live in the store, as the workers of a cluster without a shared disk see it."""

from __future__ import annotations

import pyarrow as pa
import pytest
from conftest import BUCKET

from curate.io import mirror as scratch
from curate.io.atomic import atomic_write_bytes
from curate.io.parts import PartWriter, count_part_rows, list_parts, publish_attempt, read_parts
from curate.output.layout import is_committed


@pytest.fixture
def mirror(tmp_path, s3):
    """(local root, store prefix path, fs): a mirror active for the test, cleared after."""
    endpoint, fs = s3
    root = tmp_path / "staging"
    root.mkdir()
    prefix = f"{BUCKET}/{tmp_path.name}/out"
    options = (("endpoint_url", endpoint), ("key", "testing"), ("secret", "testing"))
    token = scratch.activate(scratch.Mirror(str(root), f"s3://{prefix}", options))
    yield root, prefix, fs
    scratch.deactivate(token)


def _forget_local(root):
    import shutil

    shutil.rmtree(root)
    root.mkdir()


def test_a_finished_write_is_uploaded_recorded_and_fetched_where_missing(mirror):
    root, prefix, fs = mirror
    atomic_write_bytes(root / "_stages" / "01-x" / "work" / "piece.bin", b"abc")
    atomic_write_bytes(root / "kept-notes.txt", b"hello")
    fs.invalidate_cache()
    assert fs.cat_file(f"{prefix}/_stages/01-x/work/piece.bin") == b"abc"
    record = scratch.record()
    assert record["kept-notes.txt"]["size"] == 5 and "xxh3" in record["kept-notes.txt"]
    assert not is_committed("_stages/01-x/work/piece.bin") and is_committed("kept-notes.txt")
    assert not any(name.startswith(".") or "/." in name for name in record), "temp names are never published"
    _forget_local(root)  # another machine: nothing here
    assert scratch.exists(root / "kept-notes.txt") and not (root / "kept-notes.txt").exists()
    assert scratch.ensure(root / "kept-notes.txt").read_bytes() == b"hello"
    assert scratch.ensure(root / "missing.txt") == root / "missing.txt" and not (root / "missing.txt").exists()


def test_parts_are_listed_counted_and_read_from_the_store(mirror):
    root, prefix, fs = mirror
    with PartWriter(root / "_stages" / "01-x" / "kept", max_bytes=1) as writer:
        for start in range(0, 30, 10):
            writer.write(pa.table({"id": [str(i) for i in range(start, start + 10)]}))
    _forget_local(root)
    parts = list_parts(root / "_stages" / "01-x" / "kept")
    assert [p.name for p in parts] == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    assert count_part_rows(root / "_stages" / "01-x" / "kept") == 30
    assert not any(p.exists() for p in parts), "footers are read in place, nothing downloaded"
    assert read_parts(root / "_stages" / "01-x" / "kept").column("id").to_pylist() == [str(i) for i in range(30)]


def test_moves_and_removals_happen_in_the_store_and_carry_the_record(mirror):
    root, prefix, fs = mirror
    atomic_write_bytes(root / "_stages" / "01-x" / "work" / "units" / "00000" / "kept" / "part-00000.parquet", b"rows")
    before = scratch.record()["_stages/01-x/work/units/00000/kept/part-00000.parquet"]
    _forget_local(root)  # the driver never held the file
    scratch.move(
        root / "_stages" / "01-x" / "work" / "units" / "00000" / "kept" / "part-00000.parquet",
        root / "_stages" / "01-x" / "kept" / "part-00003.parquet",
    )
    fs.invalidate_cache()
    assert fs.cat_file(f"{prefix}/_stages/01-x/kept/part-00003.parquet") == b"rows"
    assert not fs.exists(f"{prefix}/_stages/01-x/work/units/00000/kept/part-00000.parquet")
    assert scratch.record()["_stages/01-x/kept/part-00003.parquet"] == before
    assert not (root / "_stages" / "01-x" / "kept").exists(), "a store-side move downloads nothing"
    scratch.copy(root / "_stages" / "01-x" / "kept" / "part-00003.parquet", root / "removed" / "part-00000.parquet")
    scratch.remove(root / "_stages")
    fs.invalidate_cache()
    assert not fs.exists(f"{prefix}/_stages") and fs.cat_file(f"{prefix}/removed/part-00000.parquet") == b"rows"
    assert set(scratch.record()) == {"removed/part-00000.parquet"}


def test_a_task_directory_counts_as_done_only_once_marked(mirror):
    """A half-uploaded directory (a worker killed mid-upload, or still uploading) must not be
    taken for a finished one by a second attempt: only the marker, written last, says done."""
    root, prefix, fs = mirror
    final = root / "units" / "00000"
    fs.pipe_file(f"{prefix}/units/00000/kept/part-00000.parquet", b"half")
    assert scratch.is_dir(final) and not scratch.is_done(final)
    attempt = root / "units" / ".00000.abc.tmp"
    (attempt / "kept").mkdir(parents=True)
    (attempt / "kept" / "part-00000.parquet").write_bytes(b"whole")
    publish_attempt(attempt, final)
    assert scratch.is_done(final)
    fs.invalidate_cache()
    assert fs.cat_file(f"{prefix}/units/00000/kept/part-00000.parquet") == b"whole"


def test_a_part_whose_record_was_lost_is_digested_in_the_store(mirror):
    """A task that uploaded a part and died before its result reached the driver: the move
    still records the part's size and digest (read from the store)."""
    root, prefix, fs = mirror
    fs.pipe_file(f"{prefix}/units/00000/kept/part-00000.parquet", b"orphan rows")
    scratch.move(root / "units" / "00000", root / "kept")
    import xxhash

    assert scratch.record()["kept/kept/part-00000.parquet"] == {
        "size": 11,
        "xxh3": xxhash.xxh3_128_hexdigest(b"orphan rows"),
    }


def test_without_a_mirror_everything_is_local(tmp_path):
    assert scratch.active() is None
    atomic_write_bytes(tmp_path / "a" / "f.bin", b"x")
    assert scratch.record() == {}
    scratch.move(tmp_path / "a", tmp_path / "b")
    assert (tmp_path / "b" / "f.bin").read_bytes() == b"x" and scratch.is_done(tmp_path / "b")
    scratch.remove(tmp_path / "b")
    assert not (tmp_path / "b").exists()


def test_an_index_copy_fetches_its_files_from_the_earlier_outputs_store(tmp_path, s3):
    """A worker without the driver's disk opens an earlier output's index through the driver's
    local copy: what the copy lacks there comes from the store the copy was taken from."""
    import numpy as np

    from curate.index import origin
    from curate.index.store import read_index, write_index

    endpoint, fs = s3
    built = tmp_path / "earlier" / "index" / "dedup"
    write_index(
        built,
        kind="exact",
        stage="dedup",
        settings={"normalize": False},
        arrays={"keys": np.arange(6, dtype=np.uint64).reshape(3, 2)},
        table=pa.table({"id": ["a", "b", "c"]}),
    )
    url = f"s3://{BUCKET}/{tmp_path.name}/earlier"
    fs.put(str(tmp_path / "earlier"), url[len("s3://") :], recursive=True)
    copy = tmp_path / "view"
    (copy / "index").mkdir(parents=True)
    import shutil

    shutil.copytree(built, copy / "index" / "dedup")
    options = (("endpoint_url", endpoint), ("key", "testing"), ("secret", "testing"))
    with origin.registered([(copy, url)], options):
        stored = read_index(copy / "index" / "dedup")
    assert stored.origin == (f"{url}/index/dedup", options)
    shutil.rmtree(copy)  # the worker's machine: no copy at all
    assert np.asarray(stored.array("keys")).tolist() == [[0, 1], [2, 3], [4, 5]]
    assert stored.table().column("id").to_pylist() == ["a", "b", "c"]
    assert origin.origin_of(copy / "index") is None, "forgotten after the run"
