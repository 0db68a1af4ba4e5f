"""Read the ``gradalign:`` block from every config shape NeMo RL has had, and refuse the
combinations GradAlign does not support, naming the field.

- v0.6: ``MasterConfig`` is a TypedDict, so the config is a plain dict: ``cfg["gradalign"]``.
- v0.7 / main: ``MasterConfig`` is a pydantic model with ``extra="allow"``; the block is an extra
  attribute (``cfg.gradalign``, a dict) and sections are TypedDict dicts or models.
"""

from __future__ import annotations

from typing import Any

from nemo_gradalign.config import ConfigError, GradAlignConfig, parse_gradalign
from nemo_gradalign.integrations.nemo_rl.config_access import VLM_PROCESSOR, lookup, memory_only, section
from nemo_gradalign.integrations.nemo_rl.data_plane import refusals as data_plane_refusals
from nemo_gradalign.integrations.nemo_rl.flag_defaults import flag_defaults
from nemo_gradalign.integrations.nemo_rl.nemo_gym import refusals as nemo_gym_refusals
from nemo_gradalign.integrations.nemo_rl.trusted_set import refusals as trusted_refusals
from nemo_gradalign.megatron.expert_lockstep import balances_with_a_loss


# The flag's schedule inside NeMo RL when the recipe names none: the one with plain GRPO's generation
# (the sampler picks N prompts before rollout; `step` generates q·N and keeps N)
DEFAULT_SCHEDULE = "memory"
# The trusted set's share of each batch under the memory schedule when the recipe names none: it trains
# and steers (trusted_set.py), the embedded winner. The trusted set is gradalign.validation.dataset, or
# unnamed, the validation rows NeMo RL never evaluates (none left: 0, G generated apart)
DEFAULT_TRAIN_SHARE = 0.5


def read_gradalign(master_config: Any) -> GradAlignConfig:
    """The validated block; absent means disabled (upstream behaviour unchanged). A null
    ``memory.seed`` (the entry's default block) follows ``gradalign.seed``; an unset or null
    ``schedule`` means DEFAULT_SCHEDULE for the ``gradalign`` method (other methods score
    candidates, and DAPO recipes select at their dynamic sampling: ``step``, ``dapo_selects``); a
    null ``selection_ratio`` is a DAPO recipe's multiplier, else the default; an unset or null
    ``validation.train_share`` means DEFAULT_TRAIN_SHARE
    under the memory schedule (the entry lowers it to 0 where no trusted row exists), else 0."""
    block = section(master_config, "gradalign", None)
    if block is not None and not isinstance(block, dict):
        block = block.model_dump() if hasattr(block, "model_dump") else dict(block)
    dapo = isinstance(block, dict) and dapo_selects(master_config, block)
    if isinstance(block, dict) and block.get("schedule") is None:  # unset, or null in the entry's block
        block = {**block, "schedule": "step" if dapo or block.get("method", "gradalign") not in ("gradalign", "simacc")
                 else DEFAULT_SCHEDULE}
    if isinstance(block, dict) and "selection_ratio" in block and block["selection_ratio"] is None:
        block = {k: v for k, v in block.items() if k != "selection_ratio"}  # null: the default q
        if dapo:
            block["selection_ratio"] = int(float(lookup(master_config, "grpo.batch_multiplier")))
    memory = block.get("memory") if isinstance(block, dict) else None
    if isinstance(memory, dict) and "seed" in memory and memory["seed"] is None:
        block = {**block, "memory": {k: v for k, v in memory.items() if k != "seed"}}
    validation = block.get("validation") if isinstance(block, dict) else None
    if isinstance(validation, dict) and validation.get("train_share") is None:  # unset, or the entry's null
        share = DEFAULT_TRAIN_SHARE if block.get("schedule") == "memory" else 0.0
        block = {**block, "validation": {**validation, "train_share": share}}
    return parse_gradalign(block)


