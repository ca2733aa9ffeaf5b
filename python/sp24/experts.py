"""Routed Squared-ReLU experts (Mixture-of-Experts) with 2:4 activation sparsity.

    out[t] = sum_j top_k_weights[t, j] * FFN_e(x[t]),  e = top_k_index[t, j],
    FFN_e(x) = relu(x W1[e]^T (+ b1[e]))^2 W2[e]^T (+ b2[e])

The expert weights are stacked as Hugging Face's MoE experts store them: w1 (E, F, d), w2 (E, d, F)
(each expert's slice in nn.Linear layout). The routing (which tokens, which weights) comes from the
caller's router; this module only computes the experts.

The per-expert path (the one implemented): the (token, slot) pairs are grouped by expert, each
expert with at least one token runs its tokens through the 2:4 FFN of sp24.relu2_ffn (so every
expert gets the 2:4 forward on Y2, the backward with the forward mask, its own dense-feature split
from its own counts, the token permutation within its tokens, and the automatic dense fallback
decided on its own token count and shape), and the outputs, scaled by the routing weights, are
added back per token. The tokens of all experts are gathered once, each 2:4 expert's already in the
FFN's permutation for its token count and followed by its zero padding rows (_layout), so the FFN
itself permutes, pads and scatters nothing; the bits are those of relu2_ffn on each expert's tokens,
forward and backward (tested). It launches the FFN's kernels once per active expert. Order and
rounding follow Hugging Face's eager experts: experts in increasing index, within an expert the
pairs ordered by slot then token, the sum accumulated in top_k_weights' dtype and returned in x's
dtype. An index equal to E marks a dropped pair (the sentinel of Hugging Face's expert-parallel
grouped_mm path and of Mixtral-style eager loops; NemotronH's own eager loop raises an IndexError
for it): it adds nothing. Autograd reaches x, both weight stacks, the biases and top_k_weights (the
router's gradient).
"""

from __future__ import annotations

import contextlib
from typing import Optional

import torch
import torch.nn.functional as F_
from torch import Tensor
from torch._subclasses.fake_tensor import is_fake

from . import _checks, _fallback, _fp8
from ._ffn_autograd import FP8_TOKEN_ALIGN, PERMUTATION_SEED, TOKEN_ALIGN, _hash31, apply_ffn
from .ffn import _autocast_dtype, _check_options, _fp8_wanted, dense_relu2_ffn, n_dense_features, relu2_ffn

__all__ = ["relu2_experts", "route"]

OP = "sp24.relu2_experts"


def _check(x, idx, weights, w1, w2, b1, b2) -> None:
    for name, t in (("x", x), ("top_k_index", idx), ("top_k_weights", weights), ("w1", w1), ("w2", w2)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{OP}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if x.dim() != 2:
        raise ValueError(f"{OP}: x must be (T, d) (the flattened tokens), got shape {tuple(x.shape)}")
    if w1.dim() != 3 or w2.dim() != 3:
        raise ValueError(f"{OP}: w1 (E, F, d) and w2 (E, d, F) must be 3-D, got {tuple(w1.shape)} and {tuple(w2.shape)}")
    E, Fh, d = w1.shape
    if x.shape[1] != d or tuple(w2.shape) != (E, d, Fh):
        raise ValueError(f"{OP}: shapes do not match: x {tuple(x.shape)} must be (T, d), w1 (E, F, d), w2 (E, d, F); "
                         f"got w1 {tuple(w1.shape)} and w2 {tuple(w2.shape)}")
    if idx.dim() != 2 or idx.shape[0] != x.shape[0] or tuple(weights.shape) != tuple(idx.shape):
        raise ValueError(f"{OP}: top_k_index and top_k_weights must both be (T, k) with T = {x.shape[0]}, got "
                         f"{tuple(idx.shape)} and {tuple(weights.shape)}")
    if idx.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"{OP}: top_k_index must be int64 or int32, got {idx.dtype}")
    if not weights.is_floating_point():
        raise TypeError(f"{OP}: top_k_weights must be floating point, got {weights.dtype}")
    for name, t, shape in (("b1", b1, (E, Fh)), ("b2", b2, (E, d))):
        if t is not None and (not isinstance(t, Tensor) or tuple(t.shape) != shape):
            raise ValueError(f"{OP}: {name} must be None or a tensor of shape {shape}, got "
                             f"{tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__}")
    for name, t in (("top_k_index", idx), ("top_k_weights", weights), ("w1", w1), ("w2", w2), ("b1", b1), ("b2", b2)):
        if t is not None and t.device != x.device:
            raise ValueError(f"{OP}: x and {name} must be on the same device, got {x.device} and {t.device}")


