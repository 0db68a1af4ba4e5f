"""A group's GRPO advantages exactly as NeMo RL defines them, and when they cancel to g_i = 0.

NeMo RL (``nemo_rl/algorithms/utils.py::calculate_baseline_and_std_per_prompt``: main 7ea279a
l.104–198, v0.7.0 l.103–197, v0.6.0 l.86–163; normalised by ``advantage_estimator.py::
GRPOAdvantageEstimator.compute_advantage`` in all three), for a group of k rollouts with rewards r, S = Σr, Q = Σr²:

- baseline: the mean of all k rewards, or with ``use_leave_one_out_baseline`` the mean of the
  k − 1 others: b_j = (S − r_j)/(k − 1);
- std: over the same set, with Bessel's correction (``(E[x²] − E[x]²) · n/(n − 1)`` with n the
  set's size, ``.sqrt().nan_to_num(0)``): a leave-one-out set of one rollout (k = 2) has std 0;
- k ≤ 1 (``valid_mask.sum() <= 1``): the baseline is the reward itself, so A = 0;
- ``normalize_rewards``: A_j / (std_j + 1e-6) where std_j > 0, A_j unscaled where std_j = 0.

The three versions agree on these formulas (main and v0.7.0 add an optional separate reward for
the std, which GRPO's estimator does not pass). Upstream evaluates E[x²] − E[x]² in one pass,
which can leave a rounding residue where a set's rewards are all equal (float64 rewards
[0.2]*7 + [1.5], leave-one-out: the 1.5's std comes out 2.8e-9 instead of 0, its advantage 1.3e6
instead of 1.3), and its count n is float32. Here every quantity is computed in exact rational
arithmetic from the float rewards and rounded once, so the result is the value upstream's
formula defines, correct to the last bit or two, and a set of equal rewards has std exactly 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Hashable, Literal, Sequence

import torch

Baseline = Literal["mean", "leave_one_out"]

STD_EPS = 1e-6  # NeMo RL's `std + epsilon`, epsilon = 1e-6


@dataclass(frozen=True)
class ExactAdvantages:
    """Per rollout: the exact centred reward r_j − b_j and the exact variance that scales it
    (0 when the advantage is left unscaled)."""

    centred: list[Fraction]
    variance: list[Fraction]

    def to_tensor(self) -> torch.Tensor:
        return torch.tensor([float(c) if v == 0 else float(c) / (math.sqrt(float(v)) + STD_EPS)
                             for c, v in zip(self.centred, self.variance)], dtype=torch.float64)


def exact_advantages(rewards: torch.Tensor, baseline: Baseline = "mean",
                     normalize_std: bool = False) -> ExactAdvantages:
    values = [Fraction(x) for x in _checked(rewards).tolist()]
    k = len(values)
    if baseline not in ("mean", "leave_one_out"):
        raise ValueError(f"advantage baseline must be 'mean' or 'leave_one_out', got {baseline!r}")
    zero = [Fraction(0)] * k
    if k <= 1:
        return ExactAdvantages(zero, zero)
    total, squares = sum(values), sum(x * x for x in values)
    if baseline == "mean":
        centred = [x - total / k for x in values]
        variance = [(squares - total * total / k) / (k - 1)] * k
    else:
        centred = [x - (total - x) / (k - 1) for x in values]
        variance = zero if k == 2 else [
            ((squares - x * x) - (total - x) ** 2 / (k - 1)) / (k - 2) for x in values]
    return ExactAdvantages(centred, variance if normalize_std else zero)


def group_advantages(rewards: torch.Tensor, baseline: Baseline = "mean",
                     normalize_std: bool = False) -> torch.Tensor:
    """Per-rollout advantages (float64) of one problem's group, as NeMo RL defines them.

    ``mean`` without std is the official GradAlign (Dr. GRPO) choice; NeMo RL's defaults are
    ``leave_one_out`` with ``normalize_std``.
    """
    return exact_advantages(rewards, baseline, normalize_std).to_tensor()


def has_gradient(rewards: torch.Tensor, responses: Sequence[Hashable], baseline: Baseline = "mean",
                 normalize_std: bool = False) -> bool:
    """False when the group's policy gradient is exactly zero, decided in exact arithmetic.

    g_i = Σ_j A_j ∇ agg log π(y_j), and identical responses share one ∇ (same tokens, same
    length), so g_i = 0 when, for every distinct response, the advantages of the rollouts that
    produced it sum to zero — all rewards equal, or a confident policy's repeated answer with
    different (noisy) rewards. Rollouts sharing a response and a scale are summed exactly; terms
    with different std scales are taken to be independent (their irrational scales cancelling
    exactly would be a coincidence of measure zero). A response of None has no trained token
    and no gradient. Scale-free: no reward threshold.
    """
    exact = exact_advantages(rewards, baseline, normalize_std)
    if len(responses) != len(exact.centred):
        raise ValueError(f"{len(responses)} responses for {len(exact.centred)} rewards")
    net: dict[tuple, Fraction] = {}
    for key, centred, variance in zip(responses, exact.centred, exact.variance):
        if key is None:
            continue
        net[(key, variance)] = net.get((key, variance), Fraction(0)) + centred
    return any(v != 0 for v in net.values())


def _checked(rewards: torch.Tensor) -> torch.Tensor:
    if rewards.numel() == 0:
        raise ValueError("a problem has no rollouts (empty group)")
    if not torch.isfinite(rewards).all():
        raise ValueError(f"rewards must be finite, got {rewards.tolist()}")
    return rewards.detach().double().cpu().reshape(-1)
