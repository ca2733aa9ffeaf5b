"""The thin public API over torch.ops.sp24 (docs/DESIGN.md, 'Public API')."""

from __future__ import annotations

import math
import numbers
from typing import Optional, Sequence, Union

import torch
from torch import Tensor

from . import _C, _ops
from . import autograd as _autograd
from ._checks import as_tensor as _as_tensor
from .tensor import Sp24Tensor, matmul


def _row_major(x: Tensor) -> Tensor:
    # The kernels read rows with unit column stride; any other view is copied once.
    return x if x.dim() != 2 or x.size(1) <= 1 or x.stride(1) == 1 else x.contiguous()


def _check_str_arg(op: str, name: str, value, allowed: tuple) -> None:
    # a wrong type: the dispatcher's own message names neither the op's Python API nor the rule (the
    # op itself checks the value, with the same words on every device)
    if not (isinstance(value, str) or (value is None and None in allowed)):
        raise TypeError(f"sp24.{op}: {name} must be one of {', '.join(repr(a) for a in allowed)}, got {value!r} "
                        f"({type(value).__name__})")


def _check_gradient(op: str, gradient: str) -> None:
    if gradient not in _autograd.GRADIENTS:
        raise ValueError(f"sp24.{op}: gradient must be '24sparse' (the gradient masked by the forward pattern), "
                         f"'ste' (straight-through) or '24dense' (xformers' name; the same as '24sparse' here), "
                         f"got {gradient!r}")


def _ste(x: Tensor, activation: Optional[str], columns: Optional[Tensor], transposed: bool, gradient: str):
    # kept only while x can receive a gradient: a "ste" result then holds x for its backward
    if gradient == "ste" and torch.is_grad_enabled() and x.requires_grad:
        return (x, activation, columns, transposed)
    return None


def sparsify24(x: Tensor, algo: str = "largest", activation: Optional[str] = None, *,
               gradient: str = "24sparse") -> Sp24Tensor:
    r"""Keep the 2 largest of every 4 consecutive values along the last dim of ``x``.

    Ties: the lower index wins; NaN ranks above everything (it is kept); ``-0.0 == 0.0``.
    Differentiable w.r.t. ``x``.

    Default ``algo``: ``"largest"`` here (activations after relu2 are >= 0, so by value is by
    magnitude), but ``"largest_abs"`` in :func:`sparsify24_transposed` (gradients are signed).

    Args:
        x (Tensor): (..., K) float16, bfloat16 or float32, K a multiple of 4; any leading dims,
            any device. A last dim with stride != 1 is copied once.
        algo (str): ``"largest"`` (by value, default) or ``"largest_abs"`` (by magnitude).
        activation (str, optional): ``"relu2"`` applies Squared-ReLU first, fused (computed in
            fp32, rounded once; the selection ranks the activated values). Default: None.
        gradient (str): how ``x`` receives a gradient. ``"24sparse"`` (default): the gradient
            of the dense result masked by the forward pattern (dropped positions get 0).
            ``"ste"``: straight-through, every position gets the gradient of the dense result
            (through :meth:`Sp24Tensor.to_dense` and products; :meth:`Sp24Tensor.values` only
            has kept positions). ``"24dense"``: xformers' name, the same as ``"24sparse"``
            (sp24's gradients are dense tensors). With ``activation="relu2"`` the gradient is
            multiplied by ``2*relu(x)``, in fp32, rounded once. When a gradient is to be
            computed, ``"ste"`` and ``activation="relu2"`` keep ``x`` for the backward.

    Returns:
        Sp24Tensor: dense shape (..., K) = ``x.shape``; ``values()``/``indices()`` are
        (..., K/2), ``to_dense()`` is (..., K), ``s @ w`` is (..., N).

    Raises:
        TypeError: ``x`` is not a tensor, or its dtype is not float16/bfloat16/float32.
        ValueError: ``x`` is 0-D, K is not a multiple of 4, or ``algo``, ``activation`` or
            ``gradient`` is not one of the names above.

    Example::

        >>> x = torch.tensor([[1.0, -3.0, 2.0, 0.5]], requires_grad=True)
        >>> s = sp24.sparsify24(x)
        >>> s.to_dense()
        tensor([[1., 0., 2., 0.]], grad_fn=<...>)
        >>> (s @ torch.ones(4, 1)).sum().backward()
        >>> x.grad
        tensor([[1., 0., 1., 0.]])
    """
    x = _as_tensor("sparsify24", "x", x)
    if x.dim() < 1:
        raise ValueError("sp24.sparsify24: x must have shape (..., K), got a 0-D tensor")
    _check_str_arg("sparsify24", "algo", algo, ("largest", "largest_abs"))
    _check_str_arg("sparsify24", "activation", activation, (None, "relu2"))
    _check_gradient("sparsify24", gradient)
    _autograd.check_func_transform("sp24.sparsify24", x)
    lead = x.shape[:-1]
    x2d = _row_major(x if x.dim() == 2 else x.reshape(math.prod(lead), x.shape[-1]))
    values, indices, _ = _ops.sparsify24(x2d, algo, activation, False)
    return Sp24Tensor._wrap(values, indices, lead, ste=_ste(x2d, activation, None, False, gradient))


