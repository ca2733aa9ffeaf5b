"""sparsify24 (row-wise 2:4) against the oracle: exact values (bits), indices and counts."""

import zlib

import pytest
import torch

from helpers import (DEVICES, DTYPES, assert_2to4_invariants, assert_bits_equal, randn, special, sp24, tie_free,
                     tie_heavy)
from sp24 import _ops, reference

SHAPES = [(1, 4), (3, 8), (7, 12), (16, 64), (33, 100), (5, 256), (128, 36)]
GENERATORS = {"tie_free": tie_free, "tie_heavy": tie_heavy, "randn": randn, "special": special}


def check_against_oracle(x, algo, activation, with_counts=True):
    v, i, c = _ops.sparsify24(x, algo, activation, with_counts)
    rv, ri, rc = reference.sparsify24(x.cpu(), algo, activation, with_counts)
    assert_bits_equal(i, ri, "indices")
    assert_bits_equal(v, rv, "values")
    if with_counts:
        assert torch.equal(c.cpu(), rc), "counts"
    assert_2to4_invariants(i)
    return v, i, c


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("kind", list(GENERATORS))
@pytest.mark.parametrize("algo", ["largest", "largest_abs"])
@pytest.mark.parametrize("activation", [None, "relu2"])
def test_matches_oracle(device, dtype, shape, kind, algo, activation):
    seed = zlib.crc32(repr((shape, kind, algo, activation, dtype)).encode()) % 10_000
    x = GENERATORS[kind](*shape, dtype, seed, device=device)
    check_against_oracle(x, algo, activation)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_keeps_two_largest_tie_free(device, dtype):
    """Semantics check independent of the oracle: on tie-free data, every kept value is >= every
    dropped value of its group, and exactly 2 of 4 are kept."""
    x = tie_free(64, 128, dtype, seed=1, device=device)
    s = sp24.sparsify24(x)
    mask = s.mask().cpu().reshape(64, 32, 4)
    g = x.cpu().float().reshape(64, 32, 4)
    assert bool((mask.sum(-1) == 2).all())
    kept_min = torch.where(mask, g, torch.inf).amin(-1)
    dropped_max = torch.where(~mask, g, -torch.inf).amax(-1)
    assert bool((kept_min > dropped_max).all())
    assert torch.equal(s.to_dense().cpu(), torch.where(mask.reshape(64, 128), x.cpu(), torch.zeros((), dtype=dtype)))


@pytest.mark.parametrize("device", DEVICES)
def test_tie_rule_lower_index_wins(device):
    x = torch.tensor([[1.0, 1.0, 1.0, 1.0, 0.0, -0.0, 0.0, -0.0, 2.0, 1.0, 2.0, 2.0, -3.0, 3.0, 3.0, -3.0]],
                     device=device)
    s = sp24.sparsify24(x)
    assert s.indices().cpu().tolist() == [[0, 1, 0, 1, 0, 2, 1, 2]]
    s_abs = sp24.sparsify24(x, algo="largest_abs")
    assert s_abs.indices().cpu().tolist() == [[0, 1, 0, 1, 0, 2, 0, 1]]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_nan_is_kept_and_inf_ranks(device, dtype):
    nan, inf = float("nan"), float("inf")
    x = torch.tensor([[-5.0, nan, 1.0, 2.0, nan, nan, nan, 9.0, -inf, inf, 0.0, -1.0, 1.0, -inf, -inf, nan]],
                     dtype=dtype, device=device)
    s = sp24.sparsify24(x)
    assert s.indices().cpu().tolist() == [[1, 3, 0, 1, 1, 2, 0, 3]]
    assert bool(s.values()[0, 0].isnan()) and bool(s.values()[0, 7].isnan())
    s_abs = sp24.sparsify24(x, algo="largest_abs")
    assert s_abs.indices().cpu().tolist() == [[0, 1, 0, 1, 0, 1, 1, 3]]


