"""When the 2:4 FFN pays: thresholds for the automatic dense fallback (CUDA only).

`python -m sp24.bench crossover` measures, per (d, F, dtype) on one GPU, the smallest token count
from which the sparse FFN beats the dense one, and writes `sp24/data/crossover.json`:

    {"schema": 1, "gpu": str, "torch": str, "measured_by": str,
     "entries": [{"d": int, "F": int, "dtype": "bfloat16" | "float16",
                  "min_tokens_fwd": int, "min_tokens_fwd_bwd": int}]}

Lookup: the entry with the same (d, F, dtype) measured on a GPU of the same name. No file, another
GPU or no matching entry: the conservative default, sparse only from DEFAULT_MIN_TOKENS tokens
(an unmeasured, deliberately cautious guess: cuSPARSELt users report 0.1-0.9x of dense at small
T). Shapes cuSPARSELt cannot serve at all always run dense: float32 (its 50% mode for fp32 is 1:2
TF32, not 2:4) and d or F not a multiple of 16. A malformed file is an error, never silently
ignored.

Control: `SP24_FFN_FALLBACK=0` in the environment or `with sp24.ffn.fallback(False):` turns the
fallback off (sparse=True then always runs the sparse kernels); `SP24_CROSSOVER_FILE=path` reads
another file. On CPU there is no fallback: CPU runs are for correctness.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
from pathlib import Path
from typing import Iterator, Optional

import torch

DEFAULT_MIN_TOKENS = 2048
DATA_FILE = Path(__file__).parent / "data" / "crossover.json"
_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}

_enabled_override: Optional[bool] = None


def _env_enabled() -> bool:
    v = os.environ.get("SP24_FFN_FALLBACK", "1").strip().lower()
    if v in ("0", "false", "off", "no"):
        return False
    if v in ("1", "true", "on", "yes", ""):
        return True
    raise ValueError(f"sp24: SP24_FFN_FALLBACK must be 0 or 1, got {v!r}")


def enabled() -> bool:
    """Whether the automatic dense fallback is on (context override first, then the env var)."""
    return _env_enabled() if _enabled_override is None else _enabled_override


@contextlib.contextmanager
def fallback(enabled: bool) -> Iterator[None]:
    """`with sp24.ffn.fallback(False): ...` forces the sparse path on CUDA for every shape."""
    global _enabled_override
    prev, _enabled_override = _enabled_override, bool(enabled)
    try:
        yield
    finally:
        _enabled_override = prev


def _path() -> Path:
    return Path(os.environ.get("SP24_CROSSOVER_FILE", str(DATA_FILE)))


def _validate(path: Path, data) -> dict:
    def bad(msg: str):
        raise ValueError(f"sp24: crossover file {path} is malformed: {msg}; regenerate it with "
                         f"`python -m sp24.bench crossover` or delete it to use the default")

    if not isinstance(data, dict) or data.get("schema") != 1:
        got = data.get("schema") if isinstance(data, dict) else data
        bad(f"expected a JSON object with \"schema\": 1, got schema={got!r}")
    for key in ("gpu", "torch", "measured_by"):
        if not isinstance(data.get(key), str):
            bad(f"\"{key}\" must be a string, got {data.get(key)!r}")
    entries = data.get("entries")
    if not isinstance(entries, list):
        bad(f"\"entries\" must be a list, got {type(entries).__name__}")
    table = {}
    for i, e in enumerate(entries):
        if not isinstance(e, dict):
            bad(f"entries[{i}] must be an object, got {e!r}")
        for key in ("d", "F", "min_tokens_fwd", "min_tokens_fwd_bwd"):
            if not isinstance(e.get(key), int) or isinstance(e.get(key), bool) or e[key] < 0:
                bad(f"entries[{i}].{key} must be a non-negative int, got {e.get(key)!r}")
        if e.get("dtype") not in _DTYPES:
            bad(f"entries[{i}].dtype must be \"bfloat16\" or \"float16\", got {e.get('dtype')!r}")
        table[(e["d"], e["F"], _DTYPES[e["dtype"]])] = (e["min_tokens_fwd"], e["min_tokens_fwd_bwd"])
    return {"gpu": data["gpu"], "table": table}


@functools.lru_cache(maxsize=4)
def _load(path_str: str) -> Optional[dict]:
    path = Path(path_str)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"sp24: crossover file {path} is not valid JSON ({e}); regenerate it with "
                         f"`python -m sp24.bench crossover` or delete it to use the default") from e
    return _validate(path, data)


def clear_cache() -> None:
    _load.cache_clear()


def min_tokens(d: int, F: int, dtype: torch.dtype, backward: bool, gpu: Optional[str]) -> int:
    """Smallest token count from which the sparse FFN is used (see the module docstring)."""
    loaded = _load(str(_path()))
    if loaded is not None and (gpu is None or loaded["gpu"] == gpu):
        hit = loaded["table"].get((d, F, dtype))
        if hit is not None:
            return hit[1] if backward else hit[0]
    return DEFAULT_MIN_TOKENS


def use_dense(device: torch.device, T: int, d: int, F: int, dtype: torch.dtype, backward: bool) -> bool:
    """Whether relu2_ffn(sparse=True) should run dense for this call (CUDA only)."""
    if device.type != "cuda":
        return False
    # the override is a plain global: Dynamo guards on it, so `with fallback(...)` recompiles
    if not (_env_enabled_at_trace() if _enabled_override is None else _enabled_override):
        return False
    if dtype not in _DTYPES.values() or d % 16 or F % 16:
        return True  # no 2:4 tensor-core GEMM for these: sparse24_mm would run dense GEMMs plus overhead
    return T < _threshold(d, F, dtype, backward, 0 if device.index is None else device.index)


# Under torch.compile these run once at trace time and their results become constants of the
# graph (file and env reads would otherwise break a fullgraph=True compile): a change of the
# file or of SP24_FFN_FALLBACK after compiling needs a recompile (torch._dynamo.reset()).
@torch.compiler.assume_constant_result
def _env_enabled_at_trace() -> bool:
    return _env_enabled()


@torch.compiler.assume_constant_result
def _threshold(d: int, F: int, dtype: torch.dtype, backward: bool, index: int) -> int:
    return min_tokens(d, F, dtype, backward, _gpu_name(index))


def _gpu_name(index: int) -> str:
    name = _GPU_NAMES.get(index)
    if name is None:
        name = _GPU_NAMES[index] = torch.cuda.get_device_name(index)
    return name


_GPU_NAMES: dict = {}
