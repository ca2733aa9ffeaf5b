"""2:4 GEMM: sparse24_mm (cuSPARSELt on CUDA, dense fallback) and the reusable buffer ops
sparse24_cslt_compress / sparse24_cslt_mm.

Exactness: integer-valued operands whose products and sums are exact in fp32 and in the output
dtype give identical results on every path; random data is compared with the dense matmul of the
decompressed operand within bf16/fp16 tolerance. CPU cases run everywhere; CUDA cases need a GPU.
"""

from __future__ import annotations

import threading
import warnings

import pytest
import torch

from helpers import DEVICES, assert_bits_equal, gen, requires_cuda, tie_free
from sp24 import _ops, reference

LOWP = [torch.float16, torch.bfloat16]
TOL = {torch.float16: dict(rtol=2e-3, atol=2e-3), torch.bfloat16: dict(rtol=1.6e-2, atol=1.6e-2),
       torch.float32: dict(rtol=1e-4, atol=1e-4)}


def int_sparse(M: int, K: int, dtype, seed: int):
    """2:4 (values, indices) with values in {-2..2} \\ {0}, on CPU."""
    x = tie_free(M, K, torch.float32, seed=seed)
    v, i, _ = reference.sparsify24(x, "largest_abs")
    v = torch.clamp(torch.round(v), -2, 2)
    v[v == 0] = 1
    return v.to(dtype), i


