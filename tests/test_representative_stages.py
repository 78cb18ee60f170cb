"""The `representative` rule on the exact and minhash stages: the rule's pick is kept, the rest
of its group point at it, on every executor; bad columns exit 2; earlier outputs stay kept."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import cli, random_texts, write_shards

from curate.errors import UsageError
from curate.io.parts import read_parts
from curate.pipeline import RunOptions, parse_pipeline, run_pipeline

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.executor_parity import (  # noqa: E402,F401
    REPRESENTATIVE_CASES,
    assert_same_everywhere,
    dask_executors,
    run_on_every_executor,
)


def _qualities(n: int, seed: int) -> list[float | None]:
    rng = np.random.default_rng(seed)
    values = [float(v) for v in rng.integers(0, 5, size=n)]  # few values: ties happen
    return [None if rng.random() < 0.1 else v for v in values]


def _expected_exact(texts: list[str], q: list[float | None]) -> dict[str, str]:
    """{removed id: kept id} by brute force: per text, the row of highest q (nulls last), then earliest."""
    groups: dict[str, list[int]] = {}
    for i, t in enumerate(texts):
        groups.setdefault(t, []).append(i)
    out = {}
    for members in groups.values():
        best = min(members, key=lambda i: (-q[i] if q[i] is not None else np.inf, i))
        out.update({f"doc-{i:06d}": f"doc-{best:06d}" for i in members if i != best})
    return out


def _ledger(out: Path) -> dict[str, str]:
    removed = read_parts(out / "removed")
    return dict(zip(removed.column("id").to_pylist(), removed.column("duplicate_of").to_pylist()))


@pytest.mark.parametrize("shards, batch, jobs", [(1, 1000, 1), (4, 7, 1), (3, 50, 2)])
def test_exact_max_column_keeps_the_highest_row_of_each_group(tmp_path, shards, batch, jobs):
    texts = random_texts(300, seed=shards, dup_rate=0.5)
    q = _qualities(len(texts), seed=batch)
    source = write_shards(tmp_path / "in", texts, shards=shards, extra={"q": q})
    spec = parse_pipeline({"batch_size": batch, "stage": [{"kind": "exact", "representative": "max:q"}]})
    run_pipeline(spec, source, tmp_path / "out", RunOptions(jobs=jobs, unit_rows=40))
    expected = _expected_exact(texts, q)
    assert _ledger(tmp_path / "out") == expected
    kept = set(read_parts(tmp_path / "out" / "kept").column("id").to_pylist())
    assert set(expected.values()) <= kept and not set(expected) & kept
    # the rule really changed picks: some kept row is not its group's first
    first = _expected_exact(texts, [0.0] * len(texts))
    assert expected != first


def test_min_and_shortest_rules_on_exact(tmp_path):
    texts = ["a b", "c", "a b", "a b", "c"]
    source = write_shards(tmp_path / "in", texts, shards=2, extra={"q": [3.0, 1.0, 2.0, 2.0, None]})
    for rule, expected in [
        ("min:q", {"doc-000000": "doc-000002", "doc-000003": "doc-000002", "doc-000004": "doc-000001"}),
        ("first", {"doc-000002": "doc-000000", "doc-000003": "doc-000000", "doc-000004": "doc-000001"}),
    ]:
        out = tmp_path / rule.replace(":", "_")
        run_pipeline(parse_pipeline({"stage": [{"kind": "exact", "representative": rule}]}), source, out)
        assert _ledger(out) == expected, rule


def _near_copies(seed: int = 0) -> tuple[list[str], dict[int, int]]:
    """Base texts, then near copies with a few words appended (longer, Jaccard > 0.9): returns
    the texts and {copy index: base index}."""
    rng = np.random.default_rng(seed)
    vocab = [f"w{i}" for i in range(3000)]
    texts: list[str] = []
    for _ in range(30):
        texts.append(" ".join(rng.choice(vocab, size=int(rng.integers(120, 200)))))
    copies = {}
    for b in range(0, 30, 3):
        copies[len(texts)] = b
        texts.append(texts[b] + " " + " ".join(rng.choice(vocab, size=4)))
    for b in range(0, 30, 6):  # a second, shorter copy: one word dropped
        copies[len(texts)] = b
        texts.append(" ".join(texts[b].split(" ")[1:]))
    return texts, copies


def test_minhash_longest_keeps_the_longest_member(tmp_path):
    texts, copies = _near_copies()
    source = write_shards(tmp_path / "in", texts, shards=3)
    first, longest = tmp_path / "first", tmp_path / "longest"
    run_pipeline(parse_pipeline({"stage": [{"kind": "minhash"}]}), source, first)
    run_pipeline(parse_pipeline({"stage": [{"kind": "minhash", "representative": "longest"}]}), source, longest)
    groups: dict[str, set[str]] = {}
    for removed, kept in _ledger(first).items():
        groups.setdefault(kept, {kept}).add(removed)
    assert {int(k[4:]) for k in groups} == set(copies.values())  # the planted groups, base kept
    expected = {}
    for members in groups.values():
        best = min(members, key=lambda d: (-len(texts[int(d[4:])]), int(d[4:])))
        expected.update({m: best for m in members if m != best})
    assert _ledger(longest) == expected
    # every longer copy (appended words) is now the one kept
    kept = set(read_parts(longest / "kept").column("id").to_pylist())
    assert {f"doc-{c:06d}" for c, b in copies.items() if len(texts[c]) > len(texts[b])} <= kept
    scores = read_parts(longest / "removed").column("score").to_pylist()
    assert all(0.8 <= s <= 1.0 for s in scores)


def test_representative_is_the_same_on_every_executor(tmp_path, dask_executors):
    texts = random_texts(400, seed=5, dup_rate=0.5)
    near, _ = _near_copies(1)
    texts = texts + near
    q = _qualities(len(texts), seed=9)
    source = write_shards(tmp_path / "in", texts, shards=4, extra={"q": q})
    stages = [REPRESENTATIVE_CASES["exact"], REPRESENTATIVE_CASES["minhash"]]
    outputs = run_on_every_executor(tmp_path, stages, source, dask_executors, unit_rows=60)
    assert_same_everywhere(outputs)
    ledger = read_parts(next(iter(outputs.values())) / "removed")
    assert set(ledger.column("stage").to_pylist()) == {"exact", "minhash"}


@pytest.mark.parametrize(
    "rule, message", [("max:nope", "'nope', which the input lacks"), ("min:text", "'text' of type string")]
)
def test_a_bad_column_is_a_one_line_usage_error(tmp_path, rule, message, capsys):
    source = write_shards(tmp_path / "in", ["a", "a", "b"], shards=1, extra={"q": [1.0, 2.0, 3.0]})
    for kind in ("exact", "minhash"):
        spec = parse_pipeline({"stage": [{"kind": kind, "representative": rule}]})
        with pytest.raises(UsageError, match=message):
            run_pipeline(spec, source, tmp_path / f"out-{kind}", RunOptions(jobs=1))
    pipeline = tmp_path / "p.toml"
    pipeline.write_text(f'[[stage]]\nkind = "exact"\nrepresentative = "{rule}"\n')
    code, err = cli(["run", str(pipeline), "-i", str(source), "-o", str(tmp_path / "cli"), "-q"], capsys)
    assert code == 2 and rule.split(":")[1] in err and len(err.strip().splitlines()) == 1


def test_a_bad_rule_is_refused_when_the_pipeline_is_read():
    with pytest.raises(UsageError, match="representative"):
        parse_pipeline({"stage": [{"kind": "exact", "representative": "best"}]})


def test_with_against_the_earlier_outputs_rows_stay_kept(tmp_path):
    """The new run's copy has the higher q, but the earlier output already published its row:
    the new copy goes to the ledger pointing at the earlier row."""
    old = write_shards(
        tmp_path / "old", ["alpha beta", "gamma"], shards=1, ids=["old-0", "old-1"], extra={"q": [1.0, 1.0]}
    )
    new = write_shards(
        tmp_path / "new",
        ["alpha beta", "delta", "delta"],
        shards=1,
        ids=["new-0", "new-1", "new-2"],
        extra={"q": [9.0, 1.0, 5.0]},
    )
    stage = {"kind": "exact", "representative": "max:q", "index": True}
    run_pipeline(parse_pipeline({"stage": [stage]}), old, tmp_path / "out-old")
    run_pipeline(
        parse_pipeline({"stage": [stage]}), new, tmp_path / "out-new", RunOptions(against=(str(tmp_path / "out-old"),))
    )
    removed = read_parts(tmp_path / "out-new" / "removed")
    rows = sorted(zip(*(removed.column(c).to_pylist() for c in ("id", "reason", "duplicate_of"))))
    assert rows == [("new-0", "exact_duplicate_of_earlier", "old-0"), ("new-1", "exact_duplicate", "new-2")]


def test_minhash_with_against_keeps_the_earlier_row_and_picks_within_new_groups(tmp_path):
    texts, copies = _near_copies(2)
    old_ids = [f"old-{i}" for i in range(30)]
    old = write_shards(tmp_path / "old", texts[:30], shards=1, ids=old_ids)
    new_texts = texts[30:]  # near copies of old rows, plus a new group: a base and a longer copy
    base = " ".join(f"fresh{i}" for i in range(150))  # no old row is near it
    new_texts = new_texts + [base, base + " and a few more"]
    new_ids = [f"new-{i}" for i in range(len(new_texts))]
    new = write_shards(tmp_path / "new", new_texts, shards=1, ids=new_ids)
    stage = {"kind": "minhash", "representative": "longest", "index": True}
    run_pipeline(parse_pipeline({"stage": [{"kind": "minhash", "index": True}]}), old, tmp_path / "out-old")
    run_pipeline(
        parse_pipeline({"stage": [stage]}), new, tmp_path / "out-new", RunOptions(against=(str(tmp_path / "out-old"),))
    )
    removed = read_parts(tmp_path / "out-new" / "removed").to_pylist()
    earlier = {r["id"]: r["duplicate_of"] for r in removed if r["reason"] == "near_duplicate_of_earlier"}
    # every near copy of an old row, although longer, points at the old row, which stays kept there
    expected = {f"new-{c - 30}": f"old-{b}" for c, b in copies.items()}
    assert {k: v for k, v in earlier.items() if k in expected} == expected
    within = {r["id"]: r["duplicate_of"] for r in removed if r["reason"] == "near_duplicate"}
    n = len(new_texts)
    assert within == {f"new-{n - 2}": f"new-{n - 1}"}  # the new pair: its longer row is kept
