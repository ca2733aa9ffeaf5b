"""Autograd of the public API and the raw ops.

Gradients are compared with the autograd of plain PyTorch on the same dense computation (the
oracle's selection, a differentiable scatter), bit for bit where the arithmetic is the same, and
checked with torch.autograd.gradcheck in fp32 on tie-free data spaced by 1/8 (fp64 is not an sp24
dtype; a step of 1/64 never changes a 2:4 selection there, and central differences are exact for
the linear and quadratic pieces). Ops that cannot be differentiated must raise at the forward call.
"""

from __future__ import annotations

import re
import warnings

import pytest
import torch
from torch.func import grad, vmap

from helpers import DEVICES, DTYPES, gen, tie_free, sp24
from sp24 import ffn, reference

ops = torch.ops.sp24


def _cols(indices: torch.Tensor) -> torch.Tensor:
    return reference._columns(indices)


def _oracle_dense(x: torch.Tensor, algo: str, activation, ste: bool) -> torch.Tensor:
    """The dense result of sparsify24 in plain differentiable PyTorch: torch's own autograd gives
    the "24sparse" gradient, or with ste=True the straight-through one (no mask in the graph)."""
    a = torch.relu(x.float()).square() if activation == "relu2" else x.float()
    mask = reference.select_mask(a.detach().to(x.dtype).reshape(-1, x.shape[-1]), algo).reshape(x.shape)
    if ste:
        kept = a.detach().to(x.dtype).float() * mask
        return (kept + (a - a.detach())).to(x.dtype)  # forward: the kept values; backward: d a / d x
    return torch.where(mask, a, 0.0).to(x.dtype)


