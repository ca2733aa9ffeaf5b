"""What sp24.nn.convert recognises: the Squared-ReLU activations and the Linear-pair names of MLP blocks."""

from __future__ import annotations

from torch import Tensor, nn

from .ffn import ReLU2

# Activation classes taken for Squared-ReLU by name (other libraries' spellings) besides ReLU2;
# "relusquaredactivation" is transformers' ACT2FN["relu2"].
RELU2_NAMES = {"relu2", "squaredrelu", "relusquared", "relusquare", "squared_relu", "relu_squared",
               "relusquaredactivation"}
# (first, second) Linear attribute names of MLP blocks in common model code; dense_h_to_4h /
# dense_4h_to_h: GPT-NeoX style (Persimmon, Fuyu).
LINEAR_PAIRS = (("fc1", "fc2"), ("w1", "w2"), ("c_fc", "c_proj"), ("up_proj", "down_proj"),
                ("dense_h_to_4h", "dense_4h_to_h"), ("linear1", "linear2"), ("lin1", "lin2"))


def _is_relu2(m: nn.Module) -> bool:
    return isinstance(m, ReLU2) or type(m).__name__.lower() in RELU2_NAMES


def _fake_or_meta(t: Tensor) -> bool:
    from torch._subclasses.fake_tensor import is_fake
    return t.device.type == "meta" or is_fake(t)


def _probe_matches(got: Tensor, want: Tensor, dtype) -> bool:
    """Whether a module's output on a probe equals the Squared-ReLU computation of its weights, up to
    the rounding of its dtype (convert's verification of MLP blocks and of experts modules)."""
    import torch

    tol = 1e-4 if dtype in (torch.float32, torch.float64) else 3e-2
    return bool(torch.allclose(got.float(), want.float(), rtol=tol, atol=tol * float(want.abs().max().clamp(min=1))))
