"""Routed experts of Hugging Face MoE models under sp24.nn.convert: NemotronH's NemotronHExperts
converted in place (class swap: same object, Parameters and keys), dense mode bit-identical under
each experts implementation, the sparse path against sp24.relu2_experts, gradients to the router,
the experts and the inputs, PEFT target_parameters LoRA through the 2:4 path, pickling, training,
torch.compile, and the layouts sp24 refuses (gated experts, other activations). Tiny random configs
built in code; needs the test extra (skipped with a reason without it)."""

from __future__ import annotations

import copy
import io
import warnings

import pytest
import torch

from helpers import train_lm_with_warmup
import sp24
from sp24 import ffn

transformers = pytest.importorskip("transformers", reason="the test extra is not installed: pip install -e .[test]")
peft = pytest.importorskip("peft", reason="the test extra is not installed: pip install -e .[test]")
if not transformers.utils.is_torch_available() or not hasattr(transformers, "NemotronHForCausalLM"):
    pytest.skip(f"transformers {transformers.__version__} has no NemotronH for torch {torch.__version__}",
                allow_module_level=True)

V = 64
EXPERTS = "model.layers.1.mixer.experts"


def moe_model(seed=0, act="relu2", impl=None):
    torch.manual_seed(seed)
    cfg = transformers.NemotronHConfig(
        vocab_size=V, hidden_size=32, layers_block_type=["full_attention", "moe"], num_attention_heads=4,
        num_key_value_heads=2, head_dim=8, intermediate_size=64, n_routed_experts=8, num_experts_per_tok=2,
        moe_intermediate_size=32, moe_shared_expert_intermediate_size=32, max_position_embeddings=64,
        mlp_hidden_act=act)
    model = transformers.NemotronHForCausalLM(cfg).eval()
    with torch.no_grad():  # a random router: the zero-initialised one sends every token to the same experts
        model.model.layers[1].mixer.gate.weight.normal_(0, 1.0)
    if impl is not None:
        model.config._experts_implementation = impl
    return model


