"""The dense warm-up: set_sparse switches every ReLU2FFN and experts module of a model, DenseWarmup counts the steps."""

from __future__ import annotations

import warnings

from torch import nn

from ._args import _check_bool, _check_module
from ._mode import SparseMode


def set_sparse(model: nn.Module, enabled: bool) -> int:
    """Switch the 2:4 path on or off in every ReLU2FFN and converted experts module of a model (the end of the dense warm-up).

    Args:
        model (nn.Module): searched with ``model.modules()`` (itself included).
        enabled (bool): True for 2:4 forward and backward, False for dense.

    Returns:
        int: how many sp24 modules (ReLU2FFN, experts) were set. 0 comes with a warning: nothing was switched
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
        if isinstance(m, SparseMode):
            m.sparse = enabled
            n += 1
    if n == 0:
        warnings.warn(_NO_FFN.format(op="set_sparse", model=type(model).__name__), stacklevel=2)
    return n


_NO_FFN = ("sp24.nn.{op}: {model} has no sp24.nn.ReLU2FFN nor sp24 experts module, so nothing is switched to 2:4 and "
           "the model trains dense; call sp24.nn.convert(model) first (it returns a report of what it "
           "swapped and skipped with return_report=True)")


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
        ffns = [m for m in model.modules() if isinstance(m, SparseMode)]
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
            bool: whether the warm-up is done (from then on every sp24 module of the model runs 2:4;
            a model with none, which :func:`set_sparse` warns about, stays dense).
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

