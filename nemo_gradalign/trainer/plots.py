"""PNG plots of a demo: accuracy curves per method, share of flagged problems picked, and the
first round's score histogram (flagged vs clean candidates)."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

LABELS = {"corrupted": "noisy-reward", "target": "target-task", "wrong_key": "wrong-key"}


def _mean_curve(curves: list[list[tuple[int, float]]]):
    steps = [s for s, _ in curves[0]]
    per_step = list(zip(*[[a for _, a in c] for c in curves]))
    return steps, [sum(v) / len(v) for v in per_step], [min(v) for v in per_step], [max(v) for v in per_step]


def demo_figure(summaries: dict[str, list[dict]], regime: str, path: Path) -> Path:
    """summaries: method -> one summary per seed (trainer.summary.run_summary)."""
    tag = next((s["tag"] for runs in summaries.values() for s in runs), None)
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    ax = axes[0]
    for method, runs in summaries.items():
        steps, mean, low, high = _mean_curve([r["curve"] for r in runs])
        ax.plot(steps, mean, marker="o", label=f"{method} (n={len(runs)})")
        ax.fill_between(steps, low, high, alpha=0.15)
    ax.set(title=f"clean validation accuracy ({regime})", xlabel="GRPO step", ylabel="sampled accuracy")
    ax.legend()

    ax = axes[1]
    for method, runs in summaries.items():
        series = [r["shares_by_step"] for r in runs if r["shares_by_step"]]
        if series:
            steps = [s for s, _ in series[0]]
            vals = [sum(v for v in col if v is not None) / len(col) for col in zip(*[[v for _, v in s] for s in series])]
            ax.plot(steps, vals, marker=".", label=method)
    ax.set(title=f"share of {LABELS.get(tag, tag)} problems picked", xlabel="GRPO step", ylim=(0, 1))
    ax.legend()

    ax = axes[2]
    rows = [row for r in summaries.get("gradalign", []) for row in (r["first_scores"] or [])]
    column = {"corrupted": 2, "target": 3, "wrong_key": 4}.get(tag)  # see Trainer._select
    finite = [row for row in rows if row[0] is not None and math.isfinite(row[0])]
    flagged = [row[0] for row in finite if column and row[column]]
    other = [row[0] for row in finite if not (column and row[column])]
    if finite:
        ax.hist([other, flagged], bins=25, label=["other", LABELS.get(tag, "flagged")], alpha=0.7)
        ax.legend()
    ax.set(title="gradalign cosines at the first round", xlabel="cos(g_i, G)", ylabel="problems")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
