"""MinHash LSH near-dup stage: a thin streaming wrapper around `curate.metrics.minhash`.

fit, pass 1: signatures chunk by chunk on `ctx.threads` threads (numpy and Arrow release the
GIL); only band keys (bands x 8 bytes per row), row ordinals and shingle counts stay in memory;
signatures (and, for exact verification, the raw shingle hashes) spill to files in
`ctx.work_dir` read back as memory maps. Then band buckets -> candidate pairs -> verification
-> connected components, and one id pass for the representatives. transform, pass 2: a pure
per-batch lookup of the fitted removed rows.
"""

from __future__ import annotations

import mmap
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterable, Iterator, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curate.metrics import minhash as mh
from curate.stages.base import BatchSource, IdLookup, Stage, StageContext, drop_fitted_duplicates, row_ordinals

VERIFY_MODES = ("estimate", "exact", "none")
UNITS = ("word", "char")
_CHUNK_BYTES = 2 << 20  # text bytes per work item: fits the per-byte arrays in cache-ish sizes
_CHUNK_ROWS = 8192  # rows per work item, so short-text batches still spread over workers
_PAIR_BLOCK = 65536  # candidate pairs estimated per block (bounded signature gathers)
_EXACT_BLOCK = 1_000_000  # shingles gathered per exact-Jaccard block (small: later blocks skip joined pairs)

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
        sig_path, shingle_path = work / "signatures.u32", work / "shingles.u64"
        ordinals: list[np.ndarray] = []
        keys: list[np.ndarray] = []
        counts: list[np.ndarray] = []
        exact = self.verify == "exact"

        def sketch(item: tuple[np.ndarray, pa.Array]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
            chunk_rows, texts = item
            shingles, offsets = mh.text_shingles(texts, self.ngram, self.unit, ctx.seed)  # type: ignore[arg-type]
            sig = mh.signatures(shingles, offsets, self.num_perm, ctx.seed)
            return chunk_rows, sig, mh.band_keys(sig, bands, rows, ctx.seed), shingles, np.diff(offsets)

        with (
            ctx.progress.task(f"{ctx.name}: signatures", total=source.num_rows) as bar,
            open(sig_path, "wb") as sig_file,
            open(shingle_path, "wb") as shingle_file,
        ):
            for chunk_rows, sig, band, shingles, chunk_counts in ordered_map(sketch, self._chunks(source, ctx, bar), max(1, ctx.threads)):
                ordinals.append(chunk_rows)
                keys.append(band)
                counts.append(chunk_counts)
                sig_file.write(memoryview(np.ascontiguousarray(sig)))
                if exact:  # raw shingle hashes, for exact Jaccard of the few inconclusive pairs
                    shingle_file.write(memoryview(np.ascontiguousarray(shingles)))
        hashed = time.perf_counter()

        rows_all = np.concatenate(ordinals) if ordinals else np.empty(0, np.int64)
        if len(rows_all) > 1 and not (np.diff(rows_all) > 0).all():
            raise RuntimeError("minhash: source rows are not in increasing ordinal order")
        n = len(rows_all)
        shingle_counts = np.concatenate(counts) if counts else np.empty(0, np.int64)
        sig = _open_matrix(sig_path, np.uint32, n, self.num_perm)
        band_all = np.concatenate(keys) if keys else np.empty((0, bands), np.uint64)
        del keys, counts, ordinals
        # Texts without shingles never join a bucket (the exact stage owns empty texts).
        has_shingles = np.flatnonzero(shingle_counts > 0)
        local_i, local_j = mh.bucket_pairs(band_all[has_shingles])
        cand_i, cand_j = has_shingles[local_i], has_shingles[local_j]
        del band_all
        bucketed = time.perf_counter()

        est = np.empty(len(cand_i), dtype=np.float64)
        for lo in range(0, len(cand_i), _PAIR_BLOCK):
            block = slice(lo, lo + _PAIR_BLOCK)
            est[block] = mh.estimated_jaccard(sig[cand_i[block]], sig[cand_j[block]])
            _release(sig)
        if self.verify == "none":
            keep = np.ones(len(cand_i), dtype=bool)
        elif self.verify == "estimate":
            keep = est >= self.threshold
        else:
            keep, checked = self._exact_verify(cand_i, cand_j, est, shingle_counts, shingle_path, ctx)
            ctx.info["exact_checked_pairs"] = checked
        groups = mh.duplicate_groups(n, cand_i[keep], cand_j[keep], est[keep])
        verified = time.perf_counter()
        del sig

        self.duplicate_rows_ = rows_all[groups.removed]
        self.representatives_ = rows_all[groups.representative]
        self.scores_ = groups.score
        self.representative_ids_ = IdLookup.collect(source, self.representatives_, ctx)
        for path in (sig_path, shingle_path):
            path.unlink(missing_ok=True)
        ctx.info.update(
            bands=bands,
            rows=rows,
            verify=self.verify,
            texts_without_shingles=int(n - len(has_shingles)),
            candidate_pairs=int(len(cand_i)),
            verified_pairs=int(keep.sum()),
            groups=int(len(mh.sorted_unique(self.representatives_))),
            near_duplicates=int(len(self.duplicate_rows_)),
            seconds_signatures=round(hashed - started, 3),
            seconds_buckets=round(bucketed - hashed, 3),
            seconds_verify=round(verified - bucketed, 3),
        )
        return self

    def _exact_verify(
        self, cand_i: np.ndarray, cand_j: np.ndarray, est: np.ndarray, shingle_counts: np.ndarray, shingle_path: Path, ctx: StageContext
    ) -> tuple[np.ndarray, int]:
        """Exact Jaccard >= threshold per candidate pair, computed only where it can matter.

        Estimates more than 6 sd below the threshold (P < 1e-9 if J >= t) are rejected without
        a look. Equal signatures are not accepted blindly: with one-permutation hashing two tiny
        sets ({a, b} vs {a}) share every slot when a and b fall in one bin (P ~ 1/256). The rest
        go in descending estimate order, in blocks, skipping pairs whose rows an accepted pair
        has already joined (the groups cannot change). Deterministic: the order depends only on
        the estimates and row indices."""
        sd = np.sqrt(self.threshold * (1.0 - self.threshold) / self.num_perm)
        keep = np.zeros(len(est), dtype=bool)
        check = np.flatnonzero(est >= self.threshold - 6.0 * sd)
        check = check[np.lexsort((check, -est[check]))]
        offsets = np.concatenate([[0], np.cumsum(shingle_counts)]).astype(np.int64)
        shingles = _open_vector(shingle_path, np.uint64, int(offsets[-1]))
        parent = np.arange(len(shingle_counts), dtype=np.int64)
        checked = 0
        with ctx.progress.task(f"{ctx.name}: exact Jaccard", total=len(check), unit="pairs") as bar:
            work = shingle_counts[cand_i[check]] + shingle_counts[cand_j[check]]
            block_of = (np.cumsum(work) - work) // _EXACT_BLOCK
            for block in np.split(check, np.flatnonzero(np.diff(block_of)) + 1) if len(check) else []:
                bar.advance(len(block))
                block = block[parent[cand_i[block]] != parent[cand_j[block]]]
                if len(block) == 0:
                    continue
                ends = np.concatenate([cand_i[block], cand_j[block]])
                members = mh.sorted_unique(ends)
                local = np.searchsorted(members, ends)
                sets, set_offsets = mh.unique_sorted_sets(*_gather_ranges(shingles, offsets, members))
                _release(shingles)
                jac = mh.exact_jaccard(sets, set_offsets, local[: len(block)], local[len(block) :])
                accepted = block[jac >= self.threshold]
                keep[accepted] = True
                parent = mh.connected_components(len(parent), cand_i[accepted], cand_j[accepted], parent)
                checked += len(block)
        return keep, checked

    def _chunks(self, source: BatchSource, ctx: StageContext, bar) -> Iterator[tuple[np.ndarray, pa.Array]]:
        """Text chunks of the source, in order; the next batch is read and decoded on a
        background thread meanwhile (Arrow releases the GIL), so I/O overlaps hashing."""
        for batch in prefetch(source.batches(columns=[ctx.text_column])):
            yield from _text_chunks(row_ordinals(batch), batch.column(ctx.text_column))
            bar.advance(batch.num_rows)

    def transform(self, batch: pa.RecordBatch, ctx: StageContext) -> tuple[pa.RecordBatch, pa.RecordBatch]:
        return drop_fitted_duplicates(
            batch, self.duplicate_rows_, self.representatives_, self.representative_ids_,
            stage=ctx.name, reason="near_duplicate", id_column=ctx.id_column, scores=self.scores_,
        )


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
    cuts = mh.sorted_unique(np.concatenate([[0], cuts, np.arange(_CHUNK_ROWS, n, _CHUNK_ROWS), [n]]))
    for lo, hi in zip(cuts[:-1], cuts[1:]):
        if hi > lo:
            yield rows[lo:hi], texts.slice(int(lo), int(hi - lo))


def prefetch(items: Iterable[T], depth: int = 1) -> Iterator[T]:
    """Iterate `items` on a background thread, `depth` items ahead."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="minhash-read") as pool:
        iterator = iter(items)
        sentinel = object()
        pending: deque[Future] = deque(pool.submit(next, iterator, sentinel) for _ in range(depth))
        while True:
            item = pending.popleft().result()
            if item is sentinel:
                return
            pending.append(pool.submit(next, iterator, sentinel))
            yield item  # type: ignore[misc]


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


def _gather_ranges(values: np.ndarray, offsets: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """values[offsets[r]:offsets[r + 1]] for each r in rows, concatenated, with new offsets."""
    lengths = offsets[rows + 1] - offsets[rows]
    new_offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    index = np.repeat(offsets[rows] - new_offsets[:-1], lengths) + np.arange(int(new_offsets[-1]), dtype=np.int64)
    return np.asarray(values[index]), new_offsets


def _release(array: np.ndarray) -> None:
    """Drop a memory map's pages from this process (they stay in the page cache): the spill is
    read in blocks, so resident memory follows one block, not the file."""
    handle = getattr(array, "_mmap", None)
    if handle is not None and hasattr(mmap, "MADV_DONTNEED"):
        handle.madvise(mmap.MADV_DONTNEED)


def _open_matrix(path: Path, dtype: type, n: int, width: int) -> np.ndarray:
    if n == 0:
        return np.empty((0, width), dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r", shape=(n, width))


def _open_vector(path: Path, dtype: type, n: int) -> np.ndarray:
    if n == 0:
        return np.empty(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r", shape=(n,))


STAGE = MinHashDedup
