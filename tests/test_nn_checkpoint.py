"""sp24.nn checkpoints: converted modules keep the original state_dict
keys, load both ways, carry their mode (sparse, dense_fraction), and resume bit-exactly."""

from __future__ import annotations

import copy
import io

import pytest
import torch
from torch import nn

import sp24
from sp24 import ffn


class NeoXMLP(nn.Module):  # GPT-NeoX / Persimmon names
    def __init__(self, d, f):
        super().__init__()
        self.dense_h_to_4h, self.dense_4h_to_h = nn.Linear(d, f), nn.Linear(f, d)

    def forward(self, x):
        return self.dense_4h_to_h(torch.relu(self.dense_h_to_4h(x)).square())


class UpDownMLP(nn.Module):  # Nemotron names
    def __init__(self, d, f):
        super().__init__()
        self.up_proj, self.down_proj = nn.Linear(d, f, bias=False), nn.Linear(f, d, bias=False)
        self.act_fn = sp24.nn.ReLU2()

    def forward(self, x):
        return self.down_proj(self.act_fn(self.up_proj(x)))


class Block(nn.Module):
    def __init__(self, mlp, d=16):
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.mlp = mlp

    def forward(self, x):
        return x + self.mlp(self.norm(x))


def toy(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(16, 16), Block(UpDownMLP(16, 64)), Block(NeoXMLP(16, 32)),
                         Block(nn.Sequential(nn.Linear(16, 32), sp24.nn.ReLU2(), nn.Linear(32, 16))))


def _x(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _roundtrip(sd):
    buf = io.BytesIO()
    torch.save(sd, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def test_convert_keeps_state_dict_keys():
    model = toy()
    keys = list(model.state_dict())
    sp24.nn.convert(model)
    assert [type(model[i].mlp) for i in (1, 2, 3)] == [sp24.nn.ReLU2FFN] * 3
    new = list(model.state_dict())
    mode_keys = [k for k in new if k.endswith(".sp24_mode")]
    assert mode_keys == ["1.mlp.sp24_mode", "2.mlp.sp24_mode", "3.mlp.sp24_mode"]
    assert sorted(k for k in new if k not in mode_keys) == sorted(keys)
    assert "1.mlp.up_proj.weight" in new and "2.mlp.dense_h_to_4h.bias" in new and "3.mlp.2.weight" in new
    # .w1/.w2 alias the Linears whatever their names
    assert model[1].mlp.w1 is model[1].mlp.up_proj and model[2].mlp.w2 is model[2].mlp.dense_4h_to_h
    assert model[3].mlp.w1 is model[3].mlp._modules["0"]


@pytest.mark.parametrize("strict", [True, False])
def test_checkpoints_load_both_ways(strict):
    x = _x(3, 16, seed=1)
    plain = toy(seed=1)
    want = plain(x)
    # unconverted checkpoint -> converted model: weights load, the model keeps its own mode
    conv = sp24.nn.convert(toy(seed=2), sparse=True, dense_fraction=0.25)
    res = conv.load_state_dict(_roundtrip(plain.state_dict()), strict=strict)
    assert not res.missing_keys and not res.unexpected_keys
    assert conv[1].mlp.sparse and conv[1].mlp.dense_fraction == 0.25
    sp24.nn.set_sparse(conv, False)
    assert torch.equal(conv(x), want)
    # converted checkpoint -> unconverted model: a strict load names the sp24 keys ...
    sd = _roundtrip(conv.state_dict())
    back = toy(seed=3)
    if strict:
        with pytest.raises(RuntimeError, match=r"Unexpected key\(s\).*sp24_mode"):
            back.load_state_dict(sd)
        res = back.load_state_dict(sp24.nn.without_mode(sd))  # ... and loads without them
    else:
        res = back.load_state_dict(sd, strict=False)
        assert sorted(res.unexpected_keys) == ["1.mlp.sp24_mode", "2.mlp.sp24_mode", "3.mlp.sp24_mode"]
    assert torch.equal(back(x), want)


def test_mode_is_in_the_state_dict():
    src = sp24.nn.convert(toy(seed=4), sparse=True, dense_fraction=0.125)
    src[2].mlp.permute_tokens = False
    dst = sp24.nn.convert(toy(seed=5))  # dense, 0.05
    dst.load_state_dict(_roundtrip(src.state_dict()))
    for i in (1, 2, 3):
        assert dst[i].mlp.sparse is True and dst[i].mlp.dense_fraction == 0.125
    assert dst[2].mlp.permute_tokens is False and dst[1].mlp.permute_tokens is True
    for k, v in src.state_dict().items():
        assert torch.equal(dst.state_dict()[k], v), k
    # load_mode: only the modes (after from_pretrained + convert, which drop them)
    fresh = sp24.nn.convert(toy(seed=6))
    assert sp24.nn.load_mode(fresh, src.state_dict()) == 3 and fresh[3].mlp.sparse
    # keys that differ by a leading prefix (save_pretrained may rename the root, PEFT adds one)
    renamed = {"base_model.model." + k: v for k, v in src.state_dict().items()}
    fresh = sp24.nn.convert(toy(seed=6))
    assert sp24.nn.load_mode(fresh, renamed) == 3 and fresh[2].mlp.permute_tokens is False
    wrapped = nn.Sequential(fresh)
    sp24.nn.set_sparse(wrapped, False)
    assert sp24.nn.load_mode(wrapped, src.state_dict()) == 3 and fresh[1].mlp.sparse
    with pytest.raises(KeyError, match="sp24.nn.load_mode: no '1.mlp.sp24_mode'"):
        sp24.nn.load_mode(fresh, toy().state_dict())
    bad = src.state_dict()
    bad["1.mlp.sp24_mode"] = torch.tensor([2.0, 0.5, 1.0], dtype=torch.float64)
    with pytest.raises(RuntimeError, match="sp24_mode holds an invalid mode"):
        dst.load_state_dict(bad)


def _batches(n, seed=7):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(4, 8, 16, generator=g), torch.randn(4, 8, 16, generator=g)) for _ in range(n)]


