"""Column validation parity: every raw op that takes column ids (sparsify24_transposed,
sparse24_transposed_split) and the public API refuse ids outside [0, N) with the same words on every
device. The check lives in the glue shared by the CPU and CUDA ops (csrc/sp24/checks.h,
check_columns_range), so that no device clamps such ids silently. The [cuda] variants below are
the GPU tests of the CUDA path. The Meta/fake op has no values to check: it runs the same structural
checks (dtype, rank, device) and computes shapes only.
"""

import re

import pytest
import torch

from helpers import DEVICES, randn, sp24

ops = torch.ops.sp24

BAD_COLUMNS = [([0, 8], "[0, 8]"), ([-1, 2], "[-1, 2]"), ([3, -5, 9, 1], "[-5, 9]")]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("cols,got", BAD_COLUMNS, ids=lambda c: str(c))
def test_transposed_refuses_out_of_range_columns(device, cols, got):
    x = randn(8, 8, torch.bfloat16, seed=1, device=device)
    c = torch.tensor(cols, device=device)
    msg = f"sp24.sparsify24_transposed: columns must lie in [0, 8), got values in {got}"
    with pytest.raises(ValueError, match=re.escape(msg)):
        ops.sparsify24_transposed(x, "largest_abs", c)
    with pytest.raises(ValueError, match=re.escape(msg)):
        sp24.sparsify24_transposed(x, columns=cols)
    with pytest.raises(ValueError, match=re.escape(msg)):  # no tokens: still refused, as on CPU
        ops.sparsify24_transposed(x[:0], "largest_abs", c)


@pytest.mark.parametrize("device", DEVICES)
def test_transposed_refuses_any_column_of_an_empty_x(device):
    x = torch.empty(8, 0, device=device)
    with pytest.raises(ValueError, match=re.escape("sp24.sparsify24_transposed: columns must lie in [0, 0), "
                                                   "got values in [0, 0]")):
        ops.sparsify24_transposed(x, "largest_abs", torch.tensor([0], device=device))
    v, i = ops.sparsify24_transposed(x, "largest_abs", torch.empty(0, dtype=torch.int64, device=device))
    assert v.shape == (0, 4) and i.shape == (0, 4)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("cols,got", BAD_COLUMNS, ids=lambda c: str(c))
def test_split_refuses_out_of_range_columns(device, cols, got):
    v, i, _ = ops.sparsify24(randn(8, 8, torch.float16, seed=2, device=device), "largest", None, False)
    good, bad = torch.tensor([1, 0], device=device), torch.tensor(cols, device=device)
    for sc, dc, name in ((bad, good, "sparse_cols"), (good, bad, "dense_cols"), (bad, bad, "sparse_cols")):
        msg = f"sp24.sparse24_transposed_split: {name} must lie in [0, 8), got values in {got}"
        with pytest.raises(ValueError, match=re.escape(msg)):
            ops.sparse24_transposed_split(v, i, sc, dc, "largest_abs")
    with pytest.raises(ValueError, match=re.escape("sparse_cols must lie in [0, 8)")):
        ops.sparse24_transposed_split(v[:0], i[:0], bad, good, "largest_abs")  # no tokens: still refused


@pytest.mark.parametrize("device", DEVICES)
def test_in_range_columns_at_the_edges_are_served(device):
    x = randn(8, 8, torch.float32, seed=3, device=device)
    c = torch.tensor([7, 0, 7], device=device)
    v, i = ops.sparsify24_transposed(x, "largest_abs", c)
    rv, ri = ops.sparsify24_transposed(x.cpu().t()[[7, 0, 7]].t().contiguous(), "largest_abs", None)
    assert torch.equal(v.cpu(), rv) and torch.equal(i.cpu(), ri)
    sv, si, _ = ops.sparsify24(x, "largest", None, False)
    tv, ti, dt = ops.sparse24_transposed_split(sv, si, c, c, "largest_abs")
    assert tv.shape == (3, 4) and dt.shape == (3, 8)


