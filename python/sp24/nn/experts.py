"""Routed Squared-ReLU experts: ReLU2Experts, and the in-place conversion of a model's experts module.

An experts module here is what Hugging Face's MoE models call one (NemotronH's ``NemotronHExperts``):
two stacked weights, ``up_proj`` (E, F, d) and ``down_proj`` (E, d, F), non-gated Squared-ReLU
experts, and ``forward(hidden_states (T, d), top_k_index (T, k), top_k_weights (T, k)) -> (T, d)``.

Conversion keeps the module object. Its class is swapped for a subclass of its own class
(``sp24.nn.experts.swapped_class``, as FSDP2's ``fully_shard`` does), which adds the sp24 mode:

- dense mode (the default) calls the original class's forward, so the result is bit-identical to
  the unconverted module whatever experts implementation the model's config selects (eager,
  grouped_mm, ...);
- sparse mode runs :func:`sp24.relu2_experts` on the module's own Parameters (read at call time,
  so a parametrization such as PEFT's ``target_parameters`` LoRA reaches the 2:4 path and gets
  its gradients);
- the Parameters, their names and shapes, every attribute, ``isinstance(m, NemotronHExperts)``
  and the state_dict keys stay (plus ``<prefix>sp24_mode``, as for ReLU2FFN), so
  save_pretrained / from_pretrained and PEFT see the same module.

Swapped classes pickle by reference (``torch.save(model)``): their qualified name encodes the
original class, and this module recreates the class on lookup.
"""

from __future__ import annotations

import math
import re
from typing import Optional

import torch
from torch import Tensor, nn

from ..experts import relu2_experts
from ._args import _check_names
from ._detect import LINEAR_PAIRS, _fake_or_meta, _is_relu2, _probe_matches
from ._mode import SparseMode

__all__ = ["ReLU2Experts", "swapped_class"]

_PREFIX = "Sp24Experts_"
_SWAPPED: dict = {}


class _ExpertsMode(SparseMode):
    """The sp24 side of an experts module: forward picks dense (the class's own forward) or 2:4.
    A module made by calling a swapped class directly has SparseMode's default mode."""

    linear_names = ("up_proj", "down_proj")

    def _sp24_weights(self):
        n1, n2 = self.linear_names
        return getattr(self, n1), getattr(self, n2)

    def forward(self, hidden_states: Tensor, top_k_index: Tensor, top_k_weights: Tensor) -> Tensor:
        if self.track_stats:
            self._record_stats(hidden_states, top_k_index)
        if not self.sparse and not self.fp8:
            return super().forward(hidden_states, top_k_index, top_k_weights)
        w1, w2 = self._sp24_weights()
        return relu2_experts(hidden_states, top_k_index, top_k_weights, w1, w2, sparse=self.sparse,
                             dense_fraction=self.dense_fraction, permute_tokens=self.permute_tokens,
                             gradient=self.gradient, sparse_backward=self.sparse_backward, fp8=self.fp8)

    @torch.no_grad()
    def _record_stats(self, x: Tensor, top_k_index: Tensor) -> None:
        # per expert with tokens: the zero fraction of relu(Y1)^2 and the non-zeros a row-wise /
        # token-wise 2:4 pass drops, then the token-weighted mean over experts
        from ..api import stats
        from ..experts import route

        w1, _ = self._sp24_weights()
        tokens, _, counts = route(top_k_index, w1.shape[0])
        keys = ("zero_fraction", "drop_rowwise", "drop_tokenwise")
        per, start = [], 0
        for e, n in enumerate(counts):
            if n:
                y2 = torch.relu(x[tokens[start:start + n]] @ w1[e].t()).square()
                s = stats(y2)
                per.append({"expert": e, "tokens": n, **{k: float(s[k]) for k in keys}})
                start += n
        total = sum(p["tokens"] for p in per) or 1
        self.last_stats = {k: sum(p["tokens"] * p[k] for p in per) / total for k in keys}
        self.last_stats["experts_with_tokens"] = len(per)
        self.last_stats["per_expert"] = per

    def extra_repr(self) -> str:
        w1, _ = self._sp24_weights()
        E, Fh, d = w1.shape
        return (f"num_experts={E}, d_model={d}, d_hidden={Fh}, sparse={self.sparse}, "
                f"dense_fraction={self.dense_fraction}" + (", fp8=True" if self.fp8 else ""))


