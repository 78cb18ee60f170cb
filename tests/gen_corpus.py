"""Small seeded corpora for the reliability tests: text with exact, case/whitespace and
near duplicates spread over several shards (helpers, not tests)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

WORDS = (
    "data curation pipeline shard parquet ledger manifest resume stage kernel package library "
    "python debian manual page option value module function return error warning file directory "
    "memory disk column batch record arrow stream hash duplicate near exact cluster pool score"
).split()


def make_texts(rows: int, seed: int, dup_rate: float = 0.3) -> list[str]:
    """Texts of 3-12 words; about `dup_rate` of rows repeat an earlier text exactly, in
    another case, with extra whitespace, or with one word changed."""
    rng = np.random.default_rng(seed)
    texts: list[str] = []
    for _ in range(rows):
        if texts and rng.random() < dup_rate:
            base = texts[int(rng.integers(len(texts)))]
            variant = int(rng.integers(4))
            if variant == 0:
                text = base
            elif variant == 1:
                text = base.upper()
            elif variant == 2:
                text = "  " + base.replace(" ", "   ") + "\n"
            else:
                words = base.split()
                words[int(rng.integers(len(words)))] = WORDS[int(rng.integers(len(WORDS)))]
                text = " ".join(words)
        else:
            text = " ".join(WORDS[i] for i in rng.integers(len(WORDS), size=int(rng.integers(3, 13))))
        texts.append(text)
    return texts


def write_corpus(
    directory: Path, rows_per_shard: list[int], seed: int = 0, dup_rate: float = 0.3, with_ids: bool = True
) -> Path:
    """Shards `shard-NN.parquet` with id (unique across shards), text and a passthrough column."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    texts = make_texts(sum(rows_per_shard), seed, dup_rate)
    start = 0
    for index, rows in enumerate(rows_per_shard):
        columns: dict[str, pa.Array] = {}
        if with_ids:
            columns["id"] = pa.array([f"s{index}-{i}" for i in range(rows)], pa.string())
        columns["text"] = pa.array(texts[start : start + rows], pa.string())
        columns["lang"] = pa.array(["en"] * rows, pa.string())
        pq.write_table(pa.table(columns), directory / f"shard-{index:02d}.parquet")
        start += rows
    return directory
