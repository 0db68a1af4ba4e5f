"""Compute accounting: the meter against hand-worked tallies, and real runs whose logged token
counts equal what their sizes and logged selections imply (sequences of one length: 10 tokens)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from nemo_gradalign.trainer.compute import ComputeMeter

RECIPE = str(Path(__file__).parents[2] / "recipes" / "embedded" / "noisy.yaml")
# sort of 4 digits only: prompt [op d d d d =] + 4 answer tokens = 10 tokens per rollout
TINY = ["data.lengths=[4]", "grpo.num_prompts_per_step=4", "grpo.num_generations_per_prompt=4",
        "grpo.val_period=2", "data.pool_size=128", "data.validation_size=8", "data.eval_size=8",
        "data.warmup_size=300", "gradalign.selection_ratio=2", "gradalign.validation.rollouts_per_problem=4",
        "checkpointing.enabled=false"]
SEQ = 10


def test_meter_weights_generation_one_and_forward_backward_three():
    meter = ComputeMeter()
    meter.add("generated", 100)
    meter.add("validation_generated", 40)  # a part of `generated`, not added again
    meter.add("scored", 20)
    meter.add("trained", 60)
    meter.add("trained_forward", 30)
    first = meter.close_step(1.5)
    assert first["compute/step"] == 100 + 30 + 3 * (20 + 60) == 370
    meter.add("generated", 10)
    second = meter.close_step(0.5)
    assert second["compute/step"] == 10 and second["compute/total"] == 380
    assert second["tokens/total_generated"] == 110 and second["tokens/scored"] == 0
    assert second["compute/total_seconds"] == 2.0
    again = ComputeMeter()
    again.load_state_dict(json.loads(json.dumps(meter.state_dict())))
    assert again.compute == 380


def test_cost_at_scale_prices_generation_twice_a_trained_token():
    meter = ComputeMeter(generation_price=2.0)
    for kind, tokens in (("generated", 90), ("scored", 20), ("trained", 60), ("trained_forward", 30), ("read", 3)):
        meter.add(kind, tokens)
    record = meter.close_step(1.0)
    # by hand, in trained tokens' forward+backward: 2 per generated, 1 per forward+backward, 1/3 per forward
    assert math.isclose(record["cost/step"], 2 * 90 + 20 + 60 + (30 + 3) / 3, rel_tol=1e-15)
    assert record["cost/total"] == record["cost/step"]


def _train(log_dir, *extra):
    subprocess.run([sys.executable, "-m", "nemo_gradalign.cli", "train", "--config", RECIPE, *TINY,
                    f"logger.log_dir={log_dir}", *extra], check=True, capture_output=True, timeout=600)
    lines = (Path(log_dir) / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


@pytest.mark.slow
def test_step_schedule_counts_candidates_validation_scoring_and_training(tmp_path):
    records = _train(tmp_path / "ga", "gradalign.schedule=step", "gradalign.refresh_every=2",
                     "grpo.max_num_steps=3")
    train = [r for r in records if r["kind"] == "train"]
    total = 0.0
    for i, r in enumerate(train):
        refreshed = i % 2 == 0  # steps 0 and 2 rebuild the validation gradient
        informative = sum(math.isfinite(row[0]) if row[0] is not None else False
                          for row in r["gradalign/candidate_scores"])
        val_gen = 8 * 4 * SEQ if refreshed else 0
        assert r["tokens/validation_generated"] == val_gen
        assert r["tokens/generated"] == 8 * 4 * SEQ + val_gen  # q·N = 8 candidates, 4 rollouts
        val_scored = round(r["gradalign/val_informative_share"] * 8) * 4 * SEQ if refreshed else 0
        assert r["tokens/scored"] == informative * 4 * SEQ + val_scored
        kept = r["train/problems"]
        assert r["tokens/trained_forward"] == kept * 4 * SEQ
        assert r["tokens/trained"] == 2 * kept * 4 * SEQ  # μ = 2 inner epochs
        step = r["tokens/generated"] + r["tokens/trained_forward"] + 3 * (r["tokens/scored"] + r["tokens/trained"])
        total += step
        assert r["compute/step"] == step and r["compute/total"] == total
    final_eval = [r for r in records if r["kind"] == "eval"][-1]
    assert final_eval["compute/total"] == total
    assert final_eval["tokens/total_eval_generated"] == 3 * 8 * 2 * SEQ  # evals at 0, 2, 3


@pytest.mark.slow
def test_max_compute_stops_plain_grpo_at_the_first_step_reaching_it(tmp_path):
    per_step = 4 * 4 * SEQ * (1 + 1 + 3 * 2)  # generate, old log-probs, μ = 2 forward+backward
    records = _train(tmp_path / "grpo", "gradalign.enabled=false", "grpo.max_num_steps=50",
                     f"grpo.max_compute={2.5 * per_step}")
    train = [r for r in records if r["kind"] == "train"]
    assert [r["compute/total"] for r in train] == [per_step, 2 * per_step, 3 * per_step]
    assert [r["step"] for r in records if r["kind"] == "eval"] == [0, 2, 3]  # the stop is evaluated


@pytest.mark.slow
def test_a_baseline_budgeted_by_compute_and_cost_runs_until_both_are_reached(tmp_path):
    tokens = 4 * 4 * SEQ
    per_step_compute, per_step_cost = tokens * (1 + 1 + 3 * 2), tokens * (2 + 1 / 3 + 2)
    records = _train(tmp_path / "grpo", "gradalign.enabled=false", "grpo.max_num_steps=50",
                     f"grpo.max_compute={1.5 * per_step_compute}", f"grpo.max_cost={2.5 * per_step_cost}")
    train = [r for r in records if r["kind"] == "train"]
    assert len(train) == 3 and math.isclose(train[-1]["cost/total"], 3 * per_step_cost, rel_tol=1e-12)
    assert math.isclose([r for r in records if r["kind"] == "eval"][-1]["cost/total"], 3 * per_step_cost,
                        rel_tol=1e-12)
