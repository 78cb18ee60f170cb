"""The MinHash array functions: tokenization contract, signature statistics, LSH shape,
buckets, exact Jaccard and union-find, each against a plain reference."""

from __future__ import annotations

import itertools
import math
import re

import networkx as nx
import numpy as np
import pyarrow as pa
import pytest
from scipy import integrate

from curate.algorithms import minhash as mh


def reference_words(text: str | None) -> list[str]:
    return re.findall(r"\w+", (text or "").lower())


def reference_shingles(text: str | None, n: int) -> set[str]:
    words = reference_words(text)
    if not words:
        return set()
    if len(words) < n:
        return {" ".join(words)}
    return {" ".join(words[i : i + n]) for i in range(len(words) - n + 1)}


TEXTS = [
    "Hello, World! foo_bar baz qux quux corge",
    "",
    None,
    "ÜBER straße—café naïve “quoted” x 42",
    "a b",
    "   ,,, !!",
    "one two three four five six",
    "Averyveryverylongwordthatgoesonandon x" + "y" * 40 + " tail",
    "Tabs\tand\nnewlines\r\nmixed   spaces",
    "ΑΒΓ δέλτα Σίσυφος — 東京 タワー",
]


def test_words_follow_python_regex_word_runs() -> None:
    hashes, offsets = mh.word_hashes(pa.array(TEXTS))
    expected = [reference_words(t) for t in TEXTS]
    assert offsets.tolist() == np.cumsum([0] + [len(w) for w in expected]).tolist()
    flat = [w for words in expected for w in words]
    by_word: dict[str, int] = {}
    for word, h in zip(flat, hashes.tolist()):
        assert by_word.setdefault(word, h) == h  # same word, same hash
    assert len(set(by_word.values())) == len(by_word)  # different words, different hashes


def test_words_beyond_the_basic_plane_follow_python_regex_too() -> None:
    # Word characters above U+FFFF (CJK Ext. B, Gothic, math bold) and symbols that are not
    # (emoji), in one batch with plain text, and a batch below U+FFFF after it.
    texts = ["\U00020000\U00020001 x \U0001f600 \U00010330z", "\U0001d400bc 😀 naïve", "plain ascii"]
    for batch in (texts, ["ΑΒΓ δέλτα 東京", "café"]):
        hashes, offsets = mh.word_hashes(pa.array(batch))
        assert np.diff(offsets).tolist() == [len(reference_words(t)) for t in batch]
    rng = np.random.default_rng(0)
    points = np.concatenate([rng.integers(0x80, 0xD800, 4000), rng.integers(0xE000, 0x110000, 4000)])
    for cps in (points[points < 0x10000], points):
        expected = [re.fullmatch(r"\w", chr(c)) is not None for c in cps.tolist()]
        assert mh._is_word_codepoint(cps).tolist() == expected


def test_shingle_sets_match_reference_sets() -> None:
    for n in (1, 3, 5):
        shingles, offsets = mh.text_shingles(pa.array(TEXTS), ngram=n)
        for row, text in enumerate(TEXTS):
            ours = shingles[offsets[row] : offsets[row + 1]]
            ref = reference_shingles(text, n)
            assert len(set(ours.tolist())) == len(ref), (text, n)
    # identical shingle strings in different texts hash alike, whatever surrounds them
    a, ao = mh.text_shingles(pa.array(["x y z w v u", "q x y z w v u"]), ngram=5)
    assert set(a[ao[0] : ao[1]].tolist()) <= set(a[ao[1] : ao[2]].tolist())


def test_short_text_is_one_shingle_and_empty_text_has_none() -> None:
    shingles, offsets = mh.text_shingles(pa.array(["just three words", "", "?!", "Just three, WORDS."]), ngram=5)
    assert np.diff(offsets).tolist() == [1, 0, 0, 1]
    assert shingles[0] == shingles[1]
    sig = mh.signatures(shingles, offsets, 64)
    assert (sig[1] == mh.EMPTY).all() and (sig[2] == mh.EMPTY).all()
    assert (sig[0] != mh.EMPTY).all()


def test_char_shingles_collapse_whitespace() -> None:
    texts = ["  Ab  c\n\td ", "ab c d", "x", "", "é  é", "\u3000 a\u3000"]
    hashes, offsets = mh.char_hashes(pa.array(texts))
    for row, text in enumerate(texts):
        normalized = " ".join(text.lower().split())
        assert offsets[row + 1] - offsets[row] == len(normalized)
    assert (hashes[offsets[0] : offsets[1]] == hashes[offsets[1] : offsets[2]]).all()


