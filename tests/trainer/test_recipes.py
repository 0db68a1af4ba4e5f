"""Recipes load through `defaults:` inheritance and NeMo RL-style overrides, and validate."""

from __future__ import annotations

from pathlib import Path

import pytest

from nemo_gradalign.config import ConfigError
from nemo_gradalign.recipe_files import load_recipe
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


TINY = ["grpo.max_num_steps=2", "grpo.val_period=2", "grpo.num_prompts_per_step=4", "data.pool_size=64",
        "data.validation_size=16", "data.eval_size=8", "data.warmup_size=400",
        "gradalign.chunk_size=16", "gradalign.steps_per_round=2", "gradalign.rollouts_per_problem=4",
        "grpo.num_generations_per_prompt=4", "checkpointing.enabled=false",
        "gradalign.validation.rollouts_per_problem=8"]  # 16 trusted problems: enough variance for G
# imbalance_length: at 0.1 the one chunk of 16 (of 64) holds no rare problem
EXTRA = {"imbalance_length": ["data.target_fraction=0.25"]}


@pytest.mark.parametrize("regime, tag", [
    ("noisy_flip", "wrong_key"),  # the fast tier's trainer run
    pytest.param("imbalance_length", "target", marks=pytest.mark.slow),
    pytest.param("low_utility_shuffled", "wrong_key", marks=pytest.mark.slow)])
def test_new_regime_recipes_train_a_few_steps_and_log_their_flagged_share(tmp_path, regime, tag):
    """A smoke run through the embedded trainer (a real `nemo-gradalign train`, 2 steps)."""
    import json
    import subprocess
    import sys

    from nemo_gradalign.trainer.summary import TAGS

    path = RECIPES[0].parent / f"{regime}.yaml"
    proc = subprocess.run([sys.executable, "-m", "nemo_gradalign.cli", "train", "--config", str(path), *TINY,
                           *EXTRA.get(regime, []), f"logger.log_dir={tmp_path}"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    [selection] = [r for r in records if "gradalign/picked_ids" in r]  # one round of 2 steps
    assert TAGS[regime] == tag and 0.0 <= selection[f"gradalign/picked_{tag}_share"] <= 1.0
    assert selection[f"gradalign/pool_{tag}_share"] == sum(row[{"target": 3, "wrong_key": 4}[tag]]
                                                          for row in selection["gradalign/candidate_scores"]) / 16
    assert [r["step"] for r in records if r["kind"] == "train"] == [1, 2]
    assert [r["step"] for r in records if r["kind"] == "eval"] == [0, 2]
