"""GRPO advantages pinned to NeMo RL's formula worked out by hand, and the exact g_i = 0 rule.

NeMo RL (calculate_baseline_and_std_per_prompt + GRPOAdvantageEstimator): baseline = mean of the
group, or of the k - 1 others; std = sample std (Bessel) of that same set; A / (std + 1e-6)
where std > 0. With a NeMo RL checkout (NEMO_RL_ROOT), the last test runs upstream's own
function on the same rewards.
"""

from __future__ import annotations

import ast
import os
from math import sqrt
from pathlib import Path

import pytest
import torch

from nemo_gradalign.advantages import exact_advantages, group_advantages, has_gradient
from nemo_gradalign.rollouts import ProblemRollouts

EPS = 1e-6
COMBOS = [("mean", False), ("mean", True), ("leave_one_out", False), ("leave_one_out", True)]


def _s(x):  # A / (std + eps), the scaled form
    return lambda a: a / (x + EPS)


# rewards -> {(baseline, normalize_std): advantages}, each worked out by hand
HAND = {
    (0.7,): {c: [0.0] for c in COMBOS},  # k = 1: the lone rollout is its own baseline
    (1.0, 0.0): {
        ("mean", False): [0.5, -0.5],
        ("mean", True): [_s(sqrt(0.5))(0.5), _s(sqrt(0.5))(-0.5)],  # sample var of {1,0} = 1/2
        ("leave_one_out", False): [1.0, -1.0],
        ("leave_one_out", True): [1.0, -1.0],  # a one-element "others" set has std 0
    },
    (0.3, 0.3): {c: [0.0, 0.0] for c in COMBOS},
    (1.0, 0.0, 0.0): {
        ("mean", False): [2 / 3, -1 / 3, -1 / 3],
        ("mean", True): [_s(sqrt(1 / 3))(a) for a in (2 / 3, -1 / 3, -1 / 3)],  # var (4/9+2/9)/2
        ("leave_one_out", False): [1.0, -0.5, -0.5],
        # rollout 0's others {0,0}: std 0, unscaled; rollout 1's others {1,0}: var 1/2
        ("leave_one_out", True): [1.0, _s(sqrt(0.5))(-0.5), _s(sqrt(0.5))(-0.5)],
    },
    (0.5, 0.5, 0.5): {c: [0.0] * 3 for c in COMBOS},
    (1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0): {
        ("mean", False): [5 / 8] * 3 + [-3 / 8] * 5,
        ("mean", True): [_s(sqrt(15 / 56))(a) for a in [5 / 8] * 3 + [-3 / 8] * 5],  # (3·25+5·9)/64/7
        ("leave_one_out", False): [5 / 7] * 3 + [-3 / 7] * 5,
        # a one's others: 2 ones, 5 zeros, var (2·25+5·4)/49/6 = 5/21; a zero's: 3 and 4, var 2/7
        ("leave_one_out", True): [_s(sqrt(5 / 21))(5 / 7)] * 3 + [_s(sqrt(2 / 7))(-3 / 7)] * 5,
    },
    (0.2,) * 7 + (1.5,): {
        ("mean", False): [0.2 - 2.9 / 8] * 7 + [1.5 - 2.9 / 8],
        # deviations -1.3/8 (x7) and 9.1/8: var (7·1.69 + 82.81)/64/7 = 94.64/448
        ("mean", True): [_s(sqrt(94.64 / 448))(a) for a in [0.2 - 2.9 / 8] * 7 + [1.5 - 2.9 / 8]],
        ("leave_one_out", False): [-1.3 / 7] * 7 + [1.3],
        # a 0.2's others: six 0.2 and 1.5, var (6·1.69 + 60.84)/49/6 = 11.83/49; 1.5's others all 0.2
        ("leave_one_out", True): [_s(sqrt(11.83) / 7)(-1.3 / 7)] * 7 + [1.3],
    },
    (8.0,) * 8: {c: [0.0] * 8 for c in COMBOS},
}


