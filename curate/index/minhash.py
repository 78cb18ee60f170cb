"""MinHash index: for every row of the stage's input (kept or removed: a new row may reach an
earlier group only through a row the earlier run removed, and the joint run would link it),
its LSH band keys, its shingle set as 40-bit fingerprints (5 bytes each: what exact
verification compares), its id and its group's representative.

Matching new rows, one task per work unit: band-key lookups give candidates, exact Jaccard
over the fingerprints verifies them. Groups are then the connected components of the new
rows' own verified edges plus these edges, each earlier row standing for its earlier group
(which comes first in input order), so a new row whose component reaches an earlier group
goes to the ledger with that group's representative, as in a joint run over old and new."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curate.algorithms import minhash as mh
from curate.algorithms.minhash_rows import RowStore, ordinals_by_task
from curate.errors import UsageError
from curate.index.earlier import EarlierMatches
from curate.index.store import StoredIndex, check_settings, find_index, index_dir, write_index
from curate.output.ledger import ids_as_strings
from curate.stages.base import BatchSource, StageContext

KIND = "minhash"
_ALL_PAIRS_MAX = 4  # a band bucket of more earlier rows pairs a new row with its first and last
_FP_BYTES = mh.FINGERPRINT_BITS // 8
# Band keys are stored as their low 32 bits: a spurious match (m / 2^32 per lookup, m = stored
# entries; 0.3% at 1M rows x 14 bands) only adds a candidate that exact verification rejects.
_KEY_MASK = np.uint64(0xFFFFFFFF)


# What an index keeps to verify a later row's candidates against its rows: "exact" the shingle
# fingerprints (exact Jaccard, as the joint run verifies; 5 bytes per distinct shingle), or
# "estimate" each row's signature as 16-bit slots (Jaccard estimated from equal slots, as
# verify = "estimate" does; 2 bytes x num_perm a row, whatever the text's length).
INDEX_VERIFY = ("exact", "estimate")
_SLOT_MASK = np.uint32(0xFFFF)  # equal 16-bit slots by chance: 1 in 65,536, J moves by that much


def settings(stage, seed: int) -> dict:
    bands, rows = stage.lsh_shape()
    return {
        "ngram": stage.ngram,
        "num_perm": stage.num_perm,
        "unit": stage.unit,
        "bands": int(bands),
        "rows": int(rows),
        "seed": int(seed),
        "threshold": float(stage.threshold),
        "verify": stage.verify,
        "index_verify": stage.index_verify,
    }


def after_fit(
    stage,
    source: BatchSource,
    ctx: StageContext,
    work: Path,
    units: list,
    starts: np.ndarray,
    edges: tuple[np.ndarray, np.ndarray, np.ndarray],
) -> None:
    """Hook at the end of the minhash stage's fit (its per-unit files still in `work`): regroup
    with the earlier indexes' rows, then write this run's index when `index = true`."""
    stage.earlier_ = None
    if not ctx.against and not getattr(stage, "index", False):
        return
    if stage.verify != "exact":
        raise UsageError(
            f"stage {ctx.name!r}: an index (index = true or --against) needs verify = 'exact', got {stage.verify!r}",
            fix="drop the verify option (exact is the default)",
        )

    ordinals = ordinals_by_task(
        RowStore(work, starts, stage.num_perm), np.arange(int(starts[-1]), dtype=np.int64), ctx.map
    )
    indexes = [find_index(path, ctx.name, KIND) for path in ctx.against]
    for stored in indexes:
        check_settings(stored, settings(stage, ctx.seed))
    want_index = bool(getattr(stage, "index", False))
    # One task per unit does both: its band keys are computed once, in one task round.
    task = _UnitPass(
        str(work),
        starts,
        stage.num_perm,
        stage.bands_,
        stage.rows_,
        ctx.seed,
        stage.threshold,
        tuple(indexes),
        ctx.id_column if want_index else None,
        stage.index_verify,
    )
    label = f"{ctx.name}: against earlier" + (" and index" if want_index else "") if indexes else f"{ctx.name}: index"
    results = ctx.map(task, list(enumerate(units)), label=label, sizes=[u.rows for u in units])
    if indexes:
        _regroup(stage, ctx, ordinals, edges, indexes, [r[0] for r in results])
    if want_index:
        stored = _build(stage, ctx, ordinals, [r[1] for r in results])
        ctx.info["stored_index_bytes"] = stored.nbytes


# ---------------------------------------------------------------------------------------
# Matching.


def _root_rows(table: pa.Table) -> np.ndarray:
    """Per stored row, the row of its group's representative (itself when kept, or when the
    representative lives in an output this index does not hold)."""
    ids = ids_as_strings(table.column("id"))
    where = pc.index_in(ids_as_strings(table.column("root")), value_set=ids)
    own = np.arange(len(ids), dtype=np.int64)
    found = where.to_numpy(zero_copy_only=False)
    return np.where(
        pc.is_null(where).to_numpy(zero_copy_only=False), own, np.nan_to_num(found, nan=0).astype(np.int64)
    )


def _keys(stage, n_old: int, new_nodes: np.ndarray) -> np.ndarray | None:
    """Representative keys for the regrouping: earlier rows -inf, so a group that reaches an
    earlier output keeps its earlier row (already published); this run's rows their rule's key
    (+inf for a row matched only against earlier rows: its group holds an earlier row anyway)."""
    if getattr(stage, "rep_keys_", None) is None:
        return None
    nodes, keys = stage.rep_keys_
    out = np.full(n_old + len(new_nodes), np.inf)
    out[:n_old] = -np.inf
    if len(nodes):
        at = np.minimum(np.searchsorted(nodes, new_nodes), len(nodes) - 1)
        hit = nodes[at] == new_nodes
        out[n_old:][hit] = keys[at[hit]]
    return out


def _regroup(
    stage, ctx: StageContext, ordinals: np.ndarray, edges: tuple, indexes: list[StoredIndex], found: list[tuple]
) -> None:
    new = np.concatenate([f[0] for f in found]) if found else np.empty(0, np.int64)
    which = np.concatenate([f[1] for f in found]) if found else np.empty(0, np.int64)
    old = np.concatenate([f[2] for f in found]) if found else np.empty(0, np.int64)
    jac = np.concatenate([f[3] for f in found]) if found else np.empty(0, np.float64)
    tables = [stored.table() for stored in indexes]
    offsets = np.concatenate([[0], np.cumsum([t.num_rows for t in tables])]).astype(np.int64)
    roots = (
        np.concatenate([_root_rows(t) + offsets[k] for k, t in enumerate(tables)]) if tables else np.empty(0, np.int64)
    )
    old_root = roots[offsets[which] + old] if len(old) else np.empty(0, np.int64)

    edges_i, edges_j, edges_est = edges
    old_nodes = mh.sorted_unique(old_root)
    new_nodes = mh.sorted_unique(np.concatenate([edges_i, edges_j, new]))
    n_old = len(old_nodes)
    i = np.concatenate([np.searchsorted(old_nodes, old_root), n_old + np.searchsorted(new_nodes, edges_i)])
    j = np.concatenate([n_old + np.searchsorted(new_nodes, new), n_old + np.searchsorted(new_nodes, edges_j)])
    groups = mh.duplicate_groups(
        n_old + len(new_nodes), i, j, np.concatenate([jac, edges_est]), _keys(stage, n_old, new_nodes)
    )
    is_new = groups.removed >= n_old
    removed, rep, score = groups.removed[is_new], groups.representative[is_new], groups.score[is_new]
    to_old = rep < n_old

    rows = ordinals[new_nodes[removed[to_old] - n_old]]
    all_ids = pa.concat_arrays([ids_as_strings(t.column("id")) for t in tables])
    order = np.argsort(rows, kind="stable")
    stage.earlier_ = EarlierMatches(
        rows[order], all_ids.take(pa.array(old_nodes[rep[to_old]][order])), score[to_old][order]
    )

    within = ~to_old
    dup = ordinals[new_nodes[removed[within] - n_old]]
    order = np.argsort(dup, kind="stable")
    stage.duplicate_rows_ = dup[order]
    stage.representatives_ = ordinals[new_nodes[rep[within] - n_old]][order]
    stage.scores_ = score[within][order]
    ctx.info.update(
        earlier_candidate_edges=int(sum(f[4] for f in found)),
        earlier_verified_edges=int(len(new)),
        earlier_duplicates=int(len(stage.earlier_)),
        near_duplicates=int(len(stage.duplicate_rows_)),
    )


@dataclass(frozen=True)
class _UnitPass:
    """One unit of this run's rows, its band keys computed once: matched against the earlier
    indexes (when there are any) and gathered for this run's index (when `id_column` is set).
    Returns (match, rows): `_match`'s and `_unit_rows`' results, None for the one not asked."""

    work: str
    starts: np.ndarray
    num_perm: int
    bands: int
    rows: int
    seed: int
    threshold: float
    indexes: tuple[StoredIndex, ...]
    id_column: str | None
    index_verify: str = "exact"

    def __call__(self, item: tuple[int, object]) -> tuple[tuple | None, tuple | None]:

        position, unit = item
        store = RowStore(self.work, self.starts, self.num_perm)
        dense = np.arange(int(self.starts[position]), int(self.starts[position + 1]), dtype=np.int64)
        shingled = dense[store.shingle_counts(dense) > 0]
        keys = (mh.band_keys(store.signatures(shingled), self.bands, self.rows, self.seed) & _KEY_MASK).astype(
            np.uint32
        )
        matched = self._match(store, keys, shingled) if self.indexes else None
        built = _unit_rows(self, store, keys, shingled, dense, position, unit) if self.id_column is not None else None
        return matched, built

    def _match(
        self, store, keys: np.ndarray, shingled: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
        """(new dense row, index number, stored row, Jaccard) of the verified edges to earlier
        rows, and the candidate count."""
        query = keys.ravel()
        query_row = np.repeat(shingled, self.bands)
        # Lookups in key order: searchsorted over the stored keys then walks them forward
        # (measured: 12 ms instead of 29 ms for 111k lookups in 410k keys); the candidate
        # pairs are sorted below, so their order does not matter.
        order = np.argsort(query, kind="stable")
        query, query_row = query[order], query_row[order]
        out_new, out_which, out_old, out_jac, candidates = [], [], [], [], 0
        for k, stored in enumerate(self.indexes):
            stored_keys, stored_rows = stored.array("band_keys"), stored.array("band_rows")
            left = np.searchsorted(stored_keys, query, side="left")
            size = np.searchsorted(stored_keys, query, side="right") - left
            small = (size > 0) & (size <= _ALL_PAIRS_MAX)
            big = size > _ALL_PAIRS_MAX
            new = np.concatenate([np.repeat(query_row[small], size[small]), query_row[big], query_row[big]])
            old = np.concatenate(
                [
                    np.asarray(stored_rows[mh.index_ranges(left[small], size[small])]),
                    np.asarray(stored_rows[left[big]]),
                    np.asarray(stored_rows[left[big] + size[big] - 1]),
                ]
            ).astype(np.int64)
            pairs = mh.sorted_unique(new * stored.rows + old)
            new, old = pairs // max(stored.rows, 1), pairs % max(stored.rows, 1)
            candidates += len(pairs)
            if not len(pairs):
                continue
            new_members, old_members = mh.sorted_unique(new), mh.sorted_unique(old)
            if stored.settings.get("index_verify", "exact") == "estimate":
                new_slots = slots(store.signatures(new_members))
                old_slots = np.asarray(stored.array("signatures")[old_members])
                jac = mh.estimated_jaccard(
                    new_slots[np.searchsorted(new_members, new)], old_slots[np.searchsorted(old_members, old)]
                )
            else:
                new_sets, new_offsets = mh.unique_sorted_sets(*store.shingles(new_members))
                old_sets, old_offsets = fingerprints(stored, old_members)
                sets = np.concatenate([new_sets, old_sets])
                set_offsets = np.concatenate([new_offsets, new_offsets[-1] + old_offsets[1:]])
                jac = mh.exact_jaccard(
                    sets,
                    set_offsets,
                    np.searchsorted(new_members, new),
                    len(new_members) + np.searchsorted(old_members, old),
                )
            keep = jac >= self.threshold
            out_new.append(new[keep])
            out_which.append(np.full(int(keep.sum()), k, np.int64))
            out_old.append(old[keep])
            out_jac.append(jac[keep])
        cat = lambda parts, dtype: np.concatenate(parts).astype(dtype) if parts else np.empty(0, dtype)  # noqa: E731
        return (
            cat(out_new, np.int64),
            cat(out_which, np.int64),
            cat(out_old, np.int64),
            cat(out_jac, np.float64),
            candidates,
        )


def fingerprints(stored: StoredIndex, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sorted 40-bit fingerprints, offsets) of the stored rows `rows` (sorted)."""
    offsets = stored.array("fp_offsets")
    lengths = np.asarray(offsets[rows + 1] - offsets[rows], dtype=np.int64)
    packed = np.asarray(
        stored.array("fingerprints")[mh.index_ranges(np.asarray(offsets[rows], dtype=np.int64), lengths)]
    )
    return unpack(packed), np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)


