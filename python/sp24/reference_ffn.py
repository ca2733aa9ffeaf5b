"""The pure-PyTorch oracle of sp24.relu2_ffn: what the 2:4 FFN computes, forward and backward.

Slow and obvious on purpose; written with dense masks (not with the sp24 ops) so it states the
approximation once. All products in fp32, rounded once to the input dtype.

For tokens X (T, d) (after the token permutation P, if any):
  Y1 = X W1^T + b1;  Y2 = relu(Y1)^2 restricted to M_row = the row-wise 2:4 mask of Y2 ("largest")
  out = P^-1 (Y2 W2^T + b2)
Backward, for dY3 = P dout:
  dY2 = dY3 W2
  dY1 = dY2 * 2 relu(Y1) * M_row                      (the forward mask; relu(Y1) = sqrt(Y2))
  dX  = P^-1 (dY1 W1)
  dW2 = dY3^T (Y2 * M_tok(Y2)),  dW1 = (dY1 * M_tok(dY1))^T X,  db2 = sum dY3,  db1 = sum dY1
where M_tok(A) is 1 on the dense features and, on the other ("sparse") features, the 2:4 mask of
A along the tokens ("largest_abs", tokens zero-padded to a multiple of 4 at the end). The dense
features are the n_dense features with the most non-zeros in relu(Y1)^2 (before the row-wise
2:4), ties: the lower feature index first; the number of sparse ones, F - n_dense, is
F * (1 - dense_fraction) rounded (half up) to a multiple of 16, clamped to [0, F - F % 16].
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F_
from torch import Tensor

from . import reference


def dense_features(y2_full: Tensor, dense_fraction: float) -> Tensor:
    """Bool (F,) mask of the dense features of an unsparsified Y2 (T, F)."""
    Fh = y2_full.shape[1]
    counts = (y2_full != 0).sum(dim=0).tolist()
    n_sparse = math.floor(Fh * (1.0 - dense_fraction) / 16.0 + 0.5) * 16
    n_dense = Fh - max(0, min(n_sparse, Fh - Fh % 16))
    chosen = sorted(range(Fh), key=lambda f: (-counts[f], f))[:n_dense]
    mask = torch.zeros(Fh, dtype=torch.bool, device=y2_full.device)
    mask[chosen] = True
    return mask


def token_mask(a: Tensor, dense: Tensor) -> Tensor:
    """M_tok(a) for a (T, F): 1 on the dense features, token-direction 2:4 ("largest_abs") elsewhere."""
    T = a.shape[0]
    ap = F_.pad(a, (0, 0, 0, (-T) % 4))
    m = reference.select_mask(ap.t().contiguous(), "largest_abs").t()[:T]
    return m | dense.view(1, -1)


def _pad(t: Tensor) -> Tensor:
    """Zero rows up to a multiple of 16 tokens (sp24.ffn.TOKEN_ALIGN); they change no result."""
    return F_.pad(t, (0, 0, 0, (-t.shape[0]) % 16))


def _lin(a: Tensor, w: Tensor, b: Optional[Tensor]) -> Tensor:
    out = a.float() @ w.float().t()
    return out if b is None else out + b.float()


def forward(x: Tensor, w1: Tensor, w2: Tensor, b1: Optional[Tensor] = None, b2: Optional[Tensor] = None,
            perm: Optional[Tensor] = None) -> dict:
    """Every intermediate of the sparse forward for x (T, d): X, y1, y2_full, m_row, y2, out."""
    X = x if perm is None else x[perm]
    # the dense GEMM in x's dtype, on the batch padded as the FFN pads it: a GEMM's rounding can
    # depend on its shape (cuBLAS picks kernels by shape), and the 2:4 selection sees those bits
    y1 = F_.linear(_pad(X), w1, b1)[: X.shape[0]]
    y2_full = reference.relu2(y1)
    m_row = reference.select_mask(y2_full, "largest")
    y2 = y2_full * m_row
    y3 = _lin(y2, w2, b2).to(x.dtype)
    out = y3 if perm is None else torch.empty_like(y3).index_copy_(0, perm, y3)
    return {"X": X, "y1": y1, "y2_full": y2_full, "m_row": m_row, "y2": y2, "out": out}


def grads(x: Tensor, w1: Tensor, w2: Tensor, b1: Optional[Tensor], b2: Optional[Tensor], dout: Tensor, *,
          dense_fraction: float = 0.05, perm: Optional[Tensor] = None, forward_fn=None) -> dict:
    """The approximate gradients (module docstring) for x (T, d) and dout (T, d): dx, dw1, dw2, db1, db2.
    forward_fn: the forward whose intermediates the backward uses (default: forward; the FP8 path's
    is sp24.reference_fp8.ffn_forward, its backward being this one)."""
    f = (forward_fn or forward)(x, w1, w2, b1, b2, perm)
    dt = x.dtype
    dy3 = dout if perm is None else dout[perm]
    dy2 = (_pad(dy3) @ w2)[: dy3.shape[0]]            # dense GEMM in the input dtype, as the FFN does
    dy1 = (dy2.float() * 2.0 * reference._sqrt_rn(f["y2"].float()) * f["m_row"]).to(dt)
    dxp = (dy1.float() @ w1.float()).to(dt)
    dx = dxp if perm is None else torch.empty_like(dxp).index_copy_(0, perm, dxp)
    dense = dense_features(f["y2_full"], dense_fraction)
    y2t = f["y2"] * token_mask(f["y2"], dense)
    dy1t = dy1 * token_mask(dy1, dense)
    return {
        "dx": dx,
        "dw2": (dy3.float().t() @ y2t.float()).to(dt),
        "dw1": (dy1t.float().t() @ f["X"].float()).to(dt),
        "db2": None if b2 is None else dy3.float().sum(0).to(dt),
        "db1": None if b1 is None else dy1.float().sum(0).to(dt),
        "dense_features": dense,
    }


def experts(x: Tensor, top_k_index: Tensor, top_k_weights: Tensor, w1: Tensor, w2: Tensor, dout: Tensor, *,
            dense_fraction: float = 0.05, perms: Optional[dict] = None, b1: Optional[Tensor] = None,
            b2: Optional[Tensor] = None) -> dict:
    """The routed experts of sp24.relu2_experts (sparse mode), forward and approximate gradients, for
    x (T, d), top_k_index / top_k_weights (T, k), w1 (E, F, d), w2 (E, d, F), dout (T, d):
    out, dx, dw1, dw2, dweights. Each expert e takes the tokens routed to it, ordered by slot then
    token (torch.where on its (k, T) one-hot mask), through this module's forward / grads (with the
    expert's biases b1[e], b2[e] if given: db1, db2 are returned then); perms[n] is the token
    permutation of an expert with n tokens (None: no permutation); index E marks a dropped pair."""
    E = w1.shape[0]
    acc = top_k_weights.dtype
    out = torch.zeros(x.shape, dtype=acc)
    dx, dw1, dw2 = torch.zeros(x.shape, dtype=acc), torch.zeros_like(w1), torch.zeros_like(w2)
    dweights = torch.zeros_like(top_k_weights)
    db1 = None if b1 is None else torch.zeros_like(b1)
    db2 = None if b2 is None else torch.zeros_like(b2)
    bias = lambda b, e: None if b is None else b[e]  # noqa: E731
    for e in range(E):
        slot, tok = torch.where(top_k_index.t() == e)
        if tok.numel() == 0:
            continue
        perm = None if perms is None else perms[tok.numel()]
        rw = top_k_weights[tok, slot]
        y = forward(x[tok], w1[e], w2[e], bias(b1, e), bias(b2, e), perm=perm)["out"]
        out.index_add_(0, tok, (y * rw[:, None]).to(acc))
        # out += y * w: dL/dy = dout * w (in the product's dtype), dL/dw = <dout, y>
        g = grads(x[tok], w1[e], w2[e], bias(b1, e), bias(b2, e), (dout[tok] * rw[:, None]).to(x.dtype),
                  dense_fraction=dense_fraction, perm=perm)
        dx.index_add_(0, tok, g["dx"].to(acc))
        dw1[e], dw2[e] = g["dw1"], g["dw2"]
        if b1 is not None:
            db1[e], db2[e] = g["db1"], g["db2"]
        dweights[tok, slot] = (dout[tok].to(acc) * y.to(acc)).sum(-1)
    return {"out": out.to(x.dtype), "dx": dx.to(x.dtype), "dw1": dw1, "dw2": dw2, "dweights": dweights,
            "db1": db1, "db2": db2}
