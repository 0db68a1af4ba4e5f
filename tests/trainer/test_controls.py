"""The demo's controls (issue 18): plain GRPO on the trusted set alone or added to the pool, and the
GRESO-like zero-variance skip with no validation gradient. What each trains on, that evaluation
stays on the held-out set, that the skip follows reward variance, that nothing is charged for a G
that is never built, and the refusals."""

from __future__ import annotations

import json
import subprocess

import pytest

from helpers import problem_from_responses
from test_memory_schedule import K, N, POOL, RECIPE, SEQ, TINY, _cmd

from nemo_gradalign.config import ConfigError, MemorySamplerConfig
from nemo_gradalign.jobs.demo import recipe_path
from nemo_gradalign.jobs.demo_methods import is_budgeted, method_overrides
from nemo_gradalign.selection.schedules import MemorySchedule
from nemo_gradalign.trainer.compute import ComputeMeter
from nemo_gradalign.trainer.config import load_embedded_recipe
from nemo_gradalign.trainer.memory_feedback import ZeroVarianceFeedback
from nemo_gradalign.trainer.sets import build_schedule, build_sets

SMALL = ["data.pool_size=64", "data.validation_size=16", "data.eval_size=8", "data.warmup_size=50",
         "gradalign.validation.max_problems=8"]


def _sets(method: str, regime: str = "noisy"):
    recipe = load_embedded_recipe(recipe_path(regime), [*method_overrides(method), *SMALL])
    return recipe, build_sets(recipe)


def _ids(problems) -> list[tuple]:
    return [(p.problem_id, p.op, tuple(p.digits), tuple(p.key or ()), tuple(sorted(p.tags))) for p in problems]


def test_controls_are_budgeted_plain_grpo():
    for name in ("greso", "grpo-trusted", "grpo-pooltrusted"):
        assert is_budgeted(name) and "gradalign.enabled=false" in method_overrides(name)
    with pytest.raises(ValueError, match="greso, grpo-trusted, grpo-pooltrusted"):
        method_overrides("trusted")


@pytest.mark.parametrize("regime", ["noisy", "imbalance_length"])
def test_trusted_controls_train_on_the_trusted_set_and_evaluate_on_the_held_out_set(regime):
    _, plain = _sets("grpo", regime)
    _, trusted = _sets("grpo-trusted", regime)
    _, both = _sets("grpo-pooltrusted", regime)
    assert len(plain.validation) == 8  # the trusted set as GradAlign sees it (max_problems)
    assert _ids(trusted.pool) == _ids(plain.validation)
    assert _ids(both.pool) == _ids(plain.pool) + _ids(plain.validation)
    for sets in (trusted, both):
        assert _ids(sets.evaluation) == _ids(plain.evaluation) and _ids(sets.validation) == _ids(plain.validation)
    assert not set(_ids(plain.evaluation)) & set(_ids(plain.validation))


def test_greso_is_the_memory_sampler_with_a_zero_variance_skip():
    recipe, sets = _sets("greso")
    assert not recipe.gradalign.enabled and recipe.grpo.sampler == "greso"
    assert recipe.gradalign.memory.zero_skip_step == 0.5
    assert isinstance(build_schedule(recipe, sets.pool), MemorySchedule)


