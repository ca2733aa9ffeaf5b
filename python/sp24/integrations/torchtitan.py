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
- The dense warm-up: the ModelSpec's ``post_optimizer_build_fn`` switches every sp24 FFN to 2:4 after
  ``warmup_steps`` optimizer steps, counted from the optimizer's own state (so a resumed run counts on).

What needs a GPU: torchtitan's trainer (``torchtitan.train``) targets CUDA, and FlexAttention has no
backward on the CPU. On the CPU the model is built, converted, parallelised (gloo) and run forward,
and the FFNs train, as the tests do (tests/test_torchtitan.py).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

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

    Config adds ``sparse`` (start in 2:4 mode), ``dense_fraction``, ``permute_tokens`` and
    ``warmup_steps`` (dense optimizer steps before 2:4; read by :func:`register_warmup`). The mode is in
    the state_dict as ``<prefix>sp24_mode``; ``sp24.nn.set_sparse`` / ``DenseWarmup`` switch it.
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
        self.warmup_steps = config.warmup_steps

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

    Config: ``sparse`` (start in 2:4; default False), ``warmup_steps`` (dense optimizer steps before
    2:4, default 0: with ``sparse=False`` and 0 steps the FFNs stay dense until ``set_sparse``),
    ``dense_fraction`` (0.05), ``permute_tokens`` (True).
    """

    @dataclass(kw_only=True, slots=True)
    class Config(ModelConfigConverter.Config):
        sparse: bool = False
        warmup_steps: int = 1000
        dense_fraction: float = 0.05
        permute_tokens: bool = True

    def __init__(self, config: Config):
        op = "sp24.integrations.torchtitan.Sp24Converter"
        _checks.check_bool(op, "sparse", config.sparse)
        _checks.check_bool(op, "permute_tokens", config.permute_tokens)
        _checks.check_fraction(op, "dense_fraction", config.dense_fraction)
        if isinstance(config.warmup_steps, bool) or not isinstance(config.warmup_steps, int) or config.warmup_steps < 0:
            raise ValueError(f"{op}: warmup_steps must be an int >= 0, got {config.warmup_steps!r}")
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

            Decoder.Config.update_from_config(self, config=config, **kwargs)
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
    """The dense warm-up in torchtitan (a ModelSpec ``post_optimizer_build_fn``): after each optimizer
    step, every sp24 FFN whose ``warmup_steps`` > 0 have passed goes 2:4. The step is the optimizer's own
    count (``state[w]['step']`` of the FFN's first weight), which a checkpoint restores, so a resumed run
    switches at the same step; the mode itself is in each FFN's state_dict."""
    ffns = [m for m in _sp24_modules(model_parts) if m.warmup_steps > 0]
    if not ffns:
        return
    opts = getattr(optimizers, "optimizers", [optimizers])

    def step_of(w) -> int:
        for opt in opts:
            st = opt.state.get(w)
            if st and "step" in st:
                return int(st["step"])
        return 0

    def hook(*_args, **_kwargs) -> None:
        for m in ffns:
            if not m.sparse and step_of(m.w1.weight) >= m.warmup_steps:
                set_sparse(m, True)

    optimizers.register_step_post_hook(hook)


def model_registry(flavor: str = "debugmodel", attn_backend: str = "flex",
                   converters: list | None = None) -> ModelSpec:
    """A ModelSpec: Llama-3 ``flavor`` with Squared-ReLU FFNs, ``converters`` applied to its config
    (e.g. ``[Sp24Converter.Config(warmup_steps=1000)]``), torchtitan's Llama-3 parallelisation, and
    the dense warm-up hook."""
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
    return cfg


def sp24_relu2_debugmodel():
    """``--config sp24_relu2_debugmodel``: the Squared-ReLU debug model, 2:4 after 2 dense steps."""
    return _trainer_config(model_registry("debugmodel", converters=[Sp24Converter.Config(warmup_steps=2)]))


def sp24_relu2_debugmodel_dense():
    """``--config sp24_relu2_debugmodel_dense``: the same model, unconverted (the dense baseline)."""
    return _trainer_config(model_registry("debugmodel"))
