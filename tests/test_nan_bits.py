"""NaN bits: a NaN that an op only selects or moves keeps its bits (sign and payload); a NaN
that sp24's arithmetic produces (activation="relu2", sparse24_apply_relu2_backward) is the one
canonical NaN of its dtype, sp24.reference.NAN_BITS = what NVIDIA GPUs write (0x7FFFFFFF for fp32,
0x7FFF for fp16 and bf16), on every backend and in the oracle. On CUDA the same tests run on a GPU;
the host-emulation lane compares the CUDA kernels with the CPU ones bit for bit."""

import pytest
import torch

from helpers import DEVICES, DTYPES, INT_VIEW, assert_bits_equal, special, sp24
from sp24 import _ops, reference

# NaNs of both signs with different payloads, quiet and signalling, per dtype (raw bits)
NANS = {
    torch.float32: [0x7FC00001, 0xFFC00000 - (1 << 32), 0x7F800001, 0x7FFFFFFF, 0xFFFFFFFF - (1 << 32)],
    torch.float16: [0x7E01, 0xFE00 - (1 << 16), 0x7C01, 0x7FFF, 0xFFFF - (1 << 16)],
    torch.bfloat16: [0x7FC1, 0xFFC0 - (1 << 16), 0x7F81, 0x7FFF, 0xFFFF - (1 << 16)],
}


def canonical_bits(dtype):
    b = reference.NAN_BITS[dtype]
    return torch.tensor(b, dtype=INT_VIEW[dtype]).item()


def from_bits(bits, dtype, device="cpu"):
    return torch.tensor(bits, dtype=INT_VIEW[dtype]).view(dtype).to(device)


def bits_of(t):
    return t.cpu().contiguous().view(INT_VIEW[t.dtype])


