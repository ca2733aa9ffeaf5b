"""The Linears sp24.nn reads weights from: a plain nn.Linear, or a PEFT LoRA Linear over one.

The 2:4 path of ReLU2FFN computes with weight matrices, not by calling modules, so it must know
when reading ``.weight`` / ``.bias`` is exactly what calling the module computes (a plain
nn.Linear), how to fold a PEFT LoRA adapter into the weight, and when two Linears chain
d -> F -> d. Anything else runs dense (ReLU2FFN) or is left alone (convert).
"""

from __future__ import annotations

from typing import Optional

from torch import Tensor, nn


def _plain_linear(m) -> bool:
    # the forward is nn.Linear's and nothing else runs around it: reading .weight/.bias is exactly
    # what calling it would compute (a parametrization is fine: .weight is the parametrized weight)
    return (isinstance(m, nn.Linear) and type(m).forward is nn.Linear.forward and not m._forward_hooks
            and not m._forward_pre_hooks and not m._backward_hooks and not m._backward_pre_hooks)


def _is_peft_lora(m) -> bool:
    return all(hasattr(m, a) for a in ("base_layer", "lora_A", "lora_B", "scaling", "active_adapters", "merged"))


def _lora_weight(name: str, m: nn.Module) -> tuple[Optional[Tensor], Optional[Tensor], str]:
    """(weight, bias, "") of a PEFT LoRA Linear with its active adapters folded in, or (None, None, why)."""
    base = m.base_layer
    if not _plain_linear(base):
        return None, None, f"{name} is LoRA over a {type(base).__qualname__}, not a plain nn.Linear"
    if m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks:
        return None, None, f"{name} (LoRA) has hooks"
    if getattr(m, "fan_in_fan_out", False):
        return None, None, f"{name} (LoRA) has fan_in_fan_out=True"
    w = base.weight
    if getattr(m, "disable_adapters", False) or m.merged:
        return w, base.bias, ""  # the base layer alone (merged: the adapter is already in it)
    for a in m.active_adapters:
        if a not in m.lora_A.keys():
            continue
        if a in getattr(m, "lora_variant", {}):
            return None, None, f"{name} has a LoRA variant ({type(m.lora_variant[a]).__name__}, e.g. DoRA) for adapter {a!r}"
        drop = m.lora_dropout[a]
        if not (isinstance(drop, nn.Identity) or (isinstance(drop, nn.Dropout) and (drop.p == 0 or not drop.training))):
            return None, None, (f"{name}: LoRA dropout ({drop!r}) in training mode cannot be folded into the weight "
                                f"(use lora_dropout=0 for the 2:4 path)")
        A, B = m.lora_A[a], m.lora_B[a]
        if not (_plain_linear(A) and _plain_linear(B)) or B.bias is not None:
            return None, None, f"{name}: LoRA adapter {a!r} is not two plain bias-free nn.Linear"
        # the low-rank term beside the sparse path: x (W + s B A)^T = x W^T + s (x A^T) B^T; the sum
        # is differentiable, so A and B get their gradients through the 2:4 backward's dW
        w = w + (B.weight @ A.weight).to(w.dtype) * m.scaling[a]
    return w, base.bias, ""


def _base_linear(m):
    """m if it is a plain nn.Linear, its base layer if it is a PEFT LoRA Linear over one, else None."""
    if _plain_linear(m):
        return m
    if _is_peft_lora(m) and _plain_linear(m.base_layer):
        return m.base_layer
    return None


def _chain(l1, l2) -> bool:
    # dims, dtype, device and bias-ness of two Linears (or PEFT LoRA Linears: their base layers)
    if _base_linear(l1) is not None and _base_linear(l2) is not None:
        l1, l2 = _base_linear(l1), _base_linear(l2)
    return (isinstance(l1, nn.Linear) and isinstance(l2, nn.Linear) and l1.out_features == l2.in_features
            and l1.in_features == l2.out_features and (l1.bias is None) == (l2.bias is None)
            and l1.weight.dtype == l2.weight.dtype and l1.weight.device == l2.weight.device)