def ids(seed=1, shape=(2, 16)):
    return torch.randint(0, V, shape, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(autouse=True)
def _no_fallback():
    with ffn.fallback(False):
        yield


@pytest.mark.parametrize("impl", ["eager", "grouped_mm", "batched_mm"])
def test_dense_mode_is_bit_identical_under_each_experts_implementation(impl):
    model, x = moe_model(impl=impl), ids()
    want = model(x).logits
    keys = sorted(model.state_dict())
    cls = type(model.get_submodule(EXPERTS))
    _, report = sp24.nn.convert(model, return_report=True)
    assert EXPERTS in report.swapped and report.skipped == []
    experts = model.get_submodule(EXPERTS)
    assert isinstance(experts, cls) and isinstance(experts, sp24.nn.experts.SparseMode)
    assert repr(experts).startswith(f"Sp24{cls.__name__}(")
    assert torch.equal(model(x).logits, want)
    assert sorted(k for k in model.state_dict() if not k.endswith(".sp24_mode")) == keys


def test_sparse_path_is_relu2_experts_and_gradients_reach_router_experts_inputs():
    model = moe_model()
    sp24.nn.convert(model, dense_fraction=0.25)
    sp24.nn.set_sparse(model, True)
    experts = model.get_submodule(EXPERTS)
    seen = {}
    experts.register_forward_hook(lambda m, args, out: seen.update(args=args, out=out))
    x = ids(seed=2)
    out = model(x, labels=x)
    h, idx, wts = seen["args"]
    want = sp24.relu2_experts(h, idx, wts, experts.up_proj, experts.down_proj, dense_fraction=0.25)
    assert torch.equal(seen["out"], want)
    assert len(torch.unique(idx)) > 2  # the probe routes to several experts
    out.loss.backward()
    gate = model.get_submodule("model.layers.1.mixer.gate").weight
    for name, p in (("router", gate), ("up_proj", experts.up_proj), ("down_proj", experts.down_proj),
                    ("embeddings", model.model.embeddings.weight)):
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
    used = torch.unique(idx)
    unused = [e for e in range(8) if e not in used.tolist()]
    assert all(torch.equal(experts.up_proj.grad[e], torch.zeros_like(experts.up_proj.grad[e])) for e in unused)
    # and it is not the dense result
    sp24.nn.set_sparse(model, False)
    assert not torch.allclose(model(x).logits, out.logits, atol=1e-5)


def test_sparse_training_reduces_the_loss():
    model = moe_model().train()
    sp24.nn.convert(model)
    losses, warm = train_lm_with_warmup(model, ids(seed=3, shape=(4, 32)))
    assert model.get_submodule(EXPERTS).sparse and warm.done
    assert losses[-1] < losses[2] - 0.1, losses


def test_save_pretrained_from_pretrained_roundtrip(tmp_path):
    model = moe_model()
    sp24.nn.convert(model)
    sp24.nn.set_sparse(model, True)
    x = ids(seed=4)
    want = model(x).logits
    model.save_pretrained(tmp_path)
    loaded = type(model).from_pretrained(tmp_path).eval()
    for k, v in model.state_dict().items():
        if not k.endswith(".sp24_mode"):
            assert torch.equal(loaded.state_dict()[k], v), k
    sp24.nn.convert(loaded)
    from safetensors.torch import load_file
    assert sp24.nn.load_mode(loaded, load_file(str(tmp_path / "model.safetensors"))) == 2  # experts, shared expert
    assert loaded.get_submodule(EXPERTS).sparse
    assert torch.equal(loaded(x).logits, want)


def test_pickle_and_deepcopy_of_a_converted_model():
    model = moe_model()
    sp24.nn.convert(model, sparse=True)
    x = ids(seed=5)
    want = model(x).logits
    buf = io.BytesIO()
    torch.save(model, buf)
    buf.seek(0)
    for clone in (torch.load(buf, weights_only=False), copy.deepcopy(model)):
        assert type(clone.get_submodule(EXPERTS)) is type(model.get_submodule(EXPERTS))
        assert torch.equal(clone(x).logits, want)


def test_peft_target_parameters_lora_reaches_the_sparse_path():
    model = moe_model()
    sp24.nn.convert(model)
    torch.manual_seed(7)
    cfg = peft.LoraConfig(r=4, target_modules=["q_proj"], target_parameters=["experts.up_proj", "experts.down_proj"],
                          init_lora_weights=False)
    pm = peft.get_peft_model(model, cfg)
    sp24.nn.set_sparse(pm, True)
    x = ids(seed=6)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        out = pm(x, labels=x)
    with pm.disable_adapter():
        base = pm(x).logits
    assert (out.logits - base).abs().max() > 1e-3  # the adapter is in the 2:4 path's weights
    out.loss.backward()
    lora = {n: p for n, p in pm.named_parameters() if "lora" in n and "experts" in n}
    assert len(lora) == 4 and all(p.grad is not None and p.grad.abs().sum() > 0 for p in lora.values())


@pytest.mark.parametrize("fullgraph", [False, True])
def test_compile_of_a_converted_moe_block(fullgraph):
    # the 2:4 experts are one opaque op under torch.compile (its sizes come from the routing), so the
    # block compiles whole; forward and every gradient match the eager block's (to rounding: inductor
    # compiles the router and the shared expert its own way; the experts' op alone gives the eager
    # bits, tests/test_experts.py)
    model = moe_model()
    sp24.nn.convert(model, sparse=True)
    block = model.get_submodule("model.layers.1.mixer")
    h = torch.randn(2, 16, 32, generator=torch.Generator().manual_seed(8))

    def run(fn):
        hh = h.clone().requires_grad_()
        out = fn(hh)
        out.square().sum().backward()
        grads = {n: p.grad.clone() for n, p in block.named_parameters() if p.grad is not None}
        block.zero_grad(set_to_none=True)
        return out.detach(), hh.grad, grads

    want = run(block)
    torch._dynamo.reset()
    got = run(torch.compile(block, fullgraph=fullgraph))
    torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got[1], want[1], rtol=1e-5, atol=1e-6)
    assert got[2].keys() == want[2].keys() and any("experts" in n for n in want[2])
    for n in want[2]:
        torch.testing.assert_close(got[2][n], want[2][n], rtol=1e-4, atol=1e-6, msg=n)


