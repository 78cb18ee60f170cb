"""Property tests over generated corpora and shard layouts (hypothesis, modest example counts).

- conservation: every input id exactly once in kept or removed, for every registered stage kind
  (with the options table below; a kind without an entry fails) and for random pipelines;
- options: every option of every kind refuses the invalid values its declared constraints
  generate, naming the option, and the defaults pass;
- idempotence: a dedup pipeline run on its own kept output removes nothing;
- determinism: the same kept rows and ledger whatever the batch size;
- the shard reader streams every row once, in order, for any file / row-group / batch layout;
- the conservation check itself catches a lost or doubled row.
"""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import curate.data
from curate.commands.inspect import verify_output
from curate.errors import UsageError
from curate.io.inputs import ROW_COLUMN, InputSet
from curate.io.parts import list_parts
from curate.pipeline import RunOptions, parse_pipeline, run_pipeline
from curate.stages.base import available_kinds, stage_class
from curate.stages.constraints import invalid_option_values

DEMO_CORPUS = str(Path(curate.data.__file__).parent / "demo.parquet")
SETTINGS = settings(
    max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)

# Per stage kind: the pipeline that exercises it (prerequisite stages first, the kind last).
# The corpus carries a float `quality` column, so pools can run without a scoring stage.
STAGE_TABLE: dict[str, list[list[dict]]] = {
    "exact": [[{"kind": "exact", "normalize": False}], [{"kind": "exact", "normalize": True}]],
    "minhash": [[{"kind": "minhash", "threshold": 0.8}], [{"kind": "minhash", "threshold": 0.5}]],
    "embed": [[{"kind": "embed", "model": "hashing"}]],
    "semdedup": [[{"kind": "embed", "model": "hashing"}, {"kind": "semdedup"}]],
    "prototypes": [
        [{"kind": "embed", "model": "hashing"}, {"kind": "prototypes", "clusters": 3, "keep": "hard", "fraction": 0.8}]
    ],
    "pools": [[{"kind": "pools", "score": "quality", "pools": 3}]],
    "loss_clusters": [[{"kind": "loss_clusters", "loss_column": "quality"}]],
    # the bundled demo corpus as the evaluation set: single words ("data") match, pairs rarely
    "decontaminate": [
        [{"kind": "decontaminate", "ngram": n, "eval_sets": [{"name": "demo", "path": DEMO_CORPUS}]}] for n in (1, 2)
    ],
}
DEDUP_KINDS = ("exact", "minhash")
KINDS = available_kinds()

WORD_POOL = ["data", "Data", "curation", "pipeline", "shard", "héllo", "wörld", "日本語", "x", ""]
text_strategy = st.one_of(
    st.lists(st.sampled_from(WORD_POOL), min_size=0, max_size=12).map(" ".join),
    st.sampled_from(["same text", "SAME TEXT", "  same   text ", "", "same text"]),
    st.text(alphabet="ab \n", max_size=8),
)


@st.composite
def corpora(draw, max_shards: int = 4, max_rows: int = 40):
    """(shards as lists of texts, whether ids are given, Parquet row-group size)."""
    shards = draw(st.lists(st.lists(text_strategy, max_size=max_rows), min_size=1, max_size=max_shards))
    return shards, draw(st.booleans()), draw(st.integers(1, 16))


def write_shards(directory: Path, shards: list[list[str]], with_ids: bool, row_group: int) -> None:
    directory.mkdir(parents=True)
    for index, texts in enumerate(shards):
        n = len(texts)
        columns: dict[str, pa.Array] = {}
        if with_ids:
            columns["id"] = pa.array([f"{index}-{i}" for i in range(n)], pa.string())
        columns["text"] = pa.array(texts, pa.string())
        columns["quality"] = pa.array(np.random.default_rng(index).random(n))
        pq.write_table(pa.table(columns), directory / f"shard-{index:02d}.parquet", row_group_size=row_group)


def run(stages: list[dict], source: Path, out: Path, batch_size: int = 7) -> None:
    spec = parse_pipeline({"batch_size": batch_size, "stage": [dict(s) for s in stages]}, "property pipeline")
    run_pipeline(spec, source, out, RunOptions())


def run_or_refuse(stages: list[dict], source: Path, out: Path, batch_size: int = 7) -> bool:
    """True when the run finished. The one refusal a valid pipeline may meet on a tiny corpus:
    more pools than the rows that reach the pools stage, a one-line usage error (exit 2) that
    leaves the output unfinished, never finished with pools left empty."""
    try:
        run(stages, source, out, batch_size)
        return True
    except UsageError as exc:
        found = re.search(r"pools: (\d+) pools for (\d+) rows would leave pools empty", str(exc))
        if found is None:
            raise
        assert 0 < int(found.group(2)) < int(found.group(1))
        manifest = out / "manifest.json"
        assert not manifest.exists() or not json.loads(manifest.read_text())["finalized"]
        return False


