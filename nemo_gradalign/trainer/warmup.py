"""Supervised warm-up: a few Adam steps on correct answers so the policy's pass rates are mixed.

GRPO (and so GradAlign) needs groups whose rollouts disagree; a randomly initialised GPT gets
everything wrong. The official runs start from an instruct model; the CPU job starts from this.
"""

from __future__ import annotations

import torch

from nemo_gradalign.data import tasks
from nemo_gradalign.megatron.policy import Policy
from nemo_gradalign.megatron.step import run_microbatches, shift_labels


def answer_batch(problems: list[tasks.Problem], total_answer_tokens: int) -> dict[str, torch.Tensor]:
    """Right-padded prompt+answer rows; each label position that predicts an answer token
    weighs 1/total_answer_tokens (so the loss is the mean over the whole, DP-split batch)."""
    width = max(len(p.prompt) + len(p.answer) for p in problems)
    tokens = torch.zeros(len(problems), width, dtype=torch.long)
    weights = torch.zeros(len(problems), width, dtype=torch.float32)
    for row, p in enumerate(problems):
        seq = p.prompt + p.answer
        tokens[row, : len(seq)] = torch.tensor(seq)
        weights[row, len(p.prompt) - 1: len(seq) - 1] = 1.0 / total_answer_tokens
    return {"tokens": tokens, "labels": shift_labels(tokens), "weights": weights}


def supervised_warmup(policy: Policy, problems: list[tasks.Problem], steps: int,
                      batch_size: int = 64, lr: float = 1e-3, seed: int = 0) -> None:
    """Mean answer-token cross-entropy with its own (then discarded) megatron Adam;
    data-parallel ranks split each batch and DDP averages their grads."""
    from megatron.core import parallel_state as ps

    if steps <= 0:
        return
    dp_size, dp_rank = ps.get_data_parallel_world_size(), ps.get_data_parallel_rank()
    optimizer = policy.make_optimizer(lr)
    policy.zero_grad(optimizer)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        picks = torch.randint(0, len(problems), (batch_size,), generator=gen).tolist()
        total = sum(len(problems[i].answer) for i in picks)
        # DDP averages over DP ranks; scale so the result is the mean over the global batch
        batch = answer_batch([problems[i] for i in picks[dp_rank::dp_size]], total / dp_size)
        run_microbatches(policy.model, [batch], lambda logp, mb: -(logp * mb["weights"]).sum(),
                         finalize_grads=True)
        policy.step(optimizer)