def route(top_k_index: Tensor, num_experts: int) -> tuple[Tensor, Tensor, list]:
    """(tokens, slots, counts): the (token, slot) pairs grouped by expert, in Hugging Face's eager
    order (experts increasing; within an expert by slot, then token), and the number of pairs of
    each expert (a Python list: the per-expert loop needs the sizes on the host; one transfer
    carries them and the index range).
    Pairs routed to index num_experts (dropped) come last and are not counted."""
    T, k = top_k_index.shape
    flat = top_k_index.t().reshape(-1)   # pair i = j * T + t: slot-major, as torch.where(mask[e]) orders them
    if not flat.numel():
        return flat, flat, [0] * num_experts
    # one host transfer: the index range and the per-expert counts
    lo_hi = torch.stack([flat.min(), flat.max()]).to(torch.int64)
    host = torch.cat([lo_hi, torch.bincount(flat.clamp(0, num_experts), minlength=num_experts + 1)]).tolist()
    if host[0] < 0 or host[1] > num_experts:
        raise ValueError(f"{OP}: top_k_index must lie in [0, {num_experts}] ({num_experts} marks a dropped pair), "
                         f"got values in [{host[0]}, {host[1]}]")
    order = torch.sort(flat, stable=True).indices
    return order % T, order // T, host[2:2 + num_experts]


