"""Word n-gram sets for decontamination: which texts share n consecutive words with which
evaluation items, as array functions.

Normalization is the word tokenization of `curate.algorithms.minhash` on both sides: Unicode
lowercase, a word is a maximal run of `\\w` characters, everything else (punctuation,
whitespace runs) separates words and is dropped. So `re.findall(r"\\w+", text.lower())` is
the plain-Python statement of what a text's words are.

An n-gram is n consecutive words of one text (never across texts); its 64-bit hash is array
arithmetic over the words' hashes (`minhash.shingle_hashes`), no n-gram string is ever built.
An evaluation item with fewer than n words (but at least one) is one k-gram of all its k
words, matched against the k-grams of the corpus ("matches as a whole"). The index keeps, per
distinct length, the sorted unique hashes and which items hold each (CSR), plus two bitmaps
that keep the corpus scan cheap (the corpus has millions of n-grams per second, the index few
hits): a word bitmap of every item word, so only windows of n words that all occur in some item
are hashed at all (15% of the 13-word windows of Debian descriptions against 2,000 passages of
documentation), and an n-gram bitmap that rejects almost all of those with one byte load
before the binary search.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from curate.algorithms.minhash import index_ranges, shingle_hashes, text_chunk_bounds, window_hashes_at, word_hashes

# Word hashes are a fixed function of the text, never of the run's seed: the index and the
# corpus must hash alike, and a seed would only change which 2^-64 collisions happen.
HASH_SEED = 0x5EED
# Prefilter bitmap size: at least this many bytes per indexed n-gram (rounded up to a power of
# two), so about 1 in this many non-matching corpus n-grams goes on to the binary search.
_FILTER_BYTES_PER_NGRAM = 16
# Text bytes matched at once, so the per-byte arrays stay near the cache. One thread, 2-core AMD
# EPYC: 11,405 long documents (107 MB) took 8.4 s of CPU as one piece and 2.5 s in pieces of
# 1 MiB; batches of 65,536 Debian descriptions took 0.93 s (whole), 0.63 (2 MiB), 0.45
# (1 MiB), 0.46 (512 KiB), 0.66 (128 KiB).
_MATCH_CHUNK_BYTES = 1 << 20
_MIN_FILTER_BITS = 16


def text_words(texts: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(hash per word in text order, word offsets per text) of the normalized texts."""
    return word_hashes(texts, HASH_SEED)


