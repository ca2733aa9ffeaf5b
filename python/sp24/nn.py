"""Modules: the Squared-ReLU FFN with 2:4 activation sparsity, and the tools to train with it.

    ffn = sp24.nn.ReLU2FFN(d_model, d_hidden)          # dense (sparse=False) by default
    model, report = sp24.nn.convert(model, return_report=True)   # swap Squared-ReLU MLPs in place
    warm = sp24.nn.DenseWarmup(model, steps=1000)      # dense warm-up, then 2:4 fwd + bwd
    ... each optimizer step: warm.step()

Checkpoints. A converted block keeps the attribute names of its Linears (`mlp.up_proj`,
`mlp.down_proj`, `mlp.0`, `mlp.2`, ...), so the model's state_dict keys are the original ones, and
PEFT `target_modules`, tensor-parallel plans and checkpoints written against the original model
keep working. Each ReLU2FFN adds one key, `<prefix>sp24_mode` (MODE_KEY: a float64 tensor
[sparse, dense_fraction, permute_tokens]), so the sparse mode survives save/load:

- converted -> converted: weights and mode restored bit-exactly;
- unconverted checkpoint -> converted model (strict or not): the weights load, the module keeps
  the mode it has (there is none in the checkpoint);
- converted checkpoint -> unconverted model: `transformers`' `from_pretrained` loads it and lists
  the `sp24_mode` keys as unexpected (unused); a strict `torch` `load_state_dict` refuses them by
  name. Drop them with `sp24.nn.without_mode(state_dict)`, or convert the model first.
  After `from_pretrained` + `convert`, `sp24.nn.load_mode(model, state_dict)` restores the modes.

Wrappers put on the Linears after conversion are never bypassed: supported, or run dense with a
warning. In dense mode ReLU2FFN calls its two modules, so hooks, PEFT LoRA, float8 or
quantized Linears behave as in the original model. In sparse mode the 2:4 path needs the weight
matrices: a plain nn.Linear (nn.Linear.forward, no hooks) is read directly; a PEFT LoRA Linear
(vanilla LoRA, no dropout while training) runs sparse with its low-rank term folded into the
weight, `W + scaling * B @ A` (one (F, d) temporary per wrapped Linear and forward), which
autograd differentiates, so gradients reach the adapter;
anything else (hooks, DoRA and other variants, LoRA dropout > 0 in training, a Linear subclass or
module with its own forward: float8, quantized) runs dense by calling the modules, with a warning
that names the module and the reason. Global module hooks (`register_module_forward_hook`) see
the ReLU2FFN call; on the 2:4 path its Linears are not called, so they do not see those.
"""

from __future__ import annotations

import dataclasses
import logging
import warnings
from typing import Callable, Optional

import torch
import torch.nn.functional as F_
from torch import Tensor, nn

from . import _checks
from .api import stats as _stats
from .ffn import relu2_ffn

__all__ = ["ReLU2", "ReLU2FFN", "set_sparse", "convert", "ConvertReport", "DenseWarmup", "load_mode",
           "without_mode"]

log = logging.getLogger("sp24.nn")

MODE_KEY = "sp24_mode"  # the state_dict key (under each ReLU2FFN's prefix) of its mode


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


def _check_module(op: str, model) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"sp24.nn.{op}: model must be a torch.nn.Module, got {type(model).__name__}")


def _check_fraction(op: str, dense_fraction) -> float:
    return _checks.check_fraction(f"sp24.nn.{op}", "dense_fraction", dense_fraction)


def _check_bool(op: str, name: str, value) -> bool:
    return _checks.check_bool(f"sp24.nn.{op}", name, value)


def _check_names(op: str, names) -> tuple[str, str]:
    if (not isinstance(names, (tuple, list)) or len(names) != 2
            or not all(isinstance(n, str) and n and "." not in n for n in names) or names[0] == names[1]):
        raise ValueError(f"sp24.nn.{op}: names must be two different attribute names without '.', got {names!r}")
    return names[0], names[1]


