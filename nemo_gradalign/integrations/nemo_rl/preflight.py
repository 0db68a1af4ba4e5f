"""Config-time checks, before upstream's script starts Ray or touches a GPU.

The entry loads the recipe exactly as ``examples/run_grpo.py`` will (upstream's ``load_config``
with our default ``gradalign:`` block, its Hydra overrides, interpolations resolved), refuses every
unsupported combination naming field and value, and returns the overrides that make
``gradalign.enabled=true`` alone a working configuration (step schedule: dynamic sampling on,
multiplier q; memory schedule: ``data.num_workers=0``, nothing else).
Only ``nemo_rl.utils.config`` is imported here (not grpo.py, whose imports take ~30 s), so a
refusal comes back in seconds.
"""

from __future__ import annotations

import argparse
import functools
import os
from typing import Any

from nemo_gradalign.config import ConfigError, GradAlignConfig
from nemo_gradalign.integrations.nemo_rl.config import check_supported, dapo_selects, read_gradalign
from nemo_gradalign.integrations.nemo_rl.flag_defaults import flag_defaults

WHY = {"step": "gradalign.selection_ratio={q}: dynamic sampling draws q·N prompts, GradAlign keeps the best N",
       "memory": "gradalign.schedule=memory: its sampler's loader runs without worker processes, so each "
                 "batch is picked after the previous step's feedback"}


def with_default_block(load_config):
    """``load_config`` that adds a disabled ``gradalign:`` block when the recipe has none, so the
    plain ``gradalign.enabled=true`` override works in struct mode and a misspelt key fails."""

    if getattr(load_config, "__gradalign_default_block__", False):
        return load_config

    @functools.wraps(load_config)
    def load(config_path):
        cfg = load_config(config_path)
        if "gradalign" not in cfg:
            block = GradAlignConfig().model_dump(mode="json")
            block["memory"]["seed"] = None  # null: follows gradalign.seed (config.read_gradalign)
            block["schedule"] = None  # null: config.DEFAULT_SCHEDULE for the gradalign method
            block["selection_ratio"] = None  # null: a DAPO recipe's batch_multiplier, else the default
            block["validation"]["train_share"] = None  # null: DEFAULT_TRAIN_SHARE under memory
            cfg["gradalign"] = block
        return cfg

    load.__gradalign_default_block__ = True
    return load


def resolved_recipe(script: str, argv: list[str]) -> dict[str, Any]:
    """The plain dict run_grpo.py builds before ``MasterConfig(**config)``."""
    from omegaconf import OmegaConf
    from nemo_rl.utils import config as upstream

    upstream.register_omegaconf_resolvers()
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--config", type=str, default=None)
    args, overrides = parser.parse_known_args(argv)
    path = args.config or os.path.join(os.path.dirname(script), "configs", "grpo_math_1B.yaml")
    config = with_default_block(upstream.load_config)(path)
    if overrides:
        config = upstream.parse_hydra_overrides(config, overrides)
    return OmegaConf.to_container(config, resolve=True)


def set_dotted(cfg: dict, dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    for part in parents:
        cfg = cfg.setdefault(part, {})
    cfg[leaf] = value


def preflight(recipe: dict[str, Any]) -> list[str]:
    """Refuse (ConfigError) or return the extra overrides to hand upstream's script."""
    cfg = read_gradalign(recipe)
    if not cfg.enabled:
        return []
    block = recipe.get("gradalign") or {}
    if dapo_selects(recipe, {**block, "steer": cfg.steer}) and block.get("schedule") is None:
        print(f"GradAlign: the recipe's dynamic sampling (DAPO, grpo.batch_multiplier={cfg.selection_ratio}) is where "
              f"GradAlign selects (gradalign.schedule=step): it ranks the {cfg.selection_ratio}·N prompts generated "
              "each step by alignment with G, and DAPO's filter and refill, unchanged, keep the first N with reward "
              "variance", flush=True)
    try:
        changes = flag_defaults(recipe, cfg)
    except ConfigError:
        check_supported(recipe, cfg)  # raises with this and every other problem, each named
        raise
    for dotted, value in changes.items():
        set_dotted(recipe, dotted, value)
    check_supported(recipe, cfg)
    if changes:
        told = " and ".join(f"{k}={str(v).lower()}" for k, v in changes.items())
        why = WHY[cfg.schedule].format(q=cfg.selection_ratio)
        print(f"GradAlign: set {told} ({why})", flush=True)
    return [f"++{k}={str(v).lower()}" for k, v in changes.items()]
