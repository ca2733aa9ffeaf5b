"""Sp24Tensor: a 2:4 sparse matrix of dense shape (M, K), stored as values + indices."""

from __future__ import annotations

from typing import Optional, Union

import torch
from torch import Tensor

from . import _ops
from .reference import indices_to_mask


class Sp24Tensor:
    """2:4 sparse (M, K) matrix: `values` (M, K/2) kept values in index order and `indices`
    (M, K/2) uint8 positions 0..3, increasing within each group of 4. This canonical form is
    identical on every device. On CUDA the object also holds, once it is first needed, the
    GEMM-ready cuSPARSELt buffer (`packed()`), so repeated products compress only once."""

    __slots__ = ("_values", "_indices", "_packed")

    def __init__(self, values: Tensor, indices: Tensor, packed: Optional[Tensor] = None):
        if not isinstance(values, Tensor) or not isinstance(indices, Tensor):
            raise TypeError("sp24.Sp24Tensor: values and indices must be tensors, got "
                            f"{type(values).__name__} and {type(indices).__name__}")
        if values.dim() != 2 or values.shape != indices.shape:
            raise ValueError("sp24.Sp24Tensor: values and indices must be 2-D with the same shape (M, K/2), "
                             f"got {tuple(values.shape)} and {tuple(indices.shape)}")
        if indices.dtype != torch.uint8:
            raise TypeError(f"sp24.Sp24Tensor: indices.dtype must be torch.uint8, got {indices.dtype}")
        if values.device != indices.device:
            raise ValueError("sp24.Sp24Tensor: values and indices must be on the same device, got "
                             f"{values.device} and {indices.device}")
        self._values = values.contiguous()
        self._indices = indices.contiguous()
        # `packed`: the GEMM-ready buffer of exactly these values and indices (e.g. from
        # sparsify24_cslt), else built on first use
        self._packed: Optional[Tensor] = packed

    # -- shape & type -------------------------------------------------------------------------
    @property
    def shape(self) -> torch.Size:
        return torch.Size((self._values.shape[0], 2 * self._values.shape[1]))

    def size(self, dim: Optional[int] = None):
        return self.shape if dim is None else self.shape[dim]

    @property
    def dtype(self) -> torch.dtype:
        return self._values.dtype

    @property
    def device(self) -> torch.device:
        return self._values.device

    # -- canonical form -----------------------------------------------------------------------
    def values(self) -> Tensor:
        return self._values

    def indices(self) -> Tensor:
        return self._indices

    def packed(self) -> Tensor:
        """The GEMM-ready buffer (cuSPARSELt's compressed layout on CUDA, `reference.cslt_pack`
        on CPU), built on first use and kept. fp16/bf16 with both dims multiples of 16 only."""
        if self._packed is None:
            self._packed = _ops.cslt_compress(self._values, self._indices)
        return self._packed

    def _gemm_ready(self) -> bool:
        M, K = self.shape
        return (self.device.type == "cuda" and self.dtype in (torch.float16, torch.bfloat16)
                and M % 16 == 0 and K % 16 == 0 and M > 0 and K > 0)

    def to_dense(self) -> Tensor:
        return _ops.to_dense(self._values, self._indices)

    def mask(self) -> Tensor:
        return indices_to_mask(self._indices)

    def to(self, device: Union[str, torch.device, None] = None, dtype: Optional[torch.dtype] = None,
           non_blocking: bool = False) -> "Sp24Tensor":
        """Move (and/or cast the kept values); the pattern is unchanged."""
        v = self._values.to(device=device, dtype=dtype, non_blocking=non_blocking)
        i = self._indices.to(device=device, non_blocking=non_blocking)
        return Sp24Tensor(v, i)

    def cpu(self) -> "Sp24Tensor":
        return self.to("cpu")

    def cuda(self, device=None) -> "Sp24Tensor":
        return self.to(torch.device("cuda", device) if isinstance(device, int) else device or "cuda")

    # -- products -----------------------------------------------------------------------------
    def __matmul__(self, b: Tensor) -> Tensor:
        from .api import mm

        return mm(self, b)

    def __rmatmul__(self, a):
        raise TypeError("sp24.Sp24Tensor: dense @ Sp24Tensor is not supported; the 2:4 operand must be on "
                        "the left (use (b.T @ ...) or sp24.sparsify24 on the other operand)")

    def __repr__(self) -> str:
        return (f"Sp24Tensor(shape={tuple(self.shape)}, dtype={self.dtype}, device={self.device})")


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
        # CPU: the 4 bytes of a packed byte read as one little-endian int32 (byte s at bit 8s), so
        # shifting byte s down by 6s lands its 2 bits at bit 2s: 4 int32 ops over a quarter of the
        # elements instead of 7 uint8 ops over strided views (measured 10x faster, issue #13)
        v = indices.contiguous().view(torch.int32)
        return ((v | (v >> 6) | (v >> 12) | (v >> 18)) & 0xFF).to(torch.uint8)
    i = indices.reshape(M, H // 4, 4)
    return i[..., 0] | (i[..., 1] << 2) | (i[..., 2] << 4) | (i[..., 3] << 6)


def unpack_indices(packed: Tensor) -> Tensor:
    """Inverse of pack_indices: (M, K/8) uint8 -> (M, K/2) uint8 indices."""
    M, B = packed.shape
    if packed.device.type == "cpu" and not torch.compiler.is_compiling():
        # the inverse of pack_indices' int32 trick: field s (bits 2s..2s+1) moved up to byte s
        v = packed.to(torch.int32)
        v = (v | (v << 6) | (v << 12) | (v << 18)) & 0x03030303
        return v.view(torch.uint8).reshape(M, 4 * B)
    return torch.stack([packed & 3, (packed >> 2) & 3, (packed >> 4) & 3, packed >> 6], dim=-1).reshape(M, 4 * B)
