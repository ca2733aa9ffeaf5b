"""sparse24_transposed_split == the composition of ops it fuses for the FFN backward, exactly:

    a = sparse24_to_dense(values, indices)
    (tvalues, tindices) = sparsify24_transposed(a, algo, sparse_cols)
    dense_t = a.index_select(1, dense_cols).t().contiguous()

and == sp24.reference.transposed_split, bit for bit, on every dtype, with NaN/Inf/-0.0 and ties.
"""

import pytest
import torch

from helpers import (DEVICES, DTYPES, assert_2to4_invariants, assert_bits_equal, gen, randn, requires_cuda, special,
                     tie_heavy)
from sp24 import _ops, reference

ops = torch.ops.sp24


def compressed(T, F, dtype, seed, gen_fn=randn, device="cpu"):
    """A row-wise 2:4 matrix (T, F) as (values, indices), from sparsify24 of generated data."""
    v, i, _ = ops.sparsify24(gen_fn(T, F, dtype, seed=seed, device=device), "largest", None, False)
    return v, i


def composition(values, indices, sparse_cols, dense_cols, algo):
    a = ops.sparse24_to_dense(values, indices)
    tv, ti = ops.sparsify24_transposed(a, algo, sparse_cols)
    return tv, ti, a.index_select(1, dense_cols).t().contiguous()


def check(values, indices, sparse_cols, dense_cols, algo="largest_abs"):
    got = _ops.transposed_split(values, indices, sparse_cols, dense_cols, algo)
    want = composition(values, indices, sparse_cols, dense_cols, algo)
    ref = reference.transposed_split(values.cpu(), indices.cpu(), sparse_cols.cpu(), dense_cols.cpu(), algo)
    T = values.shape[0]
    assert got[0].shape == (sparse_cols.numel(), T // 2) and got[2].shape == (dense_cols.numel(), T)
    for name, g, w, r in zip(("tvalues", "tindices", "dense_t"), got, want, ref):
        assert_bits_equal(g, w, f"{name} vs the composition")
        assert_bits_equal(g, r, f"{name} vs the oracle")
    assert_2to4_invariants(got[1])
    return got


def split_cols(F, n_dense, seed, device):
    """A shuffled split of range(F) into (sparse_cols, dense_cols), both in random order."""
    perm = torch.randperm(F, generator=gen(seed))
    return perm[n_dense:].to(device), perm[:n_dense].to(device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(4, 4), (4, 12), (8, 20), (68, 36), (100, 132), (128, 64)])
