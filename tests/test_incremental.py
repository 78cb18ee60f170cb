"""Incremental runs: a corpus split by input order into parts; each later part run --against the
earlier outputs' indexes removes exactly what a joint run over all parts removes from it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tomllib
from conftest import cli

from curate.errors import UsageError
from curate.io.parts import read_parts
from curate.pipeline import RunOptions, parse_pipeline, run_pipeline

WORDS = np.array(
    "data model train token shard batch loss cluster prune dedup hash vector embed sample epoch budget scale "
    "pool quality score text corpus filter window anneal random seed worker graph alpha beta gamma delta river "
    "stone cloud light north south east west green blue red yellow".split()
)
PIPELINE = {"stage": [{"kind": "exact", "normalize": True, "index": True}, {"kind": "minhash", "index": True}]}


def corpus_texts(n: int, seed: int = 0) -> list[str]:
    """Long word soup with exact copies, case variants and one-word edits (appended or replaced,
    Jaccard above 0.8 on 5-word shingles) of earlier texts, edits of edits included."""
    rng = np.random.default_rng(seed)
    texts: list[str] = []
    originals: list[str] = []
    for _ in range(n):
        roll = rng.random()
        if originals and roll < 0.12:
            texts.append(originals[rng.integers(len(originals))])
        elif originals and roll < 0.17:
            texts.append(originals[rng.integers(len(originals))].upper())
        elif originals and roll < 0.37:
            words = originals[rng.integers(len(originals))].split(" ")
            if rng.random() < 0.5:
                words.append(str(rng.choice(WORDS)))
            else:
                words[rng.integers(len(words))] = str(rng.choice(WORDS))
            texts.append(" ".join(words))
            if rng.random() < 0.3:
                originals.append(texts[-1])
        else:
            texts.append(" ".join(rng.choice(WORDS, size=rng.integers(40, 90))))
            originals.append(texts[-1])
    return texts


def write_parts(root: Path, n: int = 900, parts: int = 2, seed: int = 0) -> tuple[list[Path], Path]:
    """`parts` input directories in input order, and one joint directory holding all of them
    (file names sort part by part, so the joint input order is the parts' order)."""
    texts = corpus_texts(n, seed)
    ids = [f"doc-{i:05d}" for i in range(n)]
    bounds = np.linspace(0, n, parts + 1).astype(int)
    dirs = []
    joint = root / "joint"
    for p in range(parts):
        part = root / f"part{p}"
        for s, (lo, hi) in enumerate(
            zip(
                np.linspace(bounds[p], bounds[p + 1], 3).astype(int)[:-1],
                np.linspace(bounds[p], bounds[p + 1], 3).astype(int)[1:],
            )
        ):
            table = pa.table({"id": ids[lo:hi], "text": texts[lo:hi]})
            for target in (part, joint):
                target.mkdir(parents=True, exist_ok=True)
                pq.write_table(table, target / f"p{p}-{s:03d}.parquet", row_group_size=100)
        dirs.append(part)
    return dirs, joint


def run(source: Path, out: Path, against: tuple[Path, ...] = (), jobs: int = 1, pipeline: dict = PIPELINE, **options):
    spec = parse_pipeline(pipeline, "test")
    return run_pipeline(
        spec, source, out, RunOptions(jobs=jobs, unit_rows=150, against=tuple(str(a) for a in against), **options)
    )


def ledger(out: Path, ids: set[str] | None = None):
    table = read_parts(out / "removed").to_pandas().set_index("id")
    return table if ids is None else table[table.index.isin(ids)]


def part_ids(part: Path) -> set[str]:
    return set(pq.read_table(part).column("id").to_pylist())


@pytest.fixture(scope="module")
def halves(tmp_path_factory):
    root = tmp_path_factory.mktemp("incremental")
    (a, b), joint = write_parts(root)
    run(joint, root / "out-joint")
    run(a, root / "out-a")
    shutil.rmtree(a)  # the later run may read A's index only
    run(b, root / "out-b", against=(root / "out-a",))
    return root, b


def test_later_half_loses_what_the_joint_run_removes_from_it(halves):
    root, b = halves
    joint = ledger(root / "out-joint", part_ids(b))
    later = ledger(root / "out-b")
    assert sorted(later.index) == sorted(joint.index)
    exact = joint.stage == "exact"
    assert later.loc[joint.index[exact], "duplicate_of"].tolist() == joint.loc[exact, "duplicate_of"].tolist()
    # near duplicates: same rows; the representative named is a member of the same joint group
    assert later.loc[joint.index[~exact], "stage"].eq("minhash").all()
    reasons = set(later.reason)
    assert {"exact_duplicate_of_earlier", "near_duplicate_of_earlier", "exact_duplicate", "near_duplicate"} <= reasons
    earlier = later[later.reason.str.endswith("_of_earlier")]
    assert earlier.duplicate_of.isin(part_ids(root / "joint") - part_ids(b)).all()
    assert (
        not later[~later.reason.str.endswith("_of_earlier")]
        .duplicate_of.isin(part_ids(root / "joint") - part_ids(b))
        .any()
    )


def test_near_duplicate_of_matches_the_joint_representative(halves):
    root, b = halves
    joint = ledger(root / "out-joint", part_ids(b))
    later = ledger(root / "out-b")
    near = joint.index[joint.stage == "minhash"]
    assert (later.loc[near, "duplicate_of"] == joint.loc[near, "duplicate_of"]).mean() == 1.0


def test_kept_rows_of_both_halves_are_the_joint_kept_rows(halves):
    root, _ = halves
    joint = set(read_parts(root / "out-joint" / "kept").column("id").to_pylist())
    parts = set(read_parts(root / "out-a" / "kept").column("id").to_pylist()) | set(
        read_parts(root / "out-b" / "kept").column("id").to_pylist()
    )
    assert parts == joint


def test_two_jobs_give_the_same_bytes(halves):
    root, b = halves
    run(b, root / "out-b-2", against=(root / "out-a",), jobs=2)
    for name in ("kept", "removed"):
        assert read_parts(root / "out-b" / name).equals(read_parts(root / "out-b-2" / name))
    for path in sorted((root / "out-b" / "index").rglob("*.npy")):
        assert np.array_equal(np.load(path), np.load(root / "out-b-2" / path.relative_to(root / "out-b")))


def test_index_add_keeps_one_index_for_a_growing_corpus(tmp_path, capsys):
    (a, b, c), joint = write_parts(tmp_path, n=900, parts=3, seed=3)
    run(joint, tmp_path / "out-joint")
    run(a, tmp_path / "out-a")
    run(b, tmp_path / "out-b", against=(tmp_path / "out-a",))
    assert cli(["index", str(tmp_path / "out-a"), "--add", str(tmp_path / "out-b"), "-q"], capsys)[0] == 0
    run(c, tmp_path / "out-c", against=(tmp_path / "out-a",))
    assert sorted(ledger(tmp_path / "out-c").index) == sorted(ledger(tmp_path / "out-joint", part_ids(c)).index)
    twice = tmp_path / "out-c-two"
    run(c, twice, against=(tmp_path / "out-a",))  # same result when asked again (deterministic)
    assert read_parts(twice / "removed").equals(read_parts(tmp_path / "out-c" / "removed"))


def test_index_command_rebuilds_the_index_a_run_keeps(tmp_path, capsys):
    (a, _), _ = write_parts(tmp_path, n=300)
    run(a, tmp_path / "with")
    plain = {"stage": [{k: v for k, v in s.items() if k != "index"} for s in PIPELINE["stage"]]}
    run(a, tmp_path / "without", pipeline=plain)
    assert not (tmp_path / "without" / "index").exists()
    code, err = cli(["index", str(tmp_path / "without"), "-q", "-j", "1"], capsys)
    assert code == 0, err
    files = sorted(
        p.relative_to(tmp_path / "with")
        for p in (tmp_path / "with" / "index").rglob("*")
        if p.suffix in (".npy", ".parquet")
    )
    assert len(files) == 7
    for rel in files:
        assert (tmp_path / "with" / rel).read_bytes() == (tmp_path / "without" / rel).read_bytes(), rel


def test_other_settings_than_the_index_are_exit_2_naming_both(halves, capsys):
    root, b = halves
    code, err = cli(
        [
            "dedup",
            "-i",
            str(b),
            "-o",
            str(root / "o-ngram"),
            "--method",
            "minhash",
            "--ngram",
            "3",
            "--against",
            str(root / "out-a"),
        ],
        capsys,
    )
    assert code == 2
    assert "ngram = 3" in err and "ngram = 5" in err
    assert not (root / "o-ngram").exists()
    code, err = cli(
        ["dedup", "-i", str(b), "-o", str(root / "o-norm"), "--method", "exact", "--against", str(root / "out-a")],
        capsys,
    )
    assert code == 2 and "normalize = False" in err and "normalize = True" in err


def test_truncated_or_missing_index_is_exit_2_naming_the_file(halves, tmp_path, capsys):
    root, b = halves
    copy = tmp_path / "old"
    shutil.copytree(root / "out-a", copy)
    target = copy / "index" / "minhash" / "fingerprints.npy"
    target.write_bytes(target.read_bytes()[:-7])
    code, err = cli(
        ["run", str(_pipeline_file(tmp_path)), "-i", str(b), "-o", str(tmp_path / "o1"), "--against", str(copy)],
        capsys,
    )
    assert code == 2 and "fingerprints.npy" in err and "truncated" in err
    (copy / "index" / "exact" / "index.json").write_text("{not json")
    code, err = cli(
        ["run", str(_pipeline_file(tmp_path)), "-i", str(b), "-o", str(tmp_path / "o2"), "--against", str(copy)],
        capsys,
    )
    assert code == 2 and "index.json" in err
    with pytest.raises(UsageError, match="index.json"):  # the library path checks too
        run(b, tmp_path / "o3", against=(copy,))


def test_altered_index_file_is_caught_by_its_digest_old_or_new(halves, tmp_path):
    """Same size, one byte changed: the digest in index.json catches it, whether the index was
    written with XXH3-128 digests or, as earlier indexes were, BLAKE2b."""
    import hashlib

    from curate.index.store import read_index

    root, _ = halves
    copy = tmp_path / "old"
    shutil.copytree(root / "out-a", copy)
    directory = copy / "index" / "minhash"
    meta = json.loads((directory / "index.json").read_text())
    assert all(set(f) == {"bytes", "xxh3_128"} for f in meta["files"].values())
    for name, entry in meta["files"].items():  # as an index written before XXH3 digests
        entry.pop("xxh3_128")
        entry["blake2b"] = hashlib.blake2b((directory / name).read_bytes(), digest_size=16).hexdigest()
    (directory / "index.json").write_text(json.dumps(meta))
    assert read_index(directory).rows == meta["rows"]
    for fresh in (False, True):
        if fresh:
            shutil.rmtree(copy)
            shutil.copytree(root / "out-a", copy)
        target = directory / "band_rows.npy"
        data = bytearray(target.read_bytes())
        data[-1] ^= 1
        target.write_bytes(bytes(data))
        with pytest.raises(UsageError, match="digest differs") as caught:
            read_index(directory)
        assert "band_rows.npy" in str(caught.value)


def _pipeline_file(directory: Path) -> Path:
    path = directory / "p.toml"
    path.write_text(
        '[[stage]]\nkind = "exact"\nnormalize = true\nindex = true\n[[stage]]\nkind = "minhash"\nindex = true\n'
    )
    return path


def test_against_in_the_pipeline_file_is_the_command_line_option(halves, tmp_path, monkeypatch, capsys):
    """`against` in the file, relative to the file's directory, from another working
    directory: the same result as --against; --against on the command line adds after it."""
    root, b = halves
    folder = root / "pipelines"
    folder.mkdir(exist_ok=True)
    pipeline = folder / "later.toml"
    pipeline.write_text('against = ["../out-a"]\n' + _pipeline_file(tmp_path).read_text())
    monkeypatch.chdir(tmp_path)
    code, err = cli(["run", str(pipeline), "-i", str(b), "-o", "from-file", "-q"], capsys)
    assert code == 0, err
    assert (
        ledger(tmp_path / "from-file").sort_index().equals(ledger(root / "out-b").sort_index())
    )  # other work units than the fixture's: same rows
    recorded = json.loads((tmp_path / "from-file" / "manifest.json").read_text())["config"]["against"]
    assert recorded == [str((root / "out-a").resolve())]

    extra = tmp_path / "extra"
    run(b, extra)  # a second earlier output (B itself, indexed): every B row now has an earlier copy
    code, err = cli(["run", str(pipeline), "-i", str(b), "-o", "both", "-q", "--against", str(extra)], capsys)
    assert code == 0, err
    manifest = json.loads((tmp_path / "both" / "manifest.json").read_text())
    assert manifest["config"]["against"] == [str((root / "out-a").resolve()), str(extra.resolve())]
    both = ledger(tmp_path / "both")
    assert len(both) == len(part_ids(b)) and both.reason.str.endswith("_of_earlier").all()
    # a text A holds still names A's row (the older output comes first); the rest name B's own
    by_a = ledger(root / "out-b")
    by_a = by_a[by_a.reason == "exact_duplicate_of_earlier"]
    assert len(by_a) and (both.loc[by_a.index, "duplicate_of"] == by_a.duplicate_of).all()
    assert both.drop(by_a.index).duplicate_of.isin(part_ids(b)).all()


def test_against_key_errors_are_exit_2(halves, tmp_path, capsys):
    root, b = halves
    bad = tmp_path / "bad.toml"
    bad.write_text("against = 3\n" + _pipeline_file(tmp_path).read_text())
    code, err = cli(["run", str(bad), "-i", str(b), "-o", str(tmp_path / "o"), "-q"], capsys)
    assert code == 2 and "against must be a path or a list of paths" in err
    missing = tmp_path / "missing.toml"
    missing.write_text('against = "no-such-output"\n' + _pipeline_file(tmp_path).read_text())
    code, err = cli(["run", str(missing), "-i", str(b), "-o", str(tmp_path / "o"), "-q"], capsys)
    assert code == 2 and "not a finished curate output" in err and str(tmp_path / "no-such-output") in err
    assert not (tmp_path / "o").exists()


def test_interrupted_stage_resumes_to_the_same_result(halves, tmp_path, monkeypatch):
    root, b = halves
    from curate.index import minhash as minhash_index

    calls = {"n": 0}
    real = minhash_index._UnitPass.__call__

    def fail_second(self, unit):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("killed mid-stage")
        return real(self, unit)

    monkeypatch.setattr(minhash_index._UnitPass, "__call__", fail_second)
    out = tmp_path / "resumed"
    with pytest.raises(RuntimeError, match="mid-stage"):
        run(b, out, against=(root / "out-a",))
    assert not (out / "kept").exists()
    monkeypatch.setattr(minhash_index._UnitPass, "__call__", real)
    with pytest.raises(UsageError, match="config differs"):
        run(b, out, resume=True)  # --resume with other earlier outputs than the run began with
    run(b, out, against=(root / "out-a",), resume=True)
    for name in ("kept", "removed"):
        assert read_parts(out / name).equals(read_parts(root / "out-b" / name))


# Killed with SIGKILL, as tests/test_kill_resume.py kills other runs, at instants inside the
# matching stages: while a stage writes its index (after matching against the earlier index)
# and between semdedup's per-unit cluster files (the pass that assigns rows to the earlier
# centroids). Counted per process, like that file's events; prepended to its child script.
INDEX_KILLS = r"""
import os, signal
from pathlib import Path
_event, _, _nth = os.environ.get("CURATE_TEST_KILL_AT", ":0").partition(":")
_seen = {"n": 0}
_replace = os.replace
def _index_replace(src, dst, *a, **k):
    dst_path = Path(str(dst))
    name = "index" if dst_path.parent.parent.name == "index" else "npz" if dst_path.suffix == ".npz" else None
    if name == _event:
        _seen["n"] += 1
        if _seen["n"] == int(_nth or 0):
            os.kill(os.getpid(), signal.SIGKILL)
    return _replace(src, dst, *a, **k)
os.replace = _index_replace
"""
KILL_PIPELINE = """
[[stage]]
kind = "exact"
normalize = true
index = true
[[stage]]
kind = "minhash"
index = true
[[stage]]
kind = "semdedup"
model = "hashing"
threshold = 0.9
clusters = 8
index = true
"""


@pytest.mark.slow  # 14 s injected, longer random
@pytest.mark.parametrize("plan", ["injected", "random"])
def test_sigkilled_against_run_resumes_to_the_uninterrupted_bytes(tmp_path, monkeypatch, plan):
    """kill -9 of `curate run ... --against OLD` mid-stage (exact's, minhash's and semdedup's
    matching and index writes; or at random times on the process pool), then --resume: the
    same kept rows, ledger and index bytes as a run never killed."""
    from tests import test_kill_resume as kr

    (a, b), _ = write_parts(tmp_path, n=600, seed=11)
    pipeline = tmp_path / "pipeline.toml"
    pipeline.write_text(KILL_PIPELINE)
    run(a, tmp_path / "out-a", pipeline=tomllib.loads(KILL_PIPELINE))
    shutil.rmtree(a)

    def start(pipeline, corpus, out, resume, kill_at=None):
        argv = [
            sys.executable,
            "-c",
            INDEX_KILLS + kr.CHILD,
            "run",
            str(pipeline),
            "-i",
            str(corpus),
            "-o",
            str(out),
            "--quiet",
            "--against",
            str(tmp_path / "out-a"),
        ]
        argv += ["--resume"] if resume else []
        argv += ["--jobs", "1"] if kill_at else []  # injected kills are counted in this process
        return subprocess.Popen(
            argv, cwd=kr.ROOT, env=kr._env(kill_at), stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )

    monkeypatch.setattr(kr, "start_run", start)
    started = time.perf_counter()
    assert kr.finish(start(pipeline, b, tmp_path / "reference", resume=False)) == 0
    seconds = time.perf_counter() - started
    kept, removed = kr.read_dir(tmp_path / "reference" / "kept"), kr.read_dir(tmp_path / "reference" / "removed")
    assert removed.num_rows and {
        "exact_duplicate_of_earlier",
        "near_duplicate_of_earlier",
        "semantic_duplicate_of_earlier",
    } <= set(removed.column("reason").to_pylist())
    out = tmp_path / "out"
    if plan == "injected":
        # run 1 dies mid exact's index write (after its matching); run 2 redoes exact (3 index
        # files) and dies mid minhash's; run 3 redoes minhash and dies between semdedup's
        # per-unit cluster files; run 4 redoes semdedup and dies mid its index write (after
        # matching); run 5 finishes
        chain = ["index:2", "index:5", "npz:2", "index:2"]
        assert kr.resume_to_end(pipeline, b, out, chain) == len(chain)
    else:
        rng = np.random.default_rng(16)
        for attempt in range(3):  # the machine is shared: if the run outpaced every kill, kill sooner
            out = tmp_path / f"out-{attempt}"
            if kr.resume_to_end(
                pipeline, b, out, [float(d) for d in seconds * rng.uniform(0.2, 0.9, size=4) / 2**attempt]
            ):
                break
        else:
            pytest.fail("no run was killed")
    kr.assert_same_result(out, kept, removed)
    for path in sorted((tmp_path / "reference" / "index").rglob("*")):
        if path.is_file() and path.name != "index.json":
            assert path.read_bytes() == (out / path.relative_to(tmp_path / "reference")).read_bytes(), path


SEMANTIC = {"stage": [{"kind": "semdedup", "model": "hashing", "threshold": 0.9, "clusters": 8, "index": True}]}


@pytest.fixture(scope="module")
def semantic_halves(tmp_path_factory):
    root = tmp_path_factory.mktemp("semantic")
    (a, b), _ = write_parts(root, n=600, seed=5)
    run(a, root / "out-a", pipeline=SEMANTIC)
    shutil.rmtree(a)
    run(b, root / "out-b", pipeline=SEMANTIC, against=(root / "out-a",))
    return root, b


def test_semantic_copies_of_earlier_rows_are_removed_against_them(semantic_halves):
    root, b = semantic_halves
    earlier_texts = _part_texts(root / "joint", "p0-")
    texts = pq.read_table(b).to_pandas().set_index("id").text
    copies = set(texts.index[texts.isin(earlier_texts)])
    later = ledger(root / "out-b")
    matched = later[later.reason == "semantic_duplicate_of_earlier"]
    assert copies and copies <= set(matched.index)
    a_ids = part_ids(root / "joint") - part_ids(b)
    assert matched.duplicate_of.isin(a_ids).all()
    direct = matched[matched.score.notna() & matched.index.isin(copies)]
    assert (direct.score >= 0.9 - 1e-6).all()
    assert not later[later.reason == "semantic_duplicate"].duplicate_of.isin(a_ids).any()


def _part_texts(directory: Path, prefix: str) -> set[str]:
    return {
        t for p in sorted(directory.glob(f"{prefix}*.parquet")) for t in pq.read_table(p).column("text").to_pylist()
    }


def test_semantic_index_add_and_two_jobs(semantic_halves, tmp_path, capsys):
    root, b = semantic_halves
    grown = tmp_path / "out-a"
    shutil.copytree(root / "out-a", grown)  # the module's outputs stay as they are
    assert cli(["index", str(grown), "--add", str(root / "out-b"), "-q"], capsys)[0] == 0
    merged = json.loads((grown / "index" / "semdedup" / "index.json").read_text())
    assert merged["rows"] == 600
    run(b, tmp_path / "again", pipeline=SEMANTIC, against=(grown,), jobs=2)
    # B now matches its own rows in the merged index: every row is a duplicate of itself or earlier
    again = ledger(tmp_path / "again")
    assert len(again) == len(part_ids(b))
    assert (again.reason == "semantic_duplicate_of_earlier").all()


def _index_layout_holds(index_dir: Path, texts: dict[str, str], ids_in_order: list[str]) -> None:
    """Every index row's vector is its id's embedding; rows run by cluster (each nearest its
    cluster's centroid), in `ids_in_order` within a cluster."""
    from curate.algorithms.kmeans import assign
    from curate.embeddings.hashing import hashing_embed

    vectors = np.load(index_dir / "vectors.npy")
    offsets = np.load(index_dir / "cluster_offsets.npy")
    centroids = np.load(index_dir / "centroids.npy")
    ids = pq.read_table(index_dir / "ids.parquet").column("id").to_pylist()
    assert vectors.shape[0] == len(ids) == offsets[-1]
    assert np.array_equal(vectors, hashing_embed(pa.array([texts[i] for i in ids])))
    cluster = np.repeat(np.arange(len(centroids)), np.diff(offsets))
    assert np.array_equal(assign(vectors, centroids)[0], cluster)
    rank = {i: k for k, i in enumerate(ids_in_order)}
    for c in range(len(centroids)):
        mine = [rank[i] for i in ids[offsets[c] : offsets[c + 1]]]
        assert mine == sorted(mine)


def test_the_semantic_index_holds_each_rows_vector_by_cluster_built_and_merged(semantic_halves, tmp_path, capsys):
    root, b = semantic_halves
    joint = pq.read_table(root / "joint")
    texts = dict(zip(joint.column("id").to_pylist(), joint.column("text").to_pylist()))
    order = joint.column("id").to_pylist()
    _index_layout_holds(root / "out-a" / "index" / "semdedup", texts, order)
    grown = tmp_path / "out-a"
    shutil.copytree(root / "out-a", grown)
    assert cli(["index", str(grown), "--add", str(root / "out-b"), "-q"], capsys)[0] == 0
    _index_layout_holds(grown / "index" / "semdedup", texts, order)


def test_the_semantic_index_written_by_the_driver_or_by_tasks_is_the_same_bytes(
    semantic_halves, tmp_path, monkeypatch
):
    from curate.index import semantic

    root, b = semantic_halves
    joint = pq.read_table(root / "joint")
    texts = dict(zip(joint.column("id").to_pylist(), joint.column("text").to_pylist()))
    run(b, tmp_path / "tasks", pipeline=SEMANTIC, jobs=2)  # each unit's task writes its rows
    _index_layout_holds(tmp_path / "tasks" / "index" / "semdedup", texts, joint.column("id").to_pylist())
    monkeypatch.setattr(semantic, "_workers_write_here", lambda ctx, directory: False)
    run(b, tmp_path / "driver", pipeline=SEMANTIC, jobs=2)
    for name in ("vectors.npy", "cluster_offsets.npy", "centroids.npy", "ids.parquet"):
        one, two = (tmp_path / side / "index" / "semdedup" / name for side in ("tasks", "driver"))
        assert one.read_bytes() == two.read_bytes(), name


def test_writing_in_cluster_order_is_the_sort_for_any_blocks(tmp_path):
    from curate.index.semantic import create_vectors_file, write_rows

    def write_in_cluster_order(path, rows, dim, blocks):
        create_vectors_file(path, rows, dim)
        write_rows(path, dim, blocks)

    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(1000, 8)).astype(np.float32)
    label = rng.integers(0, 7, size=1000)
    order = np.argsort(label, kind="stable")
    dest = np.empty(1000, np.int64)
    dest[order] = np.arange(1000)
    for cuts in ([0, 1000], [0, 1, 2, 500, 999, 1000], [0, 333, 666, 1000]):
        path = tmp_path / f"v{len(cuts)}.npy"
        write_in_cluster_order(path, 1000, 8, ((dest[a:b], vectors[a:b]) for a, b in zip(cuts[:-1], cuts[1:])))
        saved = tmp_path / "saved.npy"
        np.save(saved, vectors[order])
        assert path.read_bytes() == saved.read_bytes()  # np.save's very bytes
    write_in_cluster_order(tmp_path / "empty.npy", 0, 8, iter(()))
    assert np.load(tmp_path / "empty.npy").shape == (0, 8)