def slots(signatures: np.ndarray) -> np.ndarray:
    """The low 16 bits of each signature slot: what an `index_verify = "estimate"` index keeps."""
    return (signatures & _SLOT_MASK).astype(np.uint16)


def pack(values: np.ndarray) -> np.ndarray:
    """40-bit values as (n, 5) little-endian bytes."""
    return np.ascontiguousarray(values.astype("<u8").view(np.uint8).reshape(-1, 8)[:, :_FP_BYTES])


def unpack(packed: np.ndarray) -> np.ndarray:
    full = np.zeros((len(packed), 8), dtype=np.uint8)
    full[:, :_FP_BYTES] = packed
    return full.view("<u8").ravel().astype(np.uint64)


# ---------------------------------------------------------------------------------------
# Building and merging.


def _build(stage, ctx: StageContext, ordinals: np.ndarray, parts: list[tuple]) -> StoredIndex:
    ids = pa.concat_arrays([p[4] for p in parts]) if parts else pa.array([], pa.string())
    root = ids
    if len(stage.duplicate_rows_):  # a row removed here points at its group's representative
        at = np.searchsorted(ordinals, stage.duplicate_rows_)
        root = _put(root, at, stage.representative_ids_(stage.representatives_))
    earlier = stage.earlier_
    if earlier is not None and len(earlier):
        root = _put(root, np.searchsorted(ordinals, earlier.rows), earlier.ids)
    if stage.index_verify == "estimate":
        verification = {
            "signatures": np.concatenate([p[2] for p in parts]) if parts else np.empty((0, stage.num_perm), np.uint16)
        }
    else:
        counts = np.concatenate([p[3] for p in parts]) if parts else np.empty(0, np.int64)
        verification = {
            "fingerprints": np.concatenate([p[2] for p in parts]) if parts else np.empty((0, _FP_BYTES), np.uint8),
            "fp_offsets": np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
        }
    return _write(
        index_dir(ctx.output_dir, ctx.name),
        ctx.name,
        settings(stage, ctx.seed),
        np.concatenate([p[0] for p in parts]) if parts else np.empty(0, np.uint32),
        np.concatenate([p[1] for p in parts]) if parts else np.empty(0, np.int64),
        verification,
        pa.table({"id": ids, "root": root}),
    )


