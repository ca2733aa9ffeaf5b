"""The autograd Function of the 2:4 Squared-ReLU FFN (sp24.ffn.relu2_ffn's sparse path), and what its
forward and backward share: the fixed token permutation, the token padding to TOKEN_ALIGN and the
feature split. sp24.ffn documents the method (its module docstring) and re-exports the public names.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F_
from torch import Tensor

from . import _fp8
from .autograd import relu2_grad
from .tensor import pack_indices, unpack_indices

_ops = torch.ops.sp24
PERMUTATION_SEED = 0x5EED24
# Tokens are zero-padded to a multiple of 16 inside (2:4 groups need 4; cuSPARSELt needs every
# GEMM dim to be a multiple of 16). Appended zero rows change no result: they add nothing to a
# product and every 2:4 group of real tokens stays as it is.
TOKEN_ALIGN = 16
# In FP8 mode (options[2]) a multiple of 32: cuSPARSELt's 8-bit structured operand needs M % 32 == 0.
FP8_TOKEN_ALIGN = 32


# --------------------------------------------------------------------------------------------
# token permutation


def _hash31(z: Tensor) -> Tensor:
    # Multiply-mod-2^31 and xorshift rounds on int64: no product exceeds 2^62, so the keys are
    # identical on every device and backend (no reliance on integer overflow).
    m = (1 << 31) - 1
    for a, c in ((1103515245, 12345), (1664525, 1013904223), (22695477, 1)):
        z = (z * a + c) & m
        z = z ^ (z >> 13)
    return z


def _make_permutation(T: int, device: torch.device) -> tuple[Tensor, Tensor]:
    keys = _hash31(torch.arange(T, device=device, dtype=torch.int64) + PERMUTATION_SEED)
    perm = torch.argsort(keys, stable=True)  # equal keys (rare) keep index order: still a permutation
    inv = torch.empty_like(perm).scatter_(0, perm, torch.arange(T, device=device, dtype=torch.int64))
    return perm, inv


_PERM_CACHE: dict = {}


def _cacheable(device: torch.device) -> bool:
    # Only real tensors made outside any dispatch mode are cached: a permutation made on meta or
    # under FakeTensorMode (or another TorchDispatchMode, e.g. a tracer) would be a fake/meta
    # tensor handed to later real forwards.
    from torch.utils._python_dispatch import _get_current_dispatch_mode_stack
    return device.type != "meta" and not _get_current_dispatch_mode_stack()


def token_permutation(T: int, device="cpu") -> tuple[Tensor, Tensor]:
    """(perm, inverse) of the fixed token permutation for T tokens: X_ffn = X[perm].

    Deterministic (seeded hash, the same on every device), one per (T, device), cached in eager
    mode for real devices outside any dispatch mode; on meta, under FakeTensorMode (or any
    TorchDispatchMode) and under torch.compile it is recomputed, never cached (a few integer ops
    and an argsort of T keys).
    """
    device = torch.device(device)
    if torch.compiler.is_compiling() or not _cacheable(device):
        return _make_permutation(T, device)
    key = (int(T), device)
    hit = _PERM_CACHE.get(key)
    if hit is None:
        if len(_PERM_CACHE) > 64:
            _PERM_CACHE.clear()
        # made as normal tensors even under torch.inference_mode(): an inference tensor in the
        # cache could not be saved for backward by a later training forward
        with torch.inference_mode(False):
            hit = _PERM_CACHE[key] = _make_permutation(int(T), device)
    return hit


def feature_split(counts: Tensor, n_dense: int) -> tuple[Tensor, Tensor]:
    """(dense_cols, sparse_cols), each in increasing order: the n_dense features with the most
    non-zeros (ties: the lower feature index is denser) and the rest."""
    order = torch.argsort(counts, descending=True, stable=True)
    return order[:n_dense].sort().values, order[n_dense:].sort().values


def _column_sums(values: Tensor, indices: Tensor) -> Tensor:
    """fp32 column sums (F,) of a row-wise 2:4 matrix (T, F) from its compressed form (T, F/2), with
    no dense (T, F) tensor: per position p of a group, the kept values whose index is p, summed
    over the tokens and the group's two slots in fp32 (deterministic on every device)."""
    T, H = values.shape
    per_pos = [torch.where(indices == p, values, 0).view(T, H // 2, 2).sum(dim=(0, 2), dtype=torch.float32)
               for p in range(4)]
    return torch.stack(per_pos, dim=1).reshape(2 * H)  # (F/4, 4): feature 4g + p


def _merge_features(sparse_cols: Tensor, g_sparse: Tensor, dense_cols: Tensor, g_dense: Tensor) -> Tensor:
    """The (F, d) weight gradient from the rows of its two feature sets (feature_split): the 2:4 GEMM's
    (Fs, d) at sparse_cols and the dense GEMM's (Fd, d) at dense_cols, which together cover range(F)."""
    F = g_sparse.shape[0] + g_dense.shape[0]
    return g_sparse.new_empty(F, g_sparse.shape[1]).index_copy_(0, sparse_cols, g_sparse).index_copy_(
        0, dense_cols, g_dense)


def _pad_rows(t: Tensor, pad: int) -> Tensor:
    return F_.pad(t, (0, 0, 0, pad)) if pad else t


def _eager() -> bool:
    # plain eager autograd: not traced by torch.compile, no torch.func transform active
    return not torch.compiler.is_compiling() and not torch._C._are_functorch_transforms_active()


def _below_autograd():
    """Inside the Function's forward and backward (where autograd records nothing anyway), the ops
    dispatched below the Autograd key in eager mode: sp24's ops then skip their Python autograd
    wrapper (about half the cost of a small op's call). Not under torch.compile or torch.func."""
    return torch._C._AutoDispatchBelowAutograd() if _eager() else contextlib.nullcontext()


def apply_ffn(*args):
    """_SparseReLU2FFN.apply(*args) with every argument given positionally. In eager mode it skips
    torch.autograd.Function.apply's binding of default arguments (an inspect.signature per call,
    about a third of a small FFN's forward on the CPU), which is a no-op when all of them are
    given; under torch.compile and torch.func it is Function.apply itself."""
    if len(args) != 11 or not _eager():
        return _SparseReLU2FFN.apply(*args)
    return super(torch.autograd.Function, _SparseReLU2FFN).apply(*args)


class _SparseReLU2FFN(torch.autograd.Function):
    # A torch.autograd.Function (not a custom_op): it is made of sp24 ops that already have
    # Meta kernels, so Dynamo traces forward and backward into the graph with fullgraph=True and
    # no extra fake implementation is needed (tests/test_compile.py).
    # forward / setup_context are separate (torch.func.grad works); the compressed Y2, its packed
    # pattern and the counts are returned as extra, non-differentiable outputs so that
    # setup_context can save them; relu2_ffn returns only the first output.

    @staticmethod
    def forward(x2d, w1, w2, b1, b2, perm, inv_perm, n_dense, out_shape, need_counts, options):
        with _below_autograd():
            return _SparseReLU2FFN._forward(x2d, w1, w2, b1, b2, perm, need_counts, out_shape, options)

    @staticmethod
    def _forward(x2d, w1, w2, b1, b2, perm, need_counts, out_shape, options):
        T, d = x2d.shape
        fp8 = options[2]  # the forward GEMMs in FP8 (sp24._fp8); the backward is the same either way
        # options[3]: how many of x2d's last rows are zero padding the caller appended (sp24.experts
        # lays out each expert's tokens permuted and padded in one gather); they are treated as the
        # padding below is, and their output and dx rows are zero-input rows the caller drops
        n_real = T - options[3]
        pad = (-T) % (FP8_TOKEN_ALIGN if fp8 else TOKEN_ALIGN)
        n_pad = pad + options[3]  # zero rows in all: ours and the caller's
        X = _pad_rows(x2d if perm is None else x2d.index_select(0, perm), pad)
        y1 = _fp8.forward_gemms(X, w1, b1) if fp8 else F_.linear(X, w1, b1)
        # the counts drive the feature split, a backward-only need
        values, indices, counts = _ops.sparsify24(y1, "largest", "relu2", need_counts)
        if n_pad and b1 is not None:
            # padded tokens: Y1 = b1 there; zero their Y2 so they can never win a token-direction
            # 2:4 slot, and take them out of the per-feature counts
            values[n_real:] = 0
            if need_counts:
                counts = counts - n_pad * (torch.relu(b1.float()).square().to(b1.dtype) != 0).to(counts.dtype)
        y3 = _fp8.sparse_mm(values, indices, w2, b2) if fp8 else _ops.sparse24_mm(values, indices, w2.t(), b2, None)
        # The output is written into a fresh (..., d) tensor rather than returned as a view of y3:
        # FSDP2 warns on (and in-place ops on views can break) a module output that is a view.
        if perm is None and pad == 0 and len(out_shape) == 2:
            out = y3
        else:
            out = y3.new_empty(out_shape)
            if perm is None:
                out.view(-1, d).copy_(y3[:T])
            else:
                out.view(-1, d).index_copy_(0, perm, y3[:T])
        # the pattern is saved packed, 4 indices a byte (F % 8 == 0 in sparse mode): T*F/8 bytes.
        # gradient="ste" needs relu(Y1) at every position, so it also keeps the dense Y1.
        y1_saved = y1 if options[0] == "ste" and need_counts else y1.new_empty(0)
        return out, values, pack_indices(indices), counts, y1_saved

    @staticmethod
    def setup_context(ctx, inputs, output):
        x2d, w1, w2, b1, b2, perm, inv_perm, n_dense, _out_shape, need_counts, _options = inputs
        _out, values, packed, counts, y1_saved = output
        ctx.mark_non_differentiable(values, packed, counts, y1_saved)
        ctx.save_for_backward(x2d, w1, w2, values, packed, counts, perm, inv_perm, y1_saved)
        ctx.n_dense = n_dense
        ctx.gradient, ctx.sparse_backward = inputs[10][:2]
        ctx.n_real = x2d.shape[0] - inputs[10][3]
        ctx.has_b1, ctx.has_b2 = b1 is not None, b2 is not None

    @staticmethod
    def vmap(info, in_dims, x2d, w1, w2, b1, b2, perm, inv_perm, n_dense, out_shape, need_counts, options):
        # torch.func.vmap over x only: the FFN is row-wise, so a batch of B inputs is one call on
        # B*T tokens (forward bit for bit the per-sample result). Batched weights (per-sample
        # models) are refused.
        names = ("w1", "w2", "b1", "b2")
        batched = [n for n, dim in zip(names, in_dims[1:5]) if dim is not None]
        if batched:
            raise NotImplementedError(
                f"sp24.relu2_ffn: torch.func.vmap over the weights ({', '.join(batched)}) is not supported by the "
                "2:4 path; vmap over x only, or use sparse=False")
        if options[3]:
            raise NotImplementedError("sp24.relu2_ffn: torch.func.vmap over caller-padded tokens (sp24.relu2_experts' "
                                      "layout) is not supported")
        B = info.batch_size
        xb = x2d.unsqueeze(0).expand(B, *x2d.shape) if in_dims[0] is None else x2d.movedim(in_dims[0], 0)
        T, d = xb.shape[1], xb.shape[2]
        xf = xb.reshape(B * T, d)
        if perm is not None:
            perm, inv_perm = token_permutation(B * T, xf.device)
        out, values, packed, counts, y1_saved = _SparseReLU2FFN.apply(xf, w1, w2, b1, b2, perm, inv_perm, n_dense,
                                                                      (B * T, d), need_counts, options)
        return (out.reshape(B, *out_shape), values, packed, counts, y1_saved), (0, None, None, None, None)

    @staticmethod
    @torch.autograd.function.once_differentiable  # no double backward (a clear error if asked)
    def backward(ctx, dout, _dvalues, _dpacked, _dcounts, _dy1):
        with _below_autograd():
            return _SparseReLU2FFN._backward(ctx, dout)

    @staticmethod
    def _backward(ctx, dout):
        if not torch.compiler.is_compiling() and _under_vmap():
            raise NotImplementedError(
                "sp24.relu2_ffn: torch.func.vmap over a gradient (e.g. per-sample gradients, vmap(grad(f))) is not "
                "supported by the 2:4 path; take the gradient of the batched call (grad(f) on the whole batch), "
                "or use sparse=False")
        x2d, w1, w2, values, packed, counts, perm, inv_perm, y1 = ctx.saved_tensors
        if counts.numel() != values.shape[1] * 2:  # relu2_ffn passes need_counts=True whenever it records a graph
            raise RuntimeError("sp24.relu2_ffn: internal error: a backward without the forward's feature counts "
                               "(the forward ran with need_counts=False)")
        indices = unpack_indices(packed)
        need_x, need_w1, need_w2, need_b1, need_b2 = ctx.needs_input_grad[:5]
        dx = dw1 = dw2 = db1 = db2 = None
        T, d = x2d.shape
        Tp, Fh = values.shape[0], values.shape[1] * 2
        dout = dout.reshape(-1, d)
        dy3 = _pad_rows((dout if perm is None else dout.index_select(0, perm)).contiguous(), Tp - T)  # (Tp, d)
        dense_cols, sparse_cols = feature_split(counts, ctx.n_dense)

        ste, sparse_bwd = ctx.gradient == "ste", ctx.sparse_backward
        if need_w2 and not sparse_bwd:  # sparse_backward=False: the dense GEMM on the forward's (2:4) Y2
            dw2 = dy3.t() @ _ops.sparse24_to_dense(values, indices)
        elif need_w2:  # dW2^T = Y2^T dY3: sparse features 2:4 along the tokens, dense ones dense
            # one pass over the compressed Y2, no dense (Tp, F) copy
            tv, ti, y2d_t = _ops.sparse24_transposed_split(values, indices, sparse_cols, dense_cols, "largest_abs",
                                                           False)  # a permutation of range(F): no sync
            g_sparse = _ops.sparse24_mm(tv, ti, dy3, None, None)               # (Fs, d)
            g_dense = y2d_t @ dy3                                               # (Fd, d)
            # merged as dW2^T (F, d), then one transposing copy into dW2's (d, F) layout: on CPU about a
            # third of the time of index_copy_ along dim 1 (strided writes); the same bits (copies)
            dw2 = _merge_features(sparse_cols, g_sparse, dense_cols, g_dense).t().contiguous()
        if need_b2 and ctx.has_b2:
            db2 = dy3[:ctx.n_real].sum(0)
        if need_x or need_w1 or (need_b1 and ctx.has_b1):
            dy2 = dy3 @ w2
            if ste:
                dx, dw1, db1 = _ste_backward(ctx, dy2, y1, x2d, w1, perm, inv_perm, dense_cols, sparse_cols, T)
                return dx, dw1, dw2, db1, db2, None, None, None, None, None, None
            dy1 = _ops.sparse24_apply_relu2_backward(dy2, values, indices)     # forward pattern
            if need_x:
                dxp = _ops.sparse24_mm(dy1, indices, w1, None, None)[:T]
                dx = dxp if perm is None else dxp.index_select(0, inv_perm)
            if need_b1 and ctx.has_b1:
                db1 = _column_sums(dy1, indices).to(dy1.dtype)                 # padded rows are 0
            if need_w1 and not sparse_bwd:  # the dense GEMM on dY1 (the forward's pattern)
                X = _pad_rows(x2d if perm is None else x2d.index_select(0, perm), Tp - T)
                dw1 = _ops.sparse24_to_dense(dy1, indices).t() @ X
            elif need_w1:  # dW1 = dY1^T X, split like dW2, straight from the compressed dY1
                X = _pad_rows(x2d if perm is None else x2d.index_select(0, perm), Tp - T)
                tv, ti, dy1d_t = _ops.sparse24_transposed_split(dy1, indices, sparse_cols, dense_cols, "largest_abs",
                                                                 False)  # valid by construction
                g_sparse = _ops.sparse24_mm(tv, ti, X, None, None)               # (Fs, d)
                g_dense = dy1d_t @ X                                            # (Fd, d)
                dw1 = _merge_features(sparse_cols, g_sparse, dense_cols, g_dense)
        return dx, dw1, dw2, db1, db2, None, None, None, None, None, None


def _ste_backward(ctx, dy2, y1, x2d, w1, perm, inv_perm, dense_cols, sparse_cols, T):
    """(dx, dw1, db1) of gradient="ste": dY1 = dY2 * 2 relu(Y1) at every position (the forward's 2:4
    pattern ignored), in fp32 and rounded once; dX = dY1 W1 dense; dW1 = dY1^T X split like the default
    (the sparse features 2:4 along the tokens of the dense dY1) or dense with sparse_backward=False."""
    need_x, need_w1, _, need_b1, _ = ctx.needs_input_grad[:5]
    dx = dw1 = db1 = None
    dy1 = relu2_grad(dy2, y1)   # fp32, one rounding, the canonical NaN; padded rows: dY2 = 0 there
    if need_x:
        dxp = (dy1 @ w1)[:T]
        dx = dxp if perm is None else dxp.index_select(0, inv_perm)
    if need_b1 and ctx.has_b1:
        db1 = dy1.sum(0, dtype=torch.float32).to(dy1.dtype)
    if need_w1:
        X = _pad_rows(x2d if perm is None else x2d.index_select(0, perm), dy1.shape[0] - T)
        if not ctx.sparse_backward:
            dw1 = dy1.t() @ X
        else:
            tv, ti = _ops.sparsify24_transposed(dy1, "largest_abs", sparse_cols)
            g_sparse = _ops.sparse24_mm(tv, ti, X, None, None)
            g_dense = dy1.t()[dense_cols] @ X
            dw1 = _merge_features(sparse_cols, g_sparse, dense_cols, g_dense)
    return dx, dw1, db1


def _under_vmap() -> bool:
    # whether a torch.func.vmap level is active (the backward then runs on batched tensors)
    from torch._functorch.pyfunctorch import retrieve_all_functorch_interpreters

    return torch._C._functorch.maybe_current_level() is not None and any(i.key() == torch._C._functorch.TransformType.Vmap for i in retrieve_all_functorch_interpreters())
