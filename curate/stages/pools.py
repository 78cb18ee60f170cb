"""Pools stage: add `pool` (int32, 0 best) from exact quantiles of a score column.

Parallel shape (the runner's map-reduce fit): each work unit reads its scores as a task and
sends them back (4 bytes a row for a float32 column such as `proto_distance`, 8 otherwise);
the driver sorts the gathered scores once for the exact edges. Exact quantiles need every
score in one place; at 4-8 bytes a row that is 4-8 MB per million rows, less than the
transform's own batches."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curate.algorithms.pools import (
    assign_pools,
    assign_pools_by_group,
    pool_edges,
    pool_edges_by_group,
    pool_totals,
    whitespace_tokens,
)
from curate.errors import UsageError
from curate.output.ledger import empty_ledger
from curate.output.manifest import read_manifest
from curate.output.read import prototypes_keep
from curate.stages._balance import fit_group_values, group_ids
from curate.stages.base import BatchSource, Stage, StageContext
from curate.stages.constraints import Boolean, Interval, IsNone, Options, Text
from curate.stages.prototypes import with_columns

_LOWER_IS_BETTER_HINTS = ("loss", "perplexity", "ppl")


def auto_direction(score: str, ctx: StageContext) -> tuple[bool, str]:
    """Whether larger scores are better for a column, and why (for the manifest)."""
    if score == "proto_distance":
        keep = prototypes_keep(read_manifest(ctx.output_dir) or {})
        if keep == "easy":
            return False, "proto_distance with prototypes keep = easy in this run: closer to a prototype is better"
        source = (
            f"prototypes keep = {keep} in this run"
            if keep
            else "no prototypes stage in this run, assuming keep = hard"
        )
        return True, f"proto_distance with {source}: harder (farther from a prototype) is better"
    lowered = score.lower()
    if any(hint in lowered for hint in _LOWER_IS_BETTER_HINTS):
        return False, f"'{score}' looks like a loss or perplexity: lower is better"
    return True, f"'{score}' is taken as a quality score: higher is better (set higher_is_better = false otherwise)"


class Pools(Stage):
    kind = "pools"
    needs_fit = True
    option_constraints = {
        "score": [Text(nonempty=True)],  # a numeric column
        "pools": [Interval(int, 1, None)],
        "higher_is_better": [Boolean(), Options(("auto",)), IsNone()],  # "auto"/None: auto_direction
        "balance_column": [Text()],
        "tokenizer": [Text(nonempty=True)],  # "whitespace" or a Hugging Face tokenizer name/path, if installed
    }

    def __init__(
        self,
        *,
        score: str = "proto_distance",
        pools: int = 4,
        higher_is_better: bool | str | None = None,
        balance_column: str = "",
        tokenizer: str = "whitespace",
    ):
        self.tokenizer = (
            tokenizer  # tokens per pool go to the manifest: plans in tokens (curate allocate --budget-unit tokens)
        )
        self.score = score
        self.pools = pools
        self.higher_is_better = higher_is_better
        self.balance_column = (
            balance_column  # e.g. "proto_cluster" or a label: pools within each value (curate.stages._balance)
        )

    def fit_shard(self, source: BatchSource, ctx: StageContext) -> tuple[np.ndarray, np.ndarray]:
        """This unit's scores, in the narrowest dtype that holds them exactly (NaN = missing), and
        its tokens per row (int32: 4 more bytes a row)."""
        if source.num_rows == 0:  # an empty stage's parts may not carry the columns it adds
            return np.empty(0), np.empty(0, np.int32)
        kind = self._check_column(source.schema)
        text = ctx.text_column if ctx.text_column in source.schema.names else None
        count = _token_counter(self.tokenizer)
        scores, tokens = [], []
        for b in source.batches(columns=[self.score, *([text] if text else [])]):
            scores.append(_scores(b.column(self.score)))
            tokens.append(count(b.column(text)) if text else np.zeros(b.num_rows, np.int64))
        values = np.concatenate(scores or [np.empty(0)])
        exact_in_float32 = kind in (pa.float32(), pa.float16(), pa.int8(), pa.int16(), pa.uint8(), pa.uint16())
        counts = np.concatenate(tokens or [np.empty(0, np.int64)]).astype(np.int32)
        return (values.astype(np.float32) if exact_in_float32 else values), counts

    def fit_merge(self, partials: list[np.ndarray], source: BatchSource, ctx: StageContext) -> Pools:
        if source.num_rows:
            self._check_column(source.schema)
        if isinstance(self.higher_is_better, bool):
            self.higher_is_better_, reason = self.higher_is_better, "as configured"
        else:
            self.higher_is_better_, reason = auto_direction(self.score, ctx)
        values = np.concatenate([p[0] for p in partials]).astype(np.float64, copy=False) if partials else np.empty(0)
        tokens = np.concatenate([p[1] for p in partials]).astype(np.int64) if partials else np.empty(0, np.int64)
        if 0 < values.size < self.pools:  # 100,000 pools over 3,000 rows: thousands of empty pools
            raise UsageError(
                f"pools: {self.pools} pools for {values.size} rows would leave pools empty",
                fix="set pools to at most the number of rows (4 to 10 is usual)",
            )
        # balance_column: the group of each row is read here (one small column, in input order)
        self.groups_ = fit_group_values(source, self.balance_column) if self.balance_column else None
        if self.groups_ is None:
            self.edges_ = pool_edges(values, self.pools, self.higher_is_better_)
            assigned = assign_pools(values, self.edges_, self.higher_is_better_)
            counts = np.bincount(assigned, minlength=self.pools)
        else:
            ids = np.concatenate(
                [
                    group_ids(b.column(self.balance_column), self.groups_)
                    for b in source.batches(columns=[self.balance_column])
                ]
                or [np.empty(0, np.int64)]
            )
            self.edges_ = pool_edges_by_group(values, ids, self.pools, self.higher_is_better_)
            assigned = assign_pools_by_group(values, ids, self.edges_, self.higher_is_better_)
            counts = np.bincount(assigned, minlength=self.pools)
        ctx.info.update(
            score=self.score,
            pools=self.pools,
            higher_is_better=self.higher_is_better_,
            direction_reason=reason,
            edges=None
            if self.groups_ is not None
            else [float(e) if self.higher_is_better_ else -float(e) for e in self.edges_],
            pool_rows=counts.tolist(),
            pool_tokens=pool_totals(assigned, tokens, self.pools).tolist(),
            tokenizer=self.tokenizer,
            balance_column=self.balance_column or None,
            missing_scores=int(np.isnan(values).sum()),
            fit=f"scores read per unit on workers ({len(partials)} units), exact quantiles on the driver over {len(values)} gathered scores",
        )
        return self

    def _check_column(self, schema: pa.Schema) -> pa.DataType:
        if self.score not in schema.names:
            names = ", ".join(n for n in schema.names if not n.startswith("__"))
            raise UsageError(
                f"pools: no score column {self.score!r} (columns: {names})",
                fix="pass --score with a numeric column, or run a scoring stage first",
            )
        kind = schema.field(self.score).type
        if not (pa.types.is_integer(kind) or pa.types.is_floating(kind)):
            raise UsageError(
                f"pools: score column {self.score!r} has type {kind}, not a number",
                fix="pick a numeric --score column",
            )
        return kind

    def transform(self, batch: pa.RecordBatch, ctx: StageContext) -> tuple[pa.RecordBatch, pa.RecordBatch]:
        if self.groups_ is None:
            pools = assign_pools(_scores(batch.column(self.score)), self.edges_, self.higher_is_better_)
        else:
            pools = assign_pools_by_group(
                _scores(batch.column(self.score)),
                group_ids(batch.column(self.balance_column), self.groups_),
                self.edges_,
                self.higher_is_better_,
            )
        return with_columns(batch, {"pool": pa.array(pools, pa.int32())}), empty_ledger()


def _token_counter(name: str):
    """Tokens per text: whitespace words, or a named tokenizer (transformers, loaded from a local path
    or cache; no download when HF_HUB_OFFLINE=1)."""
    if name == "whitespace":
        return whitespace_tokens
    try:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(name)
    except Exception as exc:  # not installed, not cached, not a tokenizer: one line, exit 2
        raise UsageError(
            f"pools: tokenizer {name!r} cannot be loaded ({type(exc).__name__})",
            fix='use tokenizer = "whitespace", or install transformers and name a local tokenizer',
        ) from None

    def count(texts) -> np.ndarray:
        values = ["" if t is None else t for t in texts.to_pylist()]
        return np.array([len(ids) for ids in tokenizer(values, add_special_tokens=False)["input_ids"]], np.int64)

    return count


def _scores(column: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """float64 scores with nulls as NaN."""
    return pc.cast(column, pa.float64()).to_numpy(zero_copy_only=False).astype(np.float64, copy=False)


STAGE = Pools
