"""FSDP2 (fully_shard) on the Linears of a ReLU2FFN: their weights gathered for the 2:4 path.

``fully_shard`` on a whole block needs nothing from sp24: FSDP2 gathers the block's parameters
before its forward, so ReLU2FFN sees plain (or tensor-parallel DTensor) weights. ``fully_shard`` on
the Linears themselves registers FSDP2's hooks on them, and the 2:4 path does not call them. So for
such a Linear ReLU2FFN calls ``FSDPModule.unshard()`` (the all-gather, in the mixed-precision
policy's ``param_dtype``) and computes with the gathered weights; the gradients land on them, and
FSDP2's root post-backward callback, which runs the post-backward of every parameter group whose
own hook did not run, reduce-scatters them (in ``reduce_dtype``) and reshards. Without autograd
(inference) the Linears are resharded right after the forward. This needs ``fully_shard`` on a
parent module too (the root, as FSDP2 recommends): without one nothing would reduce the gradients,
so sp24 refuses. The Linears stay gathered from the forward to the end of the backward (as with
``reshard_after_forward=False``); FSDP2 + tensor parallelism on the same Linears is not served
(fully_shard the block instead).
"""

from __future__ import annotations

import sys

from torch import nn


def _fsdp_hooks_only(m: nn.Module) -> bool:
    hooks = list(m._forward_pre_hooks.values()) + list(m._forward_hooks.values())
    return (not m._backward_hooks and not m._backward_pre_hooks
            and all(type(getattr(h, "__self__", None)).__name__ == "FSDPState" for h in hooks))


def sharded_linears(names: tuple, l1: nn.Module, l2: nn.Module) -> tuple[list, str]:
    """([the FSDP2-sharded Linears among l1, l2], "") when FSDP2 is all that wraps them ([], "" when
    none is), ([], why) otherwise; RuntimeError when no parent module is fully_shard-ed."""
    mod = sys.modules.get("torch.distributed.fsdp")
    if mod is None or not hasattr(mod, "FSDPModule"):
        return [], ""
    out = []
    for name, m in zip(names, (l1, l2)):
        if not isinstance(m, mod.FSDPModule):
            continue
        if not (isinstance(m, nn.Linear) and type(m).forward is nn.Linear.forward and _fsdp_hooks_only(m)):
            return [], f"{name} is FSDP2-sharded and also wrapped or hooked otherwise"
        state = m._get_fsdp_state()
        if state._is_root is not False:
            raise RuntimeError(f"sp24.nn.ReLU2FFN: {name} is fully_shard-ed but no parent module is: FSDP2's gradient "
                               f"reduce-scatter for Linears whose forward the 2:4 path does not call runs in the root's "
                               f"post-backward callback; fully_shard a parent module (the model) too")
        out.append(m)
    return out, ""


def gather(linears: list) -> None:
    for m in linears:
        m.unshard()


def release_after_inference(linears: list, grad: bool) -> None:
    # with autograd the backward needs the gathered weights: FSDP2's root callback reshards them
    if not grad:
        for m in linears:
            m.reshard()
