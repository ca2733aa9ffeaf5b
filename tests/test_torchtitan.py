"""sp24 in torchtitan 0.3 (sp24.integrations.torchtitan): the Squared-ReLU flavour, the converter, the
dense warm-up and its resume through torchtitan's checkpointing pieces, and torchtitan's own tensor
parallelism on 2 gloo ranks (all three SPMD backends, with and without sequence parallelism) and FSDP2.

torchtitan's trainer targets CUDA and FlexAttention has no backward on the CPU, so whole-model runs
here are forward passes (no_grad); the FFNs' gradients are checked on the FFN modules themselves,
parallelised by torchtitan's ``Module.parallelize``.
"""

from __future__ import annotations


import pytest
import torch

tt = pytest.importorskip("torchtitan", reason="torchtitan (test extra) not installed")
# torchtitan 0.3.0 imports torch.distributed.fsdp.DataParallelMeshDims, which torch 2.11 (the CUDA build
# lane) lacks: there the integration cannot import, and these tests skip with that reason (tested with 2.13)
T = pytest.importorskip("sp24.integrations.torchtitan", exc_type=ImportError,
                        reason="torchtitan 0.3.0 does not import with this torch (it needs DataParallelMeshDims: in torch 2.13, not 2.11)")

TOL = 1e-5
B, S = 2, 32


def _build(spec, seed=0):
    torch.manual_seed(seed)
    model = spec.model.build()
    with torch.no_grad():
        model.init_weights(buffer_device=None)
    return model.eval()


def _logits(model, seed=1):
    g = torch.Generator().manual_seed(seed)
    tok = torch.randint(0, 2048, (B, S), generator=g)
    pos = torch.arange(S).repeat(B, 1)
    with torch.no_grad():
        out = model(tok, attention_masks=model.get_attention_masks(positions=pos), positions=pos)
    return out.full_tensor() if hasattr(out, "full_tensor") else out


def _ffns(model):
    return [m for m in model.modules() if isinstance(m, T.ReLU2FeedForward)]


def test_the_converter_swaps_every_relu2_ffn_and_keeps_keys_and_shapes():
    dense = T.model_registry("debugmodel")
    conv = T.model_registry("debugmodel", converters=[T.Sp24Converter.Config(warmup_steps=5, dense_fraction=0.1)])
    cfgs = [layer.feed_forward for layer in conv.model.layers]
    assert all(type(c) is T.Sp24FeedForward.Config and c.warmup_steps == 5 and c.dense_fraction == 0.1 for c in cfgs)
    assert all(type(layer.feed_forward) is T.ReLU2FeedForward.Config for layer in dense.model.layers)
    a, b = _build(dense), _build(conv)
    sa, sb = a.state_dict(), b.state_dict()
    assert set(sb) == set(sa) and len(cfgs) == 6  # no sp24_mode key: the mode is config + optimizer step
    assert all(sa[k].shape == sb[k].shape for k in sa)
    assert all(type(m) is T.Sp24FeedForward for m in _ffns(b)) and len(_ffns(b)) == 6


def test_dense_mode_is_bit_identical_and_sparse_mode_is_sp24s_ffn():
    import sp24
    dense = _build(T.model_registry("debugmodel"))
    conv = _build(T.model_registry("debugmodel", converters=[T.Sp24Converter.Config()]))
    conv.load_state_dict(dense.state_dict())  # an unconverted checkpoint loads; the mode stays (dense)
    assert torch.equal(_logits(conv), _logits(dense))
    assert sp24.nn.set_sparse(conv, True) == 6
    sparse = _logits(conv)
    assert float((sparse - _logits(dense)).abs().max()) > 1e-3  # the 2:4 path really ran
    ffn = _ffns(conv)[0]
    x = torch.randn(B, S, 256)
    with torch.no_grad():
        want = sp24.relu2_ffn(x, ffn.w1.weight, ffn.w2.weight, dense_fraction=0.05)
        assert torch.equal(ffn(x), want)


def _ffn(spec):
    ffn = spec.model.layers[0].feed_forward.build()
    with torch.no_grad():
        ffn.init_states()
    return ffn


def _train(ffn, opt, n, x):
    modes = []
    for _ in range(n):
        ffn(x).square().mean().backward()
        opt.step()
        opt.zero_grad()
        modes.append(ffn.sparse)
    return modes


