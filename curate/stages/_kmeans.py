"""k-means as map-reduce for the stages that fit centroids (semdedup, prototypes).

The seeded sample (`kmeans_sample`) is written once as shards of at most `SHARD_ROWS` rows in
the stage's work dir (one task per work unit that holds sample rows, or the driver when the
sample was already gathered while reading the store). Each Lloyd iteration then is one task map
over the shards: a task reads its shard and the current centroids (a file, so a large k is not
pickled into every task) and returns its per-centroid fixed-point sums and counts; the driver
adds them (`merge_sums`, exact integers) and writes the next centroids. The driver never holds
the sample, and the result is the same bits as `lloyd` on the gathered sample for any worker
count, executor or unit layout."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from curate.algorithms.kmeans import centroid_sums, initial_picks, merge_sums, set_threads
from curate.embeddings.store import load_vectors
from curate.io import mirror
from curate.io.atomic import atomic_path
from curate.stages.base import StageContext

SHARD_ROWS = 1 << 16  # sample rows per Lloyd task, at most: 96 MiB of vectors at d = 384
# ... and at least, unless the sample is smaller: below this a task's fixed cost (a process
# round trip, the centroids read) is a visible share of its step.
MIN_SHARD_ROWS = 4096


@dataclass
class KMeansFit:
    centroids: np.ndarray  # (k, d) float32, unit rows
    iterations: int
    task_seconds: float  # wall seconds inside task maps (the rest of the fit is the driver's)


def fit_centroids(emb, sample: np.ndarray, k: int, ctx: StageContext, niter: int) -> KMeansFit:
    """Spherical k-means on the rows of `emb` at ascending stream positions `sample`."""
    dim = emb.dim
    if len(sample) == 0:
        return KMeansFit(np.zeros((0, dim), np.float32), 0, 0.0)
    work = Path(ctx.work_dir) / "kmeans"
    task_seconds = 0.0
    started = time.perf_counter()
    cuts = shard_cuts(len(sample), ctx.workers)
    shards = _write_shards(emb, sample, cuts, work, ctx)
    task_seconds += time.perf_counter() - started
    centroids = _sample_rows(emb, sample, shards, cuts, initial_picks(len(sample), k, ctx.seed), ctx)
    done = 0
    for step in range(niter):
        path = work / f"centroids-{step:03d}.npy"
        with atomic_path(path, unique=True) as tmp, open(tmp, "wb") as handle:
            np.save(handle, centroids)
        started = time.perf_counter()
        sums = ctx.map(
            ShardSums(str(path), ctx.task_threads), shards, label=f"{ctx.name}: k-means step {step + 1}/{niter}"
        )
        task_seconds += time.perf_counter() - started
        moved = merge_sums(centroids, sums)
        done = step + 1
        if np.array_equal(moved, centroids):
            break
        centroids = moved
    return KMeansFit(centroids, done, task_seconds)


def shard_cuts(sample_rows: int, workers: int) -> np.ndarray:
    """Sample positions where the shards start (and the end): at least one shard per worker,
    so every core runs each Lloyd step (200 clusters fit on 12,800 rows were one task, run by
    one core), within [MIN_SHARD_ROWS, SHARD_ROWS] rows. The centroids are the same bits for
    any cut (`merge_sums` adds exact integers), so depending on the worker count is safe."""
    rows = min(SHARD_ROWS, max(MIN_SHARD_ROWS, -(-sample_rows // max(1, workers))))
    return np.append(np.arange(0, sample_rows, rows), sample_rows).astype(np.int64)


def _write_shards(emb, sample: np.ndarray, cuts: np.ndarray, work: Path, ctx: StageContext) -> list[str]:
    """The sample as `.npy` shards, cut at sample positions `cuts` (independent of the units)."""
    cuts = cuts.tolist()
    paths = [str(work / f"sample-{i:05d}.npy") for i in range(len(cuts) - 1)]
    if emb.sample is not None and np.array_equal(sample, emb.sample[0]):
        for path, lo, hi in zip(paths, cuts[:-1], cuts[1:]):
            _save(path, emb.sample[1][lo:hi])
        return paths
    jobs = [(path, _pieces(emb, sample[lo:hi])) for path, lo, hi in zip(paths, cuts[:-1], cuts[1:])]
    ctx.map(_WriteShard(emb.dim), jobs, label=f"{ctx.name}: k-means sample")
    return paths


def _sample_rows(
    emb, sample: np.ndarray, shards: list[str], cuts: np.ndarray, picks: np.ndarray, ctx: StageContext
) -> np.ndarray:
    """The sample's rows at ascending `picks` (the initial centroids), from the sample already
    in memory or from its shards (a task per shard that holds picks, where the shards are):
    not from the store, where each unit holding a pick was read whole (1M rows read in place,
    200 picks: 3.7 s of a 10.7 s stage, on the driver's clock)."""
    if emb.sample is not None and np.array_equal(sample, emb.sample[0]):
        return np.ascontiguousarray(emb.sample[1][picks], dtype=np.float32)
    shard_of = np.searchsorted(cuts, picks, side="right") - 1
    jobs = [(shards[s], picks[shard_of == s] - cuts[s]) for s in np.unique(shard_of).tolist()]
    found = ctx.map(_ShardRows(), jobs, label=f"{ctx.name}: k-means start")
    return np.concatenate(found) if found else np.zeros((0, emb.dim), np.float32)


@dataclass(frozen=True)
class _ShardRows:
    """Rows of one sample shard."""

    def __call__(self, job: tuple[str, np.ndarray]) -> np.ndarray:
        path, local = job
        return np.ascontiguousarray(np.load(mirror.ensure(path), mmap_mode="r")[local])


def _pieces(emb, positions: np.ndarray) -> tuple[tuple[object, np.ndarray], ...]:
    """(unit vectors, local positions) of each unit holding some of the ascending positions."""
    cuts = np.searchsorted(positions, emb.offsets)
    return tuple(
        (emb.paths[u], positions[cuts[u] : cuts[u + 1]] - emb.offsets[u])
        for u in range(len(emb.paths))
        if cuts[u + 1] > cuts[u]
    )


def _save(path: str, vectors: np.ndarray) -> None:
    with atomic_path(Path(path), unique=True) as tmp, open(tmp, "wb") as handle:
        np.save(handle, np.ascontiguousarray(vectors, dtype=np.float32))


@dataclass(frozen=True)
class _WriteShard:
    """One sample shard: its rows read from the units that hold them, saved as one `.npy`."""

    dim: int

    def __call__(self, job: tuple[str, tuple[tuple[object, np.ndarray], ...]]) -> int:
        path, pieces = job
        parts = []
        for unit_path, local in pieces:
            vectors = load_vectors(unit_path, self.dim)
            parts.append(np.asarray(vectors[local], dtype=np.float32))
        _save(path, np.concatenate(parts))
        return sum(len(p) for p in parts)


@dataclass(frozen=True)
class ShardSums:
    """One Lloyd step on one sample shard: `centroid_sums` against the centroids in `centroids_path`."""

    centroids_path: str
    threads: int

    def __call__(self, shard: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        set_threads(self.threads)
        centroids = np.load(mirror.ensure(self.centroids_path))
        return centroid_sums(np.load(mirror.ensure(shard)), centroids)