@pytest.mark.parametrize("overrides, message", [
    (["+grpo.sampler=greso"], r"grpo.sampler='greso' is plain GRPO .*: set gradalign.enabled=false"),
    (["+grpo.sampler=greso", "gradalign.enabled=false"], r"gradalign.memory.zero_skip_step=0 never skips"),
    (["+grpo.sampler=uniform"], r"grpo.sampler: Input should be 'shuffle' or 'greso' \(got 'uniform'\)"),
    (["+grpo.train_on=validation"], r"grpo.train_on: Input should be 'pool', 'trusted' or 'pool\+trusted'"),
])
def test_control_settings_are_checked_with_their_field(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_embedded_recipe(recipe_path("noisy"), overrides)


def test_zero_variance_feedback_keeps_streaks_by_reward_variance_and_charges_nothing():
    schedule = MemorySchedule(6, 3, MemorySamplerConfig(zero_skip_step=0.5))
    compute = ComputeMeter()
    pool = [problem_from_responses(i, [1, 2], [[3], [4]], [0.0, 1.0]) for i in range(6)]  # tags: none
    feedback = ZeroVarianceFeedback(schedule, lambda r: bool(r.rewards.std() > 0), compute, pool)
    same, mixed = [1.0, 1.0, 1.0], [0.0, 1.0, 1.0]
    expected = {}
    for step, rewards in enumerate([(same, mixed, same), (same, same, mixed)]):
        ids = schedule.batch(step)  # 6 problems, 3 a step: two steps visit each once
        batch = [problem_from_responses(i, [1, 2], [[3]] * 3, r) for i, r in zip(ids, rewards)]
        assert feedback.reading(step, {}) is None
        record = feedback.record(step, ids, batch)
        assert record["gradalign/batch_zero_gradient"] == [r is same for r in rewards]
        assert record["gradalign/batch_cosines"] == [None] * 3
        expected.update({i: int(r is same) for i, r in zip(ids, rewards)})
    assert {i: int(schedule.memory.zero_streak[i]) for i in range(6)} == expected
    assert schedule.memory.visits.tolist() == [1] * 6 and schedule.memory.scored.tolist() == [0] * 6
    assert compute.step == {k: 0 for k in compute.step}


def test_greso_run_builds_no_validation_gradient_and_skips_only_zero_variance_problems(tmp_path):
    steps = 12  # 16 problems, 4 a step: the first 4 steps explore, the other 8 revisit and skip
    proc = subprocess.run(_cmd(tmp_path, "gradalign.enabled=false", "+grpo.sampler=greso",
                               "+gradalign.memory.zero_skip_step=0.5", f"grpo.max_num_steps={steps}"),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["kind"] == "train"]
    trained = N * K * SEQ
    streak: dict[str, int] = {}  # oracle: consecutive zero-gradient visits, replayed from the log
    for r in train:
        assert r["tokens/validation_generated"] == r["tokens/scored"] == r["tokens/read"] == 0  # no G
        assert r["tokens/generated"] == r["tokens/trained_forward"] == trained
        assert r["compute/step"] == trained + trained + 3 * 2 * trained  # generation, old log-probs, μ = 2
        assert r["gradalign/skipped"] <= sum(s > 0 for s in streak.values())  # only zero-variance ones skip
        for pid, zero in zip(r["gradalign/picked_ids"], r["gradalign/batch_zero_gradient"]):
            streak[pid] = streak.get(pid, 0) + 1 if zero else 0
    assert [r["gradalign/explored"] for r in train[:POOL // N]] == [N] * (POOL // N)
    assert sum(r["gradalign/skipped"] for r in train) > 0
    evals = [r for r in records if r["kind"] == "eval"]
    assert [r["step"] for r in evals] == list(range(0, steps + 1, 2))


@pytest.mark.parametrize("train_on", ["trusted", "pool+trusted"])
def test_trusted_control_runs_train_only_on_what_they_name(tmp_path, train_on):
    steps = 6
    proc = subprocess.run(_cmd(tmp_path, "gradalign.enabled=false", f"+grpo.train_on={train_on}",
                               f"grpo.max_num_steps={steps}"), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    sets = build_sets(load_embedded_recipe(RECIPE, [*TINY, "gradalign.enabled=false"]))
    trusted, pool = {p.problem_id for p in sets.validation}, {p.problem_id for p in sets.pool}
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    picked = [set(r["gradalign/picked_ids"]) for r in records if r["kind"] == "train"]
    assert len(picked) == steps and all(len(p) == N for p in picked)
    allowed = trusted if train_on == "trusted" else trusted | pool
    assert set().union(*picked) == allowed and not trusted & pool  # 6 x 4 picks: one pass over 24, or 3 over 8


def test_simacc_memory_remembers_cosine_times_pass_rate_spread():
    """gradalign.method=simacc with the memory schedule: the memory holds cos · 4a(1−a), the step's
    record keeps the raw cosines."""
    import types

    import numpy as np
    import torch

    from helpers import problem_from_responses
    from nemo_gradalign.megatron.in_pass import InPassScores
    from nemo_gradalign.trainer.compute import ComputeMeter
    from nemo_gradalign.trainer.memory_feedback import MemoryFeedback

    schedule = MemorySchedule(4, 2, MemorySamplerConfig())
    ids = schedule.batch(0)
    batch = [problem_from_responses(i, [1, 2], [[3], [4], [5], [6]], rewards)
             for i, rewards in zip(ids, ([1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 0.0, 0.0]))]
    scores = InPassScores(ids, torch.tensor([0.3, -0.2], dtype=torch.float64),
                          torch.tensor([1.0, 1.0], dtype=torch.float64), torch.tensor([False, False]))
    selector = types.SimpleNamespace(cfg=types.SimpleNamespace(method="simacc"))
    schedule.note_reference(0)
    pool = [types.SimpleNamespace(problem_id=i, tags={}) for i in range(4)]
    record = MemoryFeedback(schedule, selector, None, ComputeMeter(), pool).record(0, ids, batch, scores)
    # pass rates 1/4 and 1/2: factors 4·¼·¾ = 0.75 and 1
    assert np.allclose(schedule.memory.mean[ids], [0.3 * 0.75, -0.2], rtol=1e-15, atol=0)
    assert record["gradalign/batch_cosines"] == [0.3, -0.2]
