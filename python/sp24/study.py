"""The study: does 2:4 activation sparsity cost accuracy, and what does each of the paper's tricks buy?

    python -m sp24.study                          # the CPU study (sized for <= 90 min on 2 idle cores)
    python -m sp24.study --config micro --out /tmp/s   # seconds (CI)
    python -m sp24.study --runs dense_s0,default_s0    # a subset of the runs
    python -m sp24.study --no-fork                # every run from step 0 (see "Shared dense prefix" below)
    python -m sp24.study --table out/study_cpu/study.json   # print the markdown table of a finished study
    python -m sp24.study --out bench/results/study_cpu      # on purpose: rewrite the committed results

The same byte-level GPT, corpus, learning-rate schedule and evaluation as `python -m sp24.demo`
(sp24.demo), trained once per run; a run's seed fixes both the initial weights and the batches, so
runs with the same seed see the same data in the same order. The runs (RUNS):

| run | FFN in training | what it tests |
|---|---|---|
| dense_s0, dense_s1 | dense throughout | the baseline and its seed noise |
| default_s0, default_s1 | dense warm-up, then 2:4 forward + backward (sp24's defaults) | the claim |
| no_warmup | 2:4 from step 0 | why the warm-up |
| no_split | as default, `dense_fraction=0` | the 95/5 feature split of the weight gradients |
| no_permutation | as default, `permute_tokens=False` | the token permutation |
| ste | as default, `gradient="ste"` (dY1 not masked by the forward pattern) | the forward mask in the backward |
| fwd_only | as default, `sparse_backward=False` (2:4 forward, exact dense backward) | the backward's approximations |
| fp8_dense | dense throughout, forward GEMMs in FP8 (`fp8=True`, bf16 inside the FFN) | the FP8 baseline |
| fp8 | FP8 dense warm-up, then 2:4 with the forward GEMMs in FP8 | FP8 2:4 against FP8 dense |

The FP8 runs compute FP8 numerics exactly on the CPU (sp24.reference_fp8's arithmetic, what a GPU
computes up to its fp32 accumulation order).

Per run the study records the held-out eval loss over training, the per-layer zero fraction of
relu(Y1)^2 and the fractions of its non-zeros that a 2:4 pass drops row-wise (the forward's pattern)
and token-wise (the weight gradients'), on a schedule of stats steps (`ReLU2FFN.track_stats`, kept
out of the timing), ms per step (median, per phase), and the first stats step at which every layer's
zero fraction reaches PAPER_SPARSITY. It writes study.json (plain JSON), study.png (loss curves; the
difference to the dense mean with the dense seeds' band; sparsity; final losses) and study.md (the
table for the README) to --out (default out/study_<config>, which git ignores); study.json is also
written after every finished run, marked "partial", so a stopped study keeps what it finished.

Shared dense prefix: a run that switches 2:4 on at the warm-up step trains its first `warmup` steps
exactly as the dense run of its seed (a dense FFN ignores the 2:4 options; same weights, same
batches). By default the study keeps the dense run's full state at that step (model, optimizer,
batch generator, records) and continues those runs from it: the same bits as training them from
step 0 (tests/test_study.py compares both), in less time. Their wall_s counts the shared prefix.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from . import demo
from .demo import Config
from .study_report import PAPER_LOSSES, PAPER_SPARSITY, plot, table  # noqa: F401  (public: sp24.study.table)

# What a run records over training (copied into a run forked from a shared dense prefix).
RECORDS = ("train_loss", "eval_loss", "stats", "step_ms")


@dataclasses.dataclass(frozen=True)
class Run:
    name: str
    seed: int
    sparse_from: int | None     # step at which 2:4 is switched on (None: never); "warmup" resolved per config
    dense_fraction: float = 0.05
    permute_tokens: bool = True
    gradient: str = "24sparse"
    sparse_backward: bool = True
    fp8: bool = False
    tests: str = ""


def runs_for(cfg: Config) -> list[Run]:
    """The study's runs for a config (sparse runs switch 2:4 on at cfg.warmup unless stated); an MoE
    config (n_experts > 0) has the dense and default runs of both seeds."""
    w = cfg.warmup
    if cfg.n_experts:
        return [r for r in runs_for(dataclasses.replace(cfg, n_experts=0)) if r.name[:-1] in ("dense_s", "default_s")]
    return [
        Run("dense_s0", 0, None, tests="baseline"),
        Run("dense_s1", 1, None, tests="baseline, second seed (seed noise)"),
        Run("default_s0", 0, w, tests="the claim: dense warm-up, then 2:4 forward + backward"),
        Run("default_s1", 1, w, tests="the claim, second seed"),
        Run("no_warmup", 0, 0, tests="2:4 from step 0: why the warm-up"),
        Run("no_split", 0, w, dense_fraction=0.0, tests="dense_fraction=0: the 95/5 feature split"),
        Run("no_permutation", 0, w, permute_tokens=False, tests="permute_tokens=False: the token permutation"),
        Run("ste", 0, w, gradient="ste", tests='gradient="ste": dY1 not masked by the forward pattern'),
        Run("fwd_only", 0, w, sparse_backward=False, tests="sparse_backward=False: 2:4 forward only, dense backward"),
        Run("fp8_dense", 0, None, fp8=True, tests="fp8=True, dense: FP8 forward GEMMs (the FP8 baseline)"),
        Run("fp8", 0, w, fp8=True, tests="fp8=True: FP8 dense warm-up, then 2:4 with FP8 forward GEMMs"),
    ]


# Sizing, so that the study runs on a CPU: >= 2M parameters and >= 5M training tokens per run, the 9 runs in <= 90 min on 2
# idle cores. "cpu": 2.5M parameters (3 layers, d=256, F=1024; 2.4M outside the embeddings), 32 x 128
# = 4096 tokens a step (sequences of 128: attention costs half what 256 would), 1221 steps = 5.0M
# tokens (0.73 epochs of the 6.9 MB training split), 2:4 from step 500 in the default runs. The
# estimate behind it (measured ms/step) is in the README.
CONFIGS = {
    "micro": Config(n_layer=2, n_head=2, d_model=32, d_hidden=128, seq_len=32, batch_size=4, steps=12,
                    warmup=6, lr=3e-3, eval_every=6, eval_batches=1, stats_every=3, dtype="float32"),
    "cpu": Config(n_layer=3, n_head=4, d_model=256, d_hidden=1024, seq_len=128, batch_size=32, steps=1221,
                  warmup=500, lr=1.5e-3, eval_every=111, eval_batches=8, stats_every=37, dtype="float32"),
    # MoE: the "cpu" config with each MLP a NemotronH-style MoE layer (demo.MoE): 8 routed experts of
    # width 256, top-2, and a shared expert of width 256 (per token 768 active FFN features, the
    # dense model's 1024 less a quarter)
    "moe_micro": Config(n_layer=2, n_head=2, d_model=32, d_hidden=32, seq_len=32, batch_size=4, steps=12,
                        warmup=6, lr=3e-3, eval_every=6, eval_batches=1, stats_every=3, dtype="float32",
                        n_experts=4, top_k=2, d_expert=32),
    "moe": Config(n_layer=3, n_head=4, d_model=256, d_hidden=256, seq_len=128, batch_size=32, steps=1221,
                  warmup=500, lr=1.5e-3, eval_every=111, eval_batches=8, stats_every=37, dtype="float32",
                  n_experts=8, top_k=2, d_expert=256),
}


def sp24_modules(model: torch.nn.Module) -> list:
    """The model's sp24 modules (ReLU2FFN, ReLU2Experts), in module order: per block the FFN, or
    the MoE layer's routed experts then its shared expert."""
    from sp24.nn._mode import SparseMode

    return [m for m in model.modules() if isinstance(m, SparseMode)]


