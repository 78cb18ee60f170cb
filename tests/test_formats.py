"""Input formats: the same corpus as Parquet, JSON Lines (plain, gzip, zstd) and a saved
Hugging Face dataset gives the same kept ids; bad JSON Lines input is one line naming the file
and line, exit 2; `curate export` writes kept rows back as JSON Lines."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import cli, run_cli

from curate.commands.inspect import verify_output
from curate.errors import UsageError
from curate.io import formats
from curate.io.inputs import ROW_COLUMN, ColumnSpec, InputFile, InputSet, refuse_output_inside_input
from curate.io.parts import read_parts
from curate.pipeline import parse_pipeline, run_pipeline

WORDS = (
    "data curation pipeline shard ledger manifest stage kernel package library python manual "
    "option value module function memory disk column batch record arrow stream hash cluster "
    "naïve café Zürich façade smörgåsbord 東京 데이터 данные δεδομένα 🙂 niño señal"
).split()
DEDUP = '[[stage]]\nkind = "exact"\nnormalize = true\n[[stage]]\nkind = "minhash"\nthreshold = 0.7\nngram = 3\n'


def make_rows(n: int, seed: int = 0) -> list[dict]:
    """Texts of 25-40 words with non-ASCII words; about a third repeat an earlier text exactly,
    re-cased (exact with normalize) or with one word changed (minhash)."""
    rng = np.random.default_rng(seed)
    texts: list[str] = []
    for _ in range(n):
        if texts and rng.random() < 0.35:
            base = texts[int(rng.integers(len(texts)))]
            variant = int(rng.integers(3))
            if variant == 0:
                text = base
            elif variant == 1:
                text = base.upper()
            else:
                words = base.split()
                words[int(rng.integers(len(words)))] = "замена"
                text = " ".join(words)
        else:
            text = " ".join(WORDS[i] for i in rng.integers(len(WORDS), size=int(rng.integers(25, 41))))
        texts.append(text)
    return [{"id": f"doc-{i:05d}", "text": t, "score": float(i) / 7, "lang": "xx"} for i, t in enumerate(texts)]


def split(rows: list, parts: int) -> list[list]:
    bounds = np.linspace(0, len(rows), parts + 1).astype(int)
    return [rows[bounds[i] : bounds[i + 1]] for i in range(parts)]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    codec = formats.jsonl_compression(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with pa.output_stream(str(path), compression=codec) as sink:
        for row in rows:
            sink.write((json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8"))
    return path


def write_parquet(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def hf_datasets():
    """`datasets` (dev extra only: curate reads saved datasets with pyarrow alone)."""
    datasets = pytest.importorskip("datasets")
    datasets.disable_progress_bars()
    return datasets


def write_as(root: Path, fmt: str, rows: list[dict], parts: int = 3) -> Path:
    """The corpus in `parts` files named shard-NN<suffix>, or as a saved dataset."""
    if fmt == "hf":
        datasets = hf_datasets()
        datasets.Dataset.from_list(rows).save_to_disk(str(root / "hf"), num_shards=parts)
        return root / "hf"
    directory = root / fmt.replace(".", "_")
    for index, chunk in enumerate(split(rows, parts)):
        name = f"shard-{index:02d}{fmt}"
        (write_parquet if fmt == ".parquet" else write_jsonl)(directory / name, chunk)
    return directory


def run_dedup(source: Path, out: Path, **input_table) -> tuple[list[str], list[tuple]]:
    spec = parse_pipeline(
        {
            "stage": [{"kind": "exact", "normalize": True}, {"kind": "minhash", "threshold": 0.7, "ngram": 3}],
            "input": input_table,
        }
    )
    run_pipeline(spec, source, out)
    report = verify_output(out)
    assert report.ok, (report.missing, report.duplicated, report.unknown, report.problems)
    kept = read_parts(out / "kept").column("id").to_pylist()
    removed = read_parts(out / "removed").to_pylist()
    return kept, sorted((r["id"], r["stage"], r["duplicate_of"]) for r in removed)


def test_same_kept_ids_and_ledger_in_every_format(tmp_path):
    rows = make_rows(600)
    results = {}
    for fmt in (".parquet", ".jsonl", ".jsonl.gz", ".jsonl.zst", "hf"):
        results[fmt] = run_dedup(write_as(tmp_path, fmt, rows), tmp_path / f"out{fmt}")
    kept, removed = results[".parquet"]
    stages = {stage for _, stage, _ in removed}
    assert stages == {"exact", "minhash"}, "the corpus must exercise both stages"
    assert len(kept) + len(removed) == len(rows)
    for fmt, (other_kept, other_removed) in results.items():
        assert other_kept == kept, fmt
        assert other_removed == removed, fmt
    texts = read_parts(tmp_path / "out.jsonl.zst" / "kept").column("text").to_pylist()
    assert any("東京" in t for t in texts) and any("naïve" in t for t in texts)


def test_synthesized_ids_use_the_stem_without_compression_suffixes(tmp_path):
    rows = [{"text": r["text"]} for r in make_rows(200, seed=3)]
    parquet_kept, _ = run_dedup(write_as(tmp_path, ".parquet", rows, parts=2), tmp_path / "a")
    gzip_kept, _ = run_dedup(write_as(tmp_path, ".jsonl.gz", rows, parts=2), tmp_path / "b")
    assert gzip_kept == parquet_kept
    assert parquet_kept[0] == "shard-00:0" and any(i.startswith("shard-01:") for i in gzip_kept)
    assert (
        formats.file_stem(Path("x.jsonl.gz")) == "x"
        and formats.file_stem(Path("x.json.zst")) == "x"
        and formats.file_stem(Path("a.b.parquet")) == "a.b"
    )


def test_first_occurrence_is_by_sorted_file_then_line(tmp_path):
    write_jsonl(tmp_path / "in" / "b.jsonl", [{"id": "b0", "text": "same text"}])
    write_jsonl(
        tmp_path / "in" / "a.jsonl",
        [{"id": "a0", "text": "other"}, {"id": "a1", "text": "same text"}, {"id": "a2", "text": "same text"}],
    )
    kept, removed = run_dedup(tmp_path / "in", tmp_path / "out")
    assert kept == ["a0", "a1"]
    assert removed == [("a2", "exact", "a1"), ("b0", "exact", "a1")]


def test_blocks_unify_late_fields_numbers_and_date_strings(tmp_path, monkeypatch):
    monkeypatch.setattr(formats, "JSONL_BLOCK_BYTES", 64)  # every line its own block
    lines = [
        {"id": 1, "text": "a", "n": 1, "when": "2024-01-01"},
        {"id": 2, "text": "b", "n": 2.5, "when": "soon"},
        {"id": 3, "text": "c", "late": [1, 2]},
        {"id": 4, "text": None},
    ]
    write_jsonl(tmp_path / "x.jsonl", lines)
    inputs = InputSet.scan(tmp_path / "x.jsonl")
    assert inputs.schema.field("n").type == pa.float64() and inputs.schema.field("when").type == pa.string()
    assert inputs.schema.field("id").type == pa.int64() and inputs.files[0].format == "jsonl" and inputs.num_rows == 4
    got = [row for batch in inputs.batches(batch_size=3) for row in batch.to_pylist()]
    assert [r[ROW_COLUMN] for r in got] == [0, 1, 2, 3]
    assert [r["when"] for r in got] == ["2024-01-01", "soon", None, None]
    assert [r["n"] for r in got] == [1.0, 2.5, None, None] and got[2]["late"] == [1, 2] and got[3]["text"] is None


def test_jsonl_reads_in_bounded_memory(tmp_path, monkeypatch):
    monkeypatch.setattr(formats, "JSONL_BLOCK_BYTES", 1 << 20)
    line = json.dumps({"id": "x", "text": "curate streams blocks " * 20}) + "\n"
    path = tmp_path / "big.jsonl"
    path.write_text(line * 40_000)  # about 19 MB
    inputs = InputSet.scan(path, ColumnSpec(id="no_such_id"))
    peak = 0
    for _batch in inputs.batches(batch_size=1024):
        peak = max(peak, pa.total_allocated_bytes())
    assert inputs.num_rows == 40_000
    assert peak < path.stat().st_size / 4, (
        f"{peak / 1e6:.1f} MB of Arrow memory for a {path.stat().st_size / 1e6:.0f} MB file"
    )


def test_file_batches_reads_row_groups_with_global_ordinals(tmp_path):
    write_parquet(tmp_path / "in" / "a.parquet", [{"id": f"a{i}", "text": "t"} for i in range(5)])
    pq.write_table(
        pa.table({"id": [f"b{i}" for i in range(10)], "text": ["u"] * 10}),
        tmp_path / "in" / "b.parquet",
        row_group_size=3,
    )
    write_jsonl(tmp_path / "in2" / "c.jsonl", [{"text": "v"}] * 4)
    inputs = InputSet.scan(tmp_path / "in")
    picked = [row for batch in inputs.file_batches(1, 2, ["text"], row_groups=(1, 3)) for row in batch.to_pylist()]
    assert [(r["id"], r[ROW_COLUMN]) for r in picked] == [("b3", 8), ("b4", 9), ("b5", 10), ("b9", 14)]
    jsonl = InputSet.scan(tmp_path / "in2")
    assert [b.num_rows for b in jsonl.file_batches(0, 3, [])] == [3, 1]  # ids only: still every row
    with pytest.raises(ValueError, match="row groups"):
        list(jsonl.file_batches(0, 3, None, row_groups=(0,)))


def test_an_empty_jsonl_file_is_zero_rows(tmp_path):
    rows = make_rows(60, seed=5)
    write_jsonl(tmp_path / "in" / "a.jsonl", rows[:30])
    (tmp_path / "in" / "b.jsonl").write_bytes(b"")
    (tmp_path / "in" / "c.jsonl").write_bytes(b"\n \n")
    write_jsonl(tmp_path / "in" / "d.jsonl.gz", [])
    write_jsonl(tmp_path / "in" / "e.jsonl", rows[30:])
    write_jsonl(tmp_path / "ref" / "a.jsonl", rows)
    kept, removed = run_dedup(tmp_path / "in", tmp_path / "out")
    assert (kept, removed) == run_dedup(tmp_path / "ref", tmp_path / "out-ref")
    assert [f.rows for f in InputSet.scan(tmp_path / "in").files] == [30, 0, 0, 0, 30]


def test_forced_format_and_pretty_printed_json(tmp_path, capsys):
    write_jsonl(tmp_path / "in" / "corpus.txt", [{"id": "a", "text": "x y"}, {"id": "b", "text": "x y"}])
    code, err = cli(
        ["dedup", "-i", str(tmp_path / "in"), "--input-format", "jsonl", "-o", str(tmp_path / "out"), "--quiet"],
        capsys,
    )
    assert code == 2 and "no JSON Lines files" in err  # a directory takes files by their suffix
    code, err = cli(
        [
            "dedup",
            "-i",
            str(tmp_path / "in" / "corpus.txt"),
            "--input-format",
            "jsonl",
            "-o",
            str(tmp_path / "out"),
            "--quiet",
        ],
        capsys,
    )
    assert code == 0, err
    assert read_parts(tmp_path / "out" / "kept").column("id").to_pylist() == ["a"]
    (tmp_path / "pretty.json").write_text(json.dumps([{"id": "a", "text": "x"}], indent=2))
    code, err = cli(["dedup", "-i", str(tmp_path / "pretty.json"), "-o", str(tmp_path / "out2"), "--quiet"], capsys)
    assert code == 2 and "pretty.json: line 1 is not valid JSON" in err and "one JSON object per line" in err


def test_resume_notices_a_jsonl_edit_that_keeps_the_size(tmp_path, capsys):
    rows = make_rows(300, seed=2)
    path = write_jsonl(tmp_path / "in" / "a.jsonl", rows)
    pipeline = tmp_path / "p.toml"
    pipeline.write_text(DEDUP)
    args = ["run", str(pipeline), "-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--quiet"]
    assert cli(args, capsys)[0] == 0
    assert cli([*args, "--resume"], capsys)[0] == 0  # unchanged: resumes (nothing left to do)
    data = bytearray(path.read_bytes())
    middle = data.index(b"doc-00150")
    data[middle : middle + 9] = b"doc-x0150"
    path.write_bytes(bytes(data))
    code, err = cli([*args, "--resume"], capsys)
    assert code == 2 and "input files changed" in err


def test_old_manifests_without_a_format_read_as_parquet(tmp_path):
    record = InputFile("a.parquet", 1, 1, "f", 0, True).to_json()
    del record["format"]
    assert InputFile(**record).format == "parquet"
    assert InputFile(**InputFile("a.jsonl", 1, 1, "f", 0, True, "jsonl").to_json()).format == "jsonl"


# ---------------------------------------------------------------------------------------
# Bad input: one line, exit 2, the file (and line) named, no kept/.


def _bad_jsonl_cases(tmp: Path) -> dict[str, tuple[Path, list[str], list[str]]]:
    """name -> (input, extra args, texts the one-line message must contain)."""
    good = [json.dumps({"id": f"g{i}", "text": f"text {i}"}) for i in range(5)]
    cases: dict[str, tuple[Path, list[str], list[str]]] = {}

    def lines(name: str, body: list[str]) -> Path:
        path = tmp / name / "data.jsonl"
        path.parent.mkdir(parents=True)
        path.write_text("\n".join(body) + "\n", encoding="utf-8")
        return path.parent

    cases["malformed line"] = (
        lines("malformed", good[:3] + ['{"id": "b", "text": "unterminated}'] + good[3:]),
        [],
        ["data.jsonl", "line 4 is not valid JSON"],
    )
    cases["no text field"] = (
        lines("no-text", good[:2] + ['{"id": "b", "body": "x"}'] + good[2:]),
        [],
        ["data.jsonl", "line 3 has no 'text' field", "--text-column"],
    )
    cases["no text field, whole block"] = (
        lines("no-text-all", ['{"id": "b", "body": "x"}']),
        [],
        ["line 1 has no 'text' field"],
    )
    cases["mixed types across lines"] = (
        lines("mixed", good[:2] + ['{"id": "b", "text": "x", "n": 1}', "", '{"id": "c", "text": "y", "n": "one"}']),
        [],
        ["data.jsonl", "field 'n' is a string on line 5 but a number on line 3"],
    )
    cases["not an object"] = (
        lines("array", good[:1] + ['["id", "text"]']),
        [],
        ["line 2 is an array, not a JSON object"],
    )
    cases["text not a string"] = (
        lines("number-text", ['{"id": "a", "text": 12}']),
        [],
        ["text column 'text' has type int64"],
    )

    mixed_files = tmp / "mixed-files"
    write_jsonl(mixed_files / "a.jsonl", [{"id": "a", "text": "x", "n": 1}])
    write_jsonl(mixed_files / "b.jsonl", [{"id": "b", "text": "y", "n": "one"}])
    cases["mixed types across files"] = (mixed_files, [], ["b.jsonl", "schema does not match a.jsonl"])

    not_utf8 = tmp / "not-utf8" / "data.jsonl"
    not_utf8.parent.mkdir()
    not_utf8.write_bytes(("\n".join(good[:2]) + "\n").encode() + b'{"id": "b", "text": "caf\xe9"}\n')
    cases["not UTF-8"] = (not_utf8.parent, [], ["data.jsonl", "line 3 is not valid UTF-8"])

    corrupt_gz = tmp / "corrupt-gz" / "data.jsonl.gz"
    corrupt_gz.parent.mkdir()
    corrupt_gz.write_bytes(b"this is not gzip at all" * 10)
    cases["corrupt gzip"] = (corrupt_gz.parent, [], ["data.jsonl.gz", "cannot decompress (gzip"])

    truncated = write_jsonl(tmp / "truncated-zst" / "data.jsonl.zst", make_rows(400, seed=9))
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    cases["truncated zstd"] = (truncated.parent, [], ["data.jsonl.zst", "cannot decompress (zstd"])

    both = tmp / "both-formats"
    write_jsonl(both / "a.jsonl", [{"id": "a", "text": "x"}])
    write_parquet(both / "b.parquet", [{"id": "b", "text": "y"}])
    cases["two formats in one directory"] = (both, [], ["1 Parquet and 1 JSON Lines", "--input-format"])
    cases["unknown --input-format"] = (both, ["--input-format", "csv"], ["unknown input format 'csv'"])
    return cases


CASE_NAMES = [
    "malformed line",
    "no text field",
    "no text field, whole block",
    "mixed types across lines",
    "not an object",
    "text not a string",
    "mixed types across files",
    "not UTF-8",
    "corrupt gzip",
    "truncated zstd",
    "two formats in one directory",
    "unknown --input-format",
]


def assert_refused(code: int, err: str, out: Path, needles: list[str]) -> None:
    assert code == 2, err
    assert "Traceback" not in err and "internal error" not in err, err
    assert len([line for line in err.strip().splitlines() if line.strip()]) == 1, err
    assert "fix:" in err, err
    for needle in needles:
        assert needle in err, err
    assert not (out / "kept").exists()


@pytest.mark.parametrize("name", CASE_NAMES)
def test_bad_jsonl_input_is_one_line_and_exit_2(tmp_path, capsys, name):
    source, extra, needles = _bad_jsonl_cases(tmp_path)[name]
    out = tmp_path / "out"
    code, err = cli(["dedup", "-i", str(source), "-o", str(out), "--quiet", *extra], capsys)
    assert_refused(code, err, out, needles)


def test_a_saved_dataset_dict_asks_for_one_split(tmp_path, capsys):
    datasets = hf_datasets()
    split_rows = make_rows(20)
    datasets.DatasetDict(
        {"train": datasets.Dataset.from_list(split_rows), "test": datasets.Dataset.from_list(split_rows[:5])}
    ).save_to_disk(str(tmp_path / "dd"))
    code, err = cli(["dedup", "-i", str(tmp_path / "dd"), "-o", str(tmp_path / "out"), "--quiet"], capsys)
    assert_refused(code, err, tmp_path / "out", ["DatasetDict (splits: test, train)", str(tmp_path / "dd" / "test")])
    code, err = cli(["dedup", "-i", str(tmp_path / "dd" / "train"), "-o", str(tmp_path / "out"), "--quiet"], capsys)
    assert code == 0, err


@pytest.mark.parametrize("layout", ["output-in-input", "output-is-input", "input-in-output", "glob-base"])
def test_output_inside_the_input_is_refused(tmp_path, capsys, layout):
    source = write_as(tmp_path, ".parquet", make_rows(30), parts=2)
    out = {
        "output-in-input": source / "out",
        "output-is-input": source,
        "input-in-output": source.parent,
        "glob-base": source / "sub" / "out",
    }[layout]
    arg = str(source / "*.parquet") if layout == "glob-base" else str(source)
    code, err = cli(["dedup", "-i", arg, "-o", str(out), "--quiet"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert arg in err and str(out) in err and "fix:" in err
    assert not (source / "out").exists() and not (source / "sub").exists()
    with pytest.raises(UsageError):
        InputSet.scan(arg, ColumnSpec(), output=out)


def test_output_beside_the_input_is_fine(tmp_path):
    refuse_output_inside_input(tmp_path / "in", tmp_path / "in-out")  # a shared name prefix is not containment
    refuse_output_inside_input(tmp_path / "data" / "*.jsonl", tmp_path / "out")


# ---------------------------------------------------------------------------------------
# curate export


def test_export_writes_kept_rows_as_jsonl_that_reads_back(tmp_path, capsys):
    rows = make_rows(300, seed=4)
    source = write_as(tmp_path, ".parquet", rows, parts=2)
    out = tmp_path / "out"
    pipeline = tmp_path / "p.toml"
    pipeline.write_text(DEDUP)
    assert cli(["run", str(pipeline), "-i", str(source), "-o", str(out), "--quiet"], capsys)[0] == 0
    kept = read_parts(out / "kept")
    code, stdout, err = run_cli(["export", str(out), "--format", "jsonl", "--compression", "gzip"], capsys)
    assert code == 0, err
    parts = sorted((out / "kept-jsonl").iterdir())
    assert [p.name for p in parts] == [
        p.name.replace(".parquet", ".jsonl.gz") for p in sorted((out / "kept").glob("part-*.parquet"))
    ]
    assert f"exported {kept.num_rows:,} kept rows" in stdout
    back = InputSet.scan(out / "kept-jsonl")
    table = pa.Table.from_batches(list(back.batches())).drop_columns([ROW_COLUMN])
    assert table.to_pylist() == kept.select(table.column_names).to_pylist()
    assert set(table.column_names) == set(kept.column_names)

    single = tmp_path / "all.jsonl.zst"
    assert cli(["export", str(out), "-o", str(single)], capsys)[0] == 0
    again = InputSet.scan(single)
    assert again.files[0].format == "jsonl" and again.num_rows == kept.num_rows
    with pa.input_stream(str(single), compression="zstd") as stream:
        first = json.loads(stream.read().split(b"\n", 1)[0])
    assert first["id"] == kept.column("id")[0].as_py() and first["text"] == kept.column("text")[0].as_py()


def test_export_refusals(tmp_path, capsys):
    source = write_as(tmp_path, ".jsonl", make_rows(40), parts=1)
    out = tmp_path / "out"
    assert cli(["dedup", "-i", str(source), "-o", str(out), "--quiet"], capsys)[0] == 0
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    code, err = cli(["export", str(out), "-o", str(tmp_path / "busy")], capsys)
    assert code == 2 and "holds other files" in err and (tmp_path / "busy" / "notes.txt").exists()
    code, err = cli(["export", str(out), "--format", "csv"], capsys)
    assert code == 2 and "--format jsonl" in err
    code, err = cli(["export", str(out), "-o", str(tmp_path / "x.jsonl.gz"), "--compression", "zstd"], capsys)
    assert code == 2 and "file name says gzip" in err and not (tmp_path / "x.jsonl.gz").exists()
    code, err = cli(["export", str(tmp_path / "nothing-here")], capsys)
    assert code == 2 and "not a curate output" in err


@pytest.mark.parametrize("fmt", [".jsonl.gz", pytest.param("hf", marks=pytest.mark.slow)])  # 7 s each
def test_other_formats_give_the_serial_result_on_a_process_pool_and_on_dask(tmp_path, fmt):
    """Every executor reads units through InputSet.file_batches: a JSON Lines or saved-dataset
    file is one unit, read by a worker, with the same ordinals as the serial run."""
    from curate.engine.executors import DaskExecutor
    from curate.pipeline import RunOptions

    source = write_as(tmp_path, fmt, make_rows(300), parts=3)
    spec = parse_pipeline({"stage": [{"kind": "exact"}, {"kind": "minhash", "threshold": 0.7}]}, "test")
    serial = run_pipeline(spec, source, tmp_path / "serial", RunOptions(jobs=1)).output
    pool = run_pipeline(spec, source, tmp_path / "pool", RunOptions(jobs=2)).output
    with DaskExecutor.local(2) as executor:
        dask = run_pipeline(spec, source, tmp_path / "dask", RunOptions(executor=executor)).output
    for out in (pool, dask):
        for name in ("kept", "removed"):
            assert read_parts(out / name).equals(read_parts(serial / name)), (out, name)
    assert read_parts(serial / "removed").num_rows > 0
