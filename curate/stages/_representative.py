"""The representative rule inside a dedup stage's fit (curate.algorithms.representative holds the rule).

A stage finds its duplicate groups as it always has (earliest member first), then, when the rule is
not "first", reads the rule's key for just the grouped rows (one task per work unit, like the id
lookup) and re-picks each group's kept member as its lowest (key, ordinal). The key is a function of
the row alone and the pick of the whole group, so the result is the same on every executor, unit
size and worker count.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from curate.algorithms.representative import (
    check_representative_column,
    parse_representative,
    pick_in_groups,
    representative_key,
    rule_columns,
)
from curate.stages.base import BatchSource, StageContext, row_ordinals, sorted_member
from curate.stages.constraints import Rule

DEFAULT = "first"
REPRESENTATIVE = Rule(
    parse_representative,
    "first, longest, shortest, max:COLUMN or min:COLUMN",
    invalid=["best", "max", "max:", "first:x", "LONGEST"],
)


def uses_keys(rule: str) -> bool:
    """True when the rule needs a key pass (anything but "first")."""
    return parse_representative(rule)[0] != "first"


def check(rule: str, source: BatchSource, ctx: StageContext) -> None:
    """Exit 2 before any work when a max:/min: rule names a missing or non-numeric column."""
    check_representative_column(rule, source.schema, ctx.name)


def collect_keys(source: BatchSource, ordinals: np.ndarray, rule: str, ctx: StageContext) -> np.ndarray:
    """The rule's key of each row in `ordinals` (any order, repeats allowed), read by one task per
    work unit over only the rule's column."""
    wanted = np.unique(np.asarray(ordinals, dtype=np.int64))
    jobs = []
    for unit in ctx.units(source) if len(wanted) else []:
        low, high = unit.ordinal_range
        mine = wanted[np.searchsorted(wanted, low) : np.searchsorted(wanted, high, side="right")]
        if len(mine):
            jobs.append((unit, mine))
    found = ctx.map(_ScanKeys(rule, ctx.text_column), jobs, label=f"{ctx.name}: representative keys")
    rows = np.concatenate([f[0] for f in found]) if found else np.empty(0, np.int64)
    keys = np.concatenate([f[1] for f in found]) if found else np.empty(0, np.float64)
    if len(rows) != len(wanted):
        raise RuntimeError(f"representative key lookup found {len(rows)} of {len(wanted)} rows")
    order = np.argsort(rows, kind="stable")
    rows, keys = rows[order], keys[order]
    return keys[np.searchsorted(rows, ordinals)]


@dataclass(frozen=True)
class _ScanKeys:
    rule: str
    text_column: str

    def __call__(self, job: tuple[BatchSource, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        source, wanted = job
        found_rows: list[np.ndarray] = []
        found_keys: list[np.ndarray] = []
        for batch in source.batches(columns=rule_columns(self.rule, self.text_column)):
            rows = row_ordinals(batch)
            hit = sorted_member(wanted, rows)
            if hit.any():
                found_rows.append(rows[hit])
                found_keys.append(representative_key(self.rule, batch.filter(pa.array(hit)), self.text_column))
        rows = np.concatenate(found_rows) if found_rows else np.empty(0, np.int64)
        keys = np.concatenate(found_keys) if found_keys else np.empty(0, np.float64)
        return rows, keys


def repick(
    rule: str, source: BatchSource, ctx: StageContext, removed: np.ndarray, representatives: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(removed ordinals ascending, their representatives) after the rule re-picks each group.

    Groups are given as earliest-first (`removed[k]` duplicates `representatives[k]`, which is
    the group's earliest row and kept). Unchanged for "first" or when nothing was removed."""
    if not uses_keys(rule) or len(removed) == 0:
        return removed, representatives
    heads = np.unique(representatives)
    members = np.concatenate([removed, heads]).astype(np.int64)
    group = np.concatenate([representatives, heads]).astype(np.int64)
    keys = collect_keys(source, members, rule, ctx)
    chosen = members[pick_in_groups(group, keys, members)]
    out = chosen != members
    rows, reps = members[out], chosen[out]
    order = np.argsort(rows, kind="stable")
    return rows[order], reps[order]
