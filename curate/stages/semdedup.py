"""Semantic dedup stage (SemDeDup): drop rows whose embedding has cosine >= threshold with a kept
row of the same k-means cluster. Embeddings come from OUT/embeddings (an earlier embed stage)
or are computed with `model`; the algorithm is `curate.metrics.semdedup`."""

from __future__ import annotations

import pyarrow as pa

from curate.metrics.kmeans import set_threads
from curate.metrics.semdedup import KEEP_RULES, semantic_duplicates
from curate.stages.base import BatchSource, IdLookup, Stage, StageContext, drop_fitted_duplicates
from curate.stages.embed import embeddings_for, publish_if_absent


class SemDedup(Stage):
    kind = "semdedup"
    needs_fit = True

    def __init__(
        self,
        *,
        threshold: float = 0.95,
        clusters: int = 0,
        keep: str = "hard",
        kmeans_fit_fraction: float = 1.0,
        kmeans_iterations: int = 20,
        model: str = "",
    ):
        if not -1.0 <= threshold <= 1.0:
            raise ValueError(f"threshold is a cosine similarity in [-1, 1], got {threshold}")
        if keep not in KEEP_RULES:
            raise ValueError(f"keep must be one of {', '.join(KEEP_RULES)}, got {keep!r}")
        if clusters < 0 or kmeans_iterations <= 0 or not 0.0 < kmeans_fit_fraction <= 1.0:
            raise ValueError("clusters >= 0 (0 = about sqrt(rows)), kmeans_iterations > 0, 0 < kmeans_fit_fraction <= 1")
        self.threshold = threshold
        self.clusters = clusters
        self.keep = keep
        self.kmeans_fit_fraction = kmeans_fit_fraction
        self.kmeans_iterations = kmeans_iterations
        self.model = model

    def fit(self, source: BatchSource, ctx: StageContext) -> "SemDedup":
        emb = embeddings_for(source, ctx, self.model)
        published = publish_if_absent(emb, ctx) if emb.computed else False
        set_threads(ctx.threads)
        with ctx.progress.task(f"{ctx.name}: clustering and searching", total=None):
            result = semantic_duplicates(
                emb.matrix, self.threshold, self.clusters, self.keep, ctx.seed, self.kmeans_fit_fraction, self.kmeans_iterations
            )
        self.removed_rows_ = emb.rows[result.removed]
        self.representatives_ = emb.rows[result.representative]
        self.similarity_ = result.similarity
        self.representative_ids_ = IdLookup.collect(source, self.representatives_, ctx)
        ctx.info.update(
            model=emb.model, embeddings_reused=emb.reused, embeddings_computed=emb.computed, embeddings_published=published,
            clusters=len(result.centroids), largest_cluster=result.largest_cluster, duplicate_pairs=result.pairs,
            removed=len(result.removed), threshold=self.threshold, keep=self.keep,
        )
        return self

    def transform(self, batch: pa.RecordBatch, ctx: StageContext) -> tuple[pa.RecordBatch, pa.RecordBatch]:
        return drop_fitted_duplicates(
            batch, self.removed_rows_, self.representatives_, self.representative_ids_,
            stage=ctx.name, reason="semantic_duplicate", id_column=ctx.id_column, scores=self.similarity_,
        )


STAGE = SemDedup
