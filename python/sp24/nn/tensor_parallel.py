"""Tensor parallelism for ReLU2FFN's 2:4 path: Linears sharded by torch.distributed.tensor.parallel.

A ReLU2FFN whose first Linear is ``ColwiseParallel`` and second ``RowwiseParallel`` (torch's
Megatron-style plan, ``parallelize_module(ffn, tp_mesh, {"w1": ColwiseParallel(), "w2":
RowwiseParallel()})``, with or without sequence-parallel layouts) holds DTensor weights: W1 sharded
on its rows (features), W2 on its columns. In dense mode the module calls its Linears and torch's
hooks do the rest. In 2:4 (or FP8) mode it does not call them, so it runs the plan itself:

1. the first Linear's input hook (what ColwiseParallel does to the input: a replicated DTensor,
   all-gathered along the sequence under sequence parallelism);
2. on each rank, ``relu2_ffn`` on its local shards: its F/tp features, so the row-wise 2:4 groups
   of 4 features never cross a shard (F/tp must be a multiple of 8, refused otherwise), with the
   dense-feature split, the counts and the token permutation per shard (the permutation is the same
   on every rank: it depends only on the token count);
3. the per-rank outputs as a Partial DTensor through the second Linear's output hook (what
   RowwiseParallel does: all-reduce, or reduce-scatter along the sequence), then the bias once.

Autograd crosses the DTensor conversions, so the weights get Shard(0) / Shard(1) gradients, the
bias a replicated one, and the input's gradient is reduced across the ranks. The result equals the
per-shard computation, ``sum_r relu2_ffn(x, W1_r, W2_r, b1_r) + b2``, up to the order of the
cross-rank fp32 sum; it equals the unsharded FFN whenever the per-shard dense split picks the same
features as the global one (e.g. dense_fraction=0 with F/tp a multiple of 16). The hooks are
recognised by the functions torch installs (``ColwiseParallel._prepare_input_fn`` ...); any other
hook on the Linears makes the module run dense with a warning, as for every wrapper.
"""

from __future__ import annotations

import dataclasses
import functools
import sys
from typing import Optional

from torch import nn

_STYLES = {"pre1": "ColwiseParallel._prepare_input_fn", "post1": "ColwiseParallel._prepare_output_fn",
           "pre2": "RowwiseParallel._prepare_input_fn", "post2": "RowwiseParallel._prepare_output_fn"}


@dataclasses.dataclass
class Plan:
    mesh: object
    pre1: object        # the first Linear's forward pre-hook (ColwiseParallel's input handling)
    post2: object       # the second Linear's forward hook (RowwiseParallel's output handling)
    out_layouts: tuple  # RowwiseParallel's output layouts


def _style_fn(hook) -> Optional[functools.partial]:
    # distribute_module registers `lambda mod, inputs[, outputs]: fn(mod, ..., device_mesh)` around
    # partial(<Style>._prepare_*_fn, layouts...): return that partial, or None for any other hook
    code = getattr(hook, "__code__", None)
    if code is None or not code.co_filename.replace("\\", "/").endswith("torch/distributed/tensor/_api.py"):
        return None
    cells = dict(zip(code.co_freevars, (c.cell_contents for c in hook.__closure__ or ())))
    fn = cells.get("input_fn", cells.get("output_fn"))
    return fn if isinstance(fn, functools.partial) else None


def _only_hooks(m: nn.Module, pre: str, post: str):
    """(pre_fn, post_fn, pre_hook, post_hook) if m has exactly torch's two TP hooks of the given
    style functions, else None."""
    if (m._backward_hooks or m._backward_pre_hooks or m._forward_hooks_with_kwargs
            or m._forward_pre_hooks_with_kwargs or len(m._forward_pre_hooks) != 1 or len(m._forward_hooks) != 1):
        return None
    hp, ho = next(iter(m._forward_pre_hooks.values())), next(iter(m._forward_hooks.values()))
    fp, fo = _style_fn(hp), _style_fn(ho)
    if fp is None or fo is None or fp.func.__qualname__ != pre or fo.func.__qualname__ != post:
        return None
    return fp, fo, hp, ho