def relu2_experts(x: Tensor, top_k_index: Tensor, top_k_weights: Tensor, w1: Tensor, w2: Tensor,
                  b1: Optional[Tensor] = None, b2: Optional[Tensor] = None, *, sparse: bool = True,
                  dense_fraction: float = 0.05, permute_tokens: bool = True, gradient: str = "24sparse",
                  sparse_backward: bool = True, fp8: bool = False) -> Tensor:
    """Routed Squared-ReLU experts, each expert's tokens through :func:`sp24.relu2_ffn`.

    Args:
        x (Tensor): (T, d) tokens.
        top_k_index (Tensor): (T, k) int64/int32 expert of each (token, slot); values in [0, E],
            E marking a dropped pair.
        top_k_weights (Tensor): (T, k) floating routing weights; the sum is accumulated in its dtype.
        w1 (Tensor): (E, F, d).  w2 (Tensor): (E, d, F).  b1 (E, F), b2 (E, d): optional biases.
        sparse, dense_fraction, permute_tokens, gradient, sparse_backward, fp8: as in
            :func:`sp24.relu2_ffn`, applied to every expert (sparse=True needs d and F to be
            multiples of 8). Default: sparse=True.

    Returns:
        Tensor: (T, d) in x's dtype.

    Raises:
        TypeError / ValueError: wrong types, shapes, devices, index range (each message names
            sp24.relu2_experts), and every error of :func:`sp24.relu2_ffn` for the expert shape.

    Example::

        >>> x, w1, w2 = torch.randn(6, 16), torch.randn(4, 32, 16), torch.randn(4, 16, 32)
        >>> idx, wts = torch.tensor([[0, 1]] * 6), torch.full((6, 2), 0.5)
        >>> sp24.relu2_experts(x, idx, wts, w1, w2).shape
        torch.Size([6, 16])
    """
    _check(x, top_k_index, top_k_weights, w1, w2, b1, b2)
    sparse = _checks.check_bool(OP, "sparse", sparse)
    _checks.check_bool(OP, "fp8", fp8)
    _check_options(x, sparse, permute_tokens, dense_fraction, sparse_backward, gradient, OP)  # even if none is routed
    if not fp8 and _autocast_dtype(x) is None:
        for name, t in (("w1", w1), ("w2", w2), ("b1", b1), ("b2", b2)):
            if t is not None and t.dtype != x.dtype:  # checked here, not per expert: also with nothing routed
                raise TypeError(f"{OP}: {name}.dtype must equal x.dtype ({x.dtype}), got {t.dtype}")
    E, Fh, d = w1.shape
    if x.device.type == "meta":  # no values, no routing: the output's shape and dtype only
        return x.new_empty(x.shape)
    if sparse and (d % 8 or Fh % 8):
        raise ValueError(f"{OP}: sparse=True needs d and F (the expert width) to be multiples of 8, got d={d}, "
                         f"F={Fh}; use sparse=False for this expert shape")
    opts = (float(dense_fraction), bool(permute_tokens), gradient, bool(sparse_backward), bool(fp8))
    if sparse and (torch.compiler.is_compiling() or is_fake(x)):
        # traced (torch.compile, fullgraph included) or FakeTensorMode: one opaque op, whose sizes the
        # routing does not decide (see _experts_op)
        return torch.ops.sp24.relu2_experts_sparse(x, top_k_index, top_k_weights, w1, w2, b1, b2, *opts,
                                                  _autocast_dtype(x))
    if is_fake(x) or torch.compiler.is_compiling():
        raise RuntimeError(f"{OP}: sparse=False follows Hugging Face's eager loop, which needs the routing's "
                           f"per-expert token counts on the host: it cannot run under FakeTensorMode; run it eagerly, "
                           f"or under torch.compile without fullgraph (a graph break at the routing)")
    if sparse:
        return _sparse_eager(x, top_k_index, top_k_weights, w1, w2, b1, b2, *opts, _autocast_dtype(x))
    return _dense_experts(x, top_k_index, top_k_weights, w1, w2, b1, b2, *route(top_k_index, E), fp8)


def _dense_experts(x, top_k_index, top_k_weights, w1, w2, b1, b2, tokens, slots, counts, fp8) -> Tensor:
    """sparse=False: Hugging Face's eager experts loop, op for op (experts in increasing index); with
    fp8, each expert through relu2_ffn(sparse=False, fp8=True)."""
    out = torch.zeros_like(x, dtype=top_k_weights.dtype)
    n_pairs = sum(counts)
    if n_pairs == 0:
        return out.to(x.dtype)
    tok, slot = tokens[:n_pairs], slots[:n_pairs]
    # One gather of the routed rows, split per expert, and the stacks unbound once: their backwards
    # are one scatter, one concatenation and one stack. Indexing x[tok_e] and w1[e] per expert would
    # allocate a zero (T, d) / (E, F, d) gradient per expert (E^2 traffic for the stacks).
    stacks = [None if t is None else t.unbind(0) for t in (w1, w2, b1, b2)]
    ys = []
    for e, xe in zip((e for e, n in enumerate(counts) if n), x.index_select(0, tok).split([n for n in counts if n])):
        w1e, w2e, b1e, b2e = (None if st is None else st[e] for st in stacks)
        ys.append(relu2_ffn(xe, w1e, w2e, b1e, b2e, sparse=False, fp8=fp8))
    # index_select, not advanced indexing: its backward is an index_add_, not an accumulating index_put
    y = torch.cat(ys) * top_k_weights.reshape(-1).index_select(0, tok * top_k_index.shape[1] + slot)[:, None]
    # pairs in expert order: on the CPU the same sequence of additions as one index_add_ per expert
    return out.index_add_(0, tok, y.to(out.dtype)).to(x.dtype)


