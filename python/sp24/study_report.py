"""The study's reporting (sp24.study): the markdown table (study.md, the README's table) and the
plot (study.png) of a study document, and the paper's numbers they compare with."""

from __future__ import annotations

import statistics
from pathlib import Path

from . import demo

# The paper reports 84-98% zeros in relu(Y1)^2 after a short dense training: the warm-up is meant to
# reach the lower end before 2:4 is switched on.
PAPER_SPARSITY = 0.84
# The paper's held-out losses of the runs the study mirrors (1.5B parameters; the ablations from
# secondary summaries of the paper), best first: its ordering of the ablations.
PAPER_LOSSES = {"default_s0": "2.652", "no_split": "2.682", "no_permutation": "2.919", "ste": "diverged"}

def _f(v, fmt=".4f") -> str:
    return "n/a" if v is None else format(v, fmt)


def _first_sparse_steps(r: dict) -> list[str]:
    """Per layer, the first stats step at which its zero fraction reached PAPER_SPARSITY ("never")."""
    n = len(r["final_layers"])
    return [next((str(e["step"]) for e in r["stats"] if e["layers"][i]["zero_fraction"] >= PAPER_SPARSITY), "never")
            for i in range(n)]


def table(doc: dict) -> str:
    """The markdown table of a study (study.md, the README's table)."""
    s = doc["summary"]
    lines = [f"Study `{doc['config_name']}`: {doc['n_params'] / 1e6:.2f}M parameters, {doc['config']['steps']} steps "
             f"x {doc['config']['batch_size'] * doc['config']['seq_len']} tokens = "
             f"{doc['config']['steps'] * doc['config']['batch_size'] * doc['config']['seq_len'] / 1e6:.2f}M tokens per run, "
             f"2:4 from step {doc['config']['warmup']} (default runs); {doc['device']}; wall time "
             f"{doc['wall_s'] / 60:.1f} min; commit {doc['commit']}.", "",
             "| run | tests | final eval loss | ratio to dense mean | 2:4 drops row / token (last layer, end) | "
             f"zero fraction per layer (end) | first step with >= {PAPER_SPARSITY:.0%} zeros, per layer | ms/step dense / 2:4 |",
             "|---|---|---|---|---|---|---|---|"]
    for name, r in doc["runs"].items():
        last = r["final_layers"]
        drops = f"{last[-1]['drop_rowwise']:.3f} / {last[-1]['drop_tokenwise']:.3f}" if last else "n/a"
        zeros = " / ".join(f"{la['zero_fraction']:.2f}" for la in last) or "n/a"
        loss = _f(r["final_eval_loss"]) if "diverged_at_step" not in r else f"diverged (step {r['diverged_at_step']})"
        lines.append(f"| {name} | {r['run']['tests']} | {loss} | {_f(s['ratio_to_dense'].get(name))} | {drops} | "
                     f"{zeros} | {' / '.join(_first_sparse_steps(r))} | "
                     f"{_f(r['ms_per_step_dense'], '.0f')} / {_f(r['ms_per_step_sparse'], '.0f')} |")
    lines += ["", f"Dense seeds: mean {_f(s['dense_mean'])}, spread (max - min) {_f(s['dense_spread'])}. "
              f"Default seeds: mean {_f(s['default_mean'])}, spread {_f(s['default_spread'])}."]
    if s.get("default_rel_gap") is not None:
        noise = s.get("default_within_seed_noise")
        lines.append(f"Default vs dense: {s['default_rel_gap']:+.2%} "
                     f"({'within' if s['default_within_1pct'] else 'NOT within'} 1%"
                     + ("" if noise is None else f"; {'within' if noise else 'NOT within'} the dense seed spread")
                     + ").")
    if s.get("fp8_rel_gap_to_fp8_dense") is not None:
        lines.append(f"FP8 2:4 vs FP8 dense: {s['fp8_rel_gap_to_fp8_dense']:+.2%}.")
    forked = sorted({(r["forked_from"]["run"], r["forked_from"]["step"]) for r in doc["runs"].values()
                     if r.get("forked_from")})
    if forked:
        lines.append("Shared dense prefix: " + "; ".join(
            f"the runs of {run}'s seed that switch 2:4 on at step {step} continue from {run}'s state there "
            f"(their first {step} steps are {run}'s, bit for bit; their wall time counts them)"
            for run, step in forked) + ".")
    if s["ablation_order_paper"]:
        lines.append(f"Ablations, best first: measured {', '.join(s['ablation_order_measured'])}; "
                     f"the paper's {', '.join(f'{n} ({PAPER_LOSSES[n]})' for n in s['ablation_order_paper'])}.")
    lines += moe_lines(doc)
    return "\n".join(lines) + "\n"


