"""The oracle's GEMM-ready 2:4 buffers: sp24's CPU packing (``cslt_pack``) and the candidate CPU
emulation of cuSPARSELt's compressed layout (``cslt_layout``). Pure byte layout, no selection rule:
sp24.reference re-exports every public name here and is where they are documented and used
(``sp24.reference.cslt_layout``, ...).
"""

from __future__ import annotations

import torch
from torch import Tensor


# ---- sp24's CPU GEMM-ready buffer (sparse24_cslt_compress on CPU) --------------------------------
def _buffer(values: Tensor, meta: Tensor) -> Tensor:
    """[values as raw bytes | metadata bytes | zeros] in sp24's buffer size for a 2:4 A (M, K):
    values + metadata for M and K rounded up to 128 (room for cuSPARSELt's padding)."""
    M, K = values.shape[0], 2 * values.shape[1]
    size = M * K // 2 * values.element_size() + -(-M // 128) * 128 * (-(-K // 128) * 128) // 8
    out = torch.zeros(size, dtype=torch.uint8, device=values.device)
    packed = torch.cat([values.contiguous().view(torch.uint8).reshape(-1), meta.reshape(-1)])
    out[: packed.numel()] = packed
    return out


def cslt_pack(values: Tensor, indices: Tensor) -> Tensor:
    """sp24's CPU GEMM-ready buffer of a 2:4 A (M, K) (``sparse24_cslt_compress`` on CPU).

    Layout: ``[values as raw bytes | metadata (M, K/8) bytes | zeros]``, the size of values plus
    metadata for M and K rounded up to 128; metadata byte j of row r is
    ``nib(2j) | nib(2j+1) << 4`` with ``nib(g) = idx[r, 2g] | idx[r, 2g+1] << 2``. On CUDA the
    buffer is cuSPARSELt's own layout instead (:func:`cslt_layout`).

    Args:
        values (Tensor): (M, K/2) kept values.
        indices (Tensor): (M, K/2) uint8 canonical indices.

    Returns:
        Tensor: 1-D uint8 buffer.

    Example::

        >>> idx = torch.tensor([[2, 3, 0, 2]], dtype=torch.uint8)
        >>> sp24.reference.cslt_pack(torch.ones(1, 4, dtype=torch.float16), idx).shape
        torch.Size([2056])
    """
    M = values.shape[0]
    idx = indices.to(torch.int32).reshape(M, -1, 2)
    nib = (idx[..., 0] | (idx[..., 1] << 2)).reshape(M, -1, 2)
    meta = (nib[..., 0] | (nib[..., 1] << 4)).to(torch.uint8)
    return _buffer(values, meta)


# ---- candidate CPU emulation of cuSPARSELt's compressed layout (UNVERIFIED) ---------------------
# What is known without a GPU is public reverse engineering of cuSPARSELt's 16-bit buffer on sm_90
# (pytorch/ao, torchao/csrc/cuda/activation24: a sparsify kernel that writes it directly). Stated
# here in sp24's own terms, for a row-major 2:4 A (M, K), op N, fp16/bf16, M % 64 == 0, K % 32 == 0:
#
#   buffer = [ values (M, K/2) row-major, kept values in index order | metadata (M*K/8 bytes) ]
#
#   nib(r, g) = idx[r, 2g] | idx[r, 2g+1] << 2          (4 bits per group g of 4 columns)
#   a metadata byte holds the nibbles of rows r and r+8 of the same group (row r in the low half);
#   (r, g) -> byte offset, with r = 64*band + 16*r16 + 8*hi + r8 and g = 8*c32 + 4*e + 2*p + h:
#       band*(8*K) + c32*256 + r16*64 + r8*8 + p*4 + h*2 + e,      shift 4*hi
#   i.e. 64-row bands; in a band, 32-column chunks of 256 bytes; in a chunk, 16-row blocks of 64.
#
# Beyond that domain (M % 64 != 0) this emulation pads the rows to a multiple of 64 with zero
# nibbles: a guess. Nothing here is trusted until it reproduces buffers captured from
# cusparseLtSpMMACompress (tests/test_cslt_layout.py with goldens in tests/data; the GPU test
# test_gpu_gemm.py::test_cslt_layout_emulation compares it live).
CSLT_LAYOUT_SOURCE = "pytorch/ao activation24 (sm_90, 16-bit, reverse-engineered); unverified by sp24"