def test_the_warmup_hook_switches_at_the_optimizers_step_and_resumes():
    spec = T.model_registry("debugmodel", converters=[T.Sp24Converter.Config(warmup_steps=3)])
    ffn = _ffn(spec)
    opt = torch.optim.AdamW(ffn.parameters(), lr=1e-3)
    T.register_warmup(opt, [ffn])
    x = torch.randn(4, 8, 256)
    assert _train(ffn, opt, 4, x) == [False, False, True, True]
    assert ffn.w1.weight.grad is None and ffn.sparse  # trained sparse at step 4
    # resume: the mode follows the loaded optimizer state at once (before any step of the new run)
    for step, want in ((1, [False, True]), (2, [True, True]), (3, [True, True])):
        ffn2 = _ffn(spec)
        ffn2.load_state_dict(ffn.state_dict())
        opt2 = torch.optim.AdamW(ffn2.parameters(), lr=1e-3)
        T.register_warmup(opt2, [ffn2])
        state = opt.state_dict()
        for s in state["state"].values():
            s["step"] = torch.tensor(float(step))
        assert not ffn2.sparse
        opt2.load_state_dict(state)
        assert ffn2.sparse == (step >= 3), step
        assert _train(ffn2, opt2, 2, x) == want, step


def test_the_warmup_refuses_an_optimizer_without_a_step_count():
    spec = T.model_registry("debugmodel", converters=[T.Sp24Converter.Config(warmup_steps=2)])
    ffn = _ffn(spec)
    opt = torch.optim.SGD(ffn.parameters(), lr=1e-3, momentum=0.9)
    T.register_warmup(opt, [ffn])
    with pytest.raises(RuntimeError, match=r"counts the optimizer's steps from its state\['step'\], and SGD keeps none"):
        _train(ffn, opt, 1, torch.randn(2, 8, 256))


def test_torchtitan_checkpoints_resume_and_dense_ones_load_into_the_converted_model(tmp_path):
    # torchtitan's own pieces: its OptimizersContainer (the warm-up hook on it), ModelWrapper and DCP
    import torch.distributed.checkpoint as dcp
    from torchtitan.components.checkpointer.base import ModelWrapper
    from torchtitan.components.optimizer.optimizer import default_adamw
    spec = T.model_registry("debugmodel", converters=[T.Sp24Converter.Config(warmup_steps=3)])
    x = torch.randn(2, 8, 256)

    def setup(seed):
        torch.manual_seed(seed)
        m = _ffn(spec)
        cfg = default_adamw(lr=1e-3)
        cfg.implementation = "for-loop"
        o = cfg.build(model_parts=[m])
        T.register_warmup(o, [m])
        return m, o, ModelWrapper([m])

    m, o, mw = setup(0)
    assert _train(m, o, 3, x) == [False, False, True]
    dcp.save({**mw.state_dict(), "optimizer": o}, checkpoint_id=str(tmp_path / "step3"))
    m2, o2, mw2 = setup(1)
    st = {**mw2.state_dict(), "optimizer": o2}
    dcp.load(st, checkpoint_id=str(tmp_path / "step3"))
    mw2.load_state_dict(st)
    assert m2.sparse and torch.equal(m2.w1.weight, m.w1.weight)  # resumed in 2:4 before its first step
    assert _train(m2, o2, 1, x) == [True]
    # a checkpoint of the dense flavour (no sp24 key) loads into the converted model, model only
    dense = T.model_registry("debugmodel").model.layers[0].feed_forward.build()
    with torch.no_grad():
        dense.init_states()
    dcp.save(ModelWrapper([dense]).state_dict(), checkpoint_id=str(tmp_path / "dense"))
    m3, _, mw3 = setup(2)
    sd = mw3.state_dict()
    dcp.load(sd, checkpoint_id=str(tmp_path / "dense"))
    mw3.load_state_dict(sd)
    assert torch.equal(m3.w1.weight, dense.w1.weight) and not m3.sparse


def test_a_switch_drops_torchtitans_cuda_graphs(monkeypatch):
    # torchtitan's CUDA-graph wrappers replay the step they captured: at a switch they are torn down
    from torchtitan.distributed import cudagraph
    torn = []

    class Wrapper:
        def teardown(self):
            torn.append(True)

    monkeypatch.setattr(cudagraph._manager, "_wrappers", [Wrapper()])
    spec = T.model_registry("debugmodel", converters=[T.Sp24Converter.Config(warmup_steps=2)])
    ffn = _ffn(spec)
    opt = torch.optim.AdamW(ffn.parameters(), lr=1e-3)
    T.register_warmup(opt, [ffn])
    assert _train(ffn, opt, 1, torch.randn(2, 8, 256)) == [False] and not torn
    assert _train(ffn, opt, 2, torch.randn(2, 8, 256)) == [True, True] and torn == [True]
    assert T.sp24_relu2_debugmodel().training.disable_cuda_graphs