@pytest.mark.parametrize("device", DEVICES)
def test_nan_bits_preserved(device):
    """A kept NaN keeps its exact bits (payload and sign) when no activation is applied."""
    raw = torch.tensor([[0x7FC1, 0x3F80, 0xFFC0 - 0x10000, 0x0000]], dtype=torch.int16)  # bf16: nan(payload), 1, -nan, 0
    x = raw.view(torch.bfloat16).to(device)
    s = sp24.sparsify24(x)
    assert s.indices().cpu().tolist() == [[0, 2]]
    assert s.values().cpu().view(torch.int16).tolist() == [[0x7FC1, 0xFFC0 - 0x10000]]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_relu2_counts_and_values(device, dtype):
    x = randn(37, 48, dtype, seed=3, device=device)
    v, i, c = check_against_oracle(x, "largest", "relu2")
    y = torch.relu(x.cpu().float()).square().to(dtype)
    assert torch.equal(c.cpu(), (y != 0).sum(0, dtype=torch.int32))
    assert bool((v.cpu().float() >= 0).all())  # activated values are never negative
    assert not bool(torch.signbit(v.cpu()).any())  # relu(-0.0)^2 is +0.0


@pytest.mark.parametrize("device", DEVICES)
def test_counts_off_gives_empty(device):
    _, _, c = _ops.sparsify24(torch.ones(4, 8, device=device), "largest", None, False)
    assert c.shape == (0,) and c.dtype == torch.int32


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", [(0, 8), (5, 0), (0, 0)])
def test_empty(device, shape):
    x = torch.randn(*shape, device=device, dtype=torch.bfloat16)
    v, i, c = _ops.sparsify24(x, "largest", "relu2", True)
    assert v.shape == (shape[0], shape[1] // 2) and i.shape == v.shape
    assert torch.equal(c.cpu(), torch.zeros(shape[1], dtype=torch.int32))
    assert sp24.sparsify24(x).to_dense().shape == shape


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_row_strided_view(device, dtype):
    """A slice of a wider matrix (row stride > K) is read in place."""
    base = randn(20, 80, dtype, seed=5, device=device)
    x = base[2:15, 8:48]
    assert not x.is_contiguous() and x.stride(1) == 1
    check_against_oracle(x, "largest_abs", None)
    check_against_oracle(x, "largest", "relu2")


@pytest.mark.parametrize("device", DEVICES)
def test_api_accepts_any_view(device):
    """The Python API copies views whose elements are not adjacent (e.g. a transpose)."""
    base = randn(24, 16, torch.float16, seed=6, device=device)
    s = sp24.sparsify24(base.t(), algo="largest_abs")
    rv, ri, _ = reference.sparsify24(base.t().contiguous().cpu(), "largest_abs")
    assert_bits_equal(s.values(), rv)
    assert torch.equal(s.indices().cpu(), ri)


@pytest.mark.parametrize("device", DEVICES)
def test_deterministic(device):
    x = special(256, 512, torch.bfloat16, seed=9, device=device)
    a = _ops.sparsify24(x, "largest", "relu2", True)
    b = _ops.sparsify24(x, "largest", "relu2", True)
    for t, u in zip(a, b):
        assert_bits_equal(t, u)


# Property test: arbitrary float32 values (NaN, +-Inf, -0.0, subnormals included), arbitrary shapes.
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.extra import numpy as hnp  # noqa: E402
import numpy as np  # noqa: E402


@settings(max_examples=60, deadline=None)
@given(arr=hnp.arrays(np.float32, st.tuples(st.integers(0, 9), st.integers(0, 6).map(lambda g: 4 * g)),
                      elements=st.floats(width=32, allow_nan=True, allow_infinity=True)),
       algo=st.sampled_from(["largest", "largest_abs"]),
       activation=st.sampled_from([None, "relu2"]),
       dtype=st.sampled_from(DTYPES))
def test_property_matches_oracle(arr, algo, activation, dtype):
    x = torch.from_numpy(arr).to(dtype)
    check_against_oracle(x, algo, activation)