def ngram_windows(unit_hashes: np.ndarray, unit_offsets: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(hash, text index) of every window of n consecutive words inside one text; texts with
    fewer than n words give none."""
    hashes, offsets = shingle_hashes(unit_hashes, unit_offsets, n, HASH_SEED)
    per_text = np.diff(offsets)
    text = np.repeat(np.arange(len(per_text), dtype=np.int64), per_text)
    full = np.diff(unit_offsets)[text] >= n  # shingle_hashes also gives short texts one shingle
    return hashes[full], text[full]


@dataclass(frozen=True)
class NgramTable:
    """The items' distinct k-grams of one length: `hashes` sorted unique, the items holding
    `hashes[i]` are `items[starts[i]:starts[i + 1]]` (ascending)."""

    length: int
    hashes: np.ndarray  # uint64
    starts: np.ndarray  # int64, len(hashes) + 1
    items: np.ndarray  # int32

    @property
    def nbytes(self) -> int:
        return self.hashes.nbytes + self.starts.nbytes + self.items.nbytes


@dataclass(frozen=True)
class NgramIndex:
    """Every evaluation item's n-grams (and whole short items), ready to look corpus texts up."""

    ngram: int
    tables: tuple[NgramTable, ...]
    item_ngrams: np.ndarray  # int32 per item: its distinct n-grams (1 for a whole short item, 0: unmatchable)
    filter_shift: int
    prefilter: np.ndarray  # bool, 2 ** (64 - filter_shift) entries
    word_shift: int
    word_filter: np.ndarray  # bool, 2 ** (64 - word_shift) entries: a word hash some item holds

    @property
    def items(self) -> int:
        return len(self.item_ngrams)

    @property
    def nbytes(self) -> int:
        return (
            sum(t.nbytes for t in self.tables)
            + self.item_ngrams.nbytes
            + self.prefilter.nbytes
            + self.word_filter.nbytes
        )

    @property
    def ngrams(self) -> int:
        return sum(len(t.hashes) for t in self.tables)


def _table(length: int, hashes: np.ndarray, items: np.ndarray) -> NgramTable:
    """The CSR table of distinct (hash, item) pairs."""
    order = np.lexsort((items, hashes))
    hashes, items = hashes[order], items[order]
    fresh = np.ones(len(hashes), dtype=bool)
    fresh[1:] = (hashes[1:] != hashes[:-1]) | (items[1:] != items[:-1])
    hashes, items = hashes[fresh], items[fresh]
    first = np.ones(len(hashes), dtype=bool)
    first[1:] = hashes[1:] != hashes[:-1]
    starts = np.append(np.flatnonzero(first), len(hashes)).astype(np.int64)
    return NgramTable(length, hashes[first], starts, items.astype(np.int32))


def build_index(texts: pa.Array, ngram: int, whole_short_items: bool = True) -> NgramIndex:
    """The index of the evaluation items `texts` (item i is texts[i]). With
    `whole_short_items`, an item of k < ngram words matches a corpus text holding those k
    words in a row; otherwise it has no n-grams and never matches."""
    units, offsets = text_words(texts)
    words = np.diff(offsets)
    hashes, item = ngram_windows(units, offsets, ngram)
    tables = [_table(ngram, hashes, item)]
    item_ngrams = np.zeros(len(words), dtype=np.int32)
    if len(tables[0].items):
        item_ngrams += np.bincount(tables[0].items, minlength=len(words)).astype(np.int32)
    if whole_short_items:
        for k in np.unique(words[(words > 0) & (words < ngram)]).tolist():
            hashes, item = ngram_windows(units, offsets, k)
            whole = words[item] == k  # one window: the item itself
            tables.append(_table(k, hashes[whole], item[whole]))
            item_ngrams[item[whole]] = 1
    shift, prefilter = _bitmap(np.concatenate([t.hashes for t in tables]))
    word_shift, word_filter = _bitmap(np.unique(units))
    return NgramIndex(ngram, tuple(tables), item_ngrams, shift, prefilter, word_shift, word_filter)


def _bitmap(hashes: np.ndarray) -> tuple[int, np.ndarray]:
    """(shift, bitmap) with bitmap[h >> shift] set for every h in `hashes`, about
    `_FILTER_BYTES_PER_NGRAM` bytes per hash: a one-byte-load membership test with no false
    negatives and about one false positive in that many misses."""
    bits = max(_MIN_FILTER_BITS, int(np.ceil(np.log2(max(len(hashes), 1) * _FILTER_BYTES_PER_NGRAM))))
    shift = 64 - bits
    bitmap = np.zeros(1 << bits, dtype=bool)
    bitmap[hashes >> np.uint64(shift)] = True
    return shift, bitmap


def unknown_words_before(unit_hashes: np.ndarray, index: NgramIndex) -> np.ndarray:
    """Per word position (and one past the end), how many earlier words no item holds."""
    unknown = ~index.word_filter[unit_hashes >> np.uint64(index.word_shift)]
    before = np.zeros(len(unit_hashes) + 1, dtype=np.int64)
    np.cumsum(unknown, out=before[1:])
    return before


def candidate_windows(
    unit_hashes: np.ndarray, unit_offsets: np.ndarray, length: int, unknown_before: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(hash, text index) of the windows of `length` words inside one text with no unknown word
    (`unknown_words_before`): a superset of the windows that can be in the index."""
    windows = len(unit_hashes) - length + 1
    if windows <= 0:
        return np.empty(0, np.uint64), np.empty(0, np.int64)
    starts = np.flatnonzero(unknown_before[length : length + windows] == unknown_before[:windows])
    text = np.searchsorted(unit_offsets, starts, side="right") - 1  # the last text starting at or before
    inside = starts + length <= unit_offsets[text + 1]
    starts, text = starts[inside], text[inside]
    return window_hashes_at(unit_hashes, starts, length, HASH_SEED), text


def match_texts(texts: pa.Array, index: NgramIndex) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(text index, item, shared distinct n-grams) for every (text, item) pair sharing at least
    one n-gram (or holding a whole short item), sorted by text then item; in pieces of about
    _MATCH_CHUNK_BYTES text bytes."""
    bounds = text_chunk_bounds(texts, _MATCH_CHUNK_BYTES)
    if len(bounds) <= 2:
        return _match_piece(texts, index)
    found = [_match_piece(texts.slice(int(lo), int(hi - lo)), index) for lo, hi in zip(bounds[:-1], bounds[1:])]
    return (
        np.concatenate([rows + lo for (rows, _, _), lo in zip(found, bounds[:-1])]),
        np.concatenate([items for _, items, _ in found]),
        np.concatenate([counts for _, _, counts in found]),
    )


def _match_piece(texts: pa.Array, index: NgramIndex) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    units, offsets = text_words(texts)
    rows: list[np.ndarray] = []
    items: list[np.ndarray] = []
    shift = np.uint64(index.filter_shift)
    unknown_before = unknown_words_before(units, index)
    for table in index.tables:
        if not len(table.hashes):
            continue
        hashes, text = candidate_windows(units, offsets, table.length, unknown_before)
        maybe = np.flatnonzero(index.prefilter[hashes >> shift])
        hashes, text = hashes[maybe], text[maybe]
        pos = np.searchsorted(table.hashes, hashes)
        pos[pos == len(table.hashes)] = 0
        hit = table.hashes[pos] == hashes
        # distinct n-grams per text: an n-gram repeated in a text counts once
        pairs = np.unique(text[hit] * len(table.hashes) + pos[hit])
        text, pos = pairs // len(table.hashes), pairs % len(table.hashes)
        lengths = table.starts[pos + 1] - table.starts[pos]
        rows.append(np.repeat(text, lengths))
        items.append(table.items[index_ranges(table.starts[pos], lengths)].astype(np.int64))
    if not rows:
        empty = np.empty(0, np.int64)
        return empty, empty, empty
    keys, counts = np.unique(np.concatenate(rows) * index.items + np.concatenate(items), return_counts=True)
    return keys // index.items, keys % index.items, counts.astype(np.int64)


def contaminated(
    counts: np.ndarray, item_ngrams: np.ndarray, min_matches: int, min_coverage: float
) -> tuple[np.ndarray, np.ndarray]:
    """(pair qualifies, coverage) for (text, item) pairs: at least `min_matches` shared n-grams
    (0: rule off), or at least `min_coverage` of the item's n-grams (0: rule off)."""
    coverage = counts / np.maximum(item_ngrams, 1)
    qualifies = np.zeros(len(counts), dtype=bool)
    if min_matches > 0:
        qualifies |= counts >= min_matches
    if min_coverage > 0:
        qualifies |= coverage >= min_coverage
    return qualifies, coverage


def best_per_text(
    rows: np.ndarray, items: np.ndarray, counts: np.ndarray, coverage: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(texts ascending, the item each is charged to, that pair's coverage): the item covered
    most, then sharing most n-grams, then the first item."""
    order = np.lexsort((items, -counts, -coverage, rows))
    rows, items, coverage = rows[order], items[order], coverage[order]
    first = np.ones(len(rows), dtype=bool)
    first[1:] = rows[1:] != rows[:-1]
    return rows[first], items[first], coverage[first]
