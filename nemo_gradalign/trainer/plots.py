"""PNG plots of a demo: accuracy against steps, compute and cost at scale per method, the share of
flagged problems picked, and GradAlign's cosines flagged vs clean (at the first selection, or at each
problem's first visit under the memory schedule)."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

LABELS = {"corrupted": "noisy-reward", "target": "target-task", "wrong_key": "wrong-key"}


def _mean_curve(curves: list[list[tuple[float, float]]], points: int = 41):
    """Seeds' curves on a common grid (their x differ: budgeted runs stop at different steps),
    up to where every seed has data; mean, min and max."""
    from nemo_gradalign.trainer.summary import value_at

    end = min(c[-1][0] for c in curves)
    xs = [end * i / (points - 1) for i in range(points - 1)] + [end]
    ys = [[value_at(c, x) for c in curves] for x in xs]
    return xs, [sum(v) / len(v) for v in ys], [min(v) for v in ys], [max(v) for v in ys]


def demo_figure(summaries: dict[str, list[dict]], regime: str, path: Path) -> Path:
    """summaries: method -> one summary per seed (trainer.summary.run_summary)."""
    tag = next((s["tag"] for runs in summaries.values() for s in runs), None)
    fig, grid = plt.subplots(2, 3, figsize=(16, 9))
    axes = grid.flatten()
    for ax, key, xlabel, scale in ((axes[0], "curve", "GRPO step", 1),
                                   (axes[1], "compute_curve", "compute (M forward token-passes)", 1e6),
                                   (axes[2], "cost_curve", "cost at scale (M trained tokens' forward+backward)",
                                    1e6)):
        for method, runs in summaries.items():
            xs, mean, low, high = _mean_curve([r[key] for r in runs])
            xs = [x / scale for x in xs]
            ax.plot(xs, mean, label=f"{method} (n={len(runs)})")
            ax.fill_between(xs, low, high, alpha=0.15)
        ax.set(title=f"clean held-out accuracy ({regime})", xlabel=xlabel, ylabel="sampled accuracy")
        ax.legend(fontsize=8)

    ax = axes[3]
    for method, runs in summaries.items():
        series = [r["shares_by_step"] for r in runs if any(v is not None for _, v in r["shares_by_step"])]
        if series:  # budgeted runs stop at different steps: up to the shortest seed
            steps = [s for s, _ in min(series, key=len)]
            vals = [sum(v for v in col if v is not None) / len(col) for col in zip(*[[v for _, v in s] for s in series])]
            ax.plot(steps, vals, marker="." if len(steps) < 100 else None, label=method)
    ax.set(title=f"share of {LABELS.get(tag, tag)} problems picked", xlabel="GRPO step", ylim=(0, 1))
    ax.legend()

    ax = axes[4]
    name = next((m for m in summaries if m.startswith("gradalign")), None)
    rows = [row for r in summaries.get(name, []) for row in (r["first_scores"] or [])]
    column = {"corrupted": 2, "target": 3, "wrong_key": 4}.get(tag)  # see Trainer._select
    finite = [(row[0], bool(column and row[column])) for row in rows if row[0] is not None and math.isfinite(row[0])]
    when = "at the first selection"
    if not finite:  # the memory schedule selects before rollout: each problem's first visit instead
        finite = [pair for r in summaries.get(name, []) for pair in r.get("first_visit_cosines", [])]
        when = "at each problem's first visit"
    if finite:
        ax.hist([[c for c, f in finite if not f], [c for c, f in finite if f]], bins=25,
                label=["other", LABELS.get(tag, "flagged")], alpha=0.7)
        ax.legend()
    ax.set(title=f"{name} cosines {when}", xlabel="cos(g_i, G)", ylabel="problems")
    axes[5].axis("off")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
