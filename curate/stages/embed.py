"""Embed stage: every row's vector into OUT/embeddings (curate.embeddings.store); removes nothing."""

from __future__ import annotations

import time

import pyarrow as pa

from curate.embeddings.models import (
    BACKENDS,
    DEFAULT_MODEL,
    DTYPES,
    column_of,
    describe,
    validate_device,
    validate_model_name,
)
from curate.embeddings.store import EMBEDDINGS_DIR, embeddings_for, publish
from curate.output.ledger import empty_ledger
from curate.stages.base import BatchSource, Stage, StageContext
from curate.stages.constraints import Interval, Options, Rule, Text

_MODEL_NAMES = "minilm, minilm-static, minilm-fitted, hashing or column:NAME"
MODEL = Rule(validate_model_name, f"a model name: {_MODEL_NAMES}", invalid=["bert", "column:"])


def _stored_or_model_name(model: str) -> None:
    if model:
        validate_model_name(model)


# The stages that reuse an embed stage's vectors: "" takes the store's model (else the default).
STORED_OR_MODEL = Rule(
    _stored_or_model_name,
    f'"" (the stored embeddings\' model) or a model name: {_MODEL_NAMES}',
    invalid=["bert", "column:"],
)


class Embed(Stage):
    """Embed every row into OUT/embeddings; keeps every row (it removes nothing)."""

    kind = "embed"
    needs_fit = True
    side_outputs = (EMBEDDINGS_DIR,)
    option_constraints = {
        "model": [MODEL],
        "cache": [Text()],
        "window": [Interval(int, 1, None)],
        "encode_batch": [Interval(int, 1, None)],
        "device": [Rule(validate_device, "auto, cpu, cuda or cuda:N", invalid=["gpu", "cuda:x"])],
        "backend": [Options(BACKENDS)],
        "dtype": [Options(DTYPES)],
        "fit_rows": [Interval(int, 2, None)],
    }

    def __init__(
        self,
        *,
        model: str = DEFAULT_MODEL,
        cache: str = "",
        window: int = 4096,
        encode_batch: int = 64,
        device: str = "auto",
        backend: str = "torch",
        dtype: str = "auto",
        fit_rows: int = 10_000,
    ):
        self.model = model
        self.cache = cache
        self.window = window
        self.encode_batch = encode_batch
        self.device = device
        self.backend = backend
        self.dtype = dtype
        self.fit_rows = fit_rows  # minilm-fitted: rows of the corpus MiniLM embeds to fit the table on

    def fit(self, source: BatchSource, ctx: StageContext) -> Embed:
        started = time.perf_counter()
        emb = embeddings_for(
            source,
            ctx,
            self.model,
            cache=self.cache,
            window=self.window,
            encode_batch=self.encode_batch,
            write_parts=True,
            keep_vectors=False,
            device=self.device,
            backend=self.backend,
            dtype=self.dtype,
            fit_rows=self.fit_rows,
        )
        if not emb.reused_from_output:
            publish(emb, ctx.output_dir)
        seconds = time.perf_counter() - started
        runs_on = (
            describe(emb.model, device=self.device, backend=self.backend, dtype=self.dtype)
            if column_of(emb.model) is None
            else {}
        )
        ctx.info.update(
            model=emb.model,
            model_version=emb.version,
            dim=emb.dim,
            rows=len(emb.rows),
            reused=emb.reused,
            computed=emb.computed,
            seconds=round(seconds, 3),
            rows_per_second=round(len(emb.rows) / seconds, 1) if seconds > 0 else None,
            **runs_on,
            **({"fitted": emb.fit} if emb.fit else {}),
            fit=f"one task per work unit ({len(emb.paths)} units) embeds and writes its vectors; the driver renames the parts into the store in input order",
        )
        return self

    def transform(self, batch: pa.RecordBatch, ctx: StageContext) -> tuple[pa.RecordBatch, pa.RecordBatch]:
        return batch, empty_ledger()


STAGE = Embed