def dapo_selects(master_config: Any, block: dict) -> bool:
    """A DAPO recipe (dynamic sampling on, an integral ``grpo.batch_multiplier`` q ≥ 2) with the
    steered flag and no schedule named: GradAlign selects at its dynamic sampling (the step
    schedule, q = the recipe's multiplier when ``selection_ratio`` is unset): the q·N prompts it
    generates are ranked by alignment with G, and DAPO's own filter and refill keep the first N
    with reward variance (selection.py)."""
    multiplier = float(lookup(master_config, "grpo.batch_multiplier", 1) or 1)
    return (block.get("steer", True) is not False and block.get("schedule") in (None, "step")
            and bool(lookup(master_config, "grpo.use_dynamic_sampling", False))
            and multiplier >= 2 and multiplier.is_integer())


def scoring_loss(master_config: Any, cfg: GradAlignConfig) -> dict:
    """The loss NeMo RL trains with, as LossSettings fields, so the scored gradient is the trained
    one: the advantage estimator's baseline / std normalisation (``grpo.adv_estimator.*`` when
    present, as upstream reads it; else the top-level ``grpo`` keys with v0.6/v0.7's fallbacks) and
    the generation temperature the Megatron loss divides the logits by, and the aggregation of
    ``loss_fn.token_level_loss`` (false: per-sequence means, as GSPO also uses). Refuses what we
    cannot score exactly (another estimator, no baseline, top-k/top-p filtering of the logits, an
    NLL term, KL in the reward). The KL penalty (``reference_policy_kl_penalty``) is left out of
    the score on purpose, as in the official code: it pulls every problem's gradient toward the
    reference policy alike and says nothing about which data is aligned."""
    problems = []
    estimator = lookup(master_config, "grpo.adv_estimator")
    if estimator is not None:
        name = lookup(estimator, "name", "grpo")
        if name != "grpo":
            problems.append(f"grpo.adv_estimator.name={name!r}: GradAlign scores GRPO advantages only")
        if lookup(estimator, "minus_baseline", True) is False:
            problems.append("grpo.adv_estimator.minus_baseline=false: GradAlign scores "
                            "baseline-subtracted advantages only")
        loo = bool(lookup(estimator, "use_leave_one_out_baseline", False))
        normalize = bool(lookup(estimator, "normalize_rewards", True))
    else:
        loo = bool(lookup(master_config, "grpo.use_leave_one_out_baseline", False))
        normalize = bool(lookup(master_config, "grpo.normalize_rewards", True))
    top_k = lookup(master_config, "policy.generation.top_k")
    top_p = lookup(master_config, "policy.generation.top_p", 1.0)
    if top_k is not None:
        problems.append(f"policy.generation.top_k={top_k}: the trainer's loss then filters the logits, "
                        "which GradAlign cannot score exactly yet; set it to null")
    if float(top_p) != 1.0:
        problems.append(f"policy.generation.top_p={top_p}: the trainer's loss then filters the logits, "
                        "which GradAlign cannot score exactly yet; set it to 1.0")
    aggregation = "token_mean" if lookup(master_config, "loss_fn.token_level_loss", True) else "sequence_mean"
    if cfg.aggregation not in (None, aggregation):
        problems.append(f"gradalign.aggregation={cfg.aggregation!r} disagrees with loss_fn.token_level_loss="
                        f"{lookup(master_config, 'loss_fn.token_level_loss', True)} (the trainer's {aggregation}); "
                        "leave gradalign.aggregation unset to follow the loss")
    for key, why in (("positive_example_nll_weight", "adds an NLL term to the trained gradient"),
                     ("use_kl_in_reward", "changes the rewards after the advantages GradAlign scores")):
        value = lookup(master_config, f"loss_fn.{key}", 0)
        if value:
            problems.append(f"loss_fn.{key}={value!r}: {why}, which GradAlign does not score")
    if problems:
        raise ConfigError("unsupported GradAlign configuration:\n  " + "\n  ".join(problems))
    baseline, normalize_std = cfg.advantage.resolve(loo, normalize)
    return {"baseline": baseline, "normalize_std": normalize_std, "aggregation": aggregation,
            "temperature": float(lookup(master_config, "policy.generation.temperature", 1.0))}