def _plain_linear(m) -> bool:
    # the forward is nn.Linear's and nothing else runs around it: reading .weight/.bias is exactly
    # what calling it would compute (a parametrization is fine: .weight is the parametrized weight)
    return (isinstance(m, nn.Linear) and type(m).forward is nn.Linear.forward and not m._forward_hooks
            and not m._forward_pre_hooks and not m._backward_hooks and not m._backward_pre_hooks)


def _is_peft_lora(m) -> bool:
    return all(hasattr(m, a) for a in ("base_layer", "lora_A", "lora_B", "scaling", "active_adapters", "merged"))


def _lora_weight(name: str, m: nn.Module) -> tuple[Optional[Tensor], Optional[Tensor], str]:
    """(weight, bias, "") of a PEFT LoRA Linear with its active adapters folded in, or (None, None, why)."""
    base = m.base_layer
    if not _plain_linear(base):
        return None, None, f"{name} is LoRA over a {type(base).__qualname__}, not a plain nn.Linear"
    if m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks:
        return None, None, f"{name} (LoRA) has hooks"
    if getattr(m, "fan_in_fan_out", False):
        return None, None, f"{name} (LoRA) has fan_in_fan_out=True"
    w = base.weight
    if getattr(m, "disable_adapters", False) or m.merged:
        return w, base.bias, ""  # the base layer alone (merged: the adapter is already in it)
    for a in m.active_adapters:
        if a not in m.lora_A.keys():
            continue
        if a in getattr(m, "lora_variant", {}):
            return None, None, f"{name} has a LoRA variant ({type(m.lora_variant[a]).__name__}, e.g. DoRA) for adapter {a!r}"
        drop = m.lora_dropout[a]
        if not (isinstance(drop, nn.Identity) or (isinstance(drop, nn.Dropout) and (drop.p == 0 or not drop.training))):
            return None, None, (f"{name}: LoRA dropout ({drop!r}) in training mode cannot be folded into the weight "
                                f"(use lora_dropout=0 for the 2:4 path)")
        A, B = m.lora_A[a], m.lora_B[a]
        if not (_plain_linear(A) and _plain_linear(B)) or B.bias is not None:
            return None, None, f"{name}: LoRA adapter {a!r} is not two plain bias-free nn.Linear"
        # the low-rank term beside the sparse path: x (W + s B A)^T = x W^T + s (x A^T) B^T; the sum
        # is differentiable, so A and B get their gradients through the 2:4 backward's dW
        w = w + (B.weight @ A.weight).to(w.dtype) * m.scaling[a]
    return w, base.bias, ""


