"""sp24's cuSPARSELt call sequences against the contract test double of the cuSPARSELt API.

The core (csrc/cusparselt/core.cpp) is compiled unchanged against a host-only implementation of the
cuSPARSELt functions sp24 calls, written from cuSPARSELt's documentation (csrc/emu/cusparselt/): a
call that the real library would refuse (wrong leading dimension, misaligned pointer, unsupported
type combination for the GPU, split-K attribute out of range, a call before cusparseLtInit, ...)
returns the documented status here, and the test fails naming the broken rule. The double also
computes the products on host memory, so swapped or misread operands fail on the numbers.

The requests replayed are the ones sp24 makes: every sparse24_mm call of a relu2_ffn forward and
backward (captured from the CPU run, with the operands' real strides), and the sparse24_cslt_mm /
sp24.mm layouts (transposed result, column-major b, bias as C, unaligned views).
"""

from __future__ import annotations

import itertools

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import cslt
import sp24

pytestmark = pytest.mark.skipif(not cslt.available(), reason="needs the cuSPARSELt double library (scripts/emu.sh "
                                                              "builds it and sets SP24_CSLT_LIB)")

# cusparseStatus_t values (cuSPARSE's enum, which cuSPARSELt returns)
NOT_INITIALIZED, ALLOC_FAILED, INVALID_VALUE, ARCH_MISMATCH = 1, 2, 3, 4
EXECUTION_FAILED, INTERNAL_ERROR, NOT_SUPPORTED = 6, 7, 10

_device_ids = itertools.count(100)


def fresh_device() -> int:
    """A device id no earlier test used: a new handle and an empty plan cache for it."""
    return next(_device_ids)