def moe_lines(doc: dict) -> list[str]:
    """For an MoE study: per run and MoE layer, at the last stats step, the spread over the routed
    experts of their token share and of their activation sparsity and 2:4 drops (min - max)."""
    if not doc["config"].get("n_experts"):
        return []
    out = ["", "Routed experts at the end (last stats step), per MoE layer: min - max over the experts of the share "
           "of the layer's (token, expert) pairs, the zero fraction of relu(Y1)^2 and the non-zeros a row-wise / "
           "token-wise 2:4 pass drops; the module list of each layer is [routed experts, shared expert].", "",
           "| run | layer | experts with tokens | token share | zero fraction | drop row-wise | drop token-wise |",
           "|---|---|---|---|---|---|---|"]
    span = lambda xs, f=".2f": f"{min(xs):{f}} - {max(xs):{f}}"  # noqa: E731
    for name, r in doc["runs"].items():
        moe = [la for la in r["final_layers"] if la.get("per_expert")]
        for i, la in enumerate(moe):
            per = la["per_expert"]
            total = sum(p["tokens"] for p in per) or 1
            out.append(f"| {name} | {i} | {len(per)} of {doc['config']['n_experts']} | "
                       f"{span([p['tokens'] / total for p in per], '.3f')} | {span([p['zero_fraction'] for p in per])} | "
                       f"{span([p['drop_rowwise'] for p in per], '.3f')} | {span([p['drop_tokenwise'] for p in per], '.3f')} |")
    return out


def paired_dense(runs: dict, name: str):
    """The dense run a run is compared with: the one of its seed and fp8 setting (prefix_key), else
    the fp32 / bf16 dense run of its seed; None for the plain dense runs and when there is none."""
    if name.startswith("dense"):
        return None
    r = runs[name]["run"]
    for fp8 in (r.get("fp8", False), False):
        for n, o in runs.items():
            if n != name and o["run"]["sparse_from"] is None and o["run"]["seed"] == r["seed"] and o["run"].get("fp8", False) == fp8:
                return n
    return None


def final_ratio(doc: dict, name: str) -> float:
    """Final eval loss over the dense mean, or over its paired dense run when the study has no dense
    seeds; NaN for a diverged run."""
    v = doc["summary"]["ratio_to_dense"].get(name)
    if v is not None or doc["summary"]["dense_mean"]:
        return float("nan") if v is None else v
    pair = paired_dense(doc["runs"], name)
    mine = doc["runs"][name]["final_eval_loss"]
    ref = doc["runs"][pair]["final_eval_loss"] if pair else None
    return mine / ref if mine and ref else float("nan")


