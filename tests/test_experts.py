"""sp24.relu2_experts and sp24.nn.ReLU2Experts: routed Squared-ReLU experts (MoE), each expert's tokens
through relu2_ffn. Dense mode against Hugging Face's eager experts loop (bits), sparse mode against
the oracle (sp24.reference_ffn.experts: out and the gradients of x, both weight stacks and the
routing weights), routing edge cases (empty experts, one token, uneven loads, dropped pairs),
the per-expert dense-fallback decision, the module's mode, checkpoints and pickling."""

from __future__ import annotations

import copy
import io
import pickle

import pytest
import torch
import torch.nn.functional as F_

from helpers import gen, requires_cuda
import sp24
from sp24 import _fallback, ffn, reference_ffn
from sp24.experts import route

E, D, FH = 4, 16, 32


def _tol(dtype):
    return 1e-5 if dtype == torch.float32 else 1e-2


def _close(actual, expected, dtype, what):
    scale = float(expected.float().abs().max().clamp(min=1e-6))
    err = float((actual.float() - expected.float()).abs().max())
    assert err <= _tol(dtype) * scale, f"{what}: max error {err} vs scale {scale}"


def _problem(T, k, seed, dtype=torch.float32, idx=None, E_=E, d=D, Fh=FH):
    g = gen(seed)
    x = torch.randn(T, d, generator=g).to(dtype)
    w1 = (torch.randn(E_, Fh, d, generator=g) / d ** 0.5).to(dtype)
    w2 = (torch.randn(E_, d, Fh, generator=g) / Fh ** 0.5).to(dtype)
    if idx is None:
        idx = torch.stack([torch.randperm(E_, generator=g)[:k] for _ in range(T)]) if T else torch.zeros(0, k, dtype=torch.long)
    wts = torch.rand(T, k, generator=g)
    dout = torch.randn(T, d, generator=g).to(dtype)
    return x, idx, wts, w1, w2, dout


def _hf_eager(x, idx, wts, w1, w2):
    # Hugging Face's eager experts loop (NemotronHExperts.forward), written out, with index E skipped
    # as Mixtral-style loops and HF's expert-parallel sentinel do (NemotronH's own loop raises an
    # IndexError for it; tests/test_hf_experts.py compares with the real module on valid indices)
    out = torch.zeros_like(x, dtype=wts.dtype)
    mask = F_.one_hot(idx, num_classes=w1.shape[0] + 1).permute(2, 1, 0)
    for e in torch.greater(mask.sum(dim=(-1, -2)), 0).nonzero().squeeze(-1).tolist():
        if e == w1.shape[0]:
            continue
        pos, tok = torch.where(mask[e])
        h = F_.linear(torch.square(F_.relu(F_.linear(x[tok], w1[e]))), w2[e])
        out.index_add_(0, tok, (h * wts[tok, pos, None]).to(out.dtype))
    return out.to(x.dtype)


def _run(x, idx, wts, w1, w2, dout, **kw):
    leaves = [t.detach().clone().requires_grad_() for t in (x, wts, w1, w2)]
    with ffn.fallback(False):
        out = sp24.relu2_experts(leaves[0], idx, leaves[1], leaves[2], leaves[3], **kw)
    out.backward(dout)
    return out.detach(), dict(zip(("dx", "dweights", "dw1", "dw2"), (t.grad for t in leaves)))


def _perms(idx):
    n = torch.bincount(idx[idx < E].reshape(-1), minlength=E)
    return {int(c): (ffn.token_permutation(int(c))[0] if c > 1 else None) for c in n if c > 0}


# Routings: (T, k, idx or None): balanced random, uneven (expert 0 takes most, expert 3 none),
# one token, dropped pairs (index E), a single expert for everyone.
_UNEVEN = torch.tensor([[0, 1]] * 21 + [[0, 2]] * 5 + [[1, 0]] * 3)
ROUTINGS = {
    "random_k2": (40, 2, None),
    "random_k3": (23, 3, None),
    "uneven_empty": (29, 2, _UNEVEN),
    "one_token": (1, 2, torch.tensor([[2, 0]])),
    "dropped": (12, 2, torch.tensor([[0, E], [E, 1], [2, 3]] * 4)),
    "one_expert_k1": (17, 1, torch.full((17, 1), 3)),
    "same_expert_twice": (20, 2, torch.tensor([[1, 1], [0, 2]] * 10)),
}


