"""Argument checks of sp24.nn: each error names the sp24.nn function, the rule and the value."""

from __future__ import annotations

from torch import nn

from .. import _checks


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
