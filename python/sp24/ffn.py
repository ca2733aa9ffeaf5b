"""The Squared-ReLU FFN with 2:4 activation sparsity, forward and backward (docs/DESIGN.md, 'The method').

    Y1 = X W1^T (+b1)   dense
    Y2 = relu(Y1)^2     fused with the row-wise 2:4 sparsification (+ per-feature counts)
    Y3 = Y2 W2^T (+b2)  2:4 GEMM

Backward (the paper's recipe):
    dY2 = dY3 W2                              dense
    dY1 = dY2 * 2 sqrt(Y2) on the forward mask sparse24_apply_relu2_backward (compressed Y2)
    dX  = dY1 W1                              2:4 GEMM, the forward pattern
    dW2 = dY3^T Y2, dW1 = dY1^T X             feature split: the densest `dense_fraction` of the
                                              features (ranked by the forward's counts, ties by
                                              index) dense; the rest 2:4 along the tokens (fused
                                              sparsify-transpose, "largest_abs") and the 2:4 GEMM;
                                              both sides in one pass over the compressed Y2 / dY1
                                              (sparse24_transposed_split, no dense (T, F) copy)

Inside the FFN the tokens are permuted by a fixed seeded permutation (one per token count), so
a token-direction group of 4 is not 4 neighbours of one sequence; the FFN is row-wise, so this is
exact for the forward and only changes which token-direction 2:4 groups the backward forms.
The (permuted) tokens are padded at the end to a multiple of 16 (TOKEN_ALIGN) whose Y2 and dY1
rows are zero (with a bias b1 the padded Y2 rows are zeroed and removed from the counts): a zero
row adds nothing to a product and cannot take a 2:4 slot from a real token's non-zero value.
The number of dense features is n_dense_features(F, dense_fraction) (the sparse ones a multiple
of 16, for cuSPARSELt).

Saved for backward: x (the input itself, not a permuted copy), the weights, the compressed Y2
(values + uint8 indices, padded token count), the int32 per-feature counts and the permutation;
never the dense Y1, since relu(Y1) = sqrt(Y2) on the kept positions (saved_bytes measures it).

Shapes: x (..., d), w1 (F, d), w2 (d, F) (nn.Linear layout); any number of tokens. sparse=True
needs d and F to be multiples of 8 (docs/DESIGN.md, 'Public API'; a clear error otherwise, no hidden
weight padding, which would copy both weights on every call). cuSPARSELt serves dims that are
multiples of 16: with d or F = 8 mod 16 the 2:4 GEMMs stay correct but run as dense GEMMs
inside sparse24_mm (it warns once).

Mixed precision: under torch.autocast the sparse path runs entirely in the autocast dtype (like
torch.amp.custom_fwd(cast_inputs=...)); fp32 master weights receive fp32 gradients.
"""

from __future__ import annotations

import contextlib
import math
from typing import Callable, Optional

import torch
import torch.nn.functional as F_
from torch import Tensor

from . import _checks, _fallback, _fp8
from ._fallback import fallback  # noqa: F401  (public: sp24.ffn.fallback(False))
from ._ffn_autograd import (  # noqa: F401  (public names of sp24.ffn, and what tests inspect)
    _PERM_CACHE, PERMUTATION_SEED, TOKEN_ALIGN, _make_permutation, _SparseReLU2FFN, apply_ffn, feature_split,
    token_permutation)

__all__ = ["relu2_ffn", "dense_relu2_ffn", "saved_bytes", "token_permutation", "fallback",
           "feature_split", "n_dense_features"]


# --------------------------------------------------------------------------------------------
# dense baseline


def dense_relu2_ffn(x: Tensor, w1: Tensor, w2: Tensor, b1: Optional[Tensor] = None,
                    b2: Optional[Tensor] = None) -> Tensor:
    """The plain PyTorch Squared-ReLU FFN: linear, relu, square, linear (the dense baseline)."""
    return F_.linear(torch.relu(F_.linear(x, w1, b1)).square(), w2, b2)


# --------------------------------------------------------------------------------------------
# options of the sparse path


_DEFAULT_OPTIONS = ("24sparse", True)  # (gradient, sparse_backward) of relu2_ffn
GRADIENTS = ("24sparse", "ste")


def n_dense_features(F: int, dense_fraction: float) -> int:
    """How many features take the dense weight-gradient GEMM: F - Fs, where Fs (the token-direction
    2:4 features) is F * (1 - dense_fraction) rounded to a multiple of 16 (cuSPARSELt serves
    2:4 operands whose dims are multiples of 16), at most F rounded down to a multiple of 16."""
    fs = math.floor(F * (1.0 - dense_fraction) / 16.0 + 0.5) * 16
    return F - max(0, min(fs, F - F % 16))


