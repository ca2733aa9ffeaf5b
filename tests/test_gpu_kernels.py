"""CUDA kernels vs the CPU kernels, bit for bit.

Every case runs the same input through the CPU op and the CUDA op and compares the bits. Shapes
cover the vectorised paths (K % 8 == 0, aligned rows) and the element-wise ones (K % 8 == 4,
misaligned row strides, slices), tiles cut by the matrix edge, NaN/Inf/-0.0 and heavy ties.
Tests whose id contains "small" form the compute-sanitizer subset (bench/gpu_check.sh).
"""

from __future__ import annotations

import pytest
import torch

from helpers import (DTYPES, assert_2to4_invariants, assert_bits_equal, gen, randn, requires_cuda, special,
                     tie_free, tie_heavy)
from sp24 import _ops, reference

pytestmark = [requires_cuda, pytest.mark.gpu]

GENERATORS = {"tie_free": tie_free, "tie_heavy": tie_heavy, "special": special, "randn": randn}

# (M, K): "small" ones are quick under compute-sanitizer.
ROW_SHAPES_SMALL = [(1, 4), (3, 12), (5, 8), (17, 36), (64, 256), (65, 264), (33, 260)]
ROW_SHAPES_LARGE = [(130, 1028), (257, 2056), (1000, 4096)]
ROW_SHAPES = [pytest.param(s, id=f"small-{s[0]}x{s[1]}") for s in ROW_SHAPES_SMALL] + \
             [pytest.param(s, id=f"large-{s[0]}x{s[1]}") for s in ROW_SHAPES_LARGE]

# (T, N) for the transposed kernel: T % 4 == 0, any N.
T_SHAPES_SMALL = [(4, 1), (12, 7), (64, 64), (100, 65), (68, 136)]
T_SHAPES_LARGE = [(256, 130), (1028, 520), (4096, 264)]
T_SHAPES = [pytest.param(s, id=f"small-{s[0]}x{s[1]}") for s in T_SHAPES_SMALL] + \
           [pytest.param(s, id=f"large-{s[0]}x{s[1]}") for s in T_SHAPES_LARGE]


def _both(fn, *args):
    """Runs fn on CPU copies and on CUDA copies of the tensor args; returns (cpu, cuda) outputs."""
    cpu = fn(*[a.cpu() if isinstance(a, torch.Tensor) else a for a in args])
    cuda = fn(*[a.cuda() if isinstance(a, torch.Tensor) else a for a in args])
    return cpu, cuda


def _strided(x: torch.Tensor, kind: str) -> torch.Tensor:
    """The same values as x (M, K) behind a non-contiguous layout."""
    M, K = x.shape
    if kind == "contig":
        return x
    if kind == "wide":  # row stride K + 4, data offset of 2 elements: misaligned rows
        big = torch.zeros(M, K + 4, dtype=x.dtype)
        big[:, 2:2 + K] = x
        return big[:, 2:2 + K]
    if kind == "every_other_row":
        big = torch.zeros(2 * M, K, dtype=x.dtype)
        big[::2] = x
        return big[::2]
    raise AssertionError(kind)


