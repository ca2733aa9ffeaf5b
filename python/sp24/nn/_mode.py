"""The mode of an sp24 module (sparse, dense_fraction, permute_tokens) and its state_dict key.

ReLU2FFN and the routed experts share it: the mode is saved under ``<prefix>sp24_mode`` (a float64
tensor [sparse, dense_fraction, permute_tokens]) and consumed again on load, so a checkpoint keeps
whether a module trains 2:4; a checkpoint without the key (an unconverted model's) leaves the mode
as it is.
"""

from __future__ import annotations

import torch
from torch import Tensor

MODE_KEY = "sp24_mode"  # the state_dict key (under each sp24 module's prefix) of its mode


class SparseMode:
    """Mixin of the sp24 modules with a switchable 2:4 path (``isinstance(m, SparseMode)`` finds
    them): the training options as plain attributes (these class attributes are their defaults),
    the mode in the state_dict."""

    sparse, dense_fraction, permute_tokens, fp8 = False, 0.05, True, False
    gradient, sparse_backward, track_stats, last_stats = "24sparse", True, False, None

    def _init_flags(self, sparse, dense_fraction, names) -> None:
        from ._args import _check_bool, _check_fraction

        op = self._sp24_name()
        self.sparse = _check_bool(op, "sparse", sparse)
        self.dense_fraction = _check_fraction(op, dense_fraction)
        for k in ("permute_tokens", "gradient", "sparse_backward", "fp8", "track_stats", "last_stats"):
            setattr(self, k, getattr(SparseMode, k))
        self.linear_names = names

    def _sp24_name(self) -> str:
        return self._get_name()  # nn.Module's class name for reprs (a converted experts module: Sp24<its class>)

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
        op = f"sp24.nn.{self._sp24_name()}"
        if not isinstance(mode, Tensor) or mode.numel() != 3 or mode.device.type == "meta":
            raise ValueError(f"{op}: {MODE_KEY} must be a tensor [sparse, dense_fraction, "
                             f"permute_tokens] with real values, got {mode!r}")
        s, f, p = (float(v) for v in mode.detach().to("cpu", torch.float64).reshape(3))
        if s not in (0.0, 1.0) or p not in (0.0, 1.0) or not 0.0 <= f <= 1.0:
            raise ValueError(f"{op}: {MODE_KEY} holds an invalid mode [{s}, {f}, {p}]: expected "
                             f"[0 or 1, a fraction in [0, 1], 0 or 1]")
        self.sparse, self.dense_fraction, self.permute_tokens = s == 1.0, f, p == 1.0