# --------------------------------------------------------------------------------------------
# public entry point


def _autocast_dtype(x) -> Optional[torch.dtype]:
    # is_autocast_enabled raises for device types without autocast (e.g. meta). Not
    # torch.amp.is_autocast_available: torch 2.11's dynamo cannot trace it (fullgraph compile breaks)
    if isinstance(x, Tensor) and x.device.type != "meta" and torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return None


def _check(x, w1, w2, b1, b2, sparse: bool, dense_fraction: float, same_dtype: bool = True) -> None:
    op = "sp24.relu2_ffn"
    for name, t in (("x", x), ("w1", w1), ("w2", w2)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
    for name, t in (("b1", b1), ("b2", b2)):
        if t is not None and not isinstance(t, Tensor):
            raise TypeError(f"{op}: {name} must be a torch.Tensor or None, got {type(t).__name__}")
    if x.dim() < 1:
        raise ValueError(f"{op}: x must have shape (..., d), got a 0-D tensor")
    if w1.dim() != 2 or w2.dim() != 2:
        raise ValueError(f"{op}: w1 (F, d) and w2 (d, F) must be 2-D (nn.Linear layout), got shapes "
                         f"{tuple(w1.shape)} and {tuple(w2.shape)}")
    Fh, d = w1.shape
    if x.shape[-1] != d or tuple(w2.shape) != (d, Fh):
        raise ValueError(f"{op}: shapes do not match: x {tuple(x.shape)} must be (..., d), w1 (F, d) and "
                         f"w2 (d, F); got w1 {tuple(w1.shape)} and w2 {tuple(w2.shape)}")
    if b1 is not None and tuple(b1.shape) != (Fh,):
        raise ValueError(f"{op}: b1 must have shape ({Fh},), got {tuple(b1.shape)}")
    if b2 is not None and tuple(b2.shape) != (d,):
        raise ValueError(f"{op}: b2 must have shape ({d},), got {tuple(b2.shape)}")
    for name, t in (("w1", w1), ("w2", w2), ("b1", b1), ("b2", b2)):
        if t is None:
            continue
        if same_dtype and t.dtype != x.dtype:
            raise TypeError(f"{op}: {name}.dtype must equal x.dtype ({x.dtype}), got {t.dtype}")
        if t.device != x.device:
            raise ValueError(f"{op}: x and {name} must be on the same device, got {x.device} and {t.device}")
    if not sparse:
        return
    if x.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise TypeError(f"{op}: sparse=True needs torch.float16, torch.bfloat16 or torch.float32, got {x.dtype}; "
                        f"cast the inputs or use sparse=False")
    if d % 8 or Fh % 8:
        raise ValueError(f"{op}: sparse=True needs d and F to be multiples of 8, got d={d}, F={Fh}; pad the "
                         f"weights with zero rows/columns to a multiple of 8 or use sparse=False")


def _check_options(x, sparse, permute_tokens, dense_fraction, sparse_backward, gradient, op="sp24.relu2_ffn"):
    """relu2_ffn's options, checked (sparse, permute_tokens, dense_fraction, sparse_backward), in this
    order, then gradient and x's dtype class; errors name op."""
    sparse = _checks.check_bool(op, "sparse", sparse)  # sparse="False" would be truthy: refuse it
    permute_tokens = _checks.check_bool(op, "permute_tokens", permute_tokens)
    dense_fraction = _checks.check_fraction(op, "dense_fraction", dense_fraction)
    sparse_backward = _checks.check_bool(op, "sparse_backward", sparse_backward)
    if not isinstance(gradient, str) or gradient not in GRADIENTS:
        raise ValueError(f"{op}: gradient must be '24sparse' (the forward's 2:4 pattern masks dY1) or "
                         f"'ste' (straight-through), got {gradient!r}")
    if isinstance(x, Tensor) and not x.is_floating_point():
        raise TypeError(f"{op}: x must be a floating-point tensor, got {x.dtype}")
    return sparse, permute_tokens, dense_fraction, sparse_backward


def _sparse_relu2_ffn(x: Tensor, w1: Tensor, w2: Tensor, b1: Optional[Tensor], b2: Optional[Tensor],
                      dense_fraction: float, permute_tokens: bool, gradient: str, sparse_backward: bool,
                      amp: Optional[torch.dtype], fp8: bool = False) -> Tensor:
    """relu2_ffn(sparse=True) on checked inputs (already in the autocast dtype ``amp``, if any): the
    automatic dense fallback, else the 2:4 autograd Function on the tokens as one (T, d) matrix
    (fp8: its forward GEMMs in FP8, the inputs already in bf16)."""
    d, Fh = w1.shape[1], w1.shape[0]
    x2d = x.reshape(-1, d)
    T = x2d.shape[0]
    backward = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, w1, w2, b1, b2))
    if _fallback.use_dense(x.device, T, d, Fh, x.dtype, backward):
        return _fp8.dense_relu2_ffn(x, w1, w2, b1, b2) if fp8 else dense_relu2_ffn(x, w1, w2, b1, b2)
    if x2d.stride(-1) != 1:
        x2d = x2d.contiguous()
    n_dense = n_dense_features(Fh, dense_fraction)
    perm = inv_perm = None
    if permute_tokens and T > 1:
        perm, inv_perm = token_permutation(T, x.device)
    args = (x2d, w1, w2, b1, b2, perm, inv_perm, n_dense, (*x.shape[:-1], d), backward,
            (gradient, bool(sparse_backward), fp8, 0))
    if amp is not None:
        with torch.autocast(x.device.type, enabled=False):
            return apply_ffn(*args)[0]
    return apply_ffn(*args)[0]


