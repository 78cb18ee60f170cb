"""The MinHash stage's per-unit files (signatures, shingles, shingle counts, row ordinals) read
by dense row index through memory maps: shared by the stage and its index of earlier outputs.
The files are read through `curate.io.mirror`, so a task on a machine that lacks them fetches
them from the output's store first."""

from __future__ import annotations

import math
import mmap
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from curate.algorithms.minhash import index_ranges, unique_sorted_sets
from curate.io import mirror


def unit_file(work: str | Path, unit: int, what: str) -> Path:
    return Path(work) / "units" / f"{unit:05d}.{what}"


class RowStore:
    """Rows of every unit's files by dense row index (unit u holds rows starts[u]..starts[u+1]),
    read through memory maps: a task reads the pages of the rows it asks for, not the files."""

    def __init__(self, work: str | Path, starts: np.ndarray, num_perm: int):
        self.work = Path(work)
        self.starts = starts
        self.num_perm = num_perm
        self._offsets: dict[int, np.ndarray] = {}

    def _by_unit(self, rows: np.ndarray) -> Iterator[tuple[int, np.ndarray, slice]]:
        """(unit, local rows, slice of `rows`) for sorted `rows`, unit by unit."""
        units = np.searchsorted(self.starts, rows, side="right") - 1
        bounds = np.concatenate([[0], np.flatnonzero(np.diff(units)) + 1, [len(rows)]])
        for lo, hi in zip(bounds[:-1], bounds[1:]):
            if hi > lo:
                unit = int(units[lo])
                yield unit, rows[lo:hi] - self.starts[unit], slice(int(lo), int(hi))

    def _map(self, unit: int, what: str, dtype: type, shape: tuple[int, ...]) -> np.ndarray:
        if math.prod(shape) == 0:
            return np.empty(shape, dtype=dtype)
        return np.memmap(mirror.ensure(unit_file(self.work, unit, what)), dtype=dtype, mode="r", shape=shape)

    def _unit_rows(self, unit: int) -> int:
        return int(self.starts[unit + 1] - self.starts[unit])

    def offsets(self, unit: int) -> np.ndarray:
        """Shingle offsets of a unit's rows (8 bytes per row of the unit, kept per task)."""
        found = self._offsets.get(unit)
        if found is None:
            counts = np.fromfile(mirror.ensure(unit_file(self.work, unit, "counts")), dtype=np.int64)
            found = self._offsets[unit] = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        return found

    def signatures(self, rows: np.ndarray) -> np.ndarray:
        """(len(rows), num_perm) uint32 signatures of sorted `rows`."""
        out = np.empty((len(rows), self.num_perm), dtype=np.uint32)
        for unit, local, where in self._by_unit(rows):
            sig = self._map(unit, "sig", np.uint32, (self._unit_rows(unit), self.num_perm))
            out[where] = sig[local]
            release_pages(sig)
        return out

    def shingles(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(raw shingle hashes, offsets) of sorted `rows`, concatenated in row order."""
        values, lengths = [], []
        for unit, local, _ in self._by_unit(rows):
            offsets = self.offsets(unit)
            shingles = self._map(unit, "shingles", np.uint64, (int(offsets[-1]),))
            found, found_offsets = gather_ranges(shingles, offsets, local)
            release_pages(shingles)
            values.append(found)
            lengths.append(np.diff(found_offsets))
        if not values:
            return np.empty(0, np.uint64), np.zeros(1, np.int64)
        return np.concatenate(values), np.concatenate([[0], np.cumsum(np.concatenate(lengths))]).astype(np.int64)

    def shingle_counts(self, rows: np.ndarray) -> np.ndarray:
        out = np.empty(len(rows), dtype=np.int64)
        for unit, local, where in self._by_unit(rows):
            out[where] = np.diff(self.offsets(unit))[local]
        return out

    def ordinals(self, rows: np.ndarray) -> np.ndarray:
        """Row ordinals (ROW_COLUMN) of dense rows, in the order given."""
        out = np.empty(len(rows), dtype=np.int64)
        order = np.argsort(rows, kind="stable")
        for unit, local, where in self._by_unit(rows[order]):
            ordinals = self._map(unit, "rows", np.int64, (self._unit_rows(unit),))
            out[order[where]] = ordinals[local]
        return out


class SortedSets:
    """Sorted fingerprint sets of the rows `nodes` (sorted dense rows), each built the first
    time a block asks for it and spilled to a scratch file under the store's work folder, then
    gathered from there through a memory map.

    Exact verification reads a row's set in every block that holds one of its pairs: on 8,000
    long documents the blocks re-read and re-sorted 71M shingles for 15M distinct ones (4.7x,
    measured), a third of the stage's time on one core. Built on first use (not all up front:
    rows whose pairs are all skipped as already joined are never read), each set is read and
    sorted once per task. Memory follows one block; the file is removed on close."""

    def __init__(self, store: RowStore, nodes: np.ndarray):
        self.store = store
        self.nodes = nodes
        scratch = store.work / "scratch"
        scratch.mkdir(parents=True, exist_ok=True)
        handle, name = tempfile.mkstemp(dir=scratch, suffix=".sets")
        self.path = Path(name)
        self._out = os.fdopen(handle, "wb")
        self._start = np.full(len(nodes), -1, dtype=np.int64)
        self._length = np.zeros(len(nodes), dtype=np.int64)
        self._total = 0
        self._values = np.empty(0, np.uint64)

    def gather(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(sets, offsets) of the rows at sorted unique `positions` in `nodes`, concatenated."""
        new = positions[self._start[positions] < 0]
        if len(new):
            sets, offsets = unique_sorted_sets(*self.store.shingles(self.nodes[new]))
            self._out.write(sets.tobytes())
            self._out.flush()
            self._start[new] = self._total + offsets[:-1]
            self._length[new] = np.diff(offsets)
            self._total += len(sets)
            if self._total:
                self._values = np.memmap(self.path, np.uint64, "r", shape=(self._total,))
        lengths = self._length[positions]
        values = np.asarray(self._values[index_ranges(self._start[positions], lengths)])
        return values, np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)

    def close(self) -> None:
        self._values = np.empty(0, np.uint64)
        self._out.close()
        self.path.unlink(missing_ok=True)

    def __enter__(self) -> SortedSets:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def ordinals_by_task(store: RowStore, rows: np.ndarray, map_tasks: Callable) -> np.ndarray:
    """Row ordinals of the sorted dense `rows`, one task per unit that has any: the driver gets
    the ordinals, never the units' files (workers on other machines, curate.io.mirror)."""
    jobs = [(unit, local) for unit, local, _ in store._by_unit(rows)]
    found = map_tasks(_UnitOrdinals(store), jobs) if jobs else []
    return np.concatenate(found) if found else np.empty(0, np.int64)


@dataclass(frozen=True)
class _UnitOrdinals:
    store: RowStore

    def __call__(self, job: tuple[int, np.ndarray]) -> np.ndarray:
        unit, local = job
        return self.store.ordinals(local + self.store.starts[unit])


def gather_ranges(values: np.ndarray, offsets: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """values[offsets[r]:offsets[r + 1]] for each r in rows, concatenated, with new offsets."""
    lengths = offsets[rows + 1] - offsets[rows]
    found = np.asarray(values[index_ranges(offsets[rows], lengths)])
    return found, np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)


def release_pages(array: np.ndarray) -> None:
    """Drop a memory map's pages from this process (they stay in the page cache): the spill is
    read in blocks, so resident memory follows one block, not the file."""
    handle = getattr(array, "_mmap", None)
    if handle is not None and hasattr(mmap, "MADV_DONTNEED"):
        handle.madvise(mmap.MADV_DONTNEED)