def _train(model, opt, batches, step_hook=None):
    for i, (x, y) in enumerate(batches):
        opt.zero_grad(set_to_none=True)
        with ffn.fallback(False):
            loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        if step_hook is not None:
            step_hook(i)


def _new(seed):
    model = sp24.nn.convert(toy(seed))
    return model, torch.optim.AdamW(model.parameters(), lr=1e-2)


@pytest.mark.parametrize("flow", ["DenseWarmup", "set_sparse"])
def test_resume_is_bit_exact(flow):
    # 3 dense warm-up steps, then 2:4; interrupted after step 5 and resumed in a fresh setup
    batches = _batches(9)
    warmup, cut = 3, 5

    def run(model, opt, part, warm=None, offset=0):
        def hook(i):
            if warm is not None:
                warm.step()
            elif offset + i + 1 == warmup:
                sp24.nn.set_sparse(model, True)
        _train(model, opt, part, hook)

    ref, ref_opt = _new(0)
    ref_warm = sp24.nn.DenseWarmup(ref, steps=warmup) if flow == "DenseWarmup" else None
    run(ref, ref_opt, batches, ref_warm)
    assert ref[1].mlp.sparse

    a, a_opt = _new(0)
    a_warm = sp24.nn.DenseWarmup(a, steps=warmup) if flow == "DenseWarmup" else None
    run(a, a_opt, batches[:cut], a_warm)
    ckpt = _roundtrip({"model": a.state_dict(), "opt": a_opt.state_dict(),
                       **({"warm": a_warm.state_dict()} if a_warm else {})})
    del a, a_opt, a_warm

    b, b_opt = _new(123)  # fresh process-like setup: other random init, dense modules
    assert not b[1].mlp.sparse
    b_warm = sp24.nn.DenseWarmup(b, steps=warmup) if flow == "DenseWarmup" else None
    b.load_state_dict(ckpt["model"])
    b_opt.load_state_dict(ckpt["opt"])
    if b_warm is not None:
        b_warm.load_state_dict(ckpt["warm"])
    assert all(b[i].mlp.sparse for i in (1, 2, 3))  # the mode came back with the weights
    run(b, b_opt, batches[cut:], b_warm, offset=cut)
    for (k, v), (k2, v2) in zip(ref.state_dict().items(), b.state_dict().items()):
        assert k == k2 and torch.equal(v, v2), k


def test_resume_from_a_sparse_checkpoint_with_a_new_dense_warmup():
    # DenseWarmup built after loading a sparse checkpoint leaves it sparse (no reset to dense)
    model, _ = _new(0)
    sp24.nn.set_sparse(model, True)
    fresh, _ = _new(1)
    fresh.load_state_dict(copy.deepcopy(model.state_dict()))
    warm = sp24.nn.DenseWarmup(fresh, steps=1000)
    assert warm.done and all(fresh[i].mlp.sparse for i in (1, 2, 3))


def test_validation_names_the_value():
    m = sp24.nn.ReLU2FFN(8, 16)
    with pytest.raises(TypeError, match=r"sp24.nn.set_sparse: enabled must be a bool \(True or False\), got 'no'"):
        sp24.nn.set_sparse(m, "no")
    with pytest.raises(ValueError, match=r"sp24.nn.ReLU2FFN: dense_fraction must be a number in \[0, 1\], got 2.0"):
        sp24.nn.ReLU2FFN(8, 16, dense_fraction=2.0)
    with pytest.raises(TypeError, match="sp24.nn.DenseWarmup: steps must be an int, got 2.7"):
        sp24.nn.DenseWarmup(m, steps=2.7)
    warm = sp24.nn.DenseWarmup(m, steps=2)
    with pytest.raises(ValueError, match=r"sp24.nn.DenseWarmup: state\['count'\] must be >= 0, got -1"):
        warm.load_state_dict({"steps": 2, "count": -1, "done": False})
    for fn in (lambda: sp24.nn.set_sparse([m], True), lambda: sp24.nn.convert("model"),
               lambda: sp24.nn.DenseWarmup(None), lambda: sp24.nn.load_mode(3, {})):
        with pytest.raises(TypeError, match="must be a torch.nn.Module, got"):
            fn()
    with pytest.raises(ValueError, match="names must be two different attribute names"):
        sp24.nn.ReLU2FFN(8, 16, names=("a", "a"))


def test_load_state_dict_leaves_the_callers_dict_alone():
    m = sp24.nn.convert(toy(seed=8), sparse=True)
    sd = m.state_dict()
    keys = list(sd)
    sp24.nn.convert(toy(seed=9)).load_state_dict(sd)
    assert list(sd) == keys and "1.mlp.sp24_mode" in sd
