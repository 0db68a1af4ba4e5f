"""One GRPO step on a batch of problems: old log-probs, then μ clipped-ratio optimizer steps."""

from __future__ import annotations

import torch

from nemo_gradalign import advantages, grpo
from nemo_gradalign.megatron.policy import Policy
from nemo_gradalign.megatron.step import LossSettings, run_microbatches, shift_labels, split_rows
from nemo_gradalign.rollouts import ProblemRollouts


def pack(batch: list[ProblemRollouts], loss: LossSettings) -> dict[str, torch.Tensor]:
    """All rollouts of the batch as right-padded rows with per-token advantages and token-mean
    scale over the whole batch (NeMo RL's token-level loss)."""
    width = max(r.tokens.shape[1] for r in batch)
    rows = sum(r.k for r in batch)
    tokens = torch.zeros(rows, width, dtype=torch.long)
    adv = torch.zeros(rows, width)
    mask = torch.zeros(rows, width)
    at = 0
    for r in batch:
        length = r.tokens.shape[1]
        tokens[at:at + r.k, :length] = r.tokens
        m = torch.zeros(r.k, width)
        m[:, :length] = r.label_mask().float()
        a = advantages.group_advantages(r.rewards, loss.baseline, loss.normalize_std).float()
        mask[at:at + r.k] = m
        adv[at:at + r.k] = a.unsqueeze(1) * m
        at += r.k
    return {"tokens": tokens, "labels": shift_labels(tokens), "advantages": adv,
            "token_scale": mask / mask.sum().clamp_min(1)}


def grpo_step(policy: Policy, optimizer, batch: list[ProblemRollouts], loss: LossSettings,
              clip_min: float, clip_max: float, inner_epochs: int, max_rows: int | None) -> dict:
    """Clipped-ratio GRPO update: μ = ``inner_epochs`` optimizer steps over the whole batch."""
    model = policy.model
    policy.zero_grad(optimizer)
    microbatches = split_rows(pack(batch, loss), max_rows)
    old = run_microbatches(model, microbatches, loss_fn=None, forward_only=True, temperature=loss.temperature)
    for mb, logp in zip(microbatches, old):  # only the last pipeline stage gets (and needs) them
        mb["old_logprobs"] = logp
    losses = []
    for _ in range(inner_epochs):
        out = run_microbatches(
            model, microbatches,
            lambda logp, mb: grpo.clipped_surrogate(logp, mb["old_logprobs"], mb["advantages"],
                                                  mb["token_scale"], clip_min, clip_max),
            finalize_grads=True, temperature=loss.temperature)
        policy.step(optimizer)
        losses.append(float(sum(out)) if out else float("nan"))
    return {"loss": losses[-1]}
