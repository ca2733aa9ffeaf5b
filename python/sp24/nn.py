"""Modules: the Squared-ReLU FFN with 2:4 activation sparsity, and the tools to train with it.

    ffn = sp24.nn.ReLU2FFN(d_model, d_hidden)          # dense (sparse=False) by default
    warm = sp24.nn.DenseWarmup(model, steps=1000)      # dense warm-up, then 2:4 fwd + bwd
    ... each optimizer step: warm.step()
    sp24.nn.convert(model)                             # swap existing Squared-ReLU MLPs in place
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F_
from torch import Tensor, nn

from .api import stats as _stats
from .ffn import relu2_ffn

__all__ = ["ReLU2", "ReLU2FFN", "set_sparse", "convert", "DenseWarmup"]


class ReLU2(nn.Module):
    """Squared-ReLU activation, relu(x)^2."""

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(x).square()


class ReLU2FFN(nn.Module):
    """y = w2(relu(w1(x))^2); `.sparse` switches the 2:4 path (forward and backward) on.

    `.track_stats = True` records, without autograd, `.last_stats` = {"zero_fraction",
    "drop_rowwise", "drop_tokenwise"} of this forward's Y2 (sp24.stats; an extra GEMM, so for
    monitoring at small sizes, and it breaks a torch.compile graph).
    """

    def __init__(self, d_model: int, d_hidden: int, bias: bool = False, *, sparse: bool = False,
                 dense_fraction: float = 0.05, device=None, dtype=None):
        super().__init__()
        self.w1 = nn.Linear(d_model, d_hidden, bias=bias, device=device, dtype=dtype)
        self.w2 = nn.Linear(d_hidden, d_model, bias=bias, device=device, dtype=dtype)
        self._init_flags(sparse, dense_fraction)

    def _init_flags(self, sparse: bool, dense_fraction: float) -> None:
        self.sparse = bool(sparse)
        self.dense_fraction = dense_fraction
        self.permute_tokens = True
        self.track_stats = False
        self.last_stats: Optional[dict] = None

    @classmethod
    def from_linear(cls, w1: nn.Linear, w2: nn.Linear, *, sparse: bool = False,
                    dense_fraction: float = 0.05) -> "ReLU2FFN":
        """A ReLU2FFN around existing nn.Linear modules (d -> F, F -> d), which it reuses."""
        if not _chain(w1, w2):
            raise ValueError(f"sp24.nn.ReLU2FFN.from_linear: need two nn.Linear d->F and F->d with the same "
                             f"dtype/device/bias, got {w1!r} and {w2!r}")
        m = cls.__new__(cls)
        nn.Module.__init__(m)
        m.w1, m.w2 = w1, w2
        m._init_flags(sparse, dense_fraction)
        return m

    def forward(self, x: Tensor) -> Tensor:
        if self.track_stats:
            self._record_stats(x)
        return relu2_ffn(x, self.w1.weight, self.w2.weight, self.w1.bias, self.w2.bias, sparse=self.sparse,
                         dense_fraction=self.dense_fraction, permute_tokens=self.permute_tokens)

    @torch.no_grad()
    def _record_stats(self, x: Tensor) -> None:
        y2 = torch.relu(F_.linear(x, self.w1.weight, self.w1.bias)).square()
        s = _stats(y2.reshape(-1, y2.shape[-1]))
        self.last_stats = {k: float(s[k]) for k in ("zero_fraction", "drop_rowwise", "drop_tokenwise")}

    def extra_repr(self) -> str:
        return (f"d_model={self.w1.in_features}, d_hidden={self.w1.out_features}, "
                f"bias={self.w1.bias is not None}, sparse={self.sparse}, dense_fraction={self.dense_fraction}")


def set_sparse(model: nn.Module, enabled: bool) -> int:
    """Set `.sparse = enabled` on every ReLU2FFN in model (itself included); returns how many."""
    n = 0
    for m in model.modules():
        if isinstance(m, ReLU2FFN):
            m.sparse = bool(enabled)
            n += 1
    return n


class DenseWarmup:
    """Dense warm-up: the sp24 FFNs run dense for `steps` calls of .step(), then 2:4.

    Call .step() once per optimizer step; it returns whether the model is now sparse. The switch
    happens once (set_sparse(model, True)); a later manual set_sparse is left alone. state_dict()
    / load_state_dict() resume the count from a checkpoint.
    """

    def __init__(self, model: nn.Module, steps: int = 1000):
        if steps < 0:
            raise ValueError(f"sp24.nn.DenseWarmup: steps must be >= 0, got {steps}")
        self.model, self.steps, self.count = model, int(steps), 0
        self.done = self.steps == 0
        set_sparse(model, self.done)

    def step(self) -> bool:
        self.count += 1
        if not self.done and self.count >= self.steps:
            set_sparse(self.model, True)
            self.done = True
        return self.done

    def state_dict(self) -> dict:
        return {"steps": self.steps, "count": self.count, "done": self.done}

    def load_state_dict(self, state: dict) -> None:
        self.steps, self.count, self.done = int(state["steps"]), int(state["count"]), bool(state["done"])
        set_sparse(self.model, self.done)


# --------------------------------------------------------------------------------------------
# convert

# Activation classes taken for Squared-ReLU by name (other libraries' spellings) besides ReLU2.
RELU2_NAMES = {"relu2", "squaredrelu", "relusquared", "relusquare", "squared_relu", "relu_squared"}
# (first, second) Linear attribute names of MLP blocks in common model code.
LINEAR_PAIRS = (("fc1", "fc2"), ("w1", "w2"), ("c_fc", "c_proj"), ("up_proj", "down_proj"),
                ("linear1", "linear2"), ("lin1", "lin2"))


def _is_relu2(m: nn.Module) -> bool:
    return isinstance(m, ReLU2) or type(m).__name__.lower() in RELU2_NAMES


def _chain(l1, l2) -> bool:
    return (isinstance(l1, nn.Linear) and isinstance(l2, nn.Linear) and l1.out_features == l2.in_features
            and l1.in_features == l2.out_features and (l1.bias is None) == (l2.bias is None)
            and l1.weight.dtype == l2.weight.dtype and l1.weight.device == l2.weight.device)


def _candidate(m: nn.Module):
    if isinstance(m, ReLU2FFN):
        return None
    if isinstance(m, nn.Sequential) and len(m) == 3 and _is_relu2(m[1]) and _chain(m[0], m[2]):
        return m[0], m[2]
    for a, b in LINEAR_PAIRS:
        l1, l2 = getattr(m, a, None), getattr(m, b, None)
        if _chain(l1, l2):
            return l1, l2
    return None


@torch.no_grad()
def _behaves_like_relu2_ffn(m: nn.Module, l1: nn.Linear, l2: nn.Linear) -> bool:
    # The attribute names say nothing about the activation or extra ops in forward(): run the
    # module on a probe batch (eval mode: no dropout) and compare with the Squared-ReLU FFN of its
    # own weights.
    w = l1.weight
    x = torch.randn(8, l1.in_features, generator=torch.Generator().manual_seed(0)).to(w.device, w.dtype)
    training = m.training
    m.eval()
    try:
        got = m(x)
    except Exception:  # noqa: BLE001 - a forward that needs other inputs is not an FFN block
        return False
    finally:
        m.train(training)
    if not isinstance(got, Tensor) or got.shape != x.shape:
        return False
    want = relu2_ffn(x, l1.weight, l2.weight, l1.bias, l2.bias, sparse=False)
    tol = 1e-4 if w.dtype in (torch.float32, torch.float64) else 3e-2
    return torch.allclose(got.float(), want.float(), rtol=tol, atol=tol * float(want.abs().max().clamp(min=1)))


def convert(model: nn.Module, *, sparse: bool = False, dense_fraction: float = 0.05,
            match: Optional[Callable[[str, nn.Module], object]] = None, verify: bool = True) -> nn.Module:
    """Replace the Squared-ReLU MLP blocks of model by ReLU2FFN; returns the model (a new module
    only when the root itself is such a block).

    Detected (unless `match` is given): `nn.Sequential(Linear, ReLU2-like, Linear)` and modules
    with a Linear pair named fc1/fc2, w1/w2, c_fc/c_proj, up_proj/down_proj, linear1/linear2 or
    lin1/lin2 whose dims chain (d -> F -> d). With verify=True (default) a candidate is swapped
    only if its forward on a probe batch equals the Squared-ReLU FFN of its weights, so a GELU or
    gated MLP with the same attribute names is left alone. `match(name, module)` returns the
    (first, second) Linear of a block to convert or None; it replaces the detection.
    The new module reuses the block's nn.Linear modules: the same Parameter objects, device,
    dtype and optimizer state; nothing is copied.
    """
    def find(name, m):
        if match is not None:
            pair = match(name, m)
            if pair is not None and not _chain(*pair):
                raise ValueError(f"sp24.nn.convert: match({name!r}) must return two nn.Linear (d->F, F->d) with "
                                 f"the same dtype/device/bias, got {pair!r}")
            return pair
        pair = _candidate(m)
        if pair is not None and verify and not _behaves_like_relu2_ffn(m, *pair):
            return None
        return pair

    def build(pair) -> ReLU2FFN:
        return ReLU2FFN.from_linear(*pair, sparse=sparse, dense_fraction=dense_fraction)

    root_pair = find("", model)
    if root_pair is not None:
        return build(root_pair)

    def walk(parent: nn.Module, prefix: str) -> None:
        for child_name, child in list(parent.named_children()):
            full = f"{prefix}.{child_name}" if prefix else child_name
            pair = find(full, child)
            if pair is not None:
                setattr(parent, child_name, build(pair))
            else:
                walk(child, full)

    walk(model, "")
    return model