def test_meta_runs_the_shared_checks_and_computes_shapes():
    x = torch.empty(8, 8, device="meta")
    with pytest.raises(ValueError, match=re.escape("sp24.sparsify24_transposed: columns must be int64, got torch.int32")):
        ops.sparsify24_transposed(x, "largest_abs", torch.tensor([0], dtype=torch.int32, device="meta"))
    with pytest.raises(ValueError, match=re.escape("sp24.sparsify24_transposed: columns must be 1-D")):
        ops.sparsify24_transposed(x, "largest_abs", torch.zeros(1, 1, dtype=torch.int64, device="meta"))
    # the ids' values are data: a meta tensor has none, so only the shapes are computed
    v, i = ops.sparsify24_transposed(x, "largest_abs", torch.empty(5, dtype=torch.int64, device="meta"))
    assert v.shape == (5, 4) and i.shape == (5, 4) and v.device.type == "meta"
    vv, vi = torch.empty(8, 4, device="meta"), torch.empty(8, 4, dtype=torch.uint8, device="meta")
    with pytest.raises(ValueError, match=re.escape("sp24.sparse24_transposed_split: dense_cols must be int64")):
        ops.sparse24_transposed_split(vv, vi, torch.empty(2, dtype=torch.int64, device="meta"),
                                      torch.empty(2, dtype=torch.int32, device="meta"), "largest_abs")
    tv, ti, dt = ops.sparse24_transposed_split(vv, vi, torch.empty(3, dtype=torch.int64, device="meta"),
                                               torch.empty(2, dtype=torch.int64, device="meta"), "largest_abs")
    assert tv.shape == (3, 4) and ti.shape == (3, 4) and dt.shape == (2, 8)


@pytest.mark.parametrize("device", DEVICES)
def test_split_unchecked_columns_same_result_and_cpu_still_refuses(device):
    """check_columns=False (relu2_ffn's backward, whose lists are a permutation of range(F)) skips
    only the CUDA check, which costs a host sync per call; the result is the same bits, and the
    CPU, where the check is free, still refuses a bad id."""
    v, i, _ = ops.sparsify24(randn(8, 16, torch.bfloat16, seed=4, device=device), "largest", None, False)
    sc, dc = torch.tensor([5, 0, 15, 3], device=device), torch.tensor([2, 9], device=device)
    checked = ops.sparse24_transposed_split(v, i, sc, dc, "largest_abs", True)
    unchecked = ops.sparse24_transposed_split(v, i, sc, dc, "largest_abs", False)
    for a, b in zip(checked, unchecked):
        assert torch.equal(a, b)
    vc, ic = v.cpu(), i.cpu()
    with pytest.raises(ValueError, match=re.escape("sp24.sparse24_transposed_split: sparse_cols must lie in [0, 16)")):
        ops.sparse24_transposed_split(vc, ic, torch.tensor([16]), dc.cpu(), "largest_abs", False)


@pytest.mark.parametrize("device", DEVICES)
def test_split_unchecked_columns_over_an_empty_feature_axis_are_refused(device):
    """F == 0 with ids and check_columns=False: refused with the range error on every device (the
    CUDA kernels' clamp into [0, F) needs F > 0)."""
    v = torch.empty(8, 0, dtype=torch.float16, device=device)
    i = torch.empty(8, 0, dtype=torch.uint8, device=device)
    msg = "sp24.sparse24_transposed_split: sparse_cols must lie in [0, 0), got values in [0, 0]"
    with pytest.raises(ValueError, match=re.escape(msg)):
        ops.sparse24_transposed_split(v, i, torch.tensor([0], device=device),
                                      torch.empty(0, dtype=torch.int64, device=device), "largest_abs", False)


def test_column_lists_are_capped_at_int32_on_every_device():
    """The CUDA column map is int32: every device (Meta included, shape-only, nothing allocated)
    refuses more than 2**31 - 1 ids with the same words."""
    x = torch.empty(4, 8, device="meta")
    huge = torch.empty(2**31, dtype=torch.int64, device="meta")
    msg = "sp24.sparsify24_transposed: columns may hold at most 2147483647 ids, got 2147483648"
    with pytest.raises(ValueError, match=re.escape(msg)):
        ops.sparsify24_transposed(x, "largest_abs", huge)
    v, i, _ = ops.sparsify24(torch.empty(4, 8, dtype=torch.float16, device="meta"), "largest", None, False)
    with pytest.raises(ValueError, match=re.escape("dense_cols may hold at most 2147483647 ids")):
        ops.sparse24_transposed_split(v, i, torch.empty(0, dtype=torch.int64, device="meta"), huge, "largest_abs")
    cpu = torch.randn(4, 8)  # the CPU op runs the same shape check first (an expanded view: no memory)
    with pytest.raises(ValueError, match=re.escape(msg)):
        ops.sparsify24_transposed(cpu, "largest_abs", torch.zeros(1, dtype=torch.int64).expand(2**31))