@pytest.mark.parametrize("gen_fn", [randn, tie_heavy, special])
def test_equals_composition(device, dtype, shape, gen_fn):
    T, F = shape
    seed = T * 131 + F
    v, i = compressed(T, F, dtype, seed, gen_fn, device)
    sc, dc = split_cols(F, max(1, F // 4), seed + 1, device)
    for algo in ("largest_abs", "largest"):
        check(v, i, sc, dc, algo)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_column_list_edge_cases(device, dtype):
    T, F = 72, 40
    v, i = compressed(T, F, dtype, 7, special, device)
    cols = torch.arange(F, device=device)
    none = torch.empty(0, dtype=torch.int64, device=device)
    check(v, i, cols, none)            # all sparse
    check(v, i, none, cols)            # all dense
    check(v, i, none, none)            # nothing asked
    check(v, i, cols.flip(0), cols.flip(0))  # both lists cover everything, reversed
    dup = torch.tensor([5, 5, 0, 39, 5, 17], device=device)
    tv, ti, dt = check(v, i, dup, dup.flip(0))  # duplicates, in both lists at once
    assert_bits_equal(tv[0], tv[4], "duplicate sparse column")
    assert_bits_equal(ti[1], ti[4], "duplicate sparse column")
    assert_bits_equal(dt[1], dt[5], "duplicate dense column")
    sc, dc = split_cols(F, 3, 8, device)
    check(v, i, sc[:5], dc)             # a subset of the features only


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_special_kept_values_and_dropped_zeros(device, dtype):
    # Hand-made compressed rows: kept -0.0, NaN, +-Inf; every dropped position reads as +0.0, so a
    # token-direction group mixing a kept -0.0 and dropped zeros ties and keeps the lowest tokens.
    T, F = 8, 8
    g = gen(21)
    pool = torch.tensor([float("nan"), float("inf"), float("-inf"), -0.0, 0.0, 1.0, -2.0, 0.5])
    v = pool[torch.randint(0, len(pool), (T, F // 2), generator=g)].to(dtype).to(device)
    pairs = torch.tensor([[0, 1], [0, 2], [0, 3], [1, 2], [1, 3], [2, 3]], dtype=torch.uint8)
    i = pairs[torch.randint(0, 6, (T, F // 4), generator=g)].reshape(T, F // 2).to(device)
    cols = torch.arange(F, device=device)
    tv, ti, dt = check(v, i, cols, cols)
    dense = reference.to_dense(v.cpu(), i.cpu())
    dropped = ~reference.indices_to_mask(i.cpu())
    assert bool((dense[dropped].view(torch.int16 if dtype != torch.float32 else torch.int32) == 0).all())
    assert_bits_equal(dt, dense.t().contiguous(), "dense_t is A.T")


@pytest.mark.parametrize("device", DEVICES)
def test_empty_tokens(device):
    v = torch.zeros(0, 6, device=device)
    i = torch.zeros(0, 6, dtype=torch.uint8, device=device)
    tv, ti, dt = _ops.transposed_split(v, i, torch.tensor([1, 2], device=device), torch.tensor([3], device=device))
    assert tv.shape == (2, 0) and ti.shape == (2, 0) and dt.shape == (1, 0)


def test_meta_shapes():
    v = torch.empty(64, 48, dtype=torch.bfloat16, device="meta")
    i = torch.empty(64, 48, dtype=torch.uint8, device="meta")
    sc = torch.empty(80, dtype=torch.int64, device="meta")
    dc = torch.empty(16, dtype=torch.int64, device="meta")
    tv, ti, dt = ops.sparse24_transposed_split(v, i, sc, dc, "largest_abs")
    assert (tv.shape, ti.shape, dt.shape) == ((80, 32), (80, 32), (16, 64))
    assert (tv.dtype, ti.dtype, dt.dtype) == (torch.bfloat16, torch.uint8, torch.bfloat16)
    assert tv.device.type == "meta"


def test_compile_fullgraph_dynamic():
    def f(v, i, sc, dc):
        return ops.sparse24_transposed_split(v, i, sc, dc, "largest_abs")

    cf = torch.compile(f, fullgraph=True, dynamic=True, backend="aot_eager")
    for T in (8, 12, 20):
        v, i = compressed(T, 16, torch.float32, T)
        sc, dc = split_cols(16, 3, T, "cpu")
        for got, want in zip(cf(v, i, sc, dc), f(v, i, sc, dc)):
            assert torch.equal(got, want)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_opcheck(device, dtype):
    v, i = compressed(16, 24, dtype, 3, randn, device)
    sc, dc = split_cols(24, 5, 4, device)
    torch.library.opcheck(ops.sparse24_transposed_split, (v, i, sc, dc, "largest_abs"))


@requires_cuda
@pytest.mark.gpu
def test_cuda_matches_cpu_large_bf16():
    T, F = 4096, 1024
    v, i = compressed(T, F, torch.bfloat16, 31, special)
    sc, dc = split_cols(F, F // 20, 32, "cpu")
    sc = torch.cat([sc, sc[:3]])  # a few duplicates too
    want = _ops.transposed_split(v, i, sc, dc)
    got = _ops.transposed_split(v.cuda(), i.cuda(), sc.cuda(), dc.cuda())
    for name, g, w in zip(("tvalues", "tindices", "dense_t"), got, want):
        assert_bits_equal(g, w, f"{name}: CUDA vs CPU")
    # unaligned compressed rows (an offset view) take the element-wise load path
    buf_v = torch.empty(T * F // 2 + 1, dtype=torch.bfloat16, device="cuda")
    buf_i = torch.empty(T * F // 2 + 1, dtype=torch.uint8, device="cuda")
    vo = buf_v[1:].view(T, F // 2).copy_(v)
    io = buf_i[1:].view(T, F // 2).copy_(i)
    for name, g, w in zip(("tvalues", "tindices", "dense_t"), _ops.transposed_split(vo, io, sc.cuda(), dc.cuda()), want):
        assert_bits_equal(g, w, f"{name}: CUDA (unaligned input) vs CPU")
