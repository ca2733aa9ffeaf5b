"""The main job: train a small byte-level GPT with Squared-ReLU FFNs (sp24.nn.ReLU2FFN) twice from the
same seed, dense and "dense warm-up, then 2:4 in forward and backward", and compare them.

    python -m sp24.demo                      # default CPU config, about a minute on 2 idle cores
    python -m sp24.demo --config gpu         # >= 20M params, 3000 steps, bf16 on CUDA
    python -m sp24.demo --config micro --out /tmp/x   # seconds (tests)
    python -m sp24.demo --out bench/results/demo_cpu  # on purpose: rewrite the committed results

Corpus: the Python standard library's own source files, read as bytes (vocabulary 256). They are on
every machine that runs this demo, so nothing is downloaded at run time; they are real text written
by people (code, comments, docstrings), large enough (7.8 MB in CPython 3.11: 6.9 MB train, 0.9 MB
eval) for models of a few million parameters, and a byte-level model needs no tokenizer. The file list is fixed and sorted:
every top-level `*.py` of `sysconfig.get_paths()["stdlib"]` plus the pure-Python packages in
STDLIB_PACKAGES (test folders skipped; codec tables in `encodings/` are left out, they are tables,
not prose or code). A file is held out for eval iff crc32(relative path) % 10 == 0: the split is a
function of the file name alone, so it is the same on every machine and a file that a newer Python
adds or removes does not move any other file across the split. The exact corpus depends on the
Python version, so the JSON records the version, the file counts and a sha256 of the bytes.

Outputs in --out (default out/demo_<config>, relative to the current folder; git ignores out/, so
running the demo never changes a committed file): summary.json (plain JSON: versions, device, commit, config, corpus, per-run eval
loss, train loss, per-layer activation sparsity and 2:4 drop fractions over steps, time per step)
and curves.png (loss of both runs and their difference; per-layer sparsity and the fraction of
non-zeros 2:4 drops row-wise and token-wise, for both runs; see `plot`).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import sysconfig
import time
import zlib
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

# ----------------------------------------------------------------------------------------- corpus

STDLIB_PACKAGES = (  # pure-Python packages present in CPython 3.10-3.13; a missing one is skipped
    "asyncio", "collections", "concurrent", "ctypes", "curses", "dbm", "email", "html", "http",
    "importlib", "json", "logging", "multiprocessing", "re", "sqlite3", "tomllib", "unittest",
    "urllib", "wsgiref", "xml", "xmlrpc", "zoneinfo",
)
SKIP_DIRS = {"test", "tests", "__pycache__"}
EVAL_MOD = 10  # 1 file in ~10 is held out
DOC_SEP = b"\x00"  # never occurs in source text: marks file boundaries in the byte stream


def corpus_files(root: Path) -> list[str]:
    """The fixed, sorted list of corpus files (paths relative to the stdlib root, '/'-separated)."""
    files = [p.name for p in root.glob("*.py")]
    for pkg in STDLIB_PACKAGES:
        for dirpath, dirnames, filenames in os.walk(root / pkg):
            dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS)
            rel = Path(dirpath).relative_to(root).as_posix()
            files += [f"{rel}/{f}" for f in filenames if f.endswith(".py")]
    return sorted(files)


def is_eval_file(rel: str) -> bool:
    return zlib.crc32(rel.encode()) % EVAL_MOD == 0


def load_corpus(root: str | None = None) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """(train bytes, eval bytes, info): two uint8 streams of disjoint sets of files."""
    root_p = Path(root or sysconfig.get_paths()["stdlib"])
    files = corpus_files(root_p)
    if not files:
        raise RuntimeError(f"sp24.demo: no *.py files found under the stdlib folder {root_p}")
    parts: dict[bool, list[bytes]] = {False: [], True: []}
    digest = hashlib.sha256()
    for rel in files:
        data = (root_p / rel).read_bytes().replace(DOC_SEP, b"") + DOC_SEP
        parts[is_eval_file(rel)].append(data)
        digest.update(rel.encode() + DOC_SEP + data)
    for held, what in ((False, "training"), (True, "held-out eval")):
        if not parts[held]:
            raise RuntimeError(f"sp24.demo: the {what} split of the corpus under {root_p} is empty "
                               f"({len(files)} files in all); the demo needs the full standard library sources")
    train, evl = (torch.frombuffer(bytearray(b"".join(parts[k])), dtype=torch.uint8) for k in (False, True))
    info = {
        "source": "CPython standard library *.py files (bytes)", "stdlib_root": ("sysconfig.get_paths()['stdlib']" if root is None else root_p.name),  # no machine paths
        "python_version": platform.python_version(), "files_train": len(parts[False]),
        "files_eval": len(parts[True]), "bytes_train": train.numel(), "bytes_eval": evl.numel(),
        "sha256": digest.hexdigest(), "eval_rule": f"crc32(relative path) % {EVAL_MOD} == 0",
    }
    return train, evl, info


def get_batch(data: torch.Tensor, starts: torch.Tensor, seq_len: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    idx = starts[:, None] + torch.arange(seq_len + 1)
    chunk = data[idx].long()
    return chunk[:, :-1].to(device, non_blocking=True), chunk[:, 1:].to(device, non_blocking=True)


# ------------------------------------------------------------------------------------------ model

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


CONFIGS = {
    "micro": Config(n_layer=2, n_head=2, d_model=32, d_hidden=128, seq_len=32, batch_size=8, steps=30,
                    warmup=15, lr=3e-3, eval_every=10, eval_batches=2, stats_every=5, dtype="float32"),
    "cpu": Config(n_layer=3, n_head=4, d_model=128, d_hidden=512, seq_len=128, batch_size=8, steps=400,
                  warmup=200, lr=2e-3, eval_every=50, eval_batches=8, stats_every=20, dtype="float32"),
    # 25.6M params; 16 x 256 = 4096 tokens per step, 3000 steps = 12.3M tokens (~1.8 epochs of the corpus)
    "gpu": Config(n_layer=8, n_head=8, d_model=512, d_hidden=2048, seq_len=256, batch_size=16, steps=3000,
                  warmup=1000, lr=1e-3, eval_every=250, eval_batches=16, stats_every=100, dtype="bfloat16"),
}


class Block(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        from sp24.nn import ReLU2FFN  # lazy: only the model needs it
        self.n_head = cfg.n_head
        self.ln1, self.ln2 = nn.LayerNorm(cfg.d_model), nn.LayerNorm(cfg.d_model)
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=False)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.ffn = ReLU2FFN(cfg.d_model, cfg.d_hidden)

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


# --------------------------------------------------------------------------------------- training

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
    import sp24.nn as spnn

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
            n = spnn.set_sparse(model, True)
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


# ------------------------------------------------------------------------------------ reporting

def _commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=10)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def _smooth(values: list, k: int) -> list:
    """Trailing running mean over k points."""
    return [sum(values[max(0, i - k + 1):i + 1]) / len(values[max(0, i - k + 1):i + 1]) for i in range(len(values))]


RUN_LABELS = {"dense": "dense run", "sparse": "2:4 run"}


def _pyplot(prog: str):
    # matplotlib.pyplot on the file-only Agg backend, or None (said on stderr) without matplotlib
    try:
        import matplotlib
    except ImportError:
        print(f"{prog}: matplotlib is not installed (pip install matplotlib): no plot written", file=sys.stderr)
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot(summary: dict, path: Path) -> bool:
    """Draw the demo's figure (curves.png) from a summary.

    Panels: (a) loss of both runs; (b) the effect the demo exists for, the 2:4 run minus the dense
    run (held-out eval loss and smoothed train loss), which is exactly 0 during the shared dense
    warm-up; (c) activation sparsity per layer; (d, e) the fraction of non-zeros a 2:4 pass drops
    row-wise (the forward's pattern) and token-wise (the weight gradients'), for both runs (the
    dense run: what 2:4 would drop); (f) one legend for the layer colours and run line styles.

    Args:
        summary (dict): what :func:`main` returns (the content of summary.json).
        path (Path): the PNG to write.

    Returns:
        bool: False (and a note on stderr) when matplotlib is not installed, else True.

    Example::

        >>> s = main(["--config", "micro", "--out", "/tmp/sp24_demo", "--device", "cpu"])  # doctest: +SKIP
        >>> plot(s, Path("/tmp/sp24_demo/again.png"))  # doctest: +SKIP
        True
    """
    plt = _pyplot("sp24.demo")
    if plt is None:
        return False
    from matplotlib.lines import Line2D

    runs, warmup = summary["runs"], summary["config"]["warmup"]
    n_layer = summary["config"]["n_layer"]
    run_style = {"dense": dict(ls=":", lw=1.6), "sparse": dict(ls="-", lw=1.4)}
    run_color = {"dense": "tab:blue", "sparse": "tab:red"}
    fig, axes = plt.subplots(2, 3, figsize=(17, 8.6))
    (ax_loss, ax_diff, ax_zero), (ax_row, ax_tok, ax_leg) = axes

    def switch_line(ax, label=False):
        ax.axvline(warmup, color="gray", ls="--", lw=1, label=f"2:4 switched on (step {warmup})" if label else None)

    # (a) loss of both runs
    top = 0.0
    k = max(1, len(runs["dense"]["train_loss"]) // 40)  # running mean over ~2.5% of the run
    for name in ("sparse", "dense"):  # the dense run drawn last, dotted: the two nearly coincide
        steps, losses = zip(*runs[name]["train_loss"])
        smooth = _smooth(list(losses), k)
        ax_loss.plot(steps, smooth, color=run_color[name], alpha=0.6, lw=1, ls=run_style[name]["ls"],
                     label=f"{RUN_LABELS[name]}: train (running mean)")
        es, el = zip(*runs[name]["eval_loss"])
        ax_loss.plot(es, el, marker="o" if name == "sparse" else "s", ms=4 if name == "sparse" else 6,
                     mfc=run_color[name] if name == "sparse" else "none", color=run_color[name], ls=run_style[name]["ls"],
                     label=f"{RUN_LABELS[name]}: held-out eval, final {el[-1]:.4f}")
        top = max(top, max(smooth[len(smooth) // 20:]), max(el))  # skip the first 5%: the initial ~5.5
    switch_line(ax_loss, label=True)
    ax_loss.set(title="(a) loss, both runs (they overlap: see (b))", xlabel="step", ylabel="cross-entropy (nats/byte)")
    ax_loss.set_ylim(top=top + 0.05 * (top - ax_loss.get_ylim()[0]))
    ax_loss.legend(fontsize=8)

    # (b) 2:4 run minus dense run
    es, el_s = zip(*runs["sparse"]["eval_loss"])
    el_d = dict(runs["dense"]["eval_loss"])
    diff_eval = [(s, v - el_d[s]) for s, v in zip(es, el_s) if s in el_d]
    td = dict(runs["dense"]["train_loss"])
    ts = [(s, v - td[s]) for s, v in runs["sparse"]["train_loss"] if s in td]
    ax_diff.axhline(0.0, color="k", lw=0.8)
    ax_diff.plot([s for s, _ in ts], _smooth([v for _, v in ts], k), color="tab:purple", lw=1, alpha=0.7,
                 label="train loss difference (running mean)")
    ax_diff.plot([s for s, _ in diff_eval], [v for _, v in diff_eval], "o-", color="tab:red", ms=4,
                 label=f"held-out eval loss difference, final {diff_eval[-1][1]:+.4f}")
    switch_line(ax_diff, label=True)
    ax_diff.set(title="(b) 2:4 run minus dense run (same seed, same batches)", xlabel="step",
                ylabel="loss difference (nats/byte)")
    final_dense = runs["dense"]["final_eval_loss"]
    ax_diff.text(0.01, 0.02, f"for scale: 1% of the dense run's final eval loss is {0.01 * final_dense:.4f}\n"
                 "one seed per run: the seed-to-seed noise is not measured here",
                 transform=ax_diff.transAxes, fontsize=8, color="dimgray")
    ax_diff.legend(fontsize=8, loc="upper left")

    # (c)-(e) per-layer statistics of relu(Y1)^2, both runs
    colors = plt.get_cmap("viridis")
    layer_color = [colors(li / max(1, n_layer - 1) * 0.85) for li in range(n_layer)]
    panels = ((ax_zero, "zero_fraction", "(c) activation sparsity: zero fraction of relu(Y1)^2", "zero fraction"),
              (ax_row, "drop_rowwise", "(d) non-zeros 2:4 drops row-wise (forward pattern)", "dropped / non-zeros"),
              (ax_tok, "drop_tokenwise", "(e) non-zeros 2:4 drops token-wise (weight gradients)",
               "dropped / non-zeros"))
    for ax, key, title, ylabel in panels:
        for name in ("dense", "sparse"):
            stats = runs[name]["stats"]
            s = [e["step"] for e in stats]
            for li in range(n_layer):
                ax.plot(s, [e["layers"][li][key] for e in stats], color=layer_color[li], **run_style[name])
        switch_line(ax)
        ax.set(title=title, xlabel="step", ylabel=ylabel)

    # (f) one legend: colour = layer, line style = run
    ax_leg.axis("off")
    handles = [Line2D([], [], color=layer_color[li], lw=2.5, label=f"layer {li}") for li in range(n_layer)]
    handles += [Line2D([], [], color="k", **run_style["dense"],
                       label="dense run (never sparse; (d), (e): what 2:4 would drop)"),
                Line2D([], [], color="k", **run_style["sparse"],
                       label=f"2:4 run (dense until step {warmup}, then 2:4 forward + backward)"),
                Line2D([], [], color="gray", ls="--", lw=1, label=f"2:4 switched on (step {warmup})")]
    ax_leg.legend(handles=handles, loc="center", fontsize=10, title="panels (c), (d), (e)", title_fontsize=10,
                  frameon=False)

    fig.suptitle(f"sp24 demo: byte-level GPT ({summary['n_params'] / 1e6:.2f}M params) on Python stdlib source, "
                 f"dense run vs 2:4 run, seed {summary['seed']} ({summary['device']}, {summary['config_name']} config)",
                 fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def _clean(o):  # plain JSON: no NaN/Inf
    if isinstance(o, float):
        return o if math.isfinite(o) else None
    if isinstance(o, dict):
        return {k: _clean(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_clean(v) for v in o]
    return o


# -------------------------------------------------------------------------------------------- CLI

def _positive(name: str):
    def conv(s: str) -> int:
        try:
            v = int(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be an integer, got {s!r}") from None
        if v <= 0:
            raise argparse.ArgumentTypeError(f"{name} must be positive, got {v}")
        return v
    return conv


def _non_negative(name: str):
    def conv(s: str) -> int:
        try:
            v = int(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be an integer, got {s!r}") from None
        if v < 0:
            raise argparse.ArgumentTypeError(f"{name} must be >= 0, got {v}")
        return v
    return conv


def parse_args(argv=None) -> tuple[argparse.Namespace, Config, torch.device]:
    p = argparse.ArgumentParser(prog="python -m sp24.demo", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", choices=sorted(CONFIGS), default="cpu",
                   help="model/run size: micro (seconds, tests), cpu (default, minutes on 2 cores), "
                        "gpu (>= 20M params, bf16 parameters, for CUDA)")
    p.add_argument("--steps", type=_positive("--steps"), help="training steps per run (overrides the config)")
    p.add_argument("--warmup", type=_non_negative("--warmup"),
                   help="dense steps before 2:4 is switched on in the sparse run; must be < --steps")
    p.add_argument("--out", default=None,
                   help="output folder (default: out/demo_<config> in the current folder, which git ignores; "
                        "the committed results in bench/results/ are only rewritten when named here on purpose)")
    p.add_argument("--device", default=None, help="torch device, e.g. cpu, cuda, cuda:1 "
                   "(default: cuda if available, else cpu)")
    p.add_argument("--seed", type=_non_negative("--seed"), default=0, help="seed of both runs (default 0)")
    p.add_argument("--threads", type=_positive("--threads"), default=None,
                   help="CPU threads for torch (default: torch's choice; 1 is faster on a busy machine)")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default=None,
                   help="parameter/compute dtype (default: the config's: bfloat16 for gpu, else float32)")
    args = p.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)

    cfg = CONFIGS[args.config]
    steps = args.steps if args.steps is not None else cfg.steps
    if args.warmup is not None:
        warmup = args.warmup
    elif args.steps is not None:  # keep the config's warm-up share
        warmup = steps * cfg.warmup // cfg.steps
    else:
        warmup = cfg.warmup
    if warmup >= steps:
        p.error(f"--warmup must be smaller than --steps so that the sparse run has 2:4 steps, "
                f"got --warmup {warmup} with --steps {steps}")
    cfg = dataclasses.replace(cfg, steps=steps, warmup=warmup, dtype=args.dtype or cfg.dtype, eval_every=min(cfg.eval_every, steps),
                              stats_every=min(cfg.stats_every, max(1, steps // 4)))

    dev_s = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.config == "gpu" and args.device is None and dev_s == "cpu":
        p.error("--config gpu is sized for a CUDA GPU and none is available here; use --config cpu, or pass "
                "--device cpu to run it on the CPU anyway (hours)")
    try:
        device = torch.device(dev_s)
    except RuntimeError as e:
        p.error(f"--device: {dev_s!r} is not a torch device ({e}); use e.g. cpu or cuda")
    if device.type not in ("cpu", "cuda"):
        p.error(f"--device must be a cpu or cuda device, got {dev_s!r}")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            p.error(f"--device {dev_s}: CUDA is not available on this machine (torch {torch.__version__}); "
                    "use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            p.error(f"--device {dev_s}: only {torch.cuda.device_count()} CUDA device(s) present")
        from sp24 import _ops
        if not _ops.has_kernel("sparsify24", "CUDA"):
            p.error(f"--device {dev_s}: sp24 was built without CUDA kernels; rebuild with SP24_CUDA=ON "
                    "or use --device cpu")
    args.out = Path(args.out or Path("out") / f"demo_{args.config}")
    return args, cfg, device


def main(argv=None) -> dict:
    """Run the demo: train the dense and the 2:4 run, print the comparison, write summary.json and curves.png.

    Args:
        argv (list[str], optional): the command-line flags (default: ``sys.argv[1:]``), e.g.
            ``["--config", "micro", "--out", "/tmp/x"]``; see ``python -m sp24.demo --help``.

    Returns:
        dict: the summary that summary.json holds (versions, device, config, corpus, both runs'
        curves, final eval losses and their relative gap).

    Raises:
        SystemExit: a bad flag (code 2, with a message naming the flag, the value and the remedy).
        RuntimeError: the corpus is missing or a run's loss stops being finite.

    Example::

        >>> s = main(["--config", "micro", "--out", "/tmp/sp24_demo", "--device", "cpu"])  # doctest: +SKIP
        >>> s["final_eval_loss_sparse"] < 5.5  # doctest: +SKIP
        True
    """
    args, cfg, device = parse_args(argv)
    threads = torch.get_num_threads()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    try:
        return _run(args, cfg, device)
    finally:  # main() may run in-process (tests): leave the thread count as it was
        torch.set_num_threads(threads)


def _run(args: argparse.Namespace, cfg: Config, device: torch.device) -> dict:
    args.out.mkdir(parents=True, exist_ok=True)
    train_data, eval_data, corpus = load_corpus()
    print(f"sp24.demo: {args.config} config on {device}: {corpus['files_train']} train files "
          f"({corpus['bytes_train'] / 1e6:.1f} MB), {corpus['files_eval']} eval files "
          f"({corpus['bytes_eval'] / 1e6:.2f} MB); {cfg.steps} steps, 2:4 from step {cfg.warmup}", file=sys.stderr)
    from sp24.ffn import fallback
    with fallback(False):  # the point is the 2:4 path itself: no automatic dense fallback on CUDA
        runs = {mode: train(mode, cfg, train_data, eval_data, device, args.seed) for mode in ("dense", "sparse")}

    d, s = runs["dense"]["final_eval_loss"], runs["sparse"]["final_eval_loss"]
    summary = {
        "torch_version": torch.__version__, "python_version": platform.python_version(),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({os.cpu_count()} cores, "
                  f"{torch.get_num_threads()} torch threads)",
        "commit": _commit(), "command": " ".join(["python -m sp24.demo", *args.argv]), "config_name": args.config, "seed": args.seed, "config": dataclasses.asdict(cfg),
        "n_params": runs["dense"]["n_params"], "corpus": corpus,
        "final_eval_loss_dense": d, "final_eval_loss_sparse": s, "eval_loss_rel_gap": (s - d) / d,
        "runs": runs,
    }
    summary = _clean(summary)
    summary["plot"] = "curves.png" if plot(summary, args.out / "curves.png") else None
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1, allow_nan=False))

    last = runs["sparse"]["stats"][-1]["layers"]
    print(f"\nheld-out eval loss (nats/byte): dense {d:.4f}  sparse {s:.4f}  (rel. gap {(s - d) / d:+.2%})")
    for li, st in enumerate(last):
        print(f"  layer {li}: zero fraction {st['zero_fraction']:.3f}, 2:4 drops {st['drop_rowwise']:.4f} "
              f"(row-wise) / {st['drop_tokenwise']:.4f} (token-wise) of the non-zeros")
    rd, rs = runs["dense"], runs["sparse"]
    ms = lambda v: "n/a" if v is None else f"{v:.1f}"  # noqa: E731 (None: every step was a stats step)
    print(f"  ms/step (median, stats steps excluded): dense run {ms(rd['ms_per_step_dense'])}; sparse run "
          f"{ms(rs['ms_per_step_dense'])} (warm-up) / {ms(rs['ms_per_step_sparse'])} (2:4)")
    print(f"  wrote {args.out / 'summary.json'}" + (f" and {args.out / 'curves.png'}" if summary["plot"] else ""))
    return summary


if __name__ == "__main__":
    main()
