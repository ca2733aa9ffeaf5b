"""The thin public API over torch.ops.sp24 (docs/DESIGN.md, 'Public API')."""

from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
from torch import Tensor

from . import _C, _ops
from .tensor import Sp24Tensor


def _as_tensor(op: str, name: str, x) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"sp24.{op}: {name} must be a torch.Tensor, got {type(x).__name__}")
    return x


def _row_major(x: Tensor) -> Tensor:
    # The kernels read rows with unit column stride; any other view is copied once.
    return x if x.dim() != 2 or x.size(1) <= 1 or x.stride(1) == 1 else x.contiguous()


def sparsify24(x: Tensor, algo: str = "largest", activation: Optional[str] = None) -> Sp24Tensor:
    """Keep the 2 largest of every 4 consecutive values along the last dim of x (M, K).

    algo: "largest" (by value) or "largest_abs" (by magnitude). activation="relu2" applies
    Squared-ReLU first (fused; the selection ranks the activated values). Ties: lower index
    wins; NaN ranks above everything; -0.0 == 0.0.
    """
    x = _row_major(_as_tensor("sparsify24", "x", x))
    values, indices, _ = _ops.sparsify24(x, algo, activation, False)
    return Sp24Tensor(values, indices)


def sparsify24_transposed(x: Tensor, algo: str = "largest_abs",
                          columns: Union[Tensor, Sequence[int], None] = None) -> Sp24Tensor:
    """Fused sparsify-transpose: a Sp24Tensor representing x.T (or x[:, columns].T, columns in
    the given order), 2:4 along its last dim, i.e. along the rows (tokens) of x (T, N)."""
    x = _row_major(_as_tensor("sparsify24_transposed", "x", x))
    if columns is not None:
        if not isinstance(columns, Tensor):
            columns = torch.as_tensor(list(columns), dtype=torch.int64)
        if columns.dtype != torch.int64 and not columns.is_floating_point() and columns.dtype != torch.bool:
            columns = columns.to(torch.int64)
        columns = columns.to(x.device)
        # The CPU kernel checks the range itself; the CUDA one clamps (no sync inside the op), so
        # the public API checks here, with the same words.
        if (x.device.type != "cpu" and columns.dim() == 1 and columns.dtype == torch.int64 and columns.numel() > 0
                and x.dim() == 2):
            lo, hi = int(columns.min()), int(columns.max())
            if lo < 0 or hi >= x.size(1):
                raise ValueError(f"sp24.sparsify24_transposed: columns must lie in [0, {x.size(1)}), "
                                 f"got values in [{lo}, {hi}]")
    values, indices = _ops.sparsify24_transposed(x, algo, columns)
    return Sp24Tensor(values, indices)


def mm(a: Sp24Tensor, b: Tensor, bias: Optional[Tensor] = None,
       out_dtype: Optional[torch.dtype] = None) -> Tensor:
    """a @ b (+ bias) for a 2:4 `a` (M, K) and a dense b (K, N) -> (M, N); fp32 accumulation."""
    if not isinstance(a, Sp24Tensor):
        raise TypeError(f"sp24.mm: a must be a sp24.Sp24Tensor (from sp24.sparsify24), got {type(a).__name__}")
    b = _as_tensor("mm", "b", b)
    if (a._gemm_ready() and b.dim() == 2 and b.size(0) == a.shape[1] and b.size(1) % 16 == 0 and b.size(1) > 0
            and b.dtype == a.dtype and b.device == a.device):
        # CUDA: reuse the cuSPARSELt buffer the Sp24Tensor holds (compressed once, on first use)
        return _ops.cslt_mm(a.packed(), a.shape[0], a.shape[1], b, bias, out_dtype, False)
    return _ops.mm(a.values(), a.indices(), b, bias, out_dtype)


@torch.no_grad()
def stats(x: Tensor) -> dict:
    """Sparsity statistics of an activation x (..., F), tokens = all leading dims.

    zero_fraction: fraction of exact zeros; drop_rowwise / drop_tokenwise: fraction of the
    non-zeros that a 2:4 sparsification along F (rows) / along the tokens would drop.
    """
    x = _as_tensor("stats", "x", x)
    if x.dim() < 1:
        raise ValueError(f"sp24.stats: x must have at least 1 dim (..., F), got a 0-D tensor")
    x2 = x.reshape(-1, x.shape[-1]) if x.dim() != 2 else x
    T, F = x2.shape
    nnz = int(torch.count_nonzero(x2)) if x2.numel() else 0
    # zero padding to multiples of 4 changes neither the non-zeros nor what 2:4 keeps of them
    xp = torch.nn.functional.pad(x2, (0, (-F) % 4, 0, (-T) % 4))
    row = _ops.sparsify24(xp, "largest_abs", None, False)[0]
    tok = _ops.sparsify24_transposed(xp, "largest_abs", None)[0]
    kept_row = int(torch.count_nonzero(row)) if row.numel() else 0
    kept_tok = int(torch.count_nonzero(tok)) if tok.numel() else 0
    return {
        "numel": x2.numel(),
        "nonzeros": nnz,
        "zero_fraction": 1.0 - nnz / x2.numel() if x2.numel() else 0.0,
        "drop_rowwise": (nnz - kept_row) / nnz if nnz else 0.0,
        "drop_tokenwise": (nnz - kept_tok) / nnz if nnz else 0.0,
    }


def build_info() -> dict:
    """Versions the extension was built with and runs under, and which kernels exist."""
    info = dict(_C.build_info())
    info["torch_runtime_version"] = torch.__version__
    info["cuda_available"] = torch.cuda.is_available()
    info["gpu"] = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    try:
        info["cusparselt_runtime_version"] = torch.backends.cusparselt.version()
    except Exception:  # noqa: BLE001 - absent or not loadable in a CPU torch
        info["cusparselt_runtime_version"] = None
    info["kernels"] = {
        key: [op for op in _ops.OP_NAMES if _ops.has_kernel(op, key)] for key in ("CPU", "Meta", "CUDA")
    }
    return info
