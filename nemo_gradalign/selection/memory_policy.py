"""Which problems one step rolls out, decided from the score memory (no rollout, no backward).

Per seen problem i, with W, M2 aged to the newest G generation (memory.py) and mean cosine m:
- pooled within-problem variance  σ² = Σ M2 / Σ max(W − 1, 0)   (no repeat visits yet: the
  variance of the means across problems; fewer than two scored problems: unknown);
- its own variance, shrunk towards σ² by ``prior_weight`` = k₀ pseudo-visits (two similar
  cosines must not look certain):  s² = (M2 + k₀σ²) / (max(W − 1, 0) + k₀);
- standard error  se = √(s² / W),  upper bound  UCB = m + z·se.
Skip probability this step (GRESO's idea, applied to alignment; always < 1 so a skipped problem
comes back): p = max(min(cap, zero_skip_step · zero_streak), cap · [misaligned]), where
misaligned = scored ≥ min_scored_visits and UCB ≤ 0.
The step's batch: unseen problems first (the next ones of a seeded permutation, up to
``explore_share`` of the batch), then the kept seen ones drawn without replacement with weights
exp(z_i / temperature), z_i the preference m + optimism·se standardised over the candidates
(scale-free: real cosines are ~0.01, toy ones ~0.5); Gumbel-top-k makes that draw exact. If too
few remain, more unseen problems fill the batch, then skipped ones, uniformly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from nemo_gradalign.selection.memory import ScoreMemory


@dataclass(frozen=True)
class PolicyKnobs:
    explore_share: float
    zero_skip_step: float
    skip_cap: float
    confidence_z: float
    min_scored_visits: int
    prior_weight: float
    temperature: float
    optimism: float


@dataclass(frozen=True)
class StepPlan:
    problem_ids: np.ndarray   # the batch, in order: explored, preferred, filled from the skipped
    explored: int             # how many of them were unseen (the permutation cursor advances by it)
    skipped: np.ndarray       # ids of seen problems skipped this step (before any refill)
    refilled_from_skipped: int


def pooled_variance(memory: ScoreMemory, weight: np.ndarray, m2: np.ndarray, rows: np.ndarray) -> float:
    """σ²: within-problem cosine variance pooled over problems; NaN when nothing estimates it.
    Summed over ``rows`` (every problem with a cosine among them), in their order: the sums'
    rounding then follows the problems, not where a dataset puts them."""
    weight, m2 = weight[rows], m2[rows]
    repeat = np.maximum(weight - 1.0, 0.0)
    if repeat.sum() > 0:
        return float(m2.sum() / repeat.sum())
    means = memory.mean[rows][weight > 0]
    return float(means.var(ddof=1)) if means.size >= 2 else math.nan


def alignment_bounds(memory: ScoreMemory, prior_weight: float, seen: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean cosine, standard error) per problem, as of the newest G generation: both NaN where
    no cosine still weighs (never scored, or forgotten with generation_decay 0); se NaN where σ²
    is unknown. ``seen``: the explored problems in exploration order (all that can have cosines)."""
    weight, m2 = memory.aged_weight_and_m2()
    sigma2 = pooled_variance(memory, weight, m2, seen)
    own = (m2 + prior_weight * sigma2) / (np.maximum(weight - 1.0, 0.0) + prior_weight)
    with np.errstate(divide="ignore", invalid="ignore"):
        se = np.where(weight > 0, np.sqrt(own / np.where(weight > 0, weight, 1.0)), np.nan)
    return np.where(weight > 0, memory.mean, np.nan), se


def skip_probability(memory: ScoreMemory, knobs: PolicyKnobs, mean: np.ndarray, se: np.ndarray) -> np.ndarray:
    zero = np.minimum(knobs.skip_cap, knobs.zero_skip_step * memory.zero_streak.astype(np.float64))
    with np.errstate(invalid="ignore"):
        misaligned = (memory.scored >= knobs.min_scored_visits) & (mean + knobs.confidence_z * se <= 0)
    return np.maximum(zero, np.where(misaligned, knobs.skip_cap, 0.0))


def preference(memory: ScoreMemory, knobs: PolicyKnobs, mean: np.ndarray, se: np.ndarray,
               candidates: np.ndarray) -> np.ndarray:
    """Standardised log-weights of the candidates (never-scored ones sit at the candidates' average)."""
    if candidates.size == 0:
        return np.zeros(0)
    m, s = mean[candidates], se[candidates]
    scored = np.isfinite(m)
    pref = m + knobs.optimism * np.where(np.isfinite(s), s, 0.0)
    pref = np.where(scored, pref, pref[scored].mean() if scored.any() else 0.0)
    spread = pref.std()
    return (pref - pref.mean()) / spread if spread > 0 else np.zeros_like(pref)


def weighted_without_replacement(log_weight: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Positions of k draws without replacement, P ∝ exp(log_weight) (Gumbel-top-k), in draw order."""
    keys = log_weight + rng.gumbel(size=log_weight.size)
    if k <= 0:
        return np.zeros(0, dtype=np.int64)
    top = np.argpartition(-keys, k - 1)[:k] if k < keys.size else np.arange(keys.size)
    return top[np.argsort(-keys[top], kind="stable")]


def plan_step(memory: ScoreMemory, knobs: PolicyKnobs, order: np.ndarray, cursor: int, batch_size: int,
              rng: np.random.Generator) -> StepPlan:
    """The batch of one step. ``order[:cursor]`` are the problems explored so far, ``order[cursor:]``
    the unseen ones, in the order they will be explored."""
    seen, unseen = order[:cursor], order[cursor:]
    explore = min(unseen.size, math.ceil(knobs.explore_share * batch_size))
    mean, se = alignment_bounds(memory, knobs.prior_weight, seen)
    skipped_mask = rng.random(seen.size) < skip_probability(memory, knobs, mean, se)[seen]
    candidates, skipped = seen[~skipped_mask], seen[skipped_mask]
    want = min(batch_size - explore, candidates.size)
    log_weight = preference(memory, knobs, mean, se, candidates) / knobs.temperature
    preferred = candidates[weighted_without_replacement(log_weight, want, rng)]
    extra = min(unseen.size - explore, batch_size - explore - want)
    explore += extra
    refill = batch_size - explore - want
    refilled = skipped[rng.permutation(skipped.size)[:refill]]
    ids = np.concatenate([unseen[:explore], preferred, refilled]).astype(np.int64)
    return StepPlan(ids, explore, skipped, refill)
