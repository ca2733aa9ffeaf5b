"""Limits on the shape of sp24's own code, so a module or a function cannot quietly grow past what a
reader can hold in mind, and the package keeps a clear order of modules:

* every file under python/sp24 (recursively) has at most 500 lines, every function or method at
  most 80 (``end_lineno - lineno + 1`` of its ``def``; decorators not counted);
* no import circle between sp24's modules, counting every ``from . import x`` / ``from .x import y``
  / ``import sp24.x`` / ``from sp24.x import y``, at the top of a module and inside functions
  (a lazy import inside a function hides a circle from Python, not from a reader);
* no comment or docstring in python/sp24 or csrc/ cites an issue number (``issue #N``, ``issue N``,
  a bare ``#N``): a comment says what the code does and why, and an issue number says neither.
  Another project's bug report given as evidence (``pytorch/pytorch#155333``) is allowed.

Each failure names the file (and function or import line) and the number that broke the limit.
"""

from __future__ import annotations

import ast
import importlib.util
import io
import re
import tokenize
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "python" / "sp24"
CSRC = ROOT / "csrc"
MAX_FILE_LINES = 500
MAX_FUNCTION_LINES = 80

pytestmark = pytest.mark.skipif(not PKG.is_dir(), reason="python/sp24 is not next to tests/ (installed copy)")


def _py_files() -> list[Path]:
    return sorted(PKG.rglob("*.py"))


def _rel(p: Path) -> str:
    return p.relative_to(ROOT).as_posix()


# ---- sizes -------------------------------------------------------------------------------------

def file_sizes() -> list[tuple[str, int]]:
    """(file, lines) of every Python file under python/sp24."""
    return [(_rel(p), len(p.read_text().splitlines())) for p in _py_files()]


