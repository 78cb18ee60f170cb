"""The fitting pass of minilm-fitted: the token-table fit, the sample rule, truncation."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from scipy import sparse

from curate.algorithms.token_fit import fit_linear_map, fit_token_table, mean_rows
from curate.embeddings.fitted import sample_fingerprint, sampled, token_counts
from curate.embeddings.static import word_token_rows


def _planted(rows: int = 3000, vocabulary: int = 400, dim: int = 16, seed: int = 0):
    rng = np.random.default_rng(seed)
    truth = rng.standard_normal((vocabulary, dim))
    tokens = rng.zipf(1.3, size=(rows, 8)) % vocabulary
    counts = sparse.csr_matrix(
        (np.ones(tokens.size), (np.repeat(np.arange(rows), 8), tokens.ravel())), shape=(rows, vocabulary)
    )
    targets = mean_rows(counts) @ truth
    prior = truth @ rng.standard_normal((dim, dim)) * 0.3 + rng.standard_normal((vocabulary, dim))  # a poor start
    return counts, targets, prior, truth


def test_fit_recovers_a_planted_table_far_better_than_its_prior():
    counts, targets, prior, truth = _planted()
    fitted = fit_token_table(counts, targets, prior, ridge=1e-3, steps=200)
    a = mean_rows(counts)
    before = np.linalg.norm(a @ prior - targets)
    after = np.linalg.norm(a @ fitted - targets)
    assert after < 0.05 * before
    seen = np.asarray(counts.sum(axis=0)).ravel() >= 20  # well-sampled tokens come out near the truth
    assert np.linalg.norm(fitted[seen] - truth[seen]) < 0.1 * np.linalg.norm(prior[seen] - truth[seen])


def test_fit_is_deterministic_and_unseen_tokens_follow_the_linear_map():
    counts, targets, prior, _ = _planted(rows=500)
    one = fit_token_table(counts, targets, prior, steps=30)
    two = fit_token_table(counts, targets, prior, steps=30)
    assert one.tobytes() == two.tobytes()
    unseen = np.flatnonzero(np.asarray(counts.sum(axis=0)).ravel() == 0)
    assert len(unseen)
    w = fit_linear_map(mean_rows(counts) @ prior, targets, 1e-3)
    assert np.allclose(one[unseen], (prior @ w)[unseen], atol=1e-4)


def test_sample_does_not_depend_on_the_cut():
    ordinals = np.arange(100_000)
    whole = sampled(ordinals, 100_000, 5000)
    pieces = np.concatenate([sampled(ordinals[s : s + 777], 100_000, 5000) for s in range(0, 100_000, 777)])
    assert np.array_equal(whole, pieces)
    assert 4500 < whole.sum() < 5500
    assert sampled(ordinals[:10], 10, 5000).all()


def test_fingerprint_changes_with_the_texts_and_the_settings():
    texts = pa.array(["a b", "c"])
    assert sample_fingerprint(texts, 10) == sample_fingerprint(pa.array(["a b", "c"]), 10)
    assert sample_fingerprint(texts, 10) != sample_fingerprint(pa.array(["a", "b c"]), 10)
    assert sample_fingerprint(texts, 10) != sample_fingerprint(texts, 11)


class _Encoding:
    def __init__(self, ids):
        self.ids = ids


class _CharTokenizer:
    """One token per character (id = ord % 50), so token counts are easy to predict."""

    def encode_batch_fast(self, words, add_special_tokens=False):
        return [_Encoding([ord(c) % 50 for c in w]) for w in words]


def test_truncation_keeps_the_words_that_start_within_max_tokens():
    texts = pa.array(["aa bbb c dd", "x", None, ""])
    per_text, word_tokens = word_token_rows(texts, _CharTokenizer(), None, 50, max_tokens=5)
    counts = (per_text @ word_tokens).toarray()
    # "aa" (tokens 0-1), "bbb" (2-4) start before 5; "c" starts at 5: dropped
    assert counts[0].sum() == 5 and counts[0][ord("c") % 50] == 0
    assert counts[1].sum() == 1 and counts[2].sum() == 0 and counts[3].sum() == 0
    full = (
        word_token_rows(texts, _CharTokenizer(), None, 50)[0] @ word_token_rows(texts, _CharTokenizer(), None, 50)[1]
    ).toarray()
    assert full[0].sum() == 8


def test_token_counts_add_the_special_column():
    counts = token_counts(pa.array(["ab", ""]), _CharTokenizer(), None, 50).toarray()
    assert counts.shape == (2, 51)
    assert counts[:, 50].tolist() == [2, 2] and counts[0, :50].sum() == 2


@pytest.mark.slow
def test_fitted_model_end_to_end_cached_and_the_same_for_any_jobs(tmp_path, monkeypatch):
    """Distils (about a minute) and embeds 300 sampled rows with MiniLM, then fits; the second
    run finds the fit in the cache, and --jobs 1 and 2 store the same vectors."""
    pytest.importorskip("model2vec.distill")
    import pyarrow.parquet as pq

    from curate.embeddings import models
    from curate.io import cache
    from curate.io.parts import read_parts
    from curate.pipeline import RunOptions, parse_pipeline, run_pipeline

    monkeypatch.setenv(cache.CACHE_ENV, str(tmp_path / "cache"))
    words = [f"word{i}" for i in range(300)]
    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(words, 6)) for _ in range(1500)]
    (tmp_path / "in").mkdir()
    pq.write_table(pa.table({"id": np.arange(1500), "text": texts}), tmp_path / "in" / "a.parquet")
    spec = parse_pipeline({"stage": [{"kind": "embed", "model": "minilm-fitted", "fit_rows": 300}]}, "test")
    infos, vectors = [], []
    for jobs in (1, 2):
        models.clear_loaded()
        out = tmp_path / f"out{jobs}"
        result = run_pipeline(spec, tmp_path / "in", out, RunOptions(jobs=jobs, unit_rows=400))
        infos.append(result.manifest["stages"][1]["info"])
        vectors.append(np.stack(read_parts(out / "embeddings", columns=["embedding"]).column(0).to_numpy(False)))
    models.clear_loaded()
    assert infos[0]["fitted"]["cached"] is False and infos[1]["fitted"]["cached"] is True
    assert infos[0]["model_version"] == infos[1]["model_version"]
    assert 200 < infos[0]["fitted"]["fit_rows"] < 400
    assert vectors[0].tobytes() == vectors[1].tobytes()
    np.testing.assert_allclose(np.linalg.norm(vectors[0], axis=1), 1.0, atol=1e-5)