def test_semantic_matching_gives_the_same_bytes_on_two_jobs(semantic_halves, tmp_path):
    root, b = semantic_halves
    run(b, tmp_path / "two", pipeline=SEMANTIC, against=(root / "out-a",), jobs=2)
    for name in ("kept", "removed"):
        assert read_parts(root / "out-b" / name).equals(read_parts(tmp_path / "two" / name))
    manifest = json.loads((tmp_path / "two" / "manifest.json").read_text())
    info = next(s["info"] for s in manifest["stages"] if s["name"] == "semdedup")
    assert info["earlier_matches"] > 0 and info["earlier_task_seconds"] > 0


def test_best_matches_is_the_brute_force_best_in_any_chunking(monkeypatch):
    from curate.index import semantic

    rng = np.random.default_rng(2)
    earlier = rng.normal(size=(300, 16)).astype(np.float32)
    new = np.concatenate(
        [earlier[rng.integers(0, 300, 40)] + rng.normal(scale=0.05, size=(40, 16)), rng.normal(size=(60, 16))]
    ).astype(np.float32)
    new[:5] = earlier[7]  # exact copies: ties between equal earlier rows go to the first
    earlier[11] = earlier[7]
    earlier /= np.linalg.norm(earlier, axis=1, keepdims=True)
    new /= np.linalg.norm(new, axis=1, keepdims=True)
    cos = np.einsum("id,jd->ij", new.astype(np.float64), earlier.astype(np.float64))
    want_rows = np.flatnonzero(cos.max(axis=1) >= 0.9)
    want_best = cos[want_rows].argmax(axis=1)
    results = []
    for dense_max in (1 << 22, 700, 1):  # one product, several chunks, one row at a time
        monkeypatch.setattr(semantic, "_DENSE_MAX", dense_max)
        results.append(semantic.best_matches(new, earlier, 0.9))
    for rows, best, sims in results:
        assert rows.tolist() == want_rows.tolist()
        assert best.tolist() == want_best.tolist()
        assert np.allclose(sims, cos[rows, best], atol=1e-6)
        assert (best[:5] == 7).all()
    assert all(np.array_equal(results[0][2], r[2]) for r in results)