def function_sizes(path: Path) -> list[tuple[str, int, int]]:
    """(qualified name, first line, lines) of every function and method of a file, nested ones too."""
    out = []

    def visit(node, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = f"{prefix}{child.name}"
                if not isinstance(child, ast.ClassDef):
                    out.append((name, child.lineno, child.end_lineno - child.lineno + 1))
                visit(child, name + ".")
            else:
                visit(child, prefix)

    visit(ast.parse(path.read_text()), "")
    return out


def test_no_file_over_the_limit():
    big = [f"{f}: {n} lines" for f, n in file_sizes() if n > MAX_FILE_LINES]
    assert not big, f"files over {MAX_FILE_LINES} lines (split them along a real seam): {big}"


def test_no_function_over_the_limit():
    big = [f"{_rel(p)}:{line} {name}: {n} lines" for p in _py_files() for name, line, n in function_sizes(p)
           if n > MAX_FUNCTION_LINES]
    assert not big, f"functions over {MAX_FUNCTION_LINES} lines (def to last line, decorators excluded): {big}"


# ---- the import graph --------------------------------------------------------------------------

def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _source_modules() -> dict[str, Path]:
    return {_module_name(p): p for p in _py_files()}


def _is_module(name: str, sources: dict) -> bool:
    # a source module, or one that only exists built (sp24._C, the generated sp24._build_config)
    if name in sources:
        return True
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def import_edges() -> dict[str, list[tuple[str, int]]]:
    """{module: [(imported sp24 module, line)]} from every import statement of each module.

    ``from P import n`` imports module P.n if there is one, else P itself (n is an attribute of P);
    the parents a submodule import runs implicitly are not edges (every module would otherwise be
    in a circle with its package's __init__)."""
    sources = _source_modules()
    edges: dict[str, list[tuple[str, int]]] = {m: [] for m in sources}
    for mod, path in sources.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    src = ".".join(base + ([node.module] if node.module else []))
                else:
                    src = node.module or ""
                if src != "sp24" and not src.startswith("sp24."):
                    continue
                for a in node.names:
                    sub = f"{src}.{a.name}"
                    targets.append(sub if _is_module(sub, sources) else src)
            for t in targets:
                if t == "sp24" or t.startswith("sp24."):
                    edges[mod].append((t, node.lineno))
    return edges


def import_circles(edges: dict) -> list[list[str]]:
    """The strongly connected components of more than one module (or a module importing itself)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set = set()
    out = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w, _ in edges.get(v, ()):
            if w not in edges:
                continue
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or any(t == v for t, _ in edges[v]):
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            connect(v)
    return out


def test_import_graph_sees_the_package():
    edges = import_edges()
    assert {"sp24", "sp24.api", "sp24.reference"} <= set(edges)
    assert "sp24.api" in {t for t, _ in edges["sp24"]}, edges["sp24"]


def test_no_import_circle():
    edges = import_edges()
    circles = import_circles(edges)
    described = []
    for comp in circles:
        members = set(comp)
        lines = [f"{m} imports {t} (line {n})" for m in comp for t, n in edges[m] if t in members]
        described.append(f"{' <-> '.join(comp)}: {'; '.join(lines)}")
    assert not circles, ("import circles between sp24 modules (move what both sides need into a lower module): "
                         + " | ".join(described))


# ---- issue numbers in comments and docstrings ---------------------------------------------------

# "issue #13", "issue 10", "issues 3 and 4", and a bare "#12" / "(#12)" that no owner/repo precedes
ISSUE_REF = re.compile(r"\bissues?\s*#?\s*\d+|(?<![\w/.#-])#\d+\b", re.I)


def python_comments(path: Path) -> list[tuple[int, str]]:
    """(line, text) of every comment and docstring of a Python file."""
    src = path.read_text()
    out = [(t.start[0], t.string.lstrip("#")) for t in tokenize.generate_tokens(io.StringIO(src).readline)
           if t.type == tokenize.COMMENT]
    for node in ast.walk(ast.parse(src)):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if (isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)
                    and isinstance(first.value.value, str)):
                for i, line in enumerate(first.value.value.splitlines()):
                    out.append((first.lineno + i, line))
    return out


_C_TOKENS = re.compile(r'//[^\n]*|/\*.*?\*/|"(?:\\.|[^"\\\n])*"|\'(?:\\.|[^\'\\\n])*\'', re.S)


def c_comments(path: Path) -> list[tuple[int, str]]:
    """(line, text) of every // and /* */ comment of a C++/CUDA file (string literals skipped)."""
    src = path.read_text()
    out = []
    for m in _C_TOKENS.finditer(src):
        if m.group().startswith(("//", "/*")):
            line = src.count("\n", 0, m.start()) + 1
            out += [(line + i, text) for i, text in enumerate(m.group().splitlines())]
    return out


def _commented_files() -> list[Path]:
    c = sorted(p for p in CSRC.rglob("*") if p.suffix in (".cpp", ".h", ".hpp", ".cu", ".cuh") and p.is_file())
    return _py_files() + c


def _params():
    for p in _commented_files():
        yield pytest.param(p, id=_rel(p))


def test_issue_pattern():
    hits = [bool(ISSUE_REF.search(s)) for s in (
        "issue #13", "(issue 10)", "for issue 9", "issues 3 and 4", "(#12)", "see #4)", "Issue #3:")]
    assert all(hits), hits
    misses = [bool(ISSUE_REF.search(s)) for s in (
        "pytorch/pytorch#155333", "pytorch/ao#1234", "#include <x>", "0x7FFF", "2:4 issued before any", "#!x")]
    assert not any(misses), misses


@pytest.mark.parametrize("path", list(_params()) if PKG.is_dir() else [])
def test_no_issue_numbers_in_comments(path):
    comments = python_comments(path) if path.suffix == ".py" else c_comments(path)
    hits = [f"{_rel(path)}:{line}: {m.group()!r} in {text.strip()[:100]!r}"
            for line, text in comments for m in ISSUE_REF.finditer(text)]
    assert not hits, f"comments/docstrings citing issue numbers (say what the code does and why instead): {hits}"
