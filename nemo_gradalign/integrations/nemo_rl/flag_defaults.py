"""The recipe values ``gradalign.enabled=true`` alone sets for its schedule (the entry applies them
where the recipe left upstream's defaults, saying so in one line), or a ConfigError naming the
fields a user set that disagree."""

from __future__ import annotations

from typing import Any

from nemo_gradalign.config import ConfigError, GradAlignConfig
from nemo_gradalign.integrations.nemo_rl.config_access import lookup


def flag_defaults(master_config: Any, cfg: GradAlignConfig) -> dict[str, Any]:
    """The recipe values ``gradalign.enabled=true`` alone sets for its schedule, or ConfigError."""
    if not cfg.enabled:
        return {}
    if cfg.schedule == "memory":
        return memory_defaults(master_config, cfg)
    return dynamic_sampling_defaults(master_config, cfg)


def memory_defaults(master_config: Any, cfg: GradAlignConfig) -> dict[str, Any]:
    """``gradalign.schedule: memory`` generates what plain GRPO generates: the memory sampler picks
    N prompts before rollout, so dynamic sampling stays off and the multiplier 1 (both refused
    otherwise, naming the field). Its loader runs without worker processes (a worker would pick
    batches ahead of the feedback and checkpoint a stale memory): ``data.num_workers`` becomes 0.
    The trusted mix (``steer: false``) follows no feedback, so DAPO's dynamic sampling composes with it."""
    problems = []
    # the trusted mix (steer=false) only replaces the loader: DAPO's refills draw more of its batches
    if cfg.steer and lookup(master_config, "grpo.use_dynamic_sampling", False):
        problems.append("grpo.use_dynamic_sampling=true: gradalign.schedule=memory picks each step's N prompts "
                        "before rollout (plain GRPO's generation); DAPO's refills would draw loader batches the "
                        "memory does not follow. Set it to false (the memory already skips zero-gradient prompts)")
    multiplier = lookup(master_config, "grpo.batch_multiplier", 1)
    if cfg.steer and float(multiplier) != 1.0:
        problems.append(f"grpo.batch_multiplier={multiplier}: gradalign.schedule=memory draws N prompts a step; "
                        "set it to 1")
    if problems:
        raise ConfigError("unsupported GradAlign configuration:\n  " + "\n  ".join(problems))
    workers = lookup(master_config, "data.num_workers", 0)
    return {} if int(workers) == 0 else {"data.num_workers": 0}


def dynamic_sampling_defaults(master_config: Any, cfg: GradAlignConfig) -> dict[str, Any]:
    """What ``gradalign.enabled=true`` alone sets: upstream's dynamic_sampling is where GradAlign
    selects, and its loader must draw q·N prompts. Upstream's defaults (off, multiplier 1) become
    (on, q); a value the user chose that disagrees is refused, naming both fields."""
    if not cfg.enabled:
        return {}
    q = cfg.selection_ratio
    on = bool(lookup(master_config, "grpo.use_dynamic_sampling", False))
    multiplier = lookup(master_config, "grpo.batch_multiplier", 1)
    if on and float(multiplier) != q:
        raise ConfigError(f"grpo.use_dynamic_sampling=true with grpo.batch_multiplier={multiplier} "
                          f"disagrees with gradalign.selection_ratio={q}: the loader must draw q·N "
                          "prompts; set grpo.batch_multiplier to q (or leave both at upstream's defaults)")
    if not on and float(multiplier) not in (1.0, float(q)):
        raise ConfigError(f"grpo.batch_multiplier={multiplier} is neither 1 (upstream's default, which "
                          f"GradAlign replaces) nor gradalign.selection_ratio={q}")
    changes = {}
    if not on:
        changes["grpo.use_dynamic_sampling"] = True
    if float(multiplier) != q:
        changes["grpo.batch_multiplier"] = q
    return changes