def test_bad_input_is_refused_by_name():
    from torchtitan.models.llama3 import model_registry as llama3
    with pytest.raises(ValueError, match="Sp24Converter: the model config has no ReLU2FeedForward"):
        T.Sp24Converter.Config().build().convert(llama3("debugmodel").model)  # SwiGLU: nothing to convert
    with pytest.raises(ValueError, match="warmup_steps must be an int >= 0, got -1"):
        T.Sp24Converter.Config(warmup_steps=-1).build()
    with pytest.raises(ValueError, match="dense_fraction"):
        T.Sp24Converter.Config(dense_fraction=2.0).build()
    L = T.Linear.Config
    with pytest.raises(ValueError, match="w2 must have no bias"):
        T.ReLU2FeedForward.Config(w1=L(in_features=8, out_features=16), w2=L(in_features=16, out_features=8,
                                                                               bias=True)).build()
    with pytest.raises(ValueError, match="must chain"):
        T.ReLU2FeedForward.Config(w1=L(in_features=8, out_features=16), w2=L(in_features=32, out_features=8)).build()
    with pytest.raises(ValueError, match="sparse=True starts in 2:4, so warmup_steps=5"):
        T.Sp24Converter.Config(sparse=True, warmup_steps=5).build()
    ffn = T.model_registry("debugmodel").model.layers[0].feed_forward
    with pytest.raises(ValueError, match="warmup_steps must be an int >= 0, got 1.5"):
        T.Sp24FeedForward.Config(w1=ffn.w1, w2=ffn.w2, warmup_steps=1.5).build()
    # a Linear-level converter (LoRA) would be bypassed by the FFN, which reads its weights directly
    from torchtitan.components.lora import LoRAConverter
    spec = T.model_registry("debugmodel", converters=[T.Sp24Converter.Config(), LoRAConverter.Config(rank=4)])
    with pytest.raises(ValueError, match="w1 must be a plain torchtitan Linear.Config, got LoRALinear"):
        spec.model.layers[0].feed_forward.build()


def test_varlen_attention_with_context_parallel_is_refused_as_llama3_does():
    spec = T.model_registry("debugmodel", attn_backend="varlen")
    cfg = T._trainer_config(spec)
    cfg.parallelism.context_parallel_degree = 2
    with pytest.raises(NotImplementedError, match="Varlen attention is not supported with CP"):
        spec.model.update_from_config(config=cfg)


def test_the_config_registry_is_what_torchtitan_loads_with_module():
    from torchtitan.config.manager import ConfigManager
    cfg = ConfigManager().parse_args(["--module", "sp24.integrations.torchtitan", "--config", "sp24_relu2_debugmodel",
                                      "--training.steps", "3"])
    assert cfg.training.steps == 3
    ff = cfg.model_spec.model.layers[0].feed_forward
    assert type(ff) is T.Sp24FeedForward.Config and ff.warmup_steps == 2
    assert cfg.model_spec.post_optimizer_build_fn is T.register_warmup


# ---- torchtitan's tensor parallelism on 2 gloo ranks --------------------------------------------------

def _load_full(model, full, rank, tp):
    """Copy a single-process model's parameters into a TP model: DTensors distributed, local shards sliced."""
    from torch.distributed.tensor import DTensor, distribute_tensor
    with torch.no_grad():
        for k, p in model.named_parameters():  # the parameters (the state_dict splits a fused wqkv)
            src = full[k]
            if isinstance(p, DTensor):
                p.copy_(distribute_tensor(src, p.device_mesh, p.placements))
            elif p.shape != src.shape:
                dim = next(i for i, (a, b) in enumerate(zip(p.shape, src.shape)) if a != b)
                p.copy_(src.chunk(tp, dim=dim)[rank])
            else:
                p.copy_(src)


