"""sp24.relu2_ffn: dense mode, sparse forward/backward against the oracle (sp24.reference_ffn),
exactness where the 2:4 approximation is exact, padding, biases, batch dims, errors, memory."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F_

from helpers import DEVICES, gen
import sp24
from sp24 import ffn, reference_ffn


def _tol(device: str, dtype: torch.dtype) -> float:
    # relative to the largest magnitude of the expected tensor; CPU fp32 differs from the oracle
    # only by the summation order of the GEMMs, low precision by one rounding of the result
    if dtype == torch.float32:
        return 1e-5 if device == "cpu" else 5e-3  # CUDA: cuSPARSELt/cuBLAS fp32 may use TF32
    return 1e-2


def _close(actual, expected, device, dtype, what=""):
    scale = float(expected.float().abs().max().clamp(min=1e-6))
    err = float((actual.float() - expected.float()).abs().max())
    assert err <= _tol(device, dtype) * scale, f"{what}: max error {err} vs scale {scale}"


def _problem(T, d, F, dtype, seed, device="cpu", bias=False, bias1_shift=0.0):
    g = gen(seed)
    x = torch.randn(T, d, generator=g)
    w1 = torch.randn(F, d, generator=g) / d ** 0.5
    w2 = torch.randn(d, F, generator=g) / F ** 0.5
    b1 = torch.randn(F, generator=g) * 0.3 + bias1_shift if bias else None
    b2 = torch.randn(d, generator=g) * 0.3 if bias else None
    dout = torch.randn(T, d, generator=g)
    cast = lambda t: None if t is None else t.to(device=device, dtype=dtype)  # noqa: E731
    return [cast(t) for t in (x, w1, w2, b1, b2, dout)]


def _run(x, w1, w2, b1, b2, dout, **kw):
    leaves = [t.detach().clone().requires_grad_() if t is not None else None for t in (x, w1, w2, b1, b2)]
    with ffn.fallback(False):
        out = sp24.relu2_ffn(*leaves, **kw)
    out.backward(dout)
    names = ("dx", "dw1", "dw2", "db1", "db2")
    return out.detach(), {n: (t.grad if t is not None else None) for n, t in zip(names, leaves)}


def _dense_grads(x, w1, w2, b1, b2, dout):
    leaves = [t.detach().clone().requires_grad_() if t is not None else None for t in (x, w1, w2, b1, b2)]
    out = F_.linear(torch.relu(F_.linear(leaves[0], leaves[1], leaves[3])) ** 2, leaves[2], leaves[4])
    out.backward(dout)
    names = ("dx", "dw1", "dw2", "db1", "db2")
    return out.detach(), {n: (t.grad if t is not None else None) for n, t in zip(names, leaves)}


# --------------------------------------------------------------------------------------------
# dense mode


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dense_mode_is_plain_pytorch(device, dtype):
    args = _problem(19, 24, 40, dtype, seed=1, device=device, bias=True)  # no alignment needed when dense
    out, g = _run(*args, sparse=False)
    ref, rg = _dense_grads(*args)
    assert torch.equal(out, ref)
    for n in rg:
        assert torch.equal(g[n], rg[n]), n


def test_dense_mode_gradcheck_float64():
    x, w1, w2, b1, b2, _ = _problem(6, 5, 7, torch.float64, seed=2, bias=True)
    inputs = [t.requires_grad_() for t in (x, w1, w2, b1, b2)]
    assert torch.autograd.gradcheck(lambda *a: sp24.relu2_ffn(*a, sparse=False), inputs)


# --------------------------------------------------------------------------------------------
# sparse mode against the oracle


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("T,bias,permute,dense_fraction", [
    (64, False, True, 0.05),
    (37, True, True, 0.25),    # odd T: padded inside; b1 > 0 makes padded Y1 rows non-zero
    (30, True, False, 0.0),
    (8, False, True, 1.0),
])
def test_sparse_matches_oracle(device, dtype, T, bias, permute, dense_fraction):
    d, F = 16, 64
    args = _problem(T, d, F, dtype, seed=3 + T, device=device, bias=bias, bias1_shift=0.5)
    out, g = _run(*args, sparse=True, dense_fraction=dense_fraction, permute_tokens=permute)
    perm = ffn.token_permutation(T, device)[0] if permute else None
    x, w1, w2, b1, b2, dout = args
    ref = reference_ffn.forward(x, w1, w2, b1, b2, perm)
    _close(out, ref["out"], device, dtype, "out")
    rg = reference_ffn.grads(x, w1, w2, b1, b2, dout, dense_fraction=dense_fraction, perm=perm)
    for n in ("dx", "dw1", "dw2", "db1", "db2"):
        if rg[n] is None:
            assert g[n] is None
        else:
            _close(g[n], rg[n], device, dtype, n)
    assert int(rg["dense_features"].sum()) == ffn.n_dense_features(F, dense_fraction)


def test_approximation_is_real():
    # On generic inputs the 2:4 forward and the token-direction weight gradients differ from
    # dense; the oracle test above would be vacuous otherwise.
    args = _problem(64, 16, 64, torch.float32, seed=5)
    out, g = _run(*args, sparse=True)
    ref, rg = _dense_grads(*args)
    assert not torch.allclose(out, ref, atol=1e-4)
    assert not torch.allclose(g["dw1"], rg["dw1"], atol=1e-4)
    assert not torch.allclose(g["dw2"], rg["dw2"], atol=1e-4)


def test_padding_tokens_do_not_leak():
    # T = 37 is padded to 40 inside. With b1 = +5 every real Y2 value is non-zero, so a padded row
    # holding relu(b1)^2 would win token-direction slots and change dW2 from the oracle's.
    x, w1, w2, _, b2, dout = _problem(37, 16, 32, torch.float32, seed=6, bias=True)
    b1 = torch.full((32,), 5.0)
    _, g = _run(x, w1, w2, b1, b2, dout, sparse=True, dense_fraction=0.0)
    perm = ffn.token_permutation(37)[0]
    rg = reference_ffn.grads(x, w1, w2, b1, b2, dout, dense_fraction=0.0, perm=perm)
    for n in ("dw1", "dw2", "db1"):
        _close(g[n], rg[n], "cpu", torch.float32, n)


def test_counts_ignore_padding_tokens():
    # the dense features are ranked by counts of real tokens only: padded rows (Y1 = b1) are not counted
    x, w1, w2, b1, _, _ = _problem(37, 16, 32, torch.float32, seed=16, bias=True, bias1_shift=0.5)
    x.requires_grad_()
    with ffn.fallback(False):
        out = sp24.relu2_ffn(x, w1, w2, b1, permute_tokens=False)
    counts = out.grad_fn.saved_tensors[5]
    want = (torch.relu(F_.linear(x, w1, b1)) ** 2 != 0).sum(0)
    assert (b1 > 0).any() and torch.equal(counts.long(), want)


def test_leading_batch_dims():
    x, w1, w2, b1, b2, dout = _problem(30, 16, 32, torch.float32, seed=7, bias=True)
    out2, g2 = _run(x, w1, w2, b1, b2, dout, sparse=True)
    out4, g4 = _run(x.reshape(2, 3, 5, 16), w1, w2, b1, b2, dout.reshape(2, 3, 5, 16), sparse=True)
    assert out4.shape == (2, 3, 5, 16)
    assert torch.equal(out4.reshape(30, 16), out2)
    assert torch.equal(g4["dx"].reshape(30, 16), g2["dx"])
    for n in ("dw1", "dw2", "db1", "db2"):
        assert torch.equal(g4[n], g2[n]), n


def test_only_requested_grads():
    x, w1, w2, _, _, dout = _problem(16, 8, 16, torch.float32, seed=8)
    w1.requires_grad_()
    with ffn.fallback(False):
        sp24.relu2_ffn(x, w1, w2).backward(dout)
    assert w1.grad is not None and x.grad is None and w2.grad is None


def test_empty_tokens():
    x, w1, w2, _, _, _ = _problem(0, 8, 16, torch.float32, seed=9)
    x.requires_grad_()
    out = sp24.relu2_ffn(x, w1, w2)
    assert out.shape == (0, 8)
    out.sum().backward()
    assert x.grad.shape == (0, 8)


# --------------------------------------------------------------------------------------------
# inputs on which the approximation is exact


def _exact_problem(T=8, d=16, F=32, seed=10, bias=False):
    """X, W1 (and b1) such that Y1 = X W1^T + b1 has the sign pattern ((t + f) % 4) < 2 with margins
    >= 1: relu(Y1)^2 is 2:4 along the features and along every aligned group of 4 tokens."""
    g = gen(seed)
    x = torch.randn(T, d, generator=g, dtype=torch.float64)
    t, f = torch.arange(T).view(-1, 1), torch.arange(F).view(1, -1)
    mag = 1.0 + torch.rand(T, F, generator=g, dtype=torch.float64)
    y1 = torch.where((t + f) % 4 < 2, mag, -mag)
    b1 = torch.randn(F, generator=g, dtype=torch.float64) * 0.2 if bias else None
    w1 = (torch.linalg.pinv(x) @ (y1 - (0 if b1 is None else b1))).t()  # X W1^T = y1 - b1 (T <= d)
    w2 = torch.randn(d, F, generator=g, dtype=torch.float64) / F ** 0.5
    b2 = torch.randn(d, generator=g, dtype=torch.float64) * 0.2 if bias else None
    dout = torch.randn(T, d, generator=g, dtype=torch.float64)
    f32 = lambda v: None if v is None else v.float().contiguous()  # noqa: E731
    return [f32(v) for v in (x, w1, w2, b1, b2, dout)]


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("permute,dense_fraction", [(False, 0.0), (False, 0.5), (True, 1.0)])
def test_exact_2to4_inputs_give_dense_gradients(bias, permute, dense_fraction):
    # permute=False: aligned token groups are 2:4 by construction. permute=True: the permuted
    # groups are not, so all features go through the dense weight-gradient GEMM (fraction 1).
    args = _exact_problem(bias=bias)
    sp = reference_ffn.forward(args[0], args[1], args[2], args[3], args[4])
    assert torch.equal(sp["m_row"], sp["y2_full"] != 0)  # the construction holds in fp32
    out, g = _run(*args, sparse=True, permute_tokens=permute, dense_fraction=dense_fraction)
    ref, rg = _dense_grads(*args)
    _close(out, ref, "cpu", torch.float32, "out")
    for n in rg:
        if rg[n] is not None:
            _close(g[n], rg[n], "cpu", torch.float32, n)


def test_finite_differences_where_exact():
    # The ops take fp32 at most, so no float64 gradcheck for sparse=True. Instead: on inputs where
    # the 2:4 approximation is exact (above) and nothing crosses a relu or 2:4 decision within
    # +-eps, the loss sum(out * G) is a quadratic in every single coordinate, so the central
    # difference (L(p + e) - L(p - e)) / 2e is exact up to fp32 rounding; eps = 1e-2 keeps the
    # Y1 margins (>= 1) intact. Checked on a seeded subset of the coordinates of every input.
    args = _exact_problem(bias=True)
    x, w1, w2, b1, b2, dout = args
    _, g = _run(*args, sparse=True, permute_tokens=False, dense_fraction=0.0)
    params = {"dx": x, "dw1": w1, "dw2": w2, "db1": b1, "db2": b2}
    eps = 1e-2

    def loss(p):
        with ffn.fallback(False):
            out = sp24.relu2_ffn(p["dx"], p["dw1"], p["dw2"], p["db1"], p["db2"], permute_tokens=False,
                                 dense_fraction=0.0)
        return float((out.double() * dout.double()).sum())

    sel = gen(11)
    for name, t in params.items():
        flat_idx = torch.randperm(t.numel(), generator=sel)[:6]
        for i in flat_idx.tolist():
            plus = {k: v.clone() for k, v in params.items()}
            minus = {k: v.clone() for k, v in params.items()}
            plus[name].view(-1)[i] += eps
            minus[name].view(-1)[i] -= eps
            fd = (loss(plus) - loss(minus)) / (2 * eps)
            an = float(g[name].view(-1)[i])
            assert abs(fd - an) <= 2e-3 * max(1.0, abs(an)), f"{name}[{i}]: analytic {an} vs fd {fd}"


# --------------------------------------------------------------------------------------------
# permutation, split, errors, fallback, memory


def test_token_permutation():
    p, inv = ffn.token_permutation(1000)
    assert torch.equal(p.sort().values, torch.arange(1000))
    assert torch.equal(p[inv], torch.arange(1000))
    assert not torch.equal(p, torch.arange(1000))
    assert ffn.token_permutation(1000)[0] is p  # cached
    assert torch.equal(ffn._make_permutation(1000, torch.device("cpu"))[0], p)  # deterministic
    # neighbours in a sequence rarely share a group of 4 after it
    group = inv // 4
    assert float((group[1:] == group[:-1]).float().mean()) < 0.05


def test_n_dense_features():
    assert ffn.n_dense_features(16384, 0.05) == 816     # 15568 sparse features: a multiple of 16
    assert ffn.n_dense_features(64, 0.25) == 16
    assert ffn.n_dense_features(64, 0.05) == 0
    assert ffn.n_dense_features(64, 0.0) == 0 and ffn.n_dense_features(64, 1.0) == 64
    assert ffn.n_dense_features(40, 0.0) == 8           # F % 16 == 8: 8 features stay dense
    for F in (8, 16, 40, 4096):
        for frac in (0.0, 0.05, 0.3, 1.0):
            n = ffn.n_dense_features(F, frac)
            assert 0 <= n <= F and (F - n) % 16 == 0


def test_feature_split_ties_by_index():
    counts = torch.tensor([3, 7, 7, 1, 7, 0, 2, 2], dtype=torch.int32)
    dense, sparse = ffn.feature_split(counts, 2)
    assert dense.tolist() == [1, 2] and sparse.tolist() == [0, 3, 4, 5, 6, 7]
    dense, _ = ffn.feature_split(counts, 5)
    assert dense.tolist() == [0, 1, 2, 4, 6]


@pytest.mark.parametrize("kwargs,exc,words", [
    ({"d": 12}, ValueError, "multiples of 8, got d=12"),
    ({"F": 20}, ValueError, "F=20"),
    ({"dtype": torch.float64}, TypeError, "sparse=True needs"),
    ({"dense_fraction": 1.5}, ValueError, "dense_fraction must be a number in [0, 1], got 1.5"),
])
def test_errors(kwargs, exc, words):
    d, F = kwargs.get("d", 8), kwargs.get("F", 16)
    x, w1, w2, *_ = _problem(4, d, F, kwargs.get("dtype", torch.float32), seed=12)
    with pytest.raises(exc, match="sp24.relu2_ffn") as e:
        sp24.relu2_ffn(x, w1, w2, dense_fraction=kwargs.get("dense_fraction", 0.05))
    assert words in str(e.value)


def test_shape_and_dtype_errors():
    x, w1, w2, *_ = _problem(4, 8, 16, torch.float32, seed=13)
    with pytest.raises(ValueError, match=r"shapes do not match"):
        sp24.relu2_ffn(x, w1, w2.t())
    with pytest.raises(TypeError, match=r"w2.dtype must equal x.dtype"):
        sp24.relu2_ffn(x, w1, w2.double())
    with pytest.raises(ValueError, match=r"b1 must have shape \(16,\), got \(8,\)"):
        sp24.relu2_ffn(x, w1, w2, torch.zeros(8))


def test_saved_activation_memory():
    # bf16, T=512, d=128, F=512: dense eager saves x, relu(Y1) and Y2 (2 T*F values); the sparse
    # FFN saves x, the Y2 values (T*F/2) and its 2:4 pattern, the counts and the
    # permutation. The pattern is saved packed, 4 indices a byte (T*F/8 bytes).
    x, w1, w2, b1, b2, _ = _problem(512, 128, 512, torch.bfloat16, seed=14, bias=True)
    for t in (x, w1, w2, b1, b2):
        t.requires_grad_()
    weights = (w1, w2, b1, b2)
    dense = ffn.saved_bytes(ffn.dense_relu2_ffn, x, *weights, exclude=weights)
    with ffn.fallback(False):
        sparse = ffn.saved_bytes(sp24.relu2_ffn, x, *weights, exclude=weights)
    T, d, F = 512, 128, 512
    assert dense == 2 * (T * d + 2 * T * F)
    assert sparse == 2 * T * d + 2 * T * F // 2 + T * F // 8 + 4 * F + 2 * 8 * T
    # what the FFN itself adds beyond its input x: Y1 (2 T*F bytes, as a dense FFN that saves only
    # x and Y1 keeps) against the compressed Y2 with the packed pattern
    assert (sparse - 2 * T * d) <= 0.6 * (2 * T * F), (sparse - 2 * T * d, 2 * T * F)
    assert sparse <= 0.6 * dense, (sparse, dense)


@pytest.mark.parametrize("sparse", [False, True])
def test_autocast(sparse):
    # fp32 master weights under bf16 autocast: the FFN runs in bf16, the gradients arrive in fp32
    x, w1, w2, b1, b2, dout = _problem(20, 16, 32, torch.float32, seed=15, bias=True)
    leaves = [t.clone().requires_grad_() for t in (x, w1, w2, b1, b2)]
    with torch.autocast("cpu", dtype=torch.bfloat16), ffn.fallback(False):
        out = sp24.relu2_ffn(*leaves, sparse=sparse)
    assert out.dtype == torch.bfloat16
    out.backward(dout.bfloat16())
    want_out, want = _run(*[t.bfloat16() for t in (x, w1, w2, b1, b2, dout)], sparse=sparse)
    if sparse:
        assert torch.equal(out.detach(), want_out)
    else:  # autocast's own dense path: same math, compare loosely
        _close(out.detach(), want_out, "cpu", torch.bfloat16, "out")
    for t, n in zip(leaves, ("dx", "dw1", "dw2", "db1", "db2")):
        assert t.grad.dtype == torch.float32
        if sparse:
            assert torch.equal(t.grad, want[n].float()), n
        else:
            _close(t.grad, want[n], "cpu", torch.bfloat16, n)
