"""Every public name of sp24 has a docstring in one style (PyTorch's): a summary line, then Args
(for callables with parameters), Returns (for functions), Raises where it raises, and an Example
whose `>>>` lines run (doctest, on CPU). `help(sp24.X)` is what a user reads first."""

from __future__ import annotations

import doctest
import inspect
import types

import pytest
import torch

import sp24



def _public_names():
    """(qualified name, object) of sp24.__all__, and of the public functions/classes of the public
    modules in it (sp24.reference, sp24.nn)."""
    out = []
    for name in sp24.__all__:
        obj = getattr(sp24, name)
        if isinstance(obj, types.ModuleType):
            out.append((f"sp24.{name}", obj))
            names = getattr(obj, "__all__", None) or [
                n for n, o in vars(obj).items()
                if not n.startswith("_") and (inspect.isfunction(o) or inspect.isclass(o))
                and getattr(o, "__module__", None) == obj.__name__]
            out += [(f"sp24.{name}.{n}", getattr(obj, n)) for n in names]
        else:
            out.append((f"sp24.{name}", obj))
    return out


NAMES = _public_names()


def _has_params(obj) -> bool:
    target = obj.__init__ if inspect.isclass(obj) else obj
    try:
        params = [p for p in inspect.signature(target).parameters if p not in ("self", "cls")]
    except (TypeError, ValueError):
        return False
    return bool(params)


def test_walk_finds_the_api():
    names = {n for n, _ in NAMES}
    assert {"sp24.relu2_ffn", "sp24.sparsify24", "sp24.reference.sparsify24", "sp24.nn.ReLU2FFN"} <= names


@pytest.mark.parametrize("qualname, obj", NAMES, ids=[n for n, _ in NAMES])
def test_docstring_style(qualname, obj):
    doc = inspect.getdoc(obj)
    assert doc, f"{qualname} has no docstring"
    summary = doc.splitlines()[0].strip()
    assert summary and not summary.startswith(("Args", "Example")), f"{qualname}: no summary line"
    if isinstance(obj, types.ModuleType):
        return
    sections = [line.strip() for line in doc.splitlines()]
    if _has_params(obj):
        assert "Args:" in sections, f"{qualname}: no 'Args:' section"
    if inspect.isfunction(obj):
        assert "Returns:" in sections, f"{qualname}: no 'Returns:' section"
    if "raise " in inspect.getsource(obj):
        assert "Raises:" in sections, f"{qualname}: raises, but has no 'Raises:' section"
    assert any(s.startswith("Example") for s in sections), f"{qualname}: no 'Example::' section"
    assert ">>>" in doc, f"{qualname}: the example has no >>> lines to run"


@pytest.mark.parametrize("module", [sp24, sp24.reference, sp24.ffn], ids=lambda m: m.__name__)
def test_docstring_examples_run(module):
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE)
    tests = [t for t in finder.find(module, module.__name__, globs={"torch": torch, "sp24": sp24}) if t.examples]
    assert tests, f"{module.__name__}: no examples found"
    torch.manual_seed(0)
    for t in tests:
        runner.run(t)
    res = runner.summarize(verbose=False)
    assert res.failed == 0, f"{module.__name__}: {res.failed} of {res.attempted} docstring examples failed (see the output)"
