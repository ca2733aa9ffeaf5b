"""Timing core shared by every sub-command: warm-up, many timed runs, median/p10/p90, inputs rotated
through a pool larger than L2.

Why rotate: a (T=1024, F=16384) bf16 activation is 32 MiB, smaller than an H100's 50 MiB L2; timing
the same buffer again and again would measure L2 bandwidth, not the HBM traffic a real FFN sees. So
each timed run reads the next input set of a pool whose total size is >= `factor` x L2.

On CUDA each run is bracketed by its own pair of CUDA events (GPU time, no host jitter); on CPU
(tests only) by time.perf_counter with the same warm-up/rotation structure.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

# L2 size assumed on CPU (tests only): the number is irrelevant there, it just drives the same
# pool logic as on a GPU.
CPU_NOMINAL_L2_BYTES = 1 << 20


def l2_bytes(device: torch.device | str) -> int:
    """L2 size of `device` in bytes (read from the device on CUDA)."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).L2_cache_size)
    return CPU_NOMINAL_L2_BYTES


def pool_count(set_bytes: int, l2: int, factor: float = 2.0, max_count: int = 1024) -> int:
    """How many copies of an input set (of `set_bytes`) to rotate through so that the pool holds at
    least `factor` x `l2` bytes; at least 1, at most `max_count` (a cap for tiny sets, under
    ~100 KiB with a 50 MiB L2, whose runs are dominated by launch latency anyway)."""
    if set_bytes < 0 or l2 < 0 or factor <= 0 or max_count < 1:
        raise ValueError(f"sp24.bench.pool_count: need set_bytes >= 0, l2 >= 0, factor > 0, max_count >= 1, "
                         f"got {set_bytes}, {l2}, {factor}, {max_count}")
    if set_bytes == 0:
        return max_count
    return max(1, min(max_count, math.ceil(factor * l2 / set_bytes)))


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """q-th percentile (0..100) with linear interpolation between closest ranks (numpy's default)."""
    n = len(sorted_values)
    if n == 0:
        raise ValueError("sp24.bench.percentile: no samples")
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"sp24.bench.percentile: q must be in [0, 100], got {q}")
    pos = (n - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, n - 1)
    frac = pos - lo
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * frac


def summarize(samples_us: Sequence[float]) -> dict:
    """median, p10, p90, min, mean of run times in microseconds."""
    s = sorted(float(v) for v in samples_us)
    return {
        "median_us": percentile(s, 50.0),
        "p10_us": percentile(s, 10.0),
        "p90_us": percentile(s, 90.0),
        "min_us": s[0],
        "mean_us": sum(s) / len(s),
        "runs": len(s),
    }


@dataclass
class Timer:
    device: torch.device
    warmup: int = 10
    reps: int = 50

    def __post_init__(self):
        self.device = torch.device(self.device)
        if self.warmup < 0 or self.reps < 1:
            raise ValueError(f"sp24.bench: need --warmup >= 0 and --reps >= 1, got {self.warmup} and {self.reps}")

    def sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def run(self, fn: Callable[[int], object], n_sets: int = 1) -> dict:
        """Time fn(i), i cycling through 0..n_sets-1 (the caller's input pool): `warmup` untimed
        runs, then `reps` timed runs; returns summarize() of the timed runs (us)."""
        if n_sets < 1:
            raise ValueError(f"sp24.bench.Timer.run: n_sets must be >= 1, got {n_sets}")
        for i in range(self.warmup):
            fn(i % n_sets)
        self.sync()
        samples = []
        if self.device.type == "cuda":
            events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                      for _ in range(self.reps)]
            for i, (start, end) in enumerate(events):
                start.record()
                fn((self.warmup + i) % n_sets)
                end.record()
            torch.cuda.synchronize(self.device)
            samples = [start.elapsed_time(end) * 1e3 for start, end in events]
        else:
            for i in range(self.reps):
                t0 = time.perf_counter()
                fn((self.warmup + i) % n_sets)
                samples.append((time.perf_counter() - t0) * 1e6)
        return summarize(samples)
