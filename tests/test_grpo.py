"""Masks and the surrogate against values worked out by hand (advantages: test_advantages.py)."""

from __future__ import annotations

import torch

from nemo_gradalign import grpo


def test_response_mask_marks_label_positions():
    # prompt of 3 tokens; responses of 2 and 1 tokens; labels at t predict token t+1
    mask = grpo.response_mask(3, torch.tensor([2, 1]), seq_len=6)
    assert mask.int().tolist() == [[0, 0, 1, 1, 0, 0], [0, 0, 1, 0, 0, 0]]


def test_surrogate_weights_token_and_sequence_mean():
    mask = grpo.response_mask(1, torch.tensor([2, 1]), seq_len=3)  # 3 response tokens in all
    adv = torch.tensor([0.5, -0.5])
    w = grpo.surrogate_weights(mask, adv, "token_mean")
    assert torch.allclose(w, torch.tensor([[-0.5 / 3, -0.5 / 3, 0], [0.5 / 3, 0, 0]], dtype=torch.float64))
    w = grpo.surrogate_weights(mask, adv, "sequence_mean")  # -A_j / (k * n_j)
    assert torch.allclose(w, torch.tensor([[-0.5 / 4, -0.5 / 4, 0], [0.5 / 2, 0, 0]], dtype=torch.float64))
    logp = torch.tensor([[-1.0, -2.0, -9.0], [-3.0, -9.0, -9.0]])
    # token_mean: -(0.5*(-1-2) + (-0.5)*(-3)) / 3 = -(-1.5 + 1.5)/3 = 0
    assert grpo.policy_surrogate(logp, grpo.surrogate_weights(mask, adv, "token_mean")).item() == 0.0
    # sequence_mean: -mean(0.5*(-3/2), -0.5*(-3)) = -mean(-0.75, 1.5) = -0.375
    loss = grpo.policy_surrogate(logp, grpo.surrogate_weights(mask, adv, "sequence_mean"))
    assert abs(loss.item() + 0.375) < 1e-7
