"""Which GPUs a build serves: native code (SASS) for each arch of the build's list and PTX
for the "+PTX" ones, so that a GPU newer than the build still runs (the driver compiles the PTX).

The default list is what users get; the CUDA build lane of CI builds a shorter list to stay fast.
The check on the built extension reads its fat binary with cuobjdump and skips, with the reason,
on a build without CUDA kernels or a machine without cuobjdump.
"""

import os
import pathlib
import re
import shutil
import subprocess
import tomllib

import pytest

import sp24
from sp24 import _C

ROOT = pathlib.Path(__file__).resolve().parents[1]
DEFAULT = "8.0;9.0a;10.0;11.0;12.0+PTX"


def parse(archs: str) -> tuple[set, set]:
    """TORCH_CUDA_ARCH_LIST form -> ({SASS targets}, {PTX targets}), e.g. '9.0a;12.0+PTX' ->
    ({'sm_90a', 'sm_120'}, {'sm_120'})."""
    sass, ptx = set(), set()
    for a in filter(None, archs.split(";")):
        base = a.removesuffix("+PTX")
        m = re.fullmatch(r"(\d+)\.(\d)([af]?)", base)
        assert m, f"unexpected arch {a!r} in {archs!r}"
        name = f"sm_{m[1]}{m[2]}{m[3]}"
        sass.add(name)
        if a.endswith("+PTX"):
            ptx.add(name)
    return sass, ptx


def test_default_archs_serve_newer_gpus():
    cmake = (ROOT / "CMakeLists.txt").read_text()
    assert f'set(SP24_CUDA_ARCHS "{DEFAULT}" CACHE STRING' in cmake
    with open(ROOT / "pyproject.toml", "rb") as f:
        py = tomllib.load(f)["tool"]["scikit-build"]["cmake"]["define"]["SP24_CUDA_ARCHS"]
    assert py["default"] == DEFAULT  # pip install and a plain CMake build agree
    sass, ptx = parse(DEFAULT)
    assert {"sm_80", "sm_90a", "sm_100", "sm_120"} <= sass  # A100, H100/H200, B200/B300, RTX 50xx
    assert ptx, "the default list must carry PTX, or a GPU newer than the build cannot run sp24's kernels"


def _cuobjdump():
    found = shutil.which("cuobjdump")
    if found:
        return found
    cuda_home = os.environ.get("CUDA_HOME", "/usr/local/cuda")
    cand = pathlib.Path(cuda_home) / "bin" / "cuobjdump"
    if cand.exists():
        return str(cand)
    try:  # torch's CUDA wheels bring triton, which bundles cuobjdump
        import triton
        cand = pathlib.Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
        if cand.exists():
            return str(cand)
    except ImportError:
        pass
    return None


def _listed(tool, flag, so):
    out = subprocess.run([tool, flag, so], capture_output=True, text=True, check=True).stdout
    return {m[1] for m in re.finditer(r"\.(sm_\d+[af]?)\.(?:cubin|ptx)\b", out)}


def _base(archs):  # older cuobjdump releases print an arch-specific cubin (sm_90a) as sm_90
    return {re.sub(r"[af]$", "", a) for a in archs}


def test_built_extension_carries_its_sass_and_ptx():
    info = sp24.build_info()
    if not info["with_cuda"]:
        pytest.skip("sp24 was built without CUDA kernels (CPU torch or SP24_CUDA=OFF): no device code to check")
    tool = _cuobjdump()
    if tool is None:
        pytest.skip("no cuobjdump on PATH, in CUDA_HOME/bin or bundled with triton")
    want_sass, want_ptx = parse(info["cuda_archs"])
    sass, ptx = _listed(tool, "--list-elf", _C.__file__), _listed(tool, "--list-ptx", _C.__file__)
    assert _base(sass) == _base(want_sass), f"SASS in {_C.__file__}: {sorted(sass)}, build list {info['cuda_archs']}"
    assert _base(ptx) == _base(want_ptx), f"PTX in {_C.__file__}: {sorted(ptx)}, build list {info['cuda_archs']}"