class ReLU2FFN(nn.Module):
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
    recipe, not part of the state_dict's mode.

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
                 dense_fraction: float = 0.05, names: tuple[str, str] = ("w1", "w2"), device=None, dtype=None):
        super().__init__()
        n1, n2 = _check_names("ReLU2FFN", names)
        self._init_flags(sparse, dense_fraction, (n1, n2))
        self.add_module(n1, nn.Linear(d_model, d_hidden, bias=bias, device=device, dtype=dtype))
        self.add_module(n2, nn.Linear(d_hidden, d_model, bias=bias, device=device, dtype=dtype))

    def _init_flags(self, sparse, dense_fraction, names) -> None:
        self.sparse = _check_bool("ReLU2FFN", "sparse", sparse)
        self.dense_fraction = _check_fraction("ReLU2FFN", dense_fraction)
        self.permute_tokens = True
        self.gradient = "24sparse"
        self.sparse_backward = True
        self.track_stats = False
        self.last_stats: Optional[dict] = None
        self.linear_names = names

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

    def _sparse_weights(self, l1, l2):
        n1, n2 = self.linear_names
        out = []
        for name, m in ((n1, l1), (n2, l2)):
            if _plain_linear(m):
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
        if not self.sparse:
            return l2(torch.relu(l1(x)).square())
        weights, why = self._sparse_weights(l1, l2)
        if weights is None:
            where = getattr(self, "_sp24_where", None)
            warnings.warn(f"sp24.nn.ReLU2FFN{f' {where}' if where else ''}: {why}; this FFN runs dense (calling "
                          f"its modules) instead of 2:4. Remove what stops the 2:4 path, or "
                          f"set_sparse(model, False) to run dense on purpose and silence this", stacklevel=2)
            return l2(torch.relu(l1(x)).square())
        w1, w2, b1, b2 = weights
        return relu2_ffn(x, w1, w2, b1, b2, sparse=True, dense_fraction=self.dense_fraction,
                         permute_tokens=self.permute_tokens, gradient=self.gradient,
                         sparse_backward=self.sparse_backward)

    @torch.no_grad()
    def _record_stats(self, x: Tensor, l1: nn.Module) -> None:
        y2 = torch.relu(l1(x)).square()
        s = _stats(y2.reshape(-1, y2.shape[-1]))
        self.last_stats = {k: float(s[k]) for k in ("zero_fraction", "drop_rowwise", "drop_tokenwise")}

    # ---- the mode in the state_dict

    def _mode_tensor(self) -> Tensor:
        return torch.tensor([float(self.sparse), float(self.dense_fraction), float(self.permute_tokens)],
                            dtype=torch.float64)

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        destination[prefix + MODE_KEY] = self._mode_tensor()

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        # state_dict is load_state_dict's own copy: consuming our key here keeps it out of the
        # unexpected keys; a checkpoint without it (an unconverted model's) leaves the mode as is
        mode = state_dict.pop(prefix + MODE_KEY, None)
        if mode is not None:
            try:
                self._set_mode(mode)
            except ValueError as e:
                error_msgs.append(str(e))
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def _set_mode(self, mode) -> None:
        if not isinstance(mode, Tensor) or mode.numel() != 3 or mode.device.type == "meta":
            raise ValueError(f"sp24.nn.ReLU2FFN: {MODE_KEY} must be a tensor [sparse, dense_fraction, "
                             f"permute_tokens] with real values, got {mode!r}")
        s, f, p = (float(v) for v in mode.detach().to("cpu", torch.float64).reshape(3))
        if s not in (0.0, 1.0) or p not in (0.0, 1.0) or not 0.0 <= f <= 1.0:
            raise ValueError(f"sp24.nn.ReLU2FFN: {MODE_KEY} holds an invalid mode [{s}, {f}, {p}]: expected "
                             f"[0 or 1, a fraction in [0, 1], 0 or 1]")
        self.sparse, self.dense_fraction, self.permute_tokens = s == 1.0, f, p == 1.0

    def extra_repr(self) -> str:
        l1 = self._modules[self.linear_names[0]]
        base = getattr(l1, "base_layer", l1)
        return (f"d_model={getattr(base, 'in_features', '?')}, d_hidden={getattr(base, 'out_features', '?')}, "
                f"sparse={self.sparse}, dense_fraction={self.dense_fraction}")


def set_sparse(model: nn.Module, enabled: bool) -> int:
    """Switch the 2:4 path on or off in every ReLU2FFN of a model (the end of the dense warm-up).

    Args:
        model (nn.Module): searched with ``model.modules()`` (itself included).
        enabled (bool): True for 2:4 forward and backward, False for dense.

    Returns:
        int: how many ReLU2FFN modules were set. 0 comes with a warning: nothing was switched
        (a model that was never passed through :func:`convert` trains dense).

    Raises:
        TypeError: model is not an nn.Module, or enabled is not a bool.

    Example::

        >>> sp24.nn.set_sparse(nn.Sequential(sp24.nn.ReLU2FFN(8, 16)), True)
        1
    """
    _check_module("set_sparse", model)
    enabled = _check_bool("set_sparse", "enabled", enabled)
    n = 0
    for m in model.modules():
        if isinstance(m, ReLU2FFN):
            m.sparse = enabled
            n += 1
    if n == 0:
        warnings.warn(_NO_FFN.format(op="set_sparse", model=type(model).__name__), stacklevel=2)
    return n


