"""The automatic dense fallback of relu2_ffn (sp24._fallback): the crossover table loader, its
default, the switches, and that CPU never falls back."""

from __future__ import annotations

import json

import pytest
import torch

from helpers import gen, requires_cuda
import sp24
from sp24 import _fallback, ffn, reference_ffn

GPU = "NVIDIA H100 80GB HBM3"


@pytest.fixture
def table(tmp_path, monkeypatch):
    """Point the loader at a file in tmp_path; returns a writer."""
    path = tmp_path / "crossover.json"
    monkeypatch.setenv("SP24_CROSSOVER_FILE", str(path))
    _fallback.clear_cache()

    def write(data):
        path.write_text(data if isinstance(data, str) else json.dumps(data))
        _fallback.clear_cache()
        return path

    yield write
    _fallback.clear_cache()


def _file(**entry):
    e = {"d": 4096, "F": 16384, "dtype": "bfloat16", "min_tokens_fwd": 4096, "min_tokens_fwd_bwd": 1024}
    e.update(entry)
    return {"schema": 1, "gpu": GPU, "torch": "2.11.0+cu130", "measured_by": "test", "entries": [e]}


def test_default_without_file(table):
    assert _fallback.min_tokens(4096, 16384, torch.bfloat16, True, GPU) == _fallback.DEFAULT_MIN_TOKENS == 2048


def test_matching_entry(table):
    table(_file())
    assert _fallback.min_tokens(4096, 16384, torch.bfloat16, False, GPU) == 4096
    assert _fallback.min_tokens(4096, 16384, torch.bfloat16, True, GPU) == 1024
    # other shape, dtype or GPU: the default
    assert _fallback.min_tokens(4096, 8192, torch.bfloat16, True, GPU) == 2048
    assert _fallback.min_tokens(4096, 16384, torch.float16, True, GPU) == 2048
    assert _fallback.min_tokens(4096, 16384, torch.bfloat16, True, "NVIDIA H200") == 2048


@pytest.mark.parametrize("data,words", [
    ("{not json", "not valid JSON"),
    ({"schema": 2, "entries": []}, "schema"),
    (_file(dtype="float32"), "entries[0].dtype"),
    (_file(min_tokens_fwd=-1), "entries[0].min_tokens_fwd must be a non-negative int, got -1"),
    ({k: v for k, v in _file().items() if k != "gpu"}, "\"gpu\" must be a string"),
])
def test_malformed_file_is_an_error(table, data, words):
    path = table(data)
    with pytest.raises(ValueError) as e:
        _fallback.min_tokens(4096, 16384, torch.bfloat16, True, GPU)
    assert str(path) in str(e.value) and words in str(e.value)


def test_switches(monkeypatch):
    monkeypatch.delenv("SP24_FFN_FALLBACK", raising=False)
    assert _fallback.enabled()
    monkeypatch.setenv("SP24_FFN_FALLBACK", "0")
    assert not _fallback.enabled()
    with ffn.fallback(True):
        assert _fallback.enabled()
        with ffn.fallback(False):
            assert not _fallback.enabled()
        assert _fallback.enabled()
    assert not _fallback.enabled()
    monkeypatch.setenv("SP24_FFN_FALLBACK", "maybe")
    with pytest.raises(ValueError, match="SP24_FFN_FALLBACK must be 0 or 1, got 'maybe'"):
        _fallback.enabled()


def test_cpu_never_falls_back(table):
    # 8 tokens is far below the default threshold, yet CPU runs the 2:4 math (CPU is for correctness)
    table(_file(d=16, F=64, dtype="bfloat16", min_tokens_fwd=10**6, min_tokens_fwd_bwd=10**6))
    assert not _fallback.use_dense(torch.device("cpu"), 8, 16, 64, torch.bfloat16, True)
    g = gen(0)
    x, w1, w2 = torch.randn(8, 16, generator=g), torch.randn(64, 16, generator=g), torch.randn(16, 64, generator=g)
    out = sp24.relu2_ffn(x, w1, w2)
    assert torch.allclose(out, reference_ffn.forward(x, w1, w2, perm=ffn.token_permutation(8)[0])["out"], atol=1e-4)
    assert not torch.allclose(out, ffn.dense_relu2_ffn(x, w1, w2), atol=1e-3)


def test_cuda_decision_eager_and_compiled(table, monkeypatch):
    # The decision logic for a CUDA device, simulated on CPU (only the GPU's name is needed), and
    # traced by torch.compile(fullgraph=True) without a graph break (the file/env reads are
    # constants of the graph; the fallback(...) override is guarded).
    monkeypatch.setattr(_fallback, "_gpu_name", lambda index: GPU)
    monkeypatch.delenv("SP24_FFN_FALLBACK", raising=False)
    table(_file(d=64, F=256, min_tokens_fwd=512, min_tokens_fwd_bwd=256))
    cuda = torch.device("cuda", 0)

    def decide(x):
        dense = _fallback.use_dense(cuda, x.shape[0], 64, 256, torch.bfloat16, True)
        return x * 2 if dense else x * 3

    compiled = torch.compile(decide, fullgraph=True, backend="aot_eager")
    for fn in (decide, compiled):
        assert float(fn(torch.ones(255))[0]) == 2.0 and float(fn(torch.ones(256))[0]) == 3.0
        with ffn.fallback(False):
            assert float(fn(torch.ones(16))[0]) == 3.0
        assert float(fn(torch.ones(16))[0]) == 2.0
    assert _fallback.use_dense(cuda, 300, 64, 256, torch.bfloat16, False)  # inference threshold: 512
    # what cuSPARSELt cannot serve runs dense at any T: fp32, d or F = 8 mod 16
    assert _fallback.use_dense(cuda, 10**6, 64, 256, torch.float32, True)
    assert _fallback.use_dense(cuda, 10**6, 72, 256, torch.bfloat16, True)
    assert _fallback.use_dense(cuda, 10**6, 64, 264, torch.float16, True)
    assert not _fallback.use_dense(cuda, 10**6, 64, 256, torch.float16, True)
    with ffn.fallback(False):
        assert not _fallback.use_dense(cuda, 16, 64, 264, torch.float32, True)


@requires_cuda
@pytest.mark.gpu
def test_cuda_small_token_count_runs_dense(table):
    table({"schema": 1, "gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "measured_by": "test",
           "entries": [{"d": 64, "F": 256, "dtype": "bfloat16", "min_tokens_fwd": 512, "min_tokens_fwd_bwd": 256}]})
    g = gen(1)
    x = torch.randn(128, 64, generator=g).cuda().bfloat16()
    w1 = (torch.randn(256, 64, generator=g) / 8).cuda().bfloat16()
    w2 = (torch.randn(64, 256, generator=g) / 16).cuda().bfloat16()
    dense = ffn.dense_relu2_ffn(x, w1, w2)
    assert torch.equal(sp24.relu2_ffn(x, w1, w2), dense)        # 128 < 512: dense
    with ffn.fallback(False):
        sparse = sp24.relu2_ffn(x, w1, w2)                      # forced: the 2:4 path
    assert not torch.equal(sparse, dense)
    ref = reference_ffn.forward(x, w1, w2, perm=ffn.token_permutation(128, "cuda")[0])["out"]
    assert float((sparse.float() - ref.float()).abs().max()) <= 1e-2 * float(ref.float().abs().max())
