"""convert: swap the Squared-ReLU MLP blocks of an existing model (e.g. Hugging Face, PEFT) for ReLU2FFN."""

from __future__ import annotations

import dataclasses
import logging
import warnings
from typing import Callable, Optional

import torch
from torch import Tensor, nn

from ._args import _check_bool, _check_fraction, _check_module
from .adapters import _base_linear, _chain
from ._detect import LINEAR_PAIRS, RELU2_NAMES, _fake_or_meta, _is_relu2, _probe_matches  # noqa: F401  (public names)
from .experts import _ExpertsMode, convert_experts, experts_layout, verify_experts
from .ffn import ReLU2FFN

log = logging.getLogger("sp24.nn")

@dataclasses.dataclass
class ConvertReport:
    """What :func:`convert` did: the module names it swapped and those it skipped, with reasons.

    Skipped are the candidates it looked at and left alone: blocks with a known Linear-pair name
    whose forward is not a Squared-ReLU FFN (gated, GELU, ...), blocks with extra state, wrapped
    Linears, and MoE experts modules of a layout sp24 does not support (gated, other activations).
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
    if not _probe_matches(got, want, w.dtype):
        return "its forward is not the Squared-ReLU FFN of its Linears (e.g. gated, another activation, extra ops)"
    return ""


def _candidate(name: str, m: nn.Module, verify: bool):
    """((n1, n2, l1, l2), "") to swap, (None, reason) to report as skipped, (None, "") if not a candidate."""
    if isinstance(m, ReLU2FFN):
        return None, ""
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


def _matched_pair(match: Callable, name: str, m: nn.Module):
    """(n1, n2, l1, l2) of the two Linears match(name, m) names, or None; refuses anything else."""
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


class _Conversion:
    """One convert() call: finds the blocks (match= or the detection), builds the ReLU2FFNs, and
    records what it swapped and skipped."""

    def __init__(self, model: nn.Module, sparse: bool, dense_fraction: float, match, verify: bool,
                 experts: bool):
        self.model, self.sparse, self.dense_fraction = model, sparse, dense_fraction
        self.match, self.verify, self.experts = match, verify, experts
        self.report = ConvertReport()

    def swap_experts(self, name: str, m: nn.Module) -> bool:
        """Converts m in place if it is an experts module sp24 supports (reports it otherwise);
        whether m was an experts module (converted, already converted or skipped)."""
        if isinstance(m, _ExpertsMode):
            return True
        pair, why = experts_layout(m)
        if pair is not None and self.verify:
            why = verify_experts(m, pair)
        if why:
            self.report.skipped.append((name, why))
            return True
        if pair is None:
            return False
        if not self.experts:
            self.report.skipped.append((name, "MoE experts: experts=False"))
            return True
        convert_experts(m, pair, sparse=self.sparse, dense_fraction=self.dense_fraction)
        m._sp24_where = name or type(self.model).__name__
        self.report.swapped.append(name)
        return True

    def find(self, name: str, m: nn.Module):
        if self.match is not None:
            return _matched_pair(self.match, name, m)
        found, why = _candidate(name, m, self.verify)
        if why:
            self.report.skipped.append((name, why))
        return found

    def build(self, found, where: str) -> ReLU2FFN:
        n1, n2, l1, l2 = found
        ffn = ReLU2FFN.from_linear(l1, l2, sparse=self.sparse, dense_fraction=self.dense_fraction, names=(n1, n2))
        ffn._sp24_where = where or type(self.model).__name__  # named in its warnings (every layer says which)
        return ffn

    def walk(self, parent: nn.Module, prefix: str) -> None:
        for child_name, child in list(parent.named_children()):
            full = f"{prefix}.{child_name}" if prefix else child_name
            if self.swap_experts(full, child):
                continue
            found = self.find(full, child)
            if found is not None:
                setattr(parent, child_name, self.build(found, full))
                self.report.swapped.append(full)
            else:
                self.walk(child, full)


def convert(model: nn.Module, *, sparse: bool = False, dense_fraction: float = 0.05,
            match: Optional[Callable[[str, nn.Module], object]] = None, verify: bool = True,
            experts: bool = True, return_report: bool = False):
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
    Routed MoE experts stored as 3-D weights (NemotronH's ``NemotronHExperts`` and any module
    with ``up_proj`` (E, F, d) / ``down_proj`` (E, d, F), a Squared-ReLU ``act_fn``, no gate and
    ``forward(hidden_states, top_k_index, top_k_weights)``) are converted in place, whether or
    not ``match`` is given (``experts=False`` leaves them): the module keeps its object,
    Parameters and keys, and gains the sp24 mode (``sp24.nn.experts``); gated experts, other
    activations and other layouts are reported as skipped.

    The ReLU2FFN reuses the block's Linear modules (same Parameters, device, dtype, optimizer
    state; nothing is copied) under their own attribute names, so ``state_dict`` keys do not
    change (one key, ``<block>.sp24_mode``, is added: see :class:`ReLU2FFN`).

    Args:
        model (nn.Module): the model (its root may itself be a block).
        sparse (bool): the new modules' mode. Default: False (dense warm-up first).
        dense_fraction (float): in [0, 1]. Default: 0.05.
        match (callable, optional): ``match(name, module)`` returns the (first, second) Linear of
            a block to convert, or None; it replaces the detection (no verification).
        verify (bool): run the probe check (of experts modules too). Default: True.
        experts (bool): convert routed experts modules. Default: True.
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
    experts = _check_bool("convert", "experts", experts)
    run = _Conversion(model, sparse, dense_fraction, match, verify, experts)
    root = None if run.swap_experts("", model) else run.find("", model)
    if root is not None:
        run.report.swapped.append("")
        result = run.build(root, "")
    else:
        run.walk(model, "")
        result = model
    for line in str(run.report).splitlines():
        log.info(line)
    if not run.report.swapped and not return_report:
        # a conversion that changes nothing should not pass unnoticed (the report is only logged at INFO)
        why = "; ".join(f"{n or '<root>'}: {r}" for n, r in run.report.skipped[:3]) or "no candidate block"
        warnings.warn(f"sp24.nn.convert: converted nothing in {type(model).__name__} ({len(run.report.skipped)} "
                      f"skipped: {why}{'; ...' if len(run.report.skipped) > 3 else ''}); the model stays dense. "
                      f"return_report=True gives the full report", stacklevel=2)
    return (result, run.report) if return_report else result
