"""Sp24Tensor: a 2:4 sparse tensor of dense shape (..., K), stored as values + indices."""

from __future__ import annotations

import math
import re
from typing import Optional, Union

import torch
from torch import Tensor

from . import _checks, _ops
from . import autograd as _autograd
from .reference import indices_to_mask


class Sp24Tensor:
    r"""A 2:4 sparse tensor of dense shape (..., K): in every group of 4 consecutive values along
    the last dim, at most 2 are kept.

    Stored in a canonical form that is identical on every device: ``values`` (..., K/2), the kept
    values in index order, and ``indices`` (..., K/2) uint8, their positions 0..3 within each
    group, increasing. On CUDA the object also holds, once it is first needed, the GEMM-ready
    cuSPARSELt buffer (:meth:`packed`), so repeated products compress only once.

    Autograd flows through the values: :meth:`values`, :meth:`to_dense`, ``@`` and :func:`sp24.mm`
    are differentiable w.r.t. the values (and the dense operand and bias of a product); a tensor
    made by ``sp24.sparsify24(x, gradient=...)`` passes those gradients on to ``x``. The indices
    are integers and carry no gradient.

    Usually made by :func:`sp24.sparsify24` or :func:`sp24.sparsify24_transposed`; the constructor
    wraps user-given tensors and checks the indices (:meth:`validate`).

    Args:
        values (Tensor): (..., K/2) float16, bfloat16 or float32, the kept values.
        indices (Tensor): (..., K/2) uint8, same shape and device as ``values``.
        packed (Tensor, optional): the GEMM-ready buffer of exactly these values and indices
            (e.g. from ``sp24._ops.sparsify24_cslt``); built on first use otherwise.
        validate (bool): check the indices (:meth:`validate`, one pass over them, one
            synchronisation on CUDA). Default: True. Skipped while ``torch.compile`` traces.

    Raises:
        TypeError: values/indices not tensors, or indices not uint8.
        ValueError: shapes or devices differ, K/2 is odd, or (validate=True) the indices are
            malformed (a position > 3, or a group whose two positions repeat or decrease).

    Example::

        >>> x = torch.tensor([[0.0, 3.0, -1.0, 2.0]])
        >>> s = sp24.sparsify24(x)
        >>> s.values(), s.indices()
        (tensor([[3., 2.]]), tensor([[1, 3]], dtype=torch.uint8))
        >>> sp24.Sp24Tensor(s.values(), s.indices()).to_dense()
        tensor([[0., 3., 0., 2.]])
    """

    __slots__ = ("_values", "_indices", "_packed", "_packed_id", "_packed_versions", "_lead", "_ste")

    def __init__(self, values: Tensor, indices: Tensor, packed: Optional[Tensor] = None, *,
                 validate: bool = True):
        if not isinstance(values, Tensor) or not isinstance(indices, Tensor):
            raise TypeError("sp24.Sp24Tensor: values and indices must be tensors, got "
                            f"{type(values).__name__} and {type(indices).__name__}")
        if values.dim() < 1 or values.shape != indices.shape:
            raise ValueError("sp24.Sp24Tensor: values and indices must have the same shape (..., K/2), at least "
                             f"1-D, got {tuple(values.shape)} and {tuple(indices.shape)}")
        if indices.dtype != torch.uint8:
            raise TypeError(f"sp24.Sp24Tensor: indices.dtype must be torch.uint8, got {indices.dtype}")
        if values.dtype not in (torch.float16, torch.bfloat16, torch.float32):
            raise TypeError("sp24.Sp24Tensor: values.dtype must be torch.float16, torch.bfloat16 or torch.float32, "
                            f"got {values.dtype}")
        if values.device != indices.device:
            raise ValueError("sp24.Sp24Tensor: values and indices must be on the same device, got "
                             f"{values.device} and {indices.device}")
        if values.shape[-1] % 2:
            raise ValueError("sp24.Sp24Tensor: values.size(-1) must be even (K/2 for a 2:4 matrix of K "
                             f"columns, K a multiple of 4), got {values.shape[-1]}")
        lead = values.shape[:-1]
        rows = math.prod(lead)
        self._init(values.reshape(rows, values.shape[-1]).contiguous(),
                   indices.reshape(rows, indices.shape[-1]).contiguous(), lead, packed, None)
        if validate or _ops.VALIDATE:
            self.validate()

    def _init(self, values: Tensor, indices: Tensor, lead, packed: Optional[Tensor], ste) -> None:
        self._values = values    # (M, K/2), M = prod(lead)
        self._indices = indices  # (M, K/2) uint8
        self._lead = torch.Size(lead)
        # `ste`: (src, activation, columns, transposed) of sp24.sparsify24*(..., gradient="ste")
        # while src requires grad: to_dense() and products send dA straight through to src
        self._ste = ste
        # `packed`: the GEMM-ready buffer of exactly these values and indices (e.g. from
        # sparsify24_cslt), else built on first use
        self._packed: Optional[Tensor] = None
        self._packed_id: Optional[Tensor] = None
        self._packed_versions = None
        if packed is not None:
            self._set_packed(packed)

    @classmethod
    def _wrap(cls, values: Tensor, indices: Tensor, lead=None, packed: Optional[Tensor] = None,
              ste=None) -> "Sp24Tensor":
        # sp24's own (M, K/2) values/indices: no checks, validated only in debug mode (SP24_VALIDATE=1)
        self = cls.__new__(cls)
        self._init(values, indices, (values.shape[0],) if lead is None else lead, packed, ste)
        if _ops.VALIDATE:
            self.validate()
        return self

    @property
    def shape(self) -> torch.Size:
        """The dense shape (..., K)."""
        return torch.Size((*self._lead, 2 * self._values.shape[1]))

    def size(self, dim: Optional[int] = None):
        """The dense shape (..., K), or its size along ``dim``."""
        return self.shape if dim is None else self.shape[dim]

    def dim(self) -> int:
        """Number of dims of the dense shape."""
        return len(self._lead) + 1

    @property
    def dtype(self) -> torch.dtype:
        """dtype of the values."""
        return self._values.dtype

    @property
    def device(self) -> torch.device:
        """Device of the values and indices."""
        return self._values.device

    @property
    def requires_grad(self) -> bool:
        """Whether a gradient can flow from this tensor (its values, or the input of a "ste" sparsify)."""
        return self._values.requires_grad or self._ste_src() is not None

    def _ste_src(self) -> Optional[Tensor]:
        if self._ste is None or not torch.is_grad_enabled() or not self._ste[0].requires_grad:
            return None
        return self._ste[0]

    def detach(self) -> "Sp24Tensor":
        """The same values and indices, cut from the autograd graph."""
        return Sp24Tensor._wrap(self._values.detach(), self._indices, self._lead, self._packed)

    def _rows(self, t: Tensor) -> Tensor:
        return t if len(self._lead) == 1 else t.reshape(*self._lead, t.shape[-1])

    def values(self) -> Tensor:
        """The kept values, (..., K/2), in index order; differentiable (their gradient reaches the
        input of sp24.sparsify24 at the kept positions)."""
        return self._rows(self._values)

    def indices(self) -> Tensor:
        """The positions of the kept values within each group of 4, (..., K/2) uint8 in 0..3, increasing."""
        return self._rows(self._indices)

    def validate(self) -> "Sp24Tensor":
        """Check the indices: in every group of 4, two distinct positions in 0..3, increasing.

        Malformed indices are memory-safe in every sp24 op but give wrong results. The
        constructor calls this; ``SP24_VALIDATE=1`` in the environment also checks the tensors
        sp24 makes itself and the indices given to the ``sp24._ops`` wrappers (a debug mode).

        Returns:
            Sp24Tensor: ``self``.

        Raises:
            ValueError: naming the first bad group (row, group, its two positions) and the count.

        Example::

            >>> v = torch.ones(1, 2); i = torch.tensor([[2, 1]], dtype=torch.uint8)
            >>> sp24.Sp24Tensor(v, i, validate=False).validate()
            Traceback (most recent call last):
            ...
            ValueError: sp24.Sp24Tensor.validate: malformed indices: ...
        """
        _ops.validate_indices("sp24.Sp24Tensor.validate", self._indices)
        return self

    def packed(self) -> Tensor:
        """The GEMM-ready buffer (cuSPARSELt's compressed layout on CUDA, `reference.cslt_pack`
        on CPU), built on first use and kept while values and indices are unchanged: an in-place
        change of either (tracked by their version counters) makes the next call rebuild it.
        fp16/bf16 with both dims multiples of 16 only."""
        if self._packed is None or self._packed_versions != self._versions():
            self._set_packed(_ops.cslt_compress(self._values, self._indices))
        return self._packed

    def _packed_identity(self) -> Tensor:
        """The identity of `packed()` (`_ops.cslt_identity`), for `cslt_mm(..., identity=...)`."""
        self.packed()
        return self._packed_id

    def _versions(self):
        return (self._values._version, self._indices._version)

    def _set_packed(self, packed: Tensor) -> None:
        M, K = self._values.shape[0], 2 * self._values.shape[1]
        if not isinstance(packed, Tensor) or packed.dtype != torch.uint8 or packed.dim() != 1:
            raise TypeError("sp24.Sp24Tensor: packed must be the 1-D uint8 GEMM-ready buffer of values and indices, "
                            f"got {packed.dtype if isinstance(packed, Tensor) else type(packed).__name__}")
        if packed.device != self.device:
            raise ValueError(f"sp24.Sp24Tensor: packed must be on the values' device ({self.device}), got "
                             f"{packed.device}; GEMM-ready buffers are device-specific")
        self._packed = packed
        self._packed_id = _ops.cslt_identity(packed.device, M, K, self.dtype)
        self._packed_versions = self._versions()

    def _gemm_ready(self) -> bool:
        M, K = self._values.shape[0], 2 * self._values.shape[1]
        return (self.device.type == "cuda" and self.dtype in (torch.float16, torch.bfloat16)
                and M % 16 == 0 and K % 16 == 0 and M > 0 and K > 0)

    def to_dense(self) -> Tensor:
        """The dense tensor (..., K), exact, with zeros at the dropped positions; differentiable
        (w.r.t. the values; with gradient="ste", straight through to the sparsified input).

        Example::

            >>> sp24.sparsify24(torch.tensor([1.0, -2.0, 3.0, 0.5])).to_dense()
            tensor([1., 0., 3., 0.])
        """
        _autograd.check_func_transform("sp24.Sp24Tensor.to_dense", self._values)
        src = self._ste_src()
        if src is not None:
            _, act, cols, transposed = self._ste
            out = _autograd._SteToDense.apply(src, self._values.detach(), self._indices, act, cols, transposed)
        else:
            out = _ops.to_dense(self._values, self._indices)
        return self._rows(out)

    def mask(self) -> Tensor:
        """The kept positions as a bool tensor of the dense shape (..., K) (no gradient)."""
        return self._rows(indices_to_mask(self._indices))

    def to(self, device: Union[str, torch.device, torch.dtype, None] = None, dtype: Optional[torch.dtype] = None,
           non_blocking: bool = False) -> "Sp24Tensor":
        """Move (and/or cast the kept values); the pattern is unchanged. Differentiable.

        Like ``Tensor.to``, a dtype may come first: ``s.to(torch.float16)``."""
        if isinstance(device, torch.dtype):
            if dtype is not None:
                raise TypeError(f"sp24.Sp24Tensor.to: got two dtypes ({device} and {dtype})")
            device, dtype = None, device
        v = self._values.to(device=device, dtype=dtype, non_blocking=non_blocking)
        i = self._indices.to(device=device, non_blocking=non_blocking)
        ste = None
        if self._ste is not None:
            src, act, cols, transposed = self._ste
            ste = (src.to(device=device, dtype=dtype, non_blocking=non_blocking), act,
                   None if cols is None else cols.to(device=device), transposed)
        return Sp24Tensor._wrap(v, i, self._lead, ste=ste)

    def cpu(self) -> "Sp24Tensor":
        """``self.to("cpu")``."""
        return self.to("cpu")

    def cuda(self, device=None) -> "Sp24Tensor":
        """``self.to("cuda")`` (or the given CUDA device)."""
        return self.to(torch.device("cuda", device) if isinstance(device, int) else device or "cuda")

    def __matmul__(self, b: Tensor) -> Tensor:
        """``self @ b`` = :func:`sp24.mm` (self, b): a dense b (K, N) -> (..., N); differentiable."""
        return matmul(self, b)

    def __rmatmul__(self, a):
        """Refused: ``dense @ Sp24Tensor`` (the 2:4 operand must be on the left); raises TypeError."""
        raise TypeError("sp24.Sp24Tensor: dense @ Sp24Tensor is not supported; the 2:4 operand must be on "
                        "the left (use (b.T @ ...) or sp24.sparsify24 on the other operand)")

    def __repr__(self) -> str:
        grad = ", requires_grad=True" if self.requires_grad else ""
        return f"Sp24Tensor(shape={tuple(self.shape)}, dtype={self.dtype}, device={self.device}{grad})"