_NO_FFN = ("sp24.nn.{op}: {model} has no sp24.nn.ReLU2FFN module, so nothing is switched to 2:4 and "
           "the model trains dense; call sp24.nn.convert(model) first (it returns a report of what it "
           "swapped and skipped with return_report=True)")


def load_mode(model: nn.Module, state_dict: dict) -> int:
    """Restore the ReLU2FFN modes (sparse, dense_fraction, permute_tokens) from a state_dict's
    ``sp24_mode`` keys, e.g. after ``from_pretrained`` (which drops them) and :func:`convert`.

    Args:
        model (nn.Module): the converted model.
        state_dict (dict): a state_dict (or safetensors ``load_file`` result) of a converted model.

    Returns:
        int: how many modules got their mode.

    Raises:
        TypeError: model is not an nn.Module.
        KeyError: a ReLU2FFN of model has no ``sp24_mode`` key in state_dict (the key may differ
            by a leading prefix, as ``save_pretrained`` sometimes renames the root; it must be unique).

    Example::

        >>> src = nn.Sequential(sp24.nn.ReLU2FFN(8, 16, sparse=True))
        >>> dst = nn.Sequential(sp24.nn.ReLU2FFN(8, 16))
        >>> sp24.nn.load_mode(dst, src.state_dict()), dst[0].sparse
        (1, True)
    """
    _check_module("load_mode", model)
    keys = [k for k in state_dict if k == MODE_KEY or k.endswith("." + MODE_KEY)]
    n = 0
    for name, m in model.named_modules():
        if isinstance(m, ReLU2FFN):
            m._set_mode(state_dict[_mode_key(name, keys)])
            n += 1
    return n


def _mode_key(name: str, keys: list) -> str:
    # The exact key, else the one key that differs from it by a leading prefix (files written by
    # save_pretrained may rename the root, e.g. NemotronH's "model." -> "backbone."; PEFT adds
    # "base_model.model."): the longest tail of the module name that matches exactly one key.
    key = f"{name}.{MODE_KEY}" if name else MODE_KEY
    if key in keys:
        return key
    parts = name.split(".") if name else []
    for i in range(len(parts)):
        tail = ".".join(parts[i:]) + "." + MODE_KEY
        hits = [k for k in keys if k == tail or k.endswith("." + tail)]
        if len(hits) == 1:
            return hits[0]
        if hits:
            break  # ambiguous
    raise KeyError(f"sp24.nn.load_mode: no {key!r} (nor one key differing from it only by a leading prefix) in the "
                   f"state_dict; was it saved from a converted model?")


def without_mode(state_dict: dict) -> dict:
    """A copy of state_dict without the ReLU2FFN ``sp24_mode`` keys, for a strict load into an
    unconverted model.

    Args:
        state_dict (dict): a converted model's state_dict.

    Returns:
        dict: the same entries without the keys named ``sp24_mode`` or ending in ``.sp24_mode``.

    Example::

        >>> sd = sp24.nn.ReLU2FFN(8, 16).state_dict()
        >>> sorted(sp24.nn.without_mode(sd))
        ['w1.weight', 'w2.weight']
    """
    return type(state_dict)((k, v) for k, v in state_dict.items()
                            if k != MODE_KEY and not k.endswith("." + MODE_KEY))


