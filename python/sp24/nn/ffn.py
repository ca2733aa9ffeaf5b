"""The module: ReLU2 and ReLU2FFN, the Squared-ReLU FFN with a switchable 2:4 path (see sp24.nn)."""

from __future__ import annotations

import warnings
from typing import Optional

import torch
from torch import Tensor, nn

from ..api import stats as _stats
from ..ffn import relu2_ffn
from ._args import _check_bool, _check_names
from ._mode import MODE_KEY, SparseMode  # noqa: F401  (MODE_KEY: public as sp24.nn.MODE_KEY)
from . import fsdp as _fsdp
from . import tensor_parallel as _tp
from .adapters import _chain, _is_peft_lora, _lora_weight, _plain_linear



class ReLU2(nn.Module):
    """Squared-ReLU activation, relu(x)^2.

    Example::

        >>> sp24.nn.ReLU2()(torch.tensor([-1.0, 3.0]))
        tensor([0., 9.])
    """

    def __init__(self) -> None:
        super().__init__()

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(x).square()


class ReLU2FFN(SparseMode, nn.Module):
    """Squared-ReLU FFN ``y = w2(relu(w1(x))^2)`` with a switchable 2:4 sparse path.

    With ``sparse=False`` it is exactly the plain PyTorch FFN (it calls its two Linear modules).
    With ``sparse=True`` forward and backward use 2:4 activation sparsity (:func:`sp24.relu2_ffn`).
    The mode (``sparse``, ``dense_fraction``, ``permute_tokens``) is saved in the state_dict under
    ``<prefix>sp24_mode``.

    The two Linears are submodules under ``names`` (default ``("w1", "w2")``; :func:`convert`
    keeps a model's own names, e.g. ``("up_proj", "down_proj")``); ``.w1`` / ``.w2`` always
    return the first / second Linear, whatever its name. A wrapper put on them later (PEFT LoRA,
    hooks, a float8 or quantized Linear) is honoured: see the module docstring of ``sp24.nn``.

    ``.track_stats = True`` records, without autograd, ``.last_stats`` = {"zero_fraction",
    "drop_rowwise", "drop_tokenwise"} of each forward's Y2 (an extra GEMM; for monitoring).

    ``.gradient`` (``"24sparse"``, default, or ``"ste"``) and ``.sparse_backward`` (default
    ``True``) are passed to :func:`sp24.relu2_ffn` on the 2:4 path (ablations of the backward's
    approximations, e.g. ``python -m sp24.study``); they are plain attributes of the training
    recipe, not part of the state_dict's mode. So is ``.fp8`` (constructor argument ``fp8``,
    default ``False``): the forward GEMMs in FP8 e4m3, dense or 2:4 (:func:`sp24.relu2_ffn`).

    Args:
        d_model (int): model dim d (input and output features).
        d_hidden (int): hidden dim F; ``sparse=True`` needs d and F to be multiples of 8.
        bias (bool): biases on both Linears. Default: ``False``.
        sparse (bool): start in 2:4 mode. Default: ``False`` (dense; note ``sp24.relu2_ffn``
            defaults to ``sparse=True``: the module starts dense for the warm-up).
        dense_fraction (float): share in [0, 1] of the densest features whose weight gradients
            stay dense. Default: 0.05.
        names (tuple[str, str]): attribute names of the two Linears. Default: ``("w1", "w2")``.
        device, dtype: of the Linears' parameters.

    Shape:
        - Input: (..., d_model), fp32/fp16/bf16 (any dtype when dense).
        - Output: (..., d_model), same dtype.

    Raises:
        ValueError: dense_fraction outside [0, 1]; bad names.
        TypeError: sparse not a bool.

    Example::

        >>> ffn = sp24.nn.ReLU2FFN(16, 64)
        >>> ffn(torch.randn(2, 5, 16)).shape
        torch.Size([2, 5, 16])
        >>> sorted(ffn.state_dict())
        ['sp24_mode', 'w1.weight', 'w2.weight']
    """

    def __init__(self, d_model: int, d_hidden: int, bias: bool = False, *, sparse: bool = False,
                 dense_fraction: float = 0.05, names: tuple[str, str] = ("w1", "w2"), device=None, dtype=None,
                 fp8: bool = False):
        super().__init__()
        n1, n2 = _check_names("ReLU2FFN", names)
        self._init_flags(sparse, dense_fraction, (n1, n2))
        self.fp8 = _check_bool("ReLU2FFN", "fp8", fp8)
        self.add_module(n1, nn.Linear(d_model, d_hidden, bias=bias, device=device, dtype=dtype))
        self.add_module(n2, nn.Linear(d_hidden, d_model, bias=bias, device=device, dtype=dtype))

    @classmethod
    def from_linear(cls, w1: nn.Linear, w2: nn.Linear, *, sparse: bool = False, dense_fraction: float = 0.05,
                    names: tuple[str, str] = ("w1", "w2")) -> "ReLU2FFN":
        """A ReLU2FFN around existing Linear modules, which it reuses (nothing is copied).

        Args:
            w1 (nn.Linear): d -> F.  w2 (nn.Linear): F -> d; same dtype, device and bias-ness
                (a PEFT LoRA Linear over an nn.Linear is accepted too).
            sparse, dense_fraction: as in the constructor.
            names (tuple[str, str]): attribute names to register them under (their state_dict keys).

        Returns:
            ReLU2FFN whose ``.w1 is w1`` and ``.w2 is w2``.

        Raises:
            ValueError: the Linears do not chain d -> F -> d with the same dtype/device/bias.

        Example::

            >>> up, down = nn.Linear(16, 64), nn.Linear(64, 16)
            >>> sp24.nn.ReLU2FFN.from_linear(up, down, names=("up_proj", "down_proj")).w1 is up
            True
        """
        if not _chain(w1, w2):
            raise ValueError(f"sp24.nn.ReLU2FFN.from_linear: need two nn.Linear d->F and F->d with the same "
                             f"dtype/device/bias, got {w1!r} and {w2!r}")
        n1, n2 = _check_names("ReLU2FFN.from_linear", names)
        m = cls.__new__(cls)
        nn.Module.__init__(m)
        m._init_flags(sparse, dense_fraction, (n1, n2))
        m.add_module(n1, w1)
        m.add_module(n2, w2)
        return m

    def __getattr__(self, name: str):
        # .w1 / .w2 alias the first / second Linear when they are registered under other names
        if name in ("w1", "w2"):
            d = self.__dict__
            names = d.get("linear_names")
            mods = d.get("_modules", {})
            if names is not None and name not in mods and names[0 if name == "w1" else 1] in mods:
                return mods[names[0 if name == "w1" else 1]]
        return super().__getattr__(name)

    def _sparse_weights(self, l1, l2, sharded=()):
        n1, n2 = self.linear_names
        out = []
        for name, m in ((n1, l1), (n2, l2)):
            if _plain_linear(m) or any(m is s for s in sharded):
                out += [m.weight, m.bias]
            elif _is_peft_lora(m):
                w, b, why = _lora_weight(name, m)
                if w is None:
                    return None, why
                out += [w, b]
            elif isinstance(m, nn.Module) and (m._forward_hooks or m._forward_pre_hooks):
                return None, f"{name} has forward hooks (they would not run on the 2:4 path)"
            else:
                return None, (f"{name} is a {type(m).__module__}.{type(m).__qualname__} with its own forward "
                              f"(e.g. float8 or quantized), not a plain nn.Linear")
        w1, b1, w2, b2 = out
        return (w1, w2, b1, b2), ""

    def forward(self, x: Tensor) -> Tensor:
        n1, n2 = self.linear_names
        l1, l2 = self._modules[n1], self._modules[n2]
        if self.track_stats:
            self._record_stats(x, l1)
        if not self.sparse and not self.fp8:
            return l2(torch.relu(l1(x)).square())
        # FSDP2 on the Linears (their DTensor shards are FSDP2's), else tensor parallelism, else plain
        sharded, why = _fsdp.sharded_linears(self.linear_names, l1, l2)
        if not sharded and not why:
            plan, why = _tp.detect(l1, l2, fp8=self.fp8)
            if plan is not None:
                return _tp.forward(plan, l1, l2, x, **self._ffn_kwargs())
        where = getattr(self, "_sp24_where", None)
        if why:  # a parallelism (DTensor weights) sp24 does not serve: never a silent dense run
            raise ValueError(f"sp24.nn.ReLU2FFN{f' {where}' if where else ''}: {why}; the 2:4 path cannot run. "
                             f"Use torch's ColwiseParallel / RowwiseParallel for the two Linears, fully_shard the Linears (with a fully_shard-ed parent) or the "
                             f"block, or set_sparse(model, False) to run dense")
        _fsdp.gather(sharded)  # FSDP2-sharded Linears: all-gather their weights (sp24.nn.fsdp)
        weights, why = self._sparse_weights(l1, l2, sharded)
        if weights is None:
            warnings.warn(f"sp24.nn.ReLU2FFN{f' {where}' if where else ''}: {why}; this FFN runs dense (calling "
                          f"its modules) instead of {'2:4' if self.sparse else 'FP8'}. Remove what stops the sp24 "
                          f"path, or set_sparse(model, False) (and .fp8 = False) to run dense on purpose and "
                          f"silence this", stacklevel=2)
            return l2(torch.relu(l1(x)).square())
        w1, w2, b1, b2 = weights
        out = relu2_ffn(x, w1, w2, b1, b2, **self._ffn_kwargs())
        _fsdp.release_after_inference(sharded, torch.is_grad_enabled())
        return out

    def _ffn_kwargs(self) -> dict:
        return {"sparse": self.sparse, "dense_fraction": self.dense_fraction, "permute_tokens": self.permute_tokens,
                "gradient": self.gradient, "sparse_backward": self.sparse_backward, "fp8": self.fp8}

    @torch.no_grad()
    def _record_stats(self, x: Tensor, l1: nn.Module) -> None:
        y2 = torch.relu(l1(x)).square()
        s = _stats(y2.reshape(-1, y2.shape[-1]))
        self.last_stats = {k: float(s[k]) for k in ("zero_fraction", "drop_rowwise", "drop_tokenwise")}

    def extra_repr(self) -> str:
        l1 = self._modules[self.linear_names[0]]
        base = getattr(l1, "base_layer", l1)
        return (f"d_model={getattr(base, 'in_features', '?')}, d_hidden={getattr(base, 'out_features', '?')}, "
                f"sparse={self.sparse}, dense_fraction={self.dense_fraction}" + (", fp8=True" if self.fp8 else ""))

