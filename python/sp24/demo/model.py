"""The demo's model: a small byte-level GPT (pre-norm, learned positions, causal SDPA attention) whose
MLPs are sp24.nn.ReLU2FFN (or, with n_experts > 0, a NemotronH-style MoE layer: routed
sp24.nn.ReLU2Experts plus a shared ReLU2FFN expert), and its run configurations."""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from ..nn import ReLU2Experts, ReLU2FFN


@dataclasses.dataclass(frozen=True)
class Config:
    n_layer: int
    n_head: int
    d_model: int
    d_hidden: int
    seq_len: int
    batch_size: int
    steps: int
    warmup: int          # dense steps before 2:4 is switched on in the sparse run
    lr: float
    eval_every: int
    eval_batches: int
    stats_every: int
    dtype: str           # parameter (and compute) dtype: "float32" or "bfloat16"
    n_experts: int = 0   # > 0: each MLP is an MoE layer (MoE) of n_experts routed experts ...
    top_k: int = 2       # ... of which each token takes top_k ...
    d_expert: int = 0    # ... of width d_expert, beside a shared expert of width d_hidden


CONFIGS = {
    "micro": Config(n_layer=2, n_head=2, d_model=32, d_hidden=128, seq_len=32, batch_size=8, steps=30,
                    warmup=15, lr=3e-3, eval_every=10, eval_batches=2, stats_every=5, dtype="float32"),
    "cpu": Config(n_layer=3, n_head=4, d_model=128, d_hidden=512, seq_len=128, batch_size=8, steps=400,
                  warmup=200, lr=2e-3, eval_every=50, eval_batches=8, stats_every=20, dtype="float32"),
    # 25.6M params; 16 x 256 = 4096 tokens per step, 3000 steps = 12.3M tokens (~1.8 epochs of the corpus)
    "gpu": Config(n_layer=8, n_head=8, d_model=512, d_hidden=2048, seq_len=256, batch_size=16, steps=3000,
                  warmup=1000, lr=1e-3, eval_every=250, eval_batches=16, stats_every=100, dtype="bfloat16"),
}


class MoE(nn.Module):
    """NemotronH-style MoE layer: sigmoid router scores, top-k experts chosen on score + a balancing
    bias (auxiliary-loss-free balancing: in training each forward moves the bias of an over-loaded
    expert down and of an under-loaded one up by BALANCE_RATE), the chosen scores normalised to sum
    1 as routing weights, routed sp24.nn.ReLU2Experts plus a shared sp24.nn.ReLU2FFN expert."""

    BALANCE_RATE = 1e-3

    def __init__(self, cfg: Config):
        super().__init__()
        self.top_k = cfg.top_k
        self.router = nn.Linear(cfg.d_model, cfg.n_experts, bias=False)
        self.register_buffer("balance_bias", torch.zeros(cfg.n_experts))
        self.experts = ReLU2Experts(cfg.n_experts, cfg.d_model, cfg.d_expert)
        self.shared = ReLU2FFN(cfg.d_model, cfg.d_hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.reshape(-1, x.shape[-1])
        scores = torch.sigmoid(self.router(h).float())
        idx = (scores + self.balance_bias).topk(self.top_k, dim=-1).indices
        w = scores.gather(1, idx)
        w = w / w.sum(-1, keepdim=True)
        if self.training:
            with torch.no_grad():
                load = torch.bincount(idx.reshape(-1), minlength=scores.shape[1]).float()
                self.balance_bias += self.BALANCE_RATE * torch.sign(load.mean() - load)
        return self.experts(h, idx, w).view_as(x) + self.shared(x)


class Block(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        self.n_head = cfg.n_head
        self.ln1, self.ln2 = nn.LayerNorm(cfg.d_model), nn.LayerNorm(cfg.d_model)
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=False)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.ffn = MoE(cfg) if cfg.n_experts else ReLU2FFN(cfg.d_model, cfg.d_hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(B, T, 3, self.n_head, C // self.n_head).transpose(1, 3).unbind(2)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(y.transpose(1, 2).reshape(B, T, C))
        return x + self.ffn(self.ln2(x))


class GPT(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        self.tok = nn.Embedding(256, cfg.d_model)
        self.pos = nn.Embedding(cfg.seq_len, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.d_model)
        self.head = nn.Linear(cfg.d_model, 256, bias=False)
        for m in (self.tok, self.pos):
            nn.init.normal_(m.weight, std=0.02)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.tok(idx) + self.pos(torch.arange(idx.shape[1], device=idx.device))
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))