def cslt_bytes(M: int, K: int, dtype) -> int:
    """sparse24_cslt_compress's buffer size: values + metadata for M, K rounded up to 128."""
    up = lambda v: -(-v // 128) * 128  # noqa: E731
    return M * K // 2 * torch.empty(0, dtype=dtype).element_size() + up(M) * up(K) // 8


def int_dense(K: int, N: int, dtype, seed: int) -> torch.Tensor:
    return torch.randint(-2, 3, (K, N), generator=gen(seed)).to(dtype)


# ---- buffer ops on every device ----------------------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", LOWP)
def test_cslt_compress_size_and_determinism(device, dtype):
    v, i = int_sparse(32, 64, dtype, seed=1)
    buf = _ops.cslt_compress(v.to(device), i.to(device))
    assert buf.dtype == torch.uint8 and buf.dim() == 1
    assert buf.numel() == cslt_bytes(32, 64, dtype) == 32 * 32 * 2 + 128 * 128 // 8
    again = _ops.cslt_compress(v.to(device), i.to(device))
    assert torch.equal(buf, again)
    assert _ops.cslt_compress(v.to("meta"), i.to("meta")).shape == buf.shape


def test_cslt_compress_cpu_is_reference_pack():
    v, i = int_sparse(16, 48, torch.bfloat16, seed=2)
    assert torch.equal(_ops.cslt_compress(v, i), reference.cslt_pack(v, i))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", LOWP)
@pytest.mark.parametrize("b_layout", ["row", "col"])
@pytest.mark.parametrize("transpose_result", [False, True])
@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("out_dtype", [None, "same"])
def test_cslt_mm_exact_on_integers(device, dtype, b_layout, transpose_result, with_bias, out_dtype):
    out_dtype = dtype if out_dtype == "same" else None
    M, K, N = 64, 128, 48
    v, i = int_sparse(M, K, dtype, seed=3)
    b = int_dense(K, N, dtype, seed=4) if b_layout == "row" else int_dense(N, K, dtype, seed=4).t()
    bias = int_dense(1, N, dtype, seed=5).reshape(N) if with_bias else None
    buf = _ops.cslt_compress(v.to(device), i.to(device))
    out = _ops.cslt_mm(buf, M, K, b.to(device), None if bias is None else bias.to(device), out_dtype,
                       transpose_result)
    expected = reference.cslt_mm(v, i, b, bias, out_dtype, transpose_result)
    assert out.shape == expected.shape and out.is_contiguous()
    assert_bits_equal(out, expected, "cslt_mm")


@pytest.mark.parametrize("device", DEVICES)
def test_cslt_errors_name_the_op_and_value(device):
    v, i = int_sparse(16, 32, torch.bfloat16, seed=6)
    v, i = v.to(device), i.to(device)
    with pytest.raises(TypeError, match=r"sp24.sparse24_cslt_compress: values.dtype must be torch.float16 or "
                                        r"torch.bfloat16 .* got torch.float32"):
        _ops.cslt_compress(v.float(), i)
    v2, i2 = int_sparse(12, 32, torch.bfloat16, seed=6)
    with pytest.raises(ValueError, match=r"sp24.sparse24_cslt_compress: .* multiples of 16 .* got \(12, 32\)"):
        _ops.cslt_compress(v2.to(device), i2.to(device))
    buf = _ops.cslt_compress(v, i)
    b = torch.zeros(32, 16, dtype=torch.bfloat16, device=device)
    with pytest.raises(ValueError, match=r"sp24.sparse24_cslt_mm: compressed has \d+ bytes but a \(32, 32\)"):
        _ops.cslt_mm(buf, 32, 32, torch.zeros(32, 16, dtype=torch.bfloat16, device=device))
    with pytest.raises(ValueError, match=r"sp24.sparse24_cslt_mm: b.size\(1\) must be a multiple of 16 for cuSPARSELt, got 8"):
        _ops.cslt_mm(buf, 16, 32, b[:, :8])
    with pytest.raises(ValueError, match=r"sp24.sparse24_cslt_mm: shapes do not match .* b.size\(0\) must be 32"):
        _ops.cslt_mm(buf, 16, 32, torch.zeros(16, 16, dtype=torch.bfloat16, device=device))


def test_cslt_mm_meta_shapes():
    buf = torch.empty(cslt_bytes(16, 32, torch.bfloat16), dtype=torch.uint8, device="meta")
    b = torch.empty(32, 48, dtype=torch.bfloat16, device="meta")
    assert _ops.cslt_mm(buf, 16, 32, b).shape == (16, 48)
    assert _ops.cslt_mm(buf, 16, 32, b, transpose_result=True).shape == (48, 16)
    # float32 output from 16-bit inputs is refused on every device, Meta included
    with pytest.raises(ValueError, match=r"sp24.sparse24_cslt_mm: out_dtype must be b.dtype \(torch.bfloat16\) or "
                                         r"None, got torch.float32"):
        _ops.cslt_mm(buf, 16, 32, b, out_dtype=torch.float32)


# ---- sparse24_mm on CUDA ---------------------------------------------------------------------------
@requires_cuda
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", LOWP)
@pytest.mark.parametrize("shape", [(64, 128, 32), (256, 512, 128), (48, 96, 80)])
@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("out_dtype", [None, torch.float32])
def test_sparse24_mm_cuda_exact_on_integers(dtype, shape, with_bias, out_dtype):
    M, K, N = shape
    v, i = int_sparse(M, K, dtype, seed=M + N)
    b = int_dense(K, N, dtype, seed=K)
    bias = int_dense(1, N, dtype, seed=N).reshape(N) if with_bias else None
    out = _ops.mm(v.cuda(), i.cuda(), b.cuda(), None if bias is None else bias.cuda(), out_dtype)
    assert_bits_equal(out, reference.mm(v, i, b, bias, out_dtype), "sparse24_mm")


@requires_cuda
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", LOWP)
def test_sparse24_mm_cuda_random_within_tolerance(dtype):
    M, K, N = 512, 1024, 256
    x = torch.randn(M, K, generator=gen(1)).to(dtype)
    v, i, _ = reference.sparsify24(x)
    b = torch.randn(K, N, generator=gen(2)).to(dtype)
    out = _ops.mm(v.cuda(), i.cuda(), b.cuda())
    dense = reference.to_dense(v, i).cuda() @ b.cuda()  # cuBLAS on the decompressed operand
    torch.testing.assert_close(out, dense, **TOL[dtype])
    # column-major b (w.t(), the FFN's Y2 @ W2.T)
    w = torch.randn(N, K, generator=gen(3)).to(dtype).cuda()
    torch.testing.assert_close(_ops.mm(v.cuda(), i.cuda(), w.t()), reference.to_dense(v, i).cuda() @ w.t(),
                               **TOL[dtype])


@requires_cuda
@pytest.mark.gpu
@pytest.mark.parametrize("shape", [(20, 36, 12), (7, 8, 3), (64, 128, 30)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_sparse24_mm_cuda_fallback_shapes(shape, dtype):
    # Shapes / dtypes cuSPARSELt cannot serve: dense fallback, same result (one warning per process).
    M, K, N = shape
    v, i = int_sparse(M, K, dtype, seed=1)
    b = int_dense(K, N, dtype, seed=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = _ops.mm(v.cuda(), i.cuda(), b.cuda())
    assert_bits_equal(out, reference.mm(v, i, b), "fallback")


@requires_cuda
@pytest.mark.gpu
def test_sparse24_mm_cuda_deterministic_and_from_another_thread():
    M, K, N = 256, 512, 128
    x = torch.randn(M, K, generator=gen(5)).to(torch.bfloat16)
    v, i, _ = reference.sparsify24(x)
    v, i = v.cuda(), i.cuda()
    b = torch.randn(K, N, generator=gen(6)).to(torch.bfloat16).cuda()
    first = _ops.mm(v, i, b)
    assert torch.equal(first.view(torch.int16), _ops.mm(v, i, b).view(torch.int16))
    results, errors = [], []

    def worker():
        try:  # a fresh thread: new cuSPARSELt handle and plan cache
            results.append(_ops.mm(v, i, b))
            buf = _ops.cslt_compress(v, i)
            results.append(_ops.cslt_mm(buf, M, K, b))
            torch.cuda.synchronize()
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    t = threading.Thread(target=worker)
    t.start()
    t.join()
    assert not errors, errors
    for r in results:
        assert torch.equal(r.view(torch.int16), first.view(torch.int16))


@requires_cuda
@pytest.mark.gpu
def test_cslt_algorithm_search_is_checked(monkeypatch):
    monkeypatch.setenv("SP24_CSLT_SEARCH", "1")
    M, K, N = 512, 512, 256  # a shape no other test uses: the search runs here
    x = torch.randn(M, K, generator=gen(8)).to(torch.bfloat16)
    v, i, _ = reference.sparsify24(x)
    b = torch.randn(K, N, generator=gen(9)).to(torch.bfloat16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a rejected id warns; the result must be right either way
        out = _ops.mm(v.cuda(), i.cuda(), b.cuda())
        again = _ops.mm(v.cuda(), i.cuda(), b.cuda())
    torch.testing.assert_close(out.cpu().float(), reference.mm(v, i, b).float(), **TOL[torch.bfloat16])
    assert torch.equal(out.view(torch.int16), again.view(torch.int16))


@requires_cuda
@pytest.mark.gpu
def test_cslt_mm_weight_gradient_forms():
    # dW2 (d, F) = dY3.T @ Y2 from the token-direction 2:4 of Y2: sparse (F, T) @ dense (T, d),
    # written transposed; dW1 (F, d) = dY1.T @ X: same GEMM, not transposed.
    T, F, d = 256, 128, 64
    y2 = torch.randn(T, F, generator=gen(10)).to(torch.bfloat16)
    dy3 = torch.randn(T, d, generator=gen(11)).to(torch.bfloat16)
    v, i = _ops.sparsify24_transposed(y2.cuda(), "largest_abs")
    buf = _ops.cslt_compress(v, i)
    dense_t = reference.to_dense(v.cpu(), i.cpu()).cuda()  # (F, T)
    dw2 = _ops.cslt_mm(buf, F, T, dy3.cuda(), transpose_result=True)
    assert dw2.shape == (d, F) and dw2.is_contiguous()
    torch.testing.assert_close(dw2, (dense_t @ dy3.cuda()).t(), **TOL[torch.bfloat16])
    dw1 = _ops.cslt_mm(buf, F, T, dy3.cuda())
    torch.testing.assert_close(dw1, dense_t @ dy3.cuda(), **TOL[torch.bfloat16])


@pytest.mark.parametrize("device", DEVICES)
def test_cslt_ops_opcheck(device):
    # Schema, fake (Meta) kernels and sizes against the real kernels, incl. dynamic shapes.
    v, i = int_sparse(32, 64, torch.bfloat16, seed=12)
    v, i = v.to(device), i.to(device)
    torch.library.opcheck(torch.ops.sp24.sparse24_cslt_compress.default, (v, i))
    buf = _ops.cslt_compress(v, i)
    b = int_dense(64, 16, torch.bfloat16, seed=13).to(device)
    bias = int_dense(1, 16, torch.bfloat16, seed=14).reshape(16).to(device)
    torch.library.opcheck(torch.ops.sp24.sparse24_cslt_mm.default, (buf, 32, 64, b, bias, None, True))


# ---- review additions: layouts the wrapper passes to cuSPARSELt without a copy --------------------
@requires_cuda
@pytest.mark.gpu
@pytest.mark.parametrize("b_layout", ["row_padded", "col_padded", "row_misaligned"])
@pytest.mark.parametrize("transpose_result", [False, True])
def test_cslt_mm_strided_b_and_offset_buffer(b_layout, transpose_result):
    # b views with a leading dimension larger than the matrix (ldb != N / K) reach cuSPARSELt as
    # they are; a b that is not 16-byte aligned is copied; a compressed buffer at an odd offset inside
    # a larger byte tensor is realigned. All must give the bits of the reference.
    M, K, N, dtype = 64, 128, 48, torch.bfloat16
    v, i = int_sparse(M, K, dtype, seed=21)
    if b_layout == "row_padded":
        b = int_dense(K, N + 16, dtype, seed=22).cuda()[:, :N]          # stride (N + 16, 1)
    elif b_layout == "col_padded":
        b = int_dense(N, K + 16, dtype, seed=22).cuda()[:, :K].t()      # stride (1, K + 16)
    else:
        b = int_dense(K, N + 1, dtype, seed=22).cuda()[:, 1:]           # data_ptr 2 bytes off
    buf = _ops.cslt_compress(v.cuda(), i.cuda())
    big = torch.zeros(buf.numel() + 3, dtype=torch.uint8, device="cuda")
    big[3:] = buf
    off = big[3:]
    assert off.data_ptr() % 16 != 0
    expected = reference.cslt_mm(v, i, b.cpu(), None, None, transpose_result)
    for buffer in (buf, off):
        out = _ops.cslt_mm(buffer, M, K, b, None, None, transpose_result)
        assert_bits_equal(out, expected, f"cslt_mm {b_layout}")


@requires_cuda
@pytest.mark.gpu
def test_sparse24_mm_cuda_served_by_cusparselt_without_fallback():
    # sparse24_mm hides a refused plan behind a one-time warning and a dense GEMM: a wrong descriptor
    # (rows/cols/ld/order) would only show up as a lost speed-up. In a fresh process (TORCH_WARN_ONCE
    # state is per process) the FFN's GEMM forms must run without that warning.
    import subprocess
    import sys

    code = r"""
import warnings, torch, sp24
from sp24 import _ops, reference
warnings.simplefilter("error")
g = torch.Generator().manual_seed(0)
for dtype in (torch.bfloat16, torch.float16):
    x = torch.randn(256, 512, generator=g).to(dtype)
    v, i, _ = reference.sparsify24(x)
    v, i = v.cuda(), i.cuda()
    b = torch.randn(512, 128, generator=g).to(dtype).cuda()
    w = torch.randn(128, 512, generator=g).to(dtype).cuda()
    bias = torch.randn(128, generator=g).to(dtype).cuda()
    dense = reference.to_dense(v.cpu(), i.cpu()).cuda()
    for rhs in (b, w.t()):
        for bb in (None, bias):
            out = _ops.mm(v, i, rhs, bb)
            ref = dense.float() @ rhs.float() + (0 if bb is None else bb.float())
            torch.testing.assert_close(out.float(), ref, rtol=1.6e-2, atol=1.6e-2)
torch.cuda.synchronize()
print("OK")
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "OK" in r.stdout, r.stdout + r.stderr


@requires_cuda
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", LOWP)
def test_sparse24_mm_cuda_float32_out(dtype):
    # out_dtype=float32 from 16-bit inputs: refused statically for cuSPARSELt, so the dense fallback
    # runs (fp32 accumulation, one rounding); the result is the fp32 reference, no rounding to 16 bits.
    M, K, N = 64, 128, 32
    v, i = int_sparse(M, K, dtype, seed=31)
    b = torch.randn(K, N, generator=gen(32)).to(dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = _ops.mm(v.cuda(), i.cuda(), b.cuda(), None, torch.float32)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.cpu(), reference.mm(v, i, b, None, torch.float32), rtol=1e-5, atol=1e-4)


# ---- is the CPU emulation of the layout cuSPARSELt's layout? ---------------------------------------
def _needs_sm90():
    if torch.cuda.get_device_capability()[0] != 9:
        pytest.skip("the emulated / directly written layout is cuSPARSELt's sm_90 one; on this GPU "
                    "cuSPARSELt's own compression is always used")


@requires_cuda
@pytest.mark.parametrize("dtype", LOWP)
@pytest.mark.parametrize("M,K", [(64, 32), (128, 96), (192, 256), (256, 4096), (16, 32), (80, 64)])
def test_cslt_layout_emulation(M, K, dtype):
    """cusparseLtSpMMACompress's bytes == sp24.reference.cslt_layout's, for the shapes the
    emulation models (M % 64 == 0) and those where it pads rows (a guess)."""
    _needs_sm90()
    v, i = int_sparse(M, K, dtype, seed=M + K)
    v = torch.arange(1, v.numel() + 1, dtype=torch.float32).reshape(v.shape).to(dtype)  # mostly distinct
    got = _ops.cslt_compress(v.cuda(), i.cuda()).cpu()
    emu = reference.cslt_layout(v, i)
    nv = M * K // 2 * 2
    assert torch.equal(got[:nv], emu[:nv]), "values region differs from row-major (M, K/2) kept values"
    bad = (got[nv:] != emu[nv:]).nonzero().flatten()
    assert bad.numel() == 0, (f"metadata differs at {bad.numel()} of {got.numel() - nv} bytes, first offsets "
                              f"{bad[:8].tolist()}: got {got[nv:][bad[:8]].tolist()} emulated {emu[nv:][bad[:8]].tolist()}")


_TORCH_DTYPE_NAME = {torch.bfloat16: "BFloat16", torch.float16: "Half"}


@requires_cuda
@pytest.mark.parametrize("dtype", LOWP)
def test_cslt_direct_writer_is_checked_before_it_serves(dtype, monkeypatch):
    """The pack writer (csrc/sp24/cslt_layout.h) serves a shape only after its bytes for a synthetic
    operand of that shape equalled cuSPARSELt's; the buffer is cuSPARSELt's either way."""
    from sp24 import _C
    _needs_sm90()
    M, K = 320, 160  # a shape no other test compresses: a fresh check
    v, i = int_sparse(M, K, dtype, seed=11)
    v, i = v.cuda(), i.cuda()
    monkeypatch.setenv("SP24_CSLT_DIRECT", "0")
    want = _ops.cslt_compress(v, i)  # cusparseLtSpMMACompress only
    assert not [c for c in _C.cslt_direct_layout_checks() if (c["M"], c["K"]) == (M, K)]
    monkeypatch.delenv("SP24_CSLT_DIRECT")
    first = _ops.cslt_compress(v, i)  # the check runs here
    checks = [c for c in _C.cslt_direct_layout_checks()
              if (c["writer"], c["M"], c["K"], c["dtype"]) == ("pack", M, K, _TORCH_DTYPE_NAME[dtype])]
    assert len(checks) == 1, _C.cslt_direct_layout_checks()
    second = _ops.cslt_compress(v, i)  # the direct writer, if the check passed
    assert torch.equal(first, want) and torch.equal(second, want)
    v2, i2 = int_sparse(M, K, dtype, seed=12)
    v2, i2 = v2.cuda(), i2.cuda()
    direct = _ops.cslt_compress(v2, i2)
    monkeypatch.setenv("SP24_CSLT_DIRECT", "0")
    assert torch.equal(direct, _ops.cslt_compress(v2, i2))
    assert checks[0]["same"], ("sp24's direct writer does not reproduce cuSPARSELt's layout for this shape "
                               "(results stay right: cuSPARSELt keeps compressing it); see test_cslt_layout_emulation")


@requires_cuda
@pytest.mark.parametrize("dtype", LOWP)
def test_sparse24_mm_same_bits_with_and_without_direct_writer(dtype, monkeypatch):
    v, i = int_sparse(128, 256, dtype, seed=13)
    b = torch.randn(256, 64, generator=gen(14)).to(dtype)
    v, i, b = v.cuda(), i.cuda(), b.cuda()
    monkeypatch.setenv("SP24_CSLT_DIRECT", "0")
    want = _ops.mm(v, i, b)
    monkeypatch.delenv("SP24_CSLT_DIRECT")
    for _ in range(2):  # the first call checks, the second may use the direct writer
        assert_bits_equal(_ops.mm(v, i, b), want)