# the words of sparse24_cslt_compress / sparse24_cslt_mm when cuSPARSELt refuses (csrc/sparse24_ops.cpp)
_CSLT_REFUSED = re.compile(r"cuSPARSELt \S+ cannot (serve this problem|compress this operand)")


def _needs_grad(*ts) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in ts)


def matmul(a: Sp24Tensor, b: Tensor, bias: Optional[Tensor] = None,
           out_dtype: Optional[torch.dtype] = None) -> Tensor:
    """``a @ b + bias`` for a Sp24Tensor ``a``: :func:`sp24.mm` once ``a`` is known to be one
    (``Sp24Tensor.__matmul__`` calls it directly); the contract is sp24.mm's docstring."""
    b = _checks.as_tensor("mm", "b", b)
    if out_dtype is not None and not isinstance(out_dtype, torch.dtype):
        raise TypeError(f"sp24.mm: out_dtype must be None or a torch.dtype (e.g. torch.float32), got {out_dtype!r}")
    _autograd.check_func_transform("sp24.mm", a._values, b, bias)
    M, K = a._values.shape[0], 2 * a._values.shape[1]
    src = a._ste_src()
    if src is not None:
        _, act, cols, transposed = a._ste
        out = _autograd._SteMM.apply(src, a._values.detach(), a._indices, b, bias, out_dtype, act, cols, transposed)
    elif (a._gemm_ready() and b.dim() == 2 and b.size(0) == K and b.size(1) % 16 == 0 and b.size(1) > 0
            and b.dtype == a.dtype and b.device == a.device and out_dtype in (None, a.dtype)
            and not _needs_grad(a._values, b, bias) and not torch.compiler.is_compiling()):
        # CUDA: reuse the cuSPARSELt buffer the Sp24Tensor holds (compressed once, on first use,
        # again after an in-place change), checked against its identity. A float32 out_dtype takes
        # sparse24_mm, whose dense fallback keeps the contract (cuSPARSELt has no 16-bit -> fp32).
        # sparse24_cslt_mm has no backward, so only when no gradient is needed; and not while
        # torch.compile traces (the buffer's identity is made by a plain C++ call dynamo cannot
        # trace): sparse24_mm then packs inside the op.
        try:
            out = _ops.cslt_mm(a.packed(), M, K, b, bias, out_dtype, False, a._packed_identity())
        except ValueError as e:
            # a genuine refusal of cuSPARSELt for this operand or problem: sp24.mm falls back like
            # sparse24_mm does (which warns once per reason); any other error stays an error
            if not _CSLT_REFUSED.search(str(e)):
                raise
            out = _ops.mm(a._values, a._indices, b, bias, out_dtype)
    else:
        out = _ops.mm(a._values, a._indices, b, bias, out_dtype)
    return out if a.dim() == 2 else out.reshape(*a._lead, out.shape[-1])


