"""Meta kernels (shapes, dtypes, the same checks as eager), torch.library.opcheck on every op,
and the ops under torch.compile(fullgraph=True) with dynamic shapes."""

import pytest
import torch

from helpers import DEVICES, randn, sp24
from sp24 import _ops

ops = torch.ops.sp24


def meta(*shape, dtype=torch.bfloat16):
    return torch.empty(*shape, dtype=dtype, device="meta")


def test_meta_shapes():
    v, i, c = ops.sparsify24(meta(10, 64), "largest", "relu2", True)
    assert (v.shape, v.dtype, i.shape, i.dtype, c.shape, c.dtype) == \
        ((10, 32), torch.bfloat16, (10, 32), torch.uint8, (64,), torch.int32)
    assert ops.sparsify24(meta(10, 64), "largest", None, False)[2].shape == (0,)
    v, i = ops.sparsify24_transposed(meta(40, 24), "largest_abs", None)
    assert v.shape == (24, 20) and i.shape == (24, 20) and i.dtype == torch.uint8
    cols = torch.empty(7, dtype=torch.int64, device="meta")
    v, i = ops.sparsify24_transposed(meta(40, 24), "largest_abs", cols)
    assert v.shape == (7, 20)
    idx = torch.empty(10, 32, dtype=torch.uint8, device="meta")
    assert ops.sparse24_apply(meta(10, 64), idx).shape == (10, 32)
    assert ops.sparse24_apply_relu2_backward(meta(10, 64), meta(10, 32), idx).shape == (10, 32)
    assert ops.sparse24_to_dense(meta(10, 32), idx).shape == (10, 64)
    out = ops.sparse24_mm(meta(10, 32), idx, meta(64, 5), None, torch.float32)
    assert out.shape == (10, 5) and out.dtype == torch.float32


def test_meta_checks_match_eager():
    for dev in ("cpu", "meta"):
        with pytest.raises(ValueError, match=r"sp24.sparsify24: x.size\(-1\) must be a multiple of 4, got 30"):
            ops.sparsify24(torch.empty(3, 30, device=dev), "largest", None, False)


def _cases(device):
    x = randn(12, 32, torch.bfloat16, seed=40, device=device)
    g = randn(12, 32, torch.bfloat16, seed=41, device=device)
    v, i, _ = ops.sparsify24(x, "largest", "relu2", False)
    b = randn(32, 8, torch.bfloat16, seed=42, device=device)
    bias = randn(1, 8, torch.bfloat16, seed=43, device=device)[0]
    cols = torch.tensor([3, 0, 7], device=device)
    return [
        (ops.sparsify24.default, (x, "largest", "relu2", True)),
        (ops.sparsify24.default, (x, "largest_abs", None, False)),
        (ops.sparsify24_transposed.default, (x, "largest_abs", None)),
        (ops.sparsify24_transposed.default, (x, "largest", cols)),
        (ops.sparse24_apply.default, (g, i)),
        (ops.sparse24_apply_relu2_backward.default, (g, v, i)),
        (ops.sparse24_to_dense.default, (v, i)),
        (ops.sparse24_mm.default, (v, i, b, bias, torch.float32)),
        (ops.sparse24_mm.default, (v, i, b, None, None)),
    ]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", range(9))
def test_opcheck(device, case):
    op, args = _cases(device)[case]
    torch.library.opcheck(op, args)


def test_every_op_has_cpu_and_meta_kernels():
    for name in _ops.OP_NAMES:
        assert _ops.has_kernel(name, "CPU"), name
        assert _ops.has_kernel(name, "Meta"), name


def test_compile_fullgraph_dynamic():
    def f(x, b):
        v, i, c = ops.sparsify24(x, "largest", "relu2", True)
        y = ops.sparse24_mm(v, i, b, None, None)
        tv, ti = ops.sparsify24_transposed(ops.sparse24_to_dense(v, i), "largest_abs", None)
        return y, c, tv, ti

    cf = torch.compile(f, fullgraph=True, dynamic=True, backend="aot_eager")
    for M in (8, 12, 20):
        x = randn(M, 16, torch.float32, seed=M)
        b = randn(16, 4, torch.float32, seed=M + 1)
        for got, want in zip(cf(x, b), f(x, b)):
            assert torch.equal(got, want)
