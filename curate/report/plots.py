"""The report's figures as PNG files (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import NullFormatter  # noqa: E402

from curate.scaling.allocate import candidate_log_losses, prefix_sizes  # noqa: E402
from curate.scaling.law import Law  # noqa: E402

DPI = 100


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def _prefix_label(names: Sequence[str]) -> str:
    return f"pool {names[0]}" if len(names) == 1 else f"pools {names[0]}-{names[-1]}"


def loss_vs_budget(law: Law, budgets: Sequence[float], switches: list[dict], path: Path) -> Path:
    """Predicted loss of every prefix over the budget range, the chosen envelope, and the switches."""
    lo, hi = min(budgets) / 3, max(budgets) * 3
    grid = np.geomspace(lo, hi, 400)
    losses = np.exp(candidate_log_losses(law, grid))
    fig, ax = plt.subplots(figsize=(8, 5))
    colors = plt.cm.viridis(np.linspace(0, 0.9, len(law.pools)))
    for j in range(len(law.pools)):
        ax.plot(grid, losses[j], color=colors[j], lw=1.5, label=_prefix_label(law.names[: j + 1]))
    ax.plot(grid, losses.min(axis=0), color="black", lw=3, alpha=0.35, label="chosen (envelope)")
    chosen = np.exp(candidate_log_losses(law, np.asarray(budgets))).min(axis=0)
    ax.scatter(budgets, chosen, color="black", zorder=5, s=18, label="planned budgets")
    for s in switches:
        if lo <= s["budget"] <= hi:
            ax.axvline(s["budget"], color="grey", ls=":", lw=1)
            ax.annotate(
                f"+pool {s['to'][-1]}" if len(s["to"]) > len(s["from"]) else f"-> {_prefix_label(s['to'])}",
                (s["budget"], ax.get_ylim()[1]),
                rotation=90,
                va="top",
                ha="right",
                fontsize=8,
                color="grey",
            )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("budget (samples seen)")
    ax.set_ylabel("predicted loss")
    ax.set_title("Predicted loss per candidate mix (best pools first)")
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.2)
    return _save(fig, path)


def mix_vs_budget(law: Law, budgets: Sequence[float], path: Path) -> Path:
    """How many pools and how many epochs the plan chooses as the budget grows."""
    grid = np.geomspace(min(budgets) / 3, max(budgets) * 3, 400)
    best = np.argmin(candidate_log_losses(law, grid), axis=0)
    sizes = prefix_sizes(law)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 5.5), sharex=True)
    top.step(grid, best + 1, where="post", color="tab:blue")
    top.set_yticks(range(1, len(law.pools) + 1))
    top.set_yticklabels([_prefix_label(law.names[:j]) for j in range(1, len(law.pools) + 1)], fontsize=8)
    top.set_ylabel("chosen mix")
    top.set_title("Chosen mix and epochs per budget")
    top.grid(True, alpha=0.2)
    bottom.plot(grid, grid / sizes[best], color="tab:orange")
    bottom.set_xscale("log")
    bottom.set_yscale("log")
    bottom.set_xlabel("budget (samples seen)")
    bottom.set_ylabel("epochs over the mix")
    bottom.grid(True, which="both", alpha=0.2)
    return _save(fig, path)


def fit_per_pool(law: Law, path: Path) -> Path | None:
    """Each run's observed losses against the fitted curve (one panel per pool or mix)."""
    observations = law.fit.get("observations") or []
    if not observations:
        return None
    labels = list(dict.fromkeys(o["pool"] for o in observations))
    index = {n: i for i, n in enumerate(law.names)}
    cols = min(3, len(labels))
    rows = int(np.ceil(len(labels) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 2.9 * rows), squeeze=False)
    for ax, label in zip(axes.flat, labels):
        points = [o for o in observations if o["pool"] == label]
        n = np.array([o["samples_seen"] for o in points])
        y = np.array([o["loss"] for o in points])
        members = [index[p] for p in label.split("+") if p in index]
        grid = np.geomspace(n.min() / 1.5, n.max() * 1.5, 200)
        ax.plot(grid, law.loss(grid, members), color="tab:blue", lw=1.5, label="fit")
        ax.scatter(n, y, color="tab:red", s=14, zorder=5, label="observed")
        size = points[0]["pool_size"]
        if grid[0] < size < grid[-1]:
            ax.axvline(size, color="grey", ls=":", lw=1)
        ax.set_xscale("log")  # losses span well under a decade here: a linear y axis keeps its labels
        ax.xaxis.set_minor_formatter(NullFormatter())  # minor labels collide on short log ranges
        ax.set_title(f"{'pool' if len(members) == 1 else 'mix'} {label} ({int(size):,} unique)", fontsize=9)
        ax.tick_params(labelsize=7)
        ax.grid(True, which="both", alpha=0.2)
    for ax in list(axes.flat)[len(labels) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.supxlabel("samples seen (dotted: one pass)", fontsize=9)
    fig.supylabel("loss", fontsize=9)
    return _save(fig, path)


def funnel(stages: list[dict], path: Path) -> Path:
    """Rows left after each stage, with how many that stage removed."""
    names = [s["name"] for s in stages]
    kept = [s["rows_out"] for s in stages]
    fig, ax = plt.subplots(figsize=(8, 0.5 * len(stages) + 1.4))
    y = np.arange(len(stages))[::-1]
    ax.barh(y, kept, color="tab:green", alpha=0.7)
    for yi, s in zip(y, stages):
        ax.text(s["rows_out"], yi, f"  {s['rows_out']:,} kept, -{s['rows_removed']:,}", va="center", fontsize=8)
    ax.set_yticks(y)
    ax.set_yticklabels(names)
    ax.set_xlim(0, max(max(kept, default=1), 1) * 1.35)
    ax.set_xlabel("rows after stage")
    ax.set_title("Rows removed per stage")
    return _save(fig, path)


def pool_scores(scores: np.ndarray, pools: np.ndarray, score_name: str, path: Path) -> Path:
    """Score distribution per pool (pools are quantile buckets of a score)."""
    fig, ax = plt.subplots(figsize=(8, 4))
    ids = np.unique(pools)
    colors = plt.cm.viridis(np.linspace(0, 0.9, len(ids)))
    finite = np.isfinite(scores)
    bins = np.histogram_bin_edges(scores[finite], bins=50) if finite.any() else 10
    for color, p in zip(colors, ids):
        ax.hist(
            scores[(pools == p) & finite],
            bins=bins,
            alpha=0.6,
            color=color,
            label=f"pool {p} ({int(np.sum(pools == p)):,})",
        )
    ax.set_xlabel(score_name)
    ax.set_ylabel("rows")
    ax.set_title(f"{score_name} per pool")
    ax.legend(fontsize=8)
    return _save(fig, path)


def random_baseline(comparison: dict, path: Path) -> Path:
    """Per planned budget: the chosen mix, random data of the same size (bars: 2 sd of the
    difference, drawn around it) and all data, as predicted by the two fitted laws."""
    entries = comparison["budgets"]
    budgets = np.array([e["budget"] for e in entries])
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.plot(budgets, [e["predicted_loss"] for e in entries], "o-", color="tab:green", label="chosen mix of the pools")
    same = np.array([e["random_same_size"] for e in entries])
    # no bars where the best mix is all the data: there the two sides are the same rows
    spread = comparison.get("margin_sd", 2.0) * np.nan_to_num(
        np.array([0.0 if e["status"] == "all_data" else e["difference_sd"] for e in entries])
    )
    ax.errorbar(
        budgets, same, yerr=spread, fmt="s--", color="tab:red", capsize=3, label="random data of the same size"
    )
    ax.plot(
        budgets,
        [e["all_data"] for e in entries],
        "^:",
        color="tab:blue",
        markerfacecolor="none",
        markersize=10,
        zorder=4,
        label="all data",
    )
    for e in entries:
        if e["status"] == "beats_random":
            ax.annotate(
                "beats random",
                (e["budget"], e["predicted_loss"]),
                textcoords="offset points",
                xytext=(0, -14),
                ha="center",
                fontsize=7,
                color="tab:green",
            )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("budget (samples seen)")
    ax.set_ylabel("predicted loss")
    verdict = "beats random" if comparison["verdict"] == "beats_random" else "no better than random"
    ax.set_title(f"Chosen mix against random data of the same size: {verdict}")
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.2)
    return _save(fig, path)
