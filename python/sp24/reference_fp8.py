"""The pure-PyTorch oracle of sp24's FP8 path: e4m3 2:4 activations with row-wise scales.

Stated once here (docs/DESIGN.md, 'FP8'); every backend gives these bits (the CUDA GEMMs agree
within fp32-accumulation tolerance, like the 16-bit ones).

* **e4m3** is torch.float8_e4m3fn (finite: no Inf; NaN = S.1111.111). A float is rounded to nearest,
  ties to even, and **saturates**: a magnitude past 448 (Inf included) becomes +-448. NaN becomes
  0x7F with its sign bit. (torch's own cast does not saturate, so `e4m3` clamps first.)
* **Row scale** of a row of values v (fp32, exact from the input dtype): amax = max |v|; scale =
  max(amax / 448, 2^-126) in fp32 (no subnormal scale: rows below 448 * 2^-126 get 2^-126, so
  every value / scale stays within +-448); a row whose amax is 0 (or that has no values) gets 1.
* **Quantised values**: q = e4m3(v / scale), the division in fp32.
* **Non-finite rows**: a row whose amax is not finite (a kept NaN or +-Inf) gets scale NaN
  (0x7FFFFFFF) and all its values NaN (0x7F). Its product row is then NaN, where the dense FFN's is
  non-finite; other rows are untouched.
* **GEMM**: D[i, j] = round_bf16(round_fp32(acc[i, j] * a_scale[i] * b_scale[j] + bias[j])) with
  acc = sum_k A_q[i, k] * B_q[k, j] of the dequantised e4m3 values. Here acc and the scaling are
  computed in fp64: every product of two e4m3 values is a multiple of 2^-18 below 2^18, so their
  fp64 sum is exact up to K = 2^17 in any order; the result is rounded once to fp32, then to bf16; a
  GPU's fp32 accumulation agrees within its tolerance.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from . import reference

E4M3 = torch.float8_e4m3fn
E4M3_MAX = 448.0
SCALE_NAN_BITS = 0x7FFFFFFF  # the scale of a non-finite row (sp24's canonical fp32 NaN)
SCALE_MIN = 2.0 ** -126  # the smallest scale: the smallest normal float
E4M3_NAN_BITS = 0x7F


def e4m3(x: Tensor) -> Tensor:
    """fp32 -> float8_e4m3fn: round to nearest even, saturating to +-448, NaN -> 0x7F with its sign."""
    return x.float().clamp(-E4M3_MAX, E4M3_MAX).to(E4M3)


def row_scales(v: Tensor) -> Tensor:
    """(M,) fp32 scales of the rows of v (M, n): amax / 448; 1 for an all-zero or empty row; NaN
    (0x7FFFFFFF) for a row with a non-finite value."""
    v = v.float()
    if v.shape[-1] == 0:
        return torch.ones(v.shape[:-1], dtype=torch.float32, device=v.device)
    amax = v.abs().amax(dim=-1)
    # true division by a tensor (a CPU-scalar divisor is a multiplication by its reciprocal on CUDA)
    scale = amax / torch.full_like(amax, E4M3_MAX)
    scale = torch.clamp_min(scale, SCALE_MIN)  # no subnormal scale (rows below 448 * 2^-126)
    scale = torch.where(amax == 0, torch.ones_like(amax), scale)
    nan = torch.tensor(SCALE_NAN_BITS, dtype=torch.int32, device=v.device).view(torch.float32)
    return torch.where(torch.isfinite(amax), scale, nan)


def quantize_rows(v: Tensor) -> tuple[Tensor, Tensor]:
    """(q, scales): v (M, n) as e4m3 values q (M, n) with one fp32 scale per row (M,)."""
    scales = row_scales(v)
    q = e4m3(v.float() / scales.unsqueeze(-1))
    bad = ~torch.isfinite(scales)
    if bool(bad.any()):
        nan = torch.full((), E4M3_NAN_BITS, dtype=torch.uint8, device=v.device).view(E4M3)
        q = torch.where(bad.unsqueeze(-1), nan, q)
    return q, scales


def dequantize_rows(q: Tensor, scales: Tensor) -> Tensor:
    """q.float() * scale of its row, in fp32 (exact unless it under- or overflows fp32)."""
    return q.float() * scales.float().unsqueeze(-1)


def sparsify24_fp8(x: Tensor, algo: str = "largest", activation: Optional[str] = None,
                   with_counts: bool = False) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(values, indices, scales, counts): sparsify24's selection of x (M, K) (the kept values of
    the activated input rounded to x.dtype), then its kept values quantised per row
    (quantize_rows)."""
    v, idx, counts = reference.sparsify24(x, algo, activation, with_counts)
    q, scales = quantize_rows(v)
    return q, idx, scales, counts