# loss_fn fields of upstream's ClippedPGLossFn whose non-default values change a token's weight
# away from -A·ρ (ρ = π/π_old = 1 in a step's only pass): in-pass reading is then not g_i
IN_PASS_LOSS_REFUSALS = (
    ("reference_policy_kl_penalty", 0, "adds the KL penalty's gradient to every group's gradient"),
    ("use_importance_sampling_correction", False, "weighs tokens by π_old/π_gen"),
    ("truncated_importance_sampling_type", None, "weighs or drops tokens by π_old/π_gen"),
    ("sequence_level_importance_ratios", False, "replaces the token ratio by a sequence one"),
    ("use_cispo", False, "replaces the clipped surrogate"),
    ("positive_example_nll_weight", 0, "adds an NLL term"))


def in_pass_config_reason(master_config: Any, cfg: GradAlignConfig) -> str | None:
    """Why the recipe's trained groups cannot be read from the worker's train() (None: the
    workers check the rest, their layout and batch shapes, when armed)."""
    if cfg.in_pass == "off":
        return "gradalign.in_pass=off"
    for key, default, why in IN_PASS_LOSS_REFUSALS:
        value = lookup(master_config, f"loss_fn.{key}", default)
        if value not in (default, None, 0, 0.0, False):
            return f"loss_fn.{key}={value!r} {why}"
    return None


def _refusals(master_config: Any, cfg: GradAlignConfig) -> list[str]:
    mc = "policy.megatron_cfg"
    found = []

    def refuse(path: str, bad, why: str, default=None):
        value = lookup(master_config, path, default)
        if bad(value):
            found.append(f"{path}={value!r}: {why}")

    refuse("data.use_multiple_dataloader", bool, "multiple dataloaders are not supported", False)
    found += trusted_refusals(master_config, cfg) + data_plane_refusals(master_config, cfg)
    found += nemo_gym_refusals(master_config, cfg)
    if not cfg.steer:  # the trusted mix scores nothing: only the loop's shape matters
        return found
    if lookup(master_config, "grpo.async_grpo.enabled", False):
        found += memory_only("grpo.async_grpo.enabled", cfg, "async GRPO",
                             "only synchronous GRPO's rollout call generates")
    refuse("data.default.processor", lambda v: v == VLM_PROCESSOR, "the scoring pass feeds the policy token ids "
           "only, not the images or audio it trains on; use gradalign.steer=false (the trusted mix runs vision and "
           "audio recipes, through upstream's run_vlm_grpo.py)")
    if lookup(master_config, "data.default.processor") != VLM_PROCESSOR:  # one line for a vision recipe
        refuse("policy.is_vlm", bool, "the policy trains on images or video the scoring pass does not feed (it "
               "feeds token ids only); use gradalign.steer=false (the trusted mix)", False)
    refuse(f"{mc}.enabled", lambda v: not v, "GradAlign scores on the Megatron policy worker (the "
           "DTensor backend is not supported)", False)
    refuse("policy.dtensor_cfg.enabled", bool, "the DTensor backend is not supported", False)
    found += expert_refusals(master_config)
    refuse("policy.quant_cfg", lambda v: v is not None, "ModelOpt quantization-aware training runs upstream's "
           "MegatronQuantPolicyWorker, which GradAlign's worker does not extend")
    refuse(f"{mc}.fp8_cfg.enabled", bool, "fp8 training is not supported", False)
    refuse(f"{mc}.peft.enabled", bool, "LoRA trains the adapters: scoring that gradient exactly is not verified "
           "yet", False)
    refuse("policy.precision", lambda v: v in ("float16", "fp16"), "fp16's dynamic loss scale would "
           "scale the scored gradients; use bfloat16", "bfloat16")
    if cfg.validation.g_from_update:
        found.append("gradalign.validation.g_from_update=true: copying G off the update is the embedded trainer's "
                     "only; NeMo RL's workers build G from the step's trusted groups with their scoring pass")
    if cfg.precondition != "none":
        found.append(f"gradalign.precondition={cfg.precondition!r}: the Adam-preconditioned score is "
                     "only in the embedded trainer (the worker's optimizer state is not read yet)")
    if cfg.schedule not in ("step", "memory"):
        found.append(f"gradalign.schedule={cfg.schedule!r}: inside NeMo RL the 'step' (select at "
                     "dynamic_sampling each step) and 'memory' (the training loader's sampler picks) "
                     "schedules are supported")
    return found


