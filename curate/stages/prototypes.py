"""Prototype scores stage: `proto_cluster` and `proto_distance` on every kept row, optional pruning
to the hardest or easiest fraction, centroids to OUT/prototypes/centroids.npy.

Parallel shape: vectors per work unit (`curate.stages.embed`), k-means as map-reduce over a
sample chosen by seed and row position (at most 64 rows per cluster: 12,800 rows for 200
clusters), the distance of every row to its nearest centroid as one task per unit; the driver
gathers the distances (4 bytes a row) for the exact hardest/easiest selection. After an embed
stage the vectors are read in place from OUT/embeddings (`stored_embeddings`): a task per unit
checks its rows against the store and returns its share of the k-means sample, and the distance
tasks stream their unit's vectors from the store's parts a block at a time."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from curate.algorithms.kmeans import ASSIGN_CHUNK, cap_clusters, kmeans_sample, set_threads
from curate.algorithms.prototypes import (
    BALANCE_CHOICES,
    KEEP_CHOICES,
    choose_keep,
    prototype_distance,
    select_by_difficulty,
)
from curate.embeddings.store import StoreSlice, needs_own_store, publish_if_absent, stored_embeddings, vector_blocks
from curate.io.atomic import atomic_path
from curate.output.ledger import empty_ledger, removed_rows
from curate.stages._balance import BALANCE_NEEDS_LABEL, balance_groups
from curate.stages._kmeans import fit_centroids
from curate.stages.base import BatchSource, Stage, StageContext, row_ordinals, split_batch
from curate.stages.constraints import Interval, Options, Text
from curate.stages.embed import STORED_OR_MODEL, embeddings_for

PROTOTYPES_DIR = "prototypes"
CENTROIDS_NAME = "centroids.npy"


def with_columns(batch: pa.RecordBatch, columns: dict[str, pa.Array]) -> pa.RecordBatch:
    """`batch` plus (or with replaced) named columns."""
    names = [n for n in batch.schema.names if n not in columns]
    arrays = [batch.column(n) for n in names] + list(columns.values())
    return pa.RecordBatch.from_arrays(arrays, names=names + list(columns))


class Prototypes(Stage):
    kind = "prototypes"
    side_outputs = (PROTOTYPES_DIR,)
    needs_fit = True
    option_constraints = {
        "clusters": [Interval(int, 1, None)],
        "keep": [Options(KEEP_CHOICES)],
        "fraction": [Interval(float, 0, 1)],  # the share of rows to keep
        "budget": [Interval(int, 0, None)],  # 0: from [report] budget
        "abundance_threshold": [Interval(float, 0, None, closed="neither")],
        "kmeans_iterations": [Interval(int, 1, None)],
        "model": [STORED_OR_MODEL],
        "balance": [Options(BALANCE_CHOICES)],
        "label_column": [Text()],
    }
    option_rules = [BALANCE_NEEDS_LABEL]

    def __init__(
        self,
        *,
        clusters: int = 200,
        keep: str = "auto",
        fraction: float = 1.0,
        budget: int = 0,
        abundance_threshold: float = 1.0,
        kmeans_iterations: int = 20,
        model: str = "",
        balance: str = "none",
        label_column: str = "",
    ):
        self.clusters = clusters
        self.keep = keep
        self.fraction = fraction
        self.budget = budget
        self.abundance_threshold = abundance_threshold
        self.kmeans_iterations = kmeans_iterations
        self.model = model
        self.balance = balance
        self.label_column = label_column

    def fit(self, source: BatchSource, ctx: StageContext) -> Prototypes:
        began = time.perf_counter()
        emb = stored_embeddings(
            source,
            ctx,
            self.model,
            sample=kmeans_sample(source.num_rows, cap_clusters(self.clusters, source.num_rows), ctx.seed),
        )
        if emb is None:
            emb = embeddings_for(source, ctx, self.model, write_parts=needs_own_store(ctx))
        published = publish_if_absent(emb, ctx)
        task_seconds = time.perf_counter() - began  # reading or embedding the vectors: task maps
        n = emb.num_rows
        k = cap_clusters(self.clusters, n)
        sample = kmeans_sample(n, k, ctx.seed)
        set_threads(ctx.threads)
        with ctx.progress.task(f"{ctx.name}: k-means ({k} clusters on {len(sample)} rows)", total=None):
            fitted = fit_centroids(emb, sample, k, ctx, self.kmeans_iterations)
        self.centroids_, task_seconds = fitted.centroids, task_seconds + fitted.task_seconds
        sizes = np.diff(emb.offsets).tolist()
        started = time.perf_counter()
        scored = ctx.map(
            UnitDistances(self.centroids_, emb.dim, ctx.task_threads),
            emb.paths,
            label=f"{ctx.name}: distances",
            sizes=sizes,
        )
        task_seconds += time.perf_counter() - started
        self.labels_ = np.concatenate([s[0] for s in scored]) if scored else np.empty(0, np.int32)
        self.distance_ = np.concatenate([s[1] for s in scored]) if scored else np.empty(0, np.float32)
        keep, reason = self.keep, f"keep = {self.keep} as configured"
        if keep == "auto":
            budget, where = self._budget(ctx)
            keep, reason = choose_keep(n, budget, self.abundance_threshold)
            reason += where
        if self.fraction >= 1.0 and keep != "none":
            reason += "; fraction = 1.0, so nothing is pruned"
        self.keep_ = keep
        self.rows_ = emb.rows
        self.kept_ = select_by_difficulty(
            self.distance_,
            self.fraction,
            keep,
            balance_groups(self.balance, self.label_column, self.labels_, emb.rows, source),
        )
        ctx.info.update(
            model=emb.model,
            embeddings_reused=emb.reused,
            embeddings_computed=emb.computed,
            embeddings_published=published,
            clusters=k,
            clusters_requested=self.clusters,
            balance=self.balance,
            keep=keep,
            keep_reason=reason,
            fraction=self.fraction,
            kept=int(self.kept_.sum()),
            distance_median=float(np.median(self.distance_)) if n else None,
            fit=(
                f"k-means map-reduce over {len(sample)} sample rows; distances on workers ({len(emb.paths)} units"
                + (", vectors read in place from the store" if emb.read_in_place else "")
                + "); selection on the driver"
            ),
        )
        ctx.info["driver_seconds"] = round(time.perf_counter() - began - task_seconds, 3)
        ctx.info["task_map_seconds"] = round(task_seconds, 3)
        return self

    def _budget(self, ctx: StageContext) -> tuple[int | None, str]:
        if self.budget > 0:
            return self.budget, " (budget from the stage option)"
        report = ctx.report or {}
        if isinstance(report.get("budget"), (int, float)) and report["budget"] > 0:
            return int(report["budget"]), " (budget from [report] budget)"
        budgets = [b for b in report.get("budgets", []) or [] if isinstance(b, (int, float)) and b > 0]
        if budgets:
            return int(max(budgets)), " (the largest of [report] budgets)"
        return None, ""

    def transform(self, batch: pa.RecordBatch, ctx: StageContext) -> tuple[pa.RecordBatch, pa.RecordBatch]:
        pos = np.searchsorted(self.rows_, row_ordinals(batch))
        scored = with_columns(
            batch, {"proto_cluster": pa.array(self.labels_[pos]), "proto_distance": pa.array(self.distance_[pos])}
        )
        pruned = ~self.kept_[pos]
        if not pruned.any():
            return scored, empty_ledger()
        kept, removed = split_batch(scored, pruned)
        reason = "pruned_easy" if self.keep_ == "hard" else "pruned_hard"
        return kept, removed_rows(removed.column(ctx.id_column), ctx.name, reason, score=self.distance_[pos][pruned])

    def finish(self, ctx: StageContext) -> None:
        with atomic_path(Path(ctx.output_dir) / PROTOTYPES_DIR / CENTROIDS_NAME) as tmp, open(tmp, "wb") as handle:
            np.save(handle, self.centroids_.astype(np.float32))


@dataclass(frozen=True)
class UnitDistances:
    """One unit's nearest centroid and cosine distance per row (layout-independent bits)."""

    centroids: np.ndarray
    dim: int
    threads: int

    def __call__(self, path: str | StoreSlice) -> tuple[np.ndarray, np.ndarray]:
        set_threads(self.threads)
        # a block at a time: the blocks are assign's own chunks, so the result is the same bits
        found = [prototype_distance(block, self.centroids) for block in vector_blocks(path, self.dim, ASSIGN_CHUNK)]
        if not found:
            return np.empty(0, np.int32), np.empty(0, np.float32)
        return np.concatenate([f[0] for f in found]), np.concatenate([f[1] for f in found])


STAGE = Prototypes