@pytest.mark.parametrize("shape", ROW_SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("data", list(GENERATORS))
@pytest.mark.parametrize("algo", ["largest", "largest_abs"])
@pytest.mark.parametrize("activation", [None, "relu2"])
def test_sparsify24_matches_cpu(shape, dtype, data, algo, activation):
    M, K = shape
    x = GENERATORS[data](M, K, dtype, seed=M * 131 + K)
    (v0, i0, c0), (v1, i1, c1) = _both(lambda t: _ops.sparsify24(t, algo, activation, True), x)
    assert_bits_equal(v1, v0, "values")
    assert torch.equal(i1.cpu(), i0), "indices differ"
    assert torch.equal(c1.cpu(), c0), "counts differ"
    assert_2to4_invariants(i1)
    # Without counts the kernel takes another branch: same values/indices, empty counts.
    v2, i2, c2 = _ops.sparsify24(x.cuda(), algo, activation, False)
    assert_bits_equal(v2, v0, "values (no counts)")
    assert torch.equal(i2.cpu(), i0) and c2.numel() == 0


@pytest.mark.parametrize("layout", ["wide", "every_other_row"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [pytest.param((9, 40), id="small-9x40"), pytest.param((70, 520), id="large-70x520")])
def test_sparsify24_strided_input(layout, dtype, shape):
    x = special(*shape, dtype, seed=7)
    ref_v, ref_i, ref_c = _ops.sparsify24(_strided(x, layout), "largest", "relu2", True)
    xg = _strided(x, layout).cuda() if layout == "contig" else _strided_cuda(x, layout)
    assert not xg.is_contiguous()
    v, i, c = _ops.sparsify24(xg, "largest", "relu2", True)
    assert_bits_equal(v, ref_v, "values")
    assert torch.equal(i.cpu(), ref_i) and torch.equal(c.cpu(), ref_c)


def _strided_cuda(x: torch.Tensor, kind: str) -> torch.Tensor:
    """_strided built on the GPU (.cuda() of a strided CPU view would be contiguous)."""
    M, K = x.shape
    if kind == "wide":
        big = torch.zeros(M, K + 4, dtype=x.dtype, device="cuda")
        big[:, 2:2 + K] = x.cuda()
        return big[:, 2:2 + K]
    big = torch.zeros(2 * M, K, dtype=x.dtype, device="cuda")
    big[::2] = x.cuda()
    return big[::2]


def test_sparsify24_small_counts_are_column_nonzeros():
    # Counts summed over several blocks along M: atomics from many blocks into one column.
    x = randn(1000, 520, torch.bfloat16, seed=3)
    _, _, c = _ops.sparsify24(x.cuda(), "largest", "relu2", True)
    expected = (reference.relu2(x) != 0).sum(0, dtype=torch.int32)
    assert torch.equal(c.cpu(), expected)


def test_sparsify24_small_deterministic():
    x = special(300, 1032, torch.float16, seed=11).cuda()
    a = _ops.sparsify24(x, "largest_abs", "relu2", True)
    b = _ops.sparsify24(x, "largest_abs", "relu2", True)
    for u, w in zip(a, b):
        assert torch.equal(u.view(torch.uint8) if u.dtype.is_floating_point else u,
                           w.view(torch.uint8) if w.dtype.is_floating_point else w)


def test_sparsify24_small_empty():
    for M, K in [(0, 8), (5, 0)]:
        v, i, c = _ops.sparsify24(torch.zeros(M, K, device="cuda", dtype=torch.bfloat16), "largest", None, True)
        assert v.shape == (M, K // 2) and i.shape == (M, K // 2) and c.shape == (K,)


def _columns(kind: str, N: int, seed: int):
    g = gen(seed)
    if kind == "all":
        return None
    if kind == "subset95":  # the feature split: ~95% of the columns, in density (i.e. arbitrary) order
        keep = max(1, (N * 95) // 100)
        return torch.randperm(N, generator=g)[:keep]
    if kind == "sorted_subset":
        return torch.randperm(N, generator=g)[: max(1, N // 2)].sort().values
    if kind == "duplicates":
        return torch.randint(0, N, (N + 3,), generator=g)
    if kind == "empty":
        return torch.zeros(0, dtype=torch.int64)
    raise AssertionError(kind)


@pytest.mark.parametrize("shape", T_SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("data", ["tie_free", "tie_heavy", "special"])
@pytest.mark.parametrize("cols", ["all", "subset95", "sorted_subset", "duplicates", "empty"])
def test_sparsify24_transposed_matches_cpu(shape, dtype, data, cols):
    T, N = shape
    x = GENERATORS[data](T, N, dtype, seed=T * 7 + N)
    columns = _columns(cols, N, seed=T + N)
    for algo in ("largest", "largest_abs"):
        v0, i0 = _ops.sparsify24_transposed(x, algo, columns)
        v1, i1 = _ops.sparsify24_transposed(x.cuda(), algo, None if columns is None else columns.cuda())
        assert_bits_equal(v1, v0, f"values ({algo})")
        assert torch.equal(i1.cpu(), i0), f"indices differ ({algo})"
        assert_2to4_invariants(i1)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [pytest.param((20, 44), id="small-20x44"), pytest.param((260, 300), id="large-260x300")])
def test_sparsify24_transposed_strided_input(dtype, shape):
    T, N = shape
    x = special(T, N, dtype, seed=5)
    big = torch.zeros(T, N + 3, dtype=dtype, device="cuda")
    big[:, 1:1 + N] = x.cuda()
    xg = big[:, 1:1 + N]
    columns = _columns("subset95", N, seed=1)
    v0, i0 = _ops.sparsify24_transposed(x, "largest_abs", columns)
    v1, i1 = _ops.sparsify24_transposed(xg, "largest_abs", columns.cuda())
    assert_bits_equal(v1, v0, "values")
    assert torch.equal(i1.cpu(), i0)


def test_sparsify24_transposed_small_matches_reference():
    # Independent of the CPU kernel: the oracle transposes explicitly.
    x = tie_free(64, 40, torch.bfloat16, seed=9)
    columns = _columns("subset95", 40, seed=2)
    v, i = _ops.sparsify24_transposed(x.cuda(), "largest_abs", columns.cuda())
    rv, ri = reference.sparsify24_transposed(x, "largest_abs", columns)
    assert_bits_equal(v, rv, "values")
    assert torch.equal(i.cpu(), ri)


def test_sparsify24_transposed_small_deterministic():
    x = special(512, 200, torch.bfloat16, seed=4).cuda()
    columns = _columns("duplicates", 200, seed=3).cuda()
    a = _ops.sparsify24_transposed(x, "largest_abs", columns)
    b = _ops.sparsify24_transposed(x, "largest_abs", columns)
    assert torch.equal(a[0].view(torch.int16), b[0].view(torch.int16)) and torch.equal(a[1], b[1])


def _pattern(M: int, K: int, seed: int) -> torch.Tensor:
    _, idx, _ = reference.sparsify24(tie_free(M, K, torch.float32, seed=seed))
    return idx


@pytest.mark.parametrize("shape", [pytest.param((3, 12), id="small-3x12"), pytest.param((33, 260), id="small-33x260"),
                                   pytest.param((257, 2056), id="large-257x2056")])
@pytest.mark.parametrize("dtype", DTYPES)
def test_apply_and_relu2_backward_match_cpu(shape, dtype):
    M, K = shape
    idx = _pattern(M, K, seed=M + K)
    x = special(M, K, dtype, seed=1)
    (a0, a1) = _both(_ops.apply, x, idx)
    assert_bits_equal(a1, a0, "apply")
    y2 = reference.relu2(randn(M, K, dtype, seed=2))
    y2v = reference.apply(y2, idx)
    g = randn(M, K, dtype, seed=3)
    (b0, b1) = _both(_ops.apply_relu2_backward, g, y2v, idx)
    assert_bits_equal(b1, b0, "relu2 backward")
    # strided grad
    big = torch.zeros(M, K + 4, dtype=dtype, device="cuda")
    big[:, 4:] = g.cuda()
    b2 = _ops.apply_relu2_backward(big[:, 4:], y2v.cuda(), idx.cuda())
    assert_bits_equal(b2, b0, "relu2 backward (strided)")


@pytest.mark.parametrize("shape", [pytest.param((3, 12), id="small-3x12"), pytest.param((130, 1028), id="large-130x1028")])
@pytest.mark.parametrize("dtype", DTYPES)
def test_to_dense_matches_cpu(shape, dtype):
    M, K = shape
    v, i, _ = reference.sparsify24(special(M, K, dtype, seed=6))
    (d0, d1) = _both(_ops.to_dense, v, i)
    assert_bits_equal(d1, d0, "to_dense")