def test_signatures_do_not_depend_on_chunking() -> None:
    rng = np.random.default_rng(0)
    words = [
        " ".join(rng.choice(["alpha", "beta", "gamma", "delta", "eps", "zeta"], size=rng.integers(0, 40)))
        for _ in range(60)
    ]
    whole = mh.signatures(*mh.text_shingles(pa.array(words)), 128, seed=5)
    parts = np.vstack(
        [mh.signatures(*mh.text_shingles(pa.array(words[i : i + 7])), 128, seed=5) for i in range(0, 60, 7)]
    )
    assert np.array_equal(whole, parts)


def test_densification_matches_brute_force_probe_order() -> None:
    rng = np.random.default_rng(1)
    k = 32
    sizes = rng.integers(0, 80, 300)
    shingles = rng.integers(0, 2**63, int(sizes.sum()), dtype=np.uint64) * np.uint64(2) + np.uint64(1)
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    sig = mh.signatures(shingles, offsets, k, seed=3)
    order, _ = mh._probe_tables(k, 3)
    for row in range(len(sizes)):
        x = shingles[offsets[row] : offsets[row + 1]]
        raw = np.full(k, mh.EMPTY, np.uint32)
        for value in x.tolist():
            b = ((value >> 32) * k) >> 32
            raw[b] = min(raw[b], min(value & 0xFFFFFFFF, int(mh.EMPTY) - 1))
        if len(x) == 0:
            assert (sig[row] == mh.EMPTY).all()
            continue
        expected = [raw[next(order[b, t] for t in range(k) if raw[order[b, t]] != mh.EMPTY)] for b in range(k)]
        assert sig[row].tolist() == expected


