"""What a finished run showed, read back from its metrics.jsonl: the paper's diagnostics."""

from __future__ import annotations

import math
import statistics

from nemo_gradalign.trainer.metrics import read_metrics

TAGS = {"noisy": "corrupted", "noisy_flip": "wrong_key", "imbalance": "target", "imbalance_length": "target",
        "low_utility": "wrong_key", "low_utility_shuffled": "wrong_key"}


def run_summary(metrics_path, regime: str) -> dict:
    records = read_metrics(metrics_path)
    eval_records = [r for r in records if r["kind"] == "eval"]
    evals = [(r["step"], r["val:accuracy"]) for r in eval_records]
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
        # accuracy against compute (forward token-passes) and step seconds, at the same evaluations
        "compute_curve": [(r.get("compute/total", math.nan), r["val:accuracy"]) for r in eval_records],
        "seconds_curve": [(r.get("compute/total_seconds", math.nan), r["val:accuracy"]) for r in eval_records],
        # against cost at scale (a generated token priced as at scale, trainer/compute.py)
        "cost_curve": [(r.get("cost/total", math.nan), r["val:accuracy"]) for r in eval_records],
        "cost": eval_records[-1].get("cost/total", math.nan) if eval_records else math.nan,
        "steps": steps[-1] if steps else 0,
        "compute": eval_records[-1].get("compute/total", math.nan) if eval_records else math.nan,
        "auc": area / (steps[-1] - steps[0]) if len(steps) > 1 else math.nan,
        "initial_acc": accs[0] if accs else math.nan,
        "final_acc": accs[-1] if accs else math.nan,
        "seconds": sum(r.get("seconds", 0.0) for r in records if r["kind"] == "train"),
        "first_scores": selections[0].get("gradalign/candidate_scores") if selections else None,
        # the memory schedule: (cosine, flagged) of every problem's first visit, from the steps' batches
        "first_visit_cosines": first_visit_cosines(records, tag),
        **pick_spread([pid for r in selections for pid in r["gradalign/picked_ids"]]),
        "shares_by_step": [(r["step"], r.get(key)) for r in selections] if key else [],
    }


def pick_spread(picks: list[int]) -> dict:
    """How concentrated the picks are: distinct problems, and the share of all picks that went to
    the 32 most picked (NaN without picks)."""
    from collections import Counter

    counts = sorted(Counter(picks).values(), reverse=True)
    return {"distinct_picked": len(counts) if counts else math.nan,
            "top32_share": sum(counts[:32]) / len(picks) if picks else math.nan}


def first_visit_cosines(records: list[dict], tag: str | None) -> list[tuple[float, bool]]:
    seen, out = set(), []
    for r in records:
        if r["kind"] != "train" or "gradalign/batch_cosines" not in r:
            continue
        flags = r.get(f"gradalign/batch_{tag}") or [False] * len(r["gradalign/batch_cosines"])
        for pid, cos, flag in zip(r["gradalign/picked_ids"], r["gradalign/batch_cosines"], flags):
            if pid not in seen and cos is not None:
                out.append((cos, bool(flag)))
            seen.add(pid)
    return out


def mean_std(values: list[float], digits: int = 3) -> str:
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.fmean(values):.{digits}f}±{statistics.stdev(values):.{digits}f}"


def value_at(curve: list[tuple[float, float]], x: float) -> float:
    """The piecewise-linear curve at x; NaN outside its range (a run that stopped short)."""
    for (x0, y0), (x1, y1) in zip(curve, curve[1:]):
        if x0 <= x <= x1:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return curve[0][1] if curve and x == curve[0][0] else math.nan


def mean_area(curve: list[tuple[float, float]], upto: float) -> float:
    """Mean of the piecewise-linear curve over [its first x, upto] (area / width): the accuracy
    area at a given budget of steps or compute. NaN when the curve stops before ``upto``."""
    if not curve or upto <= curve[0][0] or curve[-1][0] < upto:
        return math.nan
    points = [(x, y) for x, y in curve if x < upto] + [(upto, value_at(curve, upto))]
    area = sum((b[0] - a[0]) * (a[1] + b[1]) / 2 for a, b in zip(points, points[1:]))
    return area / (upto - curve[0][0])