def cslt_meta_offset(r: int, g: int, K: int) -> tuple[int, int]:
    """Where the metadata nibble of row r, group g sits in the candidate cuSPARSELt layout.

    The scalar form of :func:`cslt_layout` (the tests compare the two); see the comment above
    this function for the layout.

    Args:
        r (int): row of A.
        g (int): group of 4 columns of A.
        K (int): columns of A, a multiple of 32.

    Returns:
        tuple[int, int]: (byte offset into the metadata region, bit shift 0 or 4).

    Example::

        >>> sp24.reference.cslt_meta_offset(9, 1, 32)
        (10, 4)
    """
    band, r64 = divmod(r, 64)
    r16, r = divmod(r64, 16)
    hi, r8 = divmod(r, 8)
    c32, g8 = divmod(g, 8)
    e, g4 = divmod(g8, 4)
    p, h = divmod(g4, 2)
    return band * 8 * K + c32 * 256 + r16 * 64 + r8 * 8 + p * 4 + h * 2 + e, 4 * hi


def cslt_meta_bytes(M: int, K: int) -> int:
    """Bytes of metadata the emulated cuSPARSELt layout writes for a 2:4 A (M, K).

    Args:
        M (int): rows (padded to a multiple of 64 by the emulation).
        K (int): columns.

    Returns:
        int: ``ceil(M / 64) * 64 * K / 8``.

    Example::

        >>> sp24.reference.cslt_meta_bytes(100, 32)
        512
    """
    return -(-M // 64) * 64 * K // 8


def cslt_layout(values: Tensor, indices: Tensor) -> Tensor:
    """Candidate CPU emulation of ``cusparseLtSpMMACompress``'s 16-bit sm_90 buffer (unverified).

    Derived from public reverse engineering (see the comment above); trusted only where a GPU
    test found it equal to cuSPARSELt's own buffer.

    Args:
        values (Tensor): (M, K/2) kept values, fp16 or bf16.
        indices (Tensor): (M, K/2) uint8 canonical indices.

    Returns:
        Tensor: 1-D uint8 buffer in sp24's buffer size (zeros past the metadata).

    Raises:
        ValueError: a dtype other than fp16/bf16, or K not a multiple of 32.

    Example::

        >>> v, i, _ = sp24.reference.sparsify24(torch.randn(64, 32).half())
        >>> sp24.reference.cslt_layout(v, i).shape
        torch.Size([4096])
    """
    M, K = values.shape[0], 2 * values.shape[1]
    if values.dtype not in (torch.float16, torch.bfloat16):
        raise ValueError(f"sp24.reference.cslt_layout: the emulated layout is the 16-bit one; got {values.dtype}")
    if K % 32:
        raise ValueError(f"sp24.reference.cslt_layout: K must be a multiple of 32, got K={K}")
    idx = indices.to(torch.int32).reshape(M, K // 4, 2)
    nib = idx[..., 0] | (idx[..., 1] << 2)  # (M, K/4)
    Mp = -(-M // 64) * 64
    nib = torch.cat([nib, nib.new_zeros(Mp - M, K // 4)])
    # rows (band, r16, hi, r8), groups (c32, e, p, h)
    n = nib.reshape(Mp // 64, 4, 2, 8, K // 32, 2, 2, 2)
    byte = n[:, :, 0] | (n[:, :, 1] << 4)  # (band, r16, r8, c32, e, p, h)
    meta = byte.permute(0, 3, 1, 2, 5, 6, 4).reshape(-1).to(torch.uint8)  # (band, c32, r16, r8, p, h, e)
    return _buffer(values, meta)