@pytest.mark.parametrize("rewards", list(HAND), ids=lambda r: f"k={len(r)}:{r[:3]}")
@pytest.mark.parametrize("combo", COMBOS, ids=lambda c: f"{c[0]}{'+std' if c[1] else ''}")
def test_group_advantages_match_nemo_rl_by_hand(rewards, combo):
    got = group_advantages(torch.tensor(rewards, dtype=torch.float64), *combo)
    want = torch.tensor(HAND[rewards][combo], dtype=torch.float64)
    # the hand values carry decimal rounding of 0.2, 1.3, ... (~1e-16 relative each)
    assert torch.allclose(got, want, rtol=1e-12, atol=1e-15), (got, want)


def test_cancelling_rewards_give_the_exact_value_not_a_blow_up():
    """[0.2, 0.2, 0.2, 1.5], leave-one-out + std in float32: the odd rollout's others are equal,
    so its std is 0 and its advantage 1.3 — not the ~1e6 a one-pass E[x²]−E[x]² gives."""
    adv = group_advantages(torch.tensor([0.2, 0.2, 0.2, 1.5]), "leave_one_out", True)
    assert abs(float(adv[3]) - (1.5 - float(torch.tensor(0.2)))) < 1e-15


def test_bad_rewards_and_options_are_clear_errors():
    with pytest.raises(ValueError, match="finite"):
        group_advantages(torch.tensor([1.0, float("nan")]))
    with pytest.raises(ValueError, match="empty group"):
        group_advantages(torch.tensor([]))
    with pytest.raises(ValueError, match="baseline"):
        group_advantages(torch.tensor([1.0, 0.0]), baseline="median")
    with pytest.raises(ValueError, match="non-finite rewards"):
        ProblemRollouts(0, torch.ones(2, 3, dtype=torch.long), 1, torch.tensor([2, 2]),
                        torch.tensor([1.0, float("inf")]))


def test_zero_gradient_is_decided_per_distinct_response_and_scale_free():
    a, b, c = "a", "b", "c"
    # equal rewards, or one response whose advantages cancel: g = 0 under every setting
    for combo in COMBOS:
        assert not has_gradient(torch.full((4,), 0.3), [a, b, c, a], *combo)
        assert not has_gradient(torch.tensor([1.0, 0.0, 1.0, 0.0]), [a] * 4, *combo)
    # [0, 0, .75, .25], three identical: cancels when A is mean-centred, not under LOO + std
    r = torch.tensor([0.0, 0.0, 0.75, 0.25])
    assert not has_gradient(r, [a, a, a, b], "mean", True)
    assert not has_gradient(r, [a, a, a, b], "leave_one_out", False)
    assert has_gradient(r, [a, a, a, b], "leave_one_out", True)
    # one response, rewards [1,1,1,0]: LOO + std scales the 1s (others {1,1,0}) but not the 0
    assert has_gradient(torch.tensor([1.0, 1.0, 1.0, 0.0]), [a] * 4, "leave_one_out", True)
    # tiny rewards are a real signal; no threshold
    for scale in (1e-10, 1.0, 1e10):
        assert has_gradient(torch.tensor([0.0, 1.0, 2.0], dtype=torch.float64) * scale, [a, b, c])
    # a rollout with nothing trained (None) adds no gradient
    assert not has_gradient(torch.tensor([1.0, 0.0]), [None, None])


def test_rollouts_key_responses_by_their_tokens():
    same = torch.tensor([[5, 6, 7, 8]] * 4)
    lens = torch.full((4,), 2)
    assert not ProblemRollouts(0, same, 2, lens, torch.tensor([1.0, 0.0, 1.0, 0.0])).has_gradient()
    mixed = same.clone()
    mixed[1, 3] = 9  # two distinct answers with different mean rewards: a real gradient
    assert ProblemRollouts(0, mixed, 2, lens, torch.tensor([1.0, 0.0, 1.0, 0.0])).has_gradient()
    pairs = same.clone()
    pairs[[1, 3], 3] = 9  # each answer rewarded once and not once: both cancel
    assert not ProblemRollouts(0, pairs, 2, lens, torch.tensor([1.0, 1.0, 0.0, 0.0])).has_gradient()


