"""sparsify24_cslt: relu2 + 2:4 + the GEMM-ready buffer in one op.

Contract on every device: (compressed, indices, counts) == (sparse24_cslt_compress(values, indices),
indices, counts) of sparsify24(x, ...), and compressed's first M*K/2 elements are the values. On CUDA
(sm_90) one kernel writes the buffer while sparsifying, for a shape only after that kernel's bytes for
the shape equalled the two-step result (csrc/cusparselt/cslt.h).
"""

from __future__ import annotations

import pytest
import torch

from helpers import DEVICES, assert_bits_equal, randn, requires_cuda, special, tie_heavy
from sp24 import _ops, reference

LOWP = [torch.float16, torch.bfloat16]
SHAPES = [(16, 32), (64, 128), (48, 96), (128, 256)]


def _inputs(M, K, dtype, kind, seed):
    return {"randn": randn, "ties": tie_heavy, "special": special}[kind](M, K, dtype, seed=seed)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", LOWP)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("kind", ["randn", "ties", "special"])
@pytest.mark.parametrize("activation,algo,counts", [("relu2", "largest", True), (None, "largest_abs", False)])
def test_matches_sparsify_then_compress(device, dtype, shape, kind, activation, algo, counts):
    M, K = shape
    x = _inputs(M, K, dtype, kind, seed=M + K).to(device)
    buf, idx, cnt = _ops.sparsify24_cslt(x, algo, activation, counts)
    v, i, c = _ops.sparsify24(x, algo, activation, counts)
    assert buf.dtype == torch.uint8 and buf.dim() == 1
    assert torch.equal(idx, i) and torch.equal(cnt, c)
    assert_bits_equal(_ops.values_of(buf, M, K, dtype), v)
    assert torch.equal(buf, _ops.cslt_compress(v, i))
    if device == "cpu":  # and the oracle, bit for bit (a NaN made by relu2 is the canonical one)
        rb, ri, rc = reference.sparsify24_cslt(x, algo, activation, counts)
        nv = M * K // 2 * 2
        assert_bits_equal(_ops.values_of(buf, M, K, dtype), _ops.values_of(rb, M, K, dtype))
        assert torch.equal(buf[nv:], rb[nv:]) and torch.equal(idx, ri) and torch.equal(cnt, rc)


@pytest.mark.parametrize("device", DEVICES)
def test_row_strided_view_and_empty(device):
    base = randn(64, 160, torch.bfloat16, seed=3).to(device)
    x = base[:, :128]  # row stride 160
    buf, idx, _ = _ops.sparsify24_cslt(x, "largest", "relu2", False)
    v, i, _ = _ops.sparsify24(x.contiguous(), "largest", "relu2", False)
    assert torch.equal(idx, i) and torch.equal(buf, _ops.cslt_compress(v, i))
    e = torch.empty(0, 32, dtype=torch.bfloat16, device=device)
    buf, idx, cnt = _ops.sparsify24_cslt(e, "largest", None, True)
    assert buf.numel() == 0 and idx.shape == (0, 16) and torch.equal(cnt, torch.zeros(32, dtype=torch.int32, device=device))


