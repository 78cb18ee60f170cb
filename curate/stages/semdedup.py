"""Semantic dedup stage (SemDeDup): drop rows whose embedding has cosine >= threshold with a kept
row of the same k-means cluster. Embeddings come from OUT/embeddings (an earlier embed stage)
or are computed with `model`; the algorithm is `curate.algorithms.semdedup`.

Parallel shape: vectors per work unit (`curate.stages.embed`), k-means as map-reduce over a
sample chosen by seed and row position (`curate.stages._kmeans`: a task per sample shard and
step, the driver adds integer sums), or the earlier output's centroids under `--against`, then
two task maps: assignment per unit (cluster and
centroid cosine of each row, to a file) and the within-cluster search per bucket of clusters
(each bucket task reads every unit's cluster labels, 16 bytes a row, and the vectors of its own
clusters). The driver merges the buckets' duplicates (small) and looks their ids up. Against
earlier outputs (`--against`, `curate.index.semantic`), the assignment also labels each row with
its nearest centroid of every earlier index, and the search map also runs the buckets of
earlier clusters: no extra pass over the new vectors, no extra task round."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from curate.algorithms.kmeans import MAX_CLUSTERS, assign, auto_clusters, kmeans_sample, set_threads
from curate.algorithms.representative import (
    check_representative_column,
    parse_representative,
    representative_key,
    rule_columns,
)
from curate.algorithms.semdedup import (
    KEEP_RULES,
    MAX_CLUSTER_ROWS,
    cluster_duplicates,
    merge_duplicates,
    plan_buckets,
)
from curate.embeddings.store import load_vectors, needs_own_store, publish_if_absent
from curate.index import semantic as semantic_index
from curate.index.earlier import drop_duplicates
from curate.index.store import INDEX_DIR, StoredIndex
from curate.io import mirror
from curate.io.atomic import atomic_path
from curate.stages._kmeans import fit_centroids
from curate.stages.base import BatchSource, IdLookup, Stage, StageContext, row_ordinals
from curate.stages.constraints import Boolean, Interval, Options, Rule
from curate.stages.embed import STORED_OR_MODEL, embeddings_for

_CLUSTERS = "clusters"
BUCKETS_PER_WORKER = 4  # cluster sizes are skewed: a few buckets per worker even out the load


class SemDedup(Stage):
    kind = "semdedup"
    side_outputs = (INDEX_DIR,)  # with index = true or --against
    needs_fit = True
    option_constraints = {
        "threshold": [Interval(float, -1, 1)],  # a cosine similarity
        "clusters": [Interval(int, 0, None)],  # 0: about sqrt(rows)
        "keep": [Options(KEEP_RULES)],
        "kmeans_fit_fraction": [Interval(float, 0, 1, closed="right")],
        "kmeans_iterations": [Interval(int, 1, None)],
        "max_clusters": [Interval(int, 1, None)],  # cap on the automatic cluster count
        "max_cluster_rows": [Interval(int, 0, None)],  # larger clusters are split; 0: never
        "model": [STORED_OR_MODEL],
        "index": [Boolean()],
        "representative": [
            Rule(
                parse_representative,
                "first, longest, shortest, max:COLUMN or min:COLUMN",
                invalid=["best", "max", "max:", "first:x"],
            )
        ],
    }

    def __init__(
        self,
        *,
        threshold: float = 0.95,
        clusters: int = 0,
        keep: str = "hard",
        kmeans_fit_fraction: float = 1.0,
        kmeans_iterations: int = 20,
        max_clusters: int = MAX_CLUSTERS,
        max_cluster_rows: int = MAX_CLUSTER_ROWS,
        model: str = "",
        index: bool = False,
        representative: str = "first",
    ):
        self.threshold = threshold
        self.clusters = clusters
        self.keep = keep
        self.kmeans_fit_fraction = kmeans_fit_fraction
        self.kmeans_iterations = kmeans_iterations
        self.max_clusters = max_clusters
        self.max_cluster_rows = max_cluster_rows
        self.model = model
        self.index = index  # keep OUT/index/<name>/ for later runs' --against (curate.index)
        # which row of a group is kept first: the rule's key orders rows before `keep` does
        # ("first" orders none, so `keep` alone decides, as before the rule existed)
        self.representative = representative

    def fit(self, source: BatchSource, ctx: StageContext) -> SemDedup:
        began = time.perf_counter()
        task_seconds = 0.0

        def tasks(fn, items, **kw):  # ctx.map, timed: the fit's time outside it is the driver's
            nonlocal task_seconds
            started = time.perf_counter()
            try:
                return ctx.map(fn, items, **kw)
            finally:
                task_seconds += time.perf_counter() - started

        uses_keys = parse_representative(self.representative)[0] != "first"
        if uses_keys:
            check_representative_column(self.representative, source.schema, ctx.name)
        started = time.perf_counter()
        emb = embeddings_for(source, ctx, self.model, write_parts=needs_own_store(ctx))
        task_seconds += time.perf_counter() - started
        published = publish_if_absent(emb, ctx)
        earlier = semantic_index.open_earlier(self, ctx, emb)
        n = emb.num_rows
        set_threads(ctx.threads)
        reused = semantic_index.reused_centroids(earlier)
        if reused is not None:  # incremental: the earlier output's clusters, no new k-means
            centroids, sample, iterations = reused, np.empty(0, np.int64), 0
        else:
            k = auto_clusters(n, self.max_clusters) if self.clusters <= 0 else max(1, min(self.clusters, n))
            sample = kmeans_sample(n, k, ctx.seed, self.kmeans_fit_fraction)
            with ctx.progress.task(f"{ctx.name}: k-means ({k} clusters on {len(sample)} rows)", total=None):
                fitted = fit_centroids(emb, sample, k, ctx, self.kmeans_iterations)
            centroids, iterations = fitted.centroids, fitted.iterations
            task_seconds += fitted.task_seconds
        clusters_dir = str(Path(ctx.work_dir) / _CLUSTERS)
        keys_path = ""
        if uses_keys:  # one task per work unit reads the rule's column; the key of every row, by position
            found = tasks(_UnitKeys(self.representative, ctx.text_column), ctx.units(source))
            ordinals = np.concatenate([f[0] for f in found]) if found else np.empty(0, np.int64)
            keys = np.full(n, np.inf)
            keys[np.searchsorted(emb.rows, ordinals)] = np.concatenate([f[1] for f in found]) if found else []
            keys_path = str(Path(ctx.work_dir) / "representative_keys.npy")
            with atomic_path(Path(keys_path), unique=True) as tmp, open(tmp, "wb") as handle:
                np.save(handle, keys)
        units = [(u, emb.paths[u], emb.rows[emb.offsets[u] : emb.offsets[u + 1]]) for u in range(len(emb.paths))]
        assigned = tasks(
            AssignClusters(centroids, clusters_dir, emb.dim, ctx.task_threads, earlier, keys_path, emb.offsets),
            units,
            label=f"{ctx.name}: assigning",
            sizes=[len(u[2]) for u in units],
        )
        sizes = np.sum([a[0] for a in assigned], axis=0) if assigned else np.zeros(len(centroids), np.int64)
        buckets = max(1, min(len(centroids), BUCKETS_PER_WORKER * ctx.workers))
        searched = np.minimum(sizes, self.max_cluster_rows) if self.max_cluster_rows > 0 else sizes
        bucket_of = plan_buckets(sizes, buckets, cost=sizes.astype(np.float64) * searched)
        search = SearchBuckets(
            clusters_dir,
            tuple(emb.paths),
            emb.dim,
            bucket_of,
            self.threshold,
            self.keep,
            ctx.seed,
            ctx.task_threads,
            self.max_cluster_rows,
        )
        earlier_counts = [
            np.sum([a[1][i] for a in assigned], axis=0) if assigned else np.zeros(0, np.int64)
            for i in range(len(earlier))
        ]
        matches = semantic_index.match_tasks(
            earlier, earlier_counts, clusters_dir, tuple(emb.paths), emb.dim, self.threshold, buckets, ctx.task_threads
        )
        jobs = [(-1, b) for b in range(buckets)] + [
            (m, b) for m, (_, count) in enumerate(matches) for b in range(count)
        ]
        results = tasks(
            Search(search, tuple(task for task, _ in matches)), jobs, label=f"{ctx.name}: searching clusters"
        )
        found = results[:buckets]
        matched: list[list] = [[] for _ in earlier]
        for (m, _), result in zip(jobs[buckets:], results[buckets:]):
            matched[matches[m][0].position].append(result)
        self.removed_rows_, self.representatives_, self.similarity_ = merge_duplicates(
            [f[0] for f in found], [f[1] for f in found], [f[2] for f in found]
        )
        self.representative_ids_ = IdLookup.collect(source, self.representatives_, ctx)
        ctx.info.update(
            model=emb.model,
            embeddings_reused=emb.reused,
            embeddings_computed=emb.computed,
            embeddings_published=published,
            clusters=len(centroids),
            largest_cluster=int(sizes.max()) if n else 0,
            duplicate_pairs=sum(f[3] for f in found),
            comparisons=sum(f[4] for f in found),
            split_parts=sum(f[5] for f in found),
            kmeans_sample=len(sample),
            kmeans_iterations_run=iterations,
            removed=len(self.removed_rows_),
            threshold=self.threshold,
            keep=self.keep,
            representative=self.representative,
            fit=(
                f"k-means map-reduce over {len(sample)} sample rows ({iterations} steps)"
                if reused is None
                else "the earlier output's centroids (no k-means)"
            )
            + f"; assignment on workers ({len(units)} units), greedy within-cluster search on workers ({buckets} buckets)",
        )
        if earlier:
            ctx.info["fit"] += (
                f"; against {len(earlier)} earlier output(s): their centroids in the assignment, {len(jobs) - buckets} buckets of their clusters in the search"
            )
            # task seconds spent matching (assignment to earlier centroids + earlier buckets), summed over tasks
            ctx.info["earlier_task_seconds"] = round(
                sum(a[2] for a in assigned) + sum(r[3] for r in results[buckets:]), 3
            )
        semantic_index.after_fit(self, source, ctx, emb, centroids, clusters_dir, earlier, matched, map=tasks)
        ctx.info["driver_seconds"] = round(time.perf_counter() - began - task_seconds, 3)
        ctx.info["task_map_seconds"] = round(task_seconds, 3)
        return self

    def transform(self, batch: pa.RecordBatch, ctx: StageContext) -> tuple[pa.RecordBatch, pa.RecordBatch]:
        return drop_duplicates(
            batch,
            getattr(self, "earlier_", None),
            self.removed_rows_,
            self.representatives_,
            self.representative_ids_,
            ctx,
            reason="semantic_duplicate",
            scores=self.similarity_,
        )


@dataclass(frozen=True)
class AssignClusters:
    """One unit: nearest centroid and its cosine per row, with the ordinals (and each row's
    nearest centroid of every earlier index), to `clusters/NNNNN.npz`; returns the unit's
    cluster sizes, its row count per earlier cluster of each earlier index, and the seconds the
    earlier assignment took."""

    centroids: np.ndarray
    clusters_dir: str
    dim: int
    threads: int
    earlier: tuple[StoredIndex, ...] = ()
    keys_path: str = ""  # the representative rule's key of every row, by stream position
    offsets: np.ndarray | None = None  # first stream position of each unit

    def __call__(self, job: tuple[int, str, np.ndarray]) -> tuple[np.ndarray, list[np.ndarray], float]:
        unit, path, rows = job
        set_threads(self.threads)
        vectors = load_vectors(path, self.dim)
        labels, similarity = assign(vectors, self.centroids)
        started = time.perf_counter()
        earlier_labels, earlier_counts = semantic_index.assign_earlier(vectors, self.earlier)
        seconds = time.perf_counter() - started
        with atomic_path(Path(self.clusters_dir) / f"{unit:05d}.npz", unique=True) as tmp, open(tmp, "wb") as handle:
            if self.keys_path:
                first = int(self.offsets[unit])
                earlier_labels["key"] = np.load(mirror.ensure(self.keys_path), mmap_mode="r")[
                    first : first + len(rows)
                ]
            np.savez(handle, labels=labels, similarity=similarity, rows=rows, **earlier_labels)
        return np.bincount(labels, minlength=len(self.centroids)), earlier_counts, seconds


@dataclass(frozen=True)
class SearchBuckets:
    """One bucket of clusters: gather each cluster's members from every unit (in ordinal
    order) and search it; returns (removed, representative, similarity, pairs)."""

    clusters_dir: str
    vector_paths: tuple[str, ...]
    dim: int
    bucket_of: np.ndarray
    threshold: float
    keep: str
    seed: int
    threads: int
    max_cluster_rows: int = MAX_CLUSTER_ROWS

    def __call__(self, bucket: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, int, int]:
        set_threads(self.threads)
        unit_of, local, rows, labels, sims, keys = [], [], [], [], [], []
        for unit in range(len(self.vector_paths)):
            with np.load(mirror.ensure(Path(self.clusters_dir) / f"{unit:05d}.npz")) as data:
                unit_labels = data["labels"]
                mine = (
                    np.nonzero(self.bucket_of[unit_labels] == bucket)[0] if len(unit_labels) else np.empty(0, np.int64)
                )
                unit_of.append(np.full(len(mine), unit, np.int32))
                local.append(mine)
                rows.append(data["rows"][mine])
                labels.append(unit_labels[mine])
                sims.append(data["similarity"][mine])
                keys.append(data["key"][mine] if "key" in data.files else np.zeros(len(mine)))
        unit_of, local, rows, labels, sims, keys = (
            np.concatenate(a) for a in (unit_of, local, rows, labels, sims, keys)
        )
        order = np.lexsort((rows, labels))  # by cluster, then input order
        unit_of, local, rows, labels, sims, keys = (a[order] for a in (unit_of, local, rows, labels, sims, keys))
        ranked = bool(keys.any())
        starts = np.concatenate([[0], np.nonzero(np.diff(labels))[0] + 1, [len(labels)]])
        vectors = [load_vectors(p, self.dim) for p in self.vector_paths]
        removed, reps, similarity = [], [], []
        pairs = comparisons = parts = 0
        for lo, hi in zip(starts[:-1], starts[1:]):
            if hi - lo < 2:
                continue
            members = np.concatenate(
                [vectors[u][local[lo:hi][unit_of[lo:hi] == u]] for u in np.unique(unit_of[lo:hi])]
            )
            found = cluster_duplicates(
                np.ascontiguousarray(members, dtype=np.float32),
                rows[lo:hi],
                sims[lo:hi],
                self.threshold,
                self.keep,
                self.seed,
                self.max_cluster_rows,
                keys[lo:hi] if ranked else None,
            )
            pairs += found.pairs
            comparisons += found.comparisons
            parts += found.parts
            removed.append(found.removed)
            reps.append(found.representative)
            similarity.append(found.similarity)
        return (*merge_duplicates(removed, reps, similarity), pairs, comparisons, parts)


@dataclass(frozen=True)
class _UnitKeys:
    """One work unit: (ordinals, representative key) of its rows, reading only the rule's column."""

    rule: str
    text_column: str

    def __call__(self, unit: BatchSource) -> tuple[np.ndarray, np.ndarray]:
        rows, keys = [], []
        for batch in unit.batches(columns=rule_columns(self.rule, self.text_column)):
            rows.append(row_ordinals(batch))
            keys.append(representative_key(self.rule, batch, self.text_column))
        return (
            np.concatenate(rows) if rows else np.empty(0, np.int64),
            np.concatenate(keys) if keys else np.empty(0, np.float64),
        )


@dataclass(frozen=True)
class Search:
    """The search map's one task kind: job (-1, b) is bucket b of this run's clusters, job
    (m, b) bucket b of the clusters of the m-th earlier index that has any."""

    own: SearchBuckets
    earlier: tuple[semantic_index.MatchBuckets, ...] = ()

    def __call__(self, job: tuple[int, int]):
        which, bucket = job
        return self.own(bucket) if which < 0 else self.earlier[which](bucket)


STAGE = SemDedup
