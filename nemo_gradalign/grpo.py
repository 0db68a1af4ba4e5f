"""GRPO pieces shared by scoring and training: group advantages, response masks, the surrogate.

A problem's policy gradient g_i is the gradient of ``policy_surrogate`` at ratio 1 (on-policy,
no clipping, no KL): ``-sum_j A_ij * agg_t log pi(y_ijt)``.
"""

from __future__ import annotations

from typing import Literal

import torch

Baseline = Literal["mean", "leave_one_out"]
Aggregation = Literal["token_mean", "sequence_mean"]

STD_EPS = 1e-6  # NeMo RL's `std + 1e-6`


def group_advantages(
    rewards: torch.Tensor, baseline: Baseline = "mean", normalize_std: bool = False
) -> torch.Tensor:
    """Per-rollout advantages of one problem's group.

    ``mean`` without std is the official GradAlign (Dr. GRPO) choice. ``leave_one_out`` and
    ``normalize_std`` follow NeMo RL's ``calculate_baseline_and_std_per_prompt``: the baseline
    and the (population) std are taken over the other rollouts, and a zero std leaves the
    advantage unscaled.
    """
    rewards = rewards.to(torch.float64)
    k = rewards.numel()
    if k == 0:
        raise ValueError("a problem has no rollouts (empty group)")
    if not torch.isfinite(rewards).all():
        raise ValueError(f"rewards must be finite, got {rewards.tolist()}")
    if k == 1:
        return torch.zeros_like(rewards)
    if baseline == "mean":
        base = rewards.mean().expand(k)
        sq = rewards.square().mean().expand(k)
    elif baseline == "leave_one_out":
        base = (rewards.sum() - rewards) / (k - 1)
        sq = (rewards.square().sum() - rewards.square()) / (k - 1)
    else:
        raise ValueError(f"advantage baseline must be 'mean' or 'leave_one_out', got {baseline!r}")
    adv = rewards - base
    if normalize_std:
        std = (sq - base.square()).clamp_min(0).sqrt()
        adv = torch.where(std > 0, adv / (std + STD_EPS), adv)
    return adv


def is_informative(rewards: torch.Tensor) -> bool:
    """False when every rollout got the same reward: then every advantage, and g_i, is zero."""
    return bool(rewards.numel() > 1 and (rewards != rewards[0]).any())


def response_mask(prompt_len: int, response_lens: torch.Tensor, seq_len: int) -> torch.Tensor:
    """[k, seq_len] bool mask over *label* positions that predict response tokens.

    Position t's label is token t+1, so a response occupying tokens
    [prompt_len, prompt_len + n) is predicted at positions [prompt_len - 1, prompt_len + n - 1).
    """
    if prompt_len < 1:
        raise ValueError(f"prompt_len must be >= 1, got {prompt_len}")
    pos = torch.arange(seq_len).unsqueeze(0)
    start = prompt_len - 1
    return (pos >= start) & (pos < start + response_lens.unsqueeze(1))


def surrogate_weights(
    mask: torch.Tensor, advantages: torch.Tensor, aggregation: Aggregation = "token_mean"
) -> torch.Tensor:
    """Per-token weights w such that the problem's on-policy loss is Σ_jt w_jt · log π_jt.

    Linear in log π, so any split of the rollouts into microbatches sums to the exact loss.
    token_mean: -A_j / (response tokens of the whole group) — the official code and NeMo RL's
    default. sequence_mean: -A_j / (k · response tokens of rollout j).
    """
    mask = mask.to(torch.float64)
    adv = advantages.to(torch.float64).unsqueeze(1)
    if aggregation == "token_mean":
        return (-adv * mask / mask.sum().clamp_min(1)).float()
    if aggregation == "sequence_mean":
        per_seq = mask.sum(1, keepdim=True).clamp_min(1) * mask.shape[0]
        return (-adv * mask / per_seq).float()
    raise ValueError(f"aggregation must be 'token_mean' or 'sequence_mean', got {aggregation!r}")


def policy_surrogate(logprobs: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """On-policy GRPO loss (ratio 1, no clip, no KL); its gradient is the problem's g_i."""
    return (weights.to(logprobs.dtype) * logprobs).sum()


def clipped_surrogate(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                      token_scale: torch.Tensor, clip_min: float = 0.2, clip_max: float = 0.2) -> torch.Tensor:
    """PPO/GRPO training loss: -Σ min(ρ·A, clip(ρ, 1-clip_min, 1+clip_max)·A) · token_scale.

    ``advantages`` is per token (the rollout's A on its response tokens), ``token_scale`` the mask
    divided by the batch's response-token count (token mean). At ρ = 1 its gradient is the
    on-policy surrogate's.
    """
    ratio = torch.exp(logprobs - old_logprobs)
    unclipped = ratio * advantages
    clipped = ratio.clamp(1.0 - clip_min, 1.0 + clip_max) * advantages
    return -(torch.minimum(unclipped, clipped) * token_scale).sum()
