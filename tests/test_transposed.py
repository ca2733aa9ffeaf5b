"""sparsify24_transposed == sparsify24 of the contiguous (column-subset) transpose, exactly."""

import pytest
import torch

from helpers import DEVICES, DTYPES, assert_2to4_invariants, assert_bits_equal, gen, randn, special, sp24, tie_heavy
from sp24 import _ops, reference


def expected(x, algo, columns):
    xt = (x if columns is None else x[:, columns]).t().contiguous()
    v, i, _ = _ops.sparsify24(xt, algo, None, False)
    return v, i


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(4, 1), (8, 3), (12, 40), (64, 33), (100, 8), (36, 130)])
@pytest.mark.parametrize("algo", ["largest", "largest_abs"])
@pytest.mark.parametrize("gen_fn", [randn, tie_heavy, special])
def test_equals_sparsify_of_transpose(device, dtype, shape, algo, gen_fn):
    x = gen_fn(*shape, dtype, seed=shape[0] * 131 + shape[1], device=device)
    v, i = _ops.sparsify24_transposed(x, algo, None)
    ev, ei = expected(x, algo, None)
    rv, ri = reference.sparsify24_transposed(x.cpu(), algo, None)
    assert_bits_equal(i, ei, "indices vs sparsify24(x.T)")
    assert_bits_equal(v, ev, "values vs sparsify24(x.T)")
    assert_bits_equal(i, ri, "indices vs oracle")
    assert_bits_equal(v, rv, "values vs oracle")
    assert_2to4_invariants(i)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_column_subset_in_given_order(device, dtype):
    x = randn(48, 40, dtype, seed=11, device=device)
    cols = torch.randperm(40, generator=gen(12))[:29].to(device)  # ~73%, shuffled
    v, i = _ops.sparsify24_transposed(x, "largest_abs", cols)
    ev, ei = expected(x, "largest_abs", cols)
    assert v.shape == (29, 24)
    assert_bits_equal(i, ei)
    assert_bits_equal(v, ev)
    s = sp24.sparsify24_transposed(x, columns=cols.tolist())
    assert torch.equal(s.to_dense(), reference.sparsify24_dense(x[:, cols].t().contiguous(), "largest_abs"))


@pytest.mark.parametrize("device", DEVICES)
def test_duplicate_and_empty_columns(device):
    x = randn(16, 8, torch.float32, seed=13, device=device)
    cols = torch.tensor([5, 5, 0], device=device)
    v, i = _ops.sparsify24_transposed(x, "largest", cols)
    assert torch.equal(v[0], v[1]) and torch.equal(i[0], i[1])
    ev, ei = expected(x, "largest", cols)
    assert_bits_equal(v, ev)
    v0, i0 = _ops.sparsify24_transposed(x, "largest", torch.empty(0, dtype=torch.int64, device=device))
    assert v0.shape == (0, 8) and i0.shape == (0, 8)


@pytest.mark.parametrize("device", DEVICES)
def test_row_strided_view(device):
    base = randn(40, 64, torch.bfloat16, seed=14, device=device)
    x = base[4:36, 16:48]
    assert not x.is_contiguous()
    v, i = _ops.sparsify24_transposed(x, "largest_abs", None)
    ev, ei = expected(x.contiguous(), "largest_abs", None)
    assert_bits_equal(v, ev)
    assert_bits_equal(i, ei)


@pytest.mark.parametrize("device", DEVICES)
def test_empty_tokens(device):
    v, i = _ops.sparsify24_transposed(torch.zeros(0, 12, device=device), "largest_abs", None)
    assert v.shape == (12, 0) and i.shape == (12, 0)