def _layout(tokens: Tensor, counts: list, two4: list, permute: bool, align: int):
    """The rows of the experts' tokens as the 2:4 FFN takes them, all experts in one (R,) index.

    Expert e's n_e pairs (in route's order) occupy rows [start_e, start_e + R_e). An expert that runs
    2:4 (two4[e]) has its pairs in the FFN's token permutation for n_e tokens (token_permutation(n_e),
    computed here for all experts at once: a stable sort by (expert, hash of the rank in the expert),
    which is that permutation within each expert) followed by padding rows up to a multiple of align
    (R_e = n_e rounded up); the others keep route's order, unpadded (R_e = n_e).
    Returns (row_pair, pair, sizes): the index of each row's pair in route's order (-1 for a padding
    row), the same without the padding rows (row_pair[row_pair >= 0], made without a sync: the rows
    of the pairs increase with their position in the new order) and the R_e of the experts with
    tokens."""
    n = sum(counts)
    dev = tokens.device
    active = [c for c in counts if c]
    sizes = [(c + (-c) % align) if t else c for c, t in zip(counts, two4) if c]
    flags = [int(t) for c, t in zip(counts, two4) if c]
    # per active expert: its pair count, first pair, first row and whether it runs 2:4 (one transfer)
    starts, pstarts = [0], [0]
    for c, r in zip(active[:-1], sizes[:-1]):
        starts.append(starts[-1] + c)
        pstarts.append(pstarts[-1] + r)
    host = torch.tensor([active, starts, pstarts, flags], dtype=torch.int64)
    pinned = dev.type == "cuda" and not torch.compiler.is_compiling()
    host = host.pin_memory().to(dev, non_blocking=True) if pinned else host.to(dev)
    expert = torch.repeat_interleave(torch.arange(len(active), device=dev), host[0], output_size=n)
    rank = torch.arange(n, device=dev) - host[1].index_select(0, expert)
    if permute:
        # the key of _ffn_autograd._make_permutation: the rank's hash (< 2^31) where the expert is permuted
        key = torch.where(host[3].index_select(0, expert) != 0, _hash31(rank + PERMUTATION_SEED), rank)
        order = torch.argsort(expert * (1 << 31) + key, stable=True)
    else:
        order = torch.arange(n, device=dev)
    dest = host[2].index_select(0, expert) + rank          # row of the q-th pair of the expert-major order
    row_pair = torch.full((sum(sizes),), -1, dtype=torch.int64, device=dev)
    return row_pair.index_copy_(0, dest, order), order, sizes