def test_dask_gives_the_same_bytes(halves, semantic_halves, tmp_path):
    pytest.importorskip("distributed")
    from curate.engine.executors import DaskExecutor

    root, b = halves
    semantic_root, semantic_b = semantic_halves
    with DaskExecutor.local(2) as executor:
        run_pipeline(
            parse_pipeline(PIPELINE, "test"),
            b,
            tmp_path / "dask",
            RunOptions(executor=executor, unit_rows=150, against=(str(root / "out-a"),)),
        )
        run_pipeline(
            parse_pipeline(SEMANTIC, "test"),
            semantic_b,
            tmp_path / "dask-semantic",
            RunOptions(executor=executor, unit_rows=150, against=(str(semantic_root / "out-a"),)),
        )
    for name in ("kept", "removed"):
        assert read_parts(root / "out-b" / name).equals(read_parts(tmp_path / "dask" / name))
        assert read_parts(semantic_root / "out-b" / name).equals(read_parts(tmp_path / "dask-semantic" / name))


def test_signature_index_verifies_by_estimate_in_less_space(halves, tmp_path, capsys):
    """index_verify = "estimate": the index keeps 16-bit signature slots instead of shingle
    fingerprints; later rows are verified against it by estimated Jaccard, close to the joint
    run (which verifies exactly); an exact run against it is exit 2 naming both settings."""
    root, b = halves
    a = tmp_path / "A"
    shutil.copytree(root / "joint", a, ignore=lambda _, names: [n for n in names if not n.startswith("p0-")])
    estimate = {
        "stage": [{**s, "index_verify": "estimate"} if s["kind"] == "minhash" else s for s in PIPELINE["stage"]]
    }
    run(a, tmp_path / "out-a", pipeline=estimate)
    shutil.rmtree(a)
    directory = tmp_path / "out-a" / "index" / "minhash"
    meta = json.loads((directory / "index.json").read_text())
    assert meta["settings"]["index_verify"] == "estimate"
    assert "signatures.npy" in meta["files"] and "fingerprints.npy" not in meta["files"]
    signatures = np.load(directory / "signatures.npy")
    assert signatures.dtype == np.uint16 and signatures.shape == (meta["rows"], 128)
    exact_bytes = sum(
        f["bytes"]
        for f in json.loads((root / "out-a" / "index" / "minhash" / "index.json").read_text())["files"].values()
    )
    assert sum(f["bytes"] for f in meta["files"].values()) < exact_bytes  # 60-word texts: 256 bytes a row vs ~5 x 60

    run(b, tmp_path / "out-b", pipeline=estimate, against=(tmp_path / "out-a",))
    joint = ledger(root / "out-joint", part_ids(b))
    later = ledger(tmp_path / "out-b")
    want, got = set(joint.index[joint.stage == "minhash"]), set(later.index[later.stage == "minhash"])
    assert len(want & got) >= 0.9 * len(want) and len(want & got) >= 0.9 * len(got)
    earlier = later[later.reason == "near_duplicate_of_earlier"]
    assert len(earlier) and earlier.duplicate_of.isin(part_ids(root / "joint") - part_ids(b)).all()
    direct = earlier.score.dropna()
    assert (direct >= 0.8).all() and np.allclose(direct * 128, np.round(direct * 128))  # estimates: k / num_perm

    code, err = cli(
        [
            "dedup",
            "-i",
            str(b),
            "-o",
            str(tmp_path / "o"),
            "--method",
            "minhash",
            "--against",
            str(tmp_path / "out-a"),
        ],
        capsys,
    )
    assert code == 2 and "index_verify = 'exact'" in err and "index_verify = 'estimate'" in err
    before = {p: p.read_bytes() for p in (root / "out-a" / "index").rglob("*") if p.is_file()}
    code, err = cli(
        ["index", str(root / "out-a"), "--add", str(tmp_path / "out-b"), "-q"], capsys
    )  # an exact index takes no signature index
    assert code == 2 and "index_verify" in err
    assert before == {
        p: p.read_bytes() for p in (root / "out-a" / "index").rglob("*") if p.is_file()
    }  # no stage merged
    assert cli(["index", str(tmp_path / "out-a"), "--add", str(tmp_path / "out-b"), "-q"], capsys)[0] == 0
    merged = np.load(directory / "signatures.npy")
    assert merged.shape == (
        len(signatures) + json.loads((tmp_path / "out-b" / "index" / "minhash" / "index.json").read_text())["rows"],
        128,
    )
    assert np.array_equal(merged[: len(signatures)], signatures)