def plot(doc: dict, path: Path) -> bool:
    """study.png: (a) eval loss of every run; (b) each run minus the dense run of its seed, with the
    seed band; (c) mean zero fraction over the layers; (d) final eval loss ratio to the dense mean."""
    plt = demo._pyplot("sp24.study")
    if plt is None:
        return False

    runs, warmup = doc["runs"], doc["config"]["warmup"]
    cmap = plt.get_cmap("tab10")
    color = {n: cmap(i % 10) for i, n in enumerate(runs)}
    style = lambda n: dict(ls=":" if n.startswith("dense") else "-", lw=1.8 if n.startswith("default") else 1.2)  # noqa: E731
    fig, ((a, b), (c, d)) = plt.subplots(2, 2, figsize=(15, 10))
    for n, r in runs.items():
        if r["eval_loss"]:
            a.plot(*zip(*r["eval_loss"]), marker="o", ms=3, color=color[n], label=n, **style(n))
    a.set(title="(a) held-out eval loss", xlabel="step", ylabel="cross-entropy (nats/byte)")
    a.axvline(warmup, color="gray", ls="--", lw=1)
    a.legend(fontsize=8)
    # (b) paired: each run minus the dense run of its own seed and precision (same initial weights,
    # same batches; paired_dense), and the seed band: +-|dense_s1 - dense_s0| (what changing the seed
    # alone moves the loss by)
    if "dense_s0" in runs and "dense_s1" in runs:
        d0, d1 = dict(runs["dense_s0"]["eval_loss"]), dict(runs["dense_s1"]["eval_loss"])
        steps = sorted(set(d0) & set(d1))
        band = [abs(d1[s] - d0[s]) for s in steps]
        b.fill_between(steps, [-v for v in band], band, color="gray", alpha=0.3,
                       label="seed band: +-|dense_s1 - dense_s0|")
    for n, r in runs.items():
        pair = paired_dense(runs, n)
        if pair is None:
            continue
        ref = dict(runs[pair]["eval_loss"])
        pts = [(s, v - ref[s]) for s, v in r["eval_loss"] if s in ref]
        if pts:
            b.plot(*zip(*pts), marker="o", ms=3, color=color[n], label=f"{n} - {pair}", **style(n))
    b.axhline(0.0, color="k", lw=0.8)
    dm = doc["summary"]["dense_mean"]
    if dm:
        b.axhline(0.01 * dm, color="tab:red", lw=0.8, ls="--", label="+1% of the dense mean")
    b.axvline(warmup, color="gray", ls="--", lw=1)
    b.legend(fontsize=8)
    b.set(title="(b) eval loss minus the dense run of its seed (same init, same batches)", xlabel="step",
          ylabel="loss difference (nats/byte)")
    for n, r in runs.items():
        if r["stats"]:
            c.plot([e["step"] for e in r["stats"]],
                   [statistics.mean(la["zero_fraction"] for la in e["layers"]) for e in r["stats"]],
                   color=color[n], label=n, **style(n))
    c.axhline(PAPER_SPARSITY, color="k", lw=0.8, ls="--", label=f"{PAPER_SPARSITY:.0%} (paper's lower end)")
    c.axvline(warmup, color="gray", ls="--", lw=1)
    c.set(title="(c) zero fraction of relu(Y1)^2, mean over layers", xlabel="step", ylabel="zero fraction")
    c.legend(fontsize=8)
    names = list(runs)
    ratios = [final_ratio(doc, n) for n in names]
    d.bar(range(len(names)), [v - 1.0 for v in ratios], color=[color[n] for n in names])
    d.axhline(0.01, color="tab:red", lw=0.8, ls="--", label="+1%")
    sp = doc["summary"].get("dense_spread")
    if sp and doc["summary"]["dense_mean"]:
        d.axhspan(-sp / doc["summary"]["dense_mean"] / 2, sp / doc["summary"]["dense_mean"] / 2, color="gray",
                  alpha=0.3, label="dense seed spread")
    d.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
    d.set(title="(d) final eval loss / dense mean - 1 (no dense seeds: / paired dense run)",
          ylabel="relative difference (diverged runs missing)")
    d.legend(fontsize=8)
    fig.suptitle(f"sp24 study ({doc['config_name']}): byte-level GPT, {doc['n_params'] / 1e6:.2f}M params, "
                 f"{doc['device']}", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


