from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import write_shards

from curate.commands.inspect import verify_output
from curate.errors import OutputError, UsageError
from curate.io.parts import read_parts
from curate.output.manifest import read_manifest
from curate.pipeline import RunOptions, load_pipeline, parse_pipeline, run_pipeline

TWO_STAGES = {"batch_size": 37, "stage": [{"kind": "exact"}, {"kind": "exact", "normalize": True}]}


class Interrupt(Exception):
    pass


def _kept_and_removed(out: Path) -> tuple[list, list]:
    kept = read_parts(out / "kept").column("id").to_pylist()
    removed = sorted(read_parts(out / "removed").to_pylist(), key=lambda r: r["id"])
    return kept, removed


def test_unknown_kind_lists_the_valid_ones():
    with pytest.raises(UsageError, match="unknown stage kind 'nope'.*exact"):
        parse_pipeline({"stage": [{"kind": "nope"}]})


def test_unknown_option_lists_the_valid_ones():
    with pytest.raises(UsageError, match="no option 'colour'.*normalize"):
        parse_pipeline({"stage": [{"kind": "exact", "colour": 1}]})


def test_option_of_the_wrong_type_is_a_usage_error():
    with pytest.raises(UsageError, match="option 'normalize' must be a bool"):
        parse_pipeline({"stage": [{"kind": "exact", "normalize": "yes"}]})


def test_malformed_toml_names_the_file(tmp_path):
    path = tmp_path / "p.toml"
    path.write_text("[[stage]\nkind = 'exact'\n")
    with pytest.raises(UsageError, match="p.toml.*malformed TOML"):
        load_pipeline(path)


def test_repeated_kinds_get_distinct_names():
    spec = parse_pipeline(TWO_STAGES)
    assert [s.name for s in spec.stages] == ["exact", "exact_2"]


def test_non_empty_output_needs_resume_or_overwrite(corpus, tmp_path):
    source, _ = corpus
    out = tmp_path / "out"
    out.mkdir()
    (out / "something").write_text("x")
    with pytest.raises(OutputError, match="not empty"):
        run_pipeline(parse_pipeline(TWO_STAGES), source, out)
    with pytest.raises(OutputError, match="not a curate output"):
        run_pipeline(parse_pipeline(TWO_STAGES), source, out, RunOptions(overwrite=True))


def test_overwrite_replaces_an_earlier_run(corpus, tmp_path):
    source, _ = corpus
    out = tmp_path / "out"
    run_pipeline(parse_pipeline(TWO_STAGES), source, out)
    first = _kept_and_removed(out)
    run_pipeline(parse_pipeline(TWO_STAGES), source, out, RunOptions(overwrite=True))
    assert _kept_and_removed(out) == first


@pytest.mark.parametrize("stop_after", ["input", "exact", "exact_2"])
def test_resume_after_an_interruption_equals_a_clean_run(corpus, tmp_path, stop_after):
    source, _ = corpus
    clean = tmp_path / "clean"
    run_pipeline(parse_pipeline(TWO_STAGES), source, clean)

    def stop(name: str) -> None:
        if name == stop_after:
            raise Interrupt(name)

    out = tmp_path / "resumed"
    with pytest.raises(Interrupt):
        run_pipeline(parse_pipeline(TWO_STAGES), source, out, RunOptions(on_stage_done=stop))
    assert not (out / "kept").exists()
    done_before = {s["name"]: s.get("seconds") for s in read_manifest(out)["stages"] if s["status"] == "done"}
    assert stop_after in done_before

    redone: list[str] = []
    run_pipeline(parse_pipeline(TWO_STAGES), source, out, RunOptions(resume=True, on_stage_done=redone.append))
    assert not set(redone) & set(done_before), "finished stages must not run again"
    after = {s["name"]: s.get("seconds") for s in read_manifest(out)["stages"]}
    assert all(after[name] == seconds for name, seconds in done_before.items())
    assert _kept_and_removed(out) == _kept_and_removed(clean)
    assert verify_output(out).ok
    assert not (out / "_stages").exists()


def test_resume_discards_a_half_written_stage(corpus, tmp_path):
    source, _ = corpus
    out = tmp_path / "out"

    def stop(name: str) -> None:
        if name == "exact":
            raise Interrupt(name)

    with pytest.raises(Interrupt):
        run_pipeline(parse_pipeline(TWO_STAGES), source, out, RunOptions(on_stage_done=stop))
    junk = out / "_stages" / "02-exact_2" / "kept"
    junk.mkdir(parents=True)
    (junk / "part-00000.parquet").write_bytes(b"half a part")
    run_pipeline(parse_pipeline(TWO_STAGES), source, out, RunOptions(resume=True))
    assert verify_output(out).ok


def test_resume_refuses_a_changed_config(corpus, tmp_path):
    source, _ = corpus
    out = tmp_path / "out"
    with pytest.raises(Interrupt):
        run_pipeline(
            parse_pipeline(TWO_STAGES),
            source,
            out,
            RunOptions(on_stage_done=lambda n: (_ for _ in ()).throw(Interrupt(n))),
        )
    changed = parse_pipeline({"stage": [{"kind": "exact", "normalize": True}]})
    with pytest.raises(UsageError, match="config differs"):
        run_pipeline(changed, source, out, RunOptions(resume=True))


def test_manifest_records_inputs_config_counts_and_versions(corpus, tmp_path):
    source, texts = corpus
    out = tmp_path / "out"
    run_pipeline(parse_pipeline(TWO_STAGES), source, out)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["finalized"] and manifest["input"]["rows"] == len(texts)
    assert len(manifest["input"]["files"]) == 4 and all(f["fingerprint"] for f in manifest["input"]["files"])
    assert [s["name"] for s in manifest["stages"]] == ["input", "exact", "exact_2"]
    exact = manifest["stages"][1]
    assert exact["rows_in"] == len(texts) and exact["rows_out"] == len(set(texts))
    assert exact["rows_in"] - exact["rows_out"] == exact["rows_removed"]
    assert manifest["config"]["stages"][1]["options"] == {"normalize": True, "index": False, "representative": "first"}
    assert "pyarrow" in manifest["packages"] and manifest["seed"] == 0
    totals = manifest["totals"]
    assert totals["kept_rows"] + totals["removed_rows"] == len(texts)


def test_kept_keeps_passthrough_columns_and_drops_internal_ones(corpus, tmp_path):
    source, _ = corpus
    out = tmp_path / "out"
    run_pipeline(parse_pipeline(TWO_STAGES), source, out)
    names = read_parts(out / "kept").column_names
    assert names == ["id", "text", "n"]


def test_pipeline_without_stages_keeps_everything(corpus, tmp_path):
    source, texts = corpus
    out = tmp_path / "out"
    run_pipeline(parse_pipeline({}), source, out)
    assert read_parts(out / "kept").num_rows == len(texts)
    assert verify_output(out).ok


def test_drop_null_text_sends_nulls_to_the_ledger(tmp_path):
    source = write_shards(tmp_path / "in", ["a", None, "b", None, "a"], shards=2)
    out = tmp_path / "out"
    spec = parse_pipeline({"input": {"drop_null_text": True}, "stage": [{"kind": "exact"}]})
    run_pipeline(spec, source, out)
    removed = {r["id"]: (r["stage"], r["reason"]) for r in read_parts(out / "removed").to_pylist()}
    assert removed == {
        "doc-000001": ("input", "null_text"),
        "doc-000003": ("input", "null_text"),
        "doc-000004": ("exact", "exact_duplicate"),
    }
    assert verify_output(out).ok