def _sparse_experts(x, top_k_index, top_k_weights, w1, w2, b1, b2, tokens, slots, counts, dense_fraction,
                    permute_tokens, options, fp8, amp) -> Tensor:
    """sparse=True: each expert with tokens through the 2:4 FFN (relu2_ffn's method and options, its
    automatic dense fallback decided per expert), the experts' tokens gathered once, already in each
    expert's token permutation and padded (_layout), so the FFN permutes, pads and scatters nothing
    itself. Bit for bit the same as relu2_ffn on each expert's tokens (tests/test_experts.py)."""
    T, k = top_k_index.shape
    E, Fh, d = w1.shape
    out = torch.zeros_like(x, dtype=top_k_weights.dtype)
    if sum(counts) == 0:
        return out.to(x.dtype)
    fp8 = _fp8_wanted(x, fp8)
    if fp8 and (d % 16 or Fh % 16):
        raise ValueError(f"{OP}: fp8=True needs d and F (the expert width) to be multiples of 16 (the FP8 GEMMs' "
                         f"rule), got d={d}, F={Fh}; use fp8=False for this expert shape")
    out_dtype = amp or x.dtype  # amp: the autocast dtype of the caller (None outside autocast)
    compute = _fp8.COMPUTE_DTYPE if fp8 else out_dtype
    if not fp8 and compute not in (torch.float16, torch.bfloat16, torch.float32):
        raise TypeError(f"{OP}: sparse=True needs torch.float16, torch.bfloat16 or torch.float32, got {compute}; "
                        f"cast the inputs or use sparse=False")
    # as relu2_ffn decides it (the routing weights' gradient needs no FFN backward)
    backward = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, w1, w2, b1, b2))
    two4 = [bool(c) and not _fallback.use_dense(x.device, c, d, Fh, compute, backward) for c in counts]
    row_pair, pair, sizes = _layout(tokens, counts, two4, permute_tokens, FP8_TOKEN_ALIGN if fp8 else TOKEN_ALIGN)
    real = row_pair >= 0
    # padding rows read row T of x padded with one zero row (their gradient lands there and is dropped)
    row_tok = torch.where(real, tokens.index_select(0, row_pair.clamp(min=0)), T)
    n_dense = n_dense_features(Fh, dense_fraction)
    with torch.autocast(x.device.type, enabled=False) if amp is not None or fp8 else contextlib.nullcontext():
        # the casts (under autocast or for FP8) are differentiable, as in relu2_ffn
        xs = F_.pad(x, (0, 0, 0, 1)).index_select(0, row_tok).to(compute).split(sizes)
        stacks = [None if t is None else t.to(compute).unbind(0) for t in (w1, w2, b1, b2)]
        ys = []
        for e, xe, n, two in zip((e for e, c in enumerate(counts) if c), xs, (c for c in counts if c),
                                 (t for c, t in zip(counts, two4) if c)):
            w1e, w2e, b1e, b2e = (None if st is None else st[e] for st in stacks)
            if not two:
                ys.append((_fp8.dense_relu2_ffn if fp8 else dense_relu2_ffn)(xe, w1e, w2e, b1e, b2e))
                continue
            y = apply_ffn(xe, w1e, w2e, b1e, b2e, None, None, n_dense, tuple(xe.shape), backward,
                          (*options, fp8, xe.shape[0] - n))[0]
            ys.append(y[:n])
        y = torch.cat(ys).to(out_dtype)
    # the rows' pairs (padding removed) in the order of the outputs; per token, its pairs are added
    # in increasing expert order, as in the eager loop (pairs of one token in one expert, which top-k
    # routing never makes, in the expert's permuted order: with three or more of them the sum can
    # differ in the last bit from relu2_ffn per expert)
    tok = tokens.index_select(0, pair)
    w = top_k_weights.reshape(-1).index_select(0, tok * k + slots.index_select(0, pair))
    return out.index_add_(0, tok, (y * w[:, None]).to(out.dtype)).to(x.dtype)


# ---------------------------------------------------------------------------------------------
# The sparse path as one custom op, for torch.compile (fullgraph=True included) and FakeTensorMode:
# the routing's per-expert sizes are data-dependent, so the traced graph holds the whole path as one
# opaque op of known output shape (x's), and its backward is a second op that runs the path again
# with autograd and backpropagates (the forward is recomputed: about a third more expert work in a
# compiled training step; the bits equal the eager path's, which is deterministic on the CPU).


def _sparse_eager(x, top_k_index, top_k_weights, w1, w2, b1, b2, dense_fraction, permute_tokens, gradient,
                  sparse_backward, fp8, amp):
    tokens, slots, counts = route(top_k_index, w1.shape[0])
    return _sparse_experts(x, top_k_index, top_k_weights, w1, w2, b1, b2, tokens, slots, counts, dense_fraction,
                           permute_tokens, (gradient, sparse_backward), fp8, amp)


