"""all-MiniLM-L6-v2 on ONNX Runtime (CPU): the same weights, tokenizer, mean pooling and L2
normalization as the torch path, exported once from the bundled model into the cache directory.

The exported graph includes the pooling and normalization, so only (batch, 384) floats leave
the runtime. `python bench/embed.py`: 1.4x the torch path on a quiet 2-core machine (3.5x on a
busy one, where torch's thread pool suffers more), cosine >= 0.99999 per row. Dynamic int8
quantization (`bench/embed.py --int8`) is left out: on a CPU with AVX-512 VNNI it ran about
1.4x faster than fp32 ONNX but its cosine against torch fp32 fell to 0.93 on some rows (mean
0.97), far from the 0.999 the backends are held to.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pyarrow as pa

from curate.embeddings.minilm import (
    import_minilm,
    load_sentence_transformer,
    minilm_package_version,
    minilm_version,
    normalize_rows,
)
from curate.errors import UsageError, first_line
from curate.io.atomic import atomic_path
from curate.io.cache import cache_dir

ONNX_FORMAT = 1  # bump when the exported graph changes (inputs, outputs, pooling)
OPSET = 17
_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
# texts the export is checked on before it is published
_CHECK_TEXTS = ["", "x", "Python library for parsing YAML files", "fonts for the Tamil script " * 40]


def onnx_model_path() -> Path:
    return cache_dir() / f"minilm-{minilm_package_version()}-pooled-v{ONNX_FORMAT}.onnx"


def ensure_onnx_model() -> Path:
    """The exported model, exporting it first if the cache lacks it. Written to a temp file in
    the same directory and renamed, so two processes exporting at once both publish a whole file."""
    path = onnx_model_path()
    if path.is_file():
        return path
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        raise UsageError(
            "backend 'onnx' needs the package onnxruntime, which is not installed",
            fix="pip install 'curate[onnx]' (onnxruntime, onnx), or use backend torch",
        ) from None
    try:
        with atomic_path(path, unique=True) as tmp:
            export_onnx(tmp)
    except ImportError as exc:
        raise UsageError(
            f"exporting the ONNX model needs the package {exc.name or 'onnx'}, which is not installed",
            fix="pip install 'curate[onnx]', or use backend torch",
        ) from None
    except OSError as exc:
        raise UsageError(
            f"cannot write the ONNX model to {path.parent} ({exc.strerror or exc})",
            fix="set CURATE_CACHE_DIR to a writable directory",
        ) from None
    return path


def export_onnx(target: Path) -> None:
    """Trace the bundled model plus pooling and normalization into `target` (fp32), then check
    it against torch on a few texts; a mismatch is an error, never a silently different model."""
    import torch

    st = load_sentence_transformer("cpu")
    st.float().eval()
    wrapper = _pooled_module(st[0].auto_model).eval()
    example = st.tokenizer(["a short text", "a somewhat longer example text"], padding=True, return_tensors="pt")
    args = tuple(example[name] if name in example else torch.zeros_like(example["input_ids"]) for name in _INPUTS)
    axes = {name: {0: "batch", 1: "tokens"} for name in _INPUTS} | {"embedding": {0: "batch"}}
    with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about shape-dependent Python branches
        torch.onnx.export(
            wrapper,
            args,
            str(target),
            dynamo=False,
            opset_version=OPSET,
            input_names=list(_INPUTS),
            output_names=["embedding"],
            dynamic_axes=axes,
        )
    reference = st.encode(_CHECK_TEXTS, normalize_embeddings=True, convert_to_numpy=True)
    ours = OnnxMiniLMEmbedder(threads=1, model_path=target).encode(pa.array(_CHECK_TEXTS))
    cosine = np.einsum("ij,ij->i", ours, reference)
    if cosine.min() < 0.999:
        raise RuntimeError(f"exported ONNX model disagrees with torch (min cosine {cosine.min():.4f})")


def _pooled_module(bert):
    """BERT, then attention-masked mean pooling, then L2 norm, as one torch module to trace."""
    import torch

    class Pooled(torch.nn.Module):
        def __init__(self, bert):
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask, token_type_ids):
            hidden = self.bert(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(mean, p=2.0, dim=1)

    return Pooled(bert)


def _tokenizer():
    """The bundled fast tokenizer with sentence-transformers' settings (truncate at the model's
    max_seq_length, pad to the longest row of a batch)."""
    from tokenizers import Tokenizer

    root = Path(import_minilm().get_model_path())
    tokenizer = Tokenizer.from_file(str(root / "tokenizer.json"))
    max_length = json.loads((root / "sentence_bert_config.json").read_text(encoding="utf-8")).get(
        "max_seq_length", 256
    )
    tokenizer.enable_truncation(max_length)
    tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
    return tokenizer


class OnnxMiniLMEmbedder:
    """all-MiniLM-L6-v2 on ONNX Runtime's CPU provider, `threads` intra-op threads."""

    name = "minilm"
    dim = 384

    def __init__(self, threads: int = 1, encode_batch: int = 64, model_path: Path | None = None):
        import onnxruntime as ort

        path = model_path or ensure_onnx_model()
        options = ort.SessionOptions()
        options.intra_op_num_threads = max(1, threads)
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # a truncated or foreign file in the cache
            raise UsageError(
                f"cannot load the ONNX model {path} ({first_line(exc)})",
                fix="delete that file; it is exported again on the next run",
            ) from None
        self.tokenizer = _tokenizer()
        self.encode_batch = encode_batch
        self.version = minilm_version()

    def encode(self, texts: pa.Array) -> np.ndarray:
        # sentence-transformers strips each text before tokenizing; so do we, for equal vectors
        strings = [s.strip() for s in texts.fill_null("").to_pylist()]
        out = np.zeros((len(strings), self.dim), dtype=np.float32)
        for start in range(0, len(strings), self.encode_batch):
            encoded = self.tokenizer.encode_batch(strings[start : start + self.encode_batch])
            ids = np.array([e.ids for e in encoded], dtype=np.int64)
            mask = np.array([e.attention_mask for e in encoded], dtype=np.int64)
            feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
            out[start : start + len(encoded)] = self.session.run(None, feeds)[0]
        return normalize_rows(out)