def configure(model: torch.nn.Module, run: Run, sparse: bool) -> None:
    """Set the FFN options of a run on every sp24 module (ReLU2FFN, ReLU2Experts) of the model."""
    for m in sp24_modules(model):
        m.sparse = sparse
        m.dense_fraction = run.dense_fraction
        m.permute_tokens = run.permute_tokens
        m.gradient = run.gradient
        m.sparse_backward = run.sparse_backward
        m.fp8 = run.fp8


def prefix_key(run: Run) -> tuple:
    """The dense run whose prefix a run shares: the one of its seed with the same fp8 setting."""
    return run.seed, run.fp8


def shares_prefix(run: Run, cfg: Config) -> bool:
    """Whether `run` trains its first cfg.warmup steps exactly as the dense run of its seed and fp8
    setting (prefix_key): a run that switches 2:4 on at the warm-up step is dense until then, and a
    dense FFN ignores the 2:4 options, with the same seed (initial weights, batches). The study then forks it from that dense run's state
    at the warm-up step instead of recomputing the prefix (bit for bit the same; tested)."""
    return run.sparse_from is not None and run.sparse_from == cfg.warmup and cfg.warmup > 0


def train_run(run: Run, cfg: Config, train_data, eval_data, device: torch.device, *,
              snapshot_at: int | None = None, fork: dict | None = None) -> dict:
    """One run of the study (sp24.demo's training loop with the run's FFN options).

    snapshot_at: also return, as res["_snapshot"], the full training state before step snapshot_at
    (model, optimizer, batch generator, the records so far). fork: such a snapshot of a run with the
    same seed and the same steps before it: the run continues from it instead of recomputing them."""
    torch.manual_seed(run.seed)
    model = demo.GPT(cfg).to(device=device, dtype=getattr(torch, cfg.dtype))
    ffns = sp24_modules(model)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=cfg.lr, betas=(0.9, 0.95))
    gen = torch.Generator().manual_seed(run.seed)
    res = {"name": run.name, "run": dataclasses.asdict(run), **{k: [] for k in RECORDS}}
    first, wall_before = 0, 0.0
    if fork is not None:
        model.load_state_dict(fork["model"])
        opt.load_state_dict(copy.deepcopy(fork["opt"]))
        gen.set_state(fork["gen"])
        torch.set_rng_state(fork["rng"])
        res.update(copy.deepcopy(fork["records"]))
        first, wall_before = fork["step"], fork["wall_s"]
        res["forked_from"] = {"run": fork["run"], "step": first, "wall_s": wall_before}
    configure(model, run, sparse=run.sparse_from is not None and first >= run.sparse_from)
    t_start = time.perf_counter()
    for step in demo._progress(range(first, cfg.steps), desc=f"{run.name:>15}", initial=first, total=cfg.steps):
        if step == snapshot_at:
            res["_snapshot"] = {
                "run": run.name, "step": step, "wall_s": time.perf_counter() - t_start,
                "model": copy.deepcopy(model.state_dict()), "opt": copy.deepcopy(opt.state_dict()),
                "gen": gen.get_state(), "rng": torch.get_rng_state(),
                "records": copy.deepcopy({k: res[k] for k in RECORDS})}
        if run.sparse_from is not None and step == run.sparse_from:
            configure(model, run, sparse=True)
        track = step % cfg.stats_every == 0 or step == cfg.steps - 1
        for f in ffns:
            f.track_stats = track
        for group in opt.param_groups:
            group["lr"] = demo.lr_at(step, cfg)
        starts = torch.randint(0, train_data.numel() - cfg.seq_len - 1, (cfg.batch_size,), generator=gen)
        x, y = demo.get_batch(train_data, starts, cfg.seq_len, device)
        loss_v, ms = demo.train_step(model, opt, x, y, device)
        sparse_now = bool(ffns[0].sparse)
        res["train_loss"].append([step, loss_v if math.isfinite(loss_v) else None])
        if track:  # stats steps pay for the statistics: keep them out of the timing
            res["stats"].append({"step": step, "sparse": sparse_now, "layers": [dict(f.last_stats) for f in ffns]})
        else:
            res["step_ms"].append([step, sparse_now, ms])
        if not math.isfinite(loss_v):  # a diverging ablation is a result, not a crash
            res["diverged_at_step"] = step
            break
        if (step + 1) % cfg.eval_every == 0 or step == cfg.steps - 1:
            res["eval_loss"].append([step + 1, demo.evaluate(model, eval_data, cfg, device)])
    for f in ffns:
        f.track_stats = False
    res["wall_s"] = time.perf_counter() - t_start + wall_before  # a forked run counts its prefix's time
    res["n_params"] = sum(p.numel() for p in model.parameters())
    res["tokens"] = len(res["train_loss"]) * cfg.batch_size * cfg.seq_len
    res["final_eval_loss"] = res["eval_loss"][-1][1] if res["eval_loss"] and "diverged_at_step" not in res else None
    for key, want in (("ms_per_step_dense", False), ("ms_per_step_sparse", True)):
        times = [ms for _, sp, ms in res["step_ms"] if sp == want]
        res[key] = statistics.median(times) if times else None
    res["paper_sparsity_at_step"] = next(
        (e["step"] for e in res["stats"] if all(la["zero_fraction"] >= PAPER_SPARSITY for la in e["layers"])), None)
    last = res["stats"][-1]["layers"] if res["stats"] else []
    res["final_layers"] = last
    return res