def expert_refusals(master_config: Any) -> list[str]:
    """MoE recipes the separate scoring pass cannot score as the trainer trains them (the EP
    group scores its replicas' groups in lockstep: megatron/expert_lockstep.py, engine/rules.py)."""
    mc = "policy.megatron_cfg"
    ep = int(lookup(master_config, f"{mc}.expert_model_parallel_size", 1) or 1)
    if ep == 1:
        return []
    tp = int(lookup(master_config, f"{mc}.tensor_model_parallel_size", 1) or 1)
    etp = int(lookup(master_config, f"{mc}.expert_tensor_parallel_size", None) or tp)
    cp = int(lookup(master_config, f"{mc}.context_parallel_size", 1) or 1)
    found = []
    if tp % etp or (ep * etp) % (tp * cp):
        found.append(f"{mc}.expert_tensor_parallel_size={etp}: with tensor_model_parallel_size={tp}, "
                     f"context_parallel_size={cp} and expert_model_parallel_size={ep} an expert-parallel group does "
                     "not hold whole model replicas (TP must be divisible by ETP and EP×ETP by TP×CP): a problem's "
                     "expert gradient would be split")
    if lookup(master_config, f"{mc}.moe_token_dispatcher_type", "alltoall") == "flex":
        found.append(f"{mc}.moe_token_dispatcher_type='flex': DeepEP/HybridEP dispatch is GPU-only and not verified "
                     "exact here; use 'alltoall' (upstream's default) or 'allgather'")
    balancing = lookup(master_config, f"{mc}.moe_router_load_balancing_type", "none")
    if balances_with_a_loss(balancing):
        found.append(f"{mc}.moe_router_load_balancing_type={balancing!r}: the auxiliary loss adds its gradient to "
                     "the trainer's, which the scoring pass does not compute; use 'none' (upstream's default)")
    if lookup(master_config, "policy.router_replay.enabled", False):
        found.append("policy.router_replay.enabled=True: training replays the generation's expert choices, the "
                     "scoring pass routes with the router: not the trained gradient")
    return found


def check_supported(master_config: Any, cfg: GradAlignConfig) -> None:
    """Refuse, naming field and value, every combination GradAlign cannot serve exactly; run on
    the resolved recipe before Ray or any GPU starts (preflight.py) and again in setup."""
    if not cfg.enabled:
        return
    problems = _refusals(master_config, cfg)
    unset = {}
    for check in (scoring_loss, flag_defaults) if cfg.steer else (flag_defaults,):
        try:
            result = check(master_config, cfg)
        except ConfigError as err:
            problems += [line.strip() for line in str(err).splitlines()[1:] or [str(err)]]
            continue
        unset = result if check is flag_defaults else unset
    if unset and cfg.schedule == "memory":
        problems.append(f"data.num_workers={lookup(master_config, 'data.num_workers')}: gradalign.schedule=memory "
                        "needs 0 (the entry sets it when running the recipe)")
    elif unset:
        problems.append(f"grpo.use_dynamic_sampling={lookup(master_config, 'grpo.use_dynamic_sampling')} / "
                        f"grpo.batch_multiplier={lookup(master_config, 'grpo.batch_multiplier')}: GradAlign "
                        f"needs dynamic sampling with multiplier gradalign.selection_ratio={cfg.selection_ratio} "
                        "(the entry sets both when they are left at upstream's defaults)")
    if problems:
        raise ConfigError("unsupported GradAlign configuration:\n  " + "\n  ".join(problems))