def _weights(shape, dtype, seed):
    return tie_free(int(torch.Size(shape).numel()) // shape[-1], shape[-1], dtype, seed).reshape(shape)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("activation", [None, "relu2"])
@pytest.mark.parametrize("gradient", ["24sparse", "ste"])
@pytest.mark.parametrize("use", ["to_dense", "mm", "values"])
def test_sparsify24_gradient_matches_torch_autograd(device, dtype, activation, gradient, use):
    x = tie_free(12, 16, dtype, seed=1, device=device).reshape(2, 6, 16).requires_grad_()
    xo = x.detach().clone().requires_grad_()
    w = _weights((2, 6, 16), dtype, seed=2).to(device)
    b = torch.randint(-2, 3, (16, 3), generator=gen(3)).to(dtype).to(device)
    s = sp24.sparsify24(x, "largest_abs", activation, gradient=gradient)
    dense = _oracle_dense(xo, "largest_abs", activation, ste=gradient == "ste" and use != "values")
    if use == "to_dense":
        loss, want = (s.to_dense().float() * w.float()).sum(), (dense.float() * w.float()).sum()
    elif use == "mm":
        g = torch.randint(-2, 3, (2, 6, 3), generator=gen(4)).float().to(device)
        loss = ((s @ b).float() * g).sum()
        want = ((dense.float() @ b.float()) * g).sum()
    else:  # values(): only the kept positions carry a gradient, whatever `gradient` says
        cols = _cols(s.indices().reshape(12, 8)).reshape(2, 6, 8)
        wv = torch.gather(w, 2, cols)
        loss, want = (s.values().float() * wv.float()).sum(), (torch.gather(dense, 2, cols).float() * wv.float()).sum()
    assert s.shape == x.shape and s.requires_grad
    loss.backward()
    want.backward()
    assert x.grad is not None and x.grad.dtype == dtype
    assert torch.equal(x.grad, xo.grad), (x.grad - xo.grad).abs().max()
    if gradient == "ste" and use != "values":  # straight through: dropped positions get a gradient too
        assert bool(((x.grad != 0) & ~s.mask()).any())
    else:
        assert not bool(((x.grad != 0) & ~s.mask()).any())


def test_24dense_is_the_24sparse_gradient():
    x = tie_free(8, 16, torch.bfloat16, seed=5).requires_grad_()
    grads = []
    for gradient in ("24sparse", "24dense"):
        x.grad = None
        (sp24.sparsify24(x, activation="relu2", gradient=gradient).to_dense().float() * 3).sum().backward()
        grads.append(x.grad)
    assert torch.equal(*grads)


def test_sparsify24_rejects_unknown_gradient():
    with pytest.raises(ValueError, match=re.escape("sp24.sparsify24: gradient must be '24sparse'")):
        sp24.sparsify24(torch.randn(4, 8), gradient="dense")


def test_relu2_gradient_is_one_fp32_rounding():
    # bf16 x whose 2*relu(x)*g is not representable: the gradient is the fp32 product rounded once
    g = torch.Generator().manual_seed(6)
    x = torch.randn(16, 32, generator=g).bfloat16().requires_grad_()
    w = torch.randn(16, 32, generator=g).bfloat16()
    s = sp24.sparsify24(x, activation="relu2")
    (s.to_dense() * w).float().sum().backward()
    mask = s.mask()
    want = torch.where(mask, w.float() * 2 * torch.relu(x.detach().float()), 0.0).bfloat16()
    assert torch.equal(x.grad, want)


@pytest.mark.parametrize("gradient", ["24sparse", "ste"])
def test_sparsify24_transposed_gradient(gradient):
    x = tie_free(8, 12, torch.float32, seed=7).requires_grad_()
    cols = [5, 0, 5, 11]  # a column given twice receives both gradients
    s = sp24.sparsify24_transposed(x, columns=cols, gradient=gradient)
    w = _weights((4, 8), torch.float32, seed=8)
    (s.to_dense() * w).sum().backward()
    xo = x.detach().clone().requires_grad_()
    sel = xo[:, cols].t()
    mask = reference.select_mask(sel.detach(), "largest_abs")
    dense = sel if gradient == "ste" else torch.where(mask, sel, 0.0)
    (dense * w).sum().backward()
    assert torch.equal(x.grad, xo.grad)
    assert bool((x.grad[:, 5] != 0).any())


def _gradcheck(fn, *inputs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "not a double precision" -- on purpose
        assert torch.autograd.gradcheck(fn, inputs, eps=1 / 64, atol=2e-3, rtol=2e-3, fast_mode=False)


def test_gradcheck_raw_ops():
    x = tie_free(8, 16, torch.float32, seed=9).requires_grad_()
    v, i, _ = ops.sparsify24(x.detach(), "largest_abs", None, False)
    v = v.detach().requires_grad_()
    b = tie_free(16, 4, torch.float32, seed=10).requires_grad_()
    bias = tie_free(1, 4, torch.float32, seed=11)[0].requires_grad_()
    g = tie_free(8, 16, torch.float32, seed=12).requires_grad_()
    _gradcheck(lambda x: ops.sparsify24(x, "largest_abs", None, False)[0], x)
    _gradcheck(lambda x: ops.sparsify24(x, "largest", "relu2", True)[0], x)
    _gradcheck(lambda x: ops.sparsify24_transposed(x, "largest_abs", torch.tensor([3, 1, 3, 0]))[0], x)
    _gradcheck(lambda x: ops.sparse24_apply(x, i), x)
    _gradcheck(lambda v: ops.sparse24_to_dense(v, i), v)
    _gradcheck(lambda v, b, bias: ops.sparse24_mm(v, i, b, bias, None), v, b, bias)
    y2 = ops.sparsify24(x.detach(), "largest", "relu2", False)[0]
    _gradcheck(lambda g: ops.sparse24_apply_relu2_backward(g, y2, i), g)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [5, 16])  # 16: on CUDA the shape cuSPARSELt serves (fp16/bf16)
def test_mm_gradients_match_torch_autograd(device, dtype, n):
    # integer-valued operands: every product and sum is exact, so the comparison is bit for bit
    gn = gen(13)
    a = torch.randint(-3, 4, (2, 8, 16), generator=gn).to(dtype).to(device)
    s = sp24.sparsify24(a, "largest_abs")
    v = s.values().detach().clone().requires_grad_()
    b = torch.randint(-3, 4, (16, n), generator=gn).to(dtype).to(device).requires_grad_()
    bias = torch.randint(-3, 4, (n,), generator=gn).to(dtype).to(device).requires_grad_()
    dout = torch.randint(-3, 4, (2, 8, n), generator=gn).float().to(device)
    out = sp24.mm(sp24.Sp24Tensor(v, s.indices()), b, bias, out_dtype=torch.float32)
    (out * dout).sum().backward()
    vo, bo, biaso = (t.detach().clone().requires_grad_() for t in (v, b, bias))
    cols = _cols(s.indices().reshape(16, 8))
    dense = torch.zeros(16, 16, dtype=dtype, device=device).scatter(1, cols, vo.reshape(16, 8))
    ((dense.float() @ bo.float() + biaso.float()).reshape(2, 8, n) * dout).sum().backward()
    for got, want in ((v, vo), (b, bo), (bias, biaso)):
        assert got.grad is not None and torch.equal(got.grad, want.grad)


@pytest.mark.parametrize("device", DEVICES)
def test_gradient_reaches_values_through_every_use(device):
    # the silent stop this guards against: grad_fn present, backward() fine, x.grad None
    ones = torch.ones(32, 16, device=device)
    for use in (lambda s: s.to_dense(), lambda s: s @ ones, lambda s: sp24.mm(s, ones),
                lambda s: s.values(), lambda s: s.to(dtype=torch.float16).to_dense(),
                lambda s: s.to(dtype=torch.bfloat16) @ ones.bfloat16()):  # bf16 16x32 @ 32x16: cuSPARSELt's shape
        x = torch.randn(16, 32, device=device, requires_grad=True)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # torch's "autograd kernel was not registered" warning
            use(sp24.sparsify24(x)).float().sum().backward()
        assert x.grad is not None and int(torch.count_nonzero(x.grad)) == 16 * 16


REFUSED = [
    ("sparse24_cslt_compress", lambda x, v, i: ops.sparse24_cslt_compress(v, i)),
    ("sparsify24_cslt", lambda x, v, i: ops.sparsify24_cslt(x, "largest", None, False)),
    ("sparse24_cslt_mm", lambda x, v, i: ops.sparse24_cslt_mm(ops.sparse24_cslt_compress(v.detach(), i), 16, 32,
                                                              x.t()[:, :16].detach().requires_grad_(),
                                                              None, None, False)),
    ("sparse24_transposed_split", lambda x, v, i: ops.sparse24_transposed_split(
        v, i, torch.arange(16, device=x.device), torch.arange(16, 32, device=x.device), "largest_abs")),
    ("sparse24_apply_relu2_backward", lambda x, v, i: ops.sparse24_apply_relu2_backward(x.detach(), v, i)),
    ("sparse24_cslt_compress", lambda x, v, i: sp24.Sp24Tensor(v, i).packed()),
    # FP8: the e4m3 values have no gradient (before: outputs with requires_grad and a silent None x.grad)
    ("sparsify24_fp8", lambda x, v, i: ops.sparsify24_fp8(x, "largest", "relu2", False)),
    ("sparsify24_transposed_fp8", lambda x, v, i: ops.sparsify24_transposed_fp8(x, "largest_abs", None)),
    ("quantize_rows_fp8", lambda x, v, i: ops.quantize_rows_fp8(x)),
    ("sparse24_fp8_mm", lambda x, v, i: ops.sparse24_fp8_mm(
        *ops.sparsify24_fp8(x.detach(), "largest", None, False)[:3],
        ops.quantize_rows_fp8(x.detach())[0].t(), torch.ones(16, device=x.device), x[0, :16] * 1, True)),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", range(len(REFUSED)))
def test_non_differentiable_ops_raise_when_a_gradient_is_required(device, case):
    op, fn = REFUSED[case]
    x = tie_free(16, 32, torch.bfloat16, seed=14, device=device).requires_grad_()
    v, i, _ = ops.sparsify24(x, "largest", None, False)
    with pytest.raises(RuntimeError, match=rf"sp24\.{op}: not differentiable w\.r\.t\. .*requires_grad=True"):
        fn(x, v, i)
    with torch.no_grad():  # without a gradient to compute they run
        fn(x, v, i)


def test_no_gradient_needed_keeps_the_fast_paths():
    x = tie_free(16, 32, torch.bfloat16, seed=15)
    s = sp24.sparsify24(x, gradient="ste")
    assert not s.requires_grad and s._ste is None  # nothing held for a backward
    with torch.no_grad():
        s = sp24.sparsify24(x.requires_grad_(), gradient="ste")
    assert not s.requires_grad and s._ste is None
    assert s.packed().dtype == torch.uint8


@pytest.mark.parametrize("case", range(6))
def test_opcheck_with_gradients(case):
    x = tie_free(8, 16, torch.float32, seed=16)
    v, i, _ = ops.sparsify24(x, "largest_abs", None, False)
    y2, i2, _ = ops.sparsify24(x, "largest", "relu2", False)  # y2 >= 0: sqrt(y2) is real
    b = tie_free(16, 4, torch.float32, seed=17)
    bias = b[0].clone()
    rg = lambda t: t.detach().clone().requires_grad_()  # noqa: E731
    cases = [
        (ops.sparsify24.default, (rg(x), "largest", "relu2", True)),
        (ops.sparsify24_transposed.default, (rg(x), "largest_abs", torch.tensor([2, 0, 2]))),
        (ops.sparse24_apply.default, (rg(x), i)),
        (ops.sparse24_to_dense.default, (rg(v), i)),
        (ops.sparse24_mm.default, (rg(v), i, rg(b), rg(bias), None)),
        (ops.sparse24_apply_relu2_backward.default, (rg(x), y2, i2)),
    ]
    op, args = cases[case]
    torch.library.opcheck(op, args)


@pytest.mark.parametrize("gradient", ["24sparse", "ste"])
def test_public_api_gradients_under_compile_fullgraph(gradient):
    def f(x, b, bias):
        s = sp24.sparsify24(x, activation="relu2", gradient=gradient)
        return (sp24.mm(s, b, bias) * 0.5 + s.to_dense()[..., :4]).sum()

    cf = torch.compile(f, fullgraph=True, backend="aot_eager")
    args = [tie_free(12, 16, torch.float32, seed=18).reshape(3, 4, 16), tie_free(16, 4, torch.float32, seed=19),
            tie_free(1, 4, torch.float32, seed=20)[0]]
    want_in = [a.clone().requires_grad_() for a in args]
    got_in = [a.clone().requires_grad_() for a in args]
    f(*want_in).backward()
    cf(*got_in).backward()
    for w, g in zip(want_in, got_in):
        assert g.grad is not None and torch.equal(g.grad, w.grad)


# ---- relu2_ffn and torch.func ---------------------------------------------------------------------
def _ffn_args(seed=21, T=20, d=16, F=64):
    g = gen(seed)
    return (torch.randn(T, d, generator=g), torch.randn(F, d, generator=g) / 4, torch.randn(d, F, generator=g) / 8,
            torch.randn(F, generator=g) / 4, torch.randn(d, generator=g))


def test_relu2_ffn_torch_func_grad_equals_autograd():
    x, w1, w2, b1, b2 = _ffn_args()
    with ffn.fallback(False):
        gx, gw1, gb2 = grad(lambda x, w1, b2: sp24.relu2_ffn(x, w1, w2, b1, b2).square().sum(),
                            argnums=(0, 1, 2))(x, w1, b2)
        ins = [t.clone().requires_grad_() for t in (x, w1, b2)]
        sp24.relu2_ffn(ins[0], ins[1], w2, b1, ins[2]).square().sum().backward()
    for got, want in zip((gx, gw1, gb2), ins):
        assert torch.equal(got, want.grad)


def test_relu2_ffn_vmap_over_x():
    x, w1, w2, b1, b2 = _ffn_args()
    xs = torch.randn(3, 5, 4, 16, generator=gen(22))
    with ffn.fallback(False):
        got = vmap(lambda x: sp24.relu2_ffn(x, w1, w2, b1, b2))(xs)
        want = torch.stack([sp24.relu2_ffn(xi, w1, w2, b1, b2) for xi in xs])  # forward is row-wise: exact
        assert torch.equal(got, want)
        # grad of a vmapped call = grad of the same call on the whole batch (one set of 2:4 groups)
        gw = grad(lambda w: vmap(lambda x: sp24.relu2_ffn(x, w, w2, b1, b2))(xs).square().sum())(w1)
        wr = w1.clone().requires_grad_()
        sp24.relu2_ffn(xs, wr, w2, b1, b2).square().sum().backward()
        assert torch.equal(gw, wr.grad)


def test_relu2_ffn_vmap_limits_are_clear_errors():
    x, w1, w2, b1, b2 = _ffn_args()
    xs = torch.randn(3, 20, 16, generator=gen(23))
    with ffn.fallback(False):
        with pytest.raises(NotImplementedError, match=re.escape(
                "sp24.relu2_ffn: torch.func.vmap over the weights (w1) is not supported by the 2:4 path")):
            vmap(lambda w: sp24.relu2_ffn(x, w, w2))(torch.stack([w1, w1]))
        with pytest.raises(NotImplementedError, match=re.escape(
                "sp24.relu2_ffn: torch.func.vmap over a gradient (e.g. per-sample gradients, vmap(grad(f))) is not "
                "supported by the 2:4 path")):
            vmap(grad(lambda x: sp24.relu2_ffn(x, w1, w2).sum()))(xs)
        # the dense path is plain PyTorch: per-sample gradients work there
        per_sample = vmap(grad(lambda x: sp24.relu2_ffn(x, w1, w2, sparse=False).sum()))(xs)
        assert per_sample.shape == xs.shape


def test_relu2_ffn_double_backward_is_refused():
    x, w1, w2, b1, b2 = _ffn_args()
    x.requires_grad_()
    with ffn.fallback(False):
        (gx,) = torch.autograd.grad(sp24.relu2_ffn(x, w1, w2).square().sum(), x, create_graph=True)
        with pytest.raises(RuntimeError, match="once_differentiable"):
            gx.sum().backward()


def test_torch_func_gradient_of_the_ops_is_a_clear_error():
    # torch.library.register_autograd is not torch.func-compatible: say so, and name the remedy
    x = torch.randn(4, 8, generator=gen(24))
    msg = re.escape("torch.func gradient transforms (grad, vjp, jacrev, jvp) are not supported")
    for fn, op in ((lambda x: sp24.sparsify24(x).to_dense().sum(), "sp24.sparsify24"),
                   (lambda b: sp24.mm(sp24.sparsify24(x), b).sum(), "sp24.mm"),
                   (lambda v: sp24.Sp24Tensor(v, sp24.sparsify24(x).indices()).to_dense().sum(),
                    "sp24.Sp24Tensor.to_dense")):
        arg = {"sp24.mm": torch.ones(8, 2), "sp24.Sp24Tensor.to_dense": torch.ones(4, 4)}.get(op, x)
        with pytest.raises(NotImplementedError, match=re.escape(op) + ": " + msg):
            grad(fn)(arg)
    # vmap alone works (torch's per-sample fallback for the ops), and so does torch.autograd
    assert torch.equal(vmap(lambda r: sp24.sparsify24(r).to_dense())(x), sp24.sparsify24(x).to_dense())
