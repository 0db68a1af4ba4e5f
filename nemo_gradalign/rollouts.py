"""A problem's group of rollouts: the unit that is scored, selected and trained on."""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field

import torch

from nemo_gradalign import advantages, grpo


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
    # advantages and weights are exact rational arithmetic: computed once per setting (a group's
    # tokens and rewards are not changed after it is built)
    _memo: dict = field(default_factory=dict, init=False, repr=False, compare=False)

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

    def has_gradient(self, baseline: advantages.Baseline = "mean", normalize_std: bool = False) -> bool:
        """False when g_i is exactly zero under these advantage settings, so its backward is
        skipped and it is never NaN (advantages.has_gradient: per distinct response, exact)."""
        key = ("has_gradient", baseline, normalize_std)
        if key not in self._memo:
            self._memo[key] = advantages.has_gradient(self.rewards, self.responses(), baseline, normalize_std)
        return self._memo[key]

    def responses(self) -> list[tuple | None]:
        """Per rollout, what determines its log-prob gradient: its tokens up to the last trained
        one and which of them are trained (equal keys, equal gradients); None when nothing of
        it is trained (no gradient at all)."""
        keys = []
        for row, tokens in zip(self.label_mask(), self.tokens):
            trained = row.nonzero().flatten()
            end = int(trained[-1]) + 2 if trained.numel() else 0  # label t predicts token t + 1
            keys.append((tuple(tokens[:end].tolist()), tuple(trained.tolist())) if end else None)
        return keys

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

    def token_weights(self, baseline: advantages.Baseline = "mean", normalize_std: bool = False,
                      aggregation: grpo.Aggregation = "token_mean") -> torch.Tensor:
        """[k, L] float64 weights w with surrogate loss = Σ w · log π (grpo.surrogate_weights)."""
        key = ("token_weights", baseline, normalize_std, aggregation)
        if key not in self._memo:
            adv = advantages.group_advantages(self.rewards, baseline, normalize_std)
            self._memo[key] = grpo.surrogate_weights(self.label_mask(), adv, aggregation)
        return self._memo[key].clone()


def rollout_tokens(rollouts, only=None) -> int:
    """Real tokens of the given groups (every row: prompt + response); ``only`` keeps the groups
    it is true for. The unit of the compute accounting (trainer/compute.py)."""
    return sum(int(r.tokens.numel()) for r in rollouts if only is None or only(r))