def _put(values: pa.Array, at: np.ndarray, new: pa.Array) -> pa.Array:
    """`values` with values[at] = new (string arrays)."""
    out = np.asarray(values.to_numpy(zero_copy_only=False), dtype=object)
    out[at] = np.asarray(ids_as_strings(new).to_numpy(zero_copy_only=False), dtype=object)
    return pa.array(out, pa.string())


def _write(
    directory,
    stage: str,
    stored_settings: dict,
    keys: np.ndarray,
    key_rows: np.ndarray,
    verification: dict[str, np.ndarray],
    table: pa.Table,
) -> StoredIndex:
    """`verification`: `fingerprints` and `fp_offsets`, or `signatures` (index_verify)."""
    order = np.lexsort((key_rows, keys))
    row_type = np.uint32 if table.num_rows < (1 << 32) else np.int64
    return write_index(
        directory,
        kind=KIND,
        stage=stage,
        settings=stored_settings,
        arrays={
            "band_keys": keys[order].astype(np.uint32),
            "band_rows": key_rows[order].astype(row_type),
            **verification,
        },
        table=table,
    )


def _unit_rows(
    pass_: _UnitPass, store, keys: np.ndarray, shingled: np.ndarray, dense: np.ndarray, position: int, unit
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, pa.Array]:
    """Per unit, for this run's index: band keys (low 32 bits) with their dense rows, the
    verification data (packed fingerprint sets and set sizes, or signature slots) and the ids
    of every row of the unit, read from the fit's per-unit files."""
    if pass_.index_verify == "estimate":
        verification, counts = slots(store.signatures(dense)), np.zeros(0, np.int64)
    else:
        sets, offsets = (
            mh.unique_sorted_sets(*store.shingles(dense))
            if len(dense)
            else (np.empty(0, np.uint64), np.zeros(1, np.int64))
        )
        verification, counts = pack(sets), np.diff(offsets)
    ids = [ids_as_strings(b.column(pass_.id_column)) for b in unit.batches(columns=[pass_.id_column])]  # type: ignore[attr-defined]
    ids_array = pa.concat_arrays(ids) if ids else pa.array([], pa.string())
    if len(ids_array) != len(dense):
        raise RuntimeError(f"minhash index: unit {position} has {len(ids_array)} ids for {len(dense)} rows")
    return keys.ravel(), np.repeat(shingled, pass_.bands), verification, counts, ids_array


def merge(base: StoredIndex, later: StoredIndex, directory) -> StoredIndex:
    """One index of both outputs, the earlier output's rows first (they come first in order)."""
    check_settings(later, base.settings, here=f"in the index of {Path(base.directory).parent.parent}")
    n = base.rows
    if base.settings.get("index_verify", "exact") == "estimate":
        verification = {"signatures": np.concatenate([base.array("signatures"), later.array("signatures")])}
    else:
        base_off, later_off = np.asarray(base.array("fp_offsets")), np.asarray(later.array("fp_offsets"))
        verification = {
            "fingerprints": np.concatenate([base.array("fingerprints"), later.array("fingerprints")]),
            "fp_offsets": np.concatenate([base_off, base_off[-1] + later_off[1:]]).astype(np.int64),
        }
    return _write(
        directory,
        base.stage,
        base.settings,
        np.concatenate([base.array("band_keys"), later.array("band_keys")]),
        np.concatenate(
            [np.asarray(base.array("band_rows"), np.int64), np.asarray(later.array("band_rows"), np.int64) + n]
        ),
        verification,
        pa.concat_tables([base.table(), later.table()]).combine_chunks(),
    )
