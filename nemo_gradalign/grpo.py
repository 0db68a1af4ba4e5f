"""GRPO pieces shared by scoring and training: response masks, the surrogate, the clipped loss.

Advantages are in ``advantages.py``.

A problem's policy gradient g_i is the gradient of ``policy_surrogate`` at ratio 1 (on-policy,
no clipping, no KL): ``-sum_j A_ij * agg_t log pi(y_ijt)``.
"""

from __future__ import annotations

from typing import Literal

import torch

Aggregation = Literal["token_mean", "sequence_mean"]
# a problem's gradient weighted by its share of a batch loss: token_mean over a batch gives problem
# i the share N_i / N (its tokens), sequence_mean k_i / K (its rollouts) — used for G only
BatchShare = Literal["token_sum", "sequence_sum"]


def reference_aggregation(aggregation: Aggregation, weighting: str) -> Aggregation | BatchShare:
    """The aggregation G's validation problems run with: the scorer's (``sum``: G = Σ g_v), or
    each g_v times its share of a batch loss (``trainer``), as the trainer's loss over the
    validation set as one batch weighs it."""
    if weighting == "sum":
        return aggregation
    return {"token_mean": "token_sum", "sequence_mean": "sequence_sum"}[aggregation]


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
    """Per-token weights w (float64) such that the problem's on-policy loss is Σ_jt w_jt · log π_jt.

    Linear in log π, so any split of the rollouts into microbatches sums to the exact loss.
    token_mean: -A_j / (response tokens of the whole group) — the official code and NeMo RL's
    default. sequence_mean: -A_j / (k · response tokens of rollout j). token_sum / sequence_sum:
    the same times the problem's tokens / rollouts (its weight in a batch loss, up to 1/N or 1/K).
    """
    mask = mask.to(torch.float64)
    adv = advantages.to(torch.float64).unsqueeze(1)
    if aggregation == "token_mean":
        return -adv * mask / mask.sum().clamp_min(1)
    if aggregation == "sequence_mean":
        per_seq = mask.sum(1, keepdim=True).clamp_min(1) * mask.shape[0]
        return -adv * mask / per_seq
    if aggregation == "token_sum":
        return -adv * mask
    if aggregation == "sequence_sum":
        return -adv * mask / mask.sum(1, keepdim=True).clamp_min(1)
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
