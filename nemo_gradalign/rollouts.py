"""A problem's group of rollouts: the unit that is scored, selected and trained on."""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field

import torch

from nemo_gradalign import grpo


@dataclass
class ProblemRollouts:
    """k sampled responses to one prompt, right-padded into one token matrix.

    tokens[j] = prompt + response_j + padding; rewards[j] is response j's reward.
    """

    problem_id: int
    tokens: torch.Tensor  # [k, L] long
    prompt_len: int
    response_lens: torch.Tensor  # [k] long
    rewards: torch.Tensor  # [k] float
    tags: dict = field(default_factory=dict)  # e.g. {"corrupted": True, "task": "sort"}
    # Optional [k, L] mask over *tokens* whose log-prob is trained (NeMo RL's token_mask, e.g.
    # multi-turn assistant tokens). Without it the response is tokens[prompt_len:][:response_len].
    token_mask: torch.Tensor | None = None

    def __post_init__(self):
        k = self.tokens.shape[0]
        if k == 0:
            raise ValueError(f"problem {self.problem_id}: empty group (no rollouts)")
        if self.rewards.shape != (k,) or self.response_lens.shape != (k,):
            raise ValueError(
                f"problem {self.problem_id}: {k} rollouts but rewards {tuple(self.rewards.shape)} "
                f"and response_lens {tuple(self.response_lens.shape)}"
            )
        if self.token_mask is not None and self.token_mask.shape != self.tokens.shape:
            raise ValueError(f"problem {self.problem_id}: token_mask {tuple(self.token_mask.shape)} "
                             f"does not match tokens {tuple(self.tokens.shape)}")
        if not torch.isfinite(self.rewards).all():
            raise ValueError(
                f"problem {self.problem_id}: non-finite rewards {self.rewards.tolist()} "
                "(a reward function returned NaN/inf)"
            )

    @property
    def k(self) -> int:
        return self.tokens.shape[0]

    @property
    def informative(self) -> bool:
        """False when g_i is exactly zero, so its backward is skipped and it is never NaN:
        every rollout got the same reward, or every distinct response got on average the
        group's mean reward (identical responses with different rewards — common for a
        confident policy under noisy rewards — cancel: their advantages sum to zero).
        """
        if not grpo.is_informative(self.rewards):
            return False
        centred = self.rewards.double() - self.rewards.double().mean()
        net: dict[tuple, float] = {}
        for j, a in enumerate(centred.tolist()):
            key = self.response(j)
            net[key] = net.get(key, 0.0) + a
        return any(abs(v) > 1e-9 for v in net.values())

    def response(self, j: int) -> tuple:
        """Rollout j's trained tokens (with their positions when a token_mask is given)."""
        if self.token_mask is None:
            return tuple(self.tokens[j, self.prompt_len:self.prompt_len + int(self.response_lens[j])].tolist())
        pos = self.token_mask[j].nonzero().flatten()
        return tuple(zip(pos.tolist(), self.tokens[j, pos].tolist()))

    def label_mask(self) -> torch.Tensor:
        """[k, L] mask over label positions: position t predicts token t+1."""
        if self.token_mask is None:
            return grpo.response_mask(self.prompt_len, self.response_lens, self.tokens.shape[1])
        mask = torch.zeros_like(self.token_mask, dtype=torch.bool)
        mask[:, :-1] = self.token_mask[:, 1:].bool()
        return mask

    @property
    def pass_rate(self) -> float:
        """Share of rollouts rewarded (rewards are 0/1 verifier outcomes)."""
        return float((self.rewards > 0.5).float().mean())

    def fingerprint(self) -> int:
        """CRC32 of the sampled tokens: tells whether two runs drew the same rollouts."""
        return zlib.crc32(self.tokens.numpy().tobytes())

    def token_weights(self, baseline: grpo.Baseline = "mean", normalize_std: bool = False,
                      aggregation: grpo.Aggregation = "token_mean") -> torch.Tensor:
        """[k, L] weights w with surrogate loss = Σ w · log π (see grpo.surrogate_weights)."""
        adv = grpo.group_advantages(self.rewards, baseline, normalize_std)
        return grpo.surrogate_weights(self.label_mask(), adv, aggregation)