class _DenseExperts(nn.Module):
    # the dense forward of ReLU2Experts: Hugging Face's eager experts loop, op for op
    def forward(self, hidden_states: Tensor, top_k_index: Tensor, top_k_weights: Tensor) -> Tensor:
        w1, w2 = self._sp24_weights()
        return relu2_experts(hidden_states, top_k_index, top_k_weights, w1, w2, sparse=False)


class ReLU2Experts(_ExpertsMode, _DenseExperts):
    """E routed non-gated Squared-ReLU experts with a switchable 2:4 path.

    ``forward(hidden_states (T, d), top_k_index (T, k), top_k_weights (T, k))`` returns
    ``out[t] = sum_j top_k_weights[t, j] * w2[e] relu(w1[e] x[t])^2`` with ``e = top_k_index[t, j]``
    (index E: a dropped pair), the layout and semantics of Hugging Face's MoE experts modules
    (NemotronH's). Dense mode (default) is the plain per-expert loop; ``sparse=True`` runs
    :func:`sp24.relu2_experts`. The mode is saved in the state_dict under ``<prefix>sp24_mode``;
    ``.track_stats``, ``.gradient``, ``.sparse_backward``, ``.fp8`` as in :class:`ReLU2FFN`.

    Args:
        num_experts (int): E.  d_model (int): d.  d_hidden (int): F, the expert width
            (``sparse=True`` needs d and F to be multiples of 8).
        sparse (bool): start in 2:4 mode. Default: False.
        dense_fraction (float): in [0, 1]. Default: 0.05.
        names (tuple[str, str]): the Parameters' names. Default: ``("up_proj", "down_proj")``.
        device, dtype: of the Parameters.

    Example::

        >>> experts = sp24.nn.ReLU2Experts(4, 16, 32)
        >>> experts(torch.randn(6, 16), torch.tensor([[0, 2]] * 6), torch.full((6, 2), 0.5)).shape
        torch.Size([6, 16])
        >>> sorted(experts.state_dict())
        ['down_proj', 'sp24_mode', 'up_proj']
    """

    def __init__(self, num_experts: int, d_model: int, d_hidden: int, *, sparse: bool = False,
                 dense_fraction: float = 0.05, names: tuple[str, str] = ("up_proj", "down_proj"),
                 device=None, dtype=None):
        super().__init__()
        n1, n2 = _check_names("ReLU2Experts", names)
        self._init_flags(sparse, dense_fraction, (n1, n2))
        kw = {"device": device, "dtype": dtype}
        self.register_parameter(n1, nn.Parameter(torch.empty(num_experts, d_hidden, d_model, **kw)))
        self.register_parameter(n2, nn.Parameter(torch.empty(num_experts, d_model, d_hidden, **kw)))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Each expert's slice as nn.Linear initialises its weight: U(-1/sqrt(in), 1/sqrt(in))."""
        for w in self._sp24_weights():
            nn.init.uniform_(w, -1.0 / math.sqrt(w.shape[-1]), 1.0 / math.sqrt(w.shape[-1]))


# --------------------------------------------------------------------------------------------
# converting an existing experts module in place


def _escape(s: str) -> str:
    # "_" -> "_u", "." -> "_d": reversible, and never "_s", the separator
    return s.replace("_", "_u").replace(".", "_d")


def _unescape(s: str) -> str:
    return re.sub(r"_([ud])", lambda m: "_" if m.group(1) == "u" else ".", s)


def _encode(cls: type) -> str:
    return _PREFIX + _escape(cls.__module__) + "_s" + _escape(cls.__qualname__)


def _decode(name: str) -> type:
    import importlib

    mod, qual = (_unescape(p) for p in name[len(_PREFIX):].split("_s"))
    obj = importlib.import_module(mod)
    for part in qual.split("."):
        obj = getattr(obj, part)
    return obj


def swapped_class(base: type) -> type:
    """The class an experts module of class ``base`` gets when converted: ``(_ExpertsMode, base)``,
    one per base class, named ``Sp24<base name>`` in reprs, picklable by reference."""
    if issubclass(base, _ExpertsMode):
        return base
    cls = _SWAPPED.get(base)
    if cls is None:
        name = _encode(base)
        cls = type(name, (_ExpertsMode, base), {
            "__module__": __name__, "__qualname__": name,
            "_get_name": lambda self, _n=f"Sp24{base.__name__}": _n})
        _SWAPPED[base] = cls
    return cls


