"""Score a batch of candidate groups with the configured method and keep the best.

Owns the reference gradient: rebuilt from fresh validation rollouts every ``refresh_every``
steps (gradalign, dot) or from the candidates themselves (learnalign). If a refresh finds no
validation problem with reward variance, the previous reference is kept and the event is
reported in the metrics; with no previous reference that is an error (nothing to align with).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from nemo_gradalign.config import GradAlignConfig
from nemo_gradalign.engine import EmptyReferenceGradient, GradientEngine, ProblemStats, ReferenceGradient
from nemo_gradalign.rollouts import ProblemRollouts, rollout_tokens
from nemo_gradalign.selection.scores import reference_source, score_problems, significant_only, top_indices

log = logging.getLogger(__name__)


@dataclass
class Selection:
    picked: list[int]  # indices into the candidates, best first
    scores: torch.Tensor
    stats: ProblemStats | None
    metrics: dict = field(default_factory=dict)


class Selector:
    def __init__(self, cfg: GradAlignConfig, engine: GradientEngine | None, run_problem,
                 validation_rollouts: Callable[[int], list[ProblemRollouts]], divisor=None,
                 reference_run_problem=None):
        """``divisor``: param -> √v̂ + ε (gradalign.precondition=adam), applied to G.
        ``reference_run_problem``: runs validation problems for G (default ``run_problem``;
        gradalign.reference_weighting=trainer weighs each by its share of a batch loss)."""
        self.cfg, self.engine, self.run_problem = cfg, engine, run_problem
        self.reference_run_problem = reference_run_problem or run_problem
        self.validation_rollouts = validation_rollouts
        self.divisor = divisor
        self.reference: ReferenceGradient | None = None

    def validation_reference(self, step: int, metrics: dict, trusted: list[ProblemRollouts] | None = None
                             ) -> ReferenceGradient:
        """G for ``step``: the current one, or rebuilt when ``refresh_every`` steps have passed.
        Adds the rebuild's forward+backward tokens to ``metrics["gradalign/scored_tokens"]``.
        ``trusted``: the trusted groups of this step's batch, G's rollouts (none generated for it)."""
        if self.reference is not None and not self.reference.needs_refresh(step, self.cfg.refresh_every):
            return self.reference
        val = self.validation_rollouts(step) if trusted is None else trusted
        metrics["gradalign/val_informative_share"] = sum(map(self.run_problem.has_gradient, val)) / len(val)
        metrics["gradalign/scored_tokens"] += rollout_tokens(val, self.run_problem.has_gradient)
        try:
            if self.reference is None:
                self.reference = self.engine.build_reference(val, self.reference_run_problem, step, self.divisor)
            else:
                self.engine.refresh(self.reference, val, self.reference_run_problem, step, self.divisor)
        except EmptyReferenceGradient:
            if self.reference is None or not self.reference.ready:
                raise
            # routine when G comes from a step's few trusted groups (validation.train_share): not a warning
            (log.debug if trusted is not None else log.warning)(
                "step %d: no validation problem has reward variance; keeping the validation gradient from "
                "step %d", step, self.reference.built_at_step)
            metrics["gradalign/reference_kept_stale"] = 1
        metrics["gradalign/reference_norm"] = self.reference.norm
        metrics["gradalign/reference_step"] = self.reference.built_at_step
        return self.reference

    def select(self, candidates: list[ProblemRollouts], keep: int, step: int) -> Selection:
        cfg = self.cfg
        t0 = time.perf_counter()
        metrics: dict = {"gradalign/scored_tokens": 0}  # forward+backward tokens (compute accounting)
        rates = torch.tensor([r.pass_rate for r in candidates])
        informative = torch.tensor([self.run_problem.has_gradient(r) for r in candidates], dtype=torch.bool)
        stats = None
        source = reference_source(cfg.method)
        if source is not None:  # one forward+backward per informative candidate (pool: twice)
            passes = 2 if source == "pool" else 1
            metrics["gradalign/scored_tokens"] += passes * rollout_tokens(candidates, self.run_problem.has_gradient)
        if source == "validation":
            stats = self.engine.score(candidates, self.run_problem, self.validation_reference(step, metrics))
        elif source == "pool" and informative.any():
            pool_reference = self.engine.build_reference(candidates, self.run_problem, step)
            stats = self.engine.score(candidates, self.run_problem, pool_reference)
        elif source == "pool":  # no candidate has a gradient: nothing is pickable
            zeros = torch.zeros(len(candidates), dtype=torch.float64)
            stats = ProblemStats(zeros, zeros.clone(), informative)
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
        scores = score_problems(cfg.method, rates, informative, stats, gen, cfg.uninformative,
                                cfg.acc_low, cfg.acc_high)
        if cfg.significance is not None and source == "validation":
            scores, metrics["gradalign/significance_threshold"] = significant_only(scores, cfg.significance)
        picked = top_indices(scores, keep)
        metrics.update(selection_metrics(candidates, scores, picked, informative))
        metrics["gradalign/shortfall"] = keep - len(picked)
        metrics["gradalign/seconds"] = time.perf_counter() - t0
        return Selection(picked, scores, stats, metrics)

    def state_dict(self) -> dict:
        return {"reference": self.reference.state_dict() if self.reference else None}

    def load_state_dict(self, state: dict) -> None:
        self.reference = self.engine.restore_reference(state.get("reference"))


def selection_metrics(candidates: list[ProblemRollouts], scores: torch.Tensor, picked: list[int],
                      informative: torch.Tensor) -> dict:
    """What was picked: the paper's diagnostic shares, pass rates, and the score spread."""
    chosen = [candidates[i] for i in picked]
    finite = scores[torch.isfinite(scores)]

    def share(tag: str, group: list[ProblemRollouts]) -> float:
        return sum(bool(r.tags.get(tag)) for r in group) / len(group) if group else math.nan

    out = {
        "gradalign/picked": len(picked),
        "gradalign/uninformative_share": float((~informative).float().mean()),
        "gradalign/picked_pass_rate": sum(r.pass_rate for r in chosen) / len(chosen) if chosen else math.nan,
        "gradalign/score_min": float(finite.min()) if finite.numel() else math.nan,
        "gradalign/score_median": float(finite.median()) if finite.numel() else math.nan,
        "gradalign/score_max": float(finite.max()) if finite.numel() else math.nan,
    }
    for tag in ("corrupted", "target", "wrong_key"):
        if any(r.tags.get(tag) for r in candidates):
            out[f"gradalign/picked_{tag}_share"] = share(tag, chosen)
            out[f"gradalign/pool_{tag}_share"] = share(tag, candidates)
    return out
