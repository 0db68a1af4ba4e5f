"""Recipes load through `defaults:` inheritance and NeMo RL-style overrides, and validate."""

from __future__ import annotations

from pathlib import Path

import pytest

from nemo_gradalign.config import ConfigError, load_recipe
from nemo_gradalign.trainer.config import load_embedded_recipe

RECIPES = sorted((Path(__file__).parents[2] / "recipes" / "embedded").glob("*.yaml"))


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_every_embedded_recipe_loads_and_validates(path):
    recipe = load_embedded_recipe(path)
    assert recipe.gradalign.enabled and recipe.data.regime in path.stem + "noisy"
    assert recipe.checkpointing.checkpoint_dir.startswith(recipe.logger.log_dir)


def test_defaults_inheritance_and_overrides(tmp_path):
    (tmp_path / "parent.yaml").write_text("grpo: {seed: 1, max_num_steps: 10}\ngradalign: {enabled: false}\n")
    (tmp_path / "child.yaml").write_text("defaults: parent.yaml\ngrpo: {max_num_steps: 20}\n")
    raw = load_recipe(tmp_path / "child.yaml", ["grpo.seed=3", "++gradalign.method=dot"])
    assert raw == {"grpo": {"seed": 3, "max_num_steps": 20}, "gradalign": {"enabled": False, "method": "dot"}}
    with pytest.raises(ConfigError, match="bad override"):  # struct mode: new keys need ++
        load_recipe(tmp_path / "child.yaml", ["gradalign.method=dot"])


def test_bad_values_and_keys_name_the_field():
    base = RECIPES[0].parent / "base.yaml"
    with pytest.raises(ConfigError, match=r"gradalign.selection_ratio: .* \(got -1\)"):
        load_embedded_recipe(base, ["gradalign.selection_ratio=-1"])
    with pytest.raises(ConfigError, match=r"gradalign.topk: Extra inputs are not permitted"):
        load_embedded_recipe(base, ["++gradalign.topk=3"])
    with pytest.raises(ConfigError, match=r"policy.megatron_cfg.tensor_model_parallel_size: .* \(got 0\)"):
        load_embedded_recipe(base, ["policy.megatron_cfg.tensor_model_parallel_size=0"])
    with pytest.raises(ConfigError, match="recipe not found"):
        load_embedded_recipe(base.parent / "nope.yaml")
