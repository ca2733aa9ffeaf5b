"""sp24 in torchtitan (0.3.x), without forking it: a Squared-ReLU model flavour and a converter.

torchtitan builds a model from a config tree; converters rewrite that tree before the build, and a
package outside torchtitan plugs in through ``--module`` (its own config registry). This module is
such a registry::

    torchrun --nproc_per_node 8 -m torchtitan.train \\
        --module sp24.integrations.torchtitan --config sp24_relu2_debugmodel

- :class:`ReLU2FeedForward`: the Squared-ReLU FFN ``w2(relu(w1(x))^2)`` as a torchtitan Module (the
  dense flavour: torchtitan's own FFN is SwiGLU).
- :class:`Sp24FeedForward`: the same parameters (``w1.weight``, ``w2.weight``: same keys, same shapes)
  with sp24's switchable 2:4 path (:class:`sp24.nn.ReLU2FFN`'s mode, saved as ``<prefix>sp24_mode``);
  dense mode is bit-identical to :class:`ReLU2FeedForward`.
- :class:`Sp24Converter`: a ``ModelConfigConverter`` that swaps every ``ReLU2FeedForward.Config`` of a
  model config for ``Sp24FeedForward.Config`` before the build, so torchtitan's parallelisms (TP, FSDP2,
  activation checkpointing, compile) are applied to the sp24 modules afterwards.
- :func:`model_registry`: Llama-3 flavours (``debugmodel``, ``1B``, ``8B``, ...) with Squared-ReLU FFNs
  (hidden = 4 * dim) and tensor-parallel sharding for them: the FFN computes on its local shards inside
  one local region (x replicated in, a partial sum out, reduced as torchtitan reduces ``w2``), so each
  rank runs the 2:4 FFN on its F/tp features, as ``sp24.nn.tensor_parallel`` does for torch's plans.
- The dense warm-up: the ModelSpec's ``post_optimizer_build_fn`` puts every sp24 FFN in 2:4 mode once
  its optimizer has taken ``warmup_steps`` steps, counted from the optimizer's own state (so a resumed
  run counts on), after each step and right after the optimizer's state is loaded.
- No extra checkpoint key: in torchtitan an FFN's mode is its config and the optimizer's step, so the
  FFNs' state_dict is the dense flavour's (``w1.weight``, ``w2.weight``) and a dense torchtitan
  checkpoint loads into the converted model under DCP (which refuses a key the checkpoint lacks),
  and the other way round.

What needs a GPU: torchtitan's trainer (``torchtitan.train``) targets CUDA, and FlexAttention has no
backward on the CPU. On the CPU the model is built, converted, parallelised (gloo) and run forward,
and the FFNs train, as the tests do (tests/test_torchtitan.py).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch
import torch.nn.functional as F
from torch import Tensor

try:
    import spmd_types as spmd
    from torch.distributed.tensor import DTensor, Replicate, Shard
    from torchtitan.models.common import Linear, compute_ffn_hidden_dim  # noqa: F401 (re-exported for configs)
    from torchtitan.models.common.decoder_sharding import (colwise_config, dense_activation_placement,
                                                           dense_sequence_parallel_placement, norm_config,
                                                           rowwise_config, set_decoder_sharding_config,
                                                           set_gqa_attention_sharding,
                                                           set_gqa_inner_attention_local_map)
    from torchtitan.models.llama3 import Llama3Model, llama3_configs, parallelize_llama
    from torchtitan.models.llama3.model import Llama3TransformerBlock
    from torchtitan.protocols.model import ModelConfigConverter
    from torchtitan.protocols.model_spec import ModelSpec
    from torchtitan.protocols.module import Module
    from torchtitan.protocols.sharding import LocalMapConfig, ShardingConfig
except ImportError as e:  # pragma: no cover - the message is the point
    raise ImportError(f"sp24.integrations.torchtitan needs torchtitan 0.3.x (pip install torchtitan==0.3.0 "
                      f"triton): {e}") from e

from ..ffn import relu2_ffn
from .. import _checks
from ..nn._mode import SparseMode
from ..nn.warmup import set_sparse

__all__ = ["ReLU2FeedForward", "Sp24FeedForward", "Sp24Converter", "model_registry", "sp24_relu2_debugmodel",
           "sp24_relu2_debugmodel_dense", "register_warmup"]


def _local(t: Tensor | None, name: str, want: int, where: str) -> Tensor | None:
    """The local shard of a weight: a DTensor may be sharded only along ``want`` (0 for w1, 1 for w2:
    the feature dimension, so 2:4 groups never cross a shard) or replicated."""
    if not isinstance(t, DTensor):
        return t
    bad = [p for p in t.placements if not (isinstance(p, Replicate) or (isinstance(p, Shard) and p.dim == want))]
    if bad:
        raise ValueError(f"sp24.integrations.torchtitan {where}: {name} is a DTensor with placements "
                         f"{tuple(t.placements)}; the FFN computes on local shards and needs it sharded along the "
                         f"feature dimension (Shard({want})) or replicated")
    return t.to_local()


def _check_warmup(op: str, steps, sparse: bool) -> int:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"{op}: warmup_steps must be an int >= 0, got {steps!r}")
    if sparse and steps > 0:
        raise ValueError(f"{op}: sparse=True starts in 2:4, so warmup_steps={steps} (dense steps first) contradicts "
                         f"it; use sparse=False with warmup_steps > 0 for a dense warm-up, or warmup_steps=0")
    return steps


class ReLU2FeedForward(Module):
    """Squared-ReLU feed-forward ``w2(relu(w1(x))^2)``, the dense flavour (torchtitan's FFN is SwiGLU).

    Config: ``w1`` (d -> F) and ``w2`` (F -> d), torchtitan ``Linear.Config``s; ``w2`` has no bias (under
    tensor parallelism it would be added once per rank).
    """

    @dataclass(kw_only=True, slots=True)
    class Config(Module.Config):
        w1: Linear.Config
        w2: Linear.Config

    def __init__(self, config: Config):
        super().__init__()
        for name in ("w1", "w2"):
            kind = type(getattr(config, name))
            if kind is not Linear.Config:
                # the FFN computes with the weights directly (F.linear / relu2_ffn), so a Linear-level
                # converter (LoRA, float8, MX) would be bypassed silently: its adapters untrained, its
                # quantisation skipped
                raise ValueError(f"sp24.integrations.torchtitan.{type(self).__name__}: {name} must be a plain "
                                 f"torchtitan Linear.Config, got {'.'.join(kind.__qualname__.split('.')[-2:])} (from a Linear-level converter "
                                 f"such as LoRA or float8); the Squared-ReLU FFN reads its weights directly and "
                                 f"would bypass it: drop that converter for the FFNs")
        if config.w2.bias:
            raise ValueError(f"sp24.integrations.torchtitan.{type(self).__name__}: w2 must have no bias (it would "
                             f"be added once per tensor-parallel rank), got bias=True")
        if (config.w1.out_features, config.w1.in_features) != (config.w2.in_features, config.w2.out_features):
            raise ValueError(f"sp24.integrations.torchtitan.{type(self).__name__}: w1 (d -> F) and w2 (F -> d) must "
                             f"chain, got w1 {config.w1.in_features}->{config.w1.out_features} and w2 "
                             f"{config.w2.in_features}->{config.w2.out_features}")
        self.w1 = config.w1.build()
        self.w2 = config.w2.build()

    def _weights(self):
        where = type(self).__name__
        return (_local(self.w1.weight, "w1.weight", 0, where), _local(self.w2.weight, "w2.weight", 1, where),
                _local(self.w1.bias, "w1.bias", 0, where))

    def forward(self, x: Tensor) -> Tensor:
        w1, w2, b1 = self._weights()
        return F.linear(torch.relu(F.linear(x, w1, b1)).square(), w2)


class Sp24FeedForward(SparseMode, ReLU2FeedForward):
    """:class:`ReLU2FeedForward` with sp24's 2:4 path (:func:`sp24.relu2_ffn` on the local shards).

    Config adds ``sparse`` (2:4 from the start), ``dense_fraction``, ``permute_tokens`` and
    ``warmup_steps`` (> 0: dense for that many optimizer steps, then 2:4, by :func:`register_warmup`;
    0 with ``sparse=False``: dense throughout). ``sparse=True`` with ``warmup_steps`` > 0 is refused
    (a warm-up that starts sparse). Unlike :class:`sp24.nn.ReLU2FFN` the module saves no
    ``sp24_mode`` key: in torchtitan its mode is a function of its config and the optimizer's step, so
    its state_dict keys are the dense flavour's. ``sp24.nn.set_sparse`` still switches it for the
    current process.
    """

    @dataclass(kw_only=True, slots=True)
    class Config(ReLU2FeedForward.Config):
        sparse: bool = False
        dense_fraction: float = 0.05
        permute_tokens: bool = True
        warmup_steps: int = 0

    def __init__(self, config: Config):
        super().__init__(config)
        self._init_flags(config.sparse, config.dense_fraction, ("w1", "w2"))
        self.permute_tokens = _checks.check_bool(f"sp24.nn.{type(self).__name__}", "permute_tokens",
                                                 config.permute_tokens)
        self.warmup_steps = _check_warmup(f"sp24.integrations.torchtitan.{type(self).__name__}", config.warmup_steps,
                                          config.sparse)

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        # the dense flavour's keys only (no sp24_mode; see the class docstring)
        super(SparseMode, self)._save_to_state_dict(destination, prefix, keep_vars)

    def forward(self, x: Tensor) -> Tensor:
        if not self.sparse:
            return super().forward(x)
        w1, w2, b1 = self._weights()
        return relu2_ffn(x, w1, w2, b1, None, sparse=True, dense_fraction=self.dense_fraction,
                         permute_tokens=self.permute_tokens, gradient=self.gradient,
                         sparse_backward=self.sparse_backward)

    def extra_repr(self) -> str:
        return f"sparse={self.sparse}, dense_fraction={self.dense_fraction}, warmup_steps={self.warmup_steps}"


class Sp24Converter(ModelConfigConverter):
    """Swap every ``ReLU2FeedForward.Config`` of a model config for ``Sp24FeedForward.Config``.

    Runs before the build (as torchtitan's float8 converter does), so the parallelisms applied after
    the build see the sp24 modules. Parameter names, shapes, init and sharding are kept.

    Config: ``sparse`` (2:4 from the first step; default False), ``warmup_steps`` (dense for that many
    optimizer steps, then 2:4; default None: 1000 with ``sparse=False``, 0 with ``sparse=True``; an
    explicit value > 0 with ``sparse=True`` is refused; 0 with ``sparse=False`` keeps the FFNs dense,
    unlike ``sp24.nn.DenseWarmup(steps=0)``, which switches at once), ``dense_fraction`` (0.05),
    ``permute_tokens`` (True).
    """

    @dataclass(kw_only=True, slots=True)
    class Config(ModelConfigConverter.Config):
        sparse: bool = False
        warmup_steps: int | None = None
        dense_fraction: float = 0.05
        permute_tokens: bool = True

    DEFAULT_WARMUP_STEPS = 1000  # warmup_steps=None with sparse=False

    def __init__(self, config: Config):
        op = "sp24.integrations.torchtitan.Sp24Converter"
        _checks.check_bool(op, "sparse", config.sparse)
        _checks.check_bool(op, "permute_tokens", config.permute_tokens)
        _checks.check_fraction(op, "dense_fraction", config.dense_fraction)
        if config.warmup_steps is None:
            config = replace(config, warmup_steps=0 if config.sparse else self.DEFAULT_WARMUP_STEPS)
        _check_warmup(op, config.warmup_steps, config.sparse)
        self.config = config

    def convert(self, model_config):
        c, n = self.config, 0
        for _fqn, cfg, parent, attr in list(model_config.traverse(ReLU2FeedForward.Config)):
            if isinstance(cfg, Sp24FeedForward.Config):
                continue
            new = Sp24FeedForward.Config(**{f.name: getattr(cfg, f.name) for f in fields(cfg)}, sparse=c.sparse,
                                         dense_fraction=c.dense_fraction, permute_tokens=c.permute_tokens,
                                         warmup_steps=c.warmup_steps)
            if parent is None:
                model_config = new
            elif isinstance(parent, list):
                parent[attr] = new
            else:
                setattr(parent, attr, new)
            n += 1
        if n == 0:
            raise ValueError("sp24.integrations.torchtitan.Sp24Converter: the model config has no "
                             "ReLU2FeedForward.Config (Squared-ReLU FFN) to convert; torchtitan's own FFNs are "
                             "SwiGLU (gated), which 2:4 activation sparsity does not serve")
        return model_config


def _relu2_ffn_sharding(ffn, *, attn_x_layout, enable_sp: bool) -> None:
    """TP for the Squared-ReLU FFN: w1 colwise, w2 rowwise (state only), and the FFN one local region:
    x replicated in (gradient a partial sum), the output a partial sum, reduced (or reduce-scattered
    under sequence parallelism) as torchtitan reduces its own ``w2``."""
    out_dst = dense_sequence_parallel_placement() if enable_sp else dense_activation_placement(tp=spmd.I)
    ffn.sharding_config = ShardingConfig(
        in_src_shardings={"x": attn_x_layout},
        in_dst_shardings={"x": dense_activation_placement(tp=spmd.R)},
        out_src_shardings=dense_activation_placement(tp=spmd.P),
        out_dst_shardings=out_dst,
        local_map=LocalMapConfig(in_grad_placements=(dense_activation_placement(tp=spmd.P),)))
    ffn.w1.sharding_config = ShardingConfig(state_shardings=colwise_config().state_shardings)
    ffn.w2.sharding_config = ShardingConfig(state_shardings=rowwise_config().state_shardings)


class ReLU2Llama3Model(Llama3Model):
    """Llama-3 with Squared-ReLU FFNs: its sharding sets the FFN's as :func:`_relu2_ffn_sharding` does."""

    @dataclass(kw_only=True, slots=True)
    class Config(Llama3Model.Config):
        def update_from_config(self, *, config, **kwargs) -> None:
            from torchtitan.models.common.decoder import Decoder

            from torchtitan.models.common.attention import VarlenAttention

            Decoder.Config.update_from_config(self, config=config, **kwargs)
            # Llama-3's own check (its update_from_config is replaced here, not called)
            if config.parallelism.context_parallel_degree > 1 and isinstance(
                    self.layers[0].attention.inner_attention, VarlenAttention.Config):
                raise NotImplementedError("Context Parallel only supports SDPA and FlexAttention. Varlen attention is "
                                          "not supported with CP.")
            sp = config.parallelism.enable_sequence_parallel
            set_decoder_sharding_config(self, enable_sp=sp)
            for layer in self.layers:
                layer.attention_norm.sharding_config = layer.ffn_norm.sharding_config = norm_config(enable_sp=sp)
                set_gqa_attention_sharding(layer.attention, enable_sp=sp)
                set_gqa_inner_attention_local_map(layer.attention.inner_attention)
                x = dense_sequence_parallel_placement() if sp else dense_activation_placement(tp=spmd.I)
                _relu2_ffn_sharding(layer.feed_forward, attn_x_layout=x, enable_sp=sp)


def _relu2_llama3(flavor: str, attn_backend: str) -> ReLU2Llama3Model.Config:
    base = llama3_configs[flavor](attn_backend=attn_backend)
    layers = []
    for layer in base.layers:
        ff = layer.feed_forward
        dim = ff.w1.in_features
        hidden = compute_ffn_hidden_dim(dim, multiple_of=256, ffn_dim_multiplier=1.5)  # 2/3 * 4 * 1.5 = 4 dim
        w1 = Linear.Config(in_features=dim, out_features=hidden, param_init=ff.w1.param_init)
        w2 = Linear.Config(in_features=hidden, out_features=dim, param_init=ff.w2.param_init)
        kw = {f.name: getattr(layer, f.name) for f in fields(layer)}
        kw["feed_forward"] = ReLU2FeedForward.Config(w1=w1, w2=w2)
        layers.append(Llama3TransformerBlock.Config(**kw))
    kw = {f.name: getattr(base, f.name) for f in fields(base)}
    kw["layers"] = layers
    return ReLU2Llama3Model.Config(**kw)


def _sp24_modules(model_parts):
    return [m for part in model_parts for m in part.modules() if isinstance(m, Sp24FeedForward)]


def register_warmup(optimizers, model_parts, parallel_dims=None) -> None:
    """The dense warm-up in torchtitan (a ModelSpec ``post_optimizer_build_fn``): every sp24 FFN with
    ``warmup_steps`` > 0 is in 2:4 mode exactly when its optimizer's step count (``state[w1]['step']``,
    which a checkpoint restores) has reached ``warmup_steps``. Evaluated after each optimizer step and
    right after an optimizer's state is loaded (so a resumed run's first step already has the mode of
    its step). An optimizer that keeps no step count (SGD, Muon) is refused after its first step, by
    name. At a switch, torchtitan's CUDA graphs (captured in the other mode) are dropped, to be
    captured again; sp24's own configs turn CUDA graphs off."""
    ffns = [m for m in _sp24_modules(model_parts) if m.warmup_steps > 0]
    if not ffns:
        return
    opts = list(getattr(optimizers, "optimizers", [optimizers]))

    def owner(w):
        return next((o for o in opts if any(w is p for g in o.param_groups for p in g["params"])), None)

    def update(after_step: bool) -> None:
        steps: dict = {}  # one read (a device sync for an on-device step) per optimizer
        switched = False
        for m in ffns:
            opt = owner(m.w1.weight)
            if opt is None:
                raise RuntimeError(f"sp24.integrations.torchtitan.register_warmup: {m._sp24_name()}'s w1.weight is in "
                                   f"no optimizer's param_groups; the warm-up counts that optimizer's steps")
            if id(opt) not in steps:
                st = opt.state.get(m.w1.weight, {})
                if "step" not in st:
                    if after_step:
                        raise RuntimeError(
                            f"sp24.integrations.torchtitan.register_warmup: the dense warm-up counts the optimizer's "
                            f"steps from its state['step'], and {type(opt).__name__} keeps none (state keys: "
                            f"{sorted(st)}); use an optimizer with a step count (Adam, AdamW), or "
                            f"Sp24Converter(sparse=True, warmup_steps=0) to train 2:4 from the first step")
                    steps[id(opt)] = 0
                else:
                    steps[id(opt)] = int(st["step"])
            want = steps[id(opt)] >= m.warmup_steps
            if m.sparse != want:
                set_sparse(m, want)
                switched = True
        if switched:
            _drop_cuda_graphs()

    optimizers.register_step_post_hook(lambda *_a, **_k: update(True))
    for opt in opts:  # torchtitan's OptimizersContainer loads each inner optimizer's state
        opt.register_load_state_dict_post_hook(lambda *_a, **_k: update(False))


def _drop_cuda_graphs() -> None:
    """Drop the step graphs torchtitan captured (training.disable_cuda_graphs=False): they replay the
    FFNs' previous mode. Each is captured again on its next call. Nothing to do without CUDA graphs."""
    try:
        from torchtitan.distributed import cudagraph
    except ImportError:  # pragma: no cover
        return
    for wrapper in list(getattr(cudagraph._manager, "_wrappers", [])):
        wrapper.teardown()


def model_registry(flavor: str = "debugmodel", attn_backend: str = "flex",
                   converters: list | None = None) -> ModelSpec:
    """A ModelSpec: Llama-3 ``flavor`` with Squared-ReLU FFNs, ``converters`` applied to its config
    (e.g. ``[Sp24Converter.Config(warmup_steps=1000)]``), torchtitan's Llama-3 parallelisation, and
    the dense warm-up hook."""
    from torchtitan.models.utils import validate_converter_order

    validate_converter_order(converters or [])
    config = _relu2_llama3(flavor, attn_backend)
    for c in converters or []:
        config = c.build().convert(config)
    return ModelSpec(name="sp24_relu2_llama3", flavor=flavor, model=config, parallelize_fn=parallelize_llama,
                     pipelining_fn=None, post_optimizer_build_fn=register_warmup, state_dict_adapter=None)


def _trainer_config(spec: ModelSpec):
    from torchtitan.models.llama3.config_registry import llama3_debugmodel

    cfg = llama3_debugmodel()  # its optimizer, schedule, data and checkpointing; our model
    cfg.model_spec = spec
    cfg.loss.loss_fn.global_vocab_size = spec.model.vocab_size
    cfg.parallelism.pipeline_parallel_degree = 1
    # the warm-up switches the FFNs' Python path between steps; a captured CUDA graph would replay the
    # old one (register_warmup drops the graphs at a switch, but that is not checked on a GPU yet)
    cfg.training.disable_cuda_graphs = True
    return cfg


def sp24_relu2_debugmodel():
    """``--config sp24_relu2_debugmodel``: the Squared-ReLU debug model, 2:4 after 2 dense steps."""
    return _trainer_config(model_registry("debugmodel", converters=[Sp24Converter.Config(warmup_steps=2)]))


def sp24_relu2_debugmodel_dense():
    """``--config sp24_relu2_debugmodel_dense``: the same model, unconverted (the dense baseline)."""
    return _trainer_config(model_registry("debugmodel"))