class DenseWarmup:
    """Dense warm-up: the model's ReLU2FFNs run dense for ``steps`` calls of ``.step()``, then 2:4.

    Call ``.step()`` once per optimizer step; it returns whether the model is now sparse. The
    switch happens once (``set_sparse(model, True)``). A model that is already sparse (a resumed
    checkpoint: the mode is in the state_dict) is not reset: the warm-up counts as done.
    ``state_dict()`` / ``load_state_dict()`` resume the count.

    Args:
        model (nn.Module): the model whose ReLU2FFNs to switch.
        steps (int): dense steps, >= 0 (0: sparse at once). Default: 1000.

    Raises:
        TypeError: model is not an nn.Module, or steps is not an int.
        ValueError: steps < 0; a bad state in load_state_dict.

    Example::

        >>> model = nn.Sequential(sp24.nn.ReLU2FFN(8, 16))
        >>> warm = sp24.nn.DenseWarmup(model, steps=2)
        >>> [warm.step() for _ in range(3)], model[0].sparse
        ([False, True, True], True)
    """

    def __init__(self, model: nn.Module, steps: int = 1000):
        _check_module("DenseWarmup", model)
        self.steps = self._check_count("steps", steps)
        self.model = model
        ffns = [m for m in model.modules() if isinstance(m, ReLU2FFN)]
        if not ffns:
            warnings.warn(_NO_FFN.format(op="DenseWarmup", model=type(model).__name__), stacklevel=2)
        self.done = self.steps == 0 or any(m.sparse for m in ffns)
        self.count = self.steps if self.done else 0
        if self.done:
            set_sparse(model, True)

    @staticmethod
    def _check_count(name: str, v) -> int:
        if isinstance(v, bool) or not isinstance(v, int):
            raise TypeError(f"sp24.nn.DenseWarmup: {name} must be an int, got {v!r}")
        if v < 0:
            raise ValueError(f"sp24.nn.DenseWarmup: {name} must be >= 0, got {v}")
        return v

    def step(self) -> bool:
        """Count one optimizer step; switch the model to 2:4 when the count reaches ``steps``.

        Returns:
            bool: whether the warm-up is done (the model is sparse).
        """
        self.count += 1
        if not self.done and self.count >= self.steps:
            set_sparse(self.model, True)
            self.done = True
        return self.done

    def state_dict(self) -> dict:
        """``{"steps": int, "count": int, "done": bool}``, plain Python values (for torch.save)."""
        return {"steps": self.steps, "count": self.count, "done": self.done}

    def load_state_dict(self, state: dict) -> None:
        """Resume from :meth:`state_dict`; sets the model's mode to ``state["done"]``.

        Raises:
            TypeError / ValueError: a missing key, a count that is not an int >= 0, or done that is
            not a bool.
        """
        missing = [k for k in ("steps", "count", "done") if not isinstance(state, dict) or k not in state]
        if missing:
            raise ValueError(f"sp24.nn.DenseWarmup.load_state_dict: state must be a dict with the keys 'steps', "
                             f"'count' and 'done' (from DenseWarmup.state_dict()), missing {missing}")
        steps, count = self._check_count("state['steps']", state["steps"]), self._check_count("state['count']", state["count"])
        done = _check_bool("DenseWarmup.load_state_dict", "state['done']", state["done"])
        self.steps, self.count, self.done = steps, count, done
        set_sparse(self.model, self.done)


# --------------------------------------------------------------------------------------------
# convert

# Activation classes taken for Squared-ReLU by name (other libraries' spellings) besides ReLU2;
# "relusquaredactivation" is transformers' ACT2FN["relu2"].
RELU2_NAMES = {"relu2", "squaredrelu", "relusquared", "relusquare", "squared_relu", "relu_squared",
               "relusquaredactivation"}
# (first, second) Linear attribute names of MLP blocks in common model code; dense_h_to_4h /
# dense_4h_to_h: GPT-NeoX style (Persimmon, Fuyu).
LINEAR_PAIRS = (("fc1", "fc2"), ("w1", "w2"), ("c_fc", "c_proj"), ("up_proj", "down_proj"),
                ("dense_h_to_4h", "dense_4h_to_h"), ("linear1", "linear2"), ("lin1", "lin2"))


