"""sp24.nn under wrappers, meta tensors and FakeTensorMode; what convert reports. PEFT LoRA with the
real package: tests/test_hf.py."""

from __future__ import annotations

import logging
import warnings

import pytest
import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode

import sp24
from sp24 import ffn


def _x(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _ffn(sparse=True, seed=0):
    torch.manual_seed(seed)
    return sp24.nn.ReLU2FFN(16, 64, bias=True, sparse=sparse)


def test_forward_hooks_fire_dense_and_sparse_falls_back_with_a_warning():
    m = _ffn(sparse=False)
    x = _x(2, 8, 16, seed=1)
    calls = []
    h = m.w1.register_forward_hook(lambda mod, i, o: calls.append(o.shape))
    y = m(x)
    assert calls == [torch.Size([2, 8, 64])]  # dense mode calls the modules: hooks fire
    m.sparse = True
    with ffn.fallback(False), pytest.warns(UserWarning, match=r"w1 has .*hooks.*runs dense \(calling its modules\)"):
        y2 = m(x)
    assert len(calls) == 2 and torch.equal(y2, y)  # never silently bypassed
    h.remove()
    with ffn.fallback(False), warnings.catch_warnings():
        warnings.simplefilter("error")
        y3 = m(x)  # plain again: the 2:4 path
    assert not torch.equal(y3, y)


class Float8LikeLinear(nn.Linear):  # a Linear subclass with its own forward (float8, quantized ...)
    def forward(self, x):
        return nn.functional.linear(x.to(torch.bfloat16).float(), self.weight.to(torch.bfloat16).float(), self.bias)


def test_a_linear_with_its_own_forward_is_called_not_bypassed():
    m = _ffn()
    q = Float8LikeLinear(64, 16)
    q.load_state_dict(m.w2.state_dict())
    m.w2 = q
    x = _x(3, 16, seed=2)
    with ffn.fallback(False), pytest.warns(UserWarning, match=r"w2 is a .*Float8LikeLinear with its own forward"):
        got = m(x)
    assert torch.equal(got, q(torch.relu(m.w1(x)).square()))


def test_convert_skips_wrapped_linears_with_a_reason():
    class MLP(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.fc2 = Float8LikeLinear(16, 32), nn.Linear(32, 16)

        def forward(self, x):
            return self.fc2(torch.relu(self.fc1(x)).square())

    model, report = sp24.nn.convert(nn.Sequential(MLP()), return_report=True)
    assert isinstance(model[0], MLP) and report.swapped == []
    assert report.skipped == [("0", "fc1/fc2 are Float8LikeLinear/Linear, neither plain nn.Linear without hooks "
                                    "nor PEFT LoRA over one (a quantized/float8 wrapper?): convert before wrapping")]


class Experts(nn.Module):  # NemotronH-style routed experts: 3-D weights, relu2, not gated
    def __init__(self, e=4, d=16, f=32):
        super().__init__()
        self.up_proj = nn.Parameter(torch.randn(e, f, d))
        self.down_proj = nn.Parameter(torch.randn(e, d, f))


class Gated(nn.Module):
    def __init__(self):
        super().__init__()
        self.gate_proj, self.up_proj, self.down_proj = nn.Linear(16, 32), nn.Linear(16, 32), nn.Linear(32, 16)

    def forward(self, x):
        return self.down_proj(torch.relu(self.gate_proj(x)).square() * self.up_proj(x))


class Scaled(nn.Module):  # extra state besides the two Linears
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(16, 32), nn.Linear(32, 16)
        self.scale = nn.Parameter(torch.ones(16))

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)).square()) * self.scale


def test_convert_report(caplog):
    model = nn.ModuleDict({"experts": Experts(), "gated": Gated(), "scaled": Scaled(),
                           "mlp": nn.Sequential(nn.Linear(16, 32), sp24.nn.ReLU2(), nn.Linear(32, 16))})
    with caplog.at_level(logging.INFO, logger="sp24.nn"):
        out, report = sp24.nn.convert(model, return_report=True)
    assert out is model and report.swapped == ["mlp"] and isinstance(model["mlp"], sp24.nn.ReLU2FFN)
    reasons = dict(report.skipped)
    assert set(reasons) == {"experts", "gated", "scaled"}
    assert "MoE experts up_proj/down_proj (4, 32, 16) without an act_fn" in reasons["experts"]
    assert "not the Squared-ReLU FFN of its Linears" in reasons["gated"]
    assert "holds state besides its two Linears (scale)" in reasons["scaled"]
    assert "sp24.nn.convert: swapped 1, skipped 3" in caplog.text and "skipped experts: MoE" in caplog.text
    with pytest.warns(UserWarning, match="sp24.nn.convert: converted nothing in Linear"):
        assert sp24.nn.convert(nn.Linear(4, 4)).__class__ is nn.Linear  # default return value: the model
    # a conversion that swaps nothing says so (not only at INFO), with the first reasons
    with pytest.warns(UserWarning, match=r"converted nothing in ModuleDict \(1 skipped: gated: its forward is not"):
        sp24.nn.convert(nn.ModuleDict({"gated": Gated()}))


