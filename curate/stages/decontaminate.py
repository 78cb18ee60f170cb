"""Decontamination: rows that share word n-grams with an evaluation set's items go to the ledger.

A row is contaminated when, with one evaluation item, it shares at least `min_matches` distinct
n-grams or covers at least `min_coverage` of the item's n-grams (`curate.algorithms.ngrams`).
It goes to the ledger with reason `contaminated`, `duplicate_of` = `<set>:<item id>` of the item
it covers most and score = that coverage.

Parallel shape: the driver reads the evaluation sets and builds the n-gram index once (they are
small: about 50 bytes per distinct n-gram, prefilter included); the index travels with the
fitted stage, which every worker unpickles once. The decision is per row, so the corpus is read
once: each unit's transform matches its batches, writes kept and removed rows, and keeps its
qualifying (row, item) pairs as the unit's side table. A separate matching pass read every row
a second time: without it, a `--jobs 1` run over 201 MB of short texts went from 10.5 s to
8.9 s (`python -m bench.decontaminate`, 2-core AMD EPYC). The driver sums the side
tables up per set at the end. Memory stays flat in corpus size: a unit holds one batch and its pairs.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from curate.algorithms.ngrams import best_per_text, build_index, contaminated, match_texts
from curate.io.atomic import atomic_path, atomic_write_json
from curate.io.eval_sets import EvalSetSpec, check_eval_set, load_eval_set
from curate.output.ledger import empty_ledger, ids_as_strings
from curate.stages.base import BatchSource, IdLookup, Stage, StageContext, drop_fitted_duplicates, row_ordinals
from curate.stages.constraints import Interval, IsNone, ListOf, Options, Rule, Together

DECONTAMINATION_DIR = "decontamination"
REASON = "contaminated"
_JSON_SLICE_ROWS = 1 << 18  # matched pairs rendered to JSON at once (about 40 MB of text)

# Every qualifying (row, item) pair a transform found: the unit's side table (Stage.side_schema).
PAIR_SCHEMA = pa.schema(
    [
        ("row", pa.int64()),
        ("row_id", pa.string()),
        ("item", pa.int64()),
        ("ngrams", pa.int64()),
        ("coverage", pa.float64()),
    ]
)


def _distinct_names(options: dict[str, Any]) -> bool:
    names = [t.get("name") for t in options["eval_sets"] or [] if isinstance(t, dict)]
    return len(names) == len(set(names))


class Decontaminate(Stage):
    kind = "decontaminate"
    side_outputs = (DECONTAMINATION_DIR,)
    side_schema = PAIR_SCHEMA
    needs_fit = True  # the index, built once on the driver (no pass over the corpus)
    option_constraints = {
        "eval_sets": [
            ListOf(
                Rule(
                    check_eval_set,
                    "a table with name and path (optional: text_columns, id_column, format)",
                    of=dict,
                    invalid=[{}, {"name": "a:b", "path": "x"}, {"name": "x", "path": "x", "columns": ["text"]}],
                )
            ),
            IsNone(),
        ],
        "ngram": [Interval(int, 1, 256)],
        "min_matches": [Interval(int, 0, None)],
        "min_coverage": [Interval(float, 0.0, 1.0)],
        "short_items": [Options(("whole", "skip"))],
    }
    option_rules = [
        Together(
            "eval_sets",
            lambda o: bool(o["eval_sets"]),
            "a non-empty list of evaluation sets",
            fix='add one: [[stage.eval_sets]] name = "NAME" path = "PATH" (or --eval NAME=PATH)',
        ),
        Together(
            "eval_sets",
            _distinct_names,
            "evaluation sets with distinct names",
            fix="give every evaluation set its own name",
        ),
        Together(
            "min_matches",
            lambda o: o["min_matches"] > 0 or o["min_coverage"] > 0,
            "> 0 when min_coverage is 0 (one of the two rules must be on)",
            fix="set min_matches = 1, or min_coverage above 0",
        ),
    ]

    def __init__(
        self,
        *,
        eval_sets: list[dict] | None = None,
        ngram: int = 13,
        min_matches: int = 1,
        min_coverage: float = 0.0,
        short_items: str = "whole",
    ):
        self.eval_sets = eval_sets
        self.ngram = ngram
        self.min_matches = min_matches  # shared distinct n-grams with one item (0: rule off)
        self.min_coverage = min_coverage  # fraction of one item's n-grams (0: rule off)
        self.short_items = short_items  # items under `ngram` words: "whole" (match as a whole) or "skip"

    def fit(self, source: BatchSource, ctx: StageContext) -> Decontaminate:
        """Read the evaluation sets and build their n-gram index, on the driver, once: the
        corpus itself is matched in `transform` (one pass: the decision is per row)."""
        specs = [EvalSetSpec.parse(t) for t in self.eval_sets or []]
        sets = [load_eval_set(s, ctx.columns.storage_options) for s in specs]
        self.index_ = build_index(
            pa.concat_arrays([s.texts for s in sets]), self.ngram, whole_short_items=self.short_items == "whole"
        )
        self.set_names_ = [spec.name for spec in specs]
        self.set_paths_ = [spec.path for spec in specs]
        self.set_sizes_ = np.array([len(s.texts) for s in sets], dtype=np.int64)
        self.item_ids_ = pa.concat_arrays([s.ids for s in sets])
        labels = pa.concat_arrays([pc.binary_join_element_wise(s.name, s.ids, ":") for s in sets])
        self.item_labels_ = IdLookup(np.arange(len(labels)), labels)  # item number -> "<set>:<item id>"
        return self

    def transform(self, batch: pa.RecordBatch, ctx: StageContext) -> tuple[pa.RecordBatch, pa.RecordBatch]:
        kept, removed, _ = self.transform_with_side(batch, ctx)
        return kept, removed

    def transform_with_side(
        self, batch: pa.RecordBatch, ctx: StageContext
    ) -> tuple[pa.RecordBatch, pa.RecordBatch, pa.Table]:
        """Rows that qualify with some item go to the ledger, charged to the item they cover
        most; the side table holds every qualifying (row, item) pair of the batch."""
        texts, items, counts = match_texts(batch.column(ctx.text_column), self.index_)
        ok, coverage = contaminated(counts, self.index_.item_ngrams[items], self.min_matches, self.min_coverage)
        texts, items, counts, coverage = texts[ok], items[ok], counts[ok], coverage[ok]
        if not len(texts):
            return batch, empty_ledger(), PAIR_SCHEMA.empty_table()
        ids = ids_as_strings(batch.column(ctx.id_column))
        side = pa.table(
            {
                "row": row_ordinals(batch)[texts],
                "row_id": ids.take(pa.array(texts)),
                "item": items.astype(np.int64, copy=False),
                "ngrams": counts.astype(np.int64, copy=False),
                "coverage": coverage.astype(np.float64, copy=False),
            },
            schema=PAIR_SCHEMA,
        )
        removed, charged, score = best_per_text(texts, items, counts, coverage)
        kept, ledger = drop_fitted_duplicates(
            batch,
            row_ordinals(batch)[removed],
            charged,
            self.item_labels_,
            stage=ctx.name,
            reason=REASON,
            id_column=ctx.id_column,
            scores=score,
        )
        return kept, ledger, side

    def gather_side(self, side: pa.Table, ctx: StageContext) -> None:
        """Per set: items, items found, rows removed; every pair for OUT/decontamination/."""
        rows = side.column("row").to_numpy()
        items = side.column("item").to_numpy()
        first_item = np.concatenate([[0], np.cumsum(self.set_sizes_)])
        set_of = np.searchsorted(first_item, items, side="right") - 1
        summary = []
        for k, (name, path, items_in_set) in enumerate(
            zip(self.set_names_, self.set_paths_, self.set_sizes_.tolist())
        ):
            mine = set_of == k
            lo, hi = first_item[k], first_item[k + 1]
            summary.append(
                {
                    "name": name,
                    "path": path,
                    "items": int(items_in_set),
                    "items_without_ngrams": int((self.index_.item_ngrams[lo:hi] == 0).sum()),
                    "items_found": int(len(np.unique(items[mine]))),
                    "rows_removed": int(len(np.unique(rows[mine]))),
                }
            )
        self.pairs_ = pa.table(
            {
                "row": side.column("row_id"),
                "set": pa.array(self.set_names_, pa.string()).take(pa.array(set_of, pa.int32())),
                "item": self.item_ids_.take(pa.array(items, pa.int64())),
                "ngrams": side.column("ngrams"),
                "coverage": side.column("coverage"),
            }
        )
        index = self.index_
        self.summary_ = {
            "ngram": self.ngram,
            "min_matches": self.min_matches,
            "min_coverage": self.min_coverage,
            "short_items": self.short_items,
            "index_ngrams": index.ngrams,
            "index_bytes": index.nbytes,
            "rows_removed": int(len(np.unique(rows))),
            "sets": summary,
        }
        ctx.info.update(
            index_ngrams=index.ngrams,
            index_bytes=index.nbytes,
            eval_sets={s["name"]: {k: v for k, v in s.items() if k not in ("name", "path")} for s in summary},
        )

    def finish(self, ctx: StageContext) -> None:
        """OUT/decontamination/<stage>/summary.json (per set: items, items found, rows removed)
        and matches.json (every matched (row id, set, item id) pair, in row order)."""
        folder = Path(ctx.output_dir) / DECONTAMINATION_DIR / ctx.name
        atomic_write_json(folder / "summary.json", {"stage": ctx.name, **self.summary_})
        with atomic_path(folder / "matches.json", unique=True) as tmp, open(tmp, "wb") as handle:
            write_json_array(pl.from_arrow(self.pairs_), handle)


def write_json_array(frame: pl.DataFrame, handle: BinaryIO) -> None:
    """`frame` as a JSON array, one compact object a line: a leaky corpus has millions of
    pairs, and indented JSON triples the bytes. polars writes the lines as bytes (a JSON line
    holds no raw newline, so turning each newline into a comma and newline makes the array), a
    slice at a time so the copies stay small. 1.14M pairs (167 MB) on a 2-core AMD EPYC: 1.0 s
    of CPU as one str (write_ndjson, str.replace, encode), 0.4 s this way; json.dumps per pair
    is slower still (60k pairs: 0.39 s)."""
    handle.write(b"[\n")
    for start in range(0, len(frame), _JSON_SLICE_ROWS):
        lines = io.BytesIO()
        frame.slice(start, _JSON_SLICE_ROWS).write_ndjson(lines)
        if start:
            handle.write(b",\n")
        handle.write(lines.getvalue()[:-1].replace(b"\n", b",\n"))
    handle.write(b"\n]\n" if len(frame) else b"]\n")


STAGE = Decontaminate