def test_new_row_reaches_an_earlier_group_through_a_row_the_earlier_run_removed(tmp_path):
    """a2 (an edit of a1) was removed in A; b is near a2 but not near a1: the joint run links b
    to a1 through a2, and so must the run against A's index (which keeps removed rows)."""
    base = [f"w{i}" for i in range(60)]
    a1 = " ".join(base)
    a2 = " ".join(base + [f"x{i}" for i in range(8)])  # J(a1, a2) = 56/64
    b = " ".join(base + [f"x{i}" for i in range(16)])  # J(b, a2) = 64/72, J(b, a1) = 56/72 < 0.8
    filler = [" ".join(f"f{j}_{i}" for i in range(40)) for j in range(6)]
    pq.write_table(
        pa.table({"id": ["a1", "a2", "fa"], "text": [a1, a2, filler[0]]}), _dir(tmp_path / "A") / "a.parquet"
    )
    pq.write_table(pa.table({"id": ["b", "fb"], "text": [b, filler[1]]}), _dir(tmp_path / "B") / "b.parquet")
    near = {"stage": [{"kind": "minhash", "index": True}]}
    run(tmp_path / "A", tmp_path / "out-a", pipeline=near)
    assert ledger(tmp_path / "out-a").loc["a2", "duplicate_of"] == "a1"
    run(tmp_path / "B", tmp_path / "out-b", pipeline=near, against=(tmp_path / "out-a",))
    row = ledger(tmp_path / "out-b").loc["b"]
    assert (row.reason, row.duplicate_of) == ("near_duplicate_of_earlier", "a1")
    assert row.score == pytest.approx(64 / 72)


