"""Decontamination: the n-gram functions against a plain-Python n-gram set, the rule, the stage's
ledger and side outputs, the command's one-line errors, and the same output on every executor."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import run_cli

from curate.algorithms.minhash import shingle_hashes, window_hashes_at
from curate.algorithms.ngrams import best_per_text, build_index, contaminated, match_texts
from curate.engine.tasks import SIDE
from curate.io.parts import read_parts
from curate.pipeline import RunOptions, parse_pipeline, run_pipeline
from tests.executor_parity import assert_same_everywhere, dask_executors, run_on_every_executor  # noqa: F401

VOCAB = "the a of model data train token shard loss prune hash pool score text corpus Héllo wörld 42 x_y".split()


def reference_matches(texts: list[str], items: list[str], n: int, whole: bool = True) -> dict[tuple[int, int], int]:
    """(text, item) -> distinct shared n-grams, with words as re.findall(r"\\w+", lower())."""
    index: dict[tuple[str, ...], set[int]] = {}
    for i, item in enumerate(items):
        words = re.findall(r"\w+", item.lower())
        grams = {tuple(words[j : j + n]) for j in range(len(words) - n + 1)}
        if 0 < len(words) < n and whole:
            grams = {tuple(words)}
        for gram in grams:
            index.setdefault(gram, set()).add(i)
    lengths = {len(g) for g in index}
    found: Counter = Counter()
    for r, text in enumerate(texts):
        words = re.findall(r"\w+", text.lower())
        grams = {tuple(words[j : j + k]) for k in lengths for j in range(len(words) - k + 1)}
        for gram in grams:
            for i in index.get(gram, ()):
                found[(r, i)] += 1
    return dict(found)


def soup(rng: np.random.Generator, count: int, low: int, high: int) -> list[str]:
    seps = np.array([" ", "  ", ", ", ". ", "\n", "!? "])
    out = []
    for _ in range(count):
        words = rng.choice(VOCAB, size=int(rng.integers(low, high)))
        words = [w.upper() if rng.random() < 0.1 else w for w in words]
        out.append("".join(w + str(rng.choice(seps)) for w in words))
    return out


def as_dict(found: tuple[np.ndarray, np.ndarray, np.ndarray]) -> dict[tuple[int, int], int]:
    return {(int(r), int(i)): int(c) for r, i, c in zip(*found)}


@pytest.mark.parametrize("n, whole", [(1, True), (2, True), (3, True), (3, False), (5, True)])
def test_matches_equal_a_plain_python_ngram_set(n, whole):
    rng = np.random.default_rng(n)
    items = soup(rng, 60, 0, 9)
    texts = soup(rng, 300, 0, 25) + ["", "   ", "!!"]
    index = build_index(pa.array(items), n, whole_short_items=whole)
    assert as_dict(match_texts(pa.array(texts), index)) == reference_matches(texts, items, n, whole)


def test_matching_in_pieces_of_a_few_rows_gives_the_same_pairs_in_the_same_order(monkeypatch):
    from curate.algorithms import ngrams

    rng = np.random.default_rng(11)
    items = soup(rng, 60, 0, 9)
    texts = soup(rng, 300, 0, 25) + ["", "   ", "!!"]
    index = build_index(pa.array(items), 3)
    whole = match_texts(pa.array(texts), index)
    monkeypatch.setattr(ngrams, "_MATCH_CHUNK_BYTES", 300)  # pieces of a few rows
    assert len(ngrams.text_chunk_bounds(pa.array(texts), 300)) > 50
    pieces = match_texts(pa.array(texts), index)
    assert len(whole[0]) > 100
    assert all(np.array_equal(a, b) for a, b in zip(whole, pieces))
    assert as_dict(pieces) == reference_matches(texts, items, 3)


@pytest.mark.parametrize("n", [2, 4])
def test_words_no_item_holds_skip_only_windows_that_cannot_match(n):
    """Items drawn from part of the vocabulary, texts from all of it and unseen words: the word
    bitmap must drop windows with an unknown word and keep every window that matches."""
    rng = np.random.default_rng(10 + n)
    items = [" ".join(rng.choice(VOCAB[:8], size=int(rng.integers(n, 12)))) for _ in range(40)]
    words = VOCAB + [f"unseen{k}" for k in range(12)]
    texts = [" ".join(rng.choice(words, size=int(rng.integers(0, 40)))) for _ in range(400)]
    index = build_index(pa.array(items), n)
    found = as_dict(match_texts(pa.array(texts), index))
    assert found and found == reference_matches(texts, items, n)


def test_window_hashes_at_equal_the_full_shingles():
    units = np.random.default_rng(3).integers(0, 2**63, size=50, dtype=np.int64).astype(np.uint64)
    offsets = np.array([0, 20, 20, 50])
    hashes, shingle_offsets = shingle_hashes(units, offsets, 5, seed=9)
    starts = np.r_[0:16, 20:46]
    assert np.array_equal(window_hashes_at(units, starts, 5, seed=9), hashes)
    assert shingle_offsets.tolist() == [0, 16, 16, 42]


def test_case_punctuation_and_whitespace_do_not_matter():
    index = build_index(pa.array(["What is the capital of France? Paris."]), 4)
    rows, items, counts = match_texts(pa.array(["WHAT   is the\tcapital -- of france"]), index)
    assert rows.tolist() == [0] and items.tolist() == [0] and counts.tolist() == [3]


def test_ngrams_never_cross_row_boundaries():
    index = build_index(pa.array(["one two three four"]), 4)
    rows, _, _ = match_texts(pa.array(["zero one two", "three four five"]), index)
    assert len(rows) == 0


def test_a_short_item_matches_as_a_whole_or_is_skipped():
    texts = pa.array(["the answer is forty two today", "forty three"])
    whole = build_index(pa.array(["Forty two"]), 13)
    assert as_dict(match_texts(texts, whole)) == {(0, 0): 1}
    skipped = build_index(pa.array(["Forty two"]), 13, whole_short_items=False)
    assert skipped.item_ngrams.tolist() == [0] and len(match_texts(texts, skipped)[0]) == 0


def test_the_rule_counts_matches_or_coverage():
    counts, item_ngrams = np.array([1, 3, 2]), np.array([10, 10, 2])
    assert contaminated(counts, item_ngrams, 1, 0.0)[0].tolist() == [True, True, True]
    assert contaminated(counts, item_ngrams, 3, 0.0)[0].tolist() == [False, True, False]
    ok, coverage = contaminated(counts, item_ngrams, 0, 0.5)
    assert ok.tolist() == [False, False, True] and coverage.tolist() == [0.1, 0.3, 1.0]
    assert contaminated(counts, item_ngrams, 3, 0.5)[0].tolist() == [False, True, True]


def test_each_row_is_charged_to_the_item_it_covers_most():
    rows, items = np.array([0, 0, 0, 2]), np.array([4, 5, 6, 1])
    counts, coverage = np.array([2, 5, 2]), np.array([0.5, 0.5, 1.0])
    counts, coverage = np.append(counts, 1), np.append(coverage, 0.1)
    texts, charged, score = best_per_text(rows, items, counts, coverage)
    assert texts.tolist() == [0, 2] and charged.tolist() == [6, 1] and score.tolist() == [1.0, 0.1]


@pytest.mark.parametrize("slice_rows", [1, 2, 3, 1000])
def test_matches_json_is_one_array_of_every_pair_in_order_whatever_the_slice(monkeypatch, slice_rows):
    import io

    import polars as pl

    from curate.stages import decontaminate

    monkeypatch.setattr(decontaminate, "_JSON_SLICE_ROWS", slice_rows)
    pairs = [
        {"row": f'doc "{k}"\n\u00e9', "set": "s", "item": str(k % 3), "ngrams": k, "coverage": k / 7} for k in range(7)
    ]
    for rows in (pairs, pairs[:1], []):
        handle = io.BytesIO()
        frame = pl.DataFrame(
            rows,
            schema={"row": pl.String, "set": pl.String, "item": pl.String, "ngrams": pl.Int64, "coverage": pl.Float64},
        )
        decontaminate.write_json_array(frame, handle)
        text = handle.getvalue().decode("utf-8")
        assert json.loads(text) == rows
        assert text.count("\n") == len(rows) + 2  # one pair a line, between "[" and "]"


# ---------------------------------------------------------------------------------------
# The stage and the command.


def write_corpus(directory: Path, items: list[str], rows: int = 400, shards: int = 3, seed: int = 0) -> set[str]:
    """Shards of word soup with some items planted whole or inside other text; the planted ids."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    planted = set()
    for s in range(shards):
        texts = soup(rng, rows, 5, 40)
        for i in rng.choice(rows, size=12, replace=False):
            item = items[int(rng.integers(len(items)))]
            texts[i] = item if rng.random() < 0.5 else f"{texts[i]} {item} {texts[(i + 1) % rows]}"
            planted.add(f"doc-{s}-{i}")
        ids = [f"doc-{s}-{i}" for i in range(rows)]
        pq.write_table(pa.table({"id": ids, "text": texts}), directory / f"shard-{s}.parquet", row_group_size=100)
    return planted


