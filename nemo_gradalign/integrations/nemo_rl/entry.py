"""Installs GradAlign into NeMo RL's GRPO and runs upstream's own example script.

    python -m nemo_gradalign.integrations.nemo_rl --config <recipe> [overrides]

1. ``load_config`` gains a default ``gradalign:`` block (disabled), so a plain
   ``gradalign.enabled=true`` override works under NeMo RL's struct-mode overrides and a misspelt
   gradalign key fails there, as any other key would.
2. ``setup`` — with the flag off, upstream's, untouched. With it on: the configuration is checked,
   the GradAlign worker is registered with upstream's Megatron worker environment and used for the
   policy (``policy_factory`` on v0.7+/main, a ``Policy`` partial on v0.6), the training dataloader
   marks every ``refresh_every``-th batch, on which the rollout wrapper also generates the trusted
   validation prompts (in a call of their own), the checkpointer also writes (and on resume reads)
   every worker's validation gradient and the loader's cadence, and the dynamic_sampling hook is
   installed. ``gradalign.schedule: memory`` (memory_mode.py): the training loader is replaced by
   the memory sampler's, over the same dataset, and the hook records the trained groups' alignment
   instead of selecting, read from the workers' own train() where that is exact (``gradalign.in_pass``);
   in async GRPO the sampler lives in a Ray actor the collector's loader asks (async_memory.py).
   ``gradalign.steer: false`` (the trusted mix): only the training loader is replaced (the trusted
   share, the pool's in seeded passes); upstream's policy, hooks and checkpoints stay as they are.
"""

from __future__ import annotations

import functools
import inspect

from nemo_gradalign.config import ConfigError, GradAlignConfig
from nemo_gradalign.integrations.nemo_rl import (async_memory, data_plane, memory_mode, nemo_gym, sampler_state,
                                                 trusted_set)
from nemo_gradalign.integrations.nemo_rl import validation_loader as loader_state
from nemo_gradalign.integrations.nemo_rl.config import (check_supported, in_pass_config_reason, lookup,
                                                        read_gradalign, scoring_loss)
from nemo_gradalign.integrations.nemo_rl.driver import GroupScorer
from nemo_gradalign.integrations.nemo_rl.preflight import with_default_block
from nemo_gradalign.integrations.nemo_rl.selection import install as install_hook
from nemo_gradalign.selection.scores import reference_source
from nemo_gradalign.integrations.nemo_rl.validation_cost import g_cost_line, trusted_cost_line, validation_problems
from nemo_gradalign.integrations.nemo_rl.validation_loader import WithValidationPrompts
from nemo_gradalign.integrations.nemo_rl.validation_rollouts import ValidationRollouts
from nemo_gradalign.integrations.nemo_rl.validation_rollouts import install as install_rollouts

WORKER_FQN = "nemo_gradalign.integrations.nemo_rl.worker.GradAlignMegatronPolicyWorker"
UPSTREAM_WORKER_FQN = "nemo_rl.models.policy.workers.megatron_policy_worker.MegatronPolicyWorker"
LOADER_TYPES = ("StatefulDataLoader", "MultipleDataloaderWrapper")


def _validation_batch(val_dataloader, master_config, cfg: GradAlignConfig, collate):
    if val_dataloader is None:
        raise ValueError(f"gradalign.method={cfg.method!r} aligns with the trusted validation set: "
                         "the recipe needs validation data (data.validation / val dataset)")
    dataset = val_dataloader.dataset
    n = validation_problems(master_config, cfg, len(dataset))
    return collate([dataset[i] for i in range(n)])


