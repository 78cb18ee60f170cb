"""MinHash LSH near duplicates as array functions: shingles, signatures, bands, buckets, groups.

Tokenization (the contract the benchmarks' ground truth reimplements in plain Python):
  * text is lowercased (Unicode lowercase: ASCII arithmetically, rows with other characters by
    Arrow `utf8_lower`);
  * word mode: a word is a maximal run of word characters as Python's `re` defines `\\w`
    (`ch.isalnum() or ch == "_"`); everything else separates words and is dropped.
    Shingles are the n consecutive words (default n = 5), i.e. `re.findall(r"\\w+", text.lower())`
    windows;
  * char mode: whitespace runs collapse to one space, leading/trailing whitespace is dropped,
    and shingles are n consecutive code points;
  * a text with fewer than n units (but at least one) is one shingle of all its units;
    a text with none (empty, whitespace or punctuation only) has no shingles and is never a
    near duplicate: the exact stage owns those.

Hashing never builds n-gram strings: unit (word or code point) hashes come from unaligned
8-byte loads of the whole lowercased UTF-8 buffer chained through fmix64, n-gram hashes are
array arithmetic over consecutive unit hashes, and signatures are one-permutation hashing with
optimal densification (Shrivastava 2017): one hash per shingle instead of `num_perm`, with the
same collision probability (the Jaccard similarity) per signature slot as classic MinHash.
Every random constant comes from splitmix64 of the seed, so results are stable across numpy
versions and machines.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curate.algorithms.representative import pick_in_groups

EMPTY = np.uint32(0xFFFFFFFF)  # signature slot of a text without shingles
_M64 = (1 << 64) - 1
_SMALL_DENSIFY = 16  # up to this many filled bins, densify by rank table; above, by probing

Unit = Literal["word", "char"]


# ---------------------------------------------------------------------------------------
# Random constants and mixing (uint64 arithmetic wraps; numpy does not warn on arrays).


def splitmix64(state: np.ndarray) -> np.ndarray:
    """The splitmix64 output function of `state` (uint64 array): a strong bijective mix."""
    z = np.asarray(state, dtype=np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def fmix64(x: np.ndarray) -> np.ndarray:
    """MurmurHash3's 64-bit finalizer: every input bit affects every output bit."""
    x = x ^ (x >> np.uint64(33))
    x *= np.uint64(0xFF51AFD7ED558CCD)
    x ^= x >> np.uint64(33)
    x *= np.uint64(0xC4CEB9FE1A85EC53)
    x ^= x >> np.uint64(33)
    return x


def random_u64(seed: int, stream: int, count: int) -> np.ndarray:
    """`count` pseudo-random uint64 for (seed, stream): independent streams per purpose."""
    base = splitmix64(np.array([(seed * 0x9E3779B97F4A7C15 + stream * 0xD1B54A32D192ED03) & _M64], dtype=np.uint64))[0]
    return splitmix64(base + np.arange(count, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15))


_STREAM_UNIT, _STREAM_NGRAM, _STREAM_BINPERM, _STREAM_BANDS = 1, 2, 3, 4


_BMP_END = 0x10000


def _is_word_codepoint(cps: np.ndarray) -> np.ndarray:
    """Per code point: is it a regex word character (`str.isalnum() or "_"`)?"""
    limit = _BMP_END if int(cps.max(initial=0)) < _BMP_END else 0x110000
    return _word_codepoints(limit)[cps]


@functools.lru_cache(maxsize=2)
def _word_codepoints(limit: int) -> np.ndarray:
    r"""The word-character table of the code points below `limit`, built once per process.

    One regex pass over the code points (re's `\w` is exactly isalnum() or "_") blanks word
    characters to NUL (itself not a word character): a Python loop calling isalnum() per code
    point took 0.7 s in every worker process. Below the end of the Basic Multilingual Plane (every
    script in common use) the pass takes 7 ms; all 1.1M code points took 0.05-0.11 s of
    every worker of every run, so that table is built only for text that needs it.
    Surrogates cannot be encoded; they stay False."""
    points = np.concatenate([np.arange(min(limit, 0xD800)), np.arange(0xE000, max(limit, 0xE000))]).astype("<u4")
    blanked = re.sub(r"\w", "\x00", points.tobytes().decode("utf-32-le")).encode("utf-32-le")
    table = np.zeros(limit, dtype=bool)
    table[points] = np.frombuffer(blanked, dtype="<u4") == 0
    table[0] = False
    return table


@functools.lru_cache(maxsize=1)
def _space_codepoints() -> np.ndarray:
    table = np.zeros(0x110000, dtype=bool)
    table[[c for c in range(0x3001) if chr(c).isspace()]] = True
    return table


_LOW_BYTES = np.array([0] + [(1 << (8 * k)) - 1 for k in range(1, 8)] + [_M64], dtype=np.uint64)


