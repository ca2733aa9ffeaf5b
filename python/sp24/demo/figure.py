"""The demo's figure, curves.png: both runs' losses, their difference, and per-layer sparsity and 2:4 drops."""

from __future__ import annotations

import sys
from pathlib import Path


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


RUN_STYLE = {"dense": dict(ls=":", lw=1.6), "sparse": dict(ls="-", lw=1.4)}
RUN_COLOR = {"dense": "tab:blue", "sparse": "tab:red"}


def _switch_line(ax, warmup: int, label: bool = False) -> None:
    ax.axvline(warmup, color="gray", ls="--", lw=1, label=f"2:4 switched on (step {warmup})" if label else None)


def _loss_panel(ax, runs: dict, warmup: int, k: int) -> None:
    """(a) loss of both runs: train (running mean over k points) and held-out eval."""
    top = 0.0
    for name in ("sparse", "dense"):  # the dense run drawn last, dotted: the two nearly coincide
        steps, losses = zip(*runs[name]["train_loss"])
        smooth = _smooth(list(losses), k)
        ax.plot(steps, smooth, color=RUN_COLOR[name], alpha=0.6, lw=1, ls=RUN_STYLE[name]["ls"],
                label=f"{RUN_LABELS[name]}: train (running mean)")
        es, el = zip(*runs[name]["eval_loss"])
        ax.plot(es, el, marker="o" if name == "sparse" else "s", ms=4 if name == "sparse" else 6,
                mfc=RUN_COLOR[name] if name == "sparse" else "none", color=RUN_COLOR[name], ls=RUN_STYLE[name]["ls"],
                label=f"{RUN_LABELS[name]}: held-out eval, final {el[-1]:.4f}")
        top = max(top, max(smooth[len(smooth) // 20:]), max(el))  # skip the first 5%: the initial ~5.5
    _switch_line(ax, warmup, label=True)
    ax.set(title="(a) loss, both runs (they overlap: see (b))", xlabel="step", ylabel="cross-entropy (nats/byte)")
    ax.set_ylim(top=top + 0.05 * (top - ax.get_ylim()[0]))
    ax.legend(fontsize=8)


def _difference_panel(ax, runs: dict, warmup: int, k: int) -> None:
    """(b) the 2:4 run minus the dense run: held-out eval loss, and train loss (running mean)."""
    es, el_s = zip(*runs["sparse"]["eval_loss"])
    el_d = dict(runs["dense"]["eval_loss"])
    diff_eval = [(s, v - el_d[s]) for s, v in zip(es, el_s) if s in el_d]
    td = dict(runs["dense"]["train_loss"])
    ts = [(s, v - td[s]) for s, v in runs["sparse"]["train_loss"] if s in td]
    ax.axhline(0.0, color="k", lw=0.8)
    ax.plot([s for s, _ in ts], _smooth([v for _, v in ts], k), color="tab:purple", lw=1, alpha=0.7,
            label="train loss difference (running mean)")
    ax.plot([s for s, _ in diff_eval], [v for _, v in diff_eval], "o-", color="tab:red", ms=4,
            label=f"held-out eval loss difference, final {diff_eval[-1][1]:+.4f}")
    _switch_line(ax, warmup, label=True)
    ax.set(title="(b) 2:4 run minus dense run (same seed, same batches)", xlabel="step",
           ylabel="loss difference (nats/byte)")
    final_dense = runs["dense"]["final_eval_loss"]
    ax.text(0.01, 0.02, f"for scale: 1% of the dense run's final eval loss is {0.01 * final_dense:.4f}\n"
            "one seed per run: the seed-to-seed noise is not measured here",
            transform=ax.transAxes, fontsize=8, color="dimgray")
    ax.legend(fontsize=8, loc="upper left")


def _layer_panels(axes, runs: dict, warmup: int, layer_color: list) -> None:
    """(c)-(e) per-layer statistics of relu(Y1)^2, both runs."""
    ax_zero, ax_row, ax_tok = axes
    panels = ((ax_zero, "zero_fraction", "(c) activation sparsity: zero fraction of relu(Y1)^2", "zero fraction"),
              (ax_row, "drop_rowwise", "(d) non-zeros 2:4 drops row-wise (forward pattern)", "dropped / non-zeros"),
              (ax_tok, "drop_tokenwise", "(e) non-zeros 2:4 drops token-wise (weight gradients)",
               "dropped / non-zeros"))
    for ax, key, title, ylabel in panels:
        for name in ("dense", "sparse"):
            stats = runs[name]["stats"]
            s = [e["step"] for e in stats]
            for li in range(len(layer_color)):
                ax.plot(s, [e["layers"][li][key] for e in stats], color=layer_color[li], **RUN_STYLE[name])
        _switch_line(ax, warmup)
        ax.set(title=title, xlabel="step", ylabel=ylabel)


def _legend_panel(ax, warmup: int, layer_color: list) -> None:
    """(f) one legend: colour = layer, line style = run."""
    from matplotlib.lines import Line2D

    ax.axis("off")
    handles = [Line2D([], [], color=c, lw=2.5, label=f"layer {li}") for li, c in enumerate(layer_color)]
    handles += [Line2D([], [], color="k", **RUN_STYLE["dense"],
                       label="dense run (never sparse; (d), (e): what 2:4 would drop)"),
                Line2D([], [], color="k", **RUN_STYLE["sparse"],
                       label=f"2:4 run (dense until step {warmup}, then 2:4 forward + backward)"),
                Line2D([], [], color="gray", ls="--", lw=1, label=f"2:4 switched on (step {warmup})")]
    ax.legend(handles=handles, loc="center", fontsize=10, title="panels (c), (d), (e)", title_fontsize=10,
              frameon=False)


def plot(summary: dict, path: Path) -> bool:
    """Draw the demo's figure (curves.png) from a summary.

    Panels: (a) loss of both runs; (b) the effect the demo exists for, the 2:4 run minus the dense
    run (held-out eval loss and smoothed train loss), which is exactly 0 during the shared dense
    warm-up; (c) activation sparsity per layer; (d, e) the fraction of non-zeros a 2:4 pass drops
    row-wise (the forward's pattern) and token-wise (the weight gradients'), for both runs (the
    dense run: what 2:4 would drop); (f) one legend for the layer colours and run line styles.

    Args:
        summary (dict): what :func:`sp24.demo.main` returns (the content of summary.json).
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
    runs, warmup = summary["runs"], summary["config"]["warmup"]
    n_layer = summary["config"]["n_layer"]
    fig, axes = plt.subplots(2, 3, figsize=(17, 8.6))
    (ax_loss, ax_diff, ax_zero), (ax_row, ax_tok, ax_leg) = axes
    k = max(1, len(runs["dense"]["train_loss"]) // 40)  # running mean over ~2.5% of the run
    _loss_panel(ax_loss, runs, warmup, k)
    _difference_panel(ax_diff, runs, warmup, k)
    colors = plt.get_cmap("viridis")
    layer_color = [colors(li / max(1, n_layer - 1) * 0.85) for li in range(n_layer)]
    _layer_panels((ax_zero, ax_row, ax_tok), runs, warmup, layer_color)
    _legend_panel(ax_leg, warmup, layer_color)
    fig.suptitle(f"sp24 demo: byte-level GPT ({summary['n_params'] / 1e6:.2f}M params) on Python stdlib source, "
                 f"dense run vs 2:4 run, seed {summary['seed']} ({summary['device']}, {summary['config_name']} config)",
                 fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True
