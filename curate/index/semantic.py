"""Semantic-dedup index: the embeddings of every row of the stage's input (float32, grouped by
k-means cluster), the centroids, each row's id and its group's representative.

Matching new rows, one task per unit of vectors: each new row goes to its nearest earlier
centroid and is compared (FAISS range search, re-scored row by row) with that cluster's
earlier rows only, as SemDeDup compares rows within a cluster. A new row with cosine >=
threshold to an earlier row is a duplicate of it; so is every new row of a within-run group
that holds such a row. Earlier rows are never removed, whatever `keep` says: unlike a joint
run, which may keep the later copy (keep = hard keeps the one farthest from its centroid), an
earlier output is final. bench/incremental.py measures precision and recall against the joint
run."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np
import pyarrow as pa

from curate.index.earlier import EarlierMatches
from curate.index.minhash import _put
from curate.index.store import StoredIndex, check_settings, find_index, index_dir, write_index
from curate.ledger import ids_as_strings
from curate.metrics.kmeans import assign, row_dot, set_threads
from curate.stages.base import BatchSource, IdLookup, StageContext

KIND = "semdedup"
_SEARCH_MARGIN = 1e-4  # as curate.metrics.semdedup: FAISS proposes, the per-row dot decides
# New x earlier rows of one cluster compared as one dense product up to this many cosines; a
# FAISS range search per small cluster cost 4.5 ms a call in thread start-up (671 calls: 3 s of
# a 5 s run on the Debian halves), the product 0.1 ms.
_DENSE_MAX = 1 << 22


def settings(stage, emb) -> dict:
    return {"model": emb.model, "model_version": emb.version, "dim": int(emb.dim), "threshold": float(stage.threshold)}


def after_fit(stage, source: BatchSource, ctx: StageContext, emb, centroids: np.ndarray, clusters_dir: str) -> None:
    """Hook at the end of the semdedup stage's fit: match against `ctx.against`, then write
    this run's index when `index = true`."""
    stage.earlier_ = None
    if ctx.against:
        indexes = [find_index(path, ctx.name, KIND) for path in ctx.against]
        for stored in indexes:
            check_settings(stored, settings(stage, emb))
        _regroup(stage, ctx, emb, indexes)
    if getattr(stage, "index", False):
        stored = _build(stage, source, ctx, emb, centroids, clusters_dir)
        ctx.info["stored_index_bytes"] = stored.nbytes


def _regroup(stage, ctx: StageContext, emb, indexes: list[StoredIndex]) -> None:
    jobs = [(emb.paths[u], emb.rows[emb.offsets[u] : emb.offsets[u + 1]]) for u in range(len(emb.paths))]
    best_row = np.empty(0, np.int64)
    best_id = pa.array([], pa.string())
    best_sim = np.empty(0, np.float32)
    for stored in indexes:  # earlier indexes first: a row matched by an older output keeps that match
        found = ctx.map(_Match(stored, float(stage.threshold), emb.dim, ctx.task_threads), jobs, label=f"{ctx.name}: against earlier", sizes=[len(j[1]) for j in jobs])
        rows = np.concatenate([f[0] for f in found]) if found else np.empty(0, np.int64)
        where = np.concatenate([f[1] for f in found]) if found else np.empty(0, np.int64)
        sims = np.concatenate([f[2] for f in found]) if found else np.empty(0, np.float32)
        new = ~np.isin(rows, best_row)
        table = stored.table()
        roots = ids_as_strings(table.column("root")).take(pa.array(where[new]))
        best_row, best_sim = np.concatenate([best_row, rows[new]]), np.concatenate([best_sim, sims[new]])
        best_id = pa.concat_arrays([best_id, roots])
    order = np.argsort(best_row, kind="stable")
    best_row, best_sim, best_id = best_row[order], best_sim[order], best_id.take(pa.array(order))

    # Within-run groups (representative + its removed rows) that hold a matched row go whole.
    removed, reps = stage.removed_rows_, stage.representatives_
    members = np.concatenate([removed, np.unique(reps)])
    group = np.concatenate([reps, np.unique(reps)])
    matched = np.isin(members, best_row)
    groups_hit = np.unique(group[matched])
    follow = np.isin(group, groups_hit) & ~matched
    # each such member points where its group's earliest matched member points
    hit_members = members[matched]
    hit_groups = group[matched]
    first = np.lexsort((hit_members, hit_groups))
    g_sorted, m_sorted = hit_groups[first], hit_members[first]
    keep_first = np.ones(len(g_sorted), dtype=bool)
    keep_first[1:] = g_sorted[1:] != g_sorted[:-1]
    group_keys, group_via = g_sorted[keep_first], m_sorted[keep_first]
    follower_rows = members[follow]
    via = group_via[np.searchsorted(group_keys, group[follow])]
    via_ids = best_id.take(pa.array(np.searchsorted(best_row, via))) if len(via) else pa.array([], pa.string())
    # a follower's score: its cosine to its within-run keeper (none for the keeper itself)
    at = np.minimum(np.searchsorted(removed, follower_rows), max(len(removed) - 1, 0))
    is_removed = (removed[at] == follower_rows) if len(removed) else np.zeros(len(follower_rows), dtype=bool)
    follower_sims = np.where(is_removed, stage.similarity_[at] if len(removed) else np.nan, np.nan).astype(np.float32)

    rows = np.concatenate([best_row, follower_rows])
    order = np.argsort(rows, kind="stable")
    stage.earlier_ = EarlierMatches(rows[order], pa.concat_arrays([best_id, via_ids]).take(pa.array(order)), np.concatenate([best_sim, follower_sims])[order].astype(np.float64))
    stay = ~np.isin(removed, stage.earlier_.rows)
    stage.removed_rows_, stage.representatives_, stage.similarity_ = removed[stay], reps[stay], stage.similarity_[stay]
    ctx.info.update(earlier_matches=int(len(best_row)), earlier_duplicates=int(len(stage.earlier_)), removed=int(len(stage.removed_rows_)))


