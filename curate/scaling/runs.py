"""RUNS.csv: the training runs a law is fitted from (one row per run and budget).

Columns: `pool` (a pool name, or several joined by `+` for a mix), `pool_size` (unique samples
of that pool or mix), `samples_seen`, `loss`; or `tokens_seen` instead of `samples_seen`, with
`pool_size` in tokens too (the law is then in tokens); other columns are kept out of the fit. Checked
once here, with the row number in every message, so the fit can trust its input."""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from curate.errors import InputError
from curate.io.atomic import atomic_path

RUN_COLUMNS = ("pool", "pool_size", "samples_seen", "loss")
MIX_SEPARATOR = "+"


@dataclass(frozen=True)
class RunsTable:
    """Validated runs. `members[r]` are indices into `pool_names` (best first)."""

    pool_names: list[str]
    pool_sizes: np.ndarray  # unique samples per pool
    members: list[tuple[int, ...]]
    mix_size: np.ndarray
    samples_seen: np.ndarray  # or tokens seen, when unit == "tokens" (pool sizes are then tokens too)
    loss: np.ndarray
    unit: str = "samples"

    @property
    def rows(self) -> int:
        return len(self.members)

    def label(self, r: int) -> str:
        return MIX_SEPARATOR.join(self.pool_names[i] for i in self.members[r])


def _number(value: str, column: str, where: str, path: Path) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InputError(
            f"{where}: {column} {value!r} is not a number", path=path, fix=f"write a positive number in '{column}'"
        ) from None
    if not math.isfinite(number) or number <= 0:
        raise InputError(
            f"{where}: {column} must be positive, got {value}",
            path=path,
            fix=f"write a positive number in '{column}' (drop failed runs)",
        )
    return number


def _pool_order(names: Iterable[str]) -> list[str]:
    """Numeric names sort numerically (pool 0 best, as `curate pools` writes them); others keep file order."""
    names = list(dict.fromkeys(names))
    if all(n.lstrip("-").isdigit() for n in names):
        return sorted(names, key=int)
    return names


def read_runs(path: str | Path) -> RunsTable:
    """Parse and check RUNS.csv; InputError (exit 2) names the row (1 = first data row) and line."""
    path = Path(path)
    try:
        handle = open(path, newline="", encoding="utf-8")
    except FileNotFoundError:
        raise InputError(
            "runs file does not exist", path=path, fix="pass a RUNS.csv with columns " + ", ".join(RUN_COLUMNS)
        ) from None
    with handle:
        reader = csv.DictReader(handle)
        header = [h.strip() for h in (reader.fieldnames or [])]
        missing = [c for c in RUN_COLUMNS if c not in header and not (c == "samples_seen" and "tokens_seen" in header)]
        if missing:
            raise InputError(
                f"row 0 (header): missing column(s) {', '.join(missing)}",
                path=path,
                fix="the header must name " + ", ".join(RUN_COLUMNS),
            )
        unit = "samples"
        if "samples_seen" not in header and "tokens_seen" in header:  # a law in tokens: pool_size in tokens too
            header = ["samples_seen" if h == "tokens_seen" else h for h in header]
            unit = "tokens"
        reader.fieldnames = header
        raw = []
        for number, record in enumerate(reader, start=1):
            where = f"row {number} (line {reader.line_num})"
            if any(record.get(c) in (None, "") for c in RUN_COLUMNS):
                empty = [c for c in RUN_COLUMNS if record.get(c) in (None, "")]
                raise InputError(
                    f"{where}: empty {', '.join(empty)}", path=path, fix="fill every one of " + ", ".join(RUN_COLUMNS)
                )
            parts = [p.strip() for p in record["pool"].split(MIX_SEPARATOR)]
            if any(not p for p in parts) or len(set(parts)) != len(parts):
                raise InputError(
                    f"{where}: bad pool name {record['pool']!r}",
                    path=path,
                    fix="name one pool, or distinct pools joined by '+' (e.g. 0+1)",
                )
            size = _number(record["pool_size"], "pool_size", where, path)
            seen = _number(record["samples_seen"], "samples_seen", where, path)
            loss = _number(record["loss"], "loss", where, path)
            raw.append((number, where, parts, size, seen, loss))
    if not raw:
        raise InputError("no runs (only a header)", path=path, fix="add one row per run and budget")

    sizes: dict[str, tuple[float, str]] = {}
    for _, where, parts, size, _, _ in raw:
        if len(parts) == 1:
            known = sizes.setdefault(parts[0], (size, where))
            if abs(known[0] - size) > 1e-9 * size:
                raise InputError(
                    f"{where}: pool {parts[0]!r} has pool_size {size:g}, but {known[1]} says {known[0]:g}",
                    path=path,
                    fix="give each pool one size (fit pools of different sizes under different names)",
                )
    if not sizes:
        raise InputError(
            "no single-pool runs, only mixes", path=path, fix="add runs on each pool alone; mixes are extra evidence"
        )
    names = _pool_order(sizes)
    index = {n: i for i, n in enumerate(names)}
    members, mix_size = [], []
    for _, where, parts, size, _, _ in raw:
        unknown = [p for p in parts if p not in index]
        if unknown:
            raise InputError(
                f"{where}: unknown pool {unknown[0]!r} in mix {'+'.join(parts)!r}",
                path=path,
                fix="every pool in a mix needs runs of its own (its size comes from them)",
            )
        expected = sum(sizes[p][0] for p in parts)
        if abs(expected - size) > 0.01 * expected:
            raise InputError(
                f"{where}: mix size {size:g} is not the sum of its pools' sizes ({expected:g})",
                path=path,
                fix="pool_size of a mix row is the mix's unique samples",
            )
        members.append(tuple(sorted(index[p] for p in parts)))
        mix_size.append(expected)
    return RunsTable(
        pool_names=names,
        pool_sizes=np.array([sizes[n][0] for n in names]),
        members=members,
        mix_size=np.array(mix_size),
        samples_seen=np.array([r[4] for r in raw]),
        loss=np.array([r[5] for r in raw]),
        unit=unit,
    )


def write_runs(path: str | Path, rows: Sequence[dict], extra_columns: Sequence[str] = ()) -> None:
    """Write RUNS.csv rows (dicts with at least RUN_COLUMNS)."""
    columns = [*RUN_COLUMNS, *extra_columns]
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow(row)
