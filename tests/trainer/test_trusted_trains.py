"""gradalign.validation.train_share: the trusted set trains and steers. In real training runs
(`nemo-gradalign train`, spawned gloo ranks) a step generates exactly what plain GRPO generates,
part of its batch is the trusted set (each trusted problem once per pass, never an evaluation
problem), G is built from those groups alone (no rollouts of its own), the memory remembers only
the pool's problems, and kill -9 → resume is exact."""

from __future__ import annotations

import pytest

from test_memory_schedule import MEMORY, RECIPE, TINY, _cmd, _train
from test_training_runs import killed_and_resumed

from nemo_gradalign.config import ConfigError
from nemo_gradalign.trainer.config import load_embedded_recipe
from nemo_gradalign.trainer.sets import build_sets, preflight

N, K, SEQ, VAL = 4, 4, 10, 8  # as TINY has them
TRUSTED = [*MEMORY, "++gradalign.validation.train_share=0.5"]  # 2 of the 4 problems a step


@pytest.mark.slow
def test_trusted_groups_are_trained_on_and_build_g_with_nothing_generated_for_g_alone(tmp_path):
    steps = 8
    records = _train(tmp_path, *TRUSTED, f"grpo.max_num_steps={steps}")
    sets = build_sets(load_embedded_recipe(RECIPE, [*TINY, *TRUSTED]))
    trusted_ids = [p.problem_id for p in sets.validation]
    held_out = {p.problem_id for p in sets.evaluation}
    trained = N * K * SEQ
    drawn = []
    for i, r in enumerate(records):
        assert r["tokens/generated"] == trained and r["tokens/validation_generated"] == 0  # plain GRPO's
        assert r["train/problems"] == N and len(r["train/trusted_ids"]) == 2 and len(r["gradalign/picked_ids"]) == 2
        assert not held_out & {*r["train/trusted_ids"], *r["gradalign/picked_ids"]}  # evaluation stays apart
        if i % 2 == 0:  # refresh_every=2: G from this step's 2 trusted groups, those with a gradient
            informative = r["gradalign/val_informative_share"] * 2
            assert informative == round(informative)
            assert r["tokens/scored"] == round(informative) * K * SEQ
            assert r.get("gradalign/reference_missing") or r["gradalign/reference_step"] >= 0
        else:
            assert r["tokens/scored"] == 0
        assert r["tokens/trained"] == 2 * trained and r["tokens/read"] == (0 if "gradalign/reference_missing" in r else trained)
        assert r["gradalign/memory_visits"] == 2 * (i + 1)  # the memory holds the pool's picks only
        drawn += r["train/trusted_ids"]
    per_pass = VAL // 2  # 4 steps a pass over the 8 trusted problems
    for start in range(0, steps, per_pass):
        assert sorted(drawn[2 * start:2 * (start + per_pass)]) == sorted(trusted_ids)


@pytest.mark.slow
def test_g_from_update_scores_nothing_after_the_first_step_and_resumes_exactly(tmp_path):
    """validation.g_from_update: only step 1 builds G with a pass (no G exists yet); every later G is
    the last update's trusted share (built at the step before), and kill -9 -> resume is exact."""
    steps = 6
    flags = [*TRUSTED, "++gradalign.validation.g_from_update=true", "gradalign.refresh_every=1"]
    records = _train(tmp_path / "run", *flags, f"grpo.max_num_steps={steps}")
    assert records[0]["tokens/scored"] > 0 and all(r["tokens/scored"] == 0 for r in records[1:])
    for i, r in enumerate(records[1:], start=1):
        assert r["tokens/generated"] == N * K * SEQ and r["tokens/read"] == N * K * SEQ
        stale = any("gradalign/reference_kept_stale" in q for q in records[:i])
        assert r["gradalign/reference_step"] == i or stale  # G copied off the update of step i
    run = [*flags, "grpo.max_num_steps=8", "checkpointing.enabled=true", "checkpointing.save_period=2"]
    a, b, killed_at = killed_and_resumed(lambda log_dir: _cmd(log_dir, *run), tmp_path / "killed", kill_at=4, last=8)
    assert killed_at < len(a) and a == b  # the copied G is in the checkpoint: picks and cosines bit for bit


def test_train_share_is_checked_with_its_field_before_any_rank():
    with pytest.raises(ConfigError, match=r"validation.train_share=0.5 trains the trusted set inside the memory "
                                          r"schedule's batch: set schedule=memory \(got 'step'\)"):
        load_embedded_recipe(RECIPE, [*TINY, "gradalign.schedule=step", "++gradalign.validation.train_share=0.5"])
    for share, count in ((0.1, 0), (0.9, 4)):
        recipe = load_embedded_recipe(RECIPE, [*TINY, *MEMORY, f"++gradalign.validation.train_share={share}"])
        with pytest.raises(ConfigError, match=rf"gradalign.validation.train_share={share} of grpo.num_prompts_per_step"
                                              rf"=4 is {count} trusted problems a step: it must leave between 1 and 3"):
            preflight(recipe)
    with pytest.raises(ConfigError, match=r"grpo.trusted_share=0.5 is plain GRPO's control"):
        load_embedded_recipe(RECIPE, [*TINY, *MEMORY, "++grpo.trusted_share=0.5"])
    with pytest.raises(ConfigError, match=r"gradalign.validation.train_share: Input should be less than 1"):
        load_embedded_recipe(RECIPE, [*TINY, *MEMORY, "++gradalign.validation.train_share=1"])
    with pytest.raises(ConfigError, match=r"gradalign.steer=false is NeMo RL's setting .* here it is "
                                          r"gradalign.enabled=false with grpo.trusted_share=0.5"):
        load_embedded_recipe(RECIPE, [*TINY, *MEMORY, "++gradalign.validation.train_share=0.5", "++gradalign.steer=false"])


@pytest.mark.slow
def test_the_plain_grpo_control_trains_the_same_trusted_share_without_g(tmp_path):
    """grpo.trusted_share (demo: grpo-t50): the same trusted draws, the pool's half drawn as plain GRPO
    draws, nothing scored or read: what GradAlign's trusted share is measured against."""
    steps = 4
    control = _train(tmp_path / "control", "gradalign.enabled=false", "++grpo.trusted_share=0.5",
                     f"grpo.max_num_steps={steps}")
    gradalign = _train(tmp_path / "gradalign", *TRUSTED, f"grpo.max_num_steps={steps}")
    for c, g in zip(control, gradalign):
        assert c["train/trusted_ids"] == g["train/trusted_ids"] and len(c["gradalign/picked_ids"]) == 2
        assert c["tokens/generated"] == N * K * SEQ == g["tokens/generated"]
        assert c["tokens/scored"] == 0 and c.get("tokens/read", 0) == 0


@pytest.mark.slow
def test_kill_9_then_resume_equals_an_uninterrupted_trusted_run(tmp_path):
    run = [*TRUSTED, "grpo.max_num_steps=10", "checkpointing.enabled=true", "checkpointing.save_period=2"]
    a, b, killed_at = killed_and_resumed(lambda log_dir: _cmd(log_dir, *run), tmp_path, kill_at=4, last=10)
    assert killed_at < len(a)
    assert a == b  # picks, trusted draws, cosines, memory counts and compute, bit for bit
