"""Typed wrappers over torch.ops.sp24 (schemas: csrc/schemas.cpp).

The Meta kernels are C++ (csrc/sparse24_ops.cpp) and use symbolic sizes, so FakeTensor and
torch.compile see the same checks and shapes as eager.
"""

from __future__ import annotations

import os
from typing import Optional

import torch
from torch import Tensor

_ops = torch.ops.sp24

# Debug mode (SP24_VALIDATE=1 in the environment, or sp24._ops.VALIDATE = True): the wrappers below
# that take `indices` check them with validate_indices first (one pass over the indices and, on
# CUDA, one synchronisation per call). Sp24Tensor(values, indices) validates whatever this says.
VALIDATE = os.environ.get("SP24_VALIDATE", "0").strip().lower() not in ("", "0", "false", "no", "off")


def validate_indices(op: str, indices: Tensor) -> None:
    """Raise ValueError unless `indices` (..., K/2) uint8 holds, for every group of 4, two distinct
    positions in 0..3 in increasing order. Malformed indices are memory-safe in every sp24 kernel
    but give wrong results. Skipped for meta and fake tensors and while torch.compile traces
    (there is no data to read); call it in eager mode."""
    if indices.device.type == "meta" or torch.compiler.is_compiling() or \
            torch._subclasses.fake_tensor.is_fake(indices):
        return
    if indices.dtype != torch.uint8:
        raise TypeError(f"{op}: indices.dtype must be torch.uint8, got {indices.dtype}")
    if indices.numel() == 0:
        return
    if indices.shape[-1] % 2:
        raise ValueError(f"{op}: indices.size(-1) must be even (K/2 for a 2:4 matrix of K columns), "
                         f"got {indices.shape[-1]}")
    pairs = indices.reshape(-1, indices.shape[-1] // 2, 2)
    bad = (pairs[..., 1] > 3) | (pairs[..., 0] >= pairs[..., 1])  # also catches pairs[..., 0] > 3
    if bool(bad.any()):
        row, group = (int(v) for v in bad.nonzero()[0])
        got = [int(v) for v in pairs[row, group]]
        raise ValueError(f"{op}: malformed indices: each group of 4 needs two distinct positions in 0..3 in "
                         f"increasing order, but row {row}, group {group} (columns {4 * group}..{4 * group + 3}) "
                         f"has {got} ({int(bad.sum())} bad group(s) in all); build indices with sp24.sparsify24 "
                         f"or sp24.reference.mask_to_indices")


def _debug_check(op: str, indices: Tensor) -> None:
    if VALIDATE:
        validate_indices(op, indices)


def sparsify24(x: Tensor, algo: str = "largest", activation: Optional[str] = None,
               with_counts: bool = False) -> tuple[Tensor, Tensor, Tensor]:
    return _ops.sparsify24(x, algo, activation, with_counts)


def sparsify24_transposed(x: Tensor, algo: str = "largest_abs",
                          columns: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
    return _ops.sparsify24_transposed(x, algo, columns)


def apply(x: Tensor, indices: Tensor) -> Tensor:
    _debug_check("sp24.sparse24_apply", indices)
    return _ops.sparse24_apply(x, indices)


def apply_relu2_backward(grad: Tensor, y2_values: Tensor, indices: Tensor) -> Tensor:
    _debug_check("sp24.sparse24_apply_relu2_backward", indices)
    return _ops.sparse24_apply_relu2_backward(grad, y2_values, indices)


def to_dense(values: Tensor, indices: Tensor) -> Tensor:
    _debug_check("sp24.sparse24_to_dense", indices)
    return _ops.sparse24_to_dense(values, indices)


def mm(values: Tensor, indices: Tensor, b: Tensor, bias: Optional[Tensor] = None,
       out_dtype: Optional[torch.dtype] = None) -> Tensor:
    _debug_check("sp24.sparse24_mm", indices)
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


# ---- reusable GEMM-ready 2:4 buffer (cuSPARSELt layout on CUDA) ---------------------------------
def cslt_compress(values: Tensor, indices: Tensor) -> Tensor:
    """GEMM-ready buffer of a 2:4 A (M, K): 1-D uint8, device-specific and opaque (cuSPARSELt's
    compressed layout on CUDA, sp24's packing `reference.cslt_pack` on CPU). fp16/bf16, M and K
    multiples of 16. Compress once, then time or reuse the GEMM alone with `cslt_mm`."""
    _debug_check("sp24.sparse24_cslt_compress", indices)
    return _ops.sparse24_cslt_compress(values, indices)


def cslt_mm(compressed: Tensor, m: int, k: int, b: Tensor, bias: Optional[Tensor] = None,
            out_dtype: Optional[torch.dtype] = None, transpose_result: bool = False,
            identity: Optional[Tensor] = None) -> Tensor:
    """A @ b (+ bias) with A (m, k) given by `cslt_compress`; (m, N), or (N, m) = (A @ b).T written
    directly when transpose_result (e.g. dW2 = dY3.T @ Y2 from sparse Y2.T (F, T) @ dY3 (T, d)).
    b may be row-major or column-major (w.t()); N must be a multiple of 16. out_dtype: None or
    b.dtype (for float32 use `mm`). identity (from `cslt_identity`, made with the buffer): when
    given, a buffer of another layout, (m, k), dtype, cuSPARSELt version or GPU is refused."""
    return _ops.sparse24_cslt_mm(compressed, m, k, b, bias, out_dtype, transpose_result, identity)


def cslt_identity(device: torch.device, m: int, k: int, dtype: torch.dtype) -> Tensor:
    """The identity of a GEMM-ready buffer made on `device` for a 2:4 (m, k) operand of `dtype`:
    a CPU int64 tensor of 8 words (csrc/sp24/cslt_identity.h: layout kind, m, k, dtype,
    cuSPARSELt runtime version, GPU architecture). Make it together with the buffer (the buffer's
    bytes cannot tell these apart) and pass it to `cslt_mm`, which checks it without a GPU sync."""
    from . import _C

    device = torch.device(device)
    index = device.index if device.index is not None else (torch.cuda.current_device() if device.type == "cuda" else -1)
    name = {torch.float16: "float16", torch.bfloat16: "bfloat16"}.get(dtype)
    if name is None:
        raise TypeError(f"sp24.cslt_identity: dtype must be torch.float16 or torch.bfloat16, got {dtype}")
    return torch.tensor(_C.cslt_identity(device.type, index, int(m), int(k), name), dtype=torch.int64)


def sparsify24_cslt(x: Tensor, algo: str = "largest", activation: Optional[str] = None,
                    with_counts: bool = False) -> tuple[Tensor, Tensor, Tensor]:
    """sparsify24 + cslt_compress in one op: (compressed, indices, counts). On CUDA one kernel
    writes the buffer while sparsifying, for the shapes where that kernel was checked against
    cuSPARSELt (csrc/cusparselt/cslt.h); elsewhere, the two steps."""
    return _ops.sparsify24_cslt(x, algo, activation, with_counts)


def values_of(compressed: Tensor, m: int, k: int, dtype: torch.dtype) -> Tensor:
    """The (m, k/2) values at the front of a GEMM-ready buffer (a view, no copy). Exact for sp24's
    CPU packing, and on CUDA where sp24's writers were checked equal to cuSPARSELt for the shape
    (`sp24._C.cslt_direct_layout_checks()`); that cuSPARSELt itself stores the values first
    elsewhere is what the GPU tests check (test_sparsify_cslt.py, test_cslt_layout.py)."""
    es = torch.empty((), dtype=dtype).element_size()
    return compressed[: m * (k // 2) * es].view(dtype).view(m, k // 2)


OP_NAMES = OP_NAMES + ("sparse24_cslt_compress", "sparse24_cslt_mm", "sparsify24_cslt")


# ---- the FFN backward's feature split, straight from the compressed rows ------------------------
def transposed_split(values: Tensor, indices: Tensor, sparse_cols: Tensor, dense_cols: Tensor,
                     algo: str = "largest_abs", check_columns: bool = True) -> tuple[Tensor, Tensor, Tensor]:
    """For a row-wise 2:4 A (T, F) given as values/indices (T, F/2): (tvalues, tindices), the 2:4
    along the tokens of A[:, sparse_cols].T (Cs, T/2) each, and dense_t = A[:, dense_cols].T (Cd, T),
    without the dense A; bit for bit sparsify24_transposed(to_dense(...), algo, sparse_cols) and
    to_dense(...)[:, dense_cols].t(). T % 4 == 0; the column lists are 1-D int64, any order.
    check_columns=False skips the range check of the column ids on CUDA (a host sync per call);
    only for lists that are valid by construction (relu2_ffn's feature split): on CUDA an
    out-of-range id is then clamped into range (rows of unspecified content, never memory outside
    the tensors). The CPU checks anyway."""
    _debug_check("sp24.sparse24_transposed_split", indices)
    return _ops.sparse24_transposed_split(values, indices, sparse_cols, dense_cols, algo, check_columns)


OP_NAMES = OP_NAMES + ("sparse24_transposed_split",)


# ---- the FP8 (e4m3) path (semantics: sp24.reference_fp8) -----------------------------------------
def sparsify24_fp8(x: Tensor, algo: str = "largest", activation: Optional[str] = None,
                   with_counts: bool = False) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """sparsify24 of x (M, K), its kept values quantised to e4m3 with one fp32 scale per row:
    (values (M, K/2) float8_e4m3fn, indices (M, K/2) uint8, scales (M,) float32, counts)."""
    return _ops.sparsify24_fp8(x, algo, activation, with_counts)


def sparsify24_transposed_fp8(x: Tensor, algo: str = "largest_abs",
                              columns: Optional[Tensor] = None) -> tuple[Tensor, Tensor, Tensor]:
    """sparsify24_transposed of x (T, N), its kept values quantised to e4m3 per row of the transposed
    operand: (values (C, T/2) float8_e4m3fn, indices (C, T/2) uint8, scales (C,) float32)."""
    return _ops.sparsify24_transposed_fp8(x, algo, columns)


def quantize_rows_fp8(x: Tensor) -> tuple[Tensor, Tensor]:
    """x (M, n) as e4m3 with one fp32 scale per row: (q (M, n) float8_e4m3fn, scales (M,))."""
    return _ops.quantize_rows_fp8(x)


def fp8_mm(values: Tensor, indices: Tensor, a_scales: Tensor, b: Tensor, b_scales: Tensor,
           bias: Optional[Tensor] = None, validate_scales: bool = True) -> Tensor:
    """(A * a_scales[:, None]) @ (b * b_scales[None, :]) (+ bias) in bf16, for the 2:4 e4m3 A (M, K)
    given as values/indices and b (K, N) e4m3, K-major (b.t() contiguous); b_scales (N,) or (1,);
    M, K, N multiples of 16. validate_scales refuses non-finite or non-positive scales."""
    _debug_check("sp24.sparse24_fp8_mm", indices)
    return _ops.sparse24_fp8_mm(values, indices, a_scales, b, b_scales, bias, validate_scales)


OP_NAMES = OP_NAMES + ("sparsify24_fp8", "sparsify24_transposed_fp8", "quantize_rows_fp8", "sparse24_fp8_mm")
