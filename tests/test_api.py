"""The Python API surface: Sp24Tensor, .to round trips, stats, build_info, the import guard and
`python -m sp24`."""

import os
import subprocess
import sys

import pytest
import torch

from helpers import DEVICES, DTYPES, assert_bits_equal, randn, special, sp24
from sp24 import reference


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_sp24tensor_surface(device, dtype):
    x = special(12, 20, dtype, seed=50, device=device)
    s = sp24.sparsify24(x, algo="largest_abs")
    assert s.shape == torch.Size((12, 20)) and s.size(1) == 20
    assert s.dtype == dtype and s.device.type == device
    assert s.values().shape == (12, 10) and s.indices().dtype == torch.uint8
    rv, ri, _ = reference.sparsify24(x.cpu(), "largest_abs")
    assert_bits_equal(s.values(), rv)
    assert torch.equal(s.indices().cpu(), ri)
    assert torch.equal(s.mask().cpu(), reference.indices_to_mask(ri))
    assert "Sp24Tensor(shape=(12, 20)" in repr(s)


@pytest.mark.parametrize("device", DEVICES)
def test_to_round_trip_exact(device):
    x = special(8, 16, torch.bfloat16, seed=51)
    s = sp24.sparsify24(x)
    there = s.to(device)
    back = there.to("cpu")
    assert there.device.type == device
    assert_bits_equal(back.values(), s.values())
    assert torch.equal(back.indices(), s.indices())
    assert_bits_equal(there.to_dense(), s.to_dense().to(device))
    f32 = s.to(dtype=torch.float32)
    assert f32.dtype == torch.float32 and torch.equal(f32.indices(), s.indices())


def test_sparsify24_relu2_api():
    x = randn(16, 32, torch.float16, seed=52)
    s = sp24.sparsify24(x, activation="relu2")
    assert torch.equal(s.to_dense(), reference.sparsify24_dense(x, "largest", "relu2"))


def test_stats_values():
    # one row, two groups: [0, 3, 1, 2] keeps 3, 2 (drops 1 of 3 non-zeros); [0, 0, 0, 5] drops none
    x = torch.tensor([[0.0, 3.0, 1.0, 2.0, 0.0, 0.0, 0.0, 5.0]])
    st = sp24.stats(x)
    assert st["numel"] == 8 and st["nonzeros"] == 4
    assert st["zero_fraction"] == pytest.approx(0.5)
    assert st["drop_rowwise"] == pytest.approx(1 / 4)
    assert st["drop_tokenwise"] == 0.0  # one token (padded with zero rows): nothing to drop


def test_stats_tokenwise_and_leading_dims():
    x = torch.zeros(2, 4, 3)  # 8 tokens, 3 features (padded to 4 inside)
    x[0, :, 0] = torch.tensor([1.0, 2.0, 3.0, 4.0])  # tokens 0..3 of feature 0: token-wise drops 2 of 4
    st = sp24.stats(x)
    assert st["nonzeros"] == 4 and st["drop_tokenwise"] == pytest.approx(0.5) and st["drop_rowwise"] == 0.0
    assert sp24.stats(torch.zeros(5, 7))["drop_rowwise"] == 0.0


def test_build_info():
    info = sp24.build_info()
    assert info["torch_version"] == torch.__version__
    for key in ("with_cuda", "cuda_version", "cuda_archs", "cusparselt_version", "kernels", "cuda_available"):
        assert key in info
    assert set(info["kernels"]["CPU"]) >= {"sparsify24", "sparse24_mm"}
    assert info["kernels"]["CPU"] == info["kernels"]["Meta"]
    if info["with_cuda"]:
        assert info["cusparselt_version"] and info["cuda_archs"]


def _run(args, **kw):
    env = dict(os.environ)
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, timeout=300, **kw)


def test_import_under_other_torch_says_rebuild():
    code = "import torch; torch.__version__ = '0.0.1+other'; import sp24"
    r = _run(["-c", code])
    assert r.returncode != 0
    assert "sp24 was built against torch" in r.stderr and "torch 0.0.1+other is installed" in r.stderr
    assert "pip install --no-build-isolation" in r.stderr


def test_python_m_sp24_self_check():
    r = _run(["-m", "sp24"])
    assert r.returncode == 0, r.stdout + r.stderr
    assert "FAIL" not in r.stdout
    assert "PASS  sparsify24 " in r.stdout and "torch_version" in r.stdout


@pytest.mark.parametrize("device", DEVICES)
def test_packed_buffer_is_kept_and_used(device):
    """The GEMM-ready buffer is built once and reused; products through it equal the exact result."""
    g = torch.Generator().manual_seed(53)
    a = torch.randint(-3, 4, (32, 64), generator=g).to(torch.bfloat16).to(device)
    b = torch.randint(-3, 4, (64, 16), generator=g).to(torch.bfloat16).to(device)
    s = sp24.sparsify24(a, algo="largest_abs")
    p1 = s.packed()
    assert p1.dtype == torch.uint8 and p1.device.type == device
    assert s.packed() is p1
    exact = s.to_dense().double() @ b.double()
    assert torch.equal((s @ b).double(), exact)
    assert torch.equal(sp24.mm(s, b, out_dtype=torch.float32).double(), exact)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", [(1, 8), (5, 24), (64, 256), (0, 16)])
def test_pack_indices_round_trip(device, shape):
    x = special(*shape, torch.bfloat16, seed=54, device=device)
    idx = sp24.sparsify24(x).indices()
    packed = sp24.tensor.pack_indices(idx)
    assert packed.shape == (shape[0], shape[1] // 8) and packed.dtype == torch.uint8
    assert torch.equal(sp24.tensor.unpack_indices(packed), idx)
    if shape[0]:  # byte layout: group 2j in the low nibble, 2j+1 in the high one
        i = idx[0, :4].cpu().tolist()
        assert int(packed[0, 0]) == i[0] | i[1] << 2 | i[2] << 4 | i[3] << 6


def test_pack_indices_rejects_bad_width():
    with pytest.raises(ValueError, match=r"sp24.pack_indices: indices.size\(1\) \(K/2\) must be a multiple of 4, got 6"):
        sp24.tensor.pack_indices(torch.zeros(2, 6, dtype=torch.uint8))
