"""sp24.nn: ReLU2FFN, set_sparse, track_stats, DenseWarmup, convert."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

import sp24
from sp24 import ffn


def _x(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("bias", [False, True])
def test_relu2ffn_dense_is_plain_pytorch(bias):
    torch.manual_seed(0)
    m = sp24.nn.ReLU2FFN(16, 64, bias=bias)
    assert m.sparse is False and m.track_stats is False and m.last_stats is None
    assert isinstance(m.w1, nn.Linear) and isinstance(m.w2, nn.Linear)
    x = _x(2, 5, 16)
    assert torch.equal(m(x), m.w2(torch.relu(m.w1(x)) ** 2))


def test_relu2ffn_sparse_uses_the_2to4_path():
    torch.manual_seed(0)
    m = sp24.nn.ReLU2FFN(16, 64, bias=True, sparse=True, dense_fraction=0.1)
    x = _x(3, 8, 16, seed=1)
    with ffn.fallback(False):
        got = m(x)
        want = sp24.relu2_ffn(x, m.w1.weight, m.w2.weight, m.w1.bias, m.w2.bias, dense_fraction=0.1)
    assert torch.equal(got, want)
    assert not torch.allclose(got, m.w2(torch.relu(m.w1(x)) ** 2), atol=1e-4)


def test_set_sparse_counts_and_toggles():
    model = nn.Sequential(sp24.nn.ReLU2FFN(8, 16), nn.ReLU(), nn.Sequential(sp24.nn.ReLU2FFN(8, 16)))
    assert sp24.nn.set_sparse(model, True) == 2
    assert all(m.sparse is True for m in model.modules() if isinstance(m, sp24.nn.ReLU2FFN))
    assert sp24.nn.set_sparse(model, False) == 2
    assert all(m.sparse is False for m in model.modules() if isinstance(m, sp24.nn.ReLU2FFN))
    with pytest.warns(UserWarning, match=r"sp24.nn.set_sparse: Linear has no sp24.nn.ReLU2FFN nor sp24 experts module, so nothing "
                                         r"is switched to 2:4 and the model trains dense; call sp24.nn.convert"):
        assert sp24.nn.set_sparse(nn.Linear(2, 2), True) == 0


def test_dense_warmup_warns_on_a_model_without_sp24_ffns():
    """A user who forgot convert() must not train dense while believing it is 2:4."""
    with pytest.warns(UserWarning, match=r"sp24.nn.DenseWarmup: Sequential has no sp24.nn.ReLU2FFN nor sp24 experts module"):
        sp24.nn.DenseWarmup(nn.Sequential(nn.Linear(4, 4)), steps=2)


def test_dense_warmup_load_state_dict_names_missing_keys():
    warm = sp24.nn.DenseWarmup(nn.Sequential(sp24.nn.ReLU2FFN(8, 16)), steps=2)
    with pytest.raises(ValueError, match=r"sp24.nn.DenseWarmup.load_state_dict: state must be a dict with the keys "
                                         r"'steps', 'count' and 'done' .*missing \['steps', 'count', 'done'\]"):
        warm.load_state_dict({})


@pytest.mark.parametrize("kw,err,msg", [
    ({"sparse": "False"}, TypeError, "sp24.relu2_ffn: sparse must be a bool (True or False), got 'False'"),
    ({"permute_tokens": "no"}, TypeError, "sp24.relu2_ffn: permute_tokens must be a bool (True or False), got 'no'"),
    ({"dense_fraction": True}, ValueError, "sp24.relu2_ffn: dense_fraction must be a number in [0, 1], got True"),
    ({"dense_fraction": "0.1"}, ValueError, "sp24.relu2_ffn: dense_fraction must be a number in [0, 1], got '0.1'"),
])
def test_relu2_ffn_refuses_non_bool_flags(kw, err, msg):
    """sparse="False" is truthy: without the check it would run 2:4 silently."""
    x, w1, w2 = torch.randn(8, 8), torch.randn(16, 8), torch.randn(8, 16)
    with pytest.raises(err, match=re.escape(msg)):
        sp24.relu2_ffn(x, w1, w2, **kw)


def test_relu2_ffn_refuses_an_integer_x():
    with pytest.raises(TypeError, match=re.escape("sp24.relu2_ffn: x must be a floating-point tensor, got torch.int64")):
        sp24.relu2_ffn(torch.ones(8, 8, dtype=torch.int64), torch.randn(16, 8), torch.randn(8, 16))


@pytest.mark.parametrize("sparse", [False, True])
def test_track_stats(sparse):
    torch.manual_seed(0)
    m = sp24.nn.ReLU2FFN(16, 32, sparse=sparse)
    m.track_stats = True
    x = _x(4, 12, 16, seed=2).requires_grad_()
    m(x).sum().backward()
    s = m.last_stats
    assert set(s) == {"zero_fraction", "drop_rowwise", "drop_tokenwise"}
    want = sp24.stats((torch.relu(m.w1(x)) ** 2).detach().reshape(-1, 32))
    for k in s:
        assert isinstance(s[k], float) and s[k] == pytest.approx(want[k])
    assert 0.3 < s["zero_fraction"] < 0.7  # random weights: about half of Y1 is negative
    assert s["drop_rowwise"] > 0


def test_dense_warmup():
    model = nn.Sequential(sp24.nn.ReLU2FFN(8, 16), sp24.nn.ReLU2FFN(8, 16))
    warm = sp24.nn.DenseWarmup(model, steps=3)
    assert not model[0].sparse and not model[1].sparse  # warm-up starts dense
    assert [warm.step() for _ in range(4)] == [False, False, True, True]
    assert model[0].sparse and model[1].sparse
    sp24.nn.set_sparse(model, False)
    resumed = sp24.nn.DenseWarmup(model, steps=3)
    resumed.load_state_dict({"steps": 3, "count": 1, "done": False})
    assert not model[0].sparse and resumed.step() is False and resumed.step() is True and model[1].sparse
    assert sp24.nn.DenseWarmup(nn.Sequential(sp24.nn.ReLU2FFN(8, 16)), steps=0).done
    with pytest.raises(ValueError, match="steps must be >= 0, got -1"):
        sp24.nn.DenseWarmup(model, steps=-1)


def test_dense_warmup_does_not_reset_a_sparse_model():
    # a model loaded sparse from a checkpoint resumes sparse
    model = nn.Sequential(sp24.nn.ReLU2FFN(8, 16), sp24.nn.ReLU2FFN(8, 16))
    sp24.nn.set_sparse(model, True)
    warm = sp24.nn.DenseWarmup(model, steps=1000)
    assert model[0].sparse and model[1].sparse and warm.done and warm.count == 1000 and warm.step()


class SquaredReLU(nn.Module):  # another library's spelling
    def forward(self, x):
        return torch.relu(x) ** 2


class FcMLP(nn.Module):
    def __init__(self, d, f, act):
        super().__init__()
        self.fc1, self.fc2, self.act = nn.Linear(d, f), nn.Linear(f, d), act

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, mlp):
        super().__init__()
        self.norm = nn.LayerNorm(16)
        self.mlp = mlp

    def forward(self, x):
        return x + self.mlp(self.norm(x))


def test_convert_detects_relu2_mlps_only():
    torch.manual_seed(0)
    model = nn.Sequential(
        Block(nn.Sequential(nn.Linear(16, 64, bias=False), sp24.nn.ReLU2(), nn.Linear(64, 16, bias=False))),
        Block(FcMLP(16, 32, SquaredReLU())),
        Block(FcMLP(16, 32, nn.GELU())),                                  # not Squared-ReLU: kept
        Block(nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 16))),  # plain ReLU: kept
    )
    x = _x(2, 6, 16, seed=3)
    before = model(x)
    lin = model[1].mlp.fc1
    out = sp24.nn.convert(model)
    assert out is model
    assert isinstance(model[0].mlp, sp24.nn.ReLU2FFN) and isinstance(model[1].mlp, sp24.nn.ReLU2FFN)
    assert isinstance(model[2].mlp, FcMLP) and isinstance(model[3].mlp, nn.Sequential)
    assert model[1].mlp.w1 is lin  # the same Linear (and Parameters): optimizer state stays valid
    assert model[0].mlp.w1.bias is None and model[1].mlp.w1.bias is not None
    assert torch.allclose(model(x), before, atol=1e-6)
    assert sp24.nn.set_sparse(model, True) == 2
    with ffn.fallback(False):
        model(x).sum().backward()
    assert model[0].mlp.w1.weight.grad is not None


def test_convert_root_dtype_and_match():
    mlp = FcMLP(8, 16, SquaredReLU()).to(torch.bfloat16)
    new = sp24.nn.convert(mlp, sparse=True, dense_fraction=0.25)
    assert isinstance(new, sp24.nn.ReLU2FFN) and new.sparse and new.dense_fraction == 0.25
    assert new.w1.weight.dtype == torch.bfloat16

    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(8, 16), nn.Linear(16, 8)

        def forward(self, x):
            return self.b(torch.relu(self.a(x)).square())

    model = nn.Sequential(Odd())
    assert isinstance(sp24.nn.convert(model)[0], Odd)  # unknown attribute names: not detected
    sp24.nn.convert(model, match=lambda name, m: (m.a, m.b) if isinstance(m, Odd) else None)
    assert isinstance(model[0], sp24.nn.ReLU2FFN)
    with pytest.raises(ValueError, match="sp24.nn.convert: match"):
        sp24.nn.convert(nn.Sequential(Odd()), match=lambda name, m: (m.a, m.a) if isinstance(m, Odd) else None)
