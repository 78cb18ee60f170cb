"""The minhash stage through the real runner: known near duplicates found, the earliest kept,
empty texts left alone, results independent of batch size and workers, conservation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curate.commands.inspect import verify_output
from curate.errors import UsageError
from curate.pipeline import RunOptions, parse_pipeline, run_pipeline
from curate.stages.minhash import MinHashDedup

VOCAB = [f"w{i}" for i in range(5000)]


def _doc(rng: np.random.Generator, words: int) -> list[str]:
    return list(rng.choice(VOCAB, size=words))


def make_corpus(seed: int = 0) -> tuple[pa.Table, dict[str, str]]:
    """Base documents, near copies (Jaccard well above 0.8), far edits (well below), exact
    copies, empty and short texts; returns the table and {near-dup id: expected representative}."""
    rng = np.random.default_rng(seed)
    rows: list[tuple[str, str]] = []
    expected: dict[str, str] = {}
    bases = []
    for b in range(40):
        words = _doc(rng, int(rng.integers(150, 400)))
        bases.append(words)
        rows.append((f"base{b:02d}", " ".join(words)))
    for b in range(0, 40, 2):  # near copies: one word in 200 replaced, cased and punctuated differently
        words = list(bases[b])
        for pos in rng.choice(len(words), size=max(1, len(words) // 200), replace=False):
            words[pos] = "changed"
        text = " ".join(words).upper().replace(" ", ",  ", 3)
        rows.append((f"near{b:02d}", text))
        expected[f"near{b:02d}"] = f"base{b:02d}"
    for b in range(1, 40, 4):  # far edits: 8% of the words replaced (Jaccard ~0.5)
        words = list(bases[b])
        for pos in rng.choice(len(words), size=len(words) // 12, replace=False):
            words[pos] = rng.choice(VOCAB)
        rows.append((f"far{b:02d}", " ".join(words)))
    for b in (3, 7):  # exact copies placed later
        rows.append((f"copy{b:02d}", " ".join(bases[b])))
        expected[f"copy{b:02d}"] = f"base{b:02d}"
    order = rng.permutation(len(rows))
    # Every base before its copies, so the expected representative is the earliest.
    rows = sorted((rows[i] for i in order), key=lambda r: not r[0].startswith("base"))
    rows += [
        ("empty1", ""),
        ("empty2", ""),
        ("punct1", "?!"),
        ("punct2", "?!"),
        ("short1", "tiny text"),
        ("short2", "Tiny, TEXT!"),
    ]
    expected["short2"] = "short1"
    table = pa.table({"id": [r[0] for r in rows], "text": [r[1] for r in rows], "extra": list(range(len(rows)))})
    return table, expected


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    table, expected = make_corpus()
    root = tmp_path_factory.mktemp("minhash-in")
    half = table.num_rows // 2
    pq.write_table(table.slice(0, half), root / "a.parquet")
    pq.write_table(table.slice(half), root / "b.parquet")
    return root, expected


def run(
    source: Path, out: Path, batch_size: int = 65536, workers: int = 2, **options
) -> tuple[pl.DataFrame, pl.DataFrame]:
    spec = parse_pipeline({"batch_size": batch_size, "stage": [{"kind": "minhash", **options}]}, "test")
    run_pipeline(spec, source, out, RunOptions(jobs=workers))
    kept = pl.read_parquet(out / "kept")
    removed = pl.read_parquet(out / "removed")
    return kept, removed


def test_known_near_duplicates_are_removed_with_their_representative(corpus, tmp_path: Path) -> None:
    source, expected = corpus
    kept, removed = run(source, tmp_path / "out")
    got = dict(zip(removed["id"].to_list(), removed["duplicate_of"].to_list()))
    assert got == expected
    assert set(removed["stage"].to_list()) == {"minhash"}
    assert set(removed["reason"].to_list()) == {"near_duplicate"}
    assert ((removed["score"] > 0.8) & (removed["score"] <= 1.0)).all()
    assert {"empty1", "empty2", "punct1", "punct2"} <= set(kept["id"].to_list())
    assert "extra" in kept.columns and "__curate_row" not in kept.columns
    assert verify_output(tmp_path / "out").ok


@pytest.mark.parametrize("verify", ["estimate", "exact"])
def test_same_result_for_any_batch_size_and_worker_count(corpus, tmp_path: Path, verify: str) -> None:
    source, _ = corpus
    results = []
    for k, (batch_size, workers) in enumerate([(65536, 1), (7, 2), (64, 2), (1, 1)]):
        kept, removed = run(source, tmp_path / f"out{k}", batch_size=batch_size, workers=workers, verify=verify)
        results.append((kept["id"].to_list(), removed.sort("id").to_dicts()))
    assert all(r == results[0] for r in results[1:])


def test_no_verification_removes_a_superset(corpus, tmp_path: Path) -> None:
    source, _ = corpus
    _, exact = run(source, tmp_path / "exact", verify="exact", bands=32, rows=2)
    _, none = run(source, tmp_path / "none", verify="none", bands=32, rows=2)
    assert set(exact["id"].to_list()) <= set(none["id"].to_list())
    assert len(none) > len(exact)  # 32 x 2 bands catch the far edits too, unverified


def test_after_exact_stage_with_gaps_in_row_ordinals(corpus, tmp_path: Path) -> None:
    source, expected = corpus
    spec = parse_pipeline(
        {"batch_size": 16, "stage": [{"kind": "exact", "normalize": True}, {"kind": "minhash"}]}, "test"
    )
    run_pipeline(spec, source, tmp_path / "out", RunOptions(jobs=2))
    removed = pl.read_parquet(tmp_path / "out" / "removed")
    by_stage = dict(zip(removed["id"].to_list(), removed["stage"].to_list()))
    assert set(by_stage) == set(expected) | {"empty2", "punct2"}
    assert by_stage["copy03"] == "exact" and by_stage["near00"] == "minhash"
    assert verify_output(tmp_path / "out").ok


def test_char_shingles_find_the_near_copies(corpus, tmp_path: Path) -> None:
    source, expected = corpus
    _, removed = run(source, tmp_path / "out", unit="char", ngram=8)
    assert {k for k in expected if k.startswith(("near", "copy"))} <= set(removed["id"].to_list())


def test_options_are_validated() -> None:
    for bad in (
        {"threshold": 1.5},
        {"ngram": 0},
        {"verify": "maybe"},
        {"unit": "byte"},
        {"bands": 20, "rows": 10},
        {"threshold": "high"},
    ):
        with pytest.raises(UsageError):
            MinHashDedup.from_options(bad)
    assert MinHashDedup(bands=16).lsh_shape() == (16, 8)
    assert MinHashDedup().lsh_shape() == (14, 9)


def test_cli_dedup_minhash(corpus, tmp_path: Path) -> None:
    from curate.cli import main

    source, expected = corpus
    main(
        [
            "dedup",
            "-i",
            str(source),
            "-o",
            str(tmp_path / "out"),
            "--method",
            "minhash",
            "--threshold",
            "0.8",
            "--ngram",
            "5",
            "--num-perm",
            "64",
            "--quiet",
        ]
    )
    removed = pl.read_parquet(tmp_path / "out" / "removed")
    assert set(removed["id"].to_list()) == set(expected)


def test_exact_mode_does_not_trust_equal_signatures_of_tiny_sets(tmp_path: Path) -> None:
    """{s1, s2} vs {s1} (Jaccard 0.5): one-permutation signatures are identical whenever s1 and
    s2 share a bin and s1 wins it (~1/256 per pair); over 1,500 pairs that happens (P > 0.99),
    and exact verification must still keep every pair apart."""
    rng = np.random.default_rng(4)
    rows = []
    for k in range(1500):
        words = [f"t{k}x{i}" for i in range(5)]
        rows.append((f"a{k}", " ".join(words)))
        rows.append((f"b{k}", " ".join(words + [str(rng.integers(10**9))])))
    pq.write_table(pa.table({"id": [r[0] for r in rows], "text": [r[1] for r in rows]}), tmp_path / "tiny.parquet")
    _, removed = run(tmp_path / "tiny.parquet", tmp_path / "exact", verify="exact")
    assert len(removed) == 0
    _, none = run(tmp_path / "tiny.parquet", tmp_path / "none", verify="none")
    assert len(none) > 0  # the collisions do happen: LSH puts some of these pairs in one bucket


# ---------------------------------------------------------------------------------------
# Map-reduce fit: the same bytes for any executor, worker count and unit size.


def spanning_corpus(seed: int = 0) -> pa.Table:
    """make_corpus plus a bucket larger than the all-pairs limit (seven exact copies of one
    base, spread through the corpus) and a chain of edits (each link J > 0.8, the ends not),
    rows shuffled after the bases so groups span many small work units."""
    table, _ = make_corpus(seed)
    rng = np.random.default_rng(seed + 1)
    ids, texts = table.column("id").to_pylist(), table.column("text").to_pylist()
    words = texts[ids.index("base05")].split(" ")
    chain = [" ".join(words)]
    for step in range(4):  # each link replaces 2% of the words: J(link) ~0.9, J(ends) ~0.65
        edited = chain[-1].split(" ")
        for pos in rng.choice(len(edited), size=max(1, len(edited) // 50), replace=False):
            edited[pos] = f"chain{step}x{pos}"
        chain.append(" ".join(edited))
    extra = [(f"copy11-{k}", texts[ids.index("base11")]) for k in range(7)] + [
        (f"chain{k}", t) for k, t in enumerate(chain[1:])
    ]
    rows = list(zip(ids, texts)) + extra
    head, tail = rows[:40], rows[40:]  # the 40 bases first: each group's earliest row is its base
    tail = [tail[i] for i in rng.permutation(len(tail))]
    rows = head + tail
    return pa.table({"id": [r[0] for r in rows], "text": [r[1] for r in rows], "extra": list(range(len(rows)))})


@pytest.fixture(scope="module")
def spanning(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("minhash-spanning")
    table = spanning_corpus()
    third = table.num_rows // 3
    for k, (lo, hi) in enumerate([(0, third), (third, 2 * third), (2 * third, table.num_rows)]):
        pq.write_table(table.slice(lo, hi - lo), root / f"part-{k}.parquet", row_group_size=10)
    return root


def run_tables(source: Path, out: Path, options: RunOptions, **stage) -> tuple[pa.Table, pa.Table, dict]:
    spec = parse_pipeline({"stage": [{"kind": "minhash", **stage}]}, "test")
    result = run_pipeline(spec, source, out, options)
    return pq.read_table(out / "kept"), pq.read_table(out / "removed"), result.manifest["stages"][1]["info"]


VERIFY = ["exact", "estimate", "none"]


def serial_reference(table: pa.Table, verify: str, **options) -> dict[str, tuple[str, float]]:
    """{removed id: (duplicate_of, score)} from the array functions run on the whole corpus at
    once, as a single process computes it: every band's buckets over every row, each candidate
    pair verified (no skipping), connected components rooted at the earliest row."""
    from curate.algorithms import minhash as mh

    stage = MinHashDedup(verify=verify, **options)
    bands, rows = stage.lsh_shape()
    shingles, offsets = mh.text_shingles(table.column("text").combine_chunks(), stage.ngram, stage.unit, 0)
    sig = mh.signatures(shingles, offsets, stage.num_perm, 0)
    has = np.flatnonzero(np.diff(offsets) > 0)
    li, lj = mh.bucket_pairs(mh.band_keys(sig, bands, rows, 0)[has])
    i, j = has[li], has[lj]
    est = mh.estimated_jaccard(sig[i], sig[j])
    if verify == "none":
        keep = np.ones(len(i), dtype=bool)
    elif verify == "estimate":
        keep = est >= stage.threshold
    else:
        sets, set_offsets = mh.unique_sorted_sets(shingles, offsets)
        sd = np.sqrt(stage.threshold * (1 - stage.threshold) / stage.num_perm)
        keep = (mh.exact_jaccard(sets, set_offsets, i, j) >= stage.threshold) & (est >= stage.threshold - 6 * sd)
    groups = mh.duplicate_groups(table.num_rows, i[keep], j[keep], est[keep])
    ids = table.column("id").to_pylist()
    return {ids[r]: (ids[rep], float(s)) for r, rep, s in zip(groups.removed, groups.representative, groups.score)}


@pytest.mark.parametrize("verify", VERIFY)
def test_map_reduce_fit_gives_the_serial_reference(spanning, tmp_path: Path, verify: str) -> None:
    _, removed, info = run_tables(
        spanning, tmp_path / "out", RunOptions(jobs=2, unit_rows=9), verify=verify, bands=16, rows=8
    )
    assert info["work_units"] >= 10
    got = {r["id"]: (r["duplicate_of"], r["score"]) for r in removed.to_pylist()}
    assert got == serial_reference(pq.read_table(spanning), verify, bands=16, rows=8)
    assert got["copy11-6"] == ("base11", 1.0)
    if verify != "none":  # the whole chain hangs off its base, though its far end is not near it
        assert {got[f"chain{k}"][0] for k in range(4)} == {"base05"}


def test_same_bytes_for_jobs_and_unit_sizes(spanning, tmp_path: Path) -> None:
    for verify in VERIFY:
        kept, removed, _ = run_tables(spanning, tmp_path / f"serial-{verify}", RunOptions(jobs=1), verify=verify)
        assert len(removed) > 20
        for k, unit_rows in enumerate([7, 25]):
            other_kept, other_removed, info = run_tables(
                spanning, tmp_path / f"jobs2-{verify}-{k}", RunOptions(jobs=2, unit_rows=unit_rows), verify=verify
            )
            assert info["work_units"] > 3
            assert kept.equals(other_kept) and removed.equals(other_removed), (verify, unit_rows)


@pytest.mark.parametrize("workers", [2, pytest.param(3, marks=pytest.mark.slow)])  # 3: about 10 s, CI runs it
def test_same_bytes_on_a_dask_cluster(spanning, tmp_path: Path, workers: int) -> None:
    pytest.importorskip("distributed")
    from curate.engine.executors import DaskExecutor

    with DaskExecutor.local(workers) as executor:
        for verify in VERIFY:
            kept, removed, _ = run_tables(spanning, tmp_path / f"serial-{verify}", RunOptions(jobs=1), verify=verify)
            dask_kept, dask_removed, info = run_tables(
                spanning,
                tmp_path / f"dask-{verify}",
                RunOptions(executor=executor, unit_rows=8 + workers),
                verify=verify,
            )
            assert info["work_units"] > workers
            assert kept.equals(dask_kept) and removed.equals(dask_removed), verify


def test_a_source_without_texts_removes_nothing(tmp_path: Path) -> None:
    """Every text null and dropped by the input check: the stage sees units with no rows."""
    table = pa.table({"id": ["a", "b", "c"], "text": pa.array([None, None, None], pa.string())})
    pq.write_table(table, tmp_path / "nulls.parquet")
    spec = parse_pipeline({"input": {"drop_null_text": True}, "stage": [{"kind": "minhash"}]}, "test")
    result = run_pipeline(spec, tmp_path / "nulls.parquet", tmp_path / "out", RunOptions(jobs=2))
    assert result.kept_rows == 0
    assert result.manifest["stages"][1]["rows_removed"] == 0
    assert verify_output(tmp_path / "out").ok


def test_sorted_sets_gather_what_a_fresh_sort_gives_and_leave_no_scratch(tmp_path):
    """Exact verification builds each row's sorted set once (`SortedSets`) and gathers it in
    later blocks: every gather, first or repeated, equals sorting the rows' shingles afresh."""
    from curate.algorithms.minhash import unique_sorted_sets
    from curate.algorithms.minhash_rows import RowStore, SortedSets, unit_file

    rng = np.random.default_rng(5)
    rows_per_unit = [30, 0, 45]
    for unit, rows in enumerate(rows_per_unit):
        counts = rng.integers(0, 40, rows).astype(np.int64)  # some rows without shingles
        shingles = rng.integers(0, 60, int(counts.sum()), dtype=np.uint64) << np.uint64(50)  # repeats within rows
        unit_file(tmp_path, unit, "counts").parent.mkdir(parents=True, exist_ok=True)
        counts.tofile(unit_file(tmp_path, unit, "counts"))
        shingles.tofile(unit_file(tmp_path, unit, "shingles"))
    starts = np.concatenate([[0], np.cumsum(rows_per_unit)]).astype(np.int64)
    store = RowStore(tmp_path, starts, 128)
    nodes = np.sort(rng.choice(int(starts[-1]), 50, replace=False)).astype(np.int64)
    with SortedSets(store, nodes) as sets:
        for _ in range(6):
            positions = np.sort(rng.choice(len(nodes), int(rng.integers(1, 20)), replace=False))
            got, got_offsets = sets.gather(positions)
            want, want_offsets = unique_sorted_sets(*store.shingles(nodes[positions]))
            assert np.array_equal(got_offsets, want_offsets) and np.array_equal(got, want)
        assert any((tmp_path / "scratch").iterdir())
    assert not any((tmp_path / "scratch").iterdir())