def __getattr__(name: str):
    # unpickling a converted module looks its class up here by the encoded name
    if name.startswith(_PREFIX):
        return swapped_class(_decode(name))
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def experts_layout(m: nn.Module) -> tuple[Optional[tuple], str]:
    """((n1, n2), "") if m is a non-gated Squared-ReLU experts module sp24 can convert,
    (None, reason) if it is an experts module it cannot, (None, "") if m is no experts module."""
    params = m._parameters
    three_d = [k for k, p in params.items() if p is not None and p.dim() == 3]
    if not three_d:
        return None, ""
    pair = next(((a, b) for a, b in LINEAR_PAIRS if a in three_d and b in three_d), None)
    gated = any(k in three_d for k in ("gate_up_proj", "gate_proj")) or getattr(m, "has_gate", False) is True
    if pair is None and not gated:
        return None, ""  # a 3-D weight of something else (e.g. a Mamba mixer's conv1d): no experts module
    if pair is None or gated:
        return None, (f"MoE experts with 3-D weights {three_d} are gated or use names sp24 does not know (it "
                      f"converts non-gated Squared-ReLU experts with up_proj (E, F, d) / down_proj (E, d, F))")
    w1, w2 = params[pair[0]], params[pair[1]]
    E, Fh, d = w1.shape
    if tuple(w2.shape) != (E, d, Fh) or getattr(m, "is_transposed", False):
        return None, (f"MoE experts {pair[0]} {tuple(w1.shape)} / {pair[1]} {tuple(w2.shape)} are not (E, F, d) / "
                      f"(E, d, F) (a transposed layout?)")
    if w1.dtype != w2.dtype or w1.device != w2.device:
        return None, f"MoE experts {pair[0]} / {pair[1]} differ in dtype or device"
    act = getattr(m, "act_fn", None)
    if act is None:
        return None, (f"MoE experts {pair[0]}/{pair[1]} {tuple(w1.shape)} without an act_fn: sp24 cannot tell that "
                      f"their activation is Squared-ReLU")
    if not _is_relu2(act):
        return None, f"MoE experts whose activation is {type(act).__name__}, not Squared-ReLU"
    extra = [k for k in list(params) + list(m._buffers) if k not in pair and getattr(m, k) is not None]
    if extra or getattr(m, "has_bias", False) or getattr(m, "has_post_expert_norm", False):
        return None, (f"MoE experts with state or steps besides {pair[0]}/{pair[1]} ({', '.join(extra) or 'bias/norm'}), "
                      f"which the 2:4 path would ignore")
    return pair, ""


def convert_experts(m: nn.Module, pair: tuple, *, sparse: bool, dense_fraction: float) -> nn.Module:
    """Swap m's class in place for ``swapped_class(type(m))`` and give it a mode; returns m."""
    m.__class__ = swapped_class(type(m))
    m._init_flags(sparse, dense_fraction, tuple(pair))
    return m


def verify_experts(m: nn.Module, pair: tuple) -> str:
    """"" if m's forward on a probe routing equals the Squared-ReLU experts of its weights, else why not
    (on the meta device or under FakeTensorMode there are no values: experts_layout's checks stand)."""
    w1, w2 = getattr(m, pair[0]), getattr(m, pair[1])
    if _fake_or_meta(w1):
        return ""
    E, d = w1.shape[0], w1.shape[2]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, d, generator=g).to(w1.device, w1.dtype)
    idx = torch.stack([torch.arange(8) % E, (torch.arange(8) + 1) % E], 1).to(w1.device)[:, : min(2, E)]
    wts = torch.rand(idx.shape, generator=g).to(w1.device)
    try:
        with torch.no_grad():
            got = m(x, idx, wts)
            want = relu2_experts(x, idx, wts, w1, w2, sparse=False)
    except Exception as e:  # noqa: BLE001 - another forward signature: not an experts module sp24 knows
        return (f"its forward(hidden_states, top_k_index, top_k_weights) failed on a probe: "
                f"{type(e).__name__}: {e}")
    if not isinstance(got, Tensor) or got.shape != want.shape:
        return f"its forward does not map (T, d) tokens to (T, d): got {type(got).__name__} {getattr(got, 'shape', '')}"
    if not _probe_matches(got, want, w1.dtype):
        return "its forward is not the routed Squared-ReLU experts of its weights (another activation or extra ops)"
    return ""
