"""Loss-based difficulty: per-sample loss, SeTa loss clusters and schedule, optional pruning.

Losses come from a user column (`loss_column`) or from the hashed n-gram proxy classifier
trained here on `label_column`, out of fold (a sample's loss is never measured by a model
that trained on it). Kept rows gain `loss` and `loss_cluster` (0 = easiest); the run root
gains `seta_schedule.json`, the clusters each epoch of a SeTa run would train on.
`keep = "hard" | "easy"` with `fraction` prunes by loss (EL2N-style). Null labels or losses
are an error unless `null_labels = "remove"`, which sends those rows to the ledger.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curate.algorithms.loss_clusters import SeTaConfig, kmeans_1d, prune_by_loss, pruned_size, schedule
from curate.errors import UsageError
from curate.io import mirror
from curate.io.atomic import atomic_path, atomic_write_json
from curate.output.ledger import empty_ledger, removed_rows
from curate.stages.base import BatchSource, Stage, StageContext, row_ordinals, split_batch
from curate.stages.constraints import Interval, Options, Text, Together

SCHEDULE_FILE = "seta_schedule.json"
_KEEP = 0
_REASONS = {1: "pruned_easy", 2: "pruned_hard", 3: "null_label"}


def _seta_fits(options: dict[str, Any]) -> bool:
    """SeTaConfig's own check, so a rule it gains across its fields holds at parse time too."""
    try:
        SeTaConfig(**{name: options[name] for name in ("epochs", "prune_ratio", "groups", "window_scale", "delta")})
    except ValueError:
        return False
    return True