def _columns_tensor(columns) -> Tensor:
    cols = list(columns)
    for i, c in enumerate(cols):
        ok = isinstance(c, numbers.Integral) and not isinstance(c, bool)
        if isinstance(c, Tensor):
            ok = c.dim() == 0 and not c.is_floating_point() and not c.is_complex() and c.dtype != torch.bool
        if not ok:
            raise TypeError(f"sp24.sparsify24_transposed: columns must be integers, got {c!r} "
                            f"({type(c).__name__}) at position {i}")
    return torch.tensor([int(c) for c in cols], dtype=torch.int64)


def sparsify24_transposed(x: Tensor, algo: str = "largest_abs",
                          columns: Union[Tensor, Sequence[int], None] = None, *,
                          gradient: str = "24sparse") -> Sp24Tensor:
    r"""Fused sparsify-transpose: 2:4 of ``x.T`` (or ``x[:, columns].T``) along its last dim, i.e.
    along the rows (tokens) of ``x``, without materialising the transpose.

    Same selection as ``sparsify24(x.T.contiguous(), algo)``. Default ``algo``:
    ``"largest_abs"`` here, but ``"largest"`` in :func:`sparsify24`. Differentiable w.r.t. ``x``
    (a column listed twice receives both gradients).

    Args:
        x (Tensor): (T, N) float16, bfloat16 or float32, T a multiple of 4.
        algo (str): ``"largest_abs"`` (by magnitude, default) or ``"largest"`` (by value).
        columns (Tensor or sequence of int, optional): the columns of ``x`` to take, in this
            order (1-D int64 tensor or a list of ints; floats and bools are refused). Default:
            all, in order.
        gradient (str): ``"24sparse"`` (default), ``"ste"`` or ``"24dense"``, as in
            :func:`sparsify24`.

    Returns:
        Sp24Tensor: dense shape (C, T), C = ``len(columns)`` or N.

    Raises:
        TypeError: ``x`` is not a tensor; ``columns`` holds a non-integer.
        ValueError: T is not a multiple of 4, a column is out of range, or ``algo``/``gradient``
            is unknown.

    Example::

        >>> x = torch.arange(8.0).reshape(4, 2)
        >>> sp24.sparsify24_transposed(x, columns=[1]).to_dense()
        tensor([[0., 0., 5., 7.]])
    """
    x = _row_major(_as_tensor("sparsify24_transposed", "x", x))
    _check_str_arg("sparsify24_transposed", "algo", algo, ("largest", "largest_abs"))
    _check_gradient("sparsify24_transposed", gradient)
    _autograd.check_func_transform("sp24.sparsify24_transposed", x)
    if columns is not None:
        if not isinstance(columns, Tensor):
            columns = _columns_tensor(columns)
        elif columns.device != x.device and columns.device.type == "meta":
            raise ValueError(f"sp24.sparsify24_transposed: columns must be on x's device ({x.device}) or the CPU, "
                             f"got a meta tensor (it has no values to read)")
        if columns.dtype != torch.int64 and not columns.is_floating_point() and columns.dtype != torch.bool:
            columns = columns.to(torch.int64)
        columns = columns.to(x.device)  # the op checks the range, on every device
    values, indices = _ops.sparsify24_transposed(x, algo, columns)
    return Sp24Tensor._wrap(values, indices, ste=_ste(x, None, columns, True, gradient))


