"""Advantages, masks and the surrogate against values worked out by hand."""

from __future__ import annotations

import pytest
import torch

from nemo_gradalign import grpo
from nemo_gradalign.rollouts import ProblemRollouts


def test_mean_centred_advantages():
    adv = grpo.group_advantages(torch.tensor([1.0, 0.0, 0.0, 1.0]))
    assert adv.tolist() == [0.5, -0.5, -0.5, 0.5]


def test_leave_one_out_advantages():
    # r = [1, 0, 0]: baselines are mean of the others = [0, 0.5, 0.5]
    adv = grpo.group_advantages(torch.tensor([1.0, 0.0, 0.0]), baseline="leave_one_out")
    assert torch.allclose(adv, torch.tensor([1.0, -0.5, -0.5], dtype=torch.float64))


def test_std_normalised_advantages():
    # mean baseline: mean 0.25, population std sqrt(0.25*0.75)
    adv = grpo.group_advantages(torch.tensor([1.0, 0.0, 0.0, 0.0]), normalize_std=True)
    std = (0.25 * 0.75) ** 0.5
    expected = torch.tensor([0.75, -0.25, -0.25, -0.25], dtype=torch.float64) / (std + 1e-6)
    assert torch.allclose(adv, expected)
    # leave-one-out: rollout 0's others are all 0 -> std 0 -> left unscaled
    adv = grpo.group_advantages(torch.tensor([1.0, 0.0, 0.0]), "leave_one_out", True)
    assert adv[0] == 1.0
    others_std = (0.5 * 0.5) ** 0.5  # others of rollout 1 are {1, 0}
    assert torch.isclose(adv[1], torch.tensor(-0.5 / (others_std + 1e-6), dtype=torch.float64))


def test_uninformative_group_has_zero_advantage_in_every_mode():
    for baseline in ("mean", "leave_one_out"):
        for std in (False, True):
            adv = grpo.group_advantages(torch.ones(5), baseline, std)
            assert (adv == 0).all() and torch.isfinite(adv).all()
    assert not grpo.is_informative(torch.ones(3)) and grpo.is_informative(torch.tensor([0.0, 1.0]))


def test_bad_rewards_and_options_are_clear_errors():
    with pytest.raises(ValueError, match="finite"):
        grpo.group_advantages(torch.tensor([1.0, float("nan")]))
    with pytest.raises(ValueError, match="empty group"):
        grpo.group_advantages(torch.tensor([]))
    with pytest.raises(ValueError, match="baseline"):
        grpo.group_advantages(torch.tensor([1.0, 0.0]), baseline="median")
    with pytest.raises(ValueError, match="non-finite rewards"):
        ProblemRollouts(0, torch.ones(2, 3, dtype=torch.long), 1, torch.tensor([2, 2]),
                        torch.tensor([1.0, float("inf")]))
    with pytest.raises(ValueError, match="empty group"):
        ProblemRollouts(0, torch.ones(0, 3, dtype=torch.long), 1, torch.tensor([], dtype=torch.long),
                        torch.tensor([]))


def test_response_mask_marks_label_positions():
    # prompt of 3 tokens; responses of 2 and 1 tokens; labels at t predict token t+1
    mask = grpo.response_mask(3, torch.tensor([2, 1]), seq_len=6)
    assert mask.int().tolist() == [[0, 0, 1, 1, 0, 0], [0, 0, 1, 0, 0, 0]]


def test_surrogate_weights_token_and_sequence_mean():
    mask = grpo.response_mask(1, torch.tensor([2, 1]), seq_len=3)  # 3 response tokens in all
    adv = torch.tensor([0.5, -0.5])
    w = grpo.surrogate_weights(mask, adv, "token_mean")
    assert torch.allclose(w, torch.tensor([[-0.5 / 3, -0.5 / 3, 0], [0.5 / 3, 0, 0]]))
    w = grpo.surrogate_weights(mask, adv, "sequence_mean")  # -A_j / (k * n_j)
    assert torch.allclose(w, torch.tensor([[-0.5 / 4, -0.5 / 4, 0], [0.5 / 2, 0, 0]]))
    logp = torch.tensor([[-1.0, -2.0, -9.0], [-3.0, -9.0, -9.0]])
    # token_mean: -(0.5*(-1-2) + (-0.5)*(-3)) / 3 = -(-1.5 + 1.5)/3 = 0
    assert grpo.policy_surrogate(logp, grpo.surrogate_weights(mask, adv, "token_mean")).item() == 0.0
    # sequence_mean: -mean(0.5*(-3/2), -0.5*(-3)) = -mean(-0.75, 1.5) = -0.375
    loss = grpo.policy_surrogate(logp, grpo.surrogate_weights(mask, adv, "sequence_mean"))
    assert abs(loss.item() + 0.375) < 1e-7


def test_identical_responses_with_different_rewards_are_uninformative():
    """Noisy reward on a confident policy: same answer, rewards 1 and 0 -> advantages cancel, g = 0."""
    same = torch.tensor([[5, 6, 7, 8], [5, 6, 7, 8], [5, 6, 7, 8], [5, 6, 7, 8]])
    lens = torch.full((4,), 2)
    assert not ProblemRollouts(0, same, 2, lens, torch.tensor([1.0, 0.0, 1.0, 0.0])).informative
    mixed = same.clone()
    mixed[1, 3] = 9  # two distinct answers with different mean rewards: a real gradient
    assert ProblemRollouts(0, mixed, 2, lens, torch.tensor([1.0, 0.0, 1.0, 0.0])).informative
    # two distinct answers, each rewarded once and not once: both means equal the group mean
    pairs = same.clone()
    pairs[[1, 3], 3] = 9
    assert not ProblemRollouts(0, pairs, 2, lens, torch.tensor([1.0, 1.0, 0.0, 0.0])).informative
