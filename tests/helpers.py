"""Shared test helpers: devices, dtypes, seeded input generators, bit-exact comparisons."""

from __future__ import annotations

import pytest
import torch

import sp24
from sp24 import _ops

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
INT_VIEW = {torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16,
            torch.float8_e4m3fn: torch.uint8}


def cuda_ready() -> bool:
    return torch.cuda.is_available() and _ops.has_kernel("sparsify24", "CUDA")


def _cuda_skip_reason() -> str:
    if not torch.cuda.is_available():
        return "no CUDA device on this machine"
    return "sp24 was built without CUDA kernels (CPU torch or SP24_CUDA=OFF)"


requires_cuda = pytest.mark.skipif(not cuda_ready(), reason=_cuda_skip_reason())

DEVICES = ["cpu", pytest.param("cuda", marks=[requires_cuda, pytest.mark.gpu])]


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def tie_free(M: int, K: int, dtype: torch.dtype, seed: int, device="cpu", nonneg: bool = False) -> torch.Tensor:
    """(M, K) values whose magnitudes are distinct inside every group of 4 (so neither 'largest' nor
    'largest_abs' meets a tie). Values are multiples of 1/8 below 16: exact in every dtype."""
    g = gen(seed)
    G = M * K // 4
    mags = torch.rand(G, 120, generator=g).argsort(dim=1)[:, :4] + 1  # 4 distinct of 1..120
    signs = torch.ones(G, 4) if nonneg else torch.where(torch.rand(G, 4, generator=g) < 0.5, -1.0, 1.0)
    x = (mags.float() / 8.0 * signs).reshape(M, K)
    return x.to(dtype).to(device)


def tie_heavy(M: int, K: int, dtype: torch.dtype, seed: int, device="cpu") -> torch.Tensor:
    """(M, K) values drawn from a tiny set including +0.0 and -0.0: ties everywhere."""
    g = gen(seed)
    pool = torch.tensor([-1.0, -0.0, 0.0, 0.0, 1.0, 2.0, 2.0])
    x = pool[torch.randint(0, len(pool), (M, K), generator=g)]
    return x.to(dtype).to(device)


def randn(M: int, K: int, dtype: torch.dtype, seed: int, device="cpu") -> torch.Tensor:
    return torch.randn(M, K, generator=gen(seed)).to(dtype).to(device)


# (exponent mask, mantissa mask, sign bit, smallest subnormal) of each dtype's bits
_FLOAT_BITS = {torch.float32: (0x7F800000, 0x007FFFFF, -0x80000000, 1.0e-45),
               torch.float16: (0x7C00, 0x03FF, -0x8000, 6.0e-8),
               torch.bfloat16: (0x7F80, 0x007F, -0x8000, 1.0e-40)}


def special(M: int, K: int, dtype: torch.dtype, seed: int, device="cpu") -> torch.Tensor:
    """Random values sprinkled with NaNs of random sign and payload (quiet and signalling), +-Inf,
    -0.0 and subnormals."""
    g = gen(seed)
    x = torch.randn(M, K, generator=g)
    r = torch.rand(M, K, generator=g)
    x[(r >= 0.08) & (r < 0.14)] = float("inf")
    x[(r >= 0.14) & (r < 0.20)] = float("-inf")
    x[(r >= 0.20) & (r < 0.30)] = -0.0
    expo, mant, sign, tiny = _FLOAT_BITS[dtype]
    sub = (r >= 0.30) & (r < 0.34)
    x[sub] = torch.randint(-3, 4, (int(sub.sum()),), generator=g).float() * tiny  # subnormal (or 0)
    x = x.to(dtype)
    nan = r < 0.08
    iv = INT_VIEW[dtype]
    payload = torch.randint(1, mant + 1, (M, K), generator=g)
    bits = (expo | payload) + torch.where(torch.rand(M, K, generator=g) < 0.5, sign, 0)
    return torch.where(nan, bits.to(iv), x.view(iv)).view(dtype).to(device)


