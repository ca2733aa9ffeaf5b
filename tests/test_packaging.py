"""What a newcomer gets from the repository: the sdist holds the sources and documents but no
measured results, and the repository cites nothing outside itself."""

from __future__ import annotations

import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
in_checkout = pytest.mark.skipif(not (ROOT / "pyproject.toml").is_file() or not (ROOT / ".git").exists(),
                                 reason="needs the source checkout (pyproject.toml and git), not an installed copy")


@in_checkout
def test_sdist_ships_sources_and_docs_but_no_results(tmp_path):
    pytest.importorskip("scikit_build_core", reason="building the sdist needs scikit-build-core")
    # the PEP 517 hook pip would call; about a second, no compiler involved
    code = ("import sys; from scikit_build_core.build import build_sdist; "
            "print(build_sdist(sys.argv[1]))")
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    name = r.stdout.strip().splitlines()[-1]
    with tarfile.open(tmp_path / name) as tf:
        files = {m.name.split("/", 1)[1] for m in tf.getmembers() if m.isfile()}
    for must in ("LICENSE", "README.md", "docs/DESIGN.md", "pyproject.toml", "CMakeLists.txt",
                 "csrc/schemas.cpp", "python/sp24/__init__.py", "bench/results/README.md"):
        assert must in files, f"the sdist lacks {must}"
    results = sorted(f for f in files if f.startswith("bench/results/") and f != "bench/results/README.md")
    assert not results, f"the sdist ships measured results: {results}"
    assert not [f for f in files if f.startswith(("out/", "build/", ".venv"))], "the sdist ships build or demo output"
    assert not [f for f in files if f.endswith((".so", ".pyc"))], "the sdist ships compiled files"


@in_checkout
def test_repository_cites_only_itself():
    """No tracked file points outside the repository (a team folder, a machine path) or at a design
    document other than docs/DESIGN.md."""
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    bad = re.compile(r"\.\./shared|/wor[k]/|(?<![\w/])DESIGN\.md|DESIGN §|DESIGN section|DESIGN's")
    hits = []
    for rel in tracked:
        path = ROOT / rel
        if path.suffix in (".png", ".json") or not path.is_file():
            continue
        for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            # "docs/DESIGN.md" is the in-repository design document; anything else is a dangling pointer
            if bad.search(line.replace("docs/DESIGN.md", "")) and rel != "tests/test_packaging.py":
                hits.append(f"{rel}:{n}: {line.strip()}")
    assert not hits, "references outside the repository:\n" + "\n".join(hits)
    assert (ROOT / "docs" / "DESIGN.md").is_file() and (ROOT / "LICENSE").is_file()
    assert "BSD 3-Clause" in (ROOT / "LICENSE").read_text() or "Redistribution and use" in (ROOT / "LICENSE").read_text()
