"""relu2_ffn(fp8=True) and ReLU2FFN(fp8=True): the forward bit for bit against the FP8 oracle
(sp24.reference_fp8.ffn_forward) on CPU, dense and 2:4, the backward against the oracle's gradients
on the forward's bf16 Y2, casts, errors, the module and its checkpoint, torch.compile."""

from __future__ import annotations

import pytest
import torch

from helpers import assert_bits_equal, gen, requires_cuda
import sp24
from sp24 import ffn, reference_ffn
from sp24 import reference_fp8 as rf


def _problem(T, d, F, seed, bias=True, dtype=torch.bfloat16):
    g = gen(seed)
    x = torch.randn(T, d, generator=g)
    w1 = torch.randn(F, d, generator=g) / d ** 0.5
    w2 = torch.randn(d, F, generator=g) / F ** 0.5
    b1 = torch.randn(F, generator=g) * 0.3 + 0.2 if bias else None
    b2 = torch.randn(d, generator=g) * 0.3 if bias else None
    dout = torch.randn(T, d, generator=g)
    return [None if t is None else t.to(dtype) for t in (x, w1, w2, b1, b2, dout)]


def _run(x, w1, w2, b1, b2, dout, **kw):
    leaves = [t.detach().clone().requires_grad_() if t is not None else None for t in (x, w1, w2, b1, b2)]
    with ffn.fallback(False):
        out = sp24.relu2_ffn(*leaves, fp8=True, **kw)
    out.backward(dout)
    return out.detach(), dict(zip(("dx", "dw1", "dw2", "db1", "db2"), (t.grad if t is not None else None
                                                                       for t in leaves)))


def _close(actual, expected, what):
    scale = float(expected.float().abs().max().clamp(min=1e-6))
    err = float((actual.float() - expected.float()).abs().max())
    assert err <= 1e-2 * scale, f"{what}: max error {err} vs scale {scale}"


@pytest.mark.parametrize("T,bias,permute,dense_fraction", [(64, False, True, 0.05), (37, True, True, 0.25),
                                                           (48, True, False, 0.0)])
def test_sparse_fp8_matches_the_oracle(T, bias, permute, dense_fraction):
    args = _problem(T, 32, 64, seed=T, bias=bias)
    out, g = _run(*args, sparse=True, dense_fraction=dense_fraction, permute_tokens=permute)
    perm = ffn.token_permutation(T)[0] if permute else None
    x, w1, w2, b1, b2, dout = args
    ref = rf.ffn_forward(x, w1, w2, b1, b2, perm)
    assert_bits_equal(out, ref["out"], "out")  # CPU: every step is exact or one specified rounding
    rg = reference_ffn.grads(x, w1, w2, b1, b2, dout, dense_fraction=dense_fraction, perm=perm,
                             forward_fn=rf.ffn_forward)
    for n in ("dx", "dw1", "dw2", "db1", "db2"):
        if rg[n] is None:
            assert g[n] is None
        else:
            _close(g[n], rg[n], n)


@pytest.mark.parametrize("T,bias", [(40, True), (19, False)])
def test_dense_fp8_matches_the_oracle(T, bias):
    args = _problem(T, 32, 48, seed=100 + T, bias=bias)
    out, g = _run(*args, sparse=False)
    x, w1, w2, b1, b2, dout = args
    ref = rf.ffn_forward(x, w1, w2, b1, b2, None, sparse=False)
    assert_bits_equal(out, ref["out"], "out")
    # the backward: the bf16 dense backward on the FP8 forward's Y1 / Y2
    leaves = [t.detach().clone().requires_grad_() if t is not None else None for t in (x, w1, w2, b1, b2)]
    y1 = rf.dense_mm_fp8(*rf.quantize_rows(leaves[0].detach()), rf.quantize_rows(w1)[0].t(), rf.quantize_rows(w1)[1],
                         b1)
    dy3 = dout
    y2 = torch.relu(y1).square()
    dw2 = dy3.t() @ y2
    dy1 = (dy3 @ w2) * 2 * torch.relu(y1)
    _close(g["dw2"], dw2, "dw2")
    _close(g["dx"], dy1 @ w1, "dx")
    _close(g["dw1"], dy1.t() @ x, "dw1")


