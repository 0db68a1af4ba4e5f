"""Scoring methods (DESIGN.md §2): one number per problem, higher is picked first.

Gradient methods read the engine's ProblemStats; accuracy methods read pass rates; ``simacc`` (the
official code's cos · 4a(1−a)) reads both. A problem
whose rollouts all got the same reward has g_i = 0: with ``uninformative="exclude"`` (default) it
gets -inf and is never picked; ``"zero"`` scores it 0.0 as the official code does, which ranks it
above every negatively aligned problem. ``dapo`` is DAPO's dynamic sampling as a score: the
baseline GradAlign must beat at equal compute, since it filters the same draw without a backward.
"""

from __future__ import annotations

from typing import Literal

import torch

from nemo_gradalign.engine import ProblemStats

Method = Literal["gradalign", "simacc", "dot", "learnalign", "accgreedy", "accfilter", "random", "dapo"]
METHODS: tuple[str, ...] = ("gradalign", "simacc", "dot", "learnalign", "accgreedy", "accfilter", "random", "dapo")
Uninformative = Literal["exclude", "zero"]

EXCLUDED = float("-inf")


def reference_source(method: str) -> str | None:
    """Which gradient a method aligns with: the trusted validation set, the pool itself, or none."""
    return {"gradalign": "validation", "simacc": "validation", "dot": "validation", "learnalign": "pool"}.get(method)


def simacc_factor(pass_rates: torch.Tensor) -> torch.Tensor:
    """The official ``simacc`` weight 4a(1−a): 1 at a pass rate of one half, 0 at 0 and 1."""
    rates = pass_rates.double()
    return 4 * rates * (1 - rates)


def score_problems(
    method: str,
    pass_rates: torch.Tensor,
    informative: torch.Tensor,
    stats: ProblemStats | None = None,
    generator: torch.Generator | None = None,
    uninformative: Uninformative = "exclude",
    acc_low: float = 0.2,
    acc_high: float = 0.8,
) -> torch.Tensor:
    """float64 scores, one per problem; never NaN. -inf marks a problem that must not be picked."""
    n = pass_rates.numel()
    if reference_source(method) is not None:
        if stats is None:
            raise ValueError(f"method {method!r} needs gradient statistics from the engine")
        scores = stats.cosine() if method in ("gradalign", "simacc", "learnalign") else stats.dot.clone()
        if method == "simacc":  # the official ablation: direction times pass-rate spread (l.136)
            scores = scores * simacc_factor(pass_rates)
        if uninformative == "exclude":
            scores = torch.where(informative, scores, torch.full_like(scores, EXCLUDED))
        elif uninformative == "zero":
            scores = torch.where(informative, scores, torch.zeros_like(scores))
        else:
            raise ValueError(f"uninformative must be 'exclude' or 'zero', got {uninformative!r}")
        return scores
    rates = pass_rates.double()
    if method == "accgreedy":
        return -(rates - 0.5).abs()
    if method == "accfilter":
        uniform = torch.rand(n, generator=generator, dtype=torch.float64)
        eligible = (rates >= acc_low) & (rates <= acc_high)
        return torch.where(eligible, uniform, torch.full_like(uniform, EXCLUDED))
    if method == "random":
        return torch.rand(n, generator=generator, dtype=torch.float64)
    if method == "dapo":  # uniform among groups whose pass rate is strictly between 0 and 1
        uniform = torch.rand(n, generator=generator, dtype=torch.float64)
        mixed = (rates > 0) & (rates < 1)
        return torch.where(mixed, uniform, torch.full_like(uniform, EXCLUDED))
    raise ValueError(f"unknown scoring method {method!r}; choose one of {', '.join(METHODS)}")


def significant_only(scores: torch.Tensor, z: float) -> tuple[torch.Tensor, float]:
    """Exclude gradient scores not significantly above zero, so a shortfall is not filled with
    problems whose alignment is noise. The noise scale is read from the scores themselves: a
    problem unrelated to the validation set scores symmetrically around 0, so the negative
    scores estimate it (σ̂ = RMS of the negative ones); keep s > z·σ̂. Returns the new scores and
    the threshold (0 when no score is negative: nothing to estimate the noise from)."""
    negative = scores[torch.isfinite(scores) & (scores < 0)]
    threshold = z * float(negative.square().mean().sqrt()) if negative.numel() else 0.0
    keep = scores > threshold
    return torch.where(keep, scores, torch.full_like(scores, EXCLUDED)), threshold


def top_indices(scores: torch.Tensor, n: int) -> list[int]:
    """The n best-scored problems (ties keep pool order); excluded ones (-inf) are never picked.

    Returns fewer than n when fewer than n problems are pickable; the caller logs the shortfall.
    """
    order = torch.sort(scores, descending=True, stable=True).indices
    pickable = [int(i) for i in order if scores[i] != EXCLUDED]
    return pickable[:n]