def _dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def test_the_ledger_against_an_earlier_output_is_in_input_order_whatever_the_units(tmp_path):
    """Rows matched against an earlier output and rows duplicated within the run go to the
    ledger in input order, so one run gives the same ledger whatever its batches and work
    units (it used to list each batch's earlier matches first)."""
    from test_formats import make_rows, write_as

    rows = make_rows(400, seed=7)
    first = write_as(tmp_path / "a", ".parquet", rows[:200], parts=2)
    second = write_as(tmp_path / "b", ".parquet", rows[200:], parts=2)
    stages = [
        {"kind": "exact", "normalize": True, "index": True},
        {"kind": "minhash", "threshold": 0.7, "ngram": 3, "index": True},
    ]
    spec = parse_pipeline({"stage": stages}, "test")
    run_pipeline(spec, first, tmp_path / "a-out", RunOptions(jobs=1))
    ledgers = []
    for name, options in (("whole", RunOptions(jobs=1)), ("cut", RunOptions(jobs=2, unit_rows=50))):
        run_pipeline(
            parse_pipeline({"stage": stages, "batch_size": 64 if name == "cut" else 65536}, "test"),
            second,
            tmp_path / name,
            replace_against(options, tmp_path / "a-out"),
        )
        ledgers.append(read_parts(tmp_path / name / "removed"))
    reasons = set(ledgers[0].column("reason").to_pylist())
    assert {"exact_duplicate", "exact_duplicate_of_earlier"} <= reasons, reasons
    assert ledgers[0].equals(ledgers[1])


def replace_against(options: RunOptions, earlier: Path) -> RunOptions:
    from dataclasses import replace

    return replace(options, against=(str(earlier),))
