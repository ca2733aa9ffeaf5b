"""Argument checks shared by the Python API and sp24.nn: each error names the op, the rule and the value."""

from __future__ import annotations

from torch import Tensor


def as_tensor(op: str, name: str, x) -> Tensor:
    """``x`` if it is a torch.Tensor; else a TypeError naming ``sp24.<op>`` and the argument."""
    if not isinstance(x, Tensor):
        raise TypeError(f"sp24.{op}: {name} must be a torch.Tensor, got {type(x).__name__}")
    return x


def check_bool(op: str, name: str, value) -> bool:
    """``value`` if it is a bool; else a TypeError (a string such as ``"False"`` is truthy)."""
    if not isinstance(value, bool):
        raise TypeError(f"{op}: {name} must be a bool (True or False), got {value!r}")
    return value


def check_fraction(op: str, name: str, value) -> float:
    """``float(value)`` if it is a real number in [0, 1] (not a bool); else a ValueError."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"{op}: {name} must be a number in [0, 1], got {value!r}")
    return float(value)
