"""The FFN's FP8 path (relu2_ffn(..., fp8=True); docs/DESIGN.md, 'FP8').

Forward GEMMs in FP8 (e4m3, fp32 accumulation, bf16 results), the rest in bf16:
    Y1 = X W1^T (+b1)   dense FP8: X row-wise (one scale per token), W1 row-wise (per feature)
    Y2 = relu(Y1)^2     bf16, 2:4 as in the bf16 path; the kept values quantised row-wise
    Y3 = Y2 W2^T (+b2)  2:4 FP8 (sparse=True) or dense FP8 (sparse=False): Y2 row-wise, W2 with
                        one scale for the tensor (on CUDA the 2:4 GEMM's one alpha per row then
                        carries both scales: a single cuSPARSELt call with the bias fused)
Backward: the bf16 path's GEMMs (2:4 where it has them) on the bf16 Y2 the forward kept, so the
gradients are bf16 as in the paper. The FFN runs in bf16 inside (inputs cast there, differentiably;
the output is cast back to x's dtype).

Where FP8 runs: CPU (exact reference numerics: every product of two e4m3 values and their sum are
exact in fp64, rounded once to fp32 and once to bf16) and CUDA GPUs of compute capability 8.9 or
newer. On an older GPU relu2_ffn warns once and runs the bf16 path.
"""

from __future__ import annotations

import warnings
from typing import Optional

import torch
from torch import Tensor

from . import reference_fp8

_ops = torch.ops.sp24
COMPUTE_DTYPE = torch.bfloat16
_WARNED: set = set()


def available(device: torch.device) -> bool:
    """Whether FP8 GEMMs run on `device`: CPU (the exact reference arithmetic), or a CUDA GPU of
    compute capability 8.9 or newer."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_capability(device) >= (8, 9)
    return device.type in ("cpu", "meta")


def warn_unavailable(device: torch.device) -> None:
    key = str(device)
    if key in _WARNED:
        return
    _WARNED.add(key)
    cc = ".".join(map(str, torch.cuda.get_device_capability(device))) if device.type == "cuda" else device.type
    warnings.warn(f"sp24.relu2_ffn: fp8=True needs FP8 GEMMs (CUDA compute capability 8.9 or newer, or the CPU); "
                  f"{device} has {cc}: running the bf16 path instead (warned once per device)", stacklevel=3)


def quantize_tensor(w: Tensor) -> tuple[Tensor, Tensor]:
    """w as e4m3 with one fp32 scale (1,) for the whole tensor: the bits of the row rule on its
    (1, numel) view (sp24.reference_fp8.quantize_tensor), with a whole-tensor reduction and one
    elementwise pass (quantize_rows_fp8 would give one (1, numel) row to a single warp)."""
    if w.numel() == 0:
        q, s = _ops.quantize_rows_fp8(w.reshape(1, -1))
        return q.view(w.shape), s
    wf = w.float()
    amax = wf.abs().amax()  # exact in any order; NaN if w holds one
    scale = torch.clamp_min(amax / torch.full_like(amax, reference_fp8.E4M3_MAX), reference_fp8.SCALE_MIN)
    scale = torch.where(amax == 0, torch.ones_like(amax), scale)
    finite = torch.isfinite(amax)
    nan = torch.full_like(amax, 0).view(torch.int32).fill_(reference_fp8.SCALE_NAN_BITS).view(torch.float32)
    scale = torch.where(finite, scale, nan)
    q = reference_fp8.e4m3(wf / scale)
    q = torch.where(finite, q.view(torch.uint8), torch.full_like(q.view(torch.uint8), reference_fp8.E4M3_NAN_BITS))
    return q.view(reference_fp8.E4M3), scale.reshape(1)


def dense_mm(a: Tensor, a_scales: Tensor, b: Tensor, b_scales: Tensor, bias: Optional[Tensor]) -> Tensor:
    """The dense FP8 GEMM (a (M, K) e4m3 row scales (M,), b (K, N) e4m3 K-major with column scales
    (N,) or (1,)) in bf16: torch._scaled_mm with row-wise scales on CUDA (M, K, N multiples of 16),
    sp24.reference_fp8.dense_mm_fp8's exact arithmetic elsewhere."""
    if a.device.type != "cuda":
        return reference_fp8.dense_mm_fp8(a, a_scales, b, b_scales, bias)
    sb = b_scales.expand(b.shape[1]) if b_scales.numel() == 1 else b_scales
    return torch._scaled_mm(a, b, scale_a=a_scales.reshape(-1, 1).contiguous(), scale_b=sb.reshape(1, -1).contiguous(),
                            bias=bias, out_dtype=COMPUTE_DTYPE)


def linear(x2d: Tensor, w: Tensor, b: Optional[Tensor], per_tensor: bool) -> Tensor:
    """x2d (M, K) @ w.T (+ b) with x2d row-wise and w row-wise (or, per_tensor, one scale) in e4m3."""
    xq, xs = _ops.quantize_rows_fp8(x2d)
    wq, ws = quantize_tensor(w) if per_tensor else _ops.quantize_rows_fp8(w)
    return dense_mm(xq, xs, wq.t(), ws, b)


class _FP8Linear(torch.autograd.Function):
    """y = x2d @ w.T + b with an FP8 forward (linear()) and the bf16 backward: dx = dy w,
    dw = dy^T x, db = sum dy."""

    @staticmethod
    def forward(x2d, w, b, per_tensor):
        return linear(x2d, w, b, per_tensor)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x2d, w, b, _ = inputs
        ctx.save_for_backward(x2d, w)
        ctx.has_b = b is not None

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy):
        x2d, w = ctx.saved_tensors
        dx = dy @ w if ctx.needs_input_grad[0] else None
        dw = dy.t() @ x2d if ctx.needs_input_grad[1] else None
        db = dy.sum(0) if ctx.has_b and ctx.needs_input_grad[2] else None
        return dx, dw, db, None


def _pad16(x2d: Tensor) -> Tensor:
    pad = (-x2d.shape[0]) % 16  # torch._scaled_mm takes dims that are multiples of 16
    return torch.nn.functional.pad(x2d, (0, 0, 0, pad)) if pad else x2d


def dense_relu2_ffn(x: Tensor, w1: Tensor, w2: Tensor, b1: Optional[Tensor], b2: Optional[Tensor]) -> Tensor:
    """The dense FFN with the FP8 forward GEMMs (the same scaling as the 2:4 path), bf16 backward;
    x and the weights already in bf16."""
    d = w1.shape[1]
    x2d = x.reshape(-1, d)
    T = x2d.shape[0]
    y1 = _FP8Linear.apply(_pad16(x2d), w1, b1, False)
    y3 = _FP8Linear.apply(torch.relu(y1).square(), w2, b2, True)
    return y3[:T].reshape(*x.shape[:-1], w2.shape[0])


def forward_gemms(X: Tensor, w1: Tensor, b1: Optional[Tensor]):
    """Y1 of the 2:4 path's forward in FP8 (X the permuted, padded (Tp, d) tokens)."""
    return linear(X, w1, b1, False)


def sparse_mm(values: Tensor, indices: Tensor, w2: Tensor, b2: Optional[Tensor]) -> Tensor:
    """Y3 = Y2 W2^T (+ b2) of the 2:4 path in FP8 from the compressed bf16 Y2 (values, indices): the
    kept values quantised per token, W2 with one scale; NaN rows propagate (no scale check)."""
    q, s = _ops.quantize_rows_fp8(values)
    w2q, w2s = quantize_tensor(w2)
    return _ops.sparse24_fp8_mm(q, indices, s, w2q.t(), w2s, b2, False)
