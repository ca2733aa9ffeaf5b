"""The pure-PyTorch oracle: the semantics of every sp24 op, stated once.

Slow and obvious on purpose. Every kernel (CPU and CUDA) is tested against these functions;
masks, values (bit for bit) and indices must match exactly. The reasons behind each rule are in
docs/DESIGN.md, 'Semantics'.

2:4 selection (per group of 4 consecutive values along the last dim):
  * keep the 2 that rank highest; "largest" ranks by value, "largest_abs" by magnitude;
  * NaN ranks above every number (NaNs tie with each other); -0.0 == 0.0;
  * ties: the lower index wins.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .reference_cslt import (  # noqa: F401  (re-exported as sp24.reference.<name>)
    CSLT_LAYOUT_SOURCE, cslt_layout, cslt_meta_bytes, cslt_meta_offset, cslt_pack)

for _f in (cslt_layout, cslt_meta_bytes, cslt_meta_offset, cslt_pack):
    # documented, doctested and imported as sp24.reference.<name> (tests/test_docstrings.py walks the
    # functions whose __module__ is sp24.reference); their source is in sp24/reference_cslt.py
    _f.__module__ = __name__
del _f

_INT_VIEW = {torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16,
             torch.float8_e4m3fn: torch.uint8}

# The one NaN per dtype that sp24's arithmetic writes (relu2 and its backward): the quiet NaN NVIDIA
# GPUs produce (CUDA's CUDART_NAN_F / CUDART_NAN_FP16 / CUDART_NAN_BF16). A NaN that is only selected
# or moved keeps its bits. (csrc/sp24/select.h states the same, with the evidence.)
NAN_BITS = {torch.float32: 0x7FFFFFFF, torch.float16: 0x7FFF, torch.bfloat16: 0x7FFF}


def canonical_nan(y: Tensor) -> Tensor:
    """``y`` with every NaN replaced by the canonical NaN of its dtype, other bits unchanged.

    The canonical NaN (``NAN_BITS``) is what sp24's arithmetic writes on every backend; a NaN that
    is only selected or moved keeps its own bits.

    Args:
        y (Tensor): float32, float16 or bfloat16, any shape.

    Returns:
        Tensor: same shape and dtype as ``y`` (contiguous).

    Example::

        >>> nan = torch.tensor([-1], dtype=torch.int16).view(torch.bfloat16)   # 0xFFFF, a NaN
        >>> hex(sp24.reference.canonical_nan(nan).view(torch.int16).item() & 0xFFFF)
        '0x7fff'
    """
    bits = y.contiguous().view(_INT_VIEW[y.dtype])
    return bits.masked_fill(y.isnan(), NAN_BITS[y.dtype]).view(y.dtype)


def _sqrt_rn(y: Tensor) -> Tensor:
    # fp32 sqrt correctly rounded, as sqrtf (CUDA) and std::sqrt (CPU kernels) are: torch.sqrt on CPU
    # (torch 2.13, fp32, vectorised) is 1 ulp off for ~20% of inputs (19659 of 100000 uniform [0, 4)
    # values). A double sqrt rounded once to fp32 is the correctly rounded result (53 >= 2*24 + 2 bits).
    return y.double().sqrt().float()


def relu2(x: Tensor) -> Tensor:
    """Squared-ReLU ``relu(x) ** 2``, computed in fp32 and rounded once to ``x.dtype``.

    Args:
        x (Tensor): any shape, a floating dtype.

    Returns:
        Tensor: same shape and dtype as ``x``. A NaN input gives the canonical NaN (``NAN_BITS``); ``-inf`` gives 0, ``+inf`` gives ``+inf``.

    Example::

        >>> sp24.reference.relu2(torch.tensor([-1.0, 0.5, 3.0]))
        tensor([0.0000, 0.2500, 9.0000])
    """
    return canonical_nan(torch.relu(x.float()).square().to(x.dtype))


def select_mask(x: Tensor, algo: str = "largest") -> Tensor:
    """Kept positions of the row-wise 2:4 selection: the rule every kernel implements.

    In each group of 4 consecutive values of a row the 2 that rank highest are kept: NaN above
    every number (NaNs tie), then by value (``"largest"``) or magnitude (``"largest_abs"``);
    ``-0.0`` ties with ``0.0``; a tie goes to the lower index.

    Args:
        x (Tensor): (M, K), K a multiple of 4; fp32, fp16 or bf16.
        algo (str): ``"largest"`` (default) or ``"largest_abs"``.

    Returns:
        Tensor: (M, K) bool, exactly 2 True in every group of 4.

    Raises:
        ValueError: ``algo`` is not one of the two names.

    Example::

        >>> x = torch.tensor([[0.5, -2.0, 1.0, 3.0, 0.0, -0.0, 0.25, -1.0]])
        >>> sp24.reference.select_mask(x)
        tensor([[False, False,  True,  True,  True, False,  True, False]])
        >>> sp24.reference.select_mask(x, "largest_abs")
        tensor([[False,  True, False,  True, False, False,  True,  True]])
    """
    M, K = x.shape
    keys = x.float().reshape(M, K // 4, 4)
    if algo == "largest_abs":
        keys = keys.abs()
    elif algo != "largest":
        raise ValueError(f"algo must be 'largest' or 'largest_abs', got {algo!r}")
    nan = keys.isnan()
    kj, ki = keys.unsqueeze(-1), keys.unsqueeze(-2)  # [..., j, i]
    nj, ni = nan.unsqueeze(-1), nan.unsqueeze(-2)
    pos = torch.arange(4, device=x.device)
    j_before_i = pos.view(4, 1) < pos.view(1, 4)
    above = (nj & ~ni) | (~nj & ~ni & (kj > ki)) | (((nj & ni) | (kj == ki)) & j_before_i)
    above &= ~torch.eye(4, dtype=torch.bool, device=x.device)
    return (above.sum(dim=-2) < 2).reshape(M, K)


def mask_to_indices(mask: Tensor) -> Tensor:
    """Canonical indices of a 2:4 mask: the 2 kept positions of each group, increasing.

    Args:
        mask (Tensor): (M, K) bool with exactly 2 True in every group of 4.

    Returns:
        Tensor: (M, K/2) uint8 in 0..3.

    Example::

        >>> sp24.reference.mask_to_indices(torch.tensor([[False, True, False, True]]))
        tensor([[1, 3]], dtype=torch.uint8)
    """
    M, K = mask.shape
    g = mask.reshape(M, K // 4, 4)
    pos = torch.arange(4, device=mask.device, dtype=torch.int64)
    # kept positions sort first, in index order
    order = torch.argsort((~g).to(torch.int64) * 4 + pos, dim=-1)[..., :2]
    return order.reshape(M, K // 2).to(torch.uint8)


def indices_to_mask(indices: Tensor) -> Tensor:
    """The (M, K) bool mask of canonical 2:4 indices (the inverse of :func:`mask_to_indices`).

    Args:
        indices (Tensor): (M, K/2) uint8 in 0..3.

    Returns:
        Tensor: (M, K) bool.

    Example::

        >>> sp24.reference.indices_to_mask(torch.tensor([[1, 3]], dtype=torch.uint8))
        tensor([[False,  True, False,  True]])
    """
    M, H = indices.shape
    cols = _columns(indices)
    mask = torch.zeros(M, 2 * H, dtype=torch.bool, device=indices.device)
    return mask.scatter_(1, cols, True)


def _columns(indices: Tensor) -> Tensor:
    H = indices.shape[1]
    group = torch.arange(H, device=indices.device) // 2
    return group * 4 + indices.to(torch.int64)


def _gather_bits(x: Tensor, cols: Tensor) -> Tensor:
    # gather on an integer view: CPU gather may rewrite the bits of a bf16 NaN
    iv = _INT_VIEW[x.dtype]
    return torch.gather(x.contiguous().view(iv), 1, cols).view(x.dtype)


def sparsify24(x: Tensor, algo: str = "largest", activation: Optional[str] = None,
               with_counts: bool = False) -> tuple[Tensor, Tensor, Tensor]:
    """Oracle of ``torch.ops.sp24.sparsify24``: row-wise 2:4 of x, as values + indices.

    Args:
        x (Tensor): (M, K), K a multiple of 4; fp32, fp16 or bf16.
        algo (str): ``"largest"`` or ``"largest_abs"`` (see :func:`select_mask`).
        activation (str, optional): ``"relu2"`` applies :func:`relu2` first; the selection ranks
            the activated, rounded values.
        with_counts (bool): also count the non-zeros of every column of the (activated) input
            before the selection (NaN counts as non-zero).

    Returns:
        tuple[Tensor, Tensor, Tensor]: ``values`` (M, K/2) the kept values in index order with
        their exact bits, ``indices`` (M, K/2) uint8, and ``counts`` (K,) int32 (empty unless
        ``with_counts``).

    Raises:
        ValueError: an unknown ``activation`` or ``algo``.

    Example::

        >>> x = torch.tensor([[0.5, -2.0, 1.0, 3.0, 0.0, -0.0, 0.25, -1.0]])
        >>> values, indices, _ = sp24.reference.sparsify24(x)
        >>> values, indices
        (tensor([[1.0000, 3.0000, 0.0000, 0.2500]]), tensor([[2, 3, 0, 2]], dtype=torch.uint8))
    """
    if activation == "relu2":
        x = relu2(x)
    elif activation is not None:
        raise ValueError(f"activation must be None or 'relu2', got {activation!r}")
    indices = mask_to_indices(select_mask(x, algo))
    values = _gather_bits(x, _columns(indices))
    if with_counts:
        counts = (x != 0).sum(dim=0, dtype=torch.int32)  # NaN != 0: counts as non-zero
    else:
        counts = torch.empty(0, dtype=torch.int32, device=x.device)
    return values, indices, counts


def sparsify24_transposed(x: Tensor, algo: str = "largest_abs",
                          columns: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
    """Oracle of ``torch.ops.sp24.sparsify24_transposed``: 2:4 along the rows (tokens) of x.

    Args:
        x (Tensor): (T, N), T a multiple of 4.
        algo (str): ``"largest_abs"`` (default) or ``"largest"``.
        columns (Tensor, optional): (C,) int64 column numbers of x, in the order wanted.

    Returns:
        tuple[Tensor, Tensor]: ``values`` and ``indices`` (C or N, T/2) of ``x[:, columns].T``
        (or ``x.T``) sparsified along its last dim.

    Example::

        >>> x = torch.arange(16.0).view(4, 4)
        >>> values, indices = sp24.reference.sparsify24_transposed(x, columns=torch.tensor([3, 0]))
        >>> values
        tensor([[11., 15.],
                [ 8., 12.]])
    """
    iv = _INT_VIEW[x.dtype]  # select columns on an integer view: keep every bit (NaN payloads)
    xt = (x if columns is None else x.contiguous().view(iv)[:, columns].view(x.dtype)).t().contiguous()
    values, indices, _ = sparsify24(xt, algo)
    return values, indices


def apply(x: Tensor, indices: Tensor) -> Tensor:
    """Values of x at the positions of a given 2:4 pattern (``torch.ops.sp24.sparse24_apply``).

    Args:
        x (Tensor): (M, K).
        indices (Tensor): (M, K/2) uint8, canonical indices of the pattern.

    Returns:
        Tensor: (M, K/2), same dtype as x, exact bits.

    Example::

        >>> idx = torch.tensor([[2, 3, 0, 2]], dtype=torch.uint8)
        >>> sp24.reference.apply(torch.arange(8.0).view(1, 8), idx)
        tensor([[2., 3., 4., 6.]])
    """
    return _gather_bits(x, _columns(indices))


def apply_relu2_backward(grad: Tensor, y2_values: Tensor, indices: Tensor) -> Tensor:
    """Squared-ReLU backward on a 2:4 pattern: ``dY1 = dY2 * 2 * sqrt(Y2)`` on the kept positions.

    ``relu(Y1) = sqrt(Y2)`` where Y2 was kept, so the backward needs only the compressed Y2.
    Computed in fp32, one rounding to ``grad.dtype``.

    Args:
        grad (Tensor): (M, K) the gradient dY2 of the dense Y2.
        y2_values (Tensor): (M, K/2) the kept values of Y2 (from ``sparsify24(..., "relu2")``).
        indices (Tensor): (M, K/2) uint8, the forward pattern.

    Returns:
        Tensor: (M, K/2) the compressed dY1, dtype of ``grad``.

    Example::

        >>> idx = torch.tensor([[2, 3, 0, 2]], dtype=torch.uint8)
        >>> sp24.reference.apply_relu2_backward(torch.ones(1, 8), torch.tensor([[4.0, 9.0, 1.0, 0.25]]), idx)
        tensor([[4., 6., 2., 1.]])
    """
    g = apply(grad, indices).float()
    return canonical_nan((g * (2.0 * _sqrt_rn(y2_values.float()))).to(grad.dtype))


def to_dense(values: Tensor, indices: Tensor) -> Tensor:
    """The dense (M, K) matrix of a 2:4 (values, indices) pair; dropped positions are +0.0.

    Args:
        values (Tensor): (M, K/2) kept values.
        indices (Tensor): (M, K/2) uint8 canonical indices.

    Returns:
        Tensor: (M, K), dtype of ``values``, the kept values with their exact bits.

    Example::

        >>> idx = torch.tensor([[2, 3]], dtype=torch.uint8)
        >>> sp24.reference.to_dense(torch.tensor([[1.0, 3.0]]), idx)
        tensor([[0., 0., 1., 3.]])
    """
    M, H = values.shape
    iv = _INT_VIEW[values.dtype]
    out = torch.zeros(M, 2 * H, dtype=iv, device=values.device)
    return out.scatter_(1, _columns(indices), values.contiguous().view(iv)).view(values.dtype)


def mm(values: Tensor, indices: Tensor, b: Tensor, bias: Optional[Tensor] = None,
       out_dtype: Optional[torch.dtype] = None) -> Tensor:
    """``A @ b (+ bias)`` for a 2:4 A given by (values, indices): fp32 accumulation, one rounding.

    Args:
        values (Tensor): (M, K/2) kept values of A.
        indices (Tensor): (M, K/2) uint8 canonical indices of A.
        b (Tensor): (K, N) dense.
        bias (Tensor, optional): (N,), added in fp32 before the rounding.
        out_dtype (torch.dtype, optional): result dtype (default: that of ``values``).

    Returns:
        Tensor: (M, N).

    Example::

        >>> idx = torch.tensor([[2, 3]], dtype=torch.uint8)
        >>> sp24.reference.mm(torch.tensor([[1.0, 3.0]]), idx, torch.ones(4, 2))
        tensor([[4., 4.]])
    """
    out = to_dense(values, indices).float() @ b.float()
    if bias is not None:
        out = out + bias.float()
    return out.to(out_dtype or values.dtype)


def sparsify24_dense(x: Tensor, algo: str = "largest", activation: Optional[str] = None) -> Tensor:
    """Row-wise 2:4 of x as a dense (M, K) tensor: kept values in place, dropped ones +0.0.

    Args:
        x (Tensor): (M, K), K a multiple of 4.
        algo (str): ``"largest"`` or ``"largest_abs"``.
        activation (str, optional): ``"relu2"`` or None, as in :func:`sparsify24`.

    Returns:
        Tensor: (M, K), dtype of x.

    Example::

        >>> sp24.reference.sparsify24_dense(torch.tensor([[0.5, -2.0, 1.0, 3.0]]))
        tensor([[0., 0., 1., 3.]])
    """
    values, indices, _ = sparsify24(x, algo, activation)
    return to_dense(values, indices)


# ---- oracles of the ops that make a GEMM-ready buffer (the layouts: sp24.reference_cslt) ----------
def sparsify24_cslt(x: Tensor, algo: str = "largest", activation: Optional[str] = None,
                    with_counts: bool = False) -> tuple[Tensor, Tensor, Tensor]:
    """Oracle of ``torch.ops.sp24.sparsify24_cslt`` on CPU: sparsify24 plus the packed buffer.

    Args:
        x (Tensor): (M, K), K a multiple of 4.
        algo (str): ``"largest"`` or ``"largest_abs"``.
        activation (str, optional): ``"relu2"`` or None.
        with_counts (bool): also return the per-column non-zero counts.

    Returns:
        tuple[Tensor, Tensor, Tensor]: ``(cslt_pack(values, indices), indices, counts)`` of
        :func:`sparsify24`. (On CUDA the buffer is cuSPARSELt's layout of the same values.)

    Example::

        >>> buf, idx, _ = sp24.reference.sparsify24_cslt(torch.randn(64, 32).half())
        >>> buf.dtype, idx.shape
        (torch.uint8, torch.Size([64, 16]))
    """
    values, indices, counts = sparsify24(x, algo, activation, with_counts)
    return cslt_pack(values, indices), indices, counts


def cslt_mm(values: Tensor, indices: Tensor, b: Tensor, bias: Optional[Tensor] = None,
            out_dtype: Optional[torch.dtype] = None, transpose_result: bool = False) -> Tensor:
    """What ``sparse24_cslt_mm(sparse24_cslt_compress(values, indices), ...)`` computes.

    Args:
        values (Tensor): (M, K/2) kept values of A.
        indices (Tensor): (M, K/2) uint8 canonical indices of A.
        b (Tensor): (K, N) dense.
        bias (Tensor, optional): (N,).
        out_dtype (torch.dtype, optional): result dtype (default: that of ``values``).
        transpose_result (bool): return the (N, M) transpose, contiguous.

    Returns:
        Tensor: (M, N), or (N, M) with ``transpose_result``.

    Example::

        >>> idx = torch.tensor([[2, 3]], dtype=torch.uint8)
        >>> sp24.reference.cslt_mm(torch.tensor([[1.0, 3.0]]), idx, torch.ones(4, 2), transpose_result=True)
        tensor([[4.],
                [4.]])
    """
    out = mm(values, indices, b, bias, out_dtype)
    return out.t().contiguous() if transpose_result else out


# ---- oracle of sparse24_transposed_split (the FFN backward's feature split) ---------------------
def transposed_split(values: Tensor, indices: Tensor, sparse_cols: Tensor, dense_cols: Tensor,
                     algo: str = "largest_abs") -> tuple[Tensor, Tensor, Tensor]:
    """Oracle of ``sparse24_transposed_split``, the FFN backward's feature split.

    For the row-wise 2:4 A = ``to_dense(values, indices)`` (T, F): the token-wise 2:4 of the
    ``sparse_cols`` features and the dense transpose of the ``dense_cols`` features.

    Args:
        values (Tensor): (T, F/2) kept values of A; T a multiple of 4.
        indices (Tensor): (T, F/2) uint8 canonical indices of A.
        sparse_cols (Tensor): (Cs,) int64 features that go through the token-wise 2:4 GEMM.
        dense_cols (Tensor): (Cd,) int64 features that stay dense.
        algo (str): ranking of the token-wise selection (default ``"largest_abs"``).

    Returns:
        tuple[Tensor, Tensor, Tensor]: ``tvalues``, ``tindices`` (Cs, T/2) and ``dense_t``
        (Cd, T), exact bits (dropped positions of A read as +0.0).

    Example::

        >>> v, i, _ = sp24.reference.sparsify24(torch.arange(16.0).view(4, 4))
        >>> tv, ti, dense_t = sp24.reference.transposed_split(v, i, torch.tensor([2, 3]), torch.tensor([0, 1]))
        >>> tv.shape, dense_t.shape
        (torch.Size([2, 2]), torch.Size([2, 4]))
    """
    a = to_dense(values, indices)
    tvalues, tindices = sparsify24_transposed(a, algo, sparse_cols)
    iv = _INT_VIEW[a.dtype]  # select columns on an integer view: keep every bit (NaN payloads)
    dense_t = a.view(iv)[:, dense_cols].t().contiguous().view(a.dtype)
    return tvalues, tindices, dense_t