@dataclasses.dataclass
class ConvertReport:
    """What :func:`convert` did: the module names it swapped and those it skipped, with reasons.

    Skipped are the candidates it looked at and left alone: blocks with a known Linear-pair name
    whose forward is not a Squared-ReLU FFN (gated, GELU, ...), blocks with extra state, wrapped
    Linears, and MoE experts stored as 3-D weights (sp24 has no grouped 2:4 FFN: they stay dense).
    ``str(report)`` is the text that convert logs (logger ``sp24.nn``, INFO).

    Args:
        swapped (list[str]): qualified names of the blocks now ReLU2FFN ("" for the root).
        skipped (list[tuple[str, str]]): (qualified name, reason) of each candidate left alone.

    Example::

        >>> gelu = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 8))
        >>> sp24.nn.convert(nn.ModuleDict({"mlp": gelu}), return_report=True)[1].skipped
        [('mlp', 'its activation GELU is not Squared-ReLU')]
    """
    swapped: list = dataclasses.field(default_factory=list)
    skipped: list = dataclasses.field(default_factory=list)

    def __str__(self) -> str:
        lines = [f"sp24.nn.convert: swapped {len(self.swapped)}, skipped {len(self.skipped)}"]
        lines += [f"  swapped {n or '<root>'}" for n in self.swapped]
        lines += [f"  skipped {n or '<root>'}: {why}" for n, why in self.skipped]
        return "\n".join(lines)


def _is_relu2(m: nn.Module) -> bool:
    return isinstance(m, ReLU2) or type(m).__name__.lower() in RELU2_NAMES


def _base_linear(m):
    """m if it is a plain nn.Linear, its base layer if it is a PEFT LoRA Linear over one, else None."""
    if _plain_linear(m):
        return m
    if _is_peft_lora(m) and _plain_linear(m.base_layer):
        return m.base_layer
    return None


def _chain(l1, l2) -> bool:
    # dims, dtype, device and bias-ness of two Linears (or PEFT LoRA Linears: their base layers)
    if _base_linear(l1) is not None and _base_linear(l2) is not None:
        l1, l2 = _base_linear(l1), _base_linear(l2)
    return (isinstance(l1, nn.Linear) and isinstance(l2, nn.Linear) and l1.out_features == l2.in_features
            and l1.in_features == l2.out_features and (l1.bias is None) == (l2.bias is None)
            and l1.weight.dtype == l2.weight.dtype and l1.weight.device == l2.weight.device)


def _pair_names(m: nn.Module):
    """(name1, name2, l1, l2) of a candidate block, or None."""
    if isinstance(m, nn.Sequential) and len(m) == 3 and _is_relu2(m[1]):
        n = list(m._modules)
        return n[0], n[2], m[0], m[2]
    for a, b in LINEAR_PAIRS:
        l1, l2 = getattr(m, a, None), getattr(m, b, None)
        if isinstance(l1, nn.Module) and isinstance(l2, nn.Module) and a in m._modules and b in m._modules:
            return a, b, l1, l2
    return None


def _experts_3d(m: nn.Module):
    for a, b in LINEAR_PAIRS:
        p1, p2 = m._parameters.get(a), m._parameters.get(b)
        if p1 is not None and p2 is not None and p1.dim() == 3 and p2.dim() == 3:
            return a, b, p1
    return None


def _fake_or_meta(t: Tensor) -> bool:
    from torch._subclasses.fake_tensor import is_fake
    return t.device.type == "meta" or is_fake(t)