def detect(l1: nn.Module, l2: nn.Module, fp8: bool = False) -> tuple[Optional[Plan], str]:
    """(Plan, "") for a ColwiseParallel / RowwiseParallel pair, (None, "") when neither Linear holds
    a DTensor, (None, why) for DTensor Linears sp24 cannot run on its 2:4 path (raises ValueError for
    a TP pair whose shards break the 2:4 rules)."""
    dt_mod = sys.modules.get("torch.distributed.tensor")
    if dt_mod is None or not any(isinstance(getattr(m, "weight", None), dt_mod.DTensor) for m in (l1, l2)):
        return None, ""
    from torch.distributed.tensor import DTensor, Replicate, Shard

    h1, h2 = _only_hooks(l1, _STYLES["pre1"], _STYLES["post1"]), _only_hooks(l2, _STYLES["pre2"], _STYLES["post2"])
    if h1 is None or h2 is None:
        return None, ("its Linears hold DTensor weights but are not exactly a ColwiseParallel / RowwiseParallel pair "
                      "of torch.distributed.tensor.parallel (other hooks, other styles, or FSDP2 on the Linears)")
    w1, w2, b1, b2 = l1.weight, l2.weight, l1.bias, l2.bias
    mesh = w1.device_mesh
    ok = (isinstance(w1, DTensor) and isinstance(w2, DTensor) and w2.device_mesh == mesh and mesh.ndim == 1
          and w1.placements == (Shard(0),) and w2.placements == (Shard(1),)
          and (b1 is None or (isinstance(b1, DTensor) and b1.placements == (Shard(0),)))
          and (b2 is None or (isinstance(b2, DTensor) and b2.placements == (Replicate(),))))
    if not ok:
        return None, (f"its DTensor weights are not W1 Shard(0) / W2 Shard(1) on one 1-D mesh (got "
                      f"{getattr(w1, 'placements', None)} / {getattr(w2, 'placements', None)})")
    last = lambda p: isinstance(p, Shard) and p.dim in (-1, w1.ndim - 1)  # noqa: E731 - the features dim
    if not (all(last(p) for p in h1[1].args[0]) and all(last(p) for p in h2[0].args[0])):
        return None, "its ColwiseParallel output / RowwiseParallel input layouts are not sharded on the features"
    Fh, tp = w1.shape[0], mesh.size()
    need = 16 if fp8 else 8
    if Fh % tp or (Fh // tp) % need:
        raise ValueError(f"sp24.nn.ReLU2FFN: under tensor parallelism each rank's 2:4 FFN takes F/tp features, which "
                         f"must be a multiple of {need} (the 2:4 groups must not cross a shard); got F={Fh}, tp={tp}. "
                         f"Choose a tensor-parallel degree that divides F into multiples of {need}, or run dense")
    return Plan(mesh=mesh, pre1=h1[2], post2=h2[3], out_layouts=tuple(h2[1].args[0])), ""


def forward(plan: Plan, l1: nn.Module, l2: nn.Module, x, **ffn_kwargs):
    """The 2:4 FFN under the plan (module docstring): the local shards through relu2_ffn, the
    outputs reduced as RowwiseParallel reduces them, the bias added once."""
    from torch.distributed.tensor import DTensor, Partial, Replicate, Shard

    from ..ffn import relu2_ffn

    x_dt = plan.pre1(l1, (x,))
    x_loc = x_dt.to_local(grad_placements=[Partial()])  # each rank's dX is a partial sum
    b1 = None if l1.bias is None else l1.bias.to_local()
    y = relu2_ffn(x_loc, l1.weight.to_local(), l2.weight.to_local(), b1, None, **ffn_kwargs)
    y_dt = DTensor.from_local(y, plan.mesh, [Partial()], run_check=False)
    out = plan.post2(l2, (y_dt,), y_dt)
    if l2.bias is None:
        return out
    if isinstance(out, DTensor):
        return out + l2.bias
    sharded = any(isinstance(p, Shard) for p in plan.out_layouts)  # a local shard of the tokens: partial db2
    return out + l2.bias.to_local(grad_placements=[Partial() if sharded else Replicate()])