@pytest.mark.parametrize("kind", ["gated", "gelu"])
def test_unsupported_expert_layouts_are_reported_and_left_alone(kind):
    if kind == "gated":
        cfg = transformers.MixtralConfig(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=4, num_key_value_heads=2, num_local_experts=4,
                                         max_position_embeddings=64)
        model, name, why = transformers.MixtralForCausalLM(cfg), "model.layers.0.mlp.experts", "are gated"
    else:
        model, name, why = moe_model(act="gelu"), EXPERTS, "GELUActivation, not Squared-ReLU"
    cls = type(model.get_submodule(name))
    _, report = sp24.nn.convert(model, return_report=True)
    assert name not in report.swapped
    assert any(n == name and why in r for n, r in report.skipped), report.skipped
    assert type(model.get_submodule(name)) is cls


def test_experts_false_leaves_them():
    model = moe_model()
    cls = type(model.get_submodule(EXPERTS))
    _, report = sp24.nn.convert(model, experts=False, return_report=True)
    assert (EXPERTS, "MoE experts: experts=False") in report.skipped and type(model.get_submodule(EXPERTS)) is cls


def test_relu2_experts_dense_is_the_real_eager_module():
    # sp24.relu2_experts(sparse=False) against NemotronHExperts.forward itself (eager), bit for bit
    model = moe_model(impl="eager")
    experts = model.get_submodule(EXPERTS)
    g = torch.Generator().manual_seed(9)
    h = torch.randn(24, 32, generator=g)
    idx = torch.stack([torch.randperm(8, generator=g)[:2] for _ in range(24)])
    wts = torch.rand(24, 2, generator=g)
    with torch.no_grad():
        assert torch.equal(experts(h, idx, wts), sp24.relu2_experts(h, idx, wts, experts.up_proj, experts.down_proj,
                                                                    sparse=False))


def test_a_swapped_class_called_directly_is_a_dense_module_with_a_mode():
    model = moe_model()
    sp24.nn.convert(model)
    experts = model.get_submodule(EXPERTS)
    fresh = type(experts)(model.config)
    assert not fresh.sparse and fresh.linear_names == ("up_proj", "down_proj") and "sp24_mode" in fresh.state_dict()
    _, report = sp24.nn.convert(torch.nn.ModuleDict({"e": fresh}), return_report=True)
    assert report.swapped == [] and report.skipped == []  # already converted


def test_a_mamba_conv1d_is_not_reported_as_experts():
    torch.manual_seed(0)
    cfg = transformers.NemotronHConfig(
        vocab_size=V, hidden_size=32, layers_block_type=["mamba", "moe"], num_attention_heads=4,
        num_key_value_heads=2, head_dim=8, intermediate_size=64, n_routed_experts=4, num_experts_per_tok=2,
        moe_intermediate_size=32, moe_shared_expert_intermediate_size=32, max_position_embeddings=64,
        mamba_num_heads=4, mamba_head_dim=16, ssm_state_size=16, n_groups=1)
    model = transformers.NemotronHForCausalLM(cfg)
    _, report = sp24.nn.convert(model, return_report=True)
    assert "model.layers.1.mixer.experts" in report.swapped
    assert not any("conv1d" in n for n, _ in report.skipped), report.skipped
