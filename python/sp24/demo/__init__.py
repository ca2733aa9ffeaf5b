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
import json
import math
import os
import platform
import subprocess
import sys
from pathlib import Path

import torch

from .corpus import (  # noqa: F401  (sp24.demo.<name>: used by sp24.study and the tests)
    DOC_SEP, EVAL_MOD, SKIP_DIRS, STDLIB_PACKAGES, corpus_files, get_batch, is_eval_file, load_corpus)
from .figure import RUN_LABELS, _pyplot, _smooth, plot  # noqa: F401
from .model import CONFIGS, GPT, Block, Config  # noqa: F401
from .training import _progress, _sync, evaluate, lr_at, train, train_step  # noqa: F401

# ------------------------------------------------------------------------------------ reporting

def _commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=10)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


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