def gradalign_setup(setup, grpo_module, registry: dict, policy_cls, collate):
    """Wrap upstream's ``setup``; see the module docstring."""
    takes_factory = "policy_factory" in inspect.signature(setup).parameters

    @functools.wraps(setup)
    def wrapped(master_config, tokenizer, dataset, val_dataset, *args, **kwargs):
        cfg = read_gradalign(master_config)
        if not cfg.enabled:
            return setup(master_config, tokenizer, dataset, val_dataset, *args, **kwargs)
        check_supported(master_config, cfg)
        # before setup() starts anything: the trusted set that trains (if any), the rows' identities,
        # and the memory a resume would load
        cfg, trusted, trusted_rows = trusted_set.resolve(master_config, cfg, dataset, val_dataset,
                                                         lambda line: print(line, flush=True))
        if cfg.steer and nemo_gym.is_nemo_gym(master_config):  # the rolled-out rows get their dataset idx back
            nemo_gym.install(grpo_module)
        asynchronous = cfg.steer and bool(lookup(master_config, "grpo.async_grpo.enabled", False))
        plane = cfg.steer and not asynchronous and bool(lookup(master_config, "data_plane.enabled", False))
        if (asynchronous or plane) and trusted is None:
            field = "grpo.async_grpo.enabled" if asynchronous else "data_plane.enabled"
            raise ConfigError(f"{field}=true: the steered flag builds G from the batch's trusted groups there, and no "
                              "trusted set trains (see the line above); name one in gradalign.validation.dataset")
        draw = sampler_state.trusted_draw(master_config, cfg, trusted)
        keys = sampler_state.checked_keys(master_config, cfg, dataset, draw) if cfg.schedule == "memory" else None
        if draw is not None:
            print(trusted_cost_line(master_config, cfg, draw), flush=True)
        elif reference_source(cfg.method) == "validation" and val_dataset is not None and not isinstance(val_dataset, dict):
            print(g_cost_line(master_config, cfg, len(val_dataset)), flush=True)
        if cfg.steer:  # the workers score; with steer=false (the trusted mix) only the loader is ours
            _use_worker(registry, policy_cls, grpo_module, kwargs, takes_factory, master_config if plane else None)
        result = list(setup(master_config, tokenizer, dataset, val_dataset, *args, **kwargs))
        policy = result[0]
        loaders = [i for i, x in enumerate(result) if type(x).__name__ in LOADER_TYPES]
        checkpointer = next(x for x in result if type(x).__name__ == "CheckpointManager")
        loader, take_validation, sampler = None, (lambda: None), None
        if cfg.schedule == "memory":
            rows = None if draw is None else trusted_set.PoolAndTrusted(result[loaders[0]].dataset, trusted_rows)
            make = async_memory.async_memory_loader if asynchronous else memory_mode.memory_training_loader
            served = data_plane.LastBatch(collate) if plane else None  # the rows' identities, kept on the driver
            result[loaders[0]], sampler = make(
                result[loaders[0]], cfg, served or collate, checkpoint_dir=checkpointer.get_latest_checkpoint_path(),
                data_config=lookup(master_config, "data"), load_state=getattr(grpo_module, "load_dataloader_state", None),
                keys=keys, trusted=draw, rows=rows)
        if not cfg.steer:
            return tuple(result)
        scorer = GroupScorer(policy, cfg, tokenizer.pad_token_id, scoring_loss(master_config, cfg),
                             **({"to_flat": data_plane.flat_rows} if plane else {}))
        if reference_source(cfg.method) == "validation" and draw is None:  # else G from the batch's trusted rows
            val_loader = result[loaders[1]] if len(loaders) > 1 else None
            loader = result[loaders[0]] = WithValidationPrompts(result[loaders[0]], cfg.refresh_every)
            store = ValidationRollouts(_validation_batch(val_loader, master_config, cfg, collate),
                                       int(lookup(master_config, "grpo.num_generations_per_prompt")),
                                       _reward_transforms(grpo_module, master_config))
            install_rollouts(grpo_module, store)
            take_validation = store.take
        _checkpoint_with_gradalign(checkpointer, scorer, loader)
        if sampler is not None:
            reason = in_pass_config_reason(master_config, cfg) or (
                "async GRPO: the collector's checkpoint would not wait for a read pending in train()"
                if asynchronous else None) or (
                "the data plane: train() gets its rows through upstream's shard_meta_for_dp" if plane else None)
            if reason:
                print(f"gradalign: in-pass reading off ({reason}): each trained group is scored with a "
                      "separate backward", flush=True)
            kind, hook = ((async_memory.AsyncMemoryFeedback, async_memory.install) if asynchronous
                          else (memory_mode.MemoryFeedback, memory_mode.install))
            feedback = kind(sampler, scorer.statistics, take_validation, in_pass=None if reason else scorer,
                            simacc=cfg.method == "simacc", refresh_every=cfg.refresh_every)
            if plane:
                import nemo_rl.algorithms.grpo_sync as grpo_sync

                stash = data_plane.RewardStash()
                data_plane.install_reward_stash(grpo_sync, stash)
                policy.gradalign_feedback = data_plane.DataPlaneFeedback(feedback, stash, served, master_config,
                                                                         tokenizer.pad_token_id)
            else:
                hook(grpo_module, feedback)
        else:
            install_hook(grpo_module, scorer, take_validation)
        return tuple(result)

    return wrapped


