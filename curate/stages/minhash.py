"""MinHash LSH near-dup stage: map-reduce over work units around `curate.algorithms.minhash`.

fit, as rounds of tasks on the run's executor (`ctx.map`), the driver merging only small
results:
  1. sketch, one task per work unit: shingles, signatures and band keys on `ctx.threads`
     threads; the unit's signatures, raw shingle hashes, shingle counts and row ordinals go to
     files of its own under `ctx.work_dir` (read back later by memory map, by row range), its
     (band, key, row) entries to shuffle pieces by key hash;
  2. buckets, one task per key bucket: every (band, key) bucket is whole in one key bucket,
     so its candidate pairs are exactly the serial ones; pairs go to pieces by pair hash;
  3. estimate, one task per pair bucket: each distinct candidate pair once, estimated from the
     signatures; back to the driver go the pairs that pass (`estimate`, `none`) or may pass
     (`exact`: within 6 sd of the threshold or above);
  4. (`exact` only) check, one task per group of whole connected components of those pairs:
     exact Jaccard over the shingles of just their rows;
then connected components of the verified edges on the driver (root = the earliest row) and
one id task per unit for the representatives. transform is a pure per-batch lookup.

Groups and scores are the same whatever the units, buckets or workers: a group is a connected
component of the candidate pairs that pass verification, a row's score is the highest
estimate among its verified pairs, and neither depends on which task saw a pair first.
"""

from __future__ import annotations

import math
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, TypeVar

import numpy as np
import pyarrow as pa

from curate.algorithms import minhash as mh
from curate.algorithms.minhash_rows import RowStore, SortedSets, ordinals_by_task, unit_file
from curate.index import minhash as minhash_index
from curate.index.earlier import drop_duplicates
from curate.index.store import INDEX_DIR
from curate.io.atomic import atomic_path
from curate.io.parts import piece_path, read_pieces, write_piece
from curate.runtime import ContextThreadPool, tune_allocator
from curate.stages import _representative as rep
from curate.stages.base import BatchSource, IdLookup, Stage, StageContext, row_ordinals
from curate.stages.constraints import Boolean, Interval, Options, Together