# ---------------------------------------------------------------------------------------
# Text -> unit hashes.


def _utf8_view(texts: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(bytes, offsets from 0) of a string array; nulls read as empty texts."""
    if isinstance(texts, pa.ChunkedArray):
        texts = texts.combine_chunks()
    if pa.types.is_dictionary(texts.type):
        texts = texts.dictionary_decode()
    if not (pa.types.is_string(texts.type) or pa.types.is_large_string(texts.type)):
        texts = texts.cast(pa.large_string())
    if texts.null_count:
        texts = texts.fill_null("")
    n = len(texts)
    buffers = texts.buffers()
    width = np.dtype(np.int64 if pa.types.is_large_string(texts.type) else np.int32)
    offsets = np.frombuffer(buffers[1], dtype=width, count=n + 1, offset=texts.offset * width.itemsize).astype(
        np.int64
    )
    data = np.frombuffer(buffers[2], dtype=np.uint8) if buffers[2] is not None else np.empty(0, np.uint8)
    return data[offsets[0] : offsets[-1]], offsets - offsets[0]


def lowercase_texts(texts: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Lowercased UTF-8 (bytes, offsets), 8 zero bytes of padding after the end (for unaligned
    8-byte loads). ASCII is lowercased arithmetically; only rows holding non-ASCII bytes go
    through Arrow's Unicode `utf8_lower`."""
    data, offsets = _utf8_view(texts)
    if len(data) and data.max() >= 0x80:  # a SIMD max first: most chunks of most corpora are ASCII
        starts = offsets[:-1]
        nonempty = offsets[1:] > starts
        rows = np.zeros(len(offsets) - 1, dtype=bool)
        rows[nonempty] = np.maximum.reduceat(data, starts[nonempty]) >= 0x80
        if isinstance(texts, pa.ChunkedArray):
            texts = texts.combine_chunks()
        texts = texts.cast(pa.large_string()).fill_null("")
        mask = pa.array(rows)
        texts = pc.replace_with_mask(texts, mask, pc.utf8_lower(texts.filter(mask)))
        data, offsets = _utf8_view(texts)
    out = np.zeros(len(data) + 8, dtype=np.uint8)
    upper = (data - np.uint8(ord("A"))) < np.uint8(26)
    np.bitwise_or(data, upper.view(np.uint8) << np.uint8(5), out=out[: len(data)])
    return out, offsets


def _decode_leads(data: np.ndarray, pos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(code point, byte length) of the multi-byte UTF-8 sequences starting at `pos`."""
    b0 = data[pos].astype(np.int32)
    b1, b2, b3 = (data[pos + k].astype(np.int32) & 0x3F for k in (1, 2, 3))  # padding keeps these in range
    two, three = b0 < 0xE0, b0 < 0xF0
    cps = np.where(
        two,
        ((b0 & 0x1F) << 6) | b1,
        np.where(three, ((b0 & 0x0F) << 12) | (b1 << 6) | b2, ((b0 & 0x07) << 18) | (b1 << 12) | (b2 << 6) | b3),
    )
    return cps, np.where(two, 2, np.where(three, 3, 4))


def _paint(mask: np.ndarray, pos: np.ndarray, nbytes: np.ndarray, value: np.ndarray) -> None:
    """Give every byte of the code points at `pos` (of `nbytes` bytes) its code point's flag."""
    for k in range(4):
        live = nbytes > k
        mask[pos[live] + k] = value[live]


def hash_segments(padded: np.ndarray, starts: np.ndarray, lengths: np.ndarray, seed: int = 0) -> np.ndarray:
    """A 64-bit hash of each byte segment `padded[start:start + length]` (length >= 1).

    Reads each segment as little-endian 8-byte words by unaligned loads (one gather per 8 bytes,
    not per byte), masks the tail and chains the words through fmix64 with the length mixed in:
    distinct segments of up to 8 bytes never collide (fmix64 is a bijection)."""
    if len(starts) == 0:
        return np.empty(0, np.uint64)
    words = np.ndarray((len(padded) - 7,), dtype="<u8", buffer=padded, strides=(1,))
    salt = random_u64(seed, _STREAM_UNIT, 3)
    lengths = lengths.astype(np.int64, copy=False)
    acc = fmix64(
        (words[starts] & _LOW_BYTES[np.minimum(lengths, 8)]) ^ salt[0] ^ (lengths.astype(np.uint64) * salt[1])
    )
    chunk = 1
    longer = np.flatnonzero(lengths > 8)
    while len(longer):
        rest = lengths[longer] - 8 * chunk
        word = words[starts[longer] + 8 * chunk] & _LOW_BYTES[np.minimum(rest, 8)]
        acc[longer] = fmix64((acc[longer] + salt[2]) ^ word)
        longer = longer[rest > 8]
        chunk += 1
    return acc


def word_hashes(texts: pa.Array, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(hash per word in text order, word offsets per text) for lowercased `\\w+` words."""
    data, offsets = lowercase_texts(texts)
    body = data[: len(data) - 8]
    is_word = (
        ((body - np.uint8(ord("a"))) < np.uint8(26))
        | ((body - np.uint8(ord("0"))) < np.uint8(10))
        | (body == np.uint8(ord("_")))
    )
    leads = np.flatnonzero(body >= 0xC0) if len(body) and body.max() >= 0xC0 else np.empty(0, np.int64)
    if len(leads):
        cps, nbytes = _decode_leads(data, leads)
        _paint(is_word, leads, nbytes, _is_word_codepoint(cps))
    # A word starts at a word byte whose previous byte is no word byte of the same text, and
    # ends after a word byte whose next byte is none: bool masks, then nonzero, so a run that
    # crosses a text boundary is split there without sorting (two sorts of every word's
    # start and end took a third of this function on short texts).
    inner = offsets[1:-1]
    inner = inner[(inner > 0) & (inner < len(body))]
    joined = np.zeros(len(body) + 1, dtype=bool)  # bytes i-1 and i: word bytes of one text
    np.logical_and(is_word[:-1], is_word[1:], out=joined[1:-1])
    joined[inner] = False
    starts = np.flatnonzero(is_word & ~joined[:-1])
    ends = np.flatnonzero(is_word & ~joined[1:]) + 1
    hashes = hash_segments(data, starts, ends - starts, seed)
    return hashes, np.searchsorted(starts, offsets).astype(np.int64)


def char_hashes(texts: pa.Array, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(hash per code point, code point offsets per text), whitespace runs collapsed to one
    space and trimmed at both ends of every text."""
    data, offsets = lowercase_texts(texts)
    body = data[: len(data) - 8]
    lead_pos = np.flatnonzero((body & np.uint8(0xC0)) != np.uint8(0x80))
    first = body[lead_pos]
    nbytes = np.ones(len(lead_pos), dtype=np.int64)
    space = ((first - np.uint8(9)) < np.uint8(5)) | (first == np.uint8(32)) | ((first - np.uint8(0x1C)) < np.uint8(4))
    multi = np.flatnonzero(first >= 0xC0)
    if len(multi):
        cps, nb = _decode_leads(data, lead_pos[multi])
        nbytes[multi] = nb
        space[multi] = _space_codepoints()[cps]
    unit_offsets = np.searchsorted(lead_pos, offsets)
    # Drop a space that follows a space or opens its text.
    opens = np.zeros(len(lead_pos), dtype=bool)
    opens[unit_offsets[:-1][unit_offsets[:-1] < len(lead_pos)]] = True
    after_space = np.zeros(len(lead_pos), dtype=bool)
    after_space[1:] = space[:-1]
    keep = ~(space & (after_space | opens))
    # Drop the one space a text may still end with.
    new_offsets = np.concatenate([[0], np.cumsum(keep)])[unit_offsets]
    nonempty = new_offsets[1:] > new_offsets[:-1]
    last = np.flatnonzero(keep)[new_offsets[1:][nonempty] - 1]
    keep[last[space[last]]] = False
    new_offsets = np.concatenate([[0], np.cumsum(keep)])[unit_offsets]
    kept = np.flatnonzero(keep)
    hashes = hash_segments(data, lead_pos[kept], nbytes[kept], seed)
    is_space = space[kept]
    if is_space.any():
        hashes[is_space] = hash_segments(np.array([32] + [0] * 8, np.uint8), np.array([0]), np.array([1]), seed)[0]
    return hashes, new_offsets.astype(np.int64)


def shingle_hashes(
    unit_hashes: np.ndarray, unit_offsets: np.ndarray, ngram: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """(hash per n-gram shingle, shingle offsets per text) from consecutive unit hashes.

    shingle = fmix64(sum_j unit[i + j] * C_j + k * C_n) over its k units (k = n, or all units
    of a text shorter than n); C_j random odd constants: order-sensitive, string-free."""
    counts = np.diff(unit_offsets)
    total = len(unit_hashes)
    mult = random_u64(seed, _STREAM_NGRAM, ngram + 1) | np.uint64(1)
    windows = max(total - ngram + 1, 0)
    full = np.zeros(windows, dtype=np.uint64)
    for j in range(ngram):
        full += unit_hashes[j : j + windows] * mult[j]
    # A window is valid unless a text starts strictly inside it.
    valid = np.ones(windows, dtype=bool)
    text_starts = unit_offsets[1:-1]
    for d in range(1, ngram):
        at = text_starts - d
        valid[at[(at >= 0) & (at < windows)]] = False
    full = full[valid] + (np.full(1, ngram, np.uint64) * mult[ngram])[0]
    per_text = np.maximum(counts - ngram + 1, 0)
    short = np.flatnonzero((counts > 0) & (counts < ngram))
    if len(short):
        acc = np.zeros(len(short), dtype=np.uint64)
        for j in range(ngram - 1):
            live = counts[short] > j
            acc[live] += unit_hashes[unit_offsets[short[live]] + j] * mult[j]
        acc += counts[short].astype(np.uint64) * mult[ngram]
        per_text[short] = 1
    shingle_offsets = np.concatenate([[0], np.cumsum(per_text)]).astype(np.int64)
    out = np.empty(int(shingle_offsets[-1]), dtype=np.uint64)
    if len(short):
        slots = np.ones(len(out), dtype=bool)
        slots[shingle_offsets[short]] = False
        out[slots] = full
        out[shingle_offsets[short]] = acc
    else:
        out[:] = full
    return fmix64(out), shingle_offsets


def window_hashes_at(unit_hashes: np.ndarray, starts: np.ndarray, ngram: int, seed: int = 0) -> np.ndarray:
    """The `shingle_hashes` value of the full n-unit windows starting at `starts` (each must
    lie inside one text): for a scan that needs only a few windows, n gathers over those
    windows instead of n passes over every unit."""
    mult = random_u64(seed, _STREAM_NGRAM, ngram + 1) | np.uint64(1)
    acc = np.full(len(starts), (np.full(1, ngram, np.uint64) * mult[ngram])[0], dtype=np.uint64)
    for j in range(ngram):
        acc += unit_hashes[starts + j] * mult[j]
    return fmix64(acc)


def text_shingles(
    texts: pa.Array, ngram: int = 5, unit: Unit = "word", seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """(shingle hashes, offsets per text): the shingle multiset of every text."""
    units = word_hashes(texts, seed) if unit == "word" else char_hashes(texts, seed)
    return shingle_hashes(*units, ngram=ngram, seed=seed)


# ---------------------------------------------------------------------------------------
# Signatures: one-permutation hashing with optimal densification.


@functools.lru_cache(maxsize=16)
def _probe_tables(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Per bin k a random probe order over all bins starting at k itself (order[k, 0] = k),
    and its inverse rank[k, j] = position of bin j in that order."""
    keys = random_u64(seed, _STREAM_BINPERM, num_perm * num_perm).reshape(num_perm, num_perm)
    keys[np.arange(num_perm), np.arange(num_perm)] = 0  # the bin itself comes first
    order = np.argsort(keys, axis=1, kind="stable").astype(np.int32)
    rank = np.empty_like(order)
    rank[np.arange(num_perm)[:, None], order] = np.arange(num_perm, dtype=np.int32)[None, :]
    return order, rank


def signatures(shingles: np.ndarray, offsets: np.ndarray, num_perm: int = 128, seed: int = 0) -> np.ndarray:
    """(n_texts, num_perm) uint32 MinHash signatures; rows of texts without shingles are EMPTY.

    Each shingle hash picks a bin (high 32 bits) and a value (low 32 bits); a bin keeps its
    minimum value. An empty bin copies the first filled bin in its own random probe order, which
    makes P[slot equal] = Jaccard exactly as for classic MinHash (optimal densification). 32-bit
    values: a spurious value match costs 2^-32 per slot, far below the 1/sqrt(num_perm) noise,
    and halves the spill and the compare bandwidth."""
    n = len(offsets) - 1
    sig = np.full((n, num_perm), EMPTY, dtype=np.uint32)
    if len(shingles) == 0:
        return sig
    counts = np.diff(offsets)
    text_of = np.repeat(np.arange(n, dtype=np.int64), counts)
    bins = ((shingles >> np.uint64(32)) * np.uint64(num_perm)) >> np.uint64(32)
    values = np.minimum((shingles & np.uint64(0xFFFFFFFF)).astype(np.uint32), EMPTY - np.uint32(1))
    np.minimum.at(sig.reshape(-1), text_of * num_perm + bins.astype(np.int64), values)
    _densify(sig, num_perm, seed)
    return sig


def _densify(sig: np.ndarray, num_perm: int, seed: int) -> None:
    filled = sig != EMPTY
    n_filled = filled.sum(axis=1)
    needs = np.flatnonzero((n_filled > 0) & (n_filled < num_perm))
    if len(needs) == 0:
        return
    order, rank = _probe_tables(num_perm, seed)
    small = needs[n_filled[needs] <= _SMALL_DENSIFY]
    large = needs[n_filled[needs] > _SMALL_DENSIFY]
    # Few filled bins: bin k copies the filled bin of least rank in k's order; walk the m
    # filled bins keeping the best so far, on (g, K) blocks (rank_by_bin[j, k] = rank[k, j]).
    rank_by_bin = np.ascontiguousarray(rank.T)
    for m in sorted_unique(n_filled[small]):
        group = small[n_filled[small] == m]
        for lo in range(0, len(group), 8192):
            rows = group[lo : lo + 8192]
            block = sig[rows]
            nonempty = np.nonzero(block != EMPTY)[1].reshape(len(rows), m)  # (g, m) filled bins
            values = np.take_along_axis(block, nonempty, axis=1)  # (g, m)
            best_rank = rank_by_bin[nonempty[:, 0]]
            best = np.repeat(values[:, :1], num_perm, axis=1)
            for t in range(1, int(m)):
                cand = rank_by_bin[nonempty[:, t]]
                better = cand < best_rank
                best_rank = np.where(better, cand, best_rank)
                best = np.where(better, values[:, t : t + 1], best)
            sig[rows] = best
    # Many filled bins: probe each empty bin's order until a filled bin (a few steps on average).
    if len(large):
        block = sig[large]
        block_filled = filled[large]
        r, k = np.nonzero(~block_filled)
        step = 1
        while len(r):
            cand = order[k, step]
            hit = block_filled[r, cand]
            block[r[hit], k[hit]] = block[r[hit], cand[hit]]
            r, k = r[~hit], k[~hit]
            step += 1
        sig[large] = block


# ---------------------------------------------------------------------------------------
# LSH parameters, band keys, buckets.


def _false_positive_area(threshold: float, bands: int, rows: int, grid: int = 2049) -> float:
    s = np.linspace(0.0, threshold, grid)
    return float(np.trapezoid(1.0 - (1.0 - s**rows) ** bands, s))


def _false_negative_area(threshold: float, bands: int, rows: int, grid: int = 2049) -> float:
    s = np.linspace(threshold, 1.0, grid)
    return float(np.trapezoid((1.0 - s**rows) ** bands, s))


@functools.lru_cache(maxsize=64)
def optimal_bands(
    threshold: float, num_perm: int, false_positive_weight: float = 0.5, false_negative_weight: float = 0.5
) -> tuple[int, int]:
    """(bands, rows), bands * rows <= num_perm, minimizing the weighted areas under the LSH
    S-curve 1 - (1 - s^r)^b below the threshold (false positives) and above it (false
    negatives); the criterion datasketch uses, integrated here on a fine grid."""
    best, best_err = (1, 1), float("inf")
    for bands in range(1, num_perm + 1):
        for rows in range(1, num_perm // bands + 1):
            err = false_positive_weight * _false_positive_area(
                threshold, bands, rows
            ) + false_negative_weight * _false_negative_area(threshold, bands, rows)
            if err < best_err - 1e-12:
                best, best_err = (bands, rows), err
    return best


def candidate_probability(similarity: np.ndarray | float, bands: int, rows: int) -> np.ndarray:
    """P[two texts of Jaccard s share at least one band] = 1 - (1 - s^r)^b."""
    s = np.asarray(similarity, dtype=np.float64)
    return 1.0 - (1.0 - s**rows) ** bands


def band_keys(sig: np.ndarray, bands: int, rows: int, seed: int = 0) -> np.ndarray:
    """(n, bands) uint64: each band's `rows` slots chained through fmix64 (a 64-bit collision
    between different bands contents is ~2^-64, so equal keys mean equal slots)."""
    if bands * rows > sig.shape[1]:
        raise ValueError(f"bands x rows = {bands * rows} exceeds num_perm = {sig.shape[1]}")
    salt = random_u64(seed, _STREAM_BANDS, bands)
    keys = np.empty((sig.shape[0], bands), dtype=np.uint64)
    for b in range(bands):
        block = sig[:, b * rows : (b + 1) * rows].astype(np.uint64)
        acc = np.full(sig.shape[0], salt[b], dtype=np.uint64)
        for t in range(0, rows, 2):
            word = block[:, t] << np.uint64(32)
            if t + 1 < rows:
                word |= block[:, t + 1]
            acc = fmix64(acc ^ word) + np.uint64(0x9E3779B97F4A7C15)
        keys[:, b] = acc
    return keys


def bucket_pairs(keys: np.ndarray, all_pairs_max: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Candidate pairs (i < j, row indices) of rows that share a key in any band column.

    Buckets come from sorting each band's keys (no Python dicts). A bucket of up to
    `all_pairs_max` rows yields all its pairs; a larger one yields every member paired with the
    bucket's first (smallest index) member and with its predecessor, so work and memory stay
    linear in the bucket while every member still has a path to the rest (bands give more
    paths). Pairs are deduplicated band by band, so memory follows distinct pairs."""
    n = keys.shape[0]
    found = np.empty(0, dtype=np.int64)
    for b in range(keys.shape[1]):
        order = np.argsort(keys[:, b], kind="stable")
        sorted_keys = keys[order, b]
        boundary = np.ones(n + 1, dtype=bool)
        boundary[1:n] = sorted_keys[1:] != sorted_keys[:-1]
        i, j = run_pairs(order, np.flatnonzero(boundary), all_pairs_max)
        if len(i):
            found = sorted_unique(np.concatenate([found, i * n + j]))
    return found // max(n, 1), found % max(n, 1)


def keyed_bucket_pairs(
    band: np.ndarray, key: np.ndarray, row: np.ndarray, n: int, all_pairs_max: int = 4
) -> np.ndarray:
    """`bucket_pairs` over (band, key, row) entries instead of an (n, bands) key matrix: the
    sorted unique candidate pairs as `i * n + j` (i < j < n). A bucket is every entry with one
    (band, key); given all of a bucket's entries (a shuffle by key hash keeps buckets whole),
    the pairs are exactly those `bucket_pairs` finds for that bucket, in any split of the keys."""
    if len(row) == 0:
        return np.empty(0, dtype=np.int64)
    order = np.lexsort((row, key, band))
    sorted_band, sorted_key = band[order], key[order]
    boundary = np.ones(len(row) + 1, dtype=bool)
    boundary[1:-1] = (sorted_key[1:] != sorted_key[:-1]) | (sorted_band[1:] != sorted_band[:-1])
    i, j = run_pairs(np.asarray(row, dtype=np.int64)[order], np.flatnonzero(boundary), all_pairs_max)
    return sorted_unique(i * n + j)


def run_pairs(members: np.ndarray, starts: np.ndarray, all_pairs_max: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (lo, hi), lo != hi, within runs of `members` (run k is members[starts[k]:starts[k+1]],
    its rows ascending; starts ends with len(members)): all pairs of a run of up to
    `all_pairs_max`, else each member with the run's first and with its predecessor."""
    sizes = np.diff(starts)
    run_starts, run_sizes = starts[:-1][sizes > 1], sizes[sizes > 1]
    if len(run_sizes) == 0:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
    firsts, seconds = [], []
    small = run_sizes <= all_pairs_max
    for size in sorted_unique(run_sizes[small]):
        base = run_starts[small & (run_sizes == size)]
        a, c = np.triu_indices(int(size), k=1)
        firsts.append(members[(base[:, None] + a[None, :]).ravel()])
        seconds.append(members[(base[:, None] + c[None, :]).ravel()])
    big_starts, big_sizes = run_starts[~small], run_sizes[~small]
    if len(big_sizes):
        tails = big_sizes - 1
        head = np.repeat(big_starts, tails)
        member = head + np.arange(int(tails.sum()), dtype=np.int64) - np.repeat(np.cumsum(tails) - tails, tails) + 1
        firsts += [members[head], members[member - 1]]
        seconds += [members[member], members[member]]
    i = np.concatenate(firsts).astype(np.int64, copy=False)
    j = np.concatenate(seconds).astype(np.int64, copy=False)
    lo, hi = np.minimum(i, j), np.maximum(i, j)
    distinct = lo != hi
    return lo[distinct], hi[distinct]


def sorted_unique(values: np.ndarray) -> np.ndarray:
    """np.unique by sort and compare: numpy 2.x's hash-based unique degrades badly on the
    regular integers packed pairs are (50 s instead of 0.1 s on 2M pairs)."""
    values = np.sort(values)
    keep = np.ones(len(values), dtype=bool)
    keep[1:] = values[1:] != values[:-1]
    return values[keep]


# ---------------------------------------------------------------------------------------
# Verification and groups.


def estimated_jaccard(sig_a: np.ndarray, sig_b: np.ndarray) -> np.ndarray:
    """Fraction of equal signature slots, row by row."""
    return (sig_a == sig_b).mean(axis=1)


FINGERPRINT_BITS = 40  # exact-Jaccard shingle fingerprints: a collision inside a pair's union of
# u shingles has probability ~u^2 / 2^41 (7e-6 for two 2,000-shingle texts) and moves J by 1/u.
_FP_MASK = np.uint64((1 << FINGERPRINT_BITS) - 1)


def unique_sorted_sets(shingles: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each text's shingles as a sorted set of 40-bit fingerprints: (values, offsets).

    One single-key sort of (text << 40 | fingerprint), far cheaper than a two-key lexsort;
    texts per call < 2^24."""
    n = len(offsets) - 1
    if n >= 1 << (64 - FINGERPRINT_BITS):
        raise ValueError("too many texts in one call")
    text_of = np.repeat(np.arange(n, dtype=np.uint64), np.diff(offsets))
    keys = np.sort((text_of << np.uint64(FINGERPRINT_BITS)) | (shingles >> np.uint64(64 - FINGERPRINT_BITS)))
    first = np.ones(len(keys), dtype=bool)
    first[1:] = keys[1:] != keys[:-1]
    keys = keys[first]
    counts = np.bincount((keys >> np.uint64(FINGERPRINT_BITS)).astype(np.int64), minlength=n)
    return keys & _FP_MASK, np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)


def exact_jaccard(sets: np.ndarray, offsets: np.ndarray, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Jaccard of the fingerprint sets of rows i and j (`sets[offsets[r]:offsets[r+1]]` is row
    r's sorted unique fingerprints, < 2^40). Vectorized over pairs: keys (pair << 40 |
    fingerprint) are sorted on each side, so one searchsorted counts every intersection."""
    out = np.zeros(len(i), dtype=np.float64)
    if len(i) == 0:
        return out
    size_i = offsets[i + 1] - offsets[i]
    size_j = offsets[j + 1] - offsets[j]
    work = size_i + size_j
    chunk_of = (np.cumsum(work) - work) // 4_000_000
    bounds = np.concatenate([[0], np.flatnonzero(np.diff(chunk_of)) + 1, [len(i)]])
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        sa, sb = size_i[lo:hi], size_j[lo:hi]
        pairs = np.arange(hi - lo, dtype=np.uint64)
        # (pair << 40 | fingerprint) over pairs in order is globally sorted on each side, since
        # every set is sorted: the intersection is a binary search of one side in the other.
        a_keys = (np.repeat(pairs, sa) << np.uint64(FINGERPRINT_BITS)) | sets[index_ranges(offsets[i[lo:hi]], sa)]
        b_keys = (np.repeat(pairs, sb) << np.uint64(FINGERPRINT_BITS)) | sets[index_ranges(offsets[j[lo:hi]], sb)]
        if len(b_keys) and len(a_keys):
            pos = np.minimum(np.searchsorted(b_keys, a_keys), len(b_keys) - 1)
            hit = b_keys[pos] == a_keys
            inter = np.bincount((a_keys[hit] >> np.uint64(FINGERPRINT_BITS)).astype(np.int64), minlength=hi - lo)
        else:
            inter = np.zeros(hi - lo, dtype=np.int64)
        union = sa + sb - inter
        out[lo:hi] = np.where(union > 0, inter / np.maximum(union, 1), 0.0)
    return out


def text_chunk_bounds(texts: pa.Array, chunk_bytes: int, chunk_rows: int | None = None) -> np.ndarray:
    """Row bounds [0, ..., len(texts)] cutting `texts` into runs of about `chunk_bytes` text
    bytes (a longer text alone) and at most `chunk_rows` rows: the per-byte arrays of hashing
    stay near the cache, whatever the batch size."""
    n = len(texts)
    if n == 0:
        return np.zeros(1, dtype=np.int64)
    lengths = pc.fill_null(pc.binary_length(texts), 0).to_numpy(zero_copy_only=False).astype(np.int64)
    ends = np.cumsum(lengths)
    cuts = np.searchsorted(ends, np.arange(chunk_bytes, int(ends[-1]), chunk_bytes), side="left") + 1
    by_rows = np.arange(chunk_rows, n, chunk_rows) if chunk_rows else np.empty(0, np.int64)
    return sorted_unique(np.concatenate([[0], cuts, by_rows, [n]]).astype(np.int64))


def index_ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenated index ranges [start, start + length) without a Python loop."""
    starts, lengths = np.asarray(starts, dtype=np.int64), np.asarray(lengths, dtype=np.int64)
    shift = np.repeat(starts - (np.cumsum(lengths) - lengths), lengths)
    return shift + np.arange(int(lengths.sum()), dtype=np.int64)


def connected_components(n: int, i: np.ndarray, j: np.ndarray, parent: np.ndarray | None = None) -> np.ndarray:
    """Label of every node = the smallest node of its component (vectorized union-find).

    Rounds of hooking every edge's larger root under its smaller root (np.minimum.at) and
    pointer jumping to the fixpoint; parent[x] <= x throughout, so each root is its tree's
    minimum and the final label is the component minimum. Pass a previous result as `parent`
    to add edges incrementally."""
    parent = np.arange(n, dtype=np.int64) if parent is None else parent.copy()
    i = np.asarray(i, dtype=np.int64)
    j = np.asarray(j, dtype=np.int64)
    while len(i):
        ri, rj = parent[i], parent[j]
        crossing = ri != rj
        if not crossing.any():
            break
        i, j, ri, rj = i[crossing], j[crossing], ri[crossing], rj[crossing]
        np.minimum.at(parent, np.maximum(ri, rj), np.minimum(ri, rj))
        while True:
            jumped = parent[parent]
            if np.array_equal(jumped, parent):
                break
            parent = jumped
    return parent


def component_buckets(i: np.ndarray, j: np.ndarray, buckets: int) -> list[np.ndarray]:
    """Positions of the pairs (i[k], j[k]) split into at most `buckets` lists, each connected
    component of the pair graph whole in one list; components by descending size (pairs, then
    smallest node) dealt back and forth over the lists, which keeps their pair counts close
    without a loop over components."""
    if len(i) == 0:
        return [np.empty(0, np.int64) for _ in range(max(buckets, 1))]
    nodes = sorted_unique(np.concatenate([i, j]))
    a = np.searchsorted(nodes, i)
    return deal_components(connected_components(len(nodes), a, np.searchsorted(nodes, j))[a], buckets)


def deal_components(label: np.ndarray, buckets: int) -> list[np.ndarray]:
    """component_buckets for pairs whose components are known: `label` is each pair's
    component (its smallest node)."""
    roots, component, sizes = np.unique(label, return_inverse=True, return_counts=True)
    order = np.lexsort((roots, -sizes))
    rank = np.empty(len(roots), np.int64)
    rank[order] = np.arange(len(roots))
    buckets = max(1, min(buckets, len(roots)))
    turn = rank % (2 * buckets)
    bucket_of = np.where(turn < buckets, turn, 2 * buckets - 1 - turn)[component]
    order = np.argsort(bucket_of, kind="stable")
    return np.split(order, np.searchsorted(bucket_of[order], np.arange(1, buckets)))


@dataclass(frozen=True)
class VerifyPlan:
    """Pair positions for the exact checks, in two rounds of tasks. Round 1: `first`, each list
    either whole components (dealt over the workers) or the pairs inside one group of a large
    component. Round 2: `cross`, per large component, the pairs between its groups, checked
    after round 1 from the state round 1 left (curate.stages.minhash)."""

    first: list[np.ndarray]
    cross: list[np.ndarray]


def verify_plan(i: np.ndarray, j: np.ndarray, workers: int, max_nodes: int) -> VerifyPlan:
    """Components of at most `max_nodes` rows whole (component_buckets); a larger one cut into
    groups of `max_nodes` consecutive rows in breadth-first order from its smallest row.

    Why: a task skips the pairs its accepted pairs have already joined, so a component checked
    whole costs far fewer checks than its pairs (24,000 overlapping long documents: one
    component of 23,920 rows, 141,538 pairs, 27,318 checks), but then one task did all of it
    while the other workers idled. Breadth-first groups keep most pairs inside a group (a
    neighbour is in the same or the next layer), each group is a task of its own, and the few
    pairs between groups mostly join groups already whole. The cut depends on the pairs and
    `max_nodes` only, never on `workers`, so the result is the same for any worker count."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import breadth_first_order

    if len(i) == 0:
        return VerifyPlan([], [])
    nodes = sorted_unique(np.concatenate([i, j]))
    a, b = np.searchsorted(nodes, i), np.searchsorted(nodes, j)
    label = connected_components(len(nodes), a, b)
    roots, sizes = np.unique(label, return_counts=True)
    large = roots[sizes > max_nodes]
    pair_label = label[a]
    if len(large) == 0:
        return VerifyPlan([p for p in deal_components(pair_label, workers) if len(p)], [])
    in_large = np.isin(pair_label, large)
    small = np.flatnonzero(~in_large)
    first = [small[p] for p in deal_components(pair_label[small], workers)] if len(small) else []
    graph = coo_matrix((np.ones(len(a), np.int8), (a, b)), shape=(len(nodes), len(nodes))).tocsr()
    group = np.full(len(nodes), -1, dtype=np.int64)
    cross: list[np.ndarray] = []
    # the pairs of each large component, in input order, one sort for all of them
    by_label = np.flatnonzero(in_large)
    by_label = by_label[np.argsort(pair_label[by_label], kind="stable")]
    per_component = np.split(by_label, np.searchsorted(pair_label[by_label], large[1:]))
    for root, members in zip(large.tolist(), per_component):  # root: the component's smallest row
        order = breadth_first_order(graph, root, directed=False, return_predecessors=False)
        group[order] = np.arange(len(order)) // max_nodes
        inside = group[a[members]] == group[b[members]]
        by_group = members[inside][np.argsort(group[a[members[inside]]], kind="stable")]
        bounds = np.searchsorted(group[a[by_group]], np.arange(1, int(group[order].max()) + 1))
        first.extend(np.split(by_group, bounds))
        cross.append(members[~inside])
    return VerifyPlan([p for p in first if len(p)], [c for c in cross if len(c)])


@dataclass(frozen=True)
class DuplicateGroups:
    """Rows to remove (sorted), each with its group's representative and its link score."""

    removed: np.ndarray
    representative: np.ndarray
    score: np.ndarray


def duplicate_groups(
    n: int, i: np.ndarray, j: np.ndarray, score: np.ndarray, keys: np.ndarray | None = None
) -> DuplicateGroups:
    """Connected components of the verified edges (i, j); each component keeps its smallest
    row, or with `keys` (curate.algorithms.representative, lower preferred) its row of lowest
    (key, row). A removed row's score is that of its strongest verified edge (the member that
    linked it most closely)."""
    label = connected_components(n, i, j)
    if keys is not None:
        label = pick_in_groups(label, keys, np.arange(n, dtype=np.int64))
    removed = np.flatnonzero(label != np.arange(n))
    best = np.full(n, -np.inf)
    np.maximum.at(best, i, score)
    np.maximum.at(best, j, score)
    return DuplicateGroups(removed, label[removed], best[removed])
