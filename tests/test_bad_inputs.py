"""Bad input through the real CLI: either a correct result, or exit 2 with one line naming the
file and the fix. Never a traceback, never a lost row, never rows in OUT/kept of a failed run.

Each case builds its input in code; the table in docs/reliability.md lists them with outcomes."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import cli

from curate.commands.inspect import verify_output
from curate.io.parts import list_parts

EXACT = '[[stage]]\nkind = "exact"\nnormalize = true\n'


def read_dir(directory: Path) -> pa.Table:
    parts = list_parts(directory)
    return pa.concat_tables([pq.read_table(p) for p in parts]) if parts else pa.table({})


def write(path: Path, table: pa.Table) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return path


def shard(ids: list[str], texts: list[str | None], **extra) -> pa.Table:
    return pa.table({"id": pa.array(ids, pa.string()), "text": pa.array(texts, pa.string()), **extra})


@pytest.fixture
def env(tmp_path):
    pipeline = tmp_path / "pipeline.toml"
    pipeline.write_text(EXACT)
    return tmp_path, pipeline


def run(env, capsys, inputs: Path | str, *extra: str, pipeline: Path | None = None) -> tuple[int, str, Path]:
    root, default_pipeline = env
    out = root / "out"
    code, err = cli(
        ["run", str(pipeline or default_pipeline), "-i", str(inputs), "-o", str(out), "--quiet", *extra], capsys
    )
    return code, err, out


def assert_refused(code: int, err: str, out: Path, names: str | Path | None, *needles: str) -> None:
    """Exit 2, one line, names the file (when there is one) and a fix, and OUT/kept is absent."""
    assert code == 2, err
    assert "Traceback" not in err and "internal error" not in err, err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "fix:" in err, err
    if names is not None:
        assert str(names) in err, err
    for needle in needles:
        assert needle in err, err
    assert not (out / "kept").exists()


def assert_conserved(code: int, err: str, out: Path) -> pa.Table:
    assert code == 0, err
    report = verify_output(out)
    assert report.ok, (report.missing, report.duplicated, report.unknown, report.problems)
    return read_dir(out / "kept")


# ---------------------------------------------------------------------------------------
# Files that are not what they claim.


def test_truncated_parquet_file(env, capsys):
    root, _ = env
    good = write(root / "in" / "a.parquet", shard(["a", "b"], ["x one", "y two"]))
    bad = write(root / "in" / "b.parquet", shard(["c", "d"], ["z three", "w four"]))
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    code, err, out = run(env, capsys, good.parent)
    assert_refused(code, err, out, bad, "Parquet")


def test_parquet_with_corrupt_data_pages_but_intact_footer(env, capsys):
    root, _ = env
    texts = [f"text number {i} " * 5 for i in range(2000)]
    path = write(root / "in" / "a.parquet", shard([str(i) for i in range(2000)], texts))
    raw = bytearray(path.read_bytes())
    rng = np.random.default_rng(0)
    for pos in rng.integers(8, len(raw) // 2, size=200):  # scribble over data pages, keep the footer
        raw[pos] ^= 0xFF
    path.write_bytes(bytes(raw))
    code, err, out = run(env, capsys, path.parent)
    assert_refused(code, err, out, path)


def test_random_bytes_named_parquet(env, capsys):
    root, _ = env
    path = root / "in" / "noise.parquet"
    path.parent.mkdir()
    path.write_bytes(np.random.default_rng(1).bytes(5000))
    code, err, out = run(env, capsys, path.parent)
    assert_refused(code, err, out, path, "Parquet")


# ---------------------------------------------------------------------------------------
# Schemas.


def test_text_column_of_wrong_type(env, capsys):
    root, _ = env
    path = write(root / "in" / "a.parquet", pa.table({"id": ["a", "b"], "text": pa.array([1, 2], pa.int64())}))
    code, err, out = run(env, capsys, path.parent)
    assert_refused(code, err, out, path, "int64", "--text-column")


def test_binary_text_column_is_refused_with_a_decode_hint(env, capsys):
    root, _ = env
    path = write(root / "in" / "a.parquet", pa.table({"id": ["a"], "text": pa.array([b"bytes"], pa.binary())}))
    code, err, out = run(env, capsys, path.parent)
    assert_refused(code, err, out, path, "UTF-8")


def test_missing_text_column(env, capsys):
    root, _ = env
    path = write(root / "in" / "a.parquet", pa.table({"id": ["a"], "body": ["hello there"]}))
    code, err, out = run(env, capsys, path.parent)
    assert_refused(code, err, out, path, "'text'", "--text-column")


def test_missing_text_column_is_fixed_by_naming_it(env, capsys):
    root, _ = env
    path = write(root / "in" / "a.parquet", pa.table({"id": ["a", "b"], "body": ["hello there", "hello there"]}))
    code, err, out = run(env, capsys, path.parent, "--text-column", "body")
    assert assert_conserved(code, err, out).column("id").to_pylist() == ["a"]


def test_mixed_schemas_with_an_extra_column_fill_nulls(env, capsys):
    root, _ = env
    write(root / "in" / "a.parquet", shard(["a", "b"], ["one text", "two text"]))
    write(root / "in" / "b.parquet", shard(["c"], ["three text"], score=pa.array([0.5])))
    code, err, out = run(env, capsys, root / "in")
    kept = assert_conserved(code, err, out)
    assert kept.column("id").to_pylist() == ["a", "b", "c"]
    assert kept.column("score").to_pylist() == [None, None, 0.5]


def test_mixed_schemas_with_conflicting_types(env, capsys):
    root, _ = env
    write(root / "in" / "a.parquet", shard(["a"], ["one text"], tag=pa.array(["x"])))
    bad = write(root / "in" / "b.parquet", shard(["b"], ["two text"], tag=pa.array([[1, 2]], pa.list_(pa.int64()))))
    code, err, out = run(env, capsys, root / "in")
    assert_refused(code, err, out, bad, "same column types")


def test_some_shards_without_the_id_column(env, capsys):
    root, _ = env
    write(root / "in" / "a.parquet", shard(["a"], ["one text"]))
    bad = write(root / "in" / "b.parquet", pa.table({"text": ["two text"]}))
    code, err, out = run(env, capsys, root / "in")
    assert_refused(code, err, out, bad, "id column")


def test_reserved_internal_column_name(env, capsys):
    root, _ = env
    path = write(root / "in" / "a.parquet", shard(["a"], ["one text"], __curate_row=pa.array([1])))
    code, err, out = run(env, capsys, path.parent)
    assert_refused(code, err, out, path, "reserved")


# ---------------------------------------------------------------------------------------
# Values.


def test_empty_strings_are_texts_like_any_other(env, capsys):
    root, _ = env
    write(root / "in" / "a.parquet", shard(["a", "b", "c", "d"], ["", "real text", "", "   "]))
    code, err, out = run(env, capsys, root / "in")
    kept = assert_conserved(code, err, out)
    # normalize=true collapses whitespace, so "   " duplicates "" too
    assert kept.column("id").to_pylist() == ["a", "b"]


def test_null_text_is_an_error_by_default(env, capsys):
    root, _ = env
    path = write(root / "in" / "a.parquet", shard(["a", "b", "c"], ["one text", None, "two text"]))
    code, err, out = run(env, capsys, path.parent)
    assert_refused(code, err, out, path, "null text at row 1", "--drop-null-text")


def test_drop_null_text_sends_nulls_to_the_ledger(env, capsys):
    root, _ = env
    write(root / "in" / "a.parquet", shard(["a", "b", "c", "d"], ["one text", None, "ONE TEXT", None]))
    write(root / "in" / "b.parquet", shard(["e"], [None]))
    code, err, out = run(env, capsys, root / "in", "--drop-null-text")
    kept = assert_conserved(code, err, out)
    assert kept.column("id").to_pylist() == ["a"]
    removed = read_dir(out / "removed").to_pydict()
    reasons = dict(zip(removed["id"], removed["reason"]))
    assert reasons == {"b": "null_text", "d": "null_text", "e": "null_text", "c": "exact_duplicate"}


def test_all_texts_null_with_drop_gives_an_empty_kept(env, capsys):
    root, _ = env
    write(root / "in" / "a.parquet", shard(["a", "b"], [None, None]))
    code, err, out = run(env, capsys, root / "in", "--drop-null-text")
    kept = assert_conserved(code, err, out)
    assert kept.num_rows == 0 and "text" in kept.column_names


def test_invalid_utf8_in_the_text_column(env, capsys):
    root, _ = env
    texts = pa.array([b"fine text", b"caf\xe9 latin-1", b"more"], pa.binary()).view(pa.string())
    path = write(root / "in" / "a.parquet", pa.table({"id": ["a", "b", "c"], "text": texts}))
    code, err, out = run(env, capsys, path.parent)
    assert_refused(code, err, out, path, "row 1", "UTF-8")


def test_non_utf8_bytes_in_a_binary_passthrough_column_pass_untouched(env, capsys):
    root, _ = env
    blobs = [b"\xff\xfe\x00raw", b"\x80\x81", b"", None]
    write(
        root / "in" / "a.parquet",
        shard(["a", "b", "c", "d"], ["t one", "t two", "t one", "t three"], blob=pa.array(blobs, pa.binary())),
    )
    code, err, out = run(env, capsys, root / "in")
    kept = assert_conserved(code, err, out)
    assert kept.column("blob").to_pylist() == [b"\xff\xfe\x00raw", b"\x80\x81", None]


def test_duplicate_ids_within_a_shard(env, capsys):
    root, _ = env
    path = write(root / "in" / "a.parquet", shard(["a", "b", "a"], ["x text", "y text", "z text"]))
    code, err, out = run(env, capsys, path.parent)
    assert_refused(code, err, out, path, "duplicate id 'a'")


def test_duplicate_ids_across_shards(env, capsys):
    root, _ = env
    write(root / "in" / "a.parquet", shard(["a", "b"], ["x text", "y text"]))
    second = write(root / "in" / "b.parquet", shard(["c", "b"], ["z text", "w text"]))
    code, err, out = run(env, capsys, root / "in")
    assert_refused(code, err, out, second, "duplicate id 'b'")


def test_null_ids(env, capsys):
    root, _ = env
    path = write(root / "in" / "a.parquet", shard(["a", None], ["x text", "y text"]))
    code, err, out = run(env, capsys, path.parent)
    assert_refused(code, err, out, path, "null id")


def test_integer_ids_become_string_ledger_ids(env, capsys):
    root, _ = env
    write(
        root / "in" / "a.parquet",
        pa.table({"id": pa.array([10, 20, 30], pa.int64()), "text": ["same", "other", "same"]}),
    )
    code, err, out = run(env, capsys, root / "in")
    kept = assert_conserved(code, err, out)
    assert kept.column("id").to_pylist() == [10, 20]
    assert read_dir(out / "removed").to_pydict()["duplicate_of"] == ["10"]


def test_zero_row_shards(env, capsys):
    root, _ = env
    write(root / "in" / "a.parquet", shard([], []))
    write(root / "in" / "b.parquet", shard(["a", "b"], ["x text", "x text"]))
    write(root / "in" / "c.parquet", shard([], []))
    code, err, out = run(env, capsys, root / "in")
    assert assert_conserved(code, err, out).column("id").to_pylist() == ["a"]


def test_only_zero_row_shards(env, capsys):
    root, _ = env
    write(root / "in" / "a.parquet", shard([], []))
    code, err, out = run(env, capsys, root / "in")
    assert assert_conserved(code, err, out).num_rows == 0


def test_dictionary_and_large_string_texts_are_read_as_text(env, capsys):
    root, _ = env
    write(
        root / "in" / "a.parquet", pa.table({"id": ["a", "b"], "text": pa.array(["same", "same"]).dictionary_encode()})
    )
    write(
        root / "in" / "b.parquet", pa.table({"id": ["c", "d"], "text": pa.array(["same", "new"], pa.large_string())})
    )
    code, err, out = run(env, capsys, root / "in")
    assert assert_conserved(code, err, out).column("id").to_pylist() == ["a", "d"]


def huge_document_case(tmp_path: Path, capsys, megabytes: int) -> None:
    """One document of `megabytes` MB next to small ones, twice: it dedups like any text."""
    rng = np.random.default_rng(0)
    words = np.array(["alpha", "beta", "gamma", "delta", "epsilon"])
    huge = " ".join(words[rng.integers(5, size=megabytes * 1024 * 1024 // 6)])
    write(tmp_path / "in" / "a.parquet", shard(["small", "huge"], ["small text", huge]))
    write(tmp_path / "in" / "b.parquet", shard(["huge-again"], [huge]))
    pipeline = tmp_path / "p.toml"
    pipeline.write_text(EXACT)
    out = tmp_path / "out"
    code, err = cli(["run", str(pipeline), "-i", str(tmp_path / "in"), "-o", str(out), "--quiet"], capsys)
    kept = assert_conserved(code, err, out)
    assert kept.column("id").to_pylist() == ["small", "huge"]
    assert read_dir(out / "removed").to_pydict()["duplicate_of"] == ["huge"]


def test_a_4_mb_single_document(tmp_path, capsys):
    huge_document_case(tmp_path, capsys, 4)


@pytest.mark.slow
def test_a_100_mb_single_document(tmp_path, capsys):
    huge_document_case(tmp_path, capsys, 100)


# ---------------------------------------------------------------------------------------
# Where the input is and how the run is configured.


def test_empty_input_directory(env, capsys):
    root, _ = env
    (root / "in").mkdir()
    code, err, out = run(env, capsys, root / "in")
    assert_refused(code, err, out, root / "in", "no .parquet files")


def test_missing_input_directory(env, capsys):
    root, _ = env
    code, err, out = run(env, capsys, root / "nowhere")
    assert_refused(code, err, out, root / "nowhere", "does not exist")


def test_glob_matching_nothing(env, capsys):
    root, _ = env
    code, err, out = run(env, capsys, str(root / "nothing-*.parquet"))
    assert_refused(code, err, out, "nothing-*.parquet", "glob")


@pytest.mark.parametrize(
    "text,needle",
    [
        ('[[stage]\nkind = "exact"\n', "malformed TOML"),
        ('[[stage]]\nkind = "no_such_stage"\n', "unknown stage kind 'no_such_stage'"),
        ('[[stage]]\nkind = "exact"\nnormalise = true\n', "no option 'normalise'"),
        ('[[stage]]\nkind = "exact"\nnormalize = "yes"\n', "must be a bool"),
        ("[[stage]]\nnormalize = true\n", "has no kind"),
        ("stages = 3\n", "unknown top-level key"),
        ('batch_size = 0\n[[stage]]\nkind = "exact"\n', "batch_size"),
        ('[input]\ntext = "body"\n', "unknown [input] key"),
    ],
    ids=[
        "malformed",
        "unknown-kind",
        "unknown-option",
        "option-type",
        "no-kind",
        "top-key",
        "batch-size",
        "input-key",
    ],
)
def test_bad_pipeline_files(env, capsys, text, needle):
    root, _ = env
    write(root / "in" / "a.parquet", shard(["a"], ["x text"]))
    pipeline = root / "bad.toml"
    pipeline.write_text(text)
    code, err, out = run(env, capsys, root / "in", pipeline=pipeline)
    assert_refused(code, err, out, pipeline, needle)


def test_missing_pipeline_file(env, capsys):
    root, _ = env
    write(root / "in" / "a.parquet", shard(["a"], ["x text"]))
    code, err, out = run(env, capsys, root / "in", pipeline=root / "missing.toml")
    assert_refused(code, err, out, root / "missing.toml", "does not exist")


def test_output_directory_with_someone_elses_files(env, capsys):
    root, _ = env
    write(root / "in" / "a.parquet", shard(["a"], ["x text"]))
    (root / "out").mkdir()
    (root / "out" / "precious.txt").write_text("keep me")
    code, err, out = run(env, capsys, root / "in", "--overwrite")
    assert_refused(code, err, out, out, "not a curate output")
    assert (out / "precious.txt").read_text() == "keep me"


def test_resume_after_the_input_changed(env, capsys):
    root, _ = env
    path = write(root / "in" / "a.parquet", shard(["a", "b"], ["x text", "x text"]))
    code, err, out = run(env, capsys, root / "in")
    assert code == 0, err
    write(path, shard(["a", "b"], ["x text", "y text"]))
    os.utime(path)
    code, err = cli(
        ["run", str(root / "pipeline.toml"), "-i", str(root / "in"), "-o", str(out), "--quiet", "--resume"], capsys
    )
    assert code == 2 and "input files changed" in err and "Traceback" not in err
