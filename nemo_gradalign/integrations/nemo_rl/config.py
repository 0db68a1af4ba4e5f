"""Read the ``gradalign:`` block from every config shape NeMo RL has had, and refuse the
combinations GradAlign does not support, naming the field.

- v0.6: ``MasterConfig`` is a TypedDict, so the config is a plain dict: ``cfg["gradalign"]``.
- v0.7 / main: ``MasterConfig`` is a pydantic model with ``extra="allow"``; the block is an extra
  attribute (``cfg.gradalign``, a dict) and sections are TypedDict dicts or models.
"""

from __future__ import annotations

from typing import Any

from nemo_gradalign.config import ConfigError, GradAlignConfig, parse_gradalign

_MISSING = object()


def section(cfg: Any, name: str, default: Any = _MISSING) -> Any:
    """``cfg[name]`` for dicts, ``cfg.name`` for pydantic models (extras included)."""
    if isinstance(cfg, dict):
        value = cfg.get(name, default)
    else:
        value = getattr(cfg, name, _MISSING)
        if value is _MISSING:
            value = (getattr(cfg, "model_extra", None) or {}).get(name, default)
    if value is _MISSING:
        raise KeyError(name)
    return value


def lookup(cfg: Any, dotted: str, default: Any = None) -> Any:
    node = cfg
    for part in dotted.split("."):
        if node is None:
            return default
        node = section(node, part, None)
    return default if node is None else node


def read_gradalign(master_config: Any) -> GradAlignConfig:
    """The validated block; absent means disabled (upstream behaviour unchanged)."""
    block = section(master_config, "gradalign", None)
    if block is not None and not isinstance(block, dict):
        block = block.model_dump() if hasattr(block, "model_dump") else dict(block)
    return parse_gradalign(block)


def check_supported(master_config: Any, cfg: GradAlignConfig) -> None:
    """Refuse what the selection hook cannot serve, before any GPU is touched."""
    if not cfg.enabled:
        return
    problems = []
    if lookup(master_config, "grpo.async_grpo.enabled", False):
        problems.append("grpo.async_grpo.enabled=true: async GRPO has no dynamic_sampling step "
                        "to select at; run synchronous GRPO")
    if lookup(master_config, "data_plane.enabled", False):
        problems.append("data_plane.enabled=true: the data-plane path applies its own dynamic "
                        "sampling; disable it for GradAlign")
    if not lookup(master_config, "policy.megatron_cfg.enabled", False):
        problems.append("policy.megatron_cfg.enabled must be true: GradAlign scores on the Megatron "
                        "policy worker (the DTensor backend is not supported)")
    if cfg.schedule != "step":
        problems.append(f"gradalign.schedule={cfg.schedule!r}: inside NeMo RL only the 'step' "
                        "schedule is supported (select at dynamic_sampling each step)")
    multiplier = lookup(master_config, "grpo.batch_multiplier", 1)
    if multiplier != cfg.selection_ratio:
        problems.append(f"grpo.batch_multiplier={multiplier} must equal gradalign.selection_ratio="
                        f"{cfg.selection_ratio}: the dataloader draws q·N prompts and GradAlign keeps N")
    if problems:
        raise ConfigError("unsupported GradAlign configuration:\n  " + "\n  ".join(problems))