def _upstream_function(root: Path, name: str, namespace: dict):
    """Exec one top-level function or class of an upstream module from its source (the module's
    other imports — transformers, ray — are not needed by it and not installed here)."""
    for rel in ("nemo_rl/algorithms/utils.py", "nemo_rl/algorithms/advantage_estimator.py"):
        path = root / rel
        if not path.exists():
            continue
        tree = ast.parse(path.read_text())
        for node in tree.body:
            if getattr(node, "name", None) == name:
                exec(compile(ast.Module([node], []), str(path), "exec"), namespace)
                return namespace[name]
    return None


class _Config(dict):
    """Upstream's estimator reads its config as a dict (v0.6/v0.7) or by attribute (main)."""

    __getattr__ = dict.__getitem__


@pytest.fixture
def float64_default():
    """Upstream builds its masks with torch.eye/ones in the default dtype: run it in float64."""
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(torch.float32)


@pytest.mark.skipif(not os.environ.get("NEMO_RL_ROOT"), reason="set NEMO_RL_ROOT to a NeMo RL checkout")
def test_matches_upstream_source(float64_default):
    root = Path(os.environ["NEMO_RL_ROOT"])
    ns = {"torch": torch}
    baseline_and_std = _upstream_function(root, "calculate_baseline_and_std_per_prompt", ns)
    estimator = _upstream_function(root, "GRPOAdvantageEstimator", ns)
    gen = torch.Generator().manual_seed(0)
    for k in (1, 2, 3, 8):
        for rewards in ([torch.rand(k, generator=gen, dtype=torch.float64) for _ in range(5)]
                        + [torch.tensor(r, dtype=torch.float64) for r in HAND if len(r) == k]):
            prompts = torch.zeros(k, 3, dtype=torch.long)  # one prompt: one group
            for loo, std in ((False, False), (False, True), (True, False), (True, True)):
                base, sd = baseline_and_std(prompts, rewards, torch.ones(k), leave_one_out_baseline=loo)
                if estimator is not None:
                    cfg = _Config(use_leave_one_out_baseline=loo, normalize_rewards=std)
                    theirs = estimator(cfg, None).compute_advantage(prompts, rewards, torch.ones(k, 1))[:, 0]
                else:  # refs before the estimator class normalised inline in grpo_train, the same way
                    theirs = rewards - base
                    if std:
                        theirs = torch.where(sd > 0, theirs / (sd + EPS), theirs)
                ours = group_advantages(rewards, "leave_one_out" if loo else "mean", std)
                exact = exact_advantages(rewards, "leave_one_out" if loo else "mean", std)
                # where the set's rewards are all equal but upstream's one-pass E[x²]−E[x]² left a
                # rounding residue, upstream divides by it; the definition says std 0, unscaled
                cancelled = torch.tensor([v == 0 for v in exact.variance]) & (sd > 0) & std
                assert torch.allclose(ours[cancelled], (rewards - base)[cancelled], rtol=1e-14, atol=0)
                ours, theirs = ours[~cancelled], theirs[~cancelled]
                # upstream's count is `.float()`: its Bessel factor n/(n-1) is rounded to float32
                # (relative 2^-24 on the std); the rest is float64 one-pass on well-spread rewards
                assert torch.allclose(ours, theirs, rtol=2 ** -23, atol=1e-12), (k, loo, std, ours, theirs)
    # Whether upstream's one-pass variance leaves a residue (e.g. [0.2]*7 + [1.5], where it blows the
    # 1.5's advantage up) depends on the BLAS kernels' summation order: seen on one machine, not
    # on another (both AVX-512), so only the cases that do cancel are checked above, never their number.