EVAL_ITEMS = [
    "Question: which pool of tokens minimizes loss when the budget is fixed and data repeats? Answer: pool zero",
    "Prove that every finite integral domain is a field, using only the pigeonhole principle",
    "A train leaves the station at noon travelling north at sixty miles per hour",
    "unscramble the letters zqv into a word",
]


def write_eval_set(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        for k, text in enumerate(EVAL_ITEMS):
            question, _, answer = text.partition(" Answer: ")
            handle.write(json.dumps({"qid": f"q{k}", "question": question, "answer": answer}) + "\n")
    return path


def test_the_stage_sends_planted_rows_to_the_ledger_and_reports_per_set(tmp_path):
    source = tmp_path / "in"
    planted = write_corpus(source, EVAL_ITEMS)
    evals = write_eval_set(tmp_path / "evals" / "qa.jsonl")
    stage = {
        "kind": "decontaminate",
        "ngram": 6,
        "eval_sets": [{"name": "qa", "path": str(evals), "text_columns": ["question", "answer"], "id_column": "qid"}],
    }
    out = run_pipeline(parse_pipeline({"stage": [stage]}, "test"), source, tmp_path / "out", RunOptions(jobs=1)).output
    removed = read_parts(out / "removed").to_pylist()
    assert {r["id"] for r in removed} == planted
    assert {r["reason"] for r in removed} == {"contaminated"}
    assert {r["duplicate_of"] for r in removed} <= {f"qa:q{k}" for k in range(len(EVAL_ITEMS))}
    assert all(0 < r["score"] <= 1 for r in removed)
    summary = json.loads((out / "decontamination" / "decontaminate" / "summary.json").read_text())
    (qa,) = summary["sets"]
    assert qa["items"] == len(EVAL_ITEMS) and qa["rows_removed"] == len(planted)
    assert qa["items_found"] == len({r["duplicate_of"] for r in removed})
    matches = json.loads((out / "decontamination" / "decontaminate" / "matches.json").read_text())
    assert {m["row"] for m in matches} == planted and {m["set"] for m in matches} == {"qa"}
    info = json.loads((out / "manifest.json").read_text())["stages"][-1]["info"]
    assert info["eval_sets"]["qa"]["rows_removed"] == len(planted) and info["index_bytes"] > 0


def test_items_are_numbered_by_row_without_an_id_column(tmp_path):
    source = tmp_path / "in"
    pq.write_table(pa.table({"text": ["x " + EVAL_ITEMS[2], "nothing"]}), source.with_suffix(".parquet"))
    evals = tmp_path / "evals.parquet"
    pq.write_table(pa.table({"text": EVAL_ITEMS}), evals)
    stage = {"kind": "decontaminate", "eval_sets": [{"name": "e", "path": str(evals)}], "ngram": 5}
    out = run_pipeline(
        parse_pipeline({"stage": [stage]}, "test"), source.with_suffix(".parquet"), tmp_path / "out", RunOptions()
    ).output
    assert read_parts(out / "removed").column("duplicate_of").to_pylist() == ["e:2"]


def test_inspect_shows_what_leaked_per_set(tmp_path, capsys):
    source = tmp_path / "in"
    planted = write_corpus(source, EVAL_ITEMS, shards=1)
    evals = write_eval_set(tmp_path / "qa.jsonl")
    args = ["decontaminate", "-i", str(source), "-o", str(tmp_path / "out"), "--eval", f"qa={evals}", "-q"]
    code, _, err = run_cli(
        [*args, "--eval-text-column", "question", "--eval-text-column", "answer", "-j", "1"], capsys
    )
    assert code == 0, err
    code, out, err = run_cli(["inspect", str(tmp_path / "out")], capsys)
    assert code == 0, err
    line = next(line for line in out.splitlines() if " qa " in line)
    assert re.findall(r"\d+", line) == [str(len(EVAL_ITEMS)), str(len(EVAL_ITEMS)), str(len(planted))]


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--eval", "qa={missing}"], "evaluation set 'qa' does not exist"),
        (["--eval", "qa={evals}", "--eval-text-column", "prompt"], "'prompt'"),
        (["--eval", "qa={evals}", "--eval-text-column", "question", "--eval-text-column", "hint"], "no column 'hint'"),
        (["--eval", "qa={evals}", "--eval-text-column", "question", "--eval-id-column", "uid"], "no column 'uid'"),
        (["--eval", "qa={empty}"], "evaluation set 'qa' has no items"),
        (["--eval", "qa"], "--eval 'qa' is not NAME=PATH"),
        (["--eval", "a:b={evals}"], "option 'eval_sets' must be"),
        (["--eval", "qa={evals}", "--eval", "qa={evals}"], "distinct names"),
        (["--eval", "qa={evals}", "--ngram", "0"], "option 'ngram' must be"),
        (["--eval", "qa={evals}", "--min-matches", "0"], "option 'min_matches' must be"),
    ],
)
def test_bad_inputs_are_one_line_and_exit_2(tmp_path, capsys, extra, message):
    source = tmp_path / "in"
    write_corpus(source, EVAL_ITEMS, shards=1, rows=20)
    evals = write_eval_set(tmp_path / "qa.jsonl")
    empty = tmp_path / "empty.parquet"
    pq.write_table(pa.table({"text": pa.array([], pa.string())}), empty)
    paths = {"missing": tmp_path / "nope.jsonl", "evals": evals, "empty": empty}
    args = ["decontaminate", "-i", str(source), "-o", str(tmp_path / "out"), "-q"]
    code, out, err = run_cli(args + [a.format(**paths) for a in extra], capsys)
    assert code == 2, err
    assert message in err and len(err.strip().splitlines()) == 1, err
    manifest = tmp_path / "out" / "manifest.json"
    assert not manifest.exists() or not json.loads(manifest.read_text()).get("finalized")  # never a finished output