def read_dir(directory: Path) -> pa.Table:
    parts = list_parts(directory)
    return pa.concat_tables([pq.read_table(p) for p in parts]) if parts else pa.table({})


def assert_conservation(out: Path, input_rows: int) -> None:
    report = verify_output(out)
    assert report.ok, (report.missing, report.duplicated, report.unknown, report.problems)
    assert report.input_rows == input_rows == report.kept_rows + report.removed_rows
    manifest = json.loads((out / "manifest.json").read_text())
    flowing = input_rows
    for entry in manifest["stages"]:  # each stage's rows in = the previous stage's rows out
        assert entry["rows_in"] == flowing
        assert entry["rows_in"] == entry["rows_out"] + entry["rows_removed"]
        flowing = entry["rows_out"]
    assert flowing == report.kept_rows


def kind_cases() -> list:
    cases = []
    for kind in sorted(set(KINDS) | set(STAGE_TABLE)):
        marks = []
        if kind not in KINDS:
            marks.append(pytest.mark.skip(reason=f"stage kind '{kind}' is not registered in this checkout"))
        needed = {s["kind"] for p in STAGE_TABLE.get(kind, []) for s in p} - set(KINDS)
        if needed and kind in KINDS:
            marks.append(pytest.mark.skip(reason=f"'{kind}' needs unregistered stage(s) {sorted(needed)}"))
        cases.append(pytest.param(kind, marks=marks, id=kind))
    return cases


@pytest.mark.parametrize("kind", kind_cases())
@SETTINGS
@given(corpus=corpora(), variant=st.integers(0, 3), batch_size=st.integers(1, 20))
def test_every_stage_kind_conserves_rows(kind, corpus, variant, batch_size):
    shards, with_ids, row_group = corpus
    pipelines = STAGE_TABLE.get(kind)
    assert pipelines, f"no options table entry for stage kind '{kind}': add one to STAGE_TABLE"
    with tempfile.TemporaryDirectory() as tmp:
        write_shards(Path(tmp) / "in", shards, with_ids, row_group)
        if run_or_refuse(pipelines[variant % len(pipelines)], Path(tmp) / "in", Path(tmp) / "out", batch_size):
            assert_conservation(Path(tmp) / "out", sum(map(len, shards)))


def test_every_registered_kind_has_a_stage_table_entry():
    missing = sorted(set(KINDS) - set(STAGE_TABLE))
    assert not missing, f"add STAGE_TABLE entries for {missing}"


OPTION_CASES = [
    pytest.param(kind, name, id=f"{kind}.{name}") for kind in KINDS for name in stage_class(kind).option_names()
]


@pytest.mark.parametrize("kind, name", OPTION_CASES)
@settings(max_examples=10, deadline=None)
@given(data=st.data())
def test_every_option_refuses_the_invalid_values_its_constraints_generate(kind, name, data):
    cls = stage_class(kind)
    value = data.draw(st.sampled_from(invalid_option_values(cls, name)), label=name)
    with pytest.raises(UsageError, match=f"stage '{kind}': option '{name}' must be"):
        cls.from_options({name: value})
    with pytest.raises(
        UsageError, match=f"option '{name}' must be"
    ):  # built directly: __init__ stores, the runner's check refuses
        cls(**{name: value}).validate_options()


@pytest.mark.parametrize("kind", KINDS)
def test_the_defaults_and_the_table_options_pass(kind):
    cls = stage_class(kind)
    for name, default in cls.option_defaults().items():
        assert any(c.accepts(default) for c in cls.option_constraints[name]), (kind, name, default)
    for pipeline in STAGE_TABLE.get(kind, []):  # the defaults plus what the kind needs (loss_clusters: a column)
        options = {k: v for k, v in pipeline[-1].items() if k != "kind"}
        cls.from_options(options).validate_options()


def _runnable_pipelines() -> list[list[dict]]:
    return [
        p for kind in KINDS if kind in STAGE_TABLE for p in STAGE_TABLE[kind] if all(s["kind"] in KINDS for s in p)
    ]


@SETTINGS
@given(corpus=corpora(), picks=st.lists(st.integers(0, 1000), min_size=1, max_size=4), batch_size=st.integers(1, 20))
def test_whole_pipelines_conserve_rows(corpus, picks, batch_size):
    shards, with_ids, row_group = corpus
    pool = _runnable_pipelines()
    stages = [stage for pick in picks for stage in pool[pick % len(pool)]]
    with tempfile.TemporaryDirectory() as tmp:
        write_shards(Path(tmp) / "in", shards, with_ids, row_group)
        if run_or_refuse(stages, Path(tmp) / "in", Path(tmp) / "out", batch_size):
            assert_conservation(Path(tmp) / "out", sum(map(len, shards)))


