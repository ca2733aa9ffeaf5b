"""Modules: the Squared-ReLU FFN with 2:4 activation sparsity, and the tools to train with it.

    ffn = sp24.nn.ReLU2FFN(d_model, d_hidden)          # dense (sparse=False) by default
    model, report = sp24.nn.convert(model, return_report=True)   # swap Squared-ReLU MLPs in place
    warm = sp24.nn.DenseWarmup(model, steps=1000)      # dense warm-up, then 2:4 fwd + bwd
    experts = sp24.nn.ReLU2Experts(E, d_model, d_hidden)  # routed MoE experts (convert swaps HF's in place)
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

from .experts import ReLU2Experts
from .conversion import LINEAR_PAIRS, RELU2_NAMES, ConvertReport, convert, log
from .ffn import MODE_KEY, ReLU2, ReLU2FFN
from .state import load_mode, without_mode
from .warmup import DenseWarmup, set_sparse

__all__ = ["ReLU2", "ReLU2FFN", "ReLU2Experts", "set_sparse", "convert", "ConvertReport", "DenseWarmup", "load_mode",
           "without_mode"]


def _doctests() -> dict:
    # doctest collects the examples of the objects a module defines itself; these are defined in
    # the submodules, so `doctest` on sp24.nn (what users and tests/test_nn_docs.py run) finds them
    # here: every public object, and each of their methods that has an example
    out = {}
    for name in __all__:
        obj = globals()[name]
        out[name] = obj
        for attr, member in vars(obj).items() if isinstance(obj, type) else ():
            fn = getattr(member, "__func__", member)  # classmethod / staticmethod
            if callable(fn) and ">>>" in (getattr(fn, "__doc__", None) or ""):
                out[f"{name}.{attr}"] = fn
    return out


__test__ = _doctests()
