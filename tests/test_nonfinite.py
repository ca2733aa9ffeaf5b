"""NaN and Inf in training (docs/DESIGN.md, 'NaN and Inf in training'): one non-finite value in the
FFN's input behaves as in the dense FFN, is confined to what the 2:4 pattern keeps in the weight
gradients, and is never hidden from `isfinite` checks or AMP's GradScaler. CPU."""

from __future__ import annotations

import pytest
import torch

import sp24
from sp24 import reference

T, D, F, BAD_ROW, BAD_COL = 64, 32, 128, 5, 3


def _finite_rows(t: torch.Tensor) -> torch.Tensor:
    return torch.isfinite(t).all(dim=-1)


def _run(bad: float, sparse: bool, dtype=torch.float32, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(T, D, generator=g)
    x[BAD_ROW, BAD_COL] = bad
    x = x.to(dtype).requires_grad_()
    w1 = (torch.randn(F, D, generator=g) / D ** 0.5).to(dtype).requires_grad_()
    w2 = (torch.randn(D, F, generator=g) / F ** 0.5).to(dtype).requires_grad_()
    y = sp24.relu2_ffn(x, w1, w2, sparse=sparse)
    y.float().sum().backward()
    return x, w1, w2, y


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")], ids=["nan", "inf", "-inf"])
def test_one_bad_input_value_like_dense(bad, dtype):
    xs, w1s, w2s, ys = _run(bad, True, dtype)
    xd, _, _, yd = _run(bad, False, dtype)
    others = torch.ones(T, dtype=torch.bool)
    others[BAD_ROW] = False
    for name, sparse_t, dense_t in (("output", ys, yd), ("dX", xs.grad, xd.grad)):
        # the bad token's row is non-finite, every other row finite: in both FFNs
        assert torch.equal(_finite_rows(sparse_t), _finite_rows(dense_t)), name
        assert not torch.isfinite(sparse_t[BAD_ROW]).any(), f"{name}: the bad row must be entirely non-finite"
        assert _finite_rows(sparse_t)[others].all(), f"{name}: a non-finite value leaked into another token"

    # weight gradients: non-finite only on the features the 2:4 pattern kept for the bad row
    with torch.no_grad():
        y1 = xs.detach()[BAD_ROW:BAD_ROW + 1] @ w1s.detach().t()
        kept = reference.select_mask(reference.relu2(y1))[0]  # (F,) features kept for the bad row
    bad_w2_cols = ~torch.isfinite(w2s.grad).all(dim=0)  # dW2 = dY3^T Y2: column f <-> feature f
    assert bad_w2_cols.any() and not bad_w2_cols[~kept].any(), "dW2: non-finite on a dropped feature"
    bad_w1_rows = ~torch.isfinite(w1s.grad).all(dim=1)  # dW1 = dY1^T X: row f <-> feature f
    assert bad_w1_rows.any()
    # a dropped feature's dW1 row only meets the bad input column (0 * NaN = NaN, as in any GEMM)
    dropped = w1s.grad[~kept]
    cols = torch.ones(D, dtype=torch.bool)
    cols[BAD_COL] = False
    assert torch.isfinite(dropped[:, cols]).all(), "dW1: a dropped feature is non-finite beyond the bad input column"
    assert torch.isfinite(xs.grad[others]).all()


def test_isfinite_and_gradscaler_see_it():
    """AMP's GradScaler skips the step and lowers the scale; isfinite / clip_grad_norm_ see it."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(D, D), sp24.nn.ReLU2FFN(D, F, sparse=True))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 8)
    before = [p.detach().clone() for p in model.parameters()]

    x = torch.randn(T, D)
    x[BAD_ROW, BAD_COL] = float("nan")
    loss = model(x).square().mean()
    assert not torch.isfinite(loss)
    scaler.scale(loss).backward()
    grads = [p.grad for p in model.parameters()]
    assert not all(torch.isfinite(g).all() for g in grads), "a NaN input must give a non-finite gradient"
    with pytest.raises(RuntimeError, match="non-finite"):
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0, error_if_nonfinite=True)
    scaler.step(opt)
    scaler.update()
    assert scaler.get_scale() < 2.0 ** 8, "GradScaler did not notice the non-finite gradient"
    for p, b in zip(model.parameters(), before):
        assert torch.equal(p.detach(), b), "the optimizer step must be skipped"

    # the next, clean step goes through
    opt.zero_grad()
    scaler.scale(model(torch.randn(T, D)).square().mean()).backward()
    scaler.step(opt)
    scaler.update()
    assert any(not torch.equal(p.detach(), b) for p, b in zip(model.parameters(), before))