@pytest.mark.parametrize("size", [3, 40, 1000])
def test_estimated_jaccard_is_unbiased(size: int) -> None:
    """Mean error over many random set pairs is ~0 and the spread is the binomial one.

    With 400 pairs and 128 slots the mean error has sd <= 0.5 / sqrt(128 * 400) ~ 0.0022;
    the bound 0.012 is over 5 sd away, and a biased sketch (e.g. one that ignores empty bins,
    or any systematic 0.02 shift) fails it."""
    rng = np.random.default_rng(size)
    pairs, k = 400, 128
    errors, exact = [], []
    for _p in range(pairs):
        union = rng.integers(0, 2**63, 2 * size, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
        shared = rng.integers(0, size + 1)
        a = union[:size]
        b = np.concatenate([union[:shared], union[size : 2 * size - shared]])
        j = shared / (2 * size - shared)
        sig = mh.signatures(np.concatenate([a, b]), np.array([0, len(a), len(a) + len(b)]), k)
        errors.append(mh.estimated_jaccard(sig[:1], sig[1:])[0] - j)
        exact.append(j)
    errors_arr, exact_arr = np.array(errors), np.array(exact)
    assert abs(errors_arr.mean()) < 0.012
    # spread: close to sqrt(J(1-J)/k) on average (loose: within a factor 1.5 either way)
    expected_var = np.mean(exact_arr * (1 - exact_arr) / k)
    assert 0.45 * expected_var < errors_arr.var() < 2.2 * expected_var


def _datasketch_style_error(threshold: float, b: int, r: int, wfp: float, wfn: float) -> float:
    fp, _ = integrate.quad(lambda s: 1 - (1 - s**r) ** b, 0.0, threshold)
    fn, _ = integrate.quad(lambda s: (1 - s**r) ** b, threshold, 1.0)
    return wfp * fp + wfn * fn


@pytest.mark.parametrize(
    "threshold,num_perm,wfp,wfn", [(0.8, 128, 0.1, 0.9), (0.5, 64, 0.5, 0.5), (0.9, 48, 0.3, 0.7)]
)
def test_bands_minimize_weighted_s_curve_error(threshold: float, num_perm: int, wfp: float, wfn: float) -> None:
    b, r = mh.optimal_bands(threshold, num_perm, wfp, wfn)
    assert b * r <= num_perm
    ours = _datasketch_style_error(threshold, b, r, wfp, wfn)
    best = min(
        _datasketch_style_error(threshold, bb, rr, wfp, wfn)
        for bb in range(1, num_perm + 1)
        for rr in range(1, num_perm // bb + 1)
    )
    assert ours <= best + 1e-6


def test_bands_match_datasketch() -> None:
    from datasketch.lsh import _optimal_param

    for threshold in (0.7, 0.8):
        assert mh.optimal_bands(threshold, 128, 0.5, 0.5) == _optimal_param(threshold, 128, 0.5, 0.5)


def test_s_curve_predicts_bucket_collisions() -> None:
    """Observed share of pairs at Jaccard s that share a band ~ 1 - (1 - s^r)^b."""
    rng = np.random.default_rng(7)
    size, pairs, bands, rows = 200, 500, 8, 4
    for s in (0.4, 0.6):
        shared = int(round(2 * size * s / (1 + s)))
        hits = 0
        for _p in range(pairs):
            union = rng.integers(0, 2**63, 2 * size, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
            a, b = union[:size], np.concatenate([union[:shared], union[size : 2 * size - shared]])
            sig = mh.signatures(np.concatenate([a, b]), np.array([0, size, 2 * size]), bands * rows)
            keys = mh.band_keys(sig, bands, rows)
            hits += bool((keys[0] == keys[1]).any())
        j = shared / (2 * size - shared)
        expected = float(mh.candidate_probability(j, bands, rows))
        sd = math.sqrt(expected * (1 - expected) / pairs)
        assert abs(hits / pairs - expected) < 5 * sd + 0.02


def test_bucket_pairs_find_every_shared_key() -> None:
    rng = np.random.default_rng(3)
    keys = rng.integers(0, 6, size=(50, 3)).astype(np.uint64)
    i, j = mh.bucket_pairs(keys, all_pairs_max=1000)
    expected = {(a, b) for a, b in itertools.combinations(range(50), 2) if (keys[a] == keys[b]).any()}
    assert set(zip(i.tolist(), j.tolist())) == expected


def test_large_buckets_stay_connected_with_linear_pairs() -> None:
    keys = np.zeros((500, 1), dtype=np.uint64)
    i, j = mh.bucket_pairs(keys, all_pairs_max=16)
    assert len(i) < 2 * 500
    assert (mh.connected_components(500, i, j) == 0).all()


def test_keyed_bucket_pairs_split_by_key_give_the_matrix_pairs() -> None:
    """The shuffle's contract: entries split by key hash into any number of key buckets, the
    union of each bucket's pairs is exactly bucket_pairs over the whole key matrix (big
    buckets included, where only star and chain pairs are made)."""
    rng = np.random.default_rng(5)
    n, bands = 300, 4
    keys = rng.integers(0, 40, size=(n, bands)).astype(np.uint64)
    keys[:, 1] = 7  # one band where every row shares a key: a bucket far above all_pairs_max
    i, j = mh.bucket_pairs(keys)
    expected = set((i * n + j).tolist())
    band = np.repeat(np.arange(bands, dtype=np.uint8)[None, :], n, axis=0).ravel()
    row = np.repeat(np.arange(n), bands)
    key = keys.ravel()
    for split in (1, 3, 8):
        found: set[int] = set()
        for bucket in range(split):
            mine = key % np.uint64(split) == bucket
            pairs = mh.keyed_bucket_pairs(band[mine], key[mine], row[mine], n)
            assert (np.diff(pairs) > 0).all()
            found |= set(pairs.tolist())
        assert found == expected, split
    # the same key in two bands is two buckets, not one
    pairs = mh.keyed_bucket_pairs(np.array([0, 1], np.uint8), np.array([9, 9], np.uint64), np.array([0, 1]), 2)
    assert len(pairs) == 0


def test_connected_components_match_networkx() -> None:
    rng = np.random.default_rng(11)
    for _trial in range(20):
        n = int(rng.integers(1, 300))
        m = int(rng.integers(0, 2 * n))
        i, j = rng.integers(0, n, m), rng.integers(0, n, m)
        labels = mh.connected_components(n, i, j)
        graph = nx.Graph()
        graph.add_nodes_from(range(n))
        graph.add_edges_from(zip(i.tolist(), j.tolist()))
        for component in nx.connected_components(graph):
            members = sorted(component)
            assert set(labels[members].tolist()) == {members[0]}


def test_exact_jaccard_matches_python_sets() -> None:
    rng = np.random.default_rng(5)
    sets = [np.unique(rng.integers(0, 50, rng.integers(0, 30))).astype(np.uint64) for _ in range(40)]
    values = np.concatenate(sets)
    offsets = np.concatenate([[0], np.cumsum([len(s) for s in sets])])
    i, j = rng.integers(0, 40, 300), rng.integers(0, 40, 300)
    got = mh.exact_jaccard(values, offsets, i, j)
    for a, b, g in zip(i, j, got):
        sa, sb = set(sets[a].tolist()), set(sets[b].tolist())
        want = len(sa & sb) / len(sa | sb) if sa | sb else 0.0
        assert g == pytest.approx(want)


def test_unique_sorted_sets() -> None:
    shingles = np.array([5, 3, 5, 9, 1, 1], dtype=np.uint64) << np.uint64(24)  # fingerprints: top 40 bits
    values, offsets = mh.unique_sorted_sets(shingles, np.array([0, 3, 3, 6]))
    assert offsets.tolist() == [0, 2, 2, 4]
    assert values.tolist() == [3, 5, 1, 9]


def test_duplicate_groups_keep_the_earliest_and_score_the_strongest_link() -> None:
    groups = mh.duplicate_groups(6, np.array([4, 1, 5]), np.array([2, 4, 3]), np.array([0.9, 0.85, 0.95]))
    assert groups.removed.tolist() == [2, 4, 5]
    assert groups.representative.tolist() == [1, 1, 3]
    assert groups.score.tolist() == [0.9, 0.9, 0.95]


def test_component_buckets_keep_every_component_whole_and_the_loads_close() -> None:
    rng = np.random.default_rng(3)
    for _trial in range(30):
        n = int(rng.integers(2, 400))
        m = int(rng.integers(1, 3 * n))
        i, j = rng.integers(0, n, m), rng.integers(0, n, m)
        buckets = int(rng.integers(1, 6))
        parts = mh.component_buckets(i, j, buckets)
        assert 1 <= len(parts) <= buckets
        assert sorted(np.concatenate(parts).tolist()) == list(range(m))  # every pair once
        graph = nx.Graph()
        graph.add_edges_from(zip(i.tolist(), j.tolist()))
        bucket_of_node = {}
        for k, part in enumerate(parts):
            for node in np.concatenate([i[part], j[part]]).tolist():
                assert bucket_of_node.setdefault(node, k) == k  # a node's pairs share a bucket
        sizes = [sum(1 for a, _ in zip(i, j) if a in c) for c in nx.connected_components(graph)]
        loads = [len(p) for p in parts]
        assert max(loads) - min(loads) <= max(sizes)
    assert [len(p) for p in mh.component_buckets(np.empty(0, np.int64), np.empty(0, np.int64), 3)] == [0, 0, 0]


def test_verify_plan_cuts_only_large_components_and_every_pair_is_checked_once() -> None:
    rng = np.random.default_rng(7)
    for _trial in range(20):
        n = int(rng.integers(30, 300))
        m = int(rng.integers(n, 4 * n))
        i, j = rng.integers(0, n, m), rng.integers(0, n, m)
        keep = i != j
        i, j = i[keep], j[keep]
        max_nodes = int(rng.integers(4, 40))
        plans = [mh.verify_plan(i, j, workers, max_nodes) for workers in (1, 2, 3)]
        graph = nx.Graph()
        graph.add_edges_from(zip(i.tolist(), j.tolist()))
        large = [c for c in nx.connected_components(graph) if len(c) > max_nodes]
        for plan in plans:
            assert len(plan.cross) == len(large)
            every = np.concatenate(plan.first + plan.cross)
            assert sorted(every.tolist()) == list(range(len(i)))  # every pair once
            for part in plan.first:
                ends = set(np.concatenate([i[part], j[part]]).tolist())
                if any(ends <= c for c in large):  # a group of a large component
                    assert len(ends) <= max_nodes
                else:  # small components whole
                    whole = set().union(*(nx.node_connected_component(graph, x) for x in ends))
                    assert whole == ends
        # the cut of large components does not depend on the worker count
        in_groups = [
            sorted(tuple(sorted(p.tolist())) for p in plan.first if any(set(i[p]) <= c for c in large))
            for plan in plans
        ]
        assert in_groups[0] == in_groups[1] == in_groups[2]
    assert mh.verify_plan(np.empty(0, np.int64), np.empty(0, np.int64), 2, 8) == mh.VerifyPlan([], [])