def summarize(runs: dict) -> dict:
    """Ratios to the dense mean, the seed spreads and the verdicts the study reports (study.md)."""
    dense = [runs[n]["final_eval_loss"] for n in ("dense_s0", "dense_s1") if n in runs and runs[n]["final_eval_loss"]]
    default = [runs[n]["final_eval_loss"] for n in ("default_s0", "default_s1")
               if n in runs and runs[n]["final_eval_loss"]]
    out: dict = {"dense_mean": statistics.mean(dense) if dense else None,
                 "dense_spread": (max(dense) - min(dense)) if len(dense) > 1 else None,
                 "default_mean": statistics.mean(default) if default else None,
                 "default_spread": (max(default) - min(default)) if len(default) > 1 else None}
    dm = out["dense_mean"]
    out["ratio_to_dense"] = {n: (r["final_eval_loss"] / dm if dm and r["final_eval_loss"] else None)
                             for n, r in runs.items()}
    if dm and out["default_mean"] is not None:
        gap = out["default_mean"] / dm - 1.0
        out["default_rel_gap"] = gap
        out["default_within_1pct"] = abs(gap) <= 0.01
        if out["dense_spread"] is not None:
            out["default_within_seed_noise"] = abs(out["default_mean"] - dm) <= out["dense_spread"]
    f8, f8d = (runs[n]["final_eval_loss"] if n in runs else None for n in ("fp8", "fp8_dense"))
    out["fp8_rel_gap_to_fp8_dense"] = f8 / f8d - 1.0 if f8 and f8d else None
    # the paper's ordering of the ablations, best first (PAPER_LOSSES)
    order = [n for n in PAPER_LOSSES if n in runs]
    key = lambda n: math.inf if runs[n]["final_eval_loss"] is None else runs[n]["final_eval_loss"]  # noqa: E731
    out["ablation_order_measured"] = sorted(order, key=key)
    out["ablation_order_paper"] = order
    return out