@torch.library.custom_op("sp24::relu2_experts_sparse", mutates_args=())
def _experts_op(x: Tensor, top_k_index: Tensor, top_k_weights: Tensor, w1: Tensor, w2: Tensor, b1: Optional[Tensor],
                b2: Optional[Tensor], dense_fraction: float, permute_tokens: bool, gradient: str,
                sparse_backward: bool, fp8: bool, amp: Optional[torch.dtype]) -> Tensor:
    with torch.no_grad():
        return _sparse_eager(x, top_k_index, top_k_weights, w1, w2, b1, b2, dense_fraction, permute_tokens, gradient,
                             sparse_backward, fp8, amp)


@_experts_op.register_fake
def _(x, top_k_index, top_k_weights, w1, w2, b1, b2, dense_fraction, permute_tokens, gradient, sparse_backward, fp8,
      amp):
    return x.new_empty(x.shape, dtype=x.dtype)


_AUTOGRAD_KEYS = tuple(getattr(torch._C.DispatchKey, k) for k in ("AutogradFunctionality", "AutogradOther",
                                                                    "AutogradNestedTensor"))


@contextlib.contextmanager
def _autograd_dispatch():
    """Autograd back on inside a custom op's kernel, which torch calls with the Autograd keys excluded
    (the backward op records and runs a graph of its own); the exclusions restored after."""
    before = [torch._C._dispatch_tls_is_dispatch_key_excluded(k) for k in _AUTOGRAD_KEYS]
    try:
        for k in _AUTOGRAD_KEYS:
            torch._C._dispatch_tls_set_dispatch_key_excluded(k, False)
        yield
    finally:
        for k, b in zip(_AUTOGRAD_KEYS, before):
            torch._C._dispatch_tls_set_dispatch_key_excluded(k, b)


@torch.library.custom_op("sp24::relu2_experts_sparse_backward", mutates_args=())
def _experts_backward_op(grad: Tensor, x: Tensor, top_k_index: Tensor, top_k_weights: Tensor, w1: Tensor, w2: Tensor,
                         b1: Optional[Tensor], b2: Optional[Tensor], dense_fraction: float, permute_tokens: bool,
                         gradient: str, sparse_backward: bool, fp8: bool,
                         amp: Optional[torch.dtype]) -> list[Tensor]:
    """(dx, dtop_k_weights, dw1, dw2, db1, db2): the forward again with autograd, then its backward
    (db1 / db2 empty without biases)."""
    ins = [None if t is None else t.detach().requires_grad_() for t in (x, top_k_weights, w1, w2, b1, b2)]
    with torch.enable_grad(), _autograd_dispatch():
        out = _sparse_eager(ins[0], top_k_index, *ins[1:], dense_fraction, permute_tokens, gradient,
                            sparse_backward, fp8, amp)
        leaves = [t for t in ins if t is not None]
        grads = dict(zip(map(id, leaves), torch.autograd.grad(out, leaves, grad, allow_unused=True)))
    res = []
    for t in ins:
        g = None if t is None else grads[id(t)]
        res.append(x.new_empty(0) if t is None else (torch.zeros_like(t) if g is None else g))
    return res


@_experts_backward_op.register_fake
def _(grad, x, top_k_index, top_k_weights, w1, w2, b1, b2, dense_fraction, permute_tokens, gradient, sparse_backward,
      fp8, amp):
    return [x.new_empty(0) if t is None else torch.empty_like(t) for t in (x, top_k_weights, w1, w2, b1, b2)]


def _experts_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs[:7])  # the biases may be None
    ctx.opts = inputs[7:]


def _experts_backward(ctx, grad):
    x, idx, wts, w1, w2, b1, b2 = ctx.saved_tensors
    dx, dwts, dw1, dw2, db1, db2 = torch.ops.sp24.relu2_experts_sparse_backward(grad, x, idx, wts, w1, w2, b1, b2,
                                                                               *ctx.opts)
    return (dx, None, dwts, dw1, dw2, None if b1 is None else db1, None if b2 is None else db2,
            None, None, None, None, None, None)


_experts_op.register_autograd(_experts_backward, setup_context=_experts_setup)