def sparsify24_transposed_fp8(x: Tensor, algo: str = "largest_abs",
                              columns: Optional[Tensor] = None) -> tuple[Tensor, Tensor, Tensor]:
    """(values, indices, scales): sparsify24_transposed's 2:4 along the tokens of x[:, columns].T,
    its kept values quantised per row of that transposed operand (quantize_rows)."""
    v, idx = reference.sparsify24_transposed(x, algo, columns)
    q, scales = quantize_rows(v)
    return q, idx, scales


def to_dense_fp8(values: Tensor, indices: Tensor) -> Tensor:
    """The dense e4m3 (M, K) of a 2:4 e4m3 matrix: its values at the kept positions, +0 elsewhere."""
    return reference.to_dense(values, indices)


def mm_fp8(values: Tensor, indices: Tensor, a_scales: Tensor, b: Tensor, b_scales: Tensor,
           bias: Optional[Tensor] = None) -> Tensor:
    """A @ B (+ bias) in bf16, A the 2:4 e4m3 (M, K) in canonical form (values, indices) with row
    scales a_scales (M,), B (K, N) e4m3 with column scales b_scales (N,) or one scale (1,)."""
    return dense_mm_fp8(to_dense_fp8(values, indices), a_scales, b, b_scales, bias)


def dense_mm_fp8(a: Tensor, a_scales: Tensor, b: Tensor, b_scales: Tensor, bias: Optional[Tensor] = None) -> Tensor:
    """The dense FP8 GEMM: a (M, K) e4m3 with row scales (M,), b (K, N) e4m3 with column scales
    (N,) or one scale (1,); the same rounding as mm_fp8."""
    acc = a.double() @ b.double()
    acc *= a_scales.double().unsqueeze(-1)  # in place: the same operations, fewer (M, N) temporaries
    acc *= b_scales.double().reshape(1, -1)
    if bias is not None:
        acc += bias.double()
    return acc.float().to(torch.bfloat16)


def quantize_tensor(w: Tensor) -> tuple[Tensor, Tensor]:
    """w as e4m3 with one scale (1,) for the whole tensor: the row rule on its (1, numel) view."""
    q, s = quantize_rows(w.reshape(1, -1))
    return q.view(w.shape), s


def ffn_forward(x: Tensor, w1: Tensor, w2: Tensor, b1: Optional[Tensor] = None, b2: Optional[Tensor] = None,
                perm: Optional[Tensor] = None, sparse: bool = True) -> dict:
    """The FP8 FFN's forward (sp24.relu2_ffn(fp8=True)) for bf16 x (T, d) and bf16 weights, with the
    intermediates of sp24.reference_ffn.forward (X, y1, y2_full, m_row, y2, out):
      Y1 = X W1^T + b1 (X per token, W1 per feature in e4m3);  Y2 = relu(Y1)^2, its row-wise 2:4
      when sparse;  out = Y2 W2^T + b2 (Y2 per token, W2 with one scale), bf16."""
    X = x if perm is None else x[perm]
    xq, xs = quantize_rows(X)
    w1q, w1s = quantize_rows(w1)
    y1 = dense_mm_fp8(xq, xs, w1q.t(), w1s, b1)
    y2_full = reference.relu2(y1)
    m_row = reference.select_mask(y2_full, "largest") if sparse else torch.ones_like(y2_full, dtype=torch.bool)
    y2 = torch.where(m_row, y2_full, torch.zeros_like(y2_full))
    q, s = quantize_rows(y2)  # the row amax of the kept values: the dropped ones are 0
    w2q, w2s = quantize_tensor(w2)
    y3 = dense_mm_fp8(q, s, w2q.t(), w2s, b2)
    out = y3 if perm is None else torch.empty_like(y3).index_copy_(0, perm, y3)
    return {"X": X, "y1": y1, "y2_full": y2_full, "m_row": m_row, "y2": y2, "out": out}
