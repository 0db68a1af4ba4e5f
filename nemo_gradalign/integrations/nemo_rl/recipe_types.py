"""The types of the NeMo RL recipe keys a job needs before it starts, checked by ``launch`` before
``sbatch``: a non-integer ``grpo.max_num_steps`` should fail on the login node, not after the
queue. Where NeMo RL is importable the recipe is first loaded by upstream's own loader (its
defaults chain and Hydra overrides, as run_grpo.py does); either way the typed subset below is
checked, field by field, in pydantic's lax mode as upstream's MasterConfig (main) validates.
"""

from __future__ import annotations

import importlib.util

from pydantic import BaseModel, ConfigDict, ValidationError

from nemo_gradalign.config import ConfigError, format_validation_error


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")  # only these keys are ours to check


class _Grpo(_Open):
    num_prompts_per_step: int | None = None
    num_generations_per_prompt: int | None = None
    max_num_epochs: int | None = None
    max_num_steps: int | None = None
    val_period: int | None = None
    max_val_samples: int | None = None
    val_batch_size: int | None = None
    seed: int | None = None
    normalize_rewards: bool | None = None
    use_leave_one_out_baseline: bool | None = None
    use_dynamic_sampling: bool | None = None
    batch_multiplier: float | None = None


class _Megatron(_Open):
    enabled: bool | None = None
    tensor_model_parallel_size: int | None = None
    pipeline_model_parallel_size: int | None = None
    context_parallel_size: int | None = None


class _Policy(_Open):
    train_global_batch_size: int | None = None
    train_micro_batch_size: int | None = None
    max_total_sequence_length: int | None = None
    megatron_cfg: _Megatron | None = None


class _Checkpointing(_Open):
    enabled: bool | None = None
    save_period: int | None = None
    keep_top_k: int | None = None


class _Cluster(_Open):
    num_nodes: int | None = None
    gpus_per_node: int | None = None


class NemoRLRecipeSubset(_Open):
    grpo: _Grpo | None = None
    policy: _Policy | None = None
    checkpointing: _Checkpointing | None = None
    cluster: _Cluster | None = None


def upstream_loaded(recipe: str, overrides: list[str]) -> dict | None:
    """The recipe as upstream's loader builds it (defaults chain, Hydra overrides; interpolations
    left for the job, where ``${oc.env:...}`` means the node's environment), or None where NeMo RL
    is not importable or the defaults chain lives only in the container (``/opt/nemo-rl``)."""
    if importlib.util.find_spec("nemo_rl") is None:
        return None
    from omegaconf import OmegaConf
    from nemo_rl.utils import config as upstream

    from nemo_gradalign.integrations.nemo_rl.preflight import with_default_block

    upstream.register_omegaconf_resolvers()
    try:
        config = with_default_block(upstream.load_config)(recipe)
    except FileNotFoundError:
        return None
    if overrides:
        config = upstream.parse_hydra_overrides(config, overrides)
    return OmegaConf.to_container(config, resolve=False)


def _literal(tree):
    """Without the unresolved ``${...}`` values (upstream resolves them, with its own resolvers)."""
    if isinstance(tree, dict):
        return {k: _literal(v) for k, v in tree.items() if not (isinstance(v, str) and "${" in v)}
    return tree


def check_recipe_types(recipe: str, overrides: list[str], merged: dict) -> None:
    """ConfigError naming each mistyped field and its value; ``merged``: recipe + overrides as
    read here, unresolved (used when upstream's loader is not available)."""
    loaded = upstream_loaded(recipe, overrides)
    try:
        NemoRLRecipeSubset.model_validate(_literal(merged if loaded is None else loaded))
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, "")) from None