def _verify(m: nn.Module, n1: str, n2: str, l1: nn.Linear, l2: nn.Linear) -> str:
    """"" if m's forward is the Squared-ReLU FFN of (l1, l2), else the reason it is not."""
    w = l1.weight
    if _fake_or_meta(w):
        # no values to compare: check the structure instead (one Squared-ReLU activation besides
        # the two Linears, nothing but dropout/identity otherwise), then the output shape
        others = [c for k, c in m._modules.items() if k not in (n1, n2) and c is not None]
        acts = [c for c in others if _is_relu2(c)]
        rest = [c for c in others if not _is_relu2(c) and not isinstance(c, (nn.Dropout, nn.Identity))]
        if len(acts) != 1 or rest:
            return ("on the meta device its forward cannot be checked by value, and its submodules are not "
                    "(two Linears, one Squared-ReLU activation, dropout): use verify=False or match=")
    x = torch.randn(8, l1.in_features, generator=torch.Generator().manual_seed(0)).to(w.device, w.dtype)
    training = m.training
    m.eval()
    try:
        with torch.no_grad():
            got = m(x)
    except Exception as e:  # noqa: BLE001 - a forward that needs other inputs is not an FFN block
        return f"its forward failed on a probe batch (8, {l1.in_features}): {type(e).__name__}: {e}"
    finally:
        m.train(training)
    if not isinstance(got, Tensor) or got.shape != x.shape:
        return f"its forward does not map (8, d) to (8, d): got {type(got).__name__} {getattr(got, 'shape', '')}"
    if _fake_or_meta(w):
        return ""
    with torch.no_grad():
        want = l2(torch.relu(l1(x)).square())
    tol = 1e-4 if w.dtype in (torch.float32, torch.float64) else 3e-2
    if not torch.allclose(got.float(), want.float(), rtol=tol, atol=tol * float(want.abs().max().clamp(min=1))):
        return "its forward is not the Squared-ReLU FFN of its Linears (e.g. gated, another activation, extra ops)"
    return ""


def _candidate(name: str, m: nn.Module, verify: bool):
    """((n1, n2, l1, l2), "") to swap, (None, reason) to report as skipped, (None, "") if not a candidate."""
    if isinstance(m, ReLU2FFN):
        return None, ""
    e = _experts_3d(m)
    if e is not None:
        a, b, p = e
        return None, (f"MoE experts with 3-D weights {a}/{b} {tuple(p.shape)}: sp24 has no grouped (per-expert) "
                      f"2:4 FFN; left dense")
    found = _pair_names(m)
    if found is None:
        if (isinstance(m, nn.Sequential) and len(m) == 3 and isinstance(m[0], nn.Linear)
                and isinstance(m[2], nn.Linear)):
            return None, f"its activation {type(m[1]).__name__} is not Squared-ReLU"
        return None, ""
    n1, n2, l1, l2 = found
    if _base_linear(l1) is None or _base_linear(l2) is None:
        return None, (f"{n1}/{n2} are {type(l1).__qualname__}/{type(l2).__qualname__}, neither plain nn.Linear "
                      f"without hooks nor PEFT LoRA over one (a quantized/float8 wrapper?): convert before wrapping")
    if not _chain(l1, l2):
        return None, f"{n1}/{n2} do not chain d -> F -> d with one dtype, device and bias-ness"
    if verify:
        why = _verify(m, n1, n2, l1, l2)
        if why:
            return None, why
    own = {id(t) for t in list(l1.parameters()) + list(l1.buffers()) + list(l2.parameters()) + list(l2.buffers())}
    extra = [k for k, t in list(m.named_parameters()) + list(m.named_buffers()) if id(t) not in own]
    if extra:
        return None, f"it holds state besides its two Linears ({', '.join(extra[:4])}), which a ReLU2FFN would drop"
    return (n1, n2, l1, l2), ""