def int_operand(shape, dtype, lo=-3, hi=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(lo, hi, shape, generator=g).to(dtype)


def sparse_int_operand(M, K, dtype, seed=0):
    """A dense 2:4 matrix of small integers (products and sums exact in fp32 and in the output)."""
    a = int_operand((M, K), dtype, seed=seed)
    return sp24.sparsify24(a, "largest_abs").to_dense()


def exact_product(a, b, c=None, out_dtype=None, transpose=False):
    ref = a.double() @ b.double()
    if c is not None:
        ref = ref + (c.double().t() if transpose else c.double())
    ref = ref.to(out_dtype or b.dtype)
    return ref.t().contiguous() if transpose else ref


def run_request(a_dense, b, *, bias=None, out_dtype=None, transpose=False, search=False, device=0, on_thread=False):
    M, K = a_dense.shape
    odt = out_dtype or b.dtype
    buf = cslt.compress(a_dense.contiguous(), device=device)
    c = None if bias is None else cslt.expand_bias(bias, M, odt, transpose)
    return cslt.mm(buf, M, K, b, c=c, out_dtype=odt, transpose=transpose, search=search, device=device,
                   on_thread=on_thread)


def assert_no_violation(before: int):
    assert cslt.violations() == before, f"the double saw a broken cuSPARSELt rule: {cslt.last_violation()}"


# ---- the FFN's own requests ------------------------------------------------------------------------
class CaptureMM(TorchDispatchMode):
    """Records every sparse24_mm call (args and result) made under it."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func is torch.ops.sp24.sparse24_mm.default:
            self.calls.append((args, out))
        return out


FFN_CASES = [
    # (T, d, F, options)
    (64, 32, 128, {}),
    (48, 64, 256, {"dense_fraction": 0.0}),
    (80, 48, 160, {"permute_tokens": False}),
    (64, 32, 128, {"gradient": "ste"}),
]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("T,d,F,opts", FFN_CASES)
def test_ffn_requests_are_served_by_the_documented_api(dtype, T, d, F, opts):
    g = torch.Generator().manual_seed(T + d + F)
    x = (torch.randn(T, d, generator=g) * 0.5).to(dtype).requires_grad_()
    w1 = (torch.randn(F, d, generator=g) / d**0.5).to(dtype).requires_grad_()
    w2 = (torch.randn(d, F, generator=g) / F**0.5).to(dtype).requires_grad_()
    b2 = torch.randn(d, generator=g).to(dtype).requires_grad_()
    with CaptureMM() as cap:
        y = sp24.relu2_ffn(x, w1, w2, None, b2, sparse=True, **opts)
        y.float().square().sum().backward()
    # forward Y3, backward dX and the sparse parts of dW1 and dW2 (dW1's only with the forward mask)
    assert len(cap.calls) >= 3, f"expected the FFN's sparse GEMMs, captured {len(cap.calls)}"
    device = fresh_device()
    v0 = cslt.violations()
    for args, want in cap.calls:
        values, indices, b, bias, out_dtype = (tuple(args) + (None, None))[:5]  # trailing defaults may be omitted
        a = torch.ops.sp24.sparse24_to_dense(values, indices)
        M, K = a.shape
        why = cslt.static_refusal(M, K, b.shape[1], b.dtype, out_dtype or b.dtype)
        if why:  # the glue falls back before calling cuSPARSELt; the shapes here are all servable
            pytest.fail(f"sp24's static rules refuse an FFN request of the test's shape: {why}")
        got = run_request(a, b, bias=bias, out_dtype=out_dtype, device=device)
        torch.testing.assert_close(got.float(), want.float(), rtol=2**-7, atol=1e-3)
    assert_no_violation(v0)


# ---- sp24.mm / sparse24_cslt_mm layouts --------------------------------------------------------
LAYOUTS = [
    # (b layout, transpose_result, bias)
    ("row", False, False), ("row", True, False), ("col", False, False), ("col", True, True),
    ("row", False, True), ("row-ld", False, False), ("col-ld", True, False), ("unaligned", False, True),
    ("strided", True, False),
]


def make_b(kind, K, N, dtype):
    base = int_operand((2 * K + 8, 2 * N + 24), dtype, lo=-2, hi=3, seed=7)
    if kind == "row":
        return base[:K, :N].contiguous()
    if kind == "col":
        return base[:N, :K].contiguous().t()
    if kind == "row-ld":  # a column slice of a wider matrix: ld N + 24
        return base[:K, :N]
    if kind == "col-ld":
        return base[:N, :K].t()
    if kind == "unaligned":  # one element past a 16-byte boundary: the glue copies it
        return base[:K, 1:N + 1]
    if kind == "strided":  # neither layout (column stride 2): copied
        return base[:K, : 2 * N : 2]
    raise ValueError(kind)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("kind,transpose,with_bias", LAYOUTS)
def test_mm_layouts_exact(dtype, kind, transpose, with_bias):
    M, K, N = 32, 64, 48
    a = sparse_int_operand(M, K, dtype)
    b = make_b(kind, K, N, dtype)
    bias = int_operand((N,), dtype, seed=3) if with_bias else None
    v0 = cslt.violations()
    got = run_request(a, b, bias=bias, transpose=transpose, device=fresh_device())
    want = exact_product(a, b, None if bias is None else cslt.expand_bias(bias, M, dtype, transpose), dtype, transpose)
    assert torch.equal(got, want)
    assert_no_violation(v0)


def test_misaligned_compressed_buffer_is_realigned():
    M, K, N = 32, 64, 32
    a = sparse_int_operand(M, K, torch.bfloat16)
    b = int_operand((K, N), torch.bfloat16, seed=1)
    buf = cslt.compress(a)
    shifted = torch.zeros(buf.numel() + 2, dtype=torch.uint8)[2:]
    shifted.copy_(buf)
    v0 = cslt.violations()
    got = cslt.mm(shifted, M, K, b, device=fresh_device())
    assert torch.equal(got, exact_product(a, b))
    assert_no_violation(v0)


def test_compress_to_sp24s_buffer_size():
    M, K = 64, 128
    a = sparse_int_operand(M, K, torch.float16)
    buf = cslt.compress(a, sp24_size=True)
    assert buf.numel() == cslt.sp24_bytes(M, K, torch.float16)
    assert torch.equal(cslt.mm(buf, M, K, torch.eye(K, dtype=torch.float16)[:, :32].contiguous()), a[:, :32])


# ---- algorithm search ------------------------------------------------------------------------------
@pytest.mark.parametrize("M,K,N", [(64, 128, 64), (32, 1024, 32), (128, 4096, 16)])
def test_search_writes_back_only_valid_attributes(M, K, N):
    a = sparse_int_operand(M, K, torch.bfloat16)
    b = int_operand((K, N), torch.bfloat16, seed=2)
    n0, v0 = len(cslt.call_log()), cslt.violations()
    got = run_request(a, b, search=True, device=fresh_device())
    log = cslt.call_log()[n0:]
    assert torch.equal(got, exact_product(a, b))
    assert any("cusparseLtMatmulSearch" in ln for ln in log), log
    assert any("cusparseLtMatmulAlgGetAttribute" in ln for ln in log), log
    assert_no_violation(v0)


# ---- GPUs -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("sm", [80, 86, 87, 89, 90, 100, 103, 110, 120, 121])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_every_architecture_sp24_builds_for_serves_16_bit(sm, dtype):
    cslt.set_arch(sm)
    try:
        a = sparse_int_operand(32, 64, dtype)
        b = int_operand((64, 32), dtype, seed=5)
        v0 = cslt.violations()
        assert torch.equal(run_request(a, b, device=fresh_device()), exact_product(a, b))
        assert_no_violation(v0)
    finally:
        cslt.set_arch(90)


def test_gpu_without_sparse_tensor_cores_is_refused_once():
    cslt.set_arch(75)
    try:
        device = fresh_device()
        a = sparse_int_operand(32, 64, torch.bfloat16)
        with pytest.raises(cslt.Refused, match="cusparseLtInit"):
            cslt.compress(a, device=device)
        n0 = len(cslt.call_log())
        with pytest.raises(cslt.Refused, match="cusparseLtInit"):
            cslt.mm(torch.zeros(4096, dtype=torch.uint8), 32, 64, torch.zeros(64, 32, dtype=torch.bfloat16),
                    device=device)
        assert not any("cusparseLtInit" in ln for ln in cslt.call_log()[n0:]), "Init asked again on a refused GPU"
    finally:
        cslt.set_arch(90)


# ---- statuses: refusals fall back, everything else raises ------------------------------------------
SEQUENCE = ["cusparseLtInit", "cusparseLtStructuredDescriptorInit", "cusparseLtSpMMACompressedSize2",
            "cusparseLtSpMMACompress2", "cusparseLtDenseDescriptorInit", "cusparseLtMatmulDescriptorInit",
            "cusparseLtMatmulAlgSelectionInit", "cusparseLtMatmulPlanInit", "cusparseLtMatmulGetWorkspace",
            "cusparseLtMatmul"]


@pytest.mark.parametrize("function", SEQUENCE)
@pytest.mark.parametrize("status,outcome", [(NOT_SUPPORTED, cslt.Refused), (ARCH_MISMATCH, cslt.Refused),
                                            (INVALID_VALUE, cslt.CsltError), (EXECUTION_FAILED, cslt.CsltError),
                                            (ALLOC_FAILED, cslt.CsltError), (INTERNAL_ERROR, cslt.CsltError)])
def test_only_not_supported_and_arch_mismatch_fall_back(function, status, outcome):
    a = sparse_int_operand(32, 64, torch.bfloat16)
    b = int_operand((64, 32), torch.bfloat16, seed=5)
    cslt.fail_next(function, status)
    with pytest.raises(outcome, match=function):
        run_request(a, b, device=fresh_device())
    cslt.fail_next("", 0)  # nothing left armed if the sequence did not reach the function


# ---- lifetimes -----------------------------------------------------------------------------------
def test_thread_exit_releases_its_plans_and_keeps_its_handle():
    a = sparse_int_operand(32, 64, torch.bfloat16)
    b = int_operand((64, 32), torch.bfloat16, seed=5)
    buf = cslt.compress(a)
    live0 = cslt.live_objects()
    for t in range(3):
        got = cslt.mm(buf, 32, 64, b, device=fresh_device(), on_thread=True)
        assert torch.equal(got, exact_product(a, b))
        # the thread's plan (descriptors, selection, plan) is gone; only its handle stays
        assert cslt.live_objects() == live0 + t + 1, (cslt.live_objects(), live0, t)


def test_repeated_requests_reuse_the_cached_plan():
    device = fresh_device()
    a = sparse_int_operand(32, 64, torch.bfloat16)
    b = int_operand((64, 32), torch.bfloat16, seed=5)
    buf = cslt.compress(a, device=device)
    cslt.mm(buf, 32, 64, b, device=device)
    live, plans = cslt.live_objects(), cslt.cached_plans()
    n0 = len(cslt.call_log())
    for _ in range(5):
        cslt.mm(buf, 32, 64, b, device=device)
    log = cslt.call_log()[n0:]
    assert cslt.live_objects() == live and cslt.cached_plans() == plans
    assert [ln.split("(")[0].split()[0] for ln in log] == ["cusparseLtMatmul"] * 5, log


def test_versions_agree():
    header, runtime, mismatch = cslt.versions()
    assert header == runtime and header >= 8000 and mismatch == ""


# ---- sp24's static rules never promise what the library refuses ---------------------------------
@pytest.mark.parametrize("M,K,N", [(16, 16, 16), (32, 48, 16), (64, 64, 80), (16, 4096, 16), (48, 16, 32)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_what_the_static_rules_accept_the_double_serves(M, K, N, dtype):
    assert cslt.static_refusal(M, K, N, dtype, dtype) == ""
    a = sparse_int_operand(M, K, dtype)
    b = int_operand((K, N), dtype, seed=9)
    v0 = cslt.violations()
    assert torch.equal(run_request(a, b, device=fresh_device()), exact_product(a, b))
    assert_no_violation(v0)
