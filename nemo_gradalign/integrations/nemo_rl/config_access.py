"""Reading a field from every config shape NeMo RL has had: plain dicts (v0.6's TypedDict) and
pydantic models with extras (v0.7 / main), by dotted path."""

from __future__ import annotations

from typing import Any

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


VLM_PROCESSOR = "vlm_hf_data_processor"  # upstream starts these recipes with examples/run_vlm_grpo.py


def is_vision_or_audio(cfg: Any) -> bool:
    """Rows with images, video or audio: the VLM processor, or a VLM policy (NeMo-Gym's video recipes)."""
    return lookup(cfg, "data.default.processor", None) == VLM_PROCESSOR or bool(lookup(cfg, "policy.is_vlm", False))


def loader_prompts(cfg: Any) -> int:
    """Prompts in one training-loader batch, as upstream's setup sizes it: N, or q·N when DAPO's
    dynamic sampling draws batches of ``batch_multiplier`` q times a step's N."""
    prompts = int(lookup(cfg, "grpo.num_prompts_per_step"))
    if lookup(cfg, "grpo.use_dynamic_sampling", False):
        return int(prompts * float(lookup(cfg, "grpo.batch_multiplier", 1)))
    return prompts


def memory_only(field: str, cfg, never_calls: str, rollouts: str) -> list[str]:
    """Where no ``dynamic_sampling`` runs (``never_calls``) and no validation prompts are generated
    apart (``rollouts``), the steered flag needs the memory schedule with G from the trusted share."""
    if cfg.schedule != "memory":
        return [f"{field}=True: gradalign.schedule={cfg.schedule!r} selects at dynamic_sampling, which {never_calls} "
                "never calls; use gradalign.schedule=memory (the sampler picks before rollout)"]
    if not cfg.validation.train_share:
        return [f"{field}=True: with gradalign.validation.train_share=0 G would come from the validation prompts' own "
                f"rollouts, which {rollouts}; leave the trusted share on (G from the batch's trusted groups)"]
    return []