@dataclass(frozen=True)
class _Match:
    """One unit of new vectors: (ordinal, stored row, cosine) of each row's best earlier match
    at cosine >= threshold within its nearest earlier cluster."""

    index: StoredIndex
    threshold: float
    dim: int
    threads: int

    def __call__(self, job: tuple[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        from curate.stages.embed import load_vectors

        path, ordinals = job
        set_threads(self.threads)
        vectors = np.ascontiguousarray(load_vectors(path, self.dim), dtype=np.float32)
        centroids = np.asarray(self.index.array("centroids"))
        offsets = np.asarray(self.index.array("cluster_offsets"))
        stored = self.index.array("vectors")
        out_rows, out_where, out_sims = [], [], []
        if len(vectors) == 0 or len(centroids) == 0:
            return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float32)
        labels, _ = assign(vectors, centroids)
        for c in np.unique(labels):
            lo, hi = int(offsets[c]), int(offsets[c + 1])
            if hi == lo:
                continue
            mine = np.flatnonzero(labels == c)
            earlier = np.ascontiguousarray(stored[lo:hi], dtype=np.float32)
            if len(mine) * (hi - lo) <= _DENSE_MAX:
                query, neighbours = np.nonzero(vectors[mine] @ earlier.T >= np.float32(self.threshold - _SEARCH_MARGIN))
            else:
                search = faiss.IndexFlatIP(self.dim)
                search.add(earlier)
                lims, _, neighbours = search.range_search(vectors[mine], self.threshold - _SEARCH_MARGIN)
                query = np.repeat(np.arange(len(mine)), np.diff(lims.astype(np.int64)))
            if not len(query):
                continue
            sims = row_dot(vectors[mine][query], earlier[neighbours])
            ok = sims >= np.float32(self.threshold)
            query, neighbours, sims = query[ok], neighbours[ok].astype(np.int64), sims[ok]
            best = np.lexsort((neighbours, -sims, query))  # per row: highest cosine, then earliest stored row
            query, neighbours, sims = query[best], neighbours[best], sims[best]
            first = np.ones(len(query), dtype=bool)
            first[1:] = query[1:] != query[:-1]
            out_rows.append(ordinals[mine[query[first]]])
            out_where.append(lo + neighbours[first])
            out_sims.append(sims[first])
        if not out_rows:
            return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float32)
        rows = np.concatenate(out_rows)
        order = np.argsort(rows, kind="stable")
        return rows[order], np.concatenate(out_where)[order], np.concatenate(out_sims)[order]


def _build(stage, source: BatchSource, ctx: StageContext, emb, centroids: np.ndarray, clusters_dir: str) -> StoredIndex:
    labels = []
    for u in range(len(emb.paths)):
        with np.load(Path(clusters_dir) / f"{u:05d}.npz") as data:
            labels.append(data["labels"])
    label = np.concatenate(labels) if labels else np.empty(0, np.int32)
    ids = IdLookup.collect(source, emb.rows, ctx)(emb.rows) if len(emb.rows) else pa.array([], pa.string())
    root = ids_as_strings(ids)
    if len(stage.removed_rows_):
        root = _put(root, np.searchsorted(emb.rows, stage.removed_rows_), stage.representative_ids_(stage.representatives_))
    if stage.earlier_ is not None and len(stage.earlier_):
        root = _put(root, np.searchsorted(emb.rows, stage.earlier_.rows), stage.earlier_.ids)
    vectors = emb.gather(np.arange(emb.num_rows)) if emb.num_rows else np.zeros((0, emb.dim), np.float32)
    return _write(index_dir(ctx.output_dir, ctx.name), ctx.name, settings(stage, emb), vectors, label, centroids, pa.table({"id": ids_as_strings(ids), "root": root}))


def _write(directory, stage: str, stored_settings: dict, vectors: np.ndarray, label: np.ndarray, centroids: np.ndarray, table: pa.Table) -> StoredIndex:
    order = np.argsort(label, kind="stable")  # by cluster, input order within
    offsets = np.concatenate([[0], np.cumsum(np.bincount(label, minlength=len(centroids)))]).astype(np.int64)
    return write_index(
        directory, kind=KIND, stage=stage, settings=stored_settings,
        arrays={"vectors": np.asarray(vectors, dtype=np.float32)[order], "cluster_offsets": offsets, "centroids": np.asarray(centroids, dtype=np.float32)},
        table=table.take(pa.array(order)),
    )


def merge(base: StoredIndex, later: StoredIndex, directory) -> StoredIndex:
    """One index of both outputs under the earlier output's centroids (the later rows are
    assigned to them), the earlier rows first within each cluster."""
    check_settings(later, base.settings, here=f"in the index of {Path(base.directory).parent.parent}")
    centroids = np.asarray(base.array("centroids"))
    base_offsets = np.asarray(base.array("cluster_offsets"))
    base_label = np.repeat(np.arange(len(centroids)), np.diff(base_offsets))
    later_vectors = np.asarray(later.array("vectors"))
    later_label, _ = assign(np.ascontiguousarray(later_vectors), centroids) if len(later_vectors) else (np.empty(0, np.int32), None)
    vectors = np.concatenate([np.asarray(base.array("vectors")), later_vectors])
    label = np.concatenate([base_label, later_label]).astype(np.int64)
    return _write(directory, base.stage, base.settings, vectors, label, centroids, pa.concat_tables([base.table(), later.table()]).combine_chunks())
