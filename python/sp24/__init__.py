"""sp24: 2:4 activation sparsity for Squared-ReLU transformer FFNs.

Keeps the 2 largest of every 4 activations of a Squared-ReLU FFN and runs its GEMMs on 2:4 sparse
tensor cores, forward and backward; every op also runs on CPU (exact, reference speed) and on the
Meta device. The design is in docs/DESIGN.md of the repository.

Public API (docs/DESIGN.md, 'Public API'):
    sparsify24, sparsify24_transposed  2:4 sparsification (row-wise / along the tokens)
    Sp24Tensor, mm                     a 2:4 matrix and its product with a dense one
    relu2_ffn                          the differentiable 2:4 Squared-ReLU FFN
    relu2_experts                      routed MoE Squared-ReLU experts, each through relu2_ffn
    nn                                 ReLU2FFN, ReLU2Experts, set_sparse, DenseWarmup, convert
    stats, build_info                  activation sparsity; how this build was made
    reference                          the pure-PyTorch oracle: the semantics, stated once

Example::

    >>> x = torch.randn(8, 16)
    >>> s = sp24.sparsify24(x, activation="relu2")
    >>> (s @ torch.randn(16, 4)).shape
    torch.Size([8, 4])
"""

import torch  # noqa: F401  (must precede the native module: it provides libtorch)

try:
    from . import _build_config
except ImportError as e:  # pragma: no cover - only without a build
    raise ImportError(
        "sp24: the native extension is not built. From the repository root run:\n"
        "    pip install --no-build-isolation .        (add -e for an editable install)\n"
        f"({e})"
    ) from e

if _build_config.TORCH_VERSION != torch.__version__:
    raise ImportError(
        f"sp24 was built against torch {_build_config.TORCH_VERSION} but torch {torch.__version__} is "
        "installed; the native extension must be rebuilt against this torch:\n"
        "    pip install --no-build-isolation --force-reinstall --no-deps -e ."
    )

try:
    from . import _C
except ImportError as e:  # pragma: no cover
    raise ImportError(
        f"sp24: cannot load the native extension ({e}). Rebuild it against the installed torch "
        f"{torch.__version__}:\n    pip install --no-build-isolation --force-reinstall --no-deps -e ."
    ) from e

from . import reference  # noqa: E402
from .api import build_info, mm, sparsify24, sparsify24_transposed, stats  # noqa: E402
from .tensor import Sp24Tensor  # noqa: E402
from .ffn import relu2_ffn  # noqa: E402  (the 2:4 FFN)
from .experts import relu2_experts  # noqa: E402  (routed MoE experts, each through relu2_ffn)
from . import nn  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "Sp24Tensor",
    "build_info",
    "mm",
    "reference",
    "sparsify24",
    "sparsify24_transposed",
    "stats",
    "relu2_ffn",
    "relu2_experts",
    "nn",
]