def test_the_same_ledger_and_side_outputs_on_every_executor(tmp_path, dask_executors):  # noqa: F811
    source = tmp_path / "in"
    write_corpus(source, EVAL_ITEMS, rows=300)
    evals = write_eval_set(tmp_path / "qa.jsonl")
    stages = [
        {
            "kind": "decontaminate",
            "ngram": 5,
            "min_coverage": 0.5,
            "min_matches": 3,
            "eval_sets": [
                {"name": "qa", "path": str(evals), "text_columns": ["question", "answer"], "id_column": "qid"},
                {"name": "q-only", "path": str(evals), "text_columns": ["question"]},
            ],
        }
    ]
    outputs = run_on_every_executor(tmp_path, stages, source, dask_executors, unit_rows=150)
    manifest = assert_same_everywhere(outputs)
    assert manifest["stages"][-1]["rows_removed"] > 0
    first, *others = outputs.values()
    for name in ("summary.json", "matches.json"):
        side = Path("decontamination") / "decontaminate" / name
        assert all((first / side).read_bytes() == (o / side).read_bytes() for o in others), name


class FailsOnce:
    """Decontaminate whose transform raises once on a chosen work unit and notes the units it
    transforms: the run stops with some units finished and their side tables written."""

    fail_on: int | None = None
    transformed: set[int] = set()

    @classmethod
    def stage(cls):
        from curate.stages.decontaminate import Decontaminate

        class Stage(Decontaminate):
            def transform_with_side(self, batch, ctx):
                cls.transformed.add(ctx.shard)
                if ctx.shard == cls.fail_on:
                    cls.fail_on = None
                    raise RuntimeError("injected failure")
                return super().transform_with_side(batch, ctx)

        return Stage


