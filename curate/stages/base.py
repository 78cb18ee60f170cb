"""What every stage is: an estimator over a stream of Arrow record batches.

`__init__` stores options and nothing else. `fit(source, ctx)` learns what needs the whole
corpus (it may stream the source more than once) and keeps it compact in attributes with a
trailing underscore. `transform(batch, ctx)` splits one batch into (kept, removed ledger rows).
The one runner drives the same objects on every executor; the algorithms live in `curate.algorithms`.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterator, Protocol, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curate.engine.progress import QUIET, Progress
from curate.errors import UsageError
from curate.io.inputs import DEFAULT_BATCH_SIZE, ROW_COLUMN, ColumnSpec
from curate.stages.constraints import Constraint, Together, check_options

_NOT_STAGES = {"base", "constraints"}


class BatchSource(Protocol):
    """A re-readable ordered stream: the input shards or a previous stage's kept rows."""

    num_rows: int
    schema: pa.Schema

    def batches(self, columns: Sequence[str] | None = None) -> Iterator[pa.RecordBatch]: ...


@dataclass
class StageContext:
    """What a stage may know about the run it is in."""

    name: str
    columns: ColumnSpec = field(default_factory=ColumnSpec)
    seed: int = 0
    batch_size: int = DEFAULT_BATCH_SIZE
    # Tasks the run's executor runs at once (size shuffles and sample splits by it).
    workers: int = 1
    # Cores the code running now may use for threads: every core on the driver, a share in a
    # task (a pickled context carries `task_threads` here, so a task never oversubscribes).
    threads: int = 1
    work_dir: Path = Path(".")
    output_dir: Path = Path(".")
    progress: Progress = QUIET
    report: dict = field(default_factory=dict)
    info: dict = field(default_factory=dict)
    # Under a shard-parallel executor: the index of the work unit (an input shard, a part file
    # or a slice of one) this copy of the stage is running on; None on the driver.
    shard: int | None = None
    # Rows per work unit (curate.engine.units); the runner sets it from the source size and workers.
    unit_rows: int = 1_000_000
    # Where `map` runs tasks (curate.engine.executors); None on a worker, where map runs inline. It
    # never travels with a pickled context (a Dask client or a process pool cannot).
    executor: Any = field(default=None, repr=False, compare=False)

    task_threads: int = 1
    # Earlier outputs (`--against OLD_OUT`) whose index a dedup stage matches new rows against.
    against: tuple[str, ...] = ()

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state.update(executor=None, progress=QUIET, threads=self.task_threads)
        return state

    def map(
        self,
        fn: Callable[[Any], Any],
        items: Sequence[Any],
        *,
        label: str | None = None,
        sizes: Sequence[int] | None = None,
    ) -> list[Any]:
        """fn over items on the run's executor, results in item order. Use it for every piece of
        per-row work in a fit (per unit, per bucket), so it runs on all cores or all Dask workers.
        fn and items are pickled: keep them small (paths, arrays), and fn pure (it may be re-run)."""
        if self.executor is None:
            return [fn(item) for item in items]
        return self.executor.map(fn, items, progress=self.progress, label=label, sizes=sizes)

    def units(self, source: BatchSource) -> list[Any]:
        """The source's ordered work units (curate.engine.units); each is a BatchSource with `index`,
        `rows`, `ordinal_range` and `batches(columns)`."""
        from curate.engine.units import plan_units

        return plan_units(source, self.unit_rows)

    @property
    def text_column(self) -> str:
        return self.columns.text

    @property
    def id_column(self) -> str:
        return self.columns.id


