"""Typed wrappers over torch.ops.sp24 (schemas: csrc/schemas.cpp).

The Meta kernels are C++ (csrc/sparse24_ops.cpp) and use symbolic sizes, so FakeTensor and
torch.compile see the same checks and shapes as eager.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

_ops = torch.ops.sp24


def sparsify24(x: Tensor, algo: str = "largest", activation: Optional[str] = None,
               with_counts: bool = False) -> tuple[Tensor, Tensor, Tensor]:
    return _ops.sparsify24(x, algo, activation, with_counts)


def sparsify24_transposed(x: Tensor, algo: str = "largest_abs",
                          columns: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
    return _ops.sparsify24_transposed(x, algo, columns)


def apply(x: Tensor, indices: Tensor) -> Tensor:
    return _ops.sparse24_apply(x, indices)


def apply_relu2_backward(grad: Tensor, y2_values: Tensor, indices: Tensor) -> Tensor:
    return _ops.sparse24_apply_relu2_backward(grad, y2_values, indices)


def to_dense(values: Tensor, indices: Tensor) -> Tensor:
    return _ops.sparse24_to_dense(values, indices)


def mm(values: Tensor, indices: Tensor, b: Tensor, bias: Optional[Tensor] = None,
       out_dtype: Optional[torch.dtype] = None) -> Tensor:
    return _ops.sparse24_mm(values, indices, b, bias, out_dtype)


OP_NAMES = (
    "sparsify24",
    "sparsify24_transposed",
    "sparse24_apply",
    "sparse24_apply_relu2_backward",
    "sparse24_to_dense",
    "sparse24_mm",
)


def has_kernel(op: str, dispatch_key: str) -> bool:
    """Whether torch.ops.sp24.<op> has a kernel for a dispatch key ("CPU", "CUDA", "Meta")."""
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"sp24::{op}", dispatch_key)