def test_a_run_stopped_mid_transform_resumes_to_the_same_matches(tmp_path, monkeypatch):
    """The matches come from each unit's transform (no separate pass), so a stop leaves some
    units' side tables on disk: the resumed stage must count each unit's pairs exactly once."""
    import curate.engine.runner

    source = tmp_path / "in"
    write_corpus(source, EVAL_ITEMS, rows=300)
    evals = write_eval_set(tmp_path / "qa.jsonl")
    stage = {
        "kind": "decontaminate",
        "ngram": 5,
        "eval_sets": [{"name": "qa", "path": str(evals), "text_columns": ["question", "answer"], "id_column": "qid"}],
    }
    spec = parse_pipeline({"stage": [stage]}, "test")
    whole = run_pipeline(spec, source, tmp_path / "whole", RunOptions(jobs=1, unit_rows=100)).output
    monkeypatch.setattr(curate.engine.runner, "stage_class", lambda kind, where="pipeline": FailsOnce.stage())
    FailsOnce.fail_on, FailsOnce.transformed = 5, set()
    with pytest.raises(RuntimeError, match="injected"):
        run_pipeline(spec, source, tmp_path / "out", RunOptions(jobs=1, unit_rows=100))
    assert FailsOnce.transformed == set(range(6))  # units 0-4 finished, with their side tables
    finished = {part.parent.parent.name for part in (tmp_path / "out").rglob(f"{SIDE}/part-*.parquet")}
    assert finished == {f"{unit:05d}" for unit in range(5)}  # the finished units' side tables
    out = run_pipeline(spec, source, tmp_path / "out", RunOptions(jobs=1, unit_rows=100, resume=True)).output
    for name in ("summary.json", "matches.json"):
        side = Path("decontamination") / "decontaminate" / name
        assert (out / side).read_bytes() == (whole / side).read_bytes(), name
    assert read_parts(out / "removed").equals(read_parts(whole / "removed"))
    assert json.loads((out / side).read_text())  # the matches are not empty


def test_the_mix_report_lists_each_evaluation_set(tmp_path):
    source = tmp_path / "in"
    planted = write_corpus(source, EVAL_ITEMS, shards=1)
    evals = write_eval_set(tmp_path / "qa.jsonl")
    stage = {
        "kind": "decontaminate",
        "eval_sets": [{"name": "qa", "path": str(evals), "text_columns": ["question", "answer"]}],
    }
    run_pipeline(parse_pipeline({"stage": [stage], "report": {}}, "test"), source, tmp_path / "out", RunOptions())
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    (row,) = report["pipeline"]["decontamination"]
    assert (row["set"], row["items"], row["rows_removed"]) == ("qa", len(EVAL_ITEMS), len(planted))
    assert "items found" in (tmp_path / "out" / "report.html").read_text()
