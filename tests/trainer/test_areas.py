"""Accuracy areas at a budget (steps or compute) and the demo's method names, against hand values."""

from __future__ import annotations

import math

import pytest

from nemo_gradalign.jobs.demo_methods import is_budgeted, method_overrides
from nemo_gradalign.trainer.summary import mean_area, value_at

CURVE = [(0, 0.2), (10, 0.4), (30, 0.8)]


def test_value_at_interpolates_and_is_nan_outside():
    assert value_at(CURVE, 0) == 0.2 and value_at(CURVE, 10) == 0.4
    assert value_at(CURVE, 20) == pytest.approx(0.6)
    assert math.isnan(value_at(CURVE, 31)) and math.isnan(value_at(CURVE, -1))


def test_mean_area_cuts_the_curve_at_the_budget():
    # whole curve: (10·0.3 + 20·0.6) / 30 = 0.5
    assert mean_area(CURVE, 30) == pytest.approx(0.5)
    # to 20: (10·0.3 + 10·(0.4+0.6)/2) / 20 = 0.4
    assert mean_area(CURVE, 20) == pytest.approx(0.4)
    assert math.isnan(mean_area(CURVE, 40))  # a run that stopped short has no area at that budget


def test_demo_method_names():
    assert method_overrides("grpo") == ["gradalign.enabled=false"] and is_budgeted("grpo")
    assert method_overrides("dapo") == ["gradalign.method=dapo", "gradalign.schedule=step"]
    assert method_overrides("gradalign-step-r4")[-1] == "gradalign.refresh_every=4"
    assert method_overrides("gradalign-memory") == ["gradalign.method=gradalign", "gradalign.schedule=memory",
                                                    "gradalign.refresh_every=4"] and not is_budgeted("gradalign-memory")
    assert method_overrides("gradalign-memory-r2")[-1] == "gradalign.refresh_every=2"
    # the demo's GradAlign: the variant that won on the tuning seeds (docs/results.md): the trusted set
    # trains half of each batch and builds G every step, copied off the update; zero-gradient visits count
    assert method_overrides("gradalign") == method_overrides("gradalign-memory-r1-zero-t50-u") == [
        "gradalign.method=gradalign", "gradalign.schedule=memory", "gradalign.refresh_every=1",
        "+gradalign.memory.zero_gradient_scores_zero=true", "+gradalign.memory.zero_skip_step=0.5",
        "+gradalign.validation.train_share=0.5", "+gradalign.validation.g_from_update=true"] \
        and not is_budgeted("gradalign")
    assert "gradalign.schedule=round" in method_overrides("gradalign-round")
    with pytest.raises(ValueError, match="unknown demo method 'plain'"):
        method_overrides("plain")
