"""The demo's training: one run (dense, or dense warm-up then 2:4), its optimizer step, learning rate
schedule and held-out evaluation; sp24.study trains its runs with the same pieces."""

from __future__ import annotations

import math
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

from ..nn import set_sparse
from .corpus import get_batch
from .model import GPT, Config


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _progress(iterable, desc: str, **kw):
    try:
        from tqdm import tqdm
    except ImportError:  # the GPU test machine has no network; say so rather than fail
        print(f"sp24.demo: tqdm is not installed (pip install tqdm): no progress bar for '{desc}'", file=sys.stderr)
        return iterable
    return tqdm(iterable, desc=desc, dynamic_ncols=True, mininterval=1.0, **kw)


def lr_at(step: int, cfg: Config) -> float:
    """Linear warm-up over 5% of the steps, then cosine decay to 10%."""
    w = max(1, cfg.steps // 20)
    if step < w:
        return cfg.lr * (step + 1) / w
    t = (step - w) / max(1, cfg.steps - w)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))


@torch.no_grad()
def evaluate(model: GPT, data: torch.Tensor, cfg: Config, device) -> float:
    model.eval()
    n = cfg.eval_batches * cfg.batch_size  # fixed, evenly spaced windows: the same for every run
    starts = torch.linspace(0, data.numel() - cfg.seq_len - 2, n).long()
    losses = []
    for s in starts.split(cfg.batch_size):
        x, y = get_batch(data, s, cfg.seq_len, device)
        losses.append(F.cross_entropy(model(x).float().flatten(0, 1), y.flatten()).item())
    model.train()
    return sum(losses) / len(losses)


def train_step(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
               device: torch.device) -> tuple[float, float]:
    # one optimizer step (cross-entropy, grad-norm clip at 1.0), timed between device syncs:
    # (training loss, ms); shared with sp24.study so both train the same way
    _sync(device)
    t0 = time.perf_counter()
    loss = F.cross_entropy(model(x).float().flatten(0, 1), y.flatten())
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    _sync(device)
    return loss.item(), (time.perf_counter() - t0) * 1e3


def train(mode: str, cfg: Config, train_data, eval_data, device: torch.device, seed: int) -> dict:
    """One run. mode "dense": never sparse; "sparse": sp24.nn.set_sparse(model, True) at cfg.warmup."""
    torch.manual_seed(seed)
    # bf16 parameters rather than autocast: under autocast the FFN's input and weights would reach
    # the 2:4 kernels in different dtypes (sp24.sparse24_mm requires one dtype)
    model = GPT(cfg).to(device=device, dtype=getattr(torch, cfg.dtype))
    ffns = [b.ffn for b in model.blocks]
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=cfg.lr, betas=(0.9, 0.95))
    gen = torch.Generator().manual_seed(seed)  # same batches in both runs
    res = {"mode": mode, "train_loss": [], "eval_loss": [], "stats": [], "step_ms": [],
           "sparse_enabled_at_step": None}
    t_start = time.perf_counter()
    bar = _progress(range(cfg.steps), desc=f"{mode:>6}")
    for step in bar:
        if mode == "sparse" and step == cfg.warmup:
            n = set_sparse(model, True)
            if n != len(ffns):
                raise RuntimeError(f"sp24.demo: set_sparse switched {n} FFNs, expected {len(ffns)}")
            res["sparse_enabled_at_step"] = step
        track = step % cfg.stats_every == 0 or step == cfg.steps - 1
        for f in ffns:
            f.track_stats = track
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        starts = torch.randint(0, train_data.numel() - cfg.seq_len - 1, (cfg.batch_size,), generator=gen)
        x, y = get_batch(train_data, starts, cfg.seq_len, device)
        loss_v, ms = train_step(model, opt, x, y, device)
        if not math.isfinite(loss_v):
            raise RuntimeError(f"sp24.demo: {mode} run: the training loss is {loss_v} at step {step}")
        res["train_loss"].append([step, loss_v])
        sparse_now = bool(ffns[0].sparse)
        if track:  # stats steps pay for the statistics: keep them out of the timing
            res["stats"].append({"step": step, "sparse": sparse_now, "layers": [dict(f.last_stats) for f in ffns]})
        else:
            res["step_ms"].append([step, sparse_now, ms])
        if (step + 1) % cfg.eval_every == 0 or step == cfg.steps - 1:
            res["eval_loss"].append([step + 1, evaluate(model, eval_data, cfg, device)])
        if hasattr(bar, "set_postfix"):
            bar.set_postfix(loss=f"{loss_v:.3f}", sparse=sparse_now, refresh=False)
    for f in ffns:
        f.track_stats = False

    res["wall_s"] = time.perf_counter() - t_start
    res["final_eval_loss"] = res["eval_loss"][-1][1]
    res["sparse_flags"] = [bool(f.sparse) for f in ffns]
    res["n_params"] = sum(p.numel() for p in model.parameters())
    for key, want in (("ms_per_step_dense", False), ("ms_per_step_sparse", True)):
        times = [ms for _, sp, ms in res["step_ms"] if sp == want]
        res[key] = statistics.median(times) if times else None
    return res