def convert(model: nn.Module, *, sparse: bool = False, dense_fraction: float = 0.05,
            match: Optional[Callable[[str, nn.Module], object]] = None, verify: bool = True,
            return_report: bool = False):
    """Replace the Squared-ReLU MLP blocks of a model by :class:`ReLU2FFN`, in place, keeping keys.

    Detected (unless ``match`` is given): ``nn.Sequential(Linear, ReLU2-like, Linear)`` and
    modules with a Linear pair named fc1/fc2, w1/w2, c_fc/c_proj, up_proj/down_proj,
    dense_h_to_4h/dense_4h_to_h (GPT-NeoX style: Persimmon, Fuyu), linear1/linear2 or lin1/lin2
    whose dims chain (d -> F -> d). With ``verify=True`` a candidate is swapped only if its forward
    on a probe batch equals the Squared-ReLU FFN of its Linears, so a GELU or gated MLP with the
    same names is left alone (on the meta device or under FakeTensorMode, where there are no
    values, the block's submodules are checked instead). A block that holds other parameters or
    buffers is left alone. Linears already wrapped by PEFT LoRA (a PeftModel converted after
    ``get_peft_model`` / ``PeftModel.from_pretrained``) are kept as they are; other wrapped
    Linears (quantized, float8, hooks) make convert skip the block: convert before wrapping.
    MoE experts stored as 3-D weights (e.g. NemotronH's routed experts) are left dense and
    reported: sp24 has no grouped 2:4 FFN.

    The ReLU2FFN reuses the block's Linear modules (same Parameters, device, dtype, optimizer
    state; nothing is copied) under their own attribute names, so ``state_dict`` keys do not
    change (one key, ``<block>.sp24_mode``, is added: see :class:`ReLU2FFN`).

    Args:
        model (nn.Module): the model (its root may itself be a block).
        sparse (bool): the new modules' mode. Default: False (dense warm-up first).
        dense_fraction (float): in [0, 1]. Default: 0.05.
        match (callable, optional): ``match(name, module)`` returns the (first, second) Linear of
            a block to convert, or None; it replaces the detection (no verification).
        verify (bool): run the probe check. Default: True.
        return_report (bool): also return a :class:`ConvertReport`. Default: False.

    Returns:
        The model (a new ReLU2FFN when the root itself is a block); with ``return_report=True``,
        ``(model, ConvertReport)``. The report is also logged (logger ``sp24.nn``, INFO).

    Raises:
        TypeError: model is not an nn.Module; sparse is not a bool.
        ValueError: ``match`` returned something else than two chaining nn.Linear; bad dense_fraction.

    Example::

        >>> mlp = nn.Sequential(nn.Linear(16, 64), sp24.nn.ReLU2(), nn.Linear(64, 16))
        >>> new, report = sp24.nn.convert(nn.Sequential(mlp), return_report=True)
        >>> report.swapped, sorted(new.state_dict())
        (['0'], ['0.0.bias', '0.0.weight', '0.2.bias', '0.2.weight', '0.sp24_mode'])
    """
    _check_module("convert", model)
    sparse = _check_bool("convert", "sparse", sparse)
    dense_fraction = _check_fraction("convert", dense_fraction)
    report = ConvertReport()

    def find(name, m):
        if match is not None:
            pair = match(name, m)
            if pair is None:
                return None
            if not (isinstance(pair, (tuple, list)) and len(pair) == 2 and _chain(*pair)):
                raise ValueError(f"sp24.nn.convert: match({name!r}) must return two nn.Linear (d->F, F->d) with "
                                 f"the same dtype/device/bias, got {pair!r}")
            names = [k for p in pair for k, c in m._modules.items() if c is p][:2]
            if len(names) != 2 or names[0] == names[1]:
                names = ["w1", "w2"]  # not direct children of m: the keys cannot be kept
            return names[0], names[1], pair[0], pair[1]
        found, why = _candidate(name, m, verify)
        if why:
            report.skipped.append((name, why))
        return found

    def build(found, where: str) -> ReLU2FFN:
        n1, n2, l1, l2 = found
        ffn = ReLU2FFN.from_linear(l1, l2, sparse=sparse, dense_fraction=dense_fraction, names=(n1, n2))
        ffn._sp24_where = where or type(model).__name__  # named in its warnings (every layer says which)
        return ffn

    def done(result):
        for line in str(report).splitlines():
            log.info(line)
        return (result, report) if return_report else result

    root = find("", model)
    if root is not None:
        report.swapped.append("")
        return done(build(root, ""))

    def walk(parent: nn.Module, prefix: str) -> None:
        for child_name, child in list(parent.named_children()):
            full = f"{prefix}.{child_name}" if prefix else child_name
            found = find(full, child)
            if found is not None:
                setattr(parent, child_name, build(found, full))
                report.swapped.append(full)
            else:
                walk(child, full)

    walk(model, "")
    return done(model)
