"""Malformed gradalign: blocks fail with the field named and the value shown."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from nemo_gradalign.config import ConfigError, parse_gradalign


def test_defaults_and_omegaconf_input():
    cfg = parse_gradalign(OmegaConf.create({"enabled": True, "validation": {"rollouts_per_problem": 4}}))
    assert cfg.enabled and cfg.method == "gradalign" and cfg.validation.rollouts_per_problem == 4
    assert parse_gradalign(None).enabled is False


@pytest.mark.parametrize("block, field, value", [
    ({"enabled": "maybe"}, "gradalign.enabled", "'maybe'"),
    ({"method": "cosine"}, "gradalign.method", "'cosine'"),
    ({"selection_ratio": -2}, "gradalign.selection_ratio", "-2"),
    ({"chunk_size": 0}, "gradalign.chunk_size", "0"),
    ({"validation": {"rollouts_per_problem": 1}}, "gradalign.validation.rollouts_per_problem", "1"),
    ({"validation": {"max_problems": "ten"}}, "gradalign.validation.max_problems", "'ten'"),
    ({"refresh_every": 1.5}, "gradalign.refresh_every", "1.5"),
    ({"uninformative": "drop"}, "gradalign.uninformative", "'drop'"),
    ({"advantage": {"baseline": "median"}}, "gradalign.advantage.baseline", "'median'"),
    ({"topk": 3}, "gradalign.topk", "3"),
    ({"in_pass_projection": 0}, "gradalign.in_pass_projection", "0"),
    ({"in_pass_projection": True}, "gradalign.in_pass_projection", "True"),  # not silently k = 1
])
def test_bad_field_is_named_with_its_value(block, field, value):
    with pytest.raises(ConfigError) as err:
        parse_gradalign(block)
    assert f"{field}:" in str(err.value) and f"(got {value})" in str(err.value)


def test_cross_field_rules():
    with pytest.raises(ConfigError, match="acc_low=0.9 must not exceed acc_high=0.5"):
        parse_gradalign({"acc_low": 0.9, "acc_high": 0.5})
    with pytest.raises(ConfigError, match="chunk_size=2 must be at least selection_ratio=4"):
        parse_gradalign({"schedule": "round", "chunk_size": 2, "selection_ratio": 4})
    with pytest.raises(ConfigError, match="gradalign: expected a mapping"):
        parse_gradalign(["enabled"])
