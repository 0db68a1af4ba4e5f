"""Supervised warm-up: a few Adam steps on correct answers so the policy's pass rates are mixed.

GRPO (and so GradAlign) needs groups whose rollouts disagree; a randomly initialised GPT gets
everything wrong. The official runs start from an instruct model; the CPU job starts from this.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from nemo_gradalign.data import tasks
from nemo_gradalign.megatron.step import run_microbatches, shift_labels


def answer_batch(problems: list[tasks.Problem], weight: float) -> dict[str, torch.Tensor]:
    """Prompt+answer token rows, with ``weight`` on each label position that predicts the answer."""
    tokens = torch.tensor([p.prompt + p.answer for p in problems], dtype=torch.long)
    prompt_len = len(problems[0].prompt)
    weights = torch.zeros(tokens.shape, dtype=torch.float32)
    weights[:, prompt_len - 1: prompt_len - 1 + tasks.ANSWER_LEN] = weight
    return {"tokens": tokens, "labels": shift_labels(tokens), "weights": weights}


def supervised_warmup(model, problems: list[tasks.Problem], steps: int, batch_size: int = 64,
                      lr: float = 1e-3, seed: int = 0) -> None:
    """Mean answer-token cross-entropy, Adam; data-parallel ranks split each batch."""
    from megatron.core import parallel_state as ps

    if steps <= 0:
        return
    dp_size, dp_rank = ps.get_data_parallel_world_size(), ps.get_data_parallel_rank()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=lr)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        picks = torch.randint(0, len(problems), (batch_size,), generator=gen).tolist()
        mine = [problems[i] for i in picks[dp_rank::dp_size]]
        batch = answer_batch(mine, 1.0 / (batch_size * tasks.ANSWER_LEN))
        run_microbatches(model, [batch], lambda ce, mb: (ce * mb["weights"]).sum())
        if dp_size > 1:
            for p in params:
                dist.all_reduce(p.grad, group=ps.get_data_parallel_group())
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