def _use_worker(registry: dict, policy_cls, grpo_module, kwargs: dict, takes_factory: bool,
                plane_config=None) -> None:
    """The policy's workers get the GradAlign extension (registered with upstream's worker env);
    with the data plane (``plane_config``: the recipe) the policy is our TQPolicy subclass, built
    as run_grpo.py's factory builds TQPolicy (data_plane.py)."""
    registry[WORKER_FQN] = registry[UPSTREAM_WORKER_FQN]
    factory = functools.partial(policy_cls, worker_extension_cls_fqn=WORKER_FQN)
    if plane_config is not None:
        kwargs["policy_factory"] = data_plane.policy_factory(plane_config, WORKER_FQN)
    elif takes_factory:
        if kwargs.get("policy_factory") is not None:
            raise ValueError("a custom policy_factory cannot be combined with gradalign.enabled=true")
        kwargs["policy_factory"] = factory
    else:
        grpo_module.Policy = factory  # v0.6 builds Policy(...) directly


def _reward_transforms(grpo_module, master_config):
    """What grpo_train does to a rollout's rewards before using them (scale_rewards, and
    apply_reward_shaping when enabled), for the validation rows generated apart."""
    scaling = lookup(master_config, "grpo.reward_scaling")
    shaping = lookup(master_config, "grpo.reward_shaping")

    def finish(batch):
        if scaling is not None and hasattr(grpo_module, "scale_rewards"):
            batch = grpo_module.scale_rewards(batch, scaling)
        if shaping is not None and lookup(shaping, "enabled", False):
            batch = grpo_module.apply_reward_shaping(batch, shaping)
        return batch

    return finish


def _checkpoint_with_gradalign(checkpointer, scorer: GroupScorer, loader=None) -> None:
    """Every tmp_step_N directory also holds gradalign/rank_<r>.pt (and gradalign/loader.json
    with the validation cadence); resume reads them from the latest checkpoint."""
    init_tmp = checkpointer.init_tmp_checkpoint

    @functools.wraps(init_tmp)
    def init_tmp_checkpoint(step, training_info, *args, **kwargs):
        path = init_tmp(step, training_info, *args, **kwargs)
        scorer.save(path)
        if loader is not None:
            loader_state.save_counter(loader, path)
        return path

    checkpointer.init_tmp_checkpoint = init_tmp_checkpoint
    latest = checkpointer.get_latest_checkpoint_path()
    if latest is not None:
        scorer.has_reference = scorer.load(latest)
        if loader is not None:
            loader_state.load_counter(loader, latest)


def install_all() -> None:
    """Patch the real NeMo RL modules (call before upstream's example script runs)."""
    import nemo_rl.algorithms.grpo as grpo
    import nemo_rl.utils.config as config_module
    from nemo_rl.data.collate_fn import rl_collate_fn
    from nemo_rl.distributed.ray_actor_environment_registry import ACTOR_ENVIRONMENT_REGISTRY

    config_module.load_config = with_default_block(config_module.load_config)
    if getattr(grpo.setup, "__gradalign_original__", None) is None:
        wrapped = gradalign_setup(grpo.setup, grpo, ACTOR_ENVIRONMENT_REGISTRY, grpo.Policy, rl_collate_fn)
        wrapped.__gradalign_original__ = grpo.setup
        grpo.setup = wrapped
