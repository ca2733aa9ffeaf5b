"""torch.compile(fullgraph=True) trains the sp24 FFN on CPU and matches eager step for step.

The FFN's backward is a torch.autograd.Function made of sp24 ops with C++ Meta kernels, so Dynamo
traces forward and backward without a graph break. Inductor is exercised once (sparse mode; its
first compile costs ~10-40 s on 2 cores); the other cases use "aot_eager", which runs the same
AOTAutograd forward/backward graphs without code generation.
"""

from __future__ import annotations

import pytest
import torch

import sp24
from sp24 import ffn


def _train(model, steps, shapes, seed=0):
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    g = torch.Generator().manual_seed(seed)
    losses = []
    for i in range(steps):
        x = torch.randn(*shapes[i % len(shapes)], generator=g)
        loss = model(x).square().mean()
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(float(loss.detach()))
    return losses


def _pair(sparse: bool, bias: bool = True):
    torch.manual_seed(0)
    eager = sp24.nn.ReLU2FFN(16, 64, bias=bias, sparse=sparse, dense_fraction=0.25)
    compiled = sp24.nn.ReLU2FFN(16, 64, bias=bias, sparse=sparse, dense_fraction=0.25)
    compiled.load_state_dict(eager.state_dict())
    return eager, compiled


@pytest.mark.parametrize("backend,sparse", [("aot_eager", False), ("aot_eager", True), ("inductor", True)])
def test_compiled_training_matches_eager(backend, sparse):
    eager, module = _pair(sparse)
    compiled = torch.compile(module, fullgraph=True, backend=backend)
    shapes = [(2, 10, 16)]  # 20 tokens: permuted, a multiple of 4
    with ffn.fallback(False):
        want = _train(eager, 3, shapes)
        got = _train(compiled, 3, shapes)
    assert got == pytest.approx(want, rel=1e-5, abs=1e-7)
    for (n, p), q in zip(eager.named_parameters(), module.parameters()):
        assert torch.allclose(p, q, rtol=1e-5, atol=1e-6), n
    if sparse:  # the compiled run really took the 2:4 path: dense training diverges from it
        dense, _ = _pair(False)
        assert _train(dense, 3, shapes) != pytest.approx(want, rel=1e-5, abs=1e-7)


def test_compiled_dynamic_token_counts():
    # odd and varying token counts under dynamic shapes: the permutation and the padding are traced
    eager, module = _pair(True, bias=False)
    compiled = torch.compile(module, fullgraph=True, backend="aot_eager", dynamic=True)
    shapes = [(3, 7, 16), (5, 7, 16), (2, 9, 16)]
    with ffn.fallback(False):
        want = _train(eager, 3, shapes)
        got = _train(compiled, 3, shapes)
    assert got == pytest.approx(want, rel=1e-5, abs=1e-7)


def test_compiled_under_autocast():
    # fp32 master weights, bf16 autocast: the usual mixed-precision training setup
    eager, module = _pair(True)
    compiled = torch.compile(module, fullgraph=True, backend="aot_eager")
    x = torch.randn(3, 8, 16, generator=torch.Generator().manual_seed(2))
    with torch.autocast("cpu", dtype=torch.bfloat16), ffn.fallback(False):
        want, got = eager(x), compiled(x)
    assert got.dtype == torch.bfloat16 and torch.equal(got, want)
    want.float().sum().backward()
    got.float().sum().backward()
    for p, q in zip(eager.parameters(), module.parameters()):
        assert q.grad.dtype == torch.float32 and torch.equal(p.grad, q.grad)


def test_opcheck_the_ffn_call_patterns():
    # No new op: the FFN composes existing sp24 ops. Check them (fake/meta vs real, schema,
    # autograd registration) with the exact argument patterns the FFN uses, e.g. W2^T as a
    # transposed view, the relu2 + counts sparsify, the column-subset sparsify-transpose.
    g = torch.Generator().manual_seed(3)
    T, d, F = 32, 16, 64
    y1 = torch.randn(T, F, generator=g).bfloat16()
    w2 = torch.randn(d, F, generator=g).bfloat16()
    b2 = torch.randn(d, generator=g).bfloat16()
    ops = torch.ops.sp24
    torch.library.opcheck(ops.sparsify24.default, (y1, "largest", "relu2", True))
    values, indices, _ = ops.sparsify24(y1, "largest", "relu2", True)
    torch.library.opcheck(ops.sparse24_mm.default, (values, indices, w2.t(), b2, None))
    dy2 = torch.randn(T, F, generator=g).bfloat16()
    torch.library.opcheck(ops.sparse24_apply_relu2_backward.default, (dy2, values, indices))
    y2 = ops.sparse24_to_dense(values, indices)
    cols = torch.tensor([5, 0, 63, 17, 32, 1, 2, 3, 8, 9, 10, 11, 40, 41, 42, 43])
    torch.library.opcheck(ops.sparsify24_transposed.default, (y2, "largest_abs", cols))
    tv, ti = ops.sparsify24_transposed(y2, "largest_abs", cols)
    torch.library.opcheck(ops.sparse24_mm.default, (tv, ti, torch.randn(T, d, generator=g).bfloat16(), None, None))
