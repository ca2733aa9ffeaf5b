"""sp24.nn with real Hugging Face `transformers` and `peft` models: tiny random configs
built in code, nothing downloaded. Needs the test extra (`pip install -e .[test]`; scripts/dev.sh
installs it); skipped with a reason without it."""

from __future__ import annotations

import copy
import os
import warnings

import pytest
import torch

from helpers import train_lm_with_warmup
import sp24
from sp24 import ffn

transformers = pytest.importorskip("transformers", reason="the test extra is not installed: pip install -e .[test]")
peft = pytest.importorskip("peft", reason="the test extra is not installed: pip install -e .[test]")
safetensors_torch = pytest.importorskip("safetensors.torch", reason="safetensors comes with transformers")
if not transformers.utils.is_torch_available():
    pytest.skip(f"transformers {transformers.__version__} does not use this torch {torch.__version__} "
                f"(transformers 5 needs torch >= 2.6)", allow_module_level=True)

V = 64  # vocabulary


def nemotron():
    cfg = transformers.NemotronConfig(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return transformers.NemotronForCausalLM(cfg), ["model.layers.0.mlp", "model.layers.1.mlp"], []


def persimmon():  # GPT-NeoX names: dense_h_to_4h / dense_4h_to_h, with biases
    cfg = transformers.PersimmonConfig(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                       num_attention_heads=4, max_position_embeddings=64)
    return transformers.PersimmonForCausalLM(cfg), ["model.layers.0.mlp", "model.layers.1.mlp"], []


def nemotron_h():  # hybrid: a dense relu2 MLP layer and a MoE layer (shared expert + 3-D routed experts, converted in place)
    cfg = transformers.NemotronHConfig(
        vocab_size=V, hidden_size=32, layers_block_type=["full_attention", "mlp", "moe"], num_attention_heads=4,
        num_key_value_heads=2, head_dim=8, intermediate_size=64, n_routed_experts=4, num_experts_per_tok=2,
        moe_intermediate_size=32, moe_shared_expert_intermediate_size=32, max_position_embeddings=64)
    return (transformers.NemotronHForCausalLM(cfg),
            ["model.layers.1.mixer", "model.layers.2.mixer.experts", "model.layers.2.mixer.shared_experts"], [])


MODELS = {"nemotron": nemotron, "persimmon": persimmon}
if hasattr(transformers, "NemotronHForCausalLM"):
    MODELS["nemotron_h"] = nemotron_h


def build(name, seed=0):
    torch.manual_seed(seed)
    model, swapped, skipped = MODELS[name]()
    return model.eval(), swapped, skipped


def ids(seed=1, shape=(2, 16)):
    return torch.randint(0, V, shape, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(autouse=True)
def _no_fallback():
    with ffn.fallback(False):  # the 2:4 path whenever a model is sparse
        yield


@pytest.mark.parametrize("name", list(MODELS))
def test_convert_keeps_keys_and_dense_logits(name):
    model, swapped, skipped = build(name)
    x = ids()
    want = model(x).logits
    keys = list(model.state_dict())
    _, report = sp24.nn.convert(model, return_report=True)
    assert report.swapped == swapped
    assert [n for n, _ in report.skipped] == skipped
    assert torch.equal(model(x).logits, want)  # dense mode: bit-identical
    new = [k for k in model.state_dict() if not k.endswith(".sp24_mode")]
    assert sorted(new) == sorted(keys)


@pytest.mark.parametrize("name", list(MODELS))
def test_save_pretrained_from_pretrained_roundtrip(name, tmp_path):
    model, _, _ = build(name)
    sp24.nn.convert(model, dense_fraction=0.25)
    sp24.nn.set_sparse(model, True)
    x = ids()
    want = model(x).logits
    model.save_pretrained(tmp_path)
    # an unconverted load (transformers lists the sp24_mode keys as unexpected): the original weights
    loaded = type(model).from_pretrained(tmp_path).eval()
    sd = loaded.state_dict()
    for k, v in model.state_dict().items():
        if not k.endswith(".sp24_mode"):
            assert torch.equal(sd[k], v), k
    # convert it, restore the modes from the files: the same sparse model, bit for bit
    sp24.nn.convert(loaded)
    assert not any(m.sparse for m in loaded.modules() if isinstance(m, sp24.nn.ReLU2FFN))
    saved = safetensors_torch.load_file(os.path.join(tmp_path, "model.safetensors"))
    assert sp24.nn.load_mode(loaded, saved) == len([k for k in saved if k.endswith(".sp24_mode")]) > 0
    assert torch.equal(loaded(x).logits, want)
    # and the other way: an unconverted model's checkpoint into a converted model, strictly
    plain, _, _ = build(name, seed=5)
    sp24.nn.convert(loaded)
    loaded.load_state_dict(plain.state_dict())
    sp24.nn.set_sparse(loaded, False)
    assert torch.equal(loaded(x).logits, plain(x).logits)


def test_sparse_training_reduces_the_loss():
    model, _, _ = build("nemotron")
    model.train()
    sp24.nn.convert(model)
    losses, warm = train_lm_with_warmup(model, ids(seed=2, shape=(4, 32)))
    assert model.model.layers[0].mlp.sparse and warm.done
    assert losses[-1] < losses[2] - 0.1, losses  # falls in the 2:4 phase too


def test_generate_dense_equals_original_and_sparse_runs():
    model, _, _ = build("nemotron")
    prompt = ids(seed=3, shape=(1, 8))
    kw = dict(max_new_tokens=6, do_sample=False, pad_token_id=0)
    want = model.generate(prompt, **kw)
    sp24.nn.convert(model)
    assert torch.equal(model.generate(prompt, **kw), want)
    sp24.nn.set_sparse(model, True)
    out = model.generate(prompt, **kw)
    assert out.shape == want.shape and torch.equal(out[:, :8], prompt)


def _lora(model, dropout=0.0):
    cfg = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["up_proj", "down_proj"], lora_dropout=dropout,
                          init_lora_weights=False)  # random A and B: the adapter changes the output
    return peft.get_peft_model(model, cfg)


def test_lora_on_a_converted_model():
    x = ids(seed=4)
    model, _, _ = build("nemotron")
    sp24.nn.convert(model)
    torch.manual_seed(7)
    pm = _lora(model)
    assert type(model.model.layers[0].mlp.up_proj).__name__ == "Linear" and hasattr(model.model.layers[0].mlp.up_proj, "lora_A")
    # dense mode: exactly the unconverted model with the same adapter
    ref, _, _ = build("nemotron")
    torch.manual_seed(7)
    pref = _lora(ref)
    assert torch.equal(pm(x).logits, pref(x).logits)
    # sparse mode: the adapter is effective, matches the merged model, and gets gradients
    sp24.nn.set_sparse(model, True)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # not the dense fallback
        out = pm(x, labels=x)
        out.loss.backward()
    with pm.disable_adapter():
        base = pm(x).logits
    assert (out.logits - base).abs().max() > 1e-2
    merged = copy.deepcopy(pm).merge_and_unload()
    assert isinstance(merged.model.layers[0].mlp.up_proj, torch.nn.Linear)
    torch.testing.assert_close(out.logits, merged(x).logits, rtol=1e-4, atol=1e-4)
    grads = {n: p.grad for n, p in pm.named_parameters() if p.requires_grad}
    assert len(grads) == 8 and all(g is not None and g.abs().sum() > 0 for g in grads.values())
    assert all(p.grad is None for n, p in pm.named_parameters() if not p.requires_grad)


def test_convert_after_peft():
    # PeftModel first (e.g. PeftModel.from_pretrained), then convert: the LoRA Linears are kept
    x = ids(seed=8)
    model, swapped, _ = build("nemotron")
    torch.manual_seed(7)
    pm = _lora(model)
    want = pm(x).logits
    _, report = sp24.nn.convert(pm, return_report=True)
    assert report.swapped == ["base_model.model." + n for n in swapped] and report.skipped == []
    mlp = model.model.layers[0].mlp
    assert isinstance(mlp, sp24.nn.ReLU2FFN) and hasattr(mlp.up_proj, "lora_A")
    assert torch.equal(pm(x).logits, want)  # dense: the same PEFT model
    sp24.nn.set_sparse(pm, True)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        out = pm(x)
    torch.testing.assert_close(out.logits, copy.deepcopy(pm).merge_and_unload()(x).logits, rtol=1e-4, atol=1e-4)


def test_lora_gradients_through_the_sparse_path():
    # module level: the LoRA gradients equal those of relu2_ffn on W + s B A (the folded weight)
    torch.manual_seed(0)
    m = sp24.nn.ReLU2FFN(16, 64, names=("up_proj", "down_proj"), sparse=True)
    holder = torch.nn.Sequential(m)
    pm = _lora(holder)
    x = torch.randn(3, 8, 16, generator=torch.Generator().manual_seed(1))
    pm(x).square().sum().backward()
    up, down = m.up_proj, m.down_proj
    A1, B1, A2, B2 = (p.detach().clone().requires_grad_() for p in (up.lora_A["default"].weight, up.lora_B["default"].weight,
                                                                      down.lora_A["default"].weight, down.lora_B["default"].weight))
    s = up.scaling["default"]
    w1 = up.base_layer.weight + B1 @ A1 * s
    w2 = down.base_layer.weight + B2 @ A2 * s
    sp24.relu2_ffn(x, w1, w2).square().sum().backward()
    for got, want in ((up.lora_A["default"].weight.grad, A1.grad), (up.lora_B["default"].weight.grad, B1.grad),
                      (down.lora_A["default"].weight.grad, A2.grad), (down.lora_B["default"].weight.grad, B2.grad)):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        assert got.abs().sum() > 0


def test_lora_dropout_runs_dense_with_a_warning():
    model, _, _ = build("nemotron")
    sp24.nn.convert(model, sparse=True)
    pm = _lora(model, dropout=0.1)
    pm.train()
    x = ids(seed=5)
    with pytest.warns(UserWarning, match=r"up_proj: LoRA dropout .* cannot be folded .*runs dense"):
        torch.manual_seed(0)
        got = pm(x).logits
    sp24.nn.set_sparse(model, False)
    torch.manual_seed(0)
    assert torch.equal(got, pm(x).logits)  # exactly the dense model, dropout included


@pytest.mark.parametrize("name", list(MODELS))
def test_build_on_meta_convert_to_empty_load(name):
    # accelerate's init_empty_weights / torchtitan: build on meta, convert, to_empty, then load
    real, swapped, skipped = build(name)
    sp24.nn.convert(real, sparse=True)
    with torch.device("meta"):
        model, _, _ = build(name)
    _, report = sp24.nn.convert(model, return_report=True)
    assert report.swapped == swapped and [n for n, _ in report.skipped] == skipped
    assert all(p.is_meta for p in model.parameters())
    model.to_empty(device="cpu")
    model.load_state_dict(real.state_dict())
    with torch.no_grad():  # non-persistent buffers (rotary inv_freq) are not in a state_dict: re-initialise
        real_buffers = dict(real.named_buffers())
        for n, b in model.named_buffers():
            b.copy_(real_buffers[n])
    assert all(m.sparse for m in model.modules() if isinstance(m, sp24.nn.ReLU2FFN))
    x = ids(seed=6)
    assert torch.equal(model(x).logits, real(x).logits)