# ------------------------------------------------------------------------------------------- CLI

def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m sp24.study", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", choices=sorted(CONFIGS), default="cpu", help="micro (seconds, CI) or cpu (default)")
    p.add_argument("--runs", default=None, help="comma-separated run names (default: all; see the module docstring)")
    p.add_argument("--steps", type=demo._positive("--steps"), help="training steps per run (overrides the config)")
    p.add_argument("--warmup", type=demo._non_negative("--warmup"), help="dense steps of the default runs (< --steps)")
    p.add_argument("--out", default=None, help="output folder (default out/study_<config>, which git ignores)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--threads", type=demo._positive("--threads"), default=None, help="CPU threads for torch")
    p.add_argument("--no-fork", dest="fork", action="store_false",
                   help="train every run from step 0 (default: runs that switch 2:4 on at the warm-up step continue "
                        "from the dense run of their seed at that step; the same bits, tested)")
    p.add_argument("--table", default=None, metavar="STUDY_JSON", help="only print the markdown table of a study.json")
    args = p.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    cfg = CONFIGS[args.config]
    steps = args.steps or cfg.steps
    warmup = args.warmup if args.warmup is not None else (steps * cfg.warmup // cfg.steps if args.steps else cfg.warmup)
    if warmup >= steps:
        p.error(f"--warmup must be smaller than --steps, got --warmup {warmup} with --steps {steps}")
    cfg = dataclasses.replace(cfg, steps=steps, warmup=warmup, eval_every=min(cfg.eval_every, steps),
                              stats_every=min(cfg.stats_every, max(2, steps // 4)))  # >= 2: some steps are timed
    known = [r.name for r in runs_for(cfg)]
    args.run_names = known if args.runs is None else [n.strip() for n in args.runs.split(",") if n.strip()]
    bad = [n for n in args.run_names if n not in known]
    if bad or not args.run_names:
        p.error(f"--runs: unknown or empty run names {bad or args.runs!r}; choose from {', '.join(known)}")
    try:
        args.device = torch.device(args.device)
    except RuntimeError as e:
        p.error(f"--device: {args.device!r} is not a torch device ({e})")
    if args.device.type == "cuda" and not torch.cuda.is_available():
        p.error(f"--device {args.device}: CUDA is not available here; use --device cpu")
    args.out = Path(args.out or Path("out") / f"study_{args.config}")
    return args, cfg


def main(argv=None) -> dict:
    """Run the study (or, with --table, print the table of a finished one); returns the study document."""
    args, cfg = parse_args(argv)
    if args.table:
        try:
            doc = json.loads(Path(args.table).read_text())
            text = table(doc)
        except (OSError, ValueError, KeyError, TypeError, IndexError) as e:
            raise SystemExit(f"python -m sp24.study --table: {args.table} is not a readable study.json "
                             f"({type(e).__name__}: {e})") from None
        print(text, end="")
        return doc
    threads = torch.get_num_threads()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    try:
        return _run(args, cfg)
    finally:
        torch.set_num_threads(threads)


def _run(args, cfg: Config) -> dict:
    from sp24.ffn import fallback

    args.out.mkdir(parents=True, exist_ok=True)
    train_data, eval_data, corpus = demo.load_corpus()
    wanted = [r for r in runs_for(cfg) if r.name in args.run_names]
    print(f"sp24.study: {args.config} config, {len(wanted)} runs x {cfg.steps} steps on {args.device}; load average "
          f"{os.getloadavg()[0]:.2f}", file=sys.stderr)
    t0 = time.perf_counter()
    load_before = os.getloadavg()[0]
    args.commit = demo._commit()  # the code that ran: read at the start, not after a long study
    runs: dict = {}
    # The dense prefix of every run that switches 2:4 on at the warm-up step is the dense run of its
    # seed (shares_prefix): with --fork (default) the dense run's state at that step is kept and those
    # runs continue from it. Runs of a seed whose dense run is not asked for train from step 0.
    forked = {r.name for r in wanted if args.fork and shares_prefix(r, cfg)}
    seeds_forked = {prefix_key(r) for r in wanted if r.name in forked}
    order = sorted(wanted, key=lambda r: r.sparse_from is not None)  # dense runs first (stable otherwise)
    snapshots: dict = {}
    with fallback(False):
        for r in order:
            snap_at = cfg.warmup if r.sparse_from is None and prefix_key(r) in seeds_forked else None
            fork = snapshots.get(prefix_key(r)) if r.name in forked else None
            res = train_run(r, cfg, train_data, eval_data, args.device, snapshot_at=snap_at, fork=fork)
            if "_snapshot" in res:
                snapshots[prefix_key(r)] = res.pop("_snapshot")
            runs[r.name] = res
            if len(runs) < len(order):
                _write(args, cfg, corpus, runs, t0, load_before, partial=True)
    return _write(args, cfg, corpus, {r.name: runs[r.name] for r in wanted}, t0, load_before, partial=False)


def _write(args, cfg: Config, corpus, runs: dict, t0: float, load_before: float, partial: bool) -> dict:
    """study.json (after every run, "partial": true until the last, so a stopped study keeps what it
    finished), and at the end the plot, study.md and the printed table."""
    doc = {
        "torch_version": torch.__version__, "python_version": platform.python_version(),
        "device": (torch.cuda.get_device_name(args.device) if args.device.type == "cuda" else
                   f"cpu ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads)"),
        "load_average_before": load_before, "load_average_after": os.getloadavg()[0],
        "commit": args.commit, "command": " ".join(["python -m sp24.study", *args.argv]),
        "config_name": args.config, "config": dataclasses.asdict(cfg), "paper_sparsity": PAPER_SPARSITY,
        "n_params": next(iter(runs.values()))["n_params"], "corpus": corpus, "wall_s": time.perf_counter() - t0,
        "runs": runs,
    }
    doc["partial"] = partial
    doc["forked"] = bool(args.fork)
    doc["summary"] = summarize(runs)
    doc = demo._clean(doc)
    if not partial:
        doc["plot"] = "study.png" if plot(doc, args.out / "study.png") else None
    (args.out / "study.json").write_text(json.dumps(doc, indent=1, allow_nan=False))
    if partial:
        return doc
    text = table(doc)
    (args.out / "study.md").write_text(text)
    print("\n" + text, end="")
    print(f"sp24.study: wrote {args.out / 'study.json'}, {args.out / 'study.md'}"
          + (f" and {args.out / 'study.png'}" if doc["plot"] else ""))
    return doc


if __name__ == "__main__":
    main()