VERIFY_MODES = ("estimate", "exact", "none")
UNITS = ("word", "char")
_CHUNK_BYTES = 2 << 20  # text bytes per work item: fits the per-byte arrays in cache-ish sizes
_CHUNK_ROWS = 8192  # rows per work item, so short-text batches still spread over threads
_PAIR_BLOCK = 16384  # candidate pairs estimated per block: signature gathers of ~35 MB at 128 slots
_EXACT_BLOCK = 1_000_000  # shingles gathered per exact-Jaccard block (small: later blocks skip joined pairs)
_SPLIT_NODES = 4096  # rows of a component checked in one task at most (mh.verify_plan)
# (band, key, row) entries per key bucket at most: 13 bytes each in the pieces, about 100 with
# the sort and the pairs, so a bucket task stays near 100 MB whatever the corpus size.
_BUCKET_ENTRIES = 1_000_000

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
    side_outputs = (INDEX_DIR,)  # with index = true or --against
    needs_fit = True
    option_constraints = {
        "threshold": [Interval(float, 0, 1, closed="right")],
        "ngram": [Interval(int, 1, None)],
        "num_perm": [Interval(int, 2, 1024)],
        "unit": [Options(UNITS)],
        "bands": [Interval(int, 0, None)],  # 0: choose (lsh_shape)
        "rows": [Interval(int, 0, None)],
        "verify": [Options(VERIFY_MODES)],
        "false_positive_weight": [Interval(float, 0, None)],
        "false_negative_weight": [Interval(float, 0, None)],
        "index": [Boolean()],
        "index_verify": [Options(minhash_index.INDEX_VERIFY)],
        "representative": [rep.REPRESENTATIVE],
    }
    option_rules = [
        Together("rows", lambda o: o["rows"] <= o["num_perm"], "0 (choose) or at most num_perm = {num_perm}"),
        Together(
            "bands",
            lambda o: o["bands"] * max(o["rows"], 1) <= o["num_perm"],
            "0 (choose) or a count with bands x rows <= num_perm (here rows = {rows}, num_perm = {num_perm})",
        ),
        Together(
            "false_negative_weight",
            lambda o: o["false_positive_weight"] + o["false_negative_weight"] > 0,
            "above 0 when false_positive_weight is 0 (not both 0)",
        ),
    ]

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
        index: bool = False,
        index_verify: str = "exact",
        representative: str = rep.DEFAULT,
    ):
        self.threshold = threshold
        self.ngram = ngram
        self.num_perm = num_perm
        self.unit = unit
        self.bands = bands
        self.rows = rows
        self.verify = verify
        self.false_positive_weight = false_positive_weight
        self.false_negative_weight = false_negative_weight
        self.index = index  # keep OUT/index/<name>/ for later runs' --against (curate.index)
        self.index_verify = index_verify  # what the index keeps to verify later rows against its rows
        self.representative = representative  # which member of a group is kept (first, longest, max:COLUMN, ...)

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

    def fit(self, source: BatchSource, ctx: StageContext) -> MinHashDedup:
        started = time.perf_counter()
        rep.check(self.representative, source, ctx)
        self.rep_keys_ = None
        bands, rows = self.lsh_shape()
        self.bands_, self.rows_ = bands, rows
        work = Path(ctx.work_dir) / "minhash"
        units = ctx.units(source)
        if not units:
            return self._fitted(np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0), source, ctx)
        # Key buckets from the source size (a bound, before knowing how many rows have
        # shingles); one per worker at least so every worker reduces. Key buckets are also the
        # pair buckets of the estimate; the exact checks go by connected component instead.
        buckets = min(
            max(ctx.workers, math.ceil(source.num_rows * bands / _BUCKET_ENTRIES), 1), 65535
        )  # 16-bit bucket numbers
        sketch = _Sketch(self, ctx.text_column, ctx.seed, bands, rows, str(work), buckets, max(1, ctx.task_threads))
        sketches: list[UnitSketch] = ctx.map(
            sketch, units, label=f"{ctx.name}: signatures", sizes=[u.rows for u in units]
        )
        _check_increasing(sketches)
        starts = np.concatenate([[0], np.cumsum([s.rows for s in sketches])]).astype(np.int64)
        n = int(starts[-1])
        hashed = time.perf_counter()

        pair_count = ctx.map(
            _Buckets(str(work), len(units), starts, buckets), range(buckets), label=f"{ctx.name}: buckets"
        )
        bucketed = time.perf_counter()

        estimate = _Estimate(str(work), buckets, starts, self.num_perm, self.threshold, self.verify)
        estimated = ctx.map(estimate, range(buckets), label=f"{ctx.name}: estimating", sizes=pair_count)
        edges_i = np.concatenate([c.i for c in estimated]) if estimated else np.empty(0, np.int64)
        edges_j = np.concatenate([c.j for c in estimated]) if estimated else np.empty(0, np.int64)
        edges_est = np.concatenate([c.estimate for c in estimated]) if estimated else np.empty(0, np.float64)
        exact_checks = large_components = 0
        if self.verify == "exact" and len(edges_i):
            kept, exact_checks, large_components = self._exact_checks(
                edges_i, edges_j, edges_est, str(work), starts, ctx
            )
            edges_i, edges_j, edges_est = edges_i[kept], edges_j[kept], edges_est[kept]
        # Components over the rows that have an edge only: the driver's memory follows the
        # edges, not the corpus. Nodes are sorted rows, so the smallest node is the earliest row.
        nodes = mh.sorted_unique(np.concatenate([edges_i, edges_j]))
        ordinals = ordinals_by_task(RowStore(work, starts, self.num_perm), nodes, ctx.map)
        keys = None
        if rep.uses_keys(self.representative):  # the rule's key of each grouped row, read by unit
            keys = rep.collect_keys(source, ordinals, self.representative, ctx)
            self.rep_keys_ = (nodes, keys)  # for regrouping with --against (curate.index.minhash)
        groups = mh.duplicate_groups(
            len(nodes), np.searchsorted(nodes, edges_i), np.searchsorted(nodes, edges_j), edges_est, keys
        )
        verified = time.perf_counter()

        self._fitted(ordinals[groups.removed], ordinals[groups.representative], groups.score, source, ctx)
        ctx.info.update(
            bands=bands,
            rows=rows,
            verify=self.verify,
            key_buckets=buckets,
            texts_without_shingles=int(n - sum(s.shingled for s in sketches)),
            candidate_pairs=int(sum(c.candidates for c in estimated)),
            verified_pairs=int(len(edges_i)),
            groups=int(len(mh.sorted_unique(self.representatives_))),
            near_duplicates=int(len(self.duplicate_rows_)),
            seconds_signatures=round(hashed - started, 3),
            seconds_buckets=round(bucketed - hashed, 3),
            seconds_verify=round(verified - bucketed, 3),
        )
        if self.verify == "exact":
            ctx.info["exact_checked_pairs"] = int(exact_checks)
            ctx.info["large_components"] = int(large_components)
        minhash_index.after_fit(self, source, ctx, work, units, starts, (edges_i, edges_j, edges_est))
        self.rep_keys_ = None  # fit-time only: transform tasks need not carry it
        return self

    def _exact_checks(
        self,
        edges_i: np.ndarray,
        edges_j: np.ndarray,
        edges_est: np.ndarray,
        work: str,
        starts: np.ndarray,
        ctx: StageContext,
    ) -> tuple[np.ndarray, int, int]:
        """Positions of the pairs that pass by exact Jaccard (ascending), the checks made and
        the components checked in groups.

        A connected component is checked whole in one task, which skips pairs its accepted
        pairs have joined (8,000 long documents: 11,829 checks, where 2 buckets by pair hash
        took 18,508 and 4 took 22,657). A component of more than _SPLIT_NODES rows is checked
        in groups, then its pairs between groups from the state the groups left
        (mh.verify_plan): the same groups and scores, with every worker busy."""
        check = _ExactCheck(work, starts, self.num_perm, self.threshold)
        plan = mh.verify_plan(edges_i, edges_j, ctx.workers, _SPLIT_NODES)
        label = f"{ctx.name}: verifying"
        first = ctx.map(
            check,
            [(edges_i[p], edges_j[p], edges_est[p], None) for p in plan.first],
            label=label,
            sizes=[len(p) for p in plan.first],
        )
        passed = [p[keep] for p, (keep, _) in zip(plan.first, first)]
        checks = sum(count for _, count in first)
        if plan.cross:
            # What the groups left: each row's component so far, and its best accepted estimate.
            nodes = mh.sorted_unique(np.concatenate([edges_i, edges_j]))
            done = np.concatenate(passed) if passed else np.empty(0, np.int64)
            a, b = np.searchsorted(nodes, edges_i), np.searchsorted(nodes, edges_j)
            joined = mh.connected_components(len(nodes), a[done], b[done])
            best = np.full(len(nodes), -np.inf)
            np.maximum.at(best, a[done], edges_est[done])
            np.maximum.at(best, b[done], edges_est[done])
            second = ctx.map(
                check,
                [
                    (edges_i[c], edges_j[c], edges_est[c], (joined[a[c]], joined[b[c]], best[a[c]], best[b[c]]))
                    for c in plan.cross
                ],
                label=f"{label} between groups",
                sizes=[len(c) for c in plan.cross],
            )
            passed += [c[keep] for c, (keep, _) in zip(plan.cross, second)]
            checks += sum(count for _, count in second)
        kept = np.concatenate(passed) if passed else np.empty(0, np.int64)
        kept.sort()  # edges in one order whatever the worker count
        return kept, checks, len(plan.cross)

    def _fitted(
        self,
        removed: np.ndarray,
        representatives: np.ndarray,
        scores: np.ndarray,
        source: BatchSource,
        ctx: StageContext,
    ) -> MinHashDedup:
        """Set the fitted state: removed row ordinals (ascending), their representatives'
        ordinals and ids, and their scores."""
        self.duplicate_rows_ = removed
        self.representatives_ = representatives
        self.scores_ = scores
        self.representative_ids_ = IdLookup.collect(source, representatives, ctx)
        return self

    def transform(self, batch: pa.RecordBatch, ctx: StageContext) -> tuple[pa.RecordBatch, pa.RecordBatch]:
        return drop_duplicates(
            batch,
            getattr(self, "earlier_", None),
            self.duplicate_rows_,
            self.representatives_,
            self.representative_ids_,
            ctx,
            reason="near_duplicate",
            scores=self.scores_,
        )