class Stage:
    """Base class: subclasses set `kind`, take keyword options in `__init__` (which stores them,
    nothing else) and declare their accepted values in `option_constraints`, override
    `transform` and, when they need the whole corpus, `fit` (with `needs_fit = True`)."""

    kind: ClassVar[str] = ""
    needs_fit: ClassVar[bool] = False
    # Top-level names of OUT this stage may write besides kept/ and removed/ (curate.output.layout).
    side_outputs: ClassVar[tuple[str, ...]] = ()
    # Every `__init__` option's accepted values, declared once (curate.stages.constraints): a
    # value is valid when any constraint in its list accepts it. `option_rules` holds the
    # checks across options. `from_options` and `validate_options` apply both; `__init__` only stores.
    option_constraints: ClassVar[dict[str, list[Constraint]]] = {}
    option_rules: ClassVar[list[Together]] = []

    def fit(self, source: BatchSource, ctx: StageContext) -> Stage:
        return self

    def transform(self, batch: pa.RecordBatch, ctx: StageContext) -> tuple[pa.RecordBatch, pa.RecordBatch]:
        raise NotImplementedError

    def finish(self, ctx: StageContext) -> None:
        """Called once after the last batch: write side outputs (centroids, schedules)."""

    # -- Facts a transform finds besides kept and removed rows --------------------------------
    #
    # A stage that decides row by row needs no fit pass over the corpus, but it may still have to
    # sum up what it found (decontaminate: every matched (row, item) pair, per-set counts). Such a
    # stage names the facts' Arrow schema in `side_schema` and returns them from
    # `transform_with_side` as a third table; the task writes them beside the unit's parts and
    # publishes them together (a task re-run after its worker died finds the unit done and
    # counts it once), and the runner hands every unit's, in input order, to `gather_side`
    # before `finish`.
    side_schema: ClassVar[pa.Schema | None] = None

    def transform_with_side(
        self, batch: pa.RecordBatch, ctx: StageContext
    ) -> tuple[pa.RecordBatch, pa.RecordBatch, pa.Table]:
        raise NotImplementedError

    def gather_side(self, side: pa.Table, ctx: StageContext) -> None:
        """Called once on the driver with every unit's side table, in input order."""

    # -- How a fit spreads its work (curate/runner.py runs it on any executor) ---------------
    #
    # Every executor (this process, `--jobs N` processes, Dask) runs the same tasks over the
    # source's ordered work units (`ctx.units(source)`). A stage fits in one of two ways:
    #
    # A. The map-reduce protocol, when the stage overrides `fit_shard`:
    #   1. map     `fit_shard(unit, ctx)` as a task per unit (ctx.shard = unit index). Returns
    #              a compact, picklable partial (arrays, not rows).
    #   2. shuffle (only if `fit_buckets(ctx) > 0`) `fit_shard` returns a list of exactly that
    #              many pieces, piece b holding the keys that hash to bucket b (written to files
    #              in the stage's work dir); then `fit_reduce(b, pieces, ctx)` runs as a task
    #              per bucket with the pieces of every unit, in input order.
    #   3. merge   `fit_merge(partials, source, ctx)` on the driver, with the partials in unit
    #              order, or the reduced results in bucket order. It sets the fitted `*_`
    #              attributes; `IdLookup.collect(source, rows, ctx)` runs one task per unit.
    # B. Its own `fit(source, ctx)` on the driver that sends every piece of per-row work
    #    through `ctx.map(fn, items)` (several rounds where the algorithm needs them: minhash
    #    sketches per unit, buckets and verification per bucket; prototypes k-means on a
    #    sample on the driver, then distances per unit).
    #
    # Contract: the fitted state, and so every output, is the same whatever the number of
    # units, buckets or workers and whatever order tasks finish in: pick representatives by
    # row ordinal (ROW_COLUMN), never by arrival order; make the result of a reduce independent
    # of the bucket count. Tasks may be re-run after a worker dies, so they must be pure
    # functions of their inputs (write nothing, or write under ctx.work_dir only, under unique
    # temp names renamed into place). tests/test_executors.py checks every registered kind.
    #
    # Transform under an executor: each task gets its own unpickled copy of the fitted stage
    # (keep fitted state picklable and compact: a np.memmap pickles as a full in-memory copy,
    # so keep its path under ctx.work_dir and reopen it lazily) and calls `transform` on its
    # unit's batches; `finish(ctx)` runs once, on the driver, after every unit is written. A
    # stage that writes side outputs during transform must name them by ctx.shard and must
    # not count on state carried from one unit to another.

    def fit_shard(self, source: BatchSource, ctx: StageContext) -> Any:
        """Map step of the optional map-reduce fit (see above)."""
        raise NotImplementedError

    def fit_buckets(self, ctx: StageContext) -> int:
        """How many shuffle buckets `fit_shard` splits its partial into; 0 means no shuffle."""
        return 0

    def fit_reduce(self, bucket: int, pieces: list[Any], ctx: StageContext) -> Any:
        """Reduce step for one shuffle bucket, on a worker."""
        raise NotImplementedError

    def fit_merge(self, partials: list[Any], source: BatchSource, ctx: StageContext) -> Stage:
        """Merge step on the driver: set the fitted state from the ordered partials."""
        raise NotImplementedError

    @classmethod
    def supports_shard_fit(cls) -> bool:
        """True when the stage implements the map-reduce fit (it overrides `fit_shard`)."""
        return cls.fit_shard is not Stage.fit_shard

    @classmethod
    def option_names(cls) -> list[str]:
        params = inspect.signature(cls.__init__).parameters
        return [n for n, p in params.items() if n != "self" and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]

    @classmethod
    def option_defaults(cls) -> dict[str, Any]:
        params = inspect.signature(cls.__init__).parameters
        return {
            n: p.default
            for n, p in params.items()
            if n in cls.option_names() and p.default is not inspect.Parameter.empty
        }

    @classmethod
    def from_options(cls, options: dict[str, Any], where: str = "pipeline") -> Stage:
        """Build from user options, with one-line errors that list what is valid."""
        valid = cls.option_names()
        unknown = sorted(set(options) - set(valid))
        if unknown:
            raise UsageError(
                f"stage '{cls.kind}' has no option {', '.join(repr(u) for u in unknown)}",
                path=where,
                fix=f"valid options for '{cls.kind}': {', '.join(valid) or 'none'}",
            )
        check_options(cls, options, where)
        return cls(**options)

    def validate_options(self, where: object | None = None) -> None:
        """The check `from_options` makes, on a stage built directly (`MinHashDedup(ngram=0)`):
        `__init__` only stores, so the runner calls this before the stage fits."""
        check_options(type(self), self.get_params(), where)

    def get_params(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.option_names() if hasattr(self, name)}