def assert_bits_equal(actual: torch.Tensor, expected: torch.Tensor, what: str = "") -> None:
    """Exact equality of every bit, NaNs included: a NaN that is only selected keeps its payload and
    sign, a NaN made by arithmetic is the canonical one (sp24.reference.NAN_BITS) on every backend."""
    assert actual.dtype == expected.dtype, f"{what}: dtype {actual.dtype} != {expected.dtype}"
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    a, e = actual.detach().cpu(), expected.detach().cpu()
    if not a.is_floating_point():
        assert torch.equal(a, e), f"{what}: tensors differ"
        return
    iv = INT_VIEW[a.dtype]
    bad = (a.contiguous().view(iv) != e.contiguous().view(iv)).nonzero()
    assert bad.numel() == 0, (f"{what}: {bad.size(0)} elements differ in their bits, first at "
                              f"{tuple(bad[0].tolist())}: {a[tuple(bad[0])].item()} vs {e[tuple(bad[0])].item()}")


def assert_2to4_invariants(indices: torch.Tensor) -> None:
    """Indices are in 0..3 and strictly increasing within each group."""
    i = indices.cpu().to(torch.int64)
    if i.numel() == 0:
        return
    assert int(i.max()) <= 3, f"index out of range: {int(i.max())}"
    pairs = i.reshape(i.shape[0], -1, 2)
    assert bool((pairs[..., 0] < pairs[..., 1]).all()), "indices are not strictly increasing within a group"


__all__ = ["sp24", "DTYPES", "DEVICES", "requires_cuda", "cuda_ready", "tie_free", "tie_heavy", "randn",
           "special", "assert_bits_equal", "assert_2to4_invariants", "gen"]


def train_lm_with_warmup(model, batch, steps: int = 12, warmup: int = 2, lr: float = 3e-3):
    """Train a Hugging Face causal LM on one batch with sp24.nn.DenseWarmup: (losses, the warm-up)."""
    import sp24
    warm = sp24.nn.DenseWarmup(model, steps=warmup)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        loss = model(batch, labels=batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        warm.step()
        losses.append(loss.item())
    return losses, warm


def _gloo_worker(rank, world, out_dir, scenarios, warn_as_error):
    """One rank of spawn_gloo: run scenarios(rank, world, res) in a gloo group, write res as JSON
    (an exception is recorded as res["error"], which spawn_gloo raises)."""
    import datetime
    import gc
    import json
    import os
    import sys
    import warnings
    import torch.distributed as dist
    torch.set_num_threads(1)
    res = {}
    dist.init_process_group("gloo", init_method=f"file://{out_dir}/init", rank=rank, world_size=world,
                            timeout=datetime.timedelta(minutes=5))
    try:
        with warnings.catch_warnings():
            if warn_as_error:
                warnings.filterwarnings("error", message="sp24")  # the 2:4 path, never sp24's dense fallback
            scenarios(rank, world, res)
    except Exception as e:  # noqa: BLE001 - recorded, the test shows it
        import traceback
        res["error"] = f"{type(e).__name__}: {e}\n{traceback.format_exc()}"
    with open(f"{out_dir}/rank{rank}.json", "w") as f:
        json.dump(res, f)
    gc.collect()
    dist.barrier()
    dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def spawn_gloo(scenarios, world: int, out_dir, warn_as_error: bool = False) -> list[dict]:
    """Run the module-level function scenarios(rank, world, res) on `world` CPU processes in one gloo
    group; returns each rank's res, after checking that no rank raised."""
    import json
    import torch.multiprocessing as mp
    mp.spawn(_gloo_worker, args=(world, str(out_dir), scenarios, warn_as_error), nprocs=world, join=True)
    ranks = [json.loads((out_dir / f"rank{r}.json").read_text()) for r in range(world)]
    for r in ranks:
        assert "error" not in r, r.get("error")
    return ranks
