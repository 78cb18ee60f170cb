"""MinHash LSH near-dup stage: a thin streaming wrapper around `curate.metrics.minhash`.

fit, pass 1: signatures chunk by chunk on `ctx.workers` threads (numpy and Arrow release the
GIL); only band keys (bands x 8 bytes per row) and row ordinals stay in memory, signatures
(and, for exact verification, shingle sets) spill to memory maps in `ctx.work_dir`. Then band
buckets -> candidate pairs -> verification -> connected components, and one id pass for the
representatives. transform, pass 2: a pure per-batch lookup of the fitted removed rows.
"""

from __future__ import annotations

import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterable, Iterator, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curate.ledger import empty_ledger, removed_rows
from curate.metrics import minhash as mh
from curate.stages.base import BatchSource, IdLookup, Stage, StageContext, row_ordinals, sorted_member, split_batch

VERIFY_MODES = ("estimate", "exact", "none")
UNITS = ("word", "char")
_CHUNK_BYTES = 2 << 20  # text bytes per work item: fits the per-byte arrays in cache-ish sizes
_CHUNK_ROWS = 8192  # rows per work item, so short-text batches still spread over workers
_PAIR_BLOCK = 65536  # candidate pairs verified per block (bounded signature gathers)

T = TypeVar("T")
R = TypeVar("R")