def test_fp8_is_an_approximation_of_the_bf16_ffn():
    x, w1, w2, b1, b2, _ = _problem(64, 32, 64, seed=7)
    with ffn.fallback(False):
        y8 = sp24.relu2_ffn(x, w1, w2, b1, b2, fp8=True).float()
        y16 = sp24.relu2_ffn(x, w1, w2, b1, b2).float()
    rel = ((y8 - y16).norm() / y16.norm()).item()
    assert 1e-3 < rel < 0.1, rel  # e4m3's 3 mantissa bits: a few percent, never zero


def test_fp32_inputs_run_in_bf16_inside_and_keep_fp32_grads():
    x, w1, w2, b1, b2, dout = _problem(32, 16, 32, seed=9, dtype=torch.float32)
    out, g = _run(x, w1, w2, b1, b2, dout)
    assert out.dtype == torch.float32
    assert all(v.dtype == torch.float32 for v in g.values())
    bf = [t.bfloat16() for t in (x, w1, w2, b1, b2)]
    ref = rf.ffn_forward(*bf, ffn.token_permutation(32)[0])["out"]
    assert_bits_equal(out, ref.float(), "out")


def test_fp8_shape_rule_and_option_check():
    x, w1, w2, b1, b2, _ = _problem(16, 24, 48, seed=1)  # d = 24: a multiple of 8, not of 16
    with pytest.raises(ValueError, match=r"sp24.relu2_ffn: fp8=True needs d and F to be multiples of 16 .* d=24, F=48"):
        sp24.relu2_ffn(x, w1, w2, b1, b2, fp8=True)
    with pytest.raises(TypeError, match=r"sp24.relu2_ffn: fp8 must be a bool \(True or False\), got 'yes'"):
        sp24.relu2_ffn(x, w1, w2, b1, b2, fp8="yes")


def test_nan_token_stays_in_its_row():
    x, w1, w2, b1, b2, _ = _problem(32, 16, 32, seed=2)
    x[5, 3] = float("nan")
    with ffn.fallback(False):
        y = sp24.relu2_ffn(x, w1, w2, b1, b2, fp8=True)
    assert bool(y[5].isnan().all())
    assert bool(torch.isfinite(y[torch.arange(32) != 5]).all())


def test_module_fp8_flag_and_checkpoint():
    torch.manual_seed(0)
    m = sp24.nn.ReLU2FFN(32, 64, bias=True, sparse=True, fp8=True)
    assert m.fp8 and "fp8=True" in repr(m)
    x = torch.randn(2, 24, 32)
    with ffn.fallback(False):
        y = m(x)
        want = sp24.relu2_ffn(x, m.w1.weight, m.w2.weight, m.w1.bias, m.w2.bias, fp8=True)
    assert torch.equal(y, want)
    m2 = sp24.nn.ReLU2FFN(32, 64, bias=True)
    m2.load_state_dict(m.state_dict())  # fp8 is a recipe attribute, like gradient: not in the mode
    assert m2.sparse and not m2.fp8
    m.sparse = False  # dense FP8
    with ffn.fallback(False):
        yd = m(x)
    assert torch.equal(yd, sp24.relu2_ffn(x, m.w1.weight, m.w2.weight, m.w1.bias, m.w2.bias, sparse=False, fp8=True))
    with pytest.raises(TypeError, match="fp8 must be a bool"):
        sp24.nn.ReLU2FFN(32, 64, fp8=1)


def test_compile_fullgraph():
    x, w1, w2, b1, b2, _ = _problem(32, 16, 32, seed=4)

    def f(x):
        return sp24.relu2_ffn(x, w1, w2, b1, b2, fp8=True)

    with ffn.fallback(False):
        cf = torch.compile(f, fullgraph=True, backend="aot_eager")
        assert_bits_equal(cf(x), f(x))


@requires_cuda
@pytest.mark.gpu
def test_cuda_fp8_ffn_close_to_cpu():
    args = _problem(256, 64, 256, seed=5)
    if torch.cuda.get_device_capability() < (8, 9):
        with pytest.warns(UserWarning, match="fp8=True needs FP8 GEMMs"):
            sp24.relu2_ffn(*[t.cuda() for t in args[:5]], fp8=True)
        return
    cpu_out, cpu_g = _run(*args)
    gpu_out, gpu_g = _run(*[t.cuda() for t in args])
    _close(gpu_out.cpu(), cpu_out, "out")
    for n, v in cpu_g.items():
        _close(gpu_g[n].cpu(), v, n)
