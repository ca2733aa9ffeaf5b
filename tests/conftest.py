"""pytest set-up for the sp24 suite: the helpers module on sys.path, and a skip summary by reason.

Skips are reported by reason, not by test location: on a machine without a GPU about 1,600 GPU
tests skip for the one reason "no CUDA device on this machine", and pytest's own `-rs` report would
print one line per test function for them. pyproject.toml therefore asks pytest for `-rfExX`
(failures, errors, xfail, xpass) and this file prints every skip, counted, in a few lines: all GPU
skips (tests marked `gpu`, or skipped for a missing CUDA device / CUDA build) on one line, every
other reason on its own line. `pytest -rs` (or `-ra`) still gives pytest's per-location list.
"""

import collections
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))

# reasons tests/helpers.py gives when the CUDA tests cannot run here
_GPU_REASONS = ("no CUDA device", "built without CUDA kernels")


def _skip_reason(report) -> str:
    longrepr = report.longrepr
    reason = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
    return reason[len("Skipped: "):] if reason.startswith("Skipped: ") else reason


def skip_summary(reports) -> list[str]:
    """Lines that summarise skipped test reports: one for the GPU tests, one per other reason."""
    gpu, other = collections.Counter(), collections.Counter()
    for rep in reports:
        reason = _skip_reason(rep)
        is_gpu = "gpu" in getattr(rep, "keywords", {}) or any(r in reason for r in _GPU_REASONS)
        (gpu if is_gpu else other)[reason] += 1
    lines = []
    if gpu:
        why = "; ".join(f"{r}: {n}" if len(gpu) > 1 else r for r, n in gpu.most_common())
        lines.append(f"{sum(gpu.values())} GPU tests skipped ({why}); on a GPU machine: bash bench/gpu_check.sh OUT")
    for reason, n in other.most_common():
        lines.append(f"{n} skipped: {reason}")
    return lines


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    reportchars = getattr(config.option, "reportchars", "") or ""
    if "s" in reportchars or "a" in reportchars or "A" in reportchars:
        return  # pytest already lists the skips (the user asked for -rs / -ra / -rA)
    skipped = [r for r in terminalreporter.stats.get("skipped", []) if getattr(r, "skipped", False)]
    lines = skip_summary(skipped)
    if lines:
        terminalreporter.write_sep("-", "skipped tests by reason")
        for line in lines:
            terminalreporter.write_line(line)
