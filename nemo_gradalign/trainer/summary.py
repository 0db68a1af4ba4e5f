"""What a finished run showed, read back from its metrics.jsonl: the paper's diagnostics."""

from __future__ import annotations

import math
import statistics

from nemo_gradalign.trainer.metrics import read_metrics

TAGS = {"noisy": "corrupted", "imbalance": "target", "low_utility": "wrong_key"}


def run_summary(metrics_path, regime: str) -> dict:
    records = read_metrics(metrics_path)
    evals = [(r["step"], r["val:accuracy"]) for r in records if r["kind"] == "eval"]
    tag = TAGS.get(regime)
    key = f"gradalign/picked_{tag}_share" if tag else None
    selections = [r for r in records if r["kind"] == "train" and "gradalign/picked_ids" in r]
    shares = [r[key] for r in selections if key and r.get(key) is not None]
    steps = [s for s, _ in evals]
    accs = [a for _, a in evals]
    area = sum((steps[i + 1] - steps[i]) * (accs[i] + accs[i + 1]) / 2 for i in range(len(steps) - 1))
    return {
        "tag": tag,
        "first_round_share": shares[0] if shares else math.nan,
        "run_share": statistics.fmean(shares) if shares else math.nan,
        "curve": evals,
        "auc": area / (steps[-1] - steps[0]) if len(steps) > 1 else math.nan,
        "initial_acc": accs[0] if accs else math.nan,
        "final_acc": accs[-1] if accs else math.nan,
        "seconds": sum(r.get("seconds", 0.0) for r in records if r["kind"] == "train"),
        "first_scores": selections[0].get("gradalign/candidate_scores") if selections else None,
        "shares_by_step": [(r["step"], r.get(key)) for r in selections] if key else [],
    }


def mean_std(values: list[float], digits: int = 3) -> str:
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.fmean(values):.{digits}f}±{statistics.stdev(values):.{digits}f}"