# ---------------------------------------------------------------------------------------
# Registry: a stage kind is the module name under curate/stages, which defines STAGE.


def available_kinds() -> list[str]:
    import curate.stages as package

    return sorted(
        m.name
        for m in pkgutil.iter_modules(package.__path__)
        if not m.name.startswith("_") and m.name not in _NOT_STAGES
    )


def all_side_outputs() -> tuple[str, ...]:
    """The top-level names every registered stage kind may write into an output."""
    names: set[str] = set()
    for kind in available_kinds():
        try:
            names.update(stage_class(kind).side_outputs)
        except UsageError:  # a kind whose optional package is missing writes nothing
            continue
    return tuple(sorted(names))


def stage_class(kind: str, where: str = "pipeline") -> type[Stage]:
    kinds = available_kinds()
    if kind not in kinds:
        raise UsageError(f"unknown stage kind '{kind}'", path=where, fix=f"use one of: {', '.join(kinds)}")
    try:
        module = importlib.import_module(f"curate.stages.{kind}")
    except ImportError as exc:
        raise UsageError(
            f"stage '{kind}' needs a package that is not installed ({exc.name or exc})",
            path=where,
            fix=f"pip install {exc.name or 'the missing package'}",
        ) from None
    return module.STAGE


# ---------------------------------------------------------------------------------------
# Small helpers most stages need.


def split_batch(batch: pa.RecordBatch, remove_mask: np.ndarray) -> tuple[pa.RecordBatch, pa.RecordBatch]:
    """(kept rows, removed rows) of a batch by a boolean mask."""
    mask = pa.array(remove_mask, pa.bool_())
    return batch.filter(pc.invert(mask)), batch.filter(mask)


def row_ordinals(batch: pa.RecordBatch) -> np.ndarray:
    return batch.column(ROW_COLUMN).to_numpy(zero_copy_only=False).astype(np.int64, copy=False)