def _fp8_relu2_ffn(x, w1, w2, b1, b2, sparse, dense_fraction, permute_tokens, gradient, sparse_backward, amp):
    """relu2_ffn(fp8=True): the FFN in bf16 inside (differentiable casts, the output back in x's or
    the autocast dtype) with its forward GEMMs in FP8 (sp24._fp8)."""
    out_dtype = amp or x.dtype
    bf = _fp8.COMPUTE_DTYPE
    x, w1, w2, b1, b2 = (t.to(bf) if isinstance(t, Tensor) and t.is_floating_point() else t
                          for t in (x, w1, w2, b1, b2))
    _check(x, w1, w2, b1, b2, True, dense_fraction)
    d, Fh = w1.shape[1], w1.shape[0]
    if d % 16 or Fh % 16:
        raise ValueError(f"sp24.relu2_ffn: fp8=True needs d and F to be multiples of 16 (the FP8 GEMMs' rule), got "
                         f"d={d}, F={Fh}; pad the weights with zero rows/columns or use fp8=False")
    with torch.autocast(x.device.type, enabled=False) if amp is not None else contextlib.nullcontext():
        if sparse:
            out = _sparse_relu2_ffn(x, w1, w2, b1, b2, dense_fraction, permute_tokens, gradient, sparse_backward,
                                    None, fp8=True)
        else:
            out = _fp8.dense_relu2_ffn(x, w1, w2, b1, b2)
    return out.to(out_dtype)


def _fp8_wanted(x, fp8) -> bool:
    """fp8 checked; True where it runs (else, on a GPU without FP8, one warning and the bf16 path)."""
    if not _checks.check_bool("sp24.relu2_ffn", "fp8", fp8) or not isinstance(x, Tensor):
        return False
    if _fp8.available(x.device):
        return True
    _fp8.warn_unavailable(x.device)
    return False