class LossClusters(Stage):
    kind = "loss_clusters"
    side_outputs = (SCHEDULE_FILE,)
    needs_fit = True
    option_constraints = {
        "loss_column": [Text()],
        "label_column": [Text()],
        "keep": [Options(("hard", "easy", "none"))],
        "fraction": [Interval(float, 0, 1, closed="right")],
        # SeTa's knobs, with the ranges SeTaConfig accepts
        "epochs": [Interval(int, 1, None)],
        "groups": [Interval(int, 1, None)],
        "window_scale": [Interval(float, 0, 1, closed="right")],
        "delta": [Interval(float, 0, 1)],
        "prune_ratio": [Interval(float, 0, 1, closed="left")],
        # the proxy classifier (label_column)
        "proxy_epochs": [Interval(int, 1, None)],
        "folds": [Interval(int, 2, None)],
        "num_buckets": [Interval(int, 2, None)],
        "ngrams": [Interval(int, 1, None)],
        "null_labels": [Options(("error", "remove"))],
        "torch_threads": [Interval(int, 1, None)],
    }
    option_rules = [
        Together(
            "loss_column",
            lambda o: bool(o["loss_column"]) != bool(o["label_column"]),
            "a column when label_column is empty and empty when it is set (here label_column = {label_column!r})",
            fix='set exactly one of loss_column = "COLUMN" (your per-sample losses) or label_column = "COLUMN" (train a proxy classifier on it)',
        ),
        Together(
            "fraction",
            lambda o: o["keep"] != "none" or o["fraction"] >= 1.0,
            '1.0 when keep = "none" (pruning needs keep = "hard" or "easy")',
            fix='set fraction = 1.0, or keep = "hard" (abundant data) or "easy" (scarce data)',
        ),
        Together(
            "epochs",
            _seta_fits,
            "a SeTa schedule that SeTaConfig accepts with groups = {groups}, window_scale = {window_scale}, delta = {delta}, prune_ratio = {prune_ratio}",
        ),
    ]

    def __init__(
        self,
        *,
        loss_column: str = "",
        label_column: str = "",
        keep: str = "none",
        fraction: float = 1.0,
        epochs: int = 10,
        groups: int = 10,
        window_scale: float = 0.5,
        delta: float = 0.875,
        prune_ratio: float = 0.0,
        proxy_epochs: int = 3,
        folds: int = 5,
        num_buckets: int = 1 << 18,
        ngrams: int = 2,
        null_labels: str = "error",
        torch_threads: int = 1,
    ):
        self.loss_column = loss_column
        self.label_column = label_column
        self.keep = keep
        self.fraction = fraction
        self.epochs = epochs
        self.groups = groups
        self.window_scale = window_scale
        self.delta = delta
        self.prune_ratio = prune_ratio
        self.proxy_epochs = proxy_epochs
        self.folds = folds
        self.num_buckets = num_buckets
        self.ngrams = ngrams
        self.null_labels = null_labels
        self.torch_threads = torch_threads

    # -- fit: the runner's map-reduce protocol ------------------------------------------
    # Map (a task per work unit): read the unit's losses, or hash its texts into n-gram bags
    # for the proxy. Merge (driver): the per-sample losses in input order (17 bytes a row),
    # the proxy's k-fold training when there is one, pruning, 1-D k-means and the schedule.

    def fit_shard(self, source: BatchSource, ctx: StageContext) -> tuple:
        self._check_column(source.schema, ctx)
        if self.loss_column:
            return self._read_losses(source, ctx)
        return self._hash_texts(source, ctx)

    def fit_merge(self, partials: list[tuple], source: BatchSource, ctx: StageContext) -> LossClusters:
        column = self._check_column(source.schema, ctx)
        if self.loss_column:
            ordinals, losses, valid = (
                _cat([p[i] for p in partials], dtype) for i, dtype in enumerate((np.int64, np.float64, bool))
            )
            ctx.info["fit"] = (
                f"losses read per unit on workers ({len(partials)} units); pruning, 1-D k-means and the schedule on the driver"
            )
        else:
            ordinals, losses, valid = self._proxy_losses(partials, source, ctx)
            ctx.info["fit"] = (
                f"texts hashed per unit on workers ({len(partials)} units), the proxy's {max(self.folds, 2)} folds trained as tasks; "
                "pruning, 1-D k-means and the schedule on the driver"
            )
        self._check_nulls(int((~valid).sum()), column, ctx)

        codes = np.where(valid, _KEEP, 3).astype(np.int8)
        valid_rows = np.nonzero(valid)[0]
        pruned = prune_by_loss(losses[valid_rows], self.keep, self.fraction)
        codes[valid_rows[pruned]] = 1 if self.keep == "hard" else 2
        kept_rows = np.nonzero(codes == _KEEP)[0]
        clusters = np.full(len(ordinals), -1, np.int32)
        labels, centroids = kmeans_1d(losses[kept_rows], self.groups, seed=ctx.seed)
        clusters[kept_rows] = labels

        self.ordinals_ = ordinals
        self.losses_ = losses
        self.codes_ = codes
        self.clusters_ = clusters
        self.centroids_ = centroids
        self.schedule_ = self._schedule(losses[kept_rows], labels, centroids)
        ctx.info.update(
            loss_source=f"column {self.loss_column}" if self.loss_column else f"proxy on {self.label_column}",
            pruned=int(((codes == 1) | (codes == 2)).sum()),
            null_labels=int((codes == 3).sum()),
            cluster_sizes=np.bincount(labels, minlength=self.groups).tolist(),
            seta_visit_fraction=self.schedule_["visit_fraction"],
        )
        return self

    def _check_column(self, schema: pa.Schema, ctx: StageContext) -> str:
        column = self.loss_column or self.label_column
        if column not in schema.names:
            option = "loss_column" if self.loss_column else "label_column"
            raise UsageError(
                f"stage '{ctx.name}': no column {column!r} in the input",
                fix=f"set {option} to one of: {', '.join(n for n in schema.names if not n.startswith('__'))}",
            )
        return column

    def _read_losses(self, source: BatchSource, ctx: StageContext) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        rows, values, valid = [], [], []
        with ctx.progress.task(f"{ctx.name}: reading losses", total=source.num_rows) as bar:
            for batch in source.batches(columns=[self.loss_column]):
                col = batch.column(self.loss_column)
                if not (pa.types.is_floating(col.type) or pa.types.is_integer(col.type)):
                    raise UsageError(
                        f"loss column {self.loss_column!r} has type {col.type}",
                        fix="use a numeric per-sample loss column",
                    )
                arr = col.cast(pa.float64()).to_numpy(zero_copy_only=False)
                ok = np.asarray(pc.is_valid(col)) & ~np.isnan(arr)
                if np.isinf(arr[ok]).any():
                    raise UsageError(
                        f"loss column {self.loss_column!r} has infinite values", fix="clip or drop infinite losses"
                    )
                rows.append(row_ordinals(batch))
                values.append(np.where(ok, arr, 0.0))
                valid.append(ok)
                bar.advance(batch.num_rows)
        return _cat(rows, np.int64), _cat(values, np.float64), _cat(valid, bool)

    def _hash_texts(self, source: BatchSource, ctx: StageContext) -> tuple[np.ndarray, pa.ChunkedArray, object]:
        """(ordinals, labels, hashed n-gram bags) of one unit, for the proxy."""
        from curate.training.features import concat_bags, hashed_ngram_bags

        rows, label_chunks, bags = [], [], []
        for batch in source.batches(columns=[ctx.text_column, self.label_column]):
            rows.append(row_ordinals(batch))
            label_chunks.append(batch.column(self.label_column))
            bags.append(hashed_ngram_bags(batch.column(ctx.text_column), self.num_buckets, self.ngrams, ctx.seed))
        kind = source.schema.field(self.label_column).type
        labels = pa.chunked_array(label_chunks, type=kind)
        return _cat(rows, np.int64), labels, concat_bags(bags)

    def _proxy_losses(
        self, partials: list[tuple], source: BatchSource, ctx: StageContext
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        from curate.training.features import concat_bags
        from curate.training.proxy import ProxyConfig, encode_labels, fold_assignment

        rows = [p[0] for p in partials]
        label_chunks = [chunk for p in partials for chunk in p[1].chunks]
        bags = [p[2] for p in partials]
        ordinals = _cat(rows, np.int64)
        labels = (
            pa.chunked_array(label_chunks, type=source.schema.field(self.label_column).type)
            if label_chunks
            else pa.chunked_array([], pa.string())
        )
        valid = np.asarray(pc.is_valid(labels)) if len(labels) else np.zeros(0, bool)
        losses = np.zeros(len(ordinals), np.float64)
        train = np.nonzero(valid)[0]
        if len(train) == 0:
            return ordinals, losses, valid
        codes, classes = encode_labels(labels.filter(pa.array(valid)))
        if classes < 2:
            raise UsageError(
                f"label column {self.label_column!r} has a single class",
                fix="name a column with at least two distinct labels, or pass loss_column",
            )
        config = ProxyConfig(num_buckets=self.num_buckets)
        all_bags = concat_bags(bags)
        train_bags = all_bags if len(train) == len(ordinals) else all_bags.take(train)
        # One task per fold: each trains on the other folds' bags, shared through the work dir.
        shared = Path(ctx.work_dir) / "proxy"
        arrays = {
            "indices": train_bags.indices,
            "offsets": train_bags.offsets,
            "codes": codes,
            "fold_of": fold_assignment(len(train), self.folds, ctx.seed),
        }
        for name, array in arrays.items():
            with atomic_path(shared / f"{name}.npy", unique=True) as tmp, open(tmp, "wb") as handle:
                np.save(handle, array)
        folds = max(self.folds, 2)
        task = ProxyFold(str(shared), int(codes.max()) + 1, self.proxy_epochs, ctx.seed, config, self.torch_threads)
        oof = np.empty(len(train), np.float32)
        for held_out, held_out_losses in ctx.map(
            task, range(folds), label=f"{ctx.name}: proxy model ({folds} folds x {self.proxy_epochs} epochs)"
        ):
            oof[held_out] = held_out_losses
        losses[train] = oof
        ctx.info.update(proxy_classes=classes, proxy_folds=self.folds, proxy_epochs=self.proxy_epochs)
        return ordinals, losses, valid

    def _check_nulls(self, nulls: int, column: str, ctx: StageContext) -> None:
        if nulls and self.null_labels == "error":
            what = "loss" if self.loss_column else "label"
            raise UsageError(
                f"stage '{ctx.name}': {nulls} rows have a null {what} in {column!r}",
                fix='fill them, or set null_labels = "remove" (--set null_labels=\'"remove"\') to send them to the ledger as "null_label"',
            )

    def _schedule(self, losses: np.ndarray, labels: np.ndarray, centroids: np.ndarray) -> dict:
        """The SeTa plan over the kept rows, with the rows each epoch would visit
        (expected counts when random pruning is on)."""
        config = SeTaConfig(
            epochs=self.epochs,
            prune_ratio=self.prune_ratio,
            groups=self.groups,
            window_scale=self.window_scale,
            delta=self.delta,
        )
        n = len(losses)
        sizes = np.bincount(labels, minlength=self.groups) if n else np.zeros(self.groups, np.int64)
        keep_share = pruned_size(n, self.prune_ratio) / n if n else 0.0
        plan = schedule(config)
        for entry in plan:
            if entry["mode"] == "full":
                entry["rows"] = n
            elif entry["mode"] == "annealed":
                entry["rows"] = pruned_size(n, self.prune_ratio)
            else:
                entry["rows"] = int(round(sizes[entry["clusters"]].sum() * keep_share))
        visits = sum(e["rows"] for e in plan)
        clusters = []
        for j in range(self.groups):
            member = losses[labels == j]
            clusters.append(
                {
                    "cluster": j,
                    "rows": int(sizes[j]),
                    "centroid": float(centroids[j]) if j < len(centroids) and np.isfinite(centroids[j]) else None,
                    "loss_min": float(member.min()) if len(member) else None,
                    "loss_max": float(member.max()) if len(member) else None,
                }
            )
        return {
            "algorithm": "SeTa (Zhou et al., CVPR 2025): random pruning, 1-D k-means loss clusters easy to hard, sliding window, annealing",
            "epochs": self.epochs,
            "groups": self.groups,
            "window": config.window,
            "window_scale": self.window_scale,
            "delta": self.delta,
            "prune_ratio": self.prune_ratio,
            "rows": n,
            "clusters": clusters,
            "plan": plan,
            "visits": visits,
            "visit_fraction": visits / (n * self.epochs) if n else 0.0,
        }

    # -- transform ------------------------------------------------------------------
    def transform(self, batch: pa.RecordBatch, ctx: StageContext) -> tuple[pa.RecordBatch, pa.RecordBatch]:
        rows = row_ordinals(batch)
        pos = np.searchsorted(self.ordinals_, rows)
        if len(rows) and (pos.max() >= len(self.ordinals_) or not np.array_equal(self.ordinals_[pos], rows)):
            raise RuntimeError("loss_clusters: transform saw rows that fit did not")
        codes = self.codes_[pos]
        remove = codes != _KEEP
        batch = _with_column(batch, "loss", pa.array(self.losses_[pos], pa.float64()))
        batch = _with_column(batch, "loss_cluster", pa.array(self.clusters_[pos], pa.int32()))
        if not remove.any():
            return batch, empty_ledger()
        kept, gone = split_batch(batch, remove)
        gone_codes = codes[remove]
        reasons = [_REASONS[int(c)] for c in gone_codes]
        scores = pa.array(self.losses_[pos][remove], pa.float64(), mask=gone_codes == 3)
        return kept, removed_rows(gone.column(ctx.id_column), ctx.name, reasons, score=scores)

    def finish(self, ctx: StageContext) -> None:
        atomic_write_json(Path(ctx.output_dir) / SCHEDULE_FILE, self.schedule_)


def _with_column(batch: pa.RecordBatch, name: str, values: pa.Array) -> pa.RecordBatch:
    """Add a column, replacing an input column of the same name (e.g. loss_column = "loss")."""
    if name in batch.schema.names:
        return batch.set_column(batch.schema.get_field_index(name), name, values)
    return batch.append_column(name, values)


def _cat(parts: list[np.ndarray], dtype) -> np.ndarray:
    return np.concatenate(parts).astype(dtype, copy=False) if parts else np.empty(0, dtype)


@dataclass(frozen=True)
class ProxyFold:
    """One fold of the proxy's out-of-fold losses (curate.training.proxy.fold_losses), reading
    the bags and labels the driver left in the work dir: (held-out rows, their losses)."""

    shared: str
    num_classes: int
    epochs: int
    seed: int
    config: object
    torch_threads: int

    def __call__(self, fold: int) -> tuple[np.ndarray, np.ndarray]:
        from curate.runtime import torch_threads
        from curate.training.features import Bags
        from curate.training.proxy import fold_losses

        load = lambda name: np.load(mirror.ensure(Path(self.shared) / f"{name}.npy"), mmap_mode="r")
        bags = Bags(load("indices"), np.array(load("offsets")))
        with torch_threads(self.torch_threads):
            return fold_losses(
                bags,
                np.array(load("codes")),
                np.array(load("fold_of")),
                fold,
                self.num_classes,
                epochs=self.epochs,
                seed=self.seed,
                config=self.config,
            )


STAGE = LossClusters