class IdLookup:
    """Ids of selected row ordinals, gathered in one streaming pass over (id, ordinal) only.

    Lets `transform` name a representative that lives in another batch or shard without the
    stage holding every id in memory."""

    def __init__(self, ordinals: np.ndarray, ids: pa.Array):
        order = np.argsort(ordinals, kind="stable")
        self._ordinals = np.asarray(ordinals, dtype=np.int64)[order]
        self._ids = ids.take(pa.array(order)) if len(ids) else ids

    @classmethod
    def collect(cls, source: BatchSource, ordinals: np.ndarray, ctx: StageContext) -> IdLookup:
        """One task per work unit, each given only the wanted ordinals in its range."""
        wanted = np.unique(np.asarray(ordinals, dtype=np.int64))
        jobs = []
        for unit in ctx.units(source) if len(wanted) else []:
            low, high = unit.ordinal_range
            mine = wanted[np.searchsorted(wanted, low) : np.searchsorted(wanted, high, side="right")]
            if len(mine):
                jobs.append((unit, mine))
        found = ctx.map(_ScanIds(ctx.id_column), jobs)
        rows = np.concatenate([f[0] for f in found]) if found else np.empty(0, np.int64)
        ids = pa.concat_arrays([f[1] for f in found]) if found else pa.array([], pa.string())
        if len(rows) != len(wanted):
            raise RuntimeError(f"id lookup found {len(rows)} of {len(wanted)} rows")
        return cls(rows, ids)

    def __call__(self, ordinals: np.ndarray) -> pa.Array:
        pos = np.searchsorted(self._ordinals, ordinals)
        return self._ids.take(pa.array(pos))


@dataclass(frozen=True)
class _ScanIds:
    id_column: str

    def __call__(self, job: tuple[BatchSource, np.ndarray]) -> tuple[np.ndarray, pa.Array]:
        return scan_ids(job[0], job[1], self.id_column)


def scan_ids(source: BatchSource, wanted: np.ndarray, id_column: str) -> tuple[np.ndarray, pa.Array]:
    """(ordinals, string ids) of the rows of `source` whose ordinal is in the sorted `wanted`."""
    found_rows: list[np.ndarray] = []
    found_ids: list[pa.Array] = []
    for batch in source.batches(columns=[id_column]):
        rows = row_ordinals(batch)
        hit = sorted_member(wanted, rows)
        if hit.any():
            found_rows.append(rows[hit])
            found_ids.append(_string_ids(batch.column(id_column)).filter(pa.array(hit)))
    rows = np.concatenate(found_rows) if found_rows else np.empty(0, np.int64)
    ids = pa.concat_arrays(found_ids) if found_ids else pa.array([], pa.string())
    return rows, ids


def _string_ids(ids: pa.Array) -> pa.Array:
    from curate.output.ledger import ids_as_strings

    return ids_as_strings(ids)


def sorted_member(sorted_values: np.ndarray, query: np.ndarray) -> np.ndarray:
    """np.isin for a sorted, unique `sorted_values`, without re-sorting it each call."""
    if len(sorted_values) == 0:
        return np.zeros(len(query), dtype=bool)
    pos = np.searchsorted(sorted_values, query)
    pos[pos == len(sorted_values)] = 0
    return sorted_values[pos] == query


def drop_fitted_duplicates(
    batch: pa.RecordBatch,
    removed_sorted: np.ndarray,
    representatives: np.ndarray,
    representative_ids: IdLookup,
    *,
    stage: str,
    reason: str,
    id_column: str,
    scores: np.ndarray | None = None,
) -> tuple[pa.RecordBatch, pa.RecordBatch]:
    """The transform every dedup stage shares: rows whose ordinal a fit marked as removed
    (`removed_sorted`, ascending, aligned with `representatives` and `scores`) go to the
    ledger with the id of the row they duplicate; the rest stay."""
    from curate.output.ledger import empty_ledger, removed_rows

    rows = row_ordinals(batch)
    is_dup = sorted_member(removed_sorted, rows)
    if not is_dup.any():
        return batch, empty_ledger()
    kept, removed = split_batch(batch, is_dup)
    where = np.searchsorted(removed_sorted, rows[is_dup])
    reps = representative_ids(representatives[where])
    score = None if scores is None else scores[where]
    return kept, removed_rows(removed.column(id_column), stage, reason, duplicate_of=reps, score=score)