def relu2_ffn(x: Tensor, w1: Tensor, w2: Tensor, b1: Optional[Tensor] = None, b2: Optional[Tensor] = None,
              *, sparse: bool = True, dense_fraction: float = 0.05, permute_tokens: bool = True,
              gradient: str = "24sparse", sparse_backward: bool = True, fp8: bool = False) -> Tensor:
    """Differentiable Squared-ReLU FFN ``relu(x @ w1.T + b1) ** 2 @ w2.T + b2`` with 2:4 activations.

    ``sparse=True`` runs the forward GEMM ``Y2 @ w2.T`` on the row-wise 2:4 of Y2 and the backward
    with the forward's pattern, the token-wise 2:4 weight-gradient GEMMs, the feature split and
    the token permutation (docs/DESIGN.md, 'The six GEMMs'); it saves only the compressed Y2 for
    the backward. ``sparse=False`` is exactly the plain PyTorch FFN (:func:`dense_relu2_ffn`).
    On CUDA, ``sparse=True`` runs dense for shapes where 2:4 does not pay (the automatic
    fallback of docs/DESIGN.md, 'Beyond the paper'; ``sp24.ffn.fallback(False)`` or
    ``SP24_FFN_FALLBACK=0`` turns it off). Under ``torch.autocast`` the sparse path runs in the
    autocast dtype. A NaN/Inf in a token's input makes that token's output and ``dx`` non-finite,
    as in the dense FFN (docs/DESIGN.md, 'NaN and Inf in training').

    Defaults differ on purpose: ``sparse=True`` here, but :class:`sp24.nn.ReLU2FFN` starts with
    ``sparse=False`` (dense warm-up first, then ``sp24.nn.set_sparse``).

    ``torch.func``: ``grad`` and ``vjp`` work; ``vmap`` over ``x`` runs one call on the whole batch
    (forward bit for bit the per-sample result); vmap over the weights or over a gradient raises
    NotImplementedError in sparse mode (dense mode is plain PyTorch). No double backward (sparse).

    Args:
        x (Tensor): (..., d) input, any number of tokens (leading dims); fp32, fp16 or bf16.
        w1 (Tensor): (F, d) first weight (``nn.Linear(d, F).weight``), dtype and device of x.
        w2 (Tensor): (d, F) second weight (``nn.Linear(F, d).weight``).
        b1 (Tensor, optional): (F,) first bias.
        b2 (Tensor, optional): (d,) second bias.
        sparse (bool): 2:4 forward and backward (default) or the exact dense FFN.
        dense_fraction (float): in [0, 1]; share of the features, the densest ones, whose weight
            gradients stay dense (default 0.05).
        permute_tokens (bool): the fixed token permutation inside the FFN (default True); it only
            changes which tokens the backward's token-wise 2:4 groups together.
        gradient (str): ``"24sparse"`` (default): dY1 = dY2 * 2 relu(Y1) on the forward's 2:4
            pattern only, the values the forward dropped get no gradient (the paper's recipe);
            ``"ste"``: straight-through, dY1 at every position (dX is then a dense GEMM, and the
            dense Y1 is saved for backward: T*F more elements of saved activations).
        sparse_backward (bool): True (default): the weight gradients' 2:4 along the tokens with
            the feature split; False: 2:4 in the forward only, the backward's GEMMs dense (the exact
            gradient of the 2:4 forward with ``gradient="24sparse"``).
        fp8 (bool): the forward GEMMs in FP8 e4m3, the rest bf16 (docs/DESIGN.md, 'FP8'), also with
            ``sparse=False`` (the FP8 dense baseline); d, F multiples of 16. Below sm_89: one warning, bf16.

    Returns:
        Tensor: (..., d), dtype of x (the autocast dtype under autocast).

    Raises:
        TypeError: a non-tensor argument, mismatched dtypes, or (sparse) a dtype other than
            fp32/fp16/bf16.
        ValueError: shapes that do not chain (x (..., d), w1 (F, d), w2 (d, F)), tensors on
            different devices, ``dense_fraction`` outside [0, 1], or (sparse) d or F not a
            multiple of 8.
        NotImplementedError: the torch.func cases above (sparse mode).

    Example::

        >>> x = torch.randn(32, 16, requires_grad=True)
        >>> w1, w2 = torch.randn(64, 16), torch.randn(16, 64)
        >>> y = sp24.relu2_ffn(x, w1, w2, sparse=True)
        >>> y.shape
        torch.Size([32, 16])
        >>> y.sum().backward()
        >>> x.grad.shape
        torch.Size([32, 16])
    """
    sparse, permute_tokens, dense_fraction, sparse_backward = _check_options(
        x, sparse, permute_tokens, dense_fraction, sparse_backward, gradient)
    amp = _autocast_dtype(x)
    if _fp8_wanted(x, fp8):
        return _fp8_relu2_ffn(x, w1, w2, b1, b2, sparse, dense_fraction, permute_tokens, gradient, sparse_backward, amp)
    if not sparse:
        _check(x, w1, w2, b1, b2, False, dense_fraction, same_dtype=amp is None)
        return dense_relu2_ffn(x, w1, w2, b1, b2)
    if amp is not None:
        # as torch.amp.custom_fwd(cast_inputs=...) does: run the whole FFN in the autocast dtype;
        # the casts are differentiable, so fp32 master weights get fp32 gradients
        x, w1, w2, b1, b2 = (t.to(amp) if isinstance(t, Tensor) and t.is_floating_point() else t
                              for t in (x, w1, w2, b1, b2))
    _check(x, w1, w2, b1, b2, sparse, dense_fraction)
    return _sparse_relu2_ffn(x, w1, w2, b1, b2, dense_fraction, permute_tokens, gradient, sparse_backward, amp)


# --------------------------------------------------------------------------------------------
# saved activation memory


def saved_bytes(fn: Callable[..., Tensor], *args, exclude: tuple = (), **kwargs) -> int:
    """Bytes of the distinct storages autograd saves for backward while running fn(*args, **kwargs).

    Tensors sharing a storage (views) count once, with the whole storage. Storages of the tensors
    in `exclude` (typically the weights and biases, which exist anyway) are not counted; the
    input x is counted. Runs fn once with grad enabled and discards the result.
    """
    skip = {t.untyped_storage().data_ptr() for t in exclude if isinstance(t, Tensor)}
    seen: dict = {}

    def pack(t: Tensor):
        s = t.untyped_storage()
        if s.data_ptr() not in skip:
            seen[s.data_ptr()] = s.nbytes()
        return t

    with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn(*args, **kwargs)
    del out
    return sum(seen.values())