def test_meta_build_convert_to_empty_init():
    # the torchtitan / accelerate init_empty_weights flow
    with torch.device("meta"):
        model = nn.Sequential(nn.LayerNorm(16), nn.Sequential(nn.Linear(16, 64), sp24.nn.ReLU2(), nn.Linear(64, 16)))
    _, report = sp24.nn.convert(model, sparse=True, return_report=True)
    assert report.swapped == ["1"] and model[1].w1.weight.is_meta
    xm = torch.empty(2, 8, 16, device="meta", requires_grad=True)
    with ffn.fallback(False):
        y = model(xm)  # the 2:4 path on meta: shapes only
        y.sum().backward()
        assert y.is_meta and y.shape == (2, 8, 16) and xm.grad.shape == (2, 8, 16)
        assert sp24.relu2_ffn(xm, model[1].w1.weight, model[1].w2.weight).is_meta
        assert sp24.relu2_ffn(xm, model[1].w1.weight, model[1].w2.weight, sparse=False).is_meta
    assert not any(dev.type == "meta" for _, dev in ffn._PERM_CACHE)
    model.to_empty(device="cpu")
    torch.manual_seed(0)
    for mod in model.modules():
        if hasattr(mod, "reset_parameters"):
            mod.reset_parameters()
    x = _x(2, 8, 16, seed=3)
    with ffn.fallback(False):
        got = model(x)
    w1, w2 = model[1].w1, model[1].w2
    want = sp24.relu2_ffn(model[0](x), w1.weight, w2.weight, w1.bias, w2.bias)
    assert model[1].sparse and torch.equal(got, want) and not got.is_meta


def test_meta_convert_checks_structure_without_values():
    with torch.device("meta"):
        model = nn.ModuleDict({"ok": nn.Sequential(nn.Linear(16, 32), sp24.nn.ReLU2(), nn.Linear(32, 16)),
                               "gelu": Gated()})
    _, report = sp24.nn.convert(model, return_report=True)
    assert report.swapped == ["ok"] and "on the meta device its forward cannot be checked" in dict(report.skipped)["gelu"]


def test_fake_tensor_mode_caches_nothing():
    m = _ffn()
    T = 37 * 3  # a token count no other test uses
    with FakeTensorMode(allow_non_fake_inputs=True):
        xf = torch.randn(3, 37, 16)
        with ffn.fallback(False):
            yf = m(xf)
        assert isinstance(yf, FakeTensor)
        perm, _ = ffn.token_permutation(T)
        assert isinstance(perm, FakeTensor)
    assert (T, torch.device("cpu")) not in ffn._PERM_CACHE
    x = _x(3, 37, 16, seed=4)
    with ffn.fallback(False):
        y = m(x)
    assert type(y) is torch.Tensor and type(ffn.token_permutation(T)[0]) is torch.Tensor
    assert (T, torch.device("cpu")) in ffn._PERM_CACHE
    perm = ffn.token_permutation(T)[0]
    assert torch.equal(perm.sort().values, torch.arange(T))


def test_sparsify24_transposed_columns_on_meta():
    t = sp24.sparsify24_transposed(torch.empty(8, 16, device="meta"), columns=[0, 3, 5, 6])
    assert t.shape == (4, 8)


def test_inference_mode_first_then_training():
    # the cached permutation made under inference_mode must not poison a later training forward
    m = _ffn()
    x = _x(3, 41, 16, seed=5)
    with torch.inference_mode(), ffn.fallback(False):
        y0 = m(x)
    with ffn.fallback(False):
        y = m(x.clone().requires_grad_())
        y.sum().backward()
    assert torch.equal(y.detach(), y0) and m.w1.weight.grad is not None