# ---------------------------------------------------------------------------------------
# Per-unit files: signatures, shingles, shingle counts and row ordinals of unit u, by name.


# ---------------------------------------------------------------------------------------
# The three rounds of tasks.


@dataclass(frozen=True)
class UnitSketch:
    rows: int  # rows of the unit
    shingled: int  # of which have at least one shingle
    first: int  # first and last row ordinal (-1 if the unit is empty)
    last: int


@dataclass(frozen=True)
class _Sketch:
    """Round 1, per unit: files of the unit's signatures, shingles, counts and ordinals, and
    its (band, key, local row) entries split into key-bucket pieces."""

    stage: MinHashDedup
    text_column: str
    seed: int
    bands: int
    rows: int
    work: str
    buckets: int
    threads: int

    def _chunk(
        self, item: tuple[np.ndarray, pa.Array]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(ordinals, signatures, shingles, shingle counts, rows with shingles, their band keys)."""
        chunk_rows, texts = item
        stage = self.stage
        shingles, offsets = mh.text_shingles(texts, stage.ngram, stage.unit, self.seed)  # type: ignore[arg-type]
        sig = mh.signatures(shingles, offsets, stage.num_perm, self.seed)
        counts = np.diff(offsets)
        # Texts without shingles never join a bucket (the exact stage owns empty texts).
        has = np.flatnonzero(counts > 0)
        return chunk_rows, sig, shingles, counts, has, mh.band_keys(sig[has], self.bands, self.rows, self.seed)

    def __call__(self, unit) -> UnitSketch:
        tune_allocator()
        ordinals: list[np.ndarray] = []
        counts: list[np.ndarray] = []
        pieces: list[list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = [[] for _ in range(self.buckets)]
        done = shingled = 0
        paths = {what: unit_file(self.work, unit.index, what) for what in ("sig", "shingles", "counts", "rows")}
        with (
            atomic_path(paths["sig"], unique=True) as sig_tmp,
            atomic_path(paths["shingles"], unique=True) as shingle_tmp,
            open(sig_tmp, "wb") as sig_file,
            open(shingle_tmp, "wb") as shingle_file,
        ):
            texts = (
                chunk
                for batch in prefetch(unit.batches(columns=[self.text_column]))
                for chunk in _text_chunks(row_ordinals(batch), batch.column(self.text_column))
            )
            for chunk_rows, sig, shingles, chunk_counts, has, keys in ordered_map(self._chunk, texts, self.threads):
                ordinals.append(chunk_rows)
                counts.append(chunk_counts)
                sig_file.write(memoryview(np.ascontiguousarray(sig)))
                shingle_file.write(memoryview(np.ascontiguousarray(shingles)))
                self._split_keys(keys, (has + done).astype(np.uint32), pieces)
                done += len(chunk_rows)
                shingled += len(has)
        rows = np.concatenate(ordinals) if ordinals else np.empty(0, np.int64)
        if len(rows) > 1 and not (np.diff(rows) > 0).all():
            raise RuntimeError("minhash: source rows are not in increasing ordinal order")
        for what, values in (
            ("counts", np.concatenate(counts).astype(np.int64) if counts else np.empty(0, np.int64)),
            ("rows", rows),
        ):
            with atomic_path(paths[what], unique=True) as tmp:
                values.tofile(tmp)
        for bucket, parts in enumerate(pieces):
            piece = tuple(
                np.concatenate([part[k] for part in parts]) if parts else np.empty(0, dtype)
                for k, dtype in enumerate((np.uint8, np.uint64, np.uint32))
            )
            write_piece(piece_path(Path(self.work) / "keys", bucket, unit.index), piece)
        first, last = (int(rows[0]), int(rows[-1])) if len(rows) else (-1, -1)
        return UnitSketch(len(rows), shingled, first, last)

    def _split_keys(
        self, keys: np.ndarray, local: np.ndarray, pieces: list[list[tuple[np.ndarray, np.ndarray, np.ndarray]]]
    ) -> None:
        """A chunk's (band, key, local row) entries, appended to their key buckets' lists: the
        unit holds 13 bytes per entry until its pieces are written, not the sort of all of them."""
        # A 16-bit bucket number sorts by radix (numpy's stable sort for <= 16-bit integers):
        # with band and row from the flat position, 2.7x faster than sorting int64 (measured).
        which = (keys % np.uint64(self.buckets)).astype(np.uint16).ravel()
        order = np.argsort(which, kind="stable")
        bounds = np.searchsorted(which[order], np.arange(self.buckets + 1))
        band = (order % self.bands).astype(np.uint8)
        row = local[order // self.bands]
        key = keys.ravel()[order]
        for bucket in range(self.buckets):
            lo, hi = int(bounds[bucket]), int(bounds[bucket + 1])
            if hi > lo:
                pieces[bucket].append((band[lo:hi], key[lo:hi], row[lo:hi]))


@dataclass(frozen=True)
class _Buckets:
    """Round 2, per key bucket: the candidate pairs of its (band, key) buckets, as dense row
    pairs i * n + j, split into pair-bucket pieces by a hash of the pair."""

    work: str
    units: int
    starts: np.ndarray
    buckets: int

    def __call__(self, bucket: int) -> int:
        n = int(self.starts[-1])
        pieces = read_pieces(Path(self.work) / "keys", bucket, self.units)
        band = np.concatenate([p[0] for p in pieces])
        key = np.concatenate([p[1] for p in pieces])
        row = np.concatenate([p[2].astype(np.int64) + self.starts[u] for u, p in enumerate(pieces)])
        del pieces
        pairs = mh.keyed_bucket_pairs(band, key, row, n)
        which = (mh.fmix64(pairs.astype(np.uint64)) % np.uint64(self.buckets)).astype(np.int64)
        for target in range(self.buckets):
            write_piece(piece_path(Path(self.work) / "pairs", target, bucket), pairs[which == target])
        return len(pairs)


@dataclass(frozen=True)
class Estimated:
    """A pair bucket's pairs that pass its verify mode's estimate step (dense rows i < j, in
    ascending pair order, estimated Jaccard): final for `none` and `estimate`; for `exact`, the
    pairs whose estimate leaves their exact Jaccard in doubt or above the threshold."""

    i: np.ndarray
    j: np.ndarray
    estimate: np.ndarray
    candidates: int


@dataclass(frozen=True)
class _Estimate:
    """Round 3, per pair bucket: each distinct candidate pair once (a pair lands in one pair
    bucket whichever key buckets found it), estimated from the signatures."""

    work: str
    key_buckets: int
    starts: np.ndarray
    num_perm: int
    threshold: float
    verify: str

    def __call__(self, bucket: int) -> Estimated:
        n = max(int(self.starts[-1]), 1)
        pieces = read_pieces(Path(self.work) / "pairs", bucket, self.key_buckets)
        pairs = mh.sorted_unique(np.concatenate(pieces)) if pieces else np.empty(0, np.int64)
        cand_i, cand_j = pairs // n, pairs % n
        store = RowStore(self.work, self.starts, self.num_perm)
        est = np.empty(len(pairs), dtype=np.float64)
        for lo in range(0, len(pairs), _PAIR_BLOCK):
            block = slice(lo, lo + _PAIR_BLOCK)
            members = mh.sorted_unique(np.concatenate([cand_i[block], cand_j[block]]))
            sig = store.signatures(members)
            est[block] = mh.estimated_jaccard(
                sig[np.searchsorted(members, cand_i[block])], sig[np.searchsorted(members, cand_j[block])]
            )
        if self.verify == "none":
            keep = np.ones(len(pairs), dtype=bool)
        elif self.verify == "estimate":
            keep = est >= self.threshold
        else:  # more than 6 sd below the threshold: P < 1e-9 that the exact Jaccard reaches it
            keep = est >= self.threshold - 6.0 * _estimate_sd(self.threshold, self.num_perm)
        return Estimated(cand_i[keep], cand_j[keep], est[keep], len(pairs))


@dataclass(frozen=True)
class _ExactCheck:
    """Round 4 (verify = exact), per group of whole connected components: which pairs pass
    by exact Jaccard, and how many were checked."""

    work: str
    starts: np.ndarray
    num_perm: int
    threshold: float

    def __call__(self, pairs: tuple[np.ndarray, np.ndarray, np.ndarray, tuple | None]) -> tuple[np.ndarray, int]:
        cand_i, cand_j, est, start = pairs
        store = RowStore(self.work, self.starts, self.num_perm)
        return _exact_verify(cand_i, cand_j, est, store, self.threshold, self.num_perm, start)


def _estimate_sd(threshold: float, num_perm: int) -> float:
    """The standard deviation of a MinHash estimate at Jaccard = threshold."""
    return math.sqrt(threshold * (1.0 - threshold) / num_perm)


def _exact_verify(
    cand_i: np.ndarray,
    cand_j: np.ndarray,
    est: np.ndarray,
    store: RowStore,
    threshold: float,
    num_perm: int,
    start: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = None,
) -> tuple[np.ndarray, int]:
    """Exact Jaccard >= threshold per candidate pair, computed only where it can matter.

    Estimates more than 6 sd below the threshold (P < 1e-9 if J >= t) are rejected without
    a look. Equal signatures are not accepted blindly: with one-permutation hashing two tiny
    sets ({a, b} vs {a}) share every slot when a and b fall in one bin (P ~ 1/256). The rest
    go in descending estimate order, in blocks, skipping pairs whose rows an accepted pair
    has already joined: their groups cannot change, and neither can a row's score (the
    accepted pair that joined it came earlier, so its estimate is at least as high).

    `start` (the pairs between the groups of a large component, mh.verify_plan): per pair, the
    component each end is in so far and its best accepted estimate. Ends in one component
    start joined; a pair is still checked when its estimate beats an end's best, so every row
    ends with the score of its strongest passing pair, as when the component is checked whole."""
    sd = _estimate_sd(threshold, num_perm)
    keep = np.zeros(len(est), dtype=bool)
    check = np.flatnonzero(est >= threshold - 6.0 * sd)
    if len(check) == 0:
        return keep, 0
    check = check[np.lexsort((check, -est[check]))]
    nodes = mh.sorted_unique(np.concatenate([cand_i[check], cand_j[check]]))
    node_i, node_j = np.searchsorted(nodes, cand_i), np.searchsorted(nodes, cand_j)  # only read at `check`
    parent = np.arange(len(nodes), dtype=np.int64)
    best = np.full(len(nodes), -np.inf)
    if start is not None:
        ends = np.concatenate([node_i[check], node_j[check]])
        component, best_so_far = (
            np.concatenate([start[0][check], start[1][check]]),
            np.concatenate([start[2][check], start[3][check]]),
        )
        _, which = np.unique(component, return_inverse=True)
        smallest = np.full(int(which.max()) + 1, len(nodes), dtype=np.int64)
        np.minimum.at(smallest, which, ends)
        parent[ends] = smallest[which]  # each end under its component's smallest end: a root
        np.maximum.at(best, ends, best_so_far)
    checked = 0
    counts = store.shingle_counts(nodes)
    with SortedSets(store, nodes) as sets:
        work = counts[node_i[check]] + counts[node_j[check]]
        block_of = (np.cumsum(work) - work) // _EXACT_BLOCK
        for block in np.split(check, np.flatnonzero(np.diff(block_of)) + 1):
            bi, bj = node_i[block], node_j[block]
            block = block[(parent[bi] != parent[bj]) | (est[block] > best[bi]) | (est[block] > best[bj])]
            if len(block) == 0:
                continue
            ends = np.concatenate([node_i[block], node_j[block]])
            members = mh.sorted_unique(ends)
            local = np.searchsorted(members, ends)
            values, offsets = sets.gather(members)
            jac = mh.exact_jaccard(values, offsets, local[: len(block)], local[len(block) :])
            accepted = block[jac >= threshold]
            keep[accepted] = True
            np.maximum.at(best, node_i[accepted], est[accepted])
            np.maximum.at(best, node_j[accepted], est[accepted])
            parent = mh.connected_components(len(parent), node_i[accepted], node_j[accepted], parent)
            checked += len(block)
    return keep, checked


def _check_increasing(sketches: list[UnitSketch]) -> None:
    last = -1
    for sketch in sketches:
        if sketch.rows == 0:
            continue
        if sketch.first <= last:
            raise RuntimeError("minhash: source rows are not in increasing ordinal order")
        last = sketch.last


def _text_chunks(rows: np.ndarray, texts: pa.Array | pa.ChunkedArray) -> Iterator[tuple[np.ndarray, pa.Array]]:
    """Zero-copy slices of a batch of about _CHUNK_BYTES text bytes and at most _CHUNK_ROWS rows."""
    if isinstance(texts, pa.ChunkedArray):
        texts = texts.combine_chunks()
    cuts = mh.text_chunk_bounds(texts, _CHUNK_BYTES, _CHUNK_ROWS)
    for lo, hi in zip(cuts[:-1], cuts[1:]):
        if hi > lo:
            yield rows[lo:hi], texts.slice(int(lo), int(hi - lo))


def prefetch(items: Iterable[T], depth: int = 1) -> Iterator[T]:
    """Iterate `items` on a background thread, `depth` items ahead."""
    with ContextThreadPool(max_workers=1, thread_name_prefix="minhash-read") as pool:
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
    with ContextThreadPool(max_workers=workers, thread_name_prefix="minhash") as pool:
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


STAGE = MinHashDedup
