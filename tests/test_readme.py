"""The README's Python code runs as pasted, so the README cannot drift from the code.

Every ```python block of README.md is fed line by line to a fresh interactive console (the
standard library's `code.InteractiveConsole`, which reads input like the `python` shell), i.e. as if
pasted into a new Python shell, on the CPU. So a block must also respect the shell's rules: a blank
line ends an indented block, and a statement after an indented block needs a blank line before it. Convention for optional extras: a block whose FIRST line is

    # needs: transformers[, peft ...]

is skipped, with that reason, when one of the named packages cannot be imported; it runs wherever
they are installed. Nothing else may be skipped: a block that fails is a README bug.
"""

from __future__ import annotations

import code
import importlib.util
import re
import traceback
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
_BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
_NEEDS = re.compile(r"#\s*needs:\s*(.+)")


def python_blocks(text: str) -> list[tuple[int, str]]:
    """(first line number, code) of every ```python block of a markdown text."""
    return [(text.count("\n", 0, m.start()) + 2, m.group(1)) for m in _BLOCK.finditer(text)]


def needs(code: str) -> list[str]:
    first = code.lstrip("\n").splitlines()[0] if code.strip() else ""
    m = _NEEDS.fullmatch(first.strip())
    return [p.strip() for p in m.group(1).split(",") if p.strip()] if m else []


pytestmark = pytest.mark.skipif(not README.is_file(), reason="README.md is not next to tests/ (installed copy)")
BLOCKS = python_blocks(README.read_text()) if README.is_file() else []


def test_readme_has_python_blocks():
    assert len(BLOCKS) >= 3, f"expected the README's API examples, found {len(BLOCKS)} python blocks"
    assert python_blocks("x\n```python\na = 1\n```\n```bash\nls\n```\n") == [(3, "a = 1\n")]
    assert needs("# needs: transformers, peft\nimport peft\n") == ["transformers", "peft"]
    assert needs("import torch\n# needs: peft\n") == []
    # the console reads like the shell: a dedented statement right after a loop is a syntax error there
    assert paste("for i in range(2):\n    y = i\nprint(y)\n", "t") != []
    assert paste("for i in range(2):\n    y = i\n\nassert y == 1\n", "t") == []
    assert paste("assert 1 == 2\n", "t") != []


@pytest.mark.parametrize("line, code", BLOCKS, ids=[f"README.md:{line}" for line, _ in BLOCKS])
def test_readme_block_runs(line, code, capsys):
    missing = [p for p in needs(code) if importlib.util.find_spec(p) is None]
    if missing:
        pytest.skip(f"README.md:{line} needs {', '.join(missing)} (optional extra, not installed)")
    errors = paste(code, f"README.md:{line}")
    out = capsys.readouterr()
    assert not errors, f"README.md:{line}: the block fails when pasted into a Python shell:\n" + "\n".join(errors) + out.err


class _Console(code.InteractiveConsole):
    """The Python shell's reader; errors are collected instead of printed."""

    def __init__(self, filename: str):
        super().__init__({"__name__": "__console__"}, filename)
        self.errors: list[str] = []

    def showsyntaxerror(self, filename=None, **kwargs):
        self.errors.append("".join(traceback.format_exc()))

    def showtraceback(self):
        self.errors.append("".join(traceback.format_exc()))


def paste(source: str, filename: str) -> list[str]:
    """Feed source to a fresh console line by line, as a paste would; the errors it raised."""
    console = _Console(filename)
    more = False
    for text in source.splitlines():
        more = console.push(text)
        if console.errors:
            break
    if more and not console.errors:
        console.push("")  # the Enter that ends a trailing indented block
    return console.errors