def _dedup_pipelines() -> list[list[dict]]:
    return [p for kind in DEDUP_KINDS if kind in KINDS for p in STAGE_TABLE[kind]]


@SETTINGS
@given(corpus=corpora(), picks=st.lists(st.integers(0, 1000), min_size=1, max_size=3))
def test_dedup_pipeline_on_its_own_output_removes_nothing(corpus, picks):
    shards, with_ids, row_group = corpus
    pool = _dedup_pipelines()
    stages = [stage for pick in picks for stage in pool[pick % len(pool)]]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_shards(root / "in", shards, with_ids, row_group)
        run(stages, root / "in", root / "first")
        run(stages, root / "first" / "kept", root / "second")
        assert read_dir(root / "second" / "removed").num_rows == 0
        assert read_dir(root / "second" / "kept").equals(read_dir(root / "first" / "kept"))


def _same_output(a: Path, b: Path) -> None:
    kept_a, kept_b = read_dir(a / "kept"), read_dir(b / "kept")
    assert kept_a.column_names == kept_b.column_names
    for name in kept_a.column_names:
        col_a, col_b = kept_a.column(name), kept_b.column(name)
        if pa.types.is_floating(col_a.type):  # scores may differ in the last bits with blocking
            np.testing.assert_allclose(
                col_a.to_numpy(zero_copy_only=False), col_b.to_numpy(zero_copy_only=False), rtol=1e-5, atol=1e-6
            )
        else:
            assert col_a.equals(col_b), name
    keys = [("stage", "ascending"), ("id", "ascending")]
    cols = ["id", "stage", "reason", "duplicate_of"]
    assert (
        read_dir(a / "removed").select(cols).sort_by(keys).equals(read_dir(b / "removed").select(cols).sort_by(keys))
    )


@SETTINGS
@given(
    corpus=corpora(),
    picks=st.lists(st.integers(0, 1000), min_size=1, max_size=3),
    sizes=st.lists(st.integers(1, 64), min_size=2, max_size=2, unique=True),
)
@pytest.mark.slow  # 9-11 s; the default run compares unit sizes and executors (test_minhash_stage, test_executors)
def test_results_do_not_depend_on_batch_size(corpus, picks, sizes):
    shards, with_ids, row_group = corpus
    pool = _runnable_pipelines()
    stages = [stage for pick in picks for stage in pool[pick % len(pool)]]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_shards(root / "in", shards, with_ids, row_group)
        finished = run_or_refuse(stages, root / "in", root / "a", batch_size=sizes[0])
        # the same refusal (too few rows for the pools) whatever the batch size, or none
        assert run_or_refuse(stages, root / "in", root / "b", batch_size=sizes[1]) == finished
        if finished:
            _same_output(root / "a", root / "b")


@SETTINGS
@given(corpus=corpora(max_shards=6, max_rows=60), batch_size=st.integers(1, 70))
def test_reader_streams_every_row_once_in_order(corpus, batch_size):
    shards, with_ids, row_group = corpus
    with tempfile.TemporaryDirectory() as tmp:
        write_shards(Path(tmp) / "in", shards, with_ids, row_group)
        inputs = InputSet.scan(Path(tmp) / "in")
        batches = list(inputs.batches(batch_size))
        assert all(0 < b.num_rows <= batch_size for b in batches)
        texts = [t for b in batches for t in b.column("text").to_pylist()]
        ordinals = [o for b in batches for o in b.column(ROW_COLUMN).to_pylist()]
        assert texts == [t for s in shards for t in s]
        assert ordinals == list(range(sum(map(len, shards))))


@SETTINGS
@given(corpus=corpora(), victim=st.integers(0, 10_000), double=st.booleans())
def test_verify_catches_a_lost_or_doubled_row(corpus, victim, double):
    shards, with_ids, row_group = corpus
    if not any(shards):
        return
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_shards(root / "in", shards, with_ids, row_group)
        run([{"kind": "exact"}], root / "in", root / "out")
        part = list_parts(root / "out" / "kept")[0]
        kept = pq.read_table(part)
        if kept.num_rows == 0:
            return
        row = victim % kept.num_rows
        if double:
            tampered = pa.concat_tables([kept, kept.slice(row, 1)])
        else:
            tampered = pa.concat_tables([kept.slice(0, row), kept.slice(row + 1)])
        pq.write_table(tampered, part)
        report = verify_output(root / "out")
        assert not report.ok
        assert (report.duplicated if double else report.missing) == [str(kept.column("id")[row].as_py())]