def variants_and_copies(variants: int = 24, copies: int = 12, seed: int = 5) -> pa.Table:
    """One text in `variants` versions, each with 2 of its 300 words replaced (every two versions
    at J ~0.87: one component, every row near every other), then exact copies of the first
    `copies` versions. A copy's strongest pair is with its own version (J = 1)."""
    rng = np.random.default_rng(seed)
    base = _doc(rng, 300)
    texts = []
    for v in range(variants):
        words = list(base)
        for pos in rng.choice(len(words), size=2, replace=False):
            words[pos] = f"edit{v}x{pos}"
        texts.append(" ".join(words))
    texts += texts[:copies]
    return pa.table({"id": [f"row{k:03d}" for k in range(len(texts))], "text": texts})


@pytest.mark.parametrize("jobs", [1, 2])
def test_a_large_component_checked_in_groups_gives_the_serial_reference(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, jobs: int
) -> None:
    """In groups of 16 rows (breadth first from row 0: rows 0-15, 16-31, 32-35), every copy is
    in another group than its version, so the pairs between groups join the groups at the
    first copy; the other copies must still be checked, or they would score ~0.87, not 1.
    Blocks of about one pair (_EXACT_BLOCK, where the checks run in this process: jobs 1), so a
    block's checks see the joins of the block before."""
    import curate.stages.minhash as stage_module

    table = variants_and_copies()
    source = tmp_path / "in.parquet"
    pq.write_table(table, source)
    monkeypatch.setattr(stage_module, "_EXACT_BLOCK", 500)
    whole_kept, whole_removed, whole = run_tables(source, tmp_path / "whole", RunOptions(jobs=jobs))
    assert whole["large_components"] == 0
    monkeypatch.setattr(stage_module, "_SPLIT_NODES", 16)
    kept, removed, info = run_tables(source, tmp_path / "groups", RunOptions(jobs=jobs))
    assert info["large_components"] == 1
    assert kept.equals(whole_kept) and removed.equals(whole_removed)
    got = {r["id"]: (r["duplicate_of"], r["score"]) for r in removed.to_pylist()}
    assert got == serial_reference(table, "exact")
    assert len(got) == table.num_rows - 1
    assert all(got[f"row{24 + k:03d}"][1] == 1.0 for k in range(12))
