"""The flag on NeMo-Gym recipes (``env.should_use_nemo_gym``), started as upstream starts them:
``examples/nemo_gym/run_grpo_nemo_gym.py``.

- The trusted set must be named (``gradalign.validation.dataset``, NeMo-Gym JSONL rows: each a
  ``responses_create_params`` object and an ``agent_ref.name``), read by upstream's own
  ``NemoGymDataset`` and processed by the pool's processor, so its prompts are rolled out by the
  recipe's agents like the pool's. Unnamed is refused: the NeMo-Gym runner evaluates every
  validation row (it sets ``grpo.max_val_samples`` to all of them), so none is left to train on,
  and G cannot come from validation prompts generated apart (that is the native rollout's call).
- The trusted mix (``gradalign.steer: false``) only replaces the loader, synchronous or async.
- The steered flag (memory schedule, G from the batch's trusted groups) runs in synchronous GRPO.
  NeMo-Gym's rollout rebuilds the batch and leaves out the rows' dataset ``idx``; it returns the
  rows in the input's order (main's ``run_nemo_gym_rollout_sync`` restores it and raises on a
  missing row; v0.7's ``run_async_nemo_gym_rollout`` sorts its environment's results back by
  row), so ``with_rows_identities`` wraps that module global of grpo.py and gives the rolled-out
  batch the input's ``idx``, as the native rollout's batch carries it, after checking the row
  count. In async GRPO the collector's rollout runs inside its own actor: the steered flag is
  refused there.
"""

from __future__ import annotations

import functools
import json
from typing import Any, Callable

from nemo_gradalign.config import ConfigError, GradAlignConfig
from nemo_gradalign.integrations.nemo_rl.config_access import lookup

# grpo.py's module global grpo_train calls once per step for NeMo-Gym: main's, then v0.7's (both return
# the rows in input order: main's accumulator and v0.7's environment restore it)
ROLLOUTS = ("run_nemo_gym_rollout_sync", "run_async_nemo_gym_rollout")


def is_nemo_gym(master_config: Any) -> bool:
    return bool(lookup(master_config, "env.should_use_nemo_gym", False))


def refusals(master_config: Any, cfg: GradAlignConfig) -> list[str]:
    """Why the flag cannot run this NeMo-Gym recipe ([] when it can, or it is not one)."""
    if not is_nemo_gym(master_config):
        return []
    found = []
    if not cfg.validation.train_share or cfg.validation.dataset is None:
        found.append("env.should_use_nemo_gym=True: NeMo-Gym's runner evaluates every validation row and cannot "
                     "generate validation prompts apart, so the flag needs a named trusted set that trains there: "
                     "set gradalign.validation.dataset (NeMo-Gym JSONL rows) with gradalign.validation.train_share > 0")
    if cfg.steer and lookup(master_config, "grpo.async_grpo.enabled", False):
        found.append("env.should_use_nemo_gym=True with grpo.async_grpo.enabled=True: the collector's NeMo-Gym rollout "
                     "drops the rows' dataset idx inside its own actor, so the steered flag cannot name the trained "
                     "problems; use gradalign.steer=false (the trusted mix) there")
    elif cfg.steer and cfg.schedule != "memory":
        found.append(f"env.should_use_nemo_gym=True: gradalign.schedule={cfg.schedule!r} ranks candidates against G "
                     "from validation prompts generated apart, which NeMo-Gym's rollout does not do; use "
                     "gradalign.schedule=memory (G from the batch's trusted groups)")
    return found


def load_rows(path: str, max_problems: int | None):
    """The trusted set's raw rows as upstream's NemoGymDataset reads them (one JSON line each),
    every line checked first; ConfigError naming the field, the line and what is missing."""
    from nemo_rl.data.datasets.response_datasets.nemogym_dataset import NemoGymDataset

    try:
        rows = NemoGymDataset(path).dataset
    except Exception as err:  # noqa: BLE001 - any reader failure is the user's file: one line
        raise ConfigError(f"gradalign.validation.dataset={path!r} cannot be read as NeMo-Gym rows: "
                          f"{type(err).__name__}: {err}") from None
    for number, line in enumerate(rows["extra_env_info"], 1):
        try:
            row = json.loads(line)
            ok = isinstance(row.get("responses_create_params"), dict) and bool(row["agent_ref"]["name"])
        except (ValueError, TypeError, KeyError, AttributeError):
            ok = False
        if not ok:
            raise ConfigError(f"gradalign.validation.dataset={path!r} line {number} is not a NeMo-Gym row (a JSON "
                              "object with a responses_create_params object and agent_ref.name)")
    if len(rows) == 0:
        raise ConfigError(f"gradalign.validation.dataset={path!r} holds no rows")
    return rows if max_problems is None else rows.select(range(min(len(rows), max_problems)))


def with_rows_identities(rollout: Callable) -> Callable:
    """``run_nemo_gym_rollout_sync``, whose rolled-out batch gets the input rows' ``idx`` back."""

    @functools.wraps(rollout)
    def run_nemo_gym_rollout_sync(*args, **kwargs):
        result = rollout(*args, **kwargs)
        batch = kwargs["input_batch"] if "input_batch" in kwargs else args[1]
        out = result.final_batch
        if "idx" in batch and "idx" not in out:
            if out.size != batch.size:
                raise RuntimeError(f"gradalign: NeMo-Gym returned {out.size} rows for {batch.size}; the trained "
                                   "rows cannot be named")
            out["idx"] = batch["idx"]
        return result

    run_nemo_gym_rollout_sync.__gradalign_original__ = rollout
    return run_nemo_gym_rollout_sync


def install(grpo_module) -> Callable[[], None]:
    """Wrap grpo.py's NeMo-Gym rollout (``ROLLOUTS``); returns the function that puts it back.
    ConfigError where this NeMo RL has none of them."""
    name = next((n for n in ROLLOUTS if hasattr(grpo_module, n)), None)
    if name is None:
        raise ConfigError(f"env.should_use_nemo_gym=True: this NeMo RL's grpo.py has none of {', '.join(ROLLOUTS)}; "
                          "the steered flag cannot name the trained rows here: use gradalign.steer=false")
    current = getattr(grpo_module, name)
    original = getattr(current, "__gradalign_original__", current)
    setattr(grpo_module, name, with_rows_identities(original))

    def uninstall() -> None:
        setattr(grpo_module, name, original)

    return uninstall
