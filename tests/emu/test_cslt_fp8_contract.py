"""sp24's FP8 cuSPARSELt sequence (try_fp8_mm: E4M3 2:4 A, K-major E4M3 B, one alpha per row of D,
bias as C with one beta per row) against the contract test double of the cuSPARSELt API.

Operands are small integers in e4m3 and the scales powers of two, so every product, sum and scaling
is exact and the double's result must equal the exact product bit for bit; the double refuses any
call the documentation rules out (8-bit operands not both K-major, E4M3 on a GPU without it, an
unaligned alpha vector, descriptor sizes, ...)."""

from __future__ import annotations

import itertools

import pytest
import torch

import cslt
from sp24 import reference as ref
from sp24 import reference_fp8 as rf

pytestmark = pytest.mark.skipif(not cslt.available(), reason="needs the cuSPARSELt double library (scripts/emu.sh "
                                                              "builds it and sets SP24_CSLT_LIB)")

E4M3 = torch.float8_e4m3fn
NOT_SUPPORTED, INVALID_VALUE, ARCH_MISMATCH, EXECUTION_FAILED = 10, 3, 4, 6
_devices = itertools.count(500)


def operands(M, K, N, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(-6, 7, (M, K), generator=g).to(torch.bfloat16)
    v, i, _ = ref.sparsify24(x, "largest_abs")
    a = ref.to_dense(rf.e4m3(v.float()), i)  # exact: small integers are e4m3 values
    w = rf.e4m3(torch.randint(-6, 7, (N, K), generator=g).float())
    alpha = 2.0 ** torch.randint(-6, 3, (M,), generator=g).float()
    return a, w, alpha


def exact(a, w, alpha, c=None, out_dtype=torch.bfloat16):
    d = (a.double() @ w.double().t()) * alpha.double().unsqueeze(1)
    if c is not None:
        d = d + c.double()
    return d.to(out_dtype)


def assert_no_violation(before):
    assert cslt.violations() == before, f"the double saw a broken cuSPARSELt rule: {cslt.last_violation()}"


@pytest.mark.parametrize("out_dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("with_c", [False, True])
@pytest.mark.parametrize("M,K,N", [(32, 32, 16), (64, 128, 48), (96, 320, 32), (32, 1024, 16)])
def test_fp8_requests_exact(M, K, N, with_c, out_dtype):
    a, w, alpha = operands(M, K, N, seed=M + K + N)
    c = None
    if with_c:  # the glue's C: the bias (N,) expanded to (M, N) in the output dtype
        c = torch.randint(-4, 5, (N,)).to(out_dtype).view(1, N).expand(M, N).contiguous()
    v0 = cslt.violations()
    got = cslt.fp8_mm(a, w, alpha, c=c, out_dtype=out_dtype, device=next(_devices))
    assert torch.equal(got, exact(a, w, alpha, c, out_dtype))
    assert_no_violation(v0)


def test_the_plan_asks_for_vector_scaling():
    a, w, alpha = operands(32, 64, 16)
    n0 = len(cslt.call_log())
    c = torch.ones(32, 16, dtype=torch.bfloat16)
    cslt.fp8_mm(a, w, alpha, c=c, device=next(_devices))
    log = "\n".join(cslt.call_log()[n0:])
    assert "ALPHA_VECTOR_SCALING" in log and "BETA_VECTOR_SCALING" in log, log
    assert "CUDA_R_8F_E4M3" in log, log


def test_unaligned_operands_are_copied():
    a, w, alpha = operands(32, 64, 16, seed=3)
    wbuf = torch.zeros(w.numel() + 3, dtype=torch.uint8)
    wv = wbuf[3:].view(E4M3).view(16, 64)
    wv.copy_(w)
    abuf = torch.zeros(33)
    av = abuf[1:]
    av.copy_(alpha)
    v0 = cslt.violations()
    got = cslt.fp8_mm(a, wv, av, device=next(_devices))
    assert torch.equal(got, exact(a, w, alpha))
    assert_no_violation(v0)


@pytest.mark.parametrize("M,K,N", [(16, 64, 16), (32, 48, 16), (32, 64, 8)])
def test_shapes_outside_the_8bit_rules_are_refused_before_any_call(M, K, N):
    a, w, alpha = operands(M, K, N)
    n0 = len(cslt.call_log())
    with pytest.raises(cslt.Refused, match="FP8 2:4 needs M and K multiples of 32 and N of 16"):
        cslt.fp8_mm(a, w, alpha, device=next(_devices))
    assert cslt.call_log()[n0:] == []


def test_fp16_output_is_not_what_sp24_asks_for():
    a, w, alpha = operands(32, 64, 16)
    with pytest.raises(cslt.Refused, match="BFloat16 or Float output, got Half"):
        cslt.fp8_mm(a, w, alpha, out_dtype=torch.float16, device=next(_devices))


@pytest.mark.parametrize("sm,served", [(80, False), (86, False), (87, False), (89, True), (90, True), (100, True),
                                       (120, True)])
def test_e4m3_is_served_where_the_docs_say(sm, served):
    cslt.set_arch(sm)
    try:
        a, w, alpha = operands(32, 64, 16)
        v0 = cslt.violations()
        if served:
            assert torch.equal(cslt.fp8_mm(a, w, alpha, device=next(_devices)), exact(a, w, alpha))
            assert_no_violation(v0)
        else:  # the glue falls back (and sparse24_fp8_mm refuses a GPU below 8.9 before it gets here)
            with pytest.raises(cslt.Refused):
                cslt.fp8_mm(a, w, alpha, device=next(_devices))
    finally:
        cslt.set_arch(90)


SEQUENCE = ["cusparseLtMatmulDescSetAttribute", "cusparseLtMatmulPlanInit", "cusparseLtSpMMACompress2",
            "cusparseLtMatmul"]


@pytest.mark.parametrize("function", SEQUENCE)
@pytest.mark.parametrize("status,outcome", [(NOT_SUPPORTED, cslt.Refused), (ARCH_MISMATCH, cslt.Refused),
                                            (INVALID_VALUE, cslt.CsltError), (EXECUTION_FAILED, cslt.CsltError)])
def test_fp8_statuses(function, status, outcome):
    a, w, alpha = operands(32, 64, 16)
    cslt.fail_next(function, status)
    with pytest.raises(outcome, match=function):
        cslt.fp8_mm(a, w, alpha, c=torch.zeros(32, 16, dtype=torch.bfloat16), device=next(_devices))
    cslt.fail_next("", 0)


def test_what_the_op_computes_from_sparsify24_fp8():
    """The glue's arithmetic around the GEMM for sparsify24_fp8's output and a per-tensor weight
    scale: alpha = a_scales * b_scale (fp32), C = bias; equal to sp24.reference_fp8.mm_fp8 within
    the fp32 rounding of alpha and of the accumulation."""
    g = torch.Generator().manual_seed(7)
    x = (torch.randn(64, 256, generator=g) * 2).bfloat16()
    v, i, s, _ = rf.sparsify24_fp8(x, "largest", "relu2")
    w = torch.randn(32, 256, generator=g)
    bs = (w.abs().amax() / 448).reshape(1)
    wq = rf.e4m3(w / bs)
    bias = torch.randn(32, generator=g).bfloat16()
    c = bias.view(1, 32).expand(64, 32).contiguous()
    got = cslt.fp8_mm(rf.to_dense_fp8(v, i), wq, s * bs, c=c, device=next(_devices))
    want = rf.mm_fp8(v, i, s, wq.t(), bs, bias)
    torch.testing.assert_close(got.float(), want.float(), rtol=1.6e-2, atol=1e-2)
