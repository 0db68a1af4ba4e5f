"""Bad rewards and a validation set without signal: clear errors or documented handling."""

from __future__ import annotations

import math

import pytest
import torch

from helpers import random_problems
from nemo_gradalign.config import GradAlignConfig
from nemo_gradalign.data import tasks
from nemo_gradalign.engine import EmptyReferenceGradient, EngineGroups, GradientEngine
from nemo_gradalign.megatron import parallel
from nemo_gradalign.megatron.model import ModelSpec
from nemo_gradalign.megatron.policy import Policy
from nemo_gradalign.megatron.problem_runner import ProblemRunner
from nemo_gradalign.selection.selector import Selector
from nemo_gradalign.trainer.rollouts import collect_rollouts

SPEC = ModelSpec(num_layers=2, hidden_size=32, num_attention_heads=4, vocab_size=32)


def _selector_rank(rank):
    parallel.init_distributed(parallel.Layout())
    policy = Policy(SPEC)
    engine = GradientEngine(policy.named_parameters(), EngineGroups.from_megatron())
    runner = ProblemRunner(policy.model)
    dead = [p for p in random_problems(3, 16) if not p.has_gradient()]
    alive = random_problems(4, 6)
    served = {"val": dead}
    selector = Selector(GradAlignConfig(enabled=True), engine, runner, lambda step: served["val"])
    candidates = random_problems(5, 8)

    with pytest.raises(EmptyReferenceGradient, match="same reward"):  # nothing to align with yet
        selector.select(candidates, keep=4, step=0)
    served["val"] = alive
    first = selector.select(candidates, keep=4, step=1)
    assert first.metrics["gradalign/reference_step"] == 1 and len(first.picked) == 4

    served["val"] = dead  # later the policy saturates the validation set: keep the last G
    later = selector.select(candidates, keep=4, step=2)
    assert later.metrics["gradalign/reference_kept_stale"] == 1
    assert later.metrics["gradalign/reference_step"] == 1
    assert torch.equal(later.scores, first.scores)
    assert not any(math.isnan(s) for s in later.scores.tolist())


@pytest.mark.slow
def test_validation_set_without_signal_is_an_error_first_and_a_logged_fallback_later():
    parallel.spawn(_selector_rank, 1)


def _nan_reward_rank(rank):
    parallel.init_distributed(parallel.Layout())
    policy = Policy(SPEC)
    problems = tasks.generate(["sort"], [3], 4, seed=0)
    with pytest.raises(ValueError, match=r"problem 0: non-finite rewards \[nan"):
        collect_rollouts(policy.model, problems, 4, 0, "t", reward_fn=lambda p, r, g: float("nan"))
    with pytest.raises(ValueError, match=r"non-finite rewards \[inf"):
        collect_rollouts(policy.model, problems, 4, 0, "t", reward_fn=lambda p, r, g: float("inf"))


@pytest.mark.slow
def test_nan_or_inf_rewards_stop_the_run_naming_the_problem():
    parallel.spawn(_nan_reward_rank, 1)
