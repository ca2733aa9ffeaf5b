"""Pattern application, the fused Squared-ReLU backward, decompression and the 2:4 @ dense matmul."""

import pytest
import torch

from helpers import DEVICES, DTYPES, assert_bits_equal, gen, randn, special, sp24, tie_free
from sp24 import _ops, reference


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 4), (9, 24), (64, 128)])
def test_apply_matches_oracle(device, dtype, shape):
    src = randn(*shape, dtype, seed=20, device=device)
    other = special(*shape, dtype, seed=21, device=device)
    _, idx, _ = _ops.sparsify24(src, "largest", "relu2", False)
    got = _ops.apply(other, idx)
    assert_bits_equal(got, reference.apply(other.cpu(), idx.cpu()))
    # applying a tensor's own pattern to itself gives back its own values
    v, i, _ = _ops.sparsify24(other, "largest_abs", None, False)
    assert_bits_equal(_ops.apply(other, i), v)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_apply_strided_view(device, dtype):
    base = randn(30, 72, dtype, seed=22, device=device)
    x = base[3:19, 4:68]
    _, idx, _ = _ops.sparsify24(x.contiguous(), "largest", None, False)
    assert_bits_equal(_ops.apply(x, idx), reference.apply(x.contiguous().cpu(), idx.cpu()))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_relu2_backward_matches_oracle(device, dtype):
    y1 = randn(33, 64, dtype, seed=23, device=device)
    grad = randn(33, 64, dtype, seed=24, device=device)
    y2v, idx, _ = _ops.sparsify24(y1, "largest", "relu2", False)
    got = _ops.apply_relu2_backward(grad, y2v, idx)
    assert_bits_equal(got, reference.apply_relu2_backward(grad.cpu(), y2v.cpu(), idx.cpu()))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_relu2_backward_sqrt_is_correctly_rounded(device, dtype):
    """y2 values that are not squares of representable numbers (uniform [0, 4)): the kernels' sqrt
    is correctly rounded (sqrtf / std::sqrt), and so is the oracle's; torch's CPU fp32 sqrt is 1 ulp
    off for ~20% of such inputs, which squares of fp32 values (the test above) never exercise."""
    g = torch.Generator().manual_seed(27)
    y2v = (torch.rand(64, 32, generator=g) * 4).to(dtype)
    idx = torch.tensor([0, 2, 1, 3], dtype=torch.uint8).repeat(64, 8)
    grad = torch.ones(64, 64, dtype=dtype)
    got = _ops.apply_relu2_backward(grad.to(device), y2v.to(device), idx.to(device))
    want = reference.apply_relu2_backward(grad, y2v, idx)
    assert_bits_equal(got, want)
    if dtype == torch.float32:  # the inputs do hit the cases where a 1-ulp-off sqrt would differ
        assert not torch.equal(want, reference.apply(grad, idx) * (2.0 * y2v.sqrt()))


def test_relu2_backward_is_the_squared_relu_derivative():
    """On tie-free positive inputs where relu(y1)^2 is exact in fp32, dY1 = dY2 * 2*relu(y1)."""
    y1 = tie_free(16, 32, torch.float32, seed=25)  # multiples of 1/8: squares exact in fp32
    grad = randn(16, 32, torch.float32, seed=26)
    y2v, idx, _ = _ops.sparsify24(y1, "largest", "relu2", False)
    got = _ops.apply_relu2_backward(grad, y2v, idx)
    expect = reference.apply(grad * 2 * torch.relu(y1), idx)
    assert torch.equal(got, expect)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_to_dense_exact(device, dtype):
    x = special(17, 40, dtype, seed=27, device=device)
    s = sp24.sparsify24(x, algo="largest_abs")
    dense = s.to_dense()
    assert_bits_equal(dense, reference.to_dense(s.values().cpu(), s.indices().cpu()))
    m = s.mask()
    assert m.dtype == torch.bool and int(m.sum()) == x.numel() // 2
    assert_bits_equal(dense[m], x[m])
    assert bool((dense[~m] == 0).all()) and not bool(torch.signbit(dense[~m]).any())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mkn", [(1, 4, 1), (7, 16, 5), (64, 128, 32), (33, 96, 17)])
def test_mm_exact_on_integers(device, dtype, mkn):
    """Small integers: every product and partial sum is exact in fp32, so the result is exact."""
    M, K, N = mkn
    g = gen(M * K + N)
    a = torch.randint(-4, 5, (M, K), generator=g).to(dtype).to(device)
    b = torch.randint(-4, 5, (K, N), generator=g).to(dtype).to(device)
    bias = torch.randint(-4, 5, (N,), generator=g).to(dtype).to(device)
    s = sp24.sparsify24(a, algo="largest_abs")
    exact = s.to_dense().double() @ b.double() + bias.double()
    out = sp24.mm(s, b, bias=bias)
    assert out.dtype == dtype
    assert torch.equal(out.double(), exact)
    assert torch.equal((s @ b).double(), s.to_dense().double() @ b.double())
    out32 = sp24.mm(s, b, out_dtype=torch.float32)
    assert out32.dtype == torch.float32


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_mm_random_close(device, dtype):
    a = randn(64, 256, dtype, seed=30, device=device)
    b = randn(256, 48, dtype, seed=31, device=device)
    s = sp24.sparsify24(a)
    out = s @ b
    ref = reference.mm(s.values().cpu(), s.indices().cpu(), b.cpu())
    tol = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}[dtype]
    torch.testing.assert_close(out.cpu().float(), ref.float(), rtol=tol, atol=tol)


@pytest.mark.parametrize("device", DEVICES)
def test_mm_strided_b(device):
    a = randn(8, 32, torch.float32, seed=32, device=device)
    b = randn(16, 32, torch.float32, seed=33, device=device).t()  # (32, 16), column-major view
    s = sp24.sparsify24(a)
    torch.testing.assert_close(s @ b, s.to_dense() @ b)


@pytest.mark.parametrize("device", DEVICES)
def test_mm_empty(device):
    s = sp24.sparsify24(torch.zeros(0, 8, device=device))
    assert (s @ torch.zeros(8, 3, device=device)).shape == (0, 3)
    s = sp24.sparsify24(torch.zeros(4, 0, device=device))
    out = s @ torch.zeros(0, 3, device=device)
    assert out.shape == (4, 3) and bool((out == 0).all())
