"""The NeMo RL recipes: their gradalign blocks validate and fit the GRPO settings; with a NeMo RL
checkout (NEMO_RL_ROOT, or /opt/nemo-rl in the container) they load through upstream's own
`defaults:` inheritance and pass GradAlign's support checks."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from omegaconf import OmegaConf

from nemo_gradalign.recipe_files import load_yaml_with_defaults
from nemo_gradalign.integrations.nemo_rl.config import check_supported, read_gradalign

RECIPES = sorted((Path(__file__).parents[2] / "recipes" / "nemo_rl").glob("*.yaml"))


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_recipe_block_is_valid_and_consistent(path):
    raw = yaml.safe_load(path.read_text())
    cfg = read_gradalign(raw)
    multiplier = 1 if cfg.schedule == "memory" else cfg.selection_ratio  # memory: plain GRPO's generation
    assert cfg.enabled and raw["grpo"]["batch_multiplier"] == multiplier
    check_supported(raw, cfg)  # async off, Megatron on, a supported schedule and its loader settings


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_recipe_inherits_upstream(path, tmp_path):
    root = Path(os.environ.get("NEMO_RL_ROOT", "/opt/nemo-rl"))
    if not (root / "examples" / "configs").is_dir():
        pytest.skip(f"no NeMo RL checkout at {root} (set NEMO_RL_ROOT)")
    local = tmp_path / path.name  # point `defaults:` at this checkout instead of the container's
    local.write_text(path.read_text().replace("/opt/nemo-rl", str(root)))
    # NeMo RL's `${mul:..}` resolvers are registered by NeMo RL itself: read without resolving
    cfg = OmegaConf.to_container(load_yaml_with_defaults(local), resolve=False)
    assert cfg["policy"]["megatron_cfg"]["enabled"] and cfg["loss_fn"]  # upstream keys came through
    check_supported(cfg, read_gradalign(cfg))