def test_canonical_nan_is_the_gpu_one():
    assert reference.NAN_BITS == {torch.float32: 0x7FFFFFFF, torch.float16: 0x7FFF, torch.bfloat16: 0x7FFF}
    for dtype in DTYPES:
        x = torch.cat([from_bits(NANS[dtype], dtype), torch.tensor([1.0, -0.0, float("inf")]).to(dtype)])
        y = reference.canonical_nan(x)
        assert bits_of(y)[:5].tolist() == [canonical_bits(dtype)] * 5
        assert torch.equal(bits_of(y)[5:], bits_of(x)[5:])  # numbers untouched


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_relu2_writes_the_canonical_nan(device, dtype):
    # one group per NaN: the NaN ranks first, so it is kept, next to 1, 2 and -3
    nans = NANS[dtype]
    x = torch.tensor([[0.0, 1.0, 2.0, -3.0] * len(nans)]).to(dtype)
    xi = x.view(INT_VIEW[dtype])
    for g, b in enumerate(nans):
        xi[0, 4 * g] = b
    v, i, c = _ops.sparsify24(x.to(device), "largest", "relu2", True)
    assert i.cpu().tolist() == [[0, 2] * len(nans)]
    assert bits_of(v)[0, 0::2].tolist() == [canonical_bits(dtype)] * len(nans)
    rv, ri, rc = reference.sparsify24(x, "largest", "relu2", True)
    assert_bits_equal(v, rv, "relu2 values vs oracle")
    assert torch.equal(i.cpu(), ri) and torch.equal(c.cpu(), rc)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_relu2_cslt_buffer_has_the_canonical_nan(device, dtype):
    if dtype == torch.float32:
        pytest.skip("sparsify24_cslt is 16-bit only (cuSPARSELt's fp32 mode is 1:2)")
    x = special(32, 64, dtype, seed=11)
    buf, idx, _ = _ops.sparsify24_cslt(x.to(device), "largest", "relu2", False)
    v, i, _ = reference.sparsify24(x, "largest", "relu2")
    got = _ops.values_of(buf, 32, 64, dtype)
    assert_bits_equal(got, v, "sparsify24_cslt values vs oracle")
    assert bool(got.isnan().any()), "the input must produce NaNs for this test to bite"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_relu2_backward_writes_the_canonical_nan(device, dtype):
    inf, nan = float("inf"), float("nan")
    n = len(NANS[dtype])
    # columns: NaN grad (payloads) x y2=4 | grad 1 x NaN y2 (payloads) | grad 1 x y2 -4 (sqrt < 0)
    #          | grad 0 x y2 inf | grad inf x y2 0 | grad 3 x y2 4 (a number: 12)
    grad = torch.tensor([[0.0] * n + [1.0] * n + [1.0, 0.0, inf, 3.0]]).to(dtype)
    y2 = torch.tensor([[4.0] * n + [nan] * n + [-4.0, inf, 0.0, 4.0]]).to(dtype)
    grad.view(INT_VIEW[dtype])[0, :n] = torch.tensor(NANS[dtype], dtype=INT_VIEW[dtype])
    y2.view(INT_VIEW[dtype])[0, n:2 * n] = torch.tensor(NANS[dtype], dtype=INT_VIEW[dtype])
    K = grad.size(1)
    pad = (-K) % 2
    grad = torch.cat([grad, torch.zeros(1, pad, dtype=dtype)], 1)
    y2v = torch.cat([y2, torch.zeros(1, pad, dtype=dtype)], 1)  # (1, H): the kept values of a 2:4 Y2
    H = grad.size(1)
    # a dense grad (1, 2H) whose kept positions (indices 0, 1 of every group) hold the grad values
    dense = torch.zeros(1, 2 * H, dtype=dtype)
    dense.view(1, H // 2, 4)[..., :2] = grad.view(1, H // 2, 2)
    idx = torch.tensor([[0, 1] * (H // 2)], dtype=torch.uint8)
    out = _ops.apply_relu2_backward(dense.to(device), y2v.to(device), idx.to(device))
    want = [canonical_bits(dtype)] * (2 * n + 3)
    assert bits_of(out)[0, :2 * n + 3].tolist() == want
    assert out.cpu()[0, 2 * n + 3].item() == 12.0
    assert_bits_equal(out, reference.apply_relu2_backward(dense, y2v, idx), "relu2 backward vs oracle")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_selected_nans_keep_their_bits_in_every_op(device, dtype):
    """sparsify24, sparsify24_transposed (column subset), sparse24_apply, sparse24_to_dense and
    sparse24_transposed_split only move NaNs: every payload and sign survives, bit for bit."""
    x = special(24, 32, dtype, seed=5)
    assert bool(x.isnan().any())
    xd = x.to(device)
    v, i, _ = _ops.sparsify24(xd, "largest_abs", None, False)
    rv, ri, _ = reference.sparsify24(x, "largest_abs")
    assert_bits_equal(v, rv, "sparsify24")
    assert torch.equal(i.cpu(), ri)
    # the kept NaNs carry the input's bits (payloads of both signs), never a canonical NaN
    kept = bits_of(v)[v.cpu().isnan()]
    assert kept.numel() > 0 and set(kept.tolist()) <= set(bits_of(x)[x.isnan()].tolist())
    assert canonical_bits(dtype) not in kept.tolist()
    cols = torch.tensor([3, 0, 31, 3, 17], dtype=torch.int64)
    tv, ti = _ops.sparsify24_transposed(xd, "largest_abs", cols.to(device))
    rtv, rti = reference.sparsify24_transposed(x, "largest_abs", cols)
    assert_bits_equal(tv, rtv, "sparsify24_transposed")
    assert torch.equal(ti.cpu(), rti)
    assert_bits_equal(_ops.apply(xd, i), reference.apply(x, ri), "sparse24_apply")
    assert_bits_equal(_ops.to_dense(v, i), reference.to_dense(rv, ri), "sparse24_to_dense")
    got = _ops.transposed_split(v, i, cols[:3].to(device), cols[3:].to(device), "largest_abs")
    want = reference.transposed_split(rv, ri, cols[:3], cols[3:], "largest_abs")
    for name, g, w in zip(("tvalues", "tindices", "dense_t"), got, want):
        assert_bits_equal(g, w, f"sparse24_transposed_split {name}")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("gradient", ["24sparse", "ste"])
def test_relu2_gradient_writes_the_canonical_nan(device, dtype, gradient):
    """The autograd backward of sparsify24(activation="relu2") is relu2 arithmetic too: 0 * inf and a
    NaN-payload input give the canonical NaN, like sparse24_apply_relu2_backward."""
    nan = from_bits([NANS[dtype][1]], dtype)  # a negative NaN with a payload: kept (NaN ranks first)
    x = torch.cat([torch.tensor([float("inf")]).to(dtype), torch.tensor([1.0, 0.0, 0.0]).to(dtype),
                   nan, torch.tensor([1.0, 0.0, 0.0]).to(dtype)]).reshape(2, 4).to(device).requires_grad_()
    s = sp24.sparsify24(x, activation="relu2", gradient=gradient)
    s.values().backward(torch.tensor([[0.0, 1.0], [1.0, 1.0]], dtype=dtype, device=device))
    g = bits_of(x.grad)
    assert g[0, 0].item() == canonical_bits(dtype), hex(g[0, 0].item())  # 0 * 2*inf
    assert g[1, 0].item() == canonical_bits(dtype), hex(g[1, 0].item())  # NaN input