def mm(a: Sp24Tensor, b: Tensor, bias: Optional[Tensor] = None,
       out_dtype: Optional[torch.dtype] = None) -> Tensor:
    r"""``a @ b + bias`` for a 2:4 ``a`` and a dense ``b``; fp32 accumulation, one rounding.

    Differentiable w.r.t. ``a``'s values (and through them the input of :func:`sparsify24`),
    ``b`` and ``bias``; the backward runs dense fp32 GEMMs. On CUDA, without a gradient to
    compute, the product reuses ``a``'s GEMM-ready cuSPARSELt buffer (:meth:`Sp24Tensor.packed`).

    Args:
        a (Sp24Tensor): dense shape (..., K).
        b (Tensor): (K, N), the same dtype and device as ``a``.
        bias (Tensor, optional): (N,), the same dtype as ``a``.
        out_dtype (torch.dtype, optional): float16, bfloat16 or float32. Default: ``a.dtype``.

    Returns:
        Tensor: (..., N).

    Raises:
        TypeError: ``a`` is not a Sp24Tensor or ``b`` not a tensor.
        ValueError: shapes, dtypes or devices do not match.

    Example::

        >>> a = sp24.sparsify24(torch.tensor([[1.0, -3.0, 2.0, 0.5]]))
        >>> sp24.mm(a, torch.ones(4, 2), bias=torch.tensor([0.5, 0.0]))
        tensor([[3.5000, 3.0000]])
    """
    if not isinstance(a, Sp24Tensor):
        raise TypeError(f"sp24.mm: a must be a sp24.Sp24Tensor (from sp24.sparsify24), got {type(a).__name__}")
    return matmul(a, b, bias, out_dtype)


@torch.no_grad()
def stats(x: Tensor) -> dict:
    r"""Sparsity statistics of an activation ``x`` (..., F); the tokens are all leading dims.

    Runs without autograd; an empty ``x`` gives zeros.

    Args:
        x (Tensor): (..., F), float16, bfloat16 or float32, at least 1-D.

    Returns:
        dict: ``numel``, ``nonzeros``, ``zero_fraction`` (fraction of exact zeros),
        ``drop_rowwise`` / ``drop_tokenwise`` (fraction of the non-zeros that a 2:4
        sparsification along F / along the tokens would drop; ``"largest_abs"``).

    Raises:
        TypeError: ``x`` is not a tensor, or another dtype (e.g. float64: cast it first).
        ValueError: ``x`` is 0-D.

    Example::

        >>> sp24.stats(torch.tensor([[0.0, 3.0, 1.0, 2.0]]))["drop_rowwise"]
        0.3333333333333333
    """
    x = _as_tensor("stats", "x", x)
    if x.dim() < 1:
        raise ValueError(f"sp24.stats: x must have at least 1 dim (..., F), got a 0-D tensor")
    if x.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise TypeError(f"sp24.stats: x.dtype must be torch.float16, torch.bfloat16 or torch.float32, got {x.dtype}; "
                        f"cast x first (x.float(); note a float64 value below float32's range becomes 0)")
    x2 = x.reshape(math.prod(x.shape[:-1]), x.shape[-1]) if x.dim() != 2 else x
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
    r"""Versions sp24 was built with and runs under, and which kernels exist.

    Returns:
        dict: ``torch_version`` / ``cuda_version`` / ``cuda_archs`` / ``cusparselt_version`` of the
        build (and the rest of ``sp24._C.build_info()``), ``torch_runtime_version``,
        ``cuda_available``, ``gpu`` (name or None), ``cusparselt_runtime_version`` (None without
        one), ``kernels``: {"CPU" | "Meta" | "CUDA": the torch.ops.sp24 ops with a kernel there}.

    Example::

        >>> info = sp24.build_info()
        >>> "sparsify24" in info["kernels"]["CPU"]
        True
    """
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