class MinHashDedup(Stage):
    """Near duplicates by MinHash LSH over word (or character) n-gram shingles; each group of
    near duplicates keeps its earliest row.

    Defaults, measured (docs/minhash.md): candidates are verified by exact Jaccard over the
    candidate rows' shingles, because 128-slot estimates (sd ~0.035 at 0.8) straddle the
    threshold on short texts whose Jaccard values are small fractions (4/5, 3/4); and since
    verification discards false positives while a missed pair is lost for good, bands x rows
    minimize 0.1 x false-positive + 0.9 x false-negative area (14 x 9 at 0.8, 128)."""

    kind = "minhash"
    needs_fit = True

    def __init__(
        self,
        *,
        threshold: float = 0.8,
        ngram: int = 5,
        num_perm: int = 128,
        unit: str = "word",
        bands: int = 0,
        rows: int = 0,
        verify: str = "exact",
        false_positive_weight: float = 0.1,
        false_negative_weight: float = 0.9,
    ):
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"threshold must be in (0, 1], got {threshold}")
        if ngram < 1:
            raise ValueError(f"ngram must be >= 1, got {ngram}")
        if not 2 <= num_perm <= 1024:
            raise ValueError(f"num_perm must be in 2..1024, got {num_perm}")
        if unit not in UNITS:
            raise ValueError(f"unit must be one of {UNITS}, got {unit!r}")
        if verify not in VERIFY_MODES:
            raise ValueError(f"verify must be one of {VERIFY_MODES}, got {verify!r}")
        if bands < 0 or rows < 0 or bands * max(rows, 1) > num_perm:
            raise ValueError(f"bands x rows must fit in num_perm = {num_perm} (got {bands} x {rows}); 0 means choose")
        if false_positive_weight < 0 or false_negative_weight < 0 or false_positive_weight + false_negative_weight == 0:
            raise ValueError("false_positive_weight and false_negative_weight must be >= 0 and not both 0")
        self.threshold = threshold
        self.ngram = ngram
        self.num_perm = num_perm
        self.unit = unit
        self.bands = bands
        self.rows = rows
        self.verify = verify
        self.false_positive_weight = false_positive_weight
        self.false_negative_weight = false_negative_weight

    def lsh_shape(self) -> tuple[int, int]:
        """(bands, rows): the user's, the other one filled in, or the weighted-error optimum."""
        if self.bands and self.rows:
            return self.bands, self.rows
        if self.bands:
            return self.bands, self.num_perm // self.bands
        if self.rows:
            return self.num_perm // self.rows, self.rows
        return mh.optimal_bands(self.threshold, self.num_perm, self.false_positive_weight, self.false_negative_weight)

    # -----------------------------------------------------------------------------------

    def fit(self, source: BatchSource, ctx: StageContext) -> "MinHashDedup":
        started = time.perf_counter()
        bands, rows = self.lsh_shape()
        self.bands_, self.rows_ = bands, rows
        work = Path(ctx.work_dir)
        work.mkdir(parents=True, exist_ok=True)
        sig_path, sets_path = work / "signatures.u32", work / "shingles.u64"
        ordinals: list[np.ndarray] = []
        keys: list[np.ndarray] = []
        nonempty: list[np.ndarray] = []
        exact = self.verify == "exact"

        def sketch(item: tuple[np.ndarray, pa.Array]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
            chunk_rows, texts = item
            shingles, offsets = mh.text_shingles(texts, self.ngram, self.unit, ctx.seed)  # type: ignore[arg-type]
            sig = mh.signatures(shingles, offsets, self.num_perm, ctx.seed)
            return chunk_rows, sig, mh.band_keys(sig, bands, rows, ctx.seed), np.diff(offsets) > 0

        with ctx.progress.task(f"{ctx.name}: signatures", total=source.num_rows) as bar, open(sig_path, "wb") as sig_file:
            for chunk_rows, sig, band, has in ordered_map(sketch, self._chunks(source, ctx, bar), max(1, ctx.workers)):
                ordinals.append(chunk_rows)
                keys.append(band)
                nonempty.append(has)
                sig_file.write(sig.tobytes())
        hashed = time.perf_counter()

        rows_all = np.concatenate(ordinals) if ordinals else np.empty(0, np.int64)
        if len(rows_all) > 1 and not (np.diff(rows_all) > 0).all():
            raise RuntimeError("minhash: source rows are not in increasing ordinal order")
        n = len(rows_all)
        sig = _open_matrix(sig_path, np.uint32, n, self.num_perm)
        band_all = np.concatenate(keys) if keys else np.empty((0, bands), np.uint64)
        has_shingles = np.flatnonzero(np.concatenate(nonempty)) if n else np.empty(0, np.int64)
        del keys, nonempty
        # Texts without shingles never join a bucket (the exact stage owns empty texts).
        local_i, local_j = mh.bucket_pairs(band_all[has_shingles])
        cand_i, cand_j = has_shingles[local_i], has_shingles[local_j]
        del band_all
        bucketed = time.perf_counter()

        sets = set_offsets = None
        if exact:  # shingle sets of candidate rows only, from one more pass over their texts
            members = np.unique(np.concatenate([cand_i, cand_j]))
            sets, set_offsets = self._candidate_sets(source, ctx, rows_all[members], sets_path)
            cand_i, cand_j = np.searchsorted(members, cand_i), np.searchsorted(members, cand_j)
            sig_i, sig_j = members[cand_i], members[cand_j]
        else:
            sig_i, sig_j = cand_i, cand_j
        est = np.empty(len(cand_i), dtype=np.float64)
        keep = np.ones(len(cand_i), dtype=bool)
        with ctx.progress.task(f"{ctx.name}: verifying", total=len(cand_i), unit="pairs") as vbar:
            for lo in range(0, len(cand_i), _PAIR_BLOCK):
                block = slice(lo, lo + _PAIR_BLOCK)
                est[block] = mh.estimated_jaccard(sig[sig_i[block]], sig[sig_j[block]])
                if sets is not None and set_offsets is not None:
                    keep[block] = mh.exact_jaccard(sets, set_offsets, cand_i[block], cand_j[block]) >= self.threshold
                elif self.verify == "estimate":
                    keep[block] = est[block] >= self.threshold
                vbar.advance(len(est[block]))
        groups = mh.duplicate_groups(n, sig_i[keep], sig_j[keep], est[keep])
        verified = time.perf_counter()
        del sig, sets

        self.duplicate_rows_ = rows_all[groups.removed]
        self.representatives_ = rows_all[groups.representative]
        self.scores_ = groups.score
        self.representative_ids_ = IdLookup.collect(source, self.representatives_, ctx.id_column)
        for path in (sig_path, sets_path):
            path.unlink(missing_ok=True)
        ctx.info.update(
            bands=bands,
            rows=rows,
            verify=self.verify,
            texts_without_shingles=int(n - len(has_shingles)),
            candidate_pairs=int(len(cand_i)),
            verified_pairs=int(keep.sum()),
            groups=int(len(np.unique(self.representatives_))),
            near_duplicates=int(len(self.duplicate_rows_)),
            seconds_signatures=round(hashed - started, 3),
            seconds_buckets=round(bucketed - hashed, 3),
            seconds_verify=round(verified - bucketed, 3),
        )
        return self

    def _chunks(self, source: BatchSource, ctx: StageContext, bar, wanted: np.ndarray | None = None) -> Iterator[tuple[np.ndarray, pa.Array]]:
        """Text chunks of the source in order; only rows with ordinals in `wanted` if given."""
        for batch in source.batches(columns=[ctx.text_column]):
            rows = row_ordinals(batch)
            texts = batch.column(ctx.text_column)
            if wanted is not None:
                hit = sorted_member(wanted, rows)
                rows, texts = rows[hit], texts.filter(pa.array(hit))
            yield from _text_chunks(rows, texts)
            bar.advance(batch.num_rows)

    def _candidate_sets(self, source: BatchSource, ctx: StageContext, wanted: np.ndarray, path: Path) -> tuple[np.ndarray, np.ndarray]:
        """Sorted unique shingle hashes of the `wanted` rows (sorted ordinals), spilled to `path`."""

        def shingle_sets(item: tuple[np.ndarray, pa.Array]) -> tuple[np.ndarray, np.ndarray]:
            values, offsets = mh.unique_sorted_sets(*mh.text_shingles(item[1], self.ngram, self.unit, ctx.seed))  # type: ignore[arg-type]
            return values, np.diff(offsets)

        sizes: list[np.ndarray] = []
        with ctx.progress.task(f"{ctx.name}: candidate shingles", total=source.num_rows) as bar, open(path, "wb") as handle:
            if len(wanted):
                for values, counts in ordered_map(shingle_sets, self._chunks(source, ctx, bar, wanted), max(1, ctx.workers)):
                    handle.write(values.tobytes())
                    sizes.append(counts)
        offsets = np.concatenate([[0], np.cumsum(np.concatenate(sizes) if sizes else np.empty(0, np.int64))]).astype(np.int64)
        if len(offsets) - 1 != len(wanted):
            raise RuntimeError(f"minhash: found {len(offsets) - 1} of {len(wanted)} candidate rows")
        return _open_vector(path, np.uint64, int(offsets[-1])), offsets

    def transform(self, batch: pa.RecordBatch, ctx: StageContext) -> tuple[pa.RecordBatch, pa.RecordBatch]:
        rows = row_ordinals(batch)
        is_dup = sorted_member(self.duplicate_rows_, rows)
        if not is_dup.any():
            return batch, empty_ledger()
        kept, removed = split_batch(batch, is_dup)
        where = np.searchsorted(self.duplicate_rows_, rows[is_dup])
        reps = self.representative_ids_(self.representatives_[where])
        ledger = removed_rows(removed.column(ctx.id_column), self.kind, "near_duplicate", duplicate_of=reps, score=self.scores_[where])
        return kept, ledger


def _text_chunks(rows: np.ndarray, texts: pa.Array | pa.ChunkedArray) -> Iterator[tuple[np.ndarray, pa.Array]]:
    """Zero-copy slices of a batch of about _CHUNK_BYTES text bytes and at most _CHUNK_ROWS rows."""
    if isinstance(texts, pa.ChunkedArray):
        texts = texts.combine_chunks()
    n = len(texts)
    if n == 0:
        return
    lengths = pc.fill_null(pc.binary_length(texts), 0).to_numpy(zero_copy_only=False).astype(np.int64)
    ends = np.cumsum(lengths)
    cuts = np.searchsorted(ends, np.arange(_CHUNK_BYTES, int(ends[-1]), _CHUNK_BYTES), side="left") + 1
    cuts = np.unique(np.concatenate([[0], cuts, np.arange(_CHUNK_ROWS, n, _CHUNK_ROWS), [n]]))
    for lo, hi in zip(cuts[:-1], cuts[1:]):
        if hi > lo:
            yield rows[lo:hi], texts.slice(int(lo), int(hi - lo))


def ordered_map(fn: Callable[[T], R], items: Iterable[T], workers: int) -> Iterator[R]:
    """fn over items on `workers` threads, results in input order, at most 2 x workers in
    flight (bounded memory, and reading the next input overlaps the work)."""
    if workers <= 1:
        yield from map(fn, items)
        return
    pending: deque[Future[R]] = deque()
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="minhash") as pool:
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def _open_matrix(path: Path, dtype: type, n: int, width: int) -> np.ndarray:
    if n == 0:
        return np.empty((0, width), dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r", shape=(n, width))


def _open_vector(path: Path, dtype: type, n: int) -> np.ndarray:
    if n == 0:
        return np.empty(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r", shape=(n,))


STAGE = MinHashDedup
