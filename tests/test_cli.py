"""The CLI contract: exit codes, one-line errors that name the file and the fix, no output on failure."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import random_texts, run_cli, write_shards

from curate.io.parts import list_parts, read_parts


def _bad_inputs(tmp: Path) -> dict[str, tuple[Path, list[str], str]]:
    """name -> (input path, extra args, text the message must contain)."""
    cases = {}

    corrupt = write_shards(tmp / "corrupt", random_texts(40), shards=2)
    last = sorted(corrupt.glob("*.parquet"))[-1]
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    cases["truncated parquet"] = (corrupt, [], last.name)

    missing = tmp / "missing-col"
    missing.mkdir()
    pq.write_table(pa.table({"id": ["a"], "body": ["x"]}), missing / "m.parquet")
    cases["missing text column"] = (missing, [], "--text-column")

    wrong = tmp / "wrong-type"
    wrong.mkdir()
    pq.write_table(pa.table({"id": ["a"], "text": [1.5]}), wrong / "w.parquet")
    cases["text not a string"] = (wrong, [], "w.parquet")

    binary = tmp / "binary"
    binary.mkdir()
    pq.write_table(pa.table({"id": ["a"], "text": [b"\xff\xfe"]}), binary / "b.parquet")
    cases["binary text column"] = (binary, [], "UTF-8")

    nulls = write_shards(tmp / "nulls", ["a", None, "b"], shards=1)
    cases["null texts"] = (nulls, [], "--drop-null-text")

    dup_ids = write_shards(tmp / "dup-ids", ["a", "b", "c"], shards=1, ids=["x", "y", "x"])
    cases["duplicate ids"] = (dup_ids, [], "duplicate id 'x'")

    empty = tmp / "empty-dir"
    empty.mkdir()
    cases["empty input directory"] = (empty, [], "no .parquet files")
    cases["missing input directory"] = (tmp / "does-not-exist", [], "does not exist")

    not_utf8 = tmp / "not-utf8"
    not_utf8.mkdir()
    arr = pa.array([b"ok", b"\xff bad"], pa.binary()).view(pa.string())
    pq.write_table(pa.table({"id": ["a", "b"], "text": arr}), not_utf8 / "u.parquet")
    cases["invalid UTF-8 in the text"] = (not_utf8, [], "u.parquet")
    return cases


@pytest.mark.parametrize(
    "case",
    [
        "truncated parquet",
        "missing text column",
        "text not a string",
        "binary text column",
        "null texts",
        "duplicate ids",
        "empty input directory",
        "missing input directory",
        "invalid UTF-8 in the text",
    ],
)
def test_bad_input_is_exit_2_with_one_line_and_no_kept_output(tmp_path, capsys, case):
    source, extra, needle = _bad_inputs(tmp_path)[case]
    out = tmp_path / "out"
    code, _, err = run_cli(
        ["dedup", "-i", str(source), "-o", str(out), "--method", "exact", "--quiet", *extra], capsys
    )
    assert code == 2, err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    assert needle in lines[0]
    assert "fix:" in lines[0] or "does not exist" in lines[0]
    assert "Traceback" not in err
    assert not (out / "kept").exists()


def test_malformed_pipeline_is_exit_2(tmp_path, capsys, corpus):
    source, _ = corpus
    pipeline = tmp_path / "p.toml"
    pipeline.write_text("[[stage]]\nkind = 'exact'\nfoo = \n")
    code, _, err = run_cli(["run", str(pipeline), "-i", str(source), "-o", str(tmp_path / "o")], capsys)
    assert code == 2 and "p.toml" in err and "malformed TOML" in err


def test_unknown_method_is_exit_2(tmp_path, capsys, corpus):
    source, _ = corpus
    code, _, err = run_cli(["dedup", "-i", str(source), "-o", str(tmp_path / "o"), "--method", "fuzzy"], capsys)
    assert code == 2 and "exact, minhash or semantic" in err


def test_dedup_then_verify_and_inspect(tmp_path, capsys, corpus):
    source, texts = corpus
    out = tmp_path / "out"
    code, stdout, _ = run_cli(["dedup", "-i", str(source), "-o", str(out), "--method", "exact"], capsys)
    assert code == 0 and "exact" in stdout
    code, stdout, _ = run_cli(["verify", str(out)], capsys)
    assert code == 0 and f"{len(texts):,} input rows" in stdout
    code, stdout, _ = run_cli(["inspect", str(out)], capsys)
    assert code == 0 and "exact_duplicate" in stdout


def test_verify_fails_with_the_offending_ids_when_a_row_is_lost(tmp_path, capsys, corpus):
    source, _ = corpus
    out = tmp_path / "out"
    run_cli(["dedup", "-i", str(source), "-o", str(out), "--quiet"], capsys)
    part = list_parts(out / "kept")[0]
    table = pq.read_table(part)
    pq.write_table(table.slice(1), part)
    lost = table.column("id")[0].as_py()
    code, _, err = run_cli(["verify", str(out)], capsys)
    assert code == 3 and lost in err  # its own code: 1 is for internal errors


@pytest.mark.parametrize(
    "argv,hint", [(["dedupe"], "Did you mean 'dedup'"), (["dedup", "--bogus"], "No such option: --bogus")]
)
def test_unknown_command_or_option_is_a_usage_error(argv, hint, capsys):
    code, _, err = run_cli(argv, capsys)
    assert code == 2 and hint in err and "internal error" not in err


def test_drop_null_text_flag(tmp_path, capsys):
    source = write_shards(tmp_path / "in", ["a", None, "b"], shards=1)
    out = tmp_path / "out"
    code, _, _ = run_cli(["dedup", "-i", str(source), "-o", str(out), "--drop-null-text", "--quiet"], capsys)
    assert code == 0
    assert read_parts(out / "removed").column("reason").to_pylist() == ["null_text"]


def test_set_passes_stage_options(tmp_path, capsys):
    source = write_shards(tmp_path / "in", ["Hello  World", "hello world"], shards=1)
    out = tmp_path / "out"
    code, _, _ = run_cli(["dedup", "-i", str(source), "-o", str(out), "--set", "normalize=true", "--quiet"], capsys)
    assert code == 0 and read_parts(out / "removed").num_rows == 1


@pytest.mark.slow  # the whole demo, about 40 s; the wheel check runs `curate demo` in every CI run too
def test_demo_runs_and_verifies(tmp_path, capsys):
    out = tmp_path / "demo"
    code, stdout, _ = run_cli(["demo", "-o", str(out), "--quiet"], capsys)
    assert code == 0 and "demo corpus: 6,000 rows" in stdout
    code, _, _ = run_cli(["verify", str(out)], capsys)
    assert code == 0
    code, _, _ = run_cli(["demo", "-o", str(out), "--quiet"], capsys)
    assert code == 0, "the demo can run again into its own output"


def test_score_loss_clusters_flag_sets_the_seta_groups(tmp_path, capsys):
    texts = random_texts(60, seed=4, dup_rate=0.0)
    source = write_shards(tmp_path / "in", texts, shards=1, extra={"my_loss": [float(i % 13) for i in range(60)]})
    out = tmp_path / "out"
    code, _, err = run_cli(
        [
            "score",
            "-i",
            str(source),
            "-o",
            str(out),
            "--metric",
            "loss",
            "--clusters",
            "4",
            "--set",
            'loss_column="my_loss"',
            "--quiet",
        ],
        capsys,
    )
    assert code == 0, err
    clusters = read_parts(out / "kept").column("loss_cluster").to_pylist()
    assert sorted(set(clusters)) == [0, 1, 2, 3]


def test_inspect_gives_each_stage_its_own_reasons(tmp_path, capsys):
    """Two exact stages: the second removes only the case variants, and inspect says so."""
    source = write_shards(tmp_path / "in", ["a b", "a b", "A  B", "c"], shards=1)
    pipeline = tmp_path / "p.toml"
    pipeline.write_text('[[stage]]\nkind = "exact"\n[[stage]]\nkind = "exact"\nnormalize = true\n')
    code, _, err = run_cli(["run", str(pipeline), "-i", str(source), "-o", str(tmp_path / "out"), "--quiet"], capsys)
    assert code == 0, err
    from curate.output.read import stage_summaries

    reasons = {s.name: s.reasons for s in stage_summaries(tmp_path / "out")}
    assert reasons["exact"] == {"exact_duplicate": 1} and reasons["exact_2"] == {"exact_duplicate": 1}
