"""The CPU kernels run on torch's intra-op threads, and their results do not depend on how many.

Why: at::parallel_for is inlined `#pragma omp` in torch's OpenMP builds, so an extension compiled
without -fopenmp runs every sp24 CPU kernel on one thread, silently; these tests would see it."""

from __future__ import annotations

import pytest
import torch

import sp24
from sp24 import _build_config

from helpers import assert_bits_equal

_ops = torch.ops.sp24


@pytest.fixture
def threads():
    saved = torch.get_num_threads()
    yield
    torch.set_num_threads(saved)


def test_built_with_openmp():
    assert _build_config.OPENMP is True, "sp24 was built without OpenMP: its CPU kernels run on one thread"


def test_parallel_for_uses_torchs_threads(threads):
    torch.set_num_threads(2)
    assert sp24._C.parallel_threads_seen(4096) == 2
    torch.set_num_threads(1)
    assert sp24._C.parallel_threads_seen(4096) == 1


def _all_kernels(seed: int):
    g = torch.Generator().manual_seed(seed)
    y1 = torch.randn(1024, 256, generator=g)
    y1[::7, ::5] = 0.0
    v, i, c = _ops.sparsify24(y1, "largest", "relu2", True)
    dy2 = torch.randn(1024, 256, generator=g)
    dy1 = _ops.sparse24_apply_relu2_backward(dy2, v, i)
    cols = torch.randperm(256, generator=g)
    sc, dc = cols[16:].sort().values, cols[:16].sort().values
    tv, ti, dt = _ops.sparse24_transposed_split(v, i, sc, dc, "largest_abs", True)
    xv, xi = _ops.sparsify24_transposed(y1, "largest_abs", sc)
    return [v, i, c, dy1, _ops.sparse24_apply(dy2, i), _ops.sparse24_to_dense(v, i), tv, ti, dt, xv, xi]


def test_results_do_not_depend_on_the_thread_count(threads):
    torch.set_num_threads(1)
    one = _all_kernels(3)
    torch.set_num_threads(2)
    two = _all_kernels(3)
    for k, (a, b) in enumerate(zip(one, two)):
        assert_bits_equal(b, a, f"output {k}: 2 threads vs 1")


def test_one_openmp_runtime_in_the_process():
    """sp24 links libgomp.so.1 by soname, which resolves to the copy torch already loaded: one OpenMP
    runtime and one thread pool, not two competing for the cores."""
    try:
        maps = open("/proc/self/maps").read().splitlines()
    except OSError:
        pytest.skip("no /proc/self/maps on this OS")
    runtimes = {line.split()[-1] for line in maps if "libgomp" in line or "libiomp" in line}
    assert len(runtimes) <= 1, f"more than one OpenMP runtime loaded: {sorted(runtimes)}"