def _tp_case(backend, rank, world, conv_cfg, full, fsdp=False):
    from torchtitan.distributed import utils as du
    spec = T.model_registry("debugmodel", converters=[conv_cfg] if conv_cfg else None)
    cfg = T._trainer_config(spec)
    cfg.parallelism.tensor_parallel_degree = 1 if fsdp else world
    cfg.parallelism.data_parallel_shard_degree = world if fsdp else 1
    cfg.parallelism.spmd_backend = backend
    cfg.parallelism.enable_sequence_parallel = False
    cfg.training.mixed_precision_param = "float32"  # torchtitan's FSDP2 default computes in bf16
    pd = _mesh(backend, world, dp_shard=world if fsdp else 1)
    ctx = du.get_spmd_context(parallel_dims=pd)
    with ctx():
        spec.model.update_from_config(config=cfg)
        with torch.device("meta"):
            model = spec.model.build()
        if fsdp:  # the ModelSpec's own parallelize_fn: torchtitan's Llama-3 one (FSDP2 on each block)
            model = spec.parallelize_fn(model, parallel_dims=pd, training=cfg.training, parallelism=cfg.parallelism,
                                        compile_config=cfg.compile, ac_config=None, dump_folder=".")
        else:
            model.parallelize(pd)
        model.to_empty(device="cpu")
        with torch.no_grad():
            model.init_weights(buffer_device=None)  # the buffers (RoPE); the weights come next
        _load_full(model, full, rank, world)
    return model.eval(), ctx


def _ffn_case(backend, rank, world, sparse, enable_sp=False):
    """One converted FFN parallelised by torchtitan (w1 colwise, w2 rowwise, the FFN a local region):
    output, dx and the weight gradients, gathered to full tensors. enable_sp: sequence parallelism (x
    and the output sharded along the sequence); full_dtensor: x given as a DTensor, as its trainer does."""
    import spmd_types as spmd
    from torch.distributed.tensor import DTensor, Replicate, Shard
    from torchtitan.distributed import utils as du
    from torchtitan.models.common.decoder_sharding import dense_activation_placement, dense_sequence_parallel_placement
    pd = _mesh(backend, world)
    torch.manual_seed(0)
    cfg = T.model_registry("debugmodel", converters=[T.Sp24Converter.Config(sparse=sparse, dense_fraction=0.0)])
    ffn_cfg = cfg.model.layers[0].feed_forward
    ffn = ffn_cfg.build()
    with torch.no_grad():
        ffn.init_states()
    full = {k: v.detach().clone() for k, v in ffn.named_parameters()}
    g = torch.Generator().manual_seed(3)
    x, dout = torch.randn(B, S, 256, generator=g), torch.randn(B, S, 256, generator=g)
    xl, dl = (t.chunk(world, dim=1)[rank] if enable_sp else t for t in (x, dout))
    with du.get_spmd_context(parallel_dims=pd)():
        layout = dense_sequence_parallel_placement() if enable_sp else dense_activation_placement(tp=spmd.I)
        T._relu2_ffn_sharding(ffn_cfg, attn_x_layout=layout, enable_sp=enable_sp)
        tp = ffn_cfg.build()
        tp.parallelize(pd)
        _load_full(tp, full, rank, world)
        xr = xl.clone().requires_grad_()
        if backend == "full_dtensor":
            mesh = pd.resolve_shared_mesh([dense_activation_placement(tp=spmd.R)])
            out = tp(DTensor.from_local(xr, mesh, [Replicate()] * (mesh.ndim - 1) + [Shard(1) if enable_sp else Replicate()]))
        else:
            out = tp(xr)
        out = out.to_local() if isinstance(out, DTensor) else out
        (out * dl).sum().backward()

    def gather(t, dim):
        parts = [torch.empty_like(t) for _ in range(world)]
        torch.distributed.all_gather(parts, t.contiguous())
        return torch.cat(parts, dim)

    def whole(t, dim):
        return t.full_tensor() if isinstance(t, DTensor) else gather(t, dim)

    o, dx = (gather(out, 1), gather(xr.grad, 1)) if enable_sp else (out, xr.grad)
    got = (o, dx, whole(tp.w1.weight.grad, 0), whole(tp.w2.weight.grad, 1))
    W1, W2 = (full[k].clone().requires_grad_() for k in ("w1.weight", "w2.weight"))
    xs = x.clone().requires_grad_()
    import sp24
    ref = sp24.relu2_ffn(xs, W1, W2, sparse=sparse, dense_fraction=0.0)
    (ref * dout).sum().backward()
    return got, (ref.detach(), xs.grad, W1.grad, W2.grad)


def _mesh(backend, world, dp_shard=1):
    import torchtitan.distributed.parallel_dims as tpd
    from torchtitan.distributed import ParallelDims
    from torchtitan.distributed import utils as du
    tpd.device_type = "cpu"  # torchtitan's meshes default to CUDA when no accelerator is found
    pd = ParallelDims(dp_replicate=1, dp_shard=dp_shard, cp=1, tp=world // dp_shard, pp=1, ep=1, world_size=world,
                      spmd_backend=backend)
    pd.build_mesh()
    du.set_spmd_backend(backend)
    return pd