_PACK_MUL = (1 << 24) + (1 << 18) + (1 << 12) + (1 << 6)
_UNPACK_TABLE: list = []


def _unpack_table() -> Tensor:
    if not _UNPACK_TABLE:
        b = torch.arange(256, dtype=torch.int32)
        _UNPACK_TABLE.append((b & 3) | (((b >> 2) & 3) << 8) | (((b >> 4) & 3) << 16) | ((b >> 6) << 24))
    return _UNPACK_TABLE[0]


def pack_indices(indices: Tensor) -> Tensor:
    """(M, K/2) uint8 indices (2 bits of information each) -> (M, K/8) uint8, 4 per byte:
    byte j of a row = i[4j] | i[4j+1] << 2 | i[4j+2] << 4 | i[4j+3] << 6, i.e. group 2j in the low
    nibble and group 2j+1 in the high one (the 2:4 metadata nibble order). K must be a multiple of 8.
    Exact inverse: unpack_indices. Used to store the pattern of the FFN's saved Y2 in 1/4 of the
    bytes."""
    M, H = indices.shape
    if H % 4:
        raise ValueError(f"sp24.pack_indices: indices.size(1) (K/2) must be a multiple of 4, got {H}")
    if indices.device.type == "cpu" and not torch.compiler.is_compiling() and indices.storage_offset() % 4 == 0:
        # CPU: the 4 indices of a packed byte read as one little-endian int32 (index s in byte s, at
        # bit 8s), times 2^24 + 2^18 + 2^12 + 2^6 moves index s to bit 24 + 2s with no carries (the
        # other partial products land below bit 24 or past bit 31), so byte 3 of the product is the
        # packed byte: 2 passes instead of 7 uint8 ops over strided views
        v = indices.contiguous().view(torch.int32) * _PACK_MUL
        return v.view(torch.uint8).view(M, H // 4, 4)[..., 3].contiguous()
    i = indices.reshape(M, H // 4, 4)
    return i[..., 0] | (i[..., 1] << 2) | (i[..., 2] << 4) | (i[..., 3] << 6)


def unpack_indices(packed: Tensor) -> Tensor:
    """Inverse of pack_indices: (M, K/8) uint8 -> (M, K/2) uint8 indices."""
    M, B = packed.shape
    if packed.device.type == "cpu" and not torch.compiler.is_compiling():
        # a 256-entry table: packed byte -> the int32 whose 4 bytes are its 4 indices (2 passes)
        return _unpack_table()[packed.to(torch.int32)].view(torch.uint8).view(M, 4 * B)
    return torch.stack([packed & 3, (packed >> 2) & 3, (packed >> 4) & 3, packed >> 6], dim=-1).reshape(M, 4 * B)