def test_meta_shapes_and_opcheck():
    x = torch.empty(48, 96, dtype=torch.float16, device="meta")
    buf, idx, cnt = _ops.sparsify24_cslt(x, "largest", "relu2", True)
    assert buf.shape == (48 * 48 * 2 + 128 * 128 // 8,) and buf.dtype == torch.uint8
    assert idx.shape == (48, 48) and cnt.shape == (96,)
    x = randn(32, 64, torch.bfloat16, seed=4)
    torch.library.opcheck(torch.ops.sp24.sparsify24_cslt.default, (x, "largest", "relu2", True))


@pytest.mark.parametrize("device", DEVICES)
def test_errors_name_the_op_rule_and_value(device):
    x = randn(32, 64, torch.float32, seed=5).to(device)
    with pytest.raises(TypeError, match=r"sp24.sparsify24_cslt: x.dtype must be torch.float16 or torch.bfloat16 "
                                        r".* got torch.float32"):
        _ops.sparsify24_cslt(x)
    with pytest.raises(ValueError, match=r"sp24.sparsify24_cslt: .* multiples of 16 .* got \(32, 40\)"):
        _ops.sparsify24_cslt(randn(32, 40, torch.bfloat16, seed=5).to(device))
    with pytest.raises(ValueError, match=r"sp24.sparsify24_cslt: algo must be .* got 'smallest'"):
        _ops.sparsify24_cslt(x.bfloat16(), "smallest")
    with pytest.raises(ValueError, match=r"sp24.sparsify24_cslt: activation must be .* got 'gelu'"):
        _ops.sparsify24_cslt(x.bfloat16(), "largest", "gelu")


# ---- CUDA: the fused kernel is checked before it serves --------------------------------------------
@requires_cuda
@pytest.mark.parametrize("dtype", LOWP)
def test_cuda_fused_writer_is_checked_before_it_serves(dtype, monkeypatch):
    from sp24 import _C
    if torch.cuda.get_device_capability()[0] != 9:
        pytest.skip("the fused writer targets cuSPARSELt's sm_90 layout; elsewhere the two steps always run")
    M, K = 448, 224  # a shape no other test uses: a fresh check
    # no activation: randn has no zeros, so every kept value is non-zero and cuSPARSELt's bytes are
    # unique (with relu2 a group may keep zeros, whose encoded positions cuSPARSELt may choose freely:
    # same GEMM, other bytes; test_relu2_buffer_gives_the_same_gemm covers that case)
    x = randn(M, K, dtype, seed=21).cuda()
    monkeypatch.setenv("SP24_CSLT_DIRECT", "0")
    want = _ops.sparsify24_cslt(x, "largest", None, True)
    monkeypatch.delenv("SP24_CSLT_DIRECT")
    first = _ops.sparsify24_cslt(x, "largest", None, True)  # the check runs here
    name = {torch.bfloat16: "BFloat16", torch.float16: "Half"}[dtype]
    checks = [c for c in _C.cslt_direct_layout_checks()
              if (c["writer"], c["M"], c["K"], c["dtype"]) == ("fused_sparsify", M, K, name)]
    assert len(checks) == 1, _C.cslt_direct_layout_checks()
    x2 = randn(M, K, dtype, seed=22).cuda()
    for got, ref in ((first, want), (_ops.sparsify24_cslt(x, "largest", None, True), want)):
        assert all(torch.equal(a, b) for a, b in zip(got, ref))
    monkeypatch.setenv("SP24_CSLT_DIRECT", "0")
    want2 = _ops.sparsify24_cslt(x2, "largest", None, True)
    monkeypatch.delenv("SP24_CSLT_DIRECT")
    got2 = _ops.sparsify24_cslt(x2, "largest", None, True)  # the fused kernel, if the check passed
    assert all(torch.equal(a, b) for a, b in zip(got2, want2))
    assert checks[0]["same"], ("the fused sparsify kernel's buffer differs from sparsify24 + cuSPARSELt's compression "
                               "for this shape (results stay right: the two steps keep running)")


@requires_cuda
@pytest.mark.parametrize("dtype", LOWP)
@pytest.mark.parametrize("shape", [(128, 256), (48, 96)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_relu2_buffer_gives_the_same_gemm(dtype, shape):
    """relu2 output keeps zeros in some groups; whichever writer made the buffer, the GEMM from it
    equals sparse24_mm on the canonical values and indices, bit for bit."""
    M, K = shape
    x = randn(M, K, dtype, seed=31).cuda()
    for _ in range(2):  # the first call may run the writers' check, the second uses its verdict
        buf, idx, _ = _ops.sparsify24_cslt(x, "largest", "relu2", False)
        v, i, _ = _ops.sparsify24(x, "largest", "relu2", False)
        b = randn(K, 64, dtype, seed=32).cuda()
        assert_bits_equal(_ops.cslt_mm(buf, M, K, b), _ops.mm(v, i, b))