def _scenarios(rank, world, res):
    def err(a, b):
        return float((a - b).abs().max() / b.abs().max())

    import sp24
    # the FFN alone under sequence parallelism (torchtitan's default) in all three SPMD backends, and
    # under plain TP in the full_dtensor one (the other two backends' plain TP is below)
    for backend in ("partial_dtensor", "spmd_types", "full_dtensor"):
        for enable_sp in (True, False) if backend == "full_dtensor" else (True,):
            for sparse in (False, True):
                got, ref = _ffn_case(backend, rank, world, sparse, enable_sp)
                res[f"{backend}_sp{int(enable_sp)}_{'sparse' if sparse else 'dense'}"] = max(
                    err(a, b) for a, b in zip(got, ref))
    for backend in ("partial_dtensor", "spmd_types"):
        dense_out = None
        for sparse in (False, True):
            got, ref = _ffn_case(backend, rank, world, sparse)
            res[f"{backend}_{'sparse' if sparse else 'dense'}"] = max(err(a, b) for a, b in zip(got, ref))
            if sparse:
                res[f"{backend}_sparse_vs_dense"] = err(got[0], dense_out)
            dense_out = got[0]
        # the whole model under torchtitan's TP: the converted model in dense mode gives the unconverted
        # flavour's bits; in 2:4 mode it differs (the 2:4 path ran on every layer's local shards)
        full = dict(_build(T.model_registry("debugmodel")).named_parameters())
        ref, ctx = _tp_case(backend, rank, world, None, full)
        conv, _ = _tp_case(backend, rank, world, T.Sp24Converter.Config(), full)
        with ctx():
            a, b = _logits(ref), _logits(conv)
            res[f"{backend}_model_dense_bits"] = bool(torch.equal(b, a))
            res[f"{backend}_model_dense_err"] = err(b, a)
            sp24.nn.set_sparse(conv, True)
            res[f"{backend}_model_sparse_vs_dense"] = err(_logits(conv), a)
        w = conv.layers["0"].feed_forward.w1.weight
        res[f"{backend}_local_F"] = int((w.to_local() if hasattr(w, "to_local") else w).shape[0])
    # FSDP2 through the ModelSpec's parallelize_fn (partial_dtensor; dp_shard = 2): the single-process logits
    single = _build(T.model_registry("debugmodel", converters=[T.Sp24Converter.Config(sparse=True)]))
    full = dict(single.named_parameters())
    for sparse in (False, True):
        sp24.nn.set_sparse(single, sparse)
        m, ctx = _tp_case("partial_dtensor", rank, world, T.Sp24Converter.Config(sparse=sparse), full, fsdp=True)
        with ctx():
            res[f"fsdp_{'sparse' if sparse else 'dense'}"] = err(_logits(m), _logits(single))


@pytest.fixture(scope="module")
def tp_results(tmp_path_factory):
    from helpers import spawn_gloo
    ranks = spawn_gloo(_scenarios, 2, tmp_path_factory.mktemp("tt_tp2"))
    print("torchtitan tp2:", ranks[0])
    return ranks


@pytest.mark.parametrize("backend", ["partial_dtensor", "spmd_types"])
def test_torchtitan_tp_gives_the_single_process_logits(tp_results, backend):
    for r in tp_results:
        assert r[f"{backend}_dense"] <= TOL and r[f"{backend}_sparse"] <= TOL, r  # out, dx, dW1, dW2
        assert r[f"{backend}_sparse_vs_dense"] > 1e-3, r  # the 2:4 path ran under TP
        assert r[f"{backend}_model_dense_bits"], r
        assert r[f"{backend}_model_sparse_vs_dense"] > 1e-3, r
        assert r[f"{backend}_local_F"] == 512, r  # each rank holds F/tp = 1024/2 features


@pytest.mark.parametrize("mode", ["dense", "sparse"])
def test_torchtitan_fsdp2_gives_the_single_process_logits(tp_results, mode):
    assert all(r[f"fsdp_{mode}"] <= TOL for r in tp_results), [r[f"fsdp_{mode}"] for r in tp_results]


@pytest.mark.parametrize("case", ["partial_dtensor_sp1", "spmd_types_sp1", "full_dtensor_sp1", "full_dtensor_sp0"])
def test_torchtitan_ffn_under_sequence_parallelism_and_full_dtensor(tp_results, case):
    # out, dx, dW1, dW2 against the single-process relu2_ffn, dense and 2:4
    for r in tp_results:
        assert r[f"{case}_dense"] <= TOL and r[f"{case}_sparse"] <= TOL, r