@pytest.mark.parametrize("routing", list(ROUTINGS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dense_mode_is_hf_eager(routing, dtype):
    T, k, idx = ROUTINGS[routing]
    x, idx, wts, w1, w2, dout = _problem(T, k, seed=1, dtype=dtype, idx=idx)
    assert torch.equal(sp24.relu2_experts(x, idx, wts, w1, w2, sparse=False), _hf_eager(x, idx, wts, w1, w2))


@pytest.mark.parametrize("routing", list(ROUTINGS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_sparse_matches_oracle(routing, dtype):
    T, k, idx = ROUTINGS[routing]
    x, idx, wts, w1, w2, dout = _problem(T, k, seed=2, dtype=dtype, idx=idx)
    out, g = _run(x, idx, wts, w1, w2, dout, dense_fraction=0.25)
    ref = reference_ffn.experts(x, idx, wts, w1, w2, dout, dense_fraction=0.25, perms=_perms(idx))
    _close(out, ref["out"], dtype, "out")
    for n in ("dx", "dw1", "dw2", "dweights"):
        _close(g[n], ref[n], dtype, n)


def test_sparse_is_not_dense_and_routes_gradients():
    x, idx, wts, w1, w2, dout = _problem(64, 2, seed=3)
    out, g = _run(x, idx, wts, w1, w2, dout)
    dense, gd = _run(x, idx, wts, w1, w2, dout, sparse=False)
    assert not torch.allclose(out, dense, atol=1e-4)  # the 2:4 approximation is real
    for n in g:
        assert torch.isfinite(g[n]).all() and g[n].abs().sum() > 0, n
    assert torch.equal(g["dw1"][idx.unique()].ne(0).any(-1).any(-1), torch.ones(len(idx.unique()), dtype=torch.bool))


def test_empty_and_dropped_experts_get_zero_gradients():
    x, idx, wts, w1, w2, dout = _problem(29, 2, seed=4, idx=_UNEVEN)
    _, g = _run(x, idx, wts, w1, w2, dout)
    assert torch.equal(g["dw1"][3], torch.zeros_like(g["dw1"][3])) and torch.equal(g["dw2"][3], torch.zeros_like(g["dw2"][3]))
    x, idx, wts, w1, w2, dout = _problem(12, 2, seed=5, idx=ROUTINGS["dropped"][2])
    out, g = _run(x, idx, wts, w1, w2, dout)
    assert torch.equal(g["dweights"][idx == E], torch.zeros(int((idx == E).sum())))


def test_zero_tokens():
    x, idx, wts, w1, w2, _ = _problem(0, 2, seed=6)
    out = sp24.relu2_experts(x, idx, wts, w1, w2)
    assert out.shape == (0, D)


def test_route_order_is_hf_eager_order():
    idx = torch.tensor([[1, 0], [0, 2], [1, 2]])
    tokens, slots, counts = route(idx, 3)
    assert counts == [2, 2, 2]
    # expert 0: (slot 0, token 1), (slot 1, token 0); expert 1: tokens 0, 2 at slot 0; expert 2: slot 1 of 1, 2
    assert tokens.tolist() == [1, 0, 0, 2, 1, 2] and slots.tolist() == [0, 1, 0, 0, 1, 1]


def test_fallback_decides_per_expert(monkeypatch):
    # the dense fallback sees each expert's own token count and shape
    seen = []

    def spy(device, T, d, Fh, dtype, backward):
        seen.append((T, d, Fh))
        return T < 10

    monkeypatch.setattr(_fallback, "use_dense", spy)
    x, idx, wts, w1, w2, _ = _problem(29, 2, seed=7, idx=_UNEVEN)
    out = sp24.relu2_experts(x, idx, wts, w1, w2)
    counts = torch.bincount(_UNEVEN.reshape(-1), minlength=E).tolist()
    assert sorted(seen) == sorted((c, D, FH) for c in counts if c)
    # experts below 10 tokens ran dense: the output equals the per-expert mix of dense and sparse
    tokens, slots, cnt = route(idx, E)
    want = torch.zeros(29, D)
    start = 0
    for e, n in enumerate(cnt):
        tok, slot = tokens[start:start + n], slots[start:start + n]
        start += n
        if n:
            with ffn.fallback(False):
                y = sp24.relu2_ffn(x[tok], w1[e], w2[e], sparse=n >= 10)
            want.index_add_(0, tok, y * wts[tok, slot, None])
    assert torch.equal(out, want)


def _per_expert_relu2_ffn(x, idx, wts, w1, w2, b1, b2, **kw):
    # the definition of the sparse path: each expert's tokens (route's order) through relu2_ffn,
    # added per token in increasing expert order
    tokens, slots, counts = route(idx, w1.shape[0])
    out, start = torch.zeros(x.shape, dtype=wts.dtype, device=x.device), 0
    for e, n in enumerate(counts):
        tok, slot = tokens[start:start + n], slots[start:start + n]
        start += n
        if n:
            y = sp24.relu2_ffn(x[tok], w1[e], w2[e], None if b1 is None else b1[e], None if b2 is None else b2[e], **kw)
            out = out.index_add(0, tok, (y * wts[tok, slot, None]).to(out.dtype))
    return out.to(x.dtype)


# relu2_experts gathers each expert's tokens already permuted and padded (one gather for all
# experts) and runs the FFN's autograd Function on them: the bits must be those of relu2_ffn on each
# expert's tokens, forward and every gradient (k = 2: autograd adds a token's two dx in either order)
@pytest.mark.parametrize("routing", ["random_k2", "uneven_empty", "dropped", "one_token", "same_expert_twice"])
@pytest.mark.parametrize("case", ["default", "biases", "no_permutation", "dense_backward", "ste", "bf16",
                                  "autocast_bf16", "fp8", "fallback_some"])
def test_sparse_path_is_relu2_ffn_per_expert_bit_for_bit(routing, case, monkeypatch):
    T, k, idx = ROUTINGS[routing]
    dtype = torch.bfloat16 if case == "bf16" else torch.float32
    x, idx, wts, w1, w2, dout = _problem(T, k, seed=21, dtype=dtype, idx=idx)
    g = gen(22)
    b1 = b2 = None
    if case == "biases":
        b1, b2 = torch.randn(E, FH, generator=g) * 0.3 + 0.2, torch.randn(E, D, generator=g) * 0.3
    kw = dict(dense_fraction=0.25, permute_tokens=case != "no_permutation", sparse_backward=case != "dense_backward",
              gradient="ste" if case == "ste" else "24sparse", fp8=case == "fp8")
    if case == "fallback_some":  # experts with fewer than 8 tokens run dense (the decision is per expert)
        monkeypatch.setattr(_fallback, "use_dense", lambda device, T, d, Fh, dtype, backward: T < 8)

    def run(fn):
        leaves = [None if t is None else t.detach().clone().requires_grad_() for t in (x, wts, w1, w2, b1, b2)]
        with ffn.fallback(case == "fallback_some"), torch.autocast("cpu", dtype=torch.bfloat16,
                                                                      enabled=case == "autocast_bf16"):
            out = fn(*leaves[:4], *leaves[4:])
        out.backward(dout.to(out.dtype))
        return [out.detach()] + [None if t is None else t.grad for t in leaves]

    got = run(lambda x_, w_, a, b, c, d: sp24.relu2_experts(x_, idx, w_, a, b, c, d, **kw))
    want = run(lambda x_, w_, a, b, c, d: _per_expert_relu2_ffn(x_, idx, w_, a, b, c, d, **kw))
    for name, a, b in zip(("out", "dx", "dweights", "dw1", "dw2", "db1", "db2"), got, want):
        assert (a is None) == (b is None), name
        if a is not None:
            assert a.dtype == b.dtype and torch.equal(a, b), f"{name}: max diff {(a.float() - b.float()).abs().max()}"


def test_three_pairs_of_one_token_in_one_expert_match_to_rounding():
    # not a top-k routing: the three additions of a token then run in the expert's permuted order
    idx = torch.tensor([[1, 1, 1], [0, 2, 3]] * 10)
    x, idx, wts, w1, w2, dout = _problem(20, 3, seed=23, idx=idx)
    got = sp24.relu2_experts(x, idx, wts, w1, w2, dense_fraction=0.25)
    want = _per_expert_relu2_ffn(x, idx, wts, w1, w2, None, None, dense_fraction=0.25)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


def test_router_only_gradient_decides_the_fallback_as_relu2_ffn(monkeypatch):
    # only the routing weights require grad: no FFN backward, so each expert's fallback is asked with
    # backward=False, as relu2_ffn would be
    seen = []
    monkeypatch.setattr(_fallback, "use_dense", lambda device, T, d, Fh, dtype, backward: seen.append(backward))
    x, idx, wts, w1, w2, _ = _problem(40, 2, seed=24)
    sp24.relu2_experts(x, idx, wts.requires_grad_(), w1, w2).sum().backward()
    assert seen and not any(seen) and wts.grad is not None and wts.grad.abs().sum() > 0


def test_sparse_refuses_float64_naming_the_op():
    x, idx, wts, w1, w2, _ = _problem(8, 2, seed=25, dtype=torch.float64)
    with pytest.raises(TypeError, match="sp24.relu2_experts: sparse=True needs"):
        sp24.relu2_experts(x, idx, wts, w1, w2)
    assert sp24.relu2_experts(x, idx, wts, w1, w2, sparse=False).dtype == torch.float64


@pytest.mark.parametrize("bad,err,msg", [
    (dict(idx=torch.tensor([[0, 5]] * 4)), ValueError, r"top_k_index must lie in \[0, 4\]"),
    (dict(idx=torch.tensor([[0, -1]] * 4)), ValueError, r"top_k_index must lie in"),
    (dict(idx=torch.tensor([[0.0, 1.0]] * 4)), TypeError, "top_k_index must be int64 or int32"),
    (dict(idx=torch.tensor([[0, 1]] * 3)), ValueError, r"\(T, k\) with T = 4"),
    (dict(wts=torch.ones(4, 2, dtype=torch.long)), TypeError, "top_k_weights must be floating point"),
    (dict(w1=torch.randn(4, 32, 8)), ValueError, "shapes do not match"),
    (dict(x=torch.randn(2, 2, 16)), ValueError, r"x must be \(T, d\)"),
    (dict(w1=torch.randn(4, 20, 16), w2=torch.randn(4, 16, 20)), ValueError, "multiples of 8, got d=16, F=20"),
])
def test_errors_name_the_op(bad, err, msg):
    x, idx, wts, w1, w2, _ = _problem(4, 2, seed=8)
    a = dict(x=x, idx=idx, wts=wts, w1=w1, w2=w2) | bad
    with pytest.raises(err, match=msg) as e:
        sp24.relu2_experts(a["x"], a["idx"], a["wts"], a["w1"], a["w2"])
    assert "sp24.relu2_experts" in str(e.value)


# --------------------------------------------------------------------------------------------
# the module


def _module(sparse=False, seed=0):
    torch.manual_seed(seed)
    return sp24.nn.ReLU2Experts(E, D, FH, sparse=sparse, dense_fraction=0.25)


def test_module_modes_and_state():
    m = _module()
    x, idx, wts, _, _, dout = _problem(40, 2, seed=9)
    assert torch.equal(m(x, idx, wts), _hf_eager(x, idx, wts, m.up_proj, m.down_proj))
    assert sp24.nn.set_sparse(m, True) == 1 and m.sparse
    with ffn.fallback(False):
        got = m(x, idx, wts)
        want = sp24.relu2_experts(x, idx, wts, m.up_proj, m.down_proj, dense_fraction=0.25)
    assert torch.equal(got, want)
    sd = m.state_dict()
    assert sorted(sd) == ["down_proj", "sp24_mode", "up_proj"]
    other = _module(seed=1)
    other.load_state_dict(sd)
    assert other.sparse and other.dense_fraction == 0.25 and torch.equal(other.up_proj, m.up_proj)


def test_module_init_is_linear_like():
    m = sp24.nn.ReLU2Experts(8, 64, 256)
    assert m.up_proj.abs().max() <= 1 / 64 ** 0.5 and m.down_proj.abs().max() <= 1 / 256 ** 0.5
    assert m.up_proj.std() > 0.5 / 64 ** 0.5 / 3 ** 0.5


def test_module_pickle_and_deepcopy():
    m = _module(sparse=True)
    for clone in (copy.deepcopy(m), pickle.loads(pickle.dumps(m))):
        assert type(clone) is type(m) and clone.sparse and torch.equal(clone.up_proj, m.up_proj)
    buf = io.BytesIO()
    torch.save(m, buf)
    buf.seek(0)
    assert torch.load(buf, weights_only=False).sparse


def test_dense_warmup_switches_experts():
    model = torch.nn.ModuleDict({"ffn": sp24.nn.ReLU2FFN(16, 32), "experts": _module()})
    warm = sp24.nn.DenseWarmup(model, steps=1)
    warm.step()
    assert model["ffn"].sparse and model["experts"].sparse


def test_track_stats_per_expert():
    m = _module()
    m.track_stats = True
    x, idx, wts, _, _, _ = _problem(40, 2, seed=10)
    m(x, idx, wts)
    s = m.last_stats
    assert 0 < s["zero_fraction"] < 1 and 0 <= s["drop_rowwise"] <= 1 and s["experts_with_tokens"] == E


def test_biases_match_oracle_and_get_gradients():
    x, idx, wts, w1, w2, dout = _problem(40, 2, seed=11)
    g = gen(12)
    b1, b2 = torch.randn(E, FH, generator=g) * 0.3 + 0.2, torch.randn(E, D, generator=g) * 0.3
    leaves = [t.clone().requires_grad_() for t in (x, wts, w1, w2, b1, b2)]
    with ffn.fallback(False):
        out = sp24.relu2_experts(leaves[0], idx, leaves[1], leaves[2], leaves[3], leaves[4], leaves[5],
                                 dense_fraction=0.25)
    out.backward(dout)
    ref = reference_ffn.experts(x, idx, wts, w1, w2, dout, dense_fraction=0.25, perms=_perms(idx), b1=b1, b2=b2)
    _close(out.detach(), ref["out"], torch.float32, "out")
    for n, t in zip(("dx", "dweights", "dw1", "dw2", "db1", "db2"), leaves):
        _close(t.grad, ref[n], torch.float32, n)
    dense = sp24.relu2_experts(x, idx, wts, w1, w2, b1, b2, sparse=False)
    want = torch.zeros(40, D)
    for t in range(40):
        for j in range(2):
            e = int(idx[t, j])
            want[t] += wts[t, j] * (torch.relu(x[t] @ w1[e].t() + b1[e]).square() @ w2[e].t() + b2[e])
    torch.testing.assert_close(dense, want, rtol=1e-5, atol=1e-5)


def test_int32_indices_and_non_contiguous_inputs_give_the_same_bits():
    x, idx, wts, w1, w2, dout = _problem(40, 2, seed=13)
    with ffn.fallback(False):
        want = sp24.relu2_experts(x, idx, wts, w1, w2)
        got = sp24.relu2_experts(x.t().contiguous().t(), idx.int(), wts.t().contiguous().t(),
                                 w1.transpose(1, 2).contiguous().transpose(1, 2), w2, sparse=True)
    assert torch.equal(got, want)


def test_options_are_checked_even_when_nothing_is_routed():
    x, idx, wts, w1, w2, _ = _problem(0, 2, seed=14)
    with pytest.raises(ValueError, match="sp24.relu2_experts: dense_fraction"):
        sp24.relu2_experts(x, idx, wts, w1, w2, dense_fraction=2.0)
    with pytest.raises(ValueError, match="gradient must be"):
        sp24.relu2_experts(x, idx, wts, w1, w2, gradient="bogus")


def test_meta_and_fake_mode_give_the_shape_and_the_dense_loop_refuses_fake_mode():
    x, idx, wts, w1, w2, _ = (t.to("meta") for t in _problem(8, 2, seed=15))
    out = sp24.relu2_experts(x, idx, wts, w1, w2)
    assert out.device.type == "meta" and out.shape == (8, D)
    from torch._subclasses.fake_tensor import FakeTensorMode
    with FakeTensorMode():
        x, idx, wts, w1, w2 = torch.randn(8, D), torch.zeros(8, 2, dtype=torch.long), torch.rand(8, 2), \
            torch.randn(E, FH, D), torch.randn(E, D, FH)
        out = sp24.relu2_experts(x, idx, wts, w1, w2)  # the sparse path's op and its fake
        assert out.shape == (8, D) and out.dtype == x.dtype
        with pytest.raises(RuntimeError, match="sparse=False follows Hugging Face's eager loop"):
            sp24.relu2_experts(x, idx, wts, w1, w2, sparse=False)


@pytest.mark.parametrize("case", ["default", "biases", "autocast_bf16"])
def test_fullgraph_compile_gives_the_eager_bits_forward_and_backward(case):
    x, idx, wts, w1, w2, dout = _problem(40, 2, seed=27)
    g = gen(28)
    b1, b2 = (torch.randn(E, FH, generator=g) * 0.3, torch.randn(E, D, generator=g) * 0.3) if case == "biases" \
        else (None, None)

    def f(x_, w_, a, b, c, d):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=case == "autocast_bf16"):
            return sp24.relu2_experts(x_, idx, w_, a, b, c, d, dense_fraction=0.25)

    def run(fn):
        leaves = [None if t is None else t.clone().requires_grad_() for t in (x, wts, w1, w2, b1, b2)]
        out = fn(*leaves)
        out.backward(dout)
        return [out.detach()] + [None if t is None else t.grad for t in leaves]

    want = run(f)
    torch._dynamo.reset()
    got = run(torch.compile(f, fullgraph=True))
    for name, a, b in zip(("out", "dx", "dweights", "dw1", "dw2", "db1", "db2"), got, want):
        assert (a is None) == (b is None) and (a is None or torch.equal(a, b)), name


def test_the_compiled_paths_op_passes_opcheck():
    x, idx, wts, w1, w2, _ = _problem(24, 2, seed=29)
    args = (x, idx, wts.requires_grad_(), w1.requires_grad_(), w2, None, None, 0.25, True, "24sparse", True, False,
            None)
    torch.library.opcheck(torch.ops.sp24.relu2_experts_sparse.default, args)


def test_stack_dtypes_are_checked_even_when_nothing_is_routed():
    x, _, wts, w1, w2, _ = _problem(6, 2, seed=16)
    dropped = torch.full((6, 2), E)
    for kw in (dict(w1=w1.bfloat16()), dict(w2=w2.bfloat16())):
        a = dict(w1=w1, w2=w2) | kw
        for idx in (dropped, torch.zeros(6, 2, dtype=torch.long)):
            with pytest.raises(TypeError, match=r"sp24.relu2_experts: w[12].dtype must equal x.dtype"):
                sp24.relu2_experts(x, idx, wts, a["w1"], a["w2"], sparse=False)


@requires_cuda
@pytest.mark.gpu
def test_cuda_sparse_path_is_relu2_ffn_per_expert_bit_for_bit():
    # the layout on CUDA (each expert's rows a view at a row offset of one gather), cuSPARSELt shapes
    # (d, F multiples of 16); k = 1, so no token is added twice (CUDA's index_add_ uses atomics)
    T, Ex, d, Fh = 200, 4, 64, 128
    g = gen(26)
    x = torch.randn(T, d, generator=g).bfloat16()
    w1 = (torch.randn(Ex, Fh, d, generator=g) / 8).bfloat16()
    w2 = (torch.randn(Ex, d, Fh, generator=g) / 11).bfloat16()
    idx = torch.randint(0, Ex, (T, 1), generator=g)
    idx[:5] = Ex  # dropped pairs
    wts, dout = torch.rand(T, 1, generator=g), torch.randn(T, d, generator=g).bfloat16()

    def run(fn):
        leaves = [t.cuda().requires_grad_() for t in (x, wts, w1, w2)]
        with ffn.fallback(False):
            out = fn(*leaves)
        out.backward(dout.cuda())
        return [out.detach().cpu()] + [t.grad.cpu() for t in leaves]

    got = run(lambda x_, w_, a, b: sp24.relu2_experts(x_, idx.cuda(), w_, a, b, dense_fraction=0.25))
    want = run(lambda x_, w_, a, b: _per_expert_relu2_ffn(x_, idx.cuda(), w_, a, b, None, None, dense_fraction=0.25))
    for name, a, b in zip(("out", "dx", "dweights", "dw1", "dw2"), got, want):
        assert torch.equal(a, b), name
