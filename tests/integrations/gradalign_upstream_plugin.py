"""pytest plugin for running NeMo RL's OWN unit tests with GradAlign installed.

  PYTHONPATH=<nemo-rl checkout>:<this folder> [GRADALIGN_UPSTREAM_FLAG=on] \\
      pytest -p gradalign_upstream_plugin tests/unit/algorithms/test_grpo.py -k dynamic_sampling

Installs what the entry point installs (load_config's default block, the setup wrapper), the
dynamic_sampling hook and the rollout wrappers on the real ``nemo_rl.algorithms.grpo`` before
collection (the upstream tests bind the names at import).

GRADALIGN_UPSTREAM_FLAG:
- ``off`` (default): upstream's configs carry no ``gradalign:`` block, so every call must reach
  upstream's function unchanged and the scorer must never run.
- ``on``: every dynamic_sampling call sees ``gradalign.enabled=true`` and a scorer that ties all
  groups (so the batch order is upstream's): what remains is the hook itself — whole-group std
  handed to upstream's filter, the true per-row std restored, the metrics added. ``async_grpo_train``
  runs with the async feedback hook (upstream's advantage estimator wrapped) and counts the trained
  batches it is handed.
- ``reverse``: as ``on`` but the last group scores best, to show which upstream assertions depend
  on batch order (selection legitimately reorders).
"""

from __future__ import annotations

import inspect
import os

import torch

MODE = os.environ.get("GRADALIGN_UPSTREAM_FLAG", "off")
CALLS = {"hook": 0, "scored": 0, "flattened": 0, "async_fed": 0, "async_groups": 0}


def _never_score(batch, master_config, validation=None):
    raise AssertionError("GradAlign scored a batch although gradalign.enabled is off")


def _score(batch, master_config, validation=None):
    from nemo_gradalign.integrations.nemo_rl.config import lookup

    CALLS["scored"] += 1
    logs = batch.get("message_log") or []
    if logs and all("token_ids" in m for log in logs for m in log):  # tokenized: the rows the workers would score
        from nemo_gradalign.integrations.nemo_rl.driver import flat_group_data

        flat = flat_group_data(batch, 0)
        assert flat["input_ids"].shape[0] == batch.size and flat["token_mask"].shape == flat["input_ids"].shape
        CALLS["flattened"] += 1
    groups = batch.size // int(lookup(master_config, "grpo.num_generations_per_prompt"))
    return torch.zeros(groups) if MODE == "on" else torch.arange(groups, dtype=torch.float64)


def _enable(master_config) -> None:
    block = {"enabled": True, "schedule": "step"}  # the hook under test: dynamic_sampling
    if isinstance(master_config, dict):
        master_config["gradalign"] = block
    else:
        setattr(master_config, "gradalign", block)


def pytest_configure(config):
    import nemo_rl.algorithms.grpo as grpo

    from nemo_gradalign.integrations.nemo_rl.entry import install_all
    from nemo_gradalign.integrations.nemo_rl.selection import install
    from nemo_gradalign.integrations.nemo_rl.validation_rollouts import ValidationRollouts
    from nemo_gradalign.integrations.nemo_rl.validation_rollouts import install as install_rollouts

    install_all()  # load_config default block + setup wrapper, as the entry point does
    install_rollouts(grpo, ValidationRollouts(None, 1))  # unmarked batches: straight through
    install(grpo, _never_score if MODE == "off" else _score)
    hooked = grpo.dynamic_sampling
    signature = inspect.signature(hooked)

    def counting(*args, **kwargs):
        CALLS["hook"] += 1
        if MODE != "off":
            _enable(signature.bind(*args, **kwargs).arguments["master_config"])
        return hooked(*args, **kwargs)

    grpo.dynamic_sampling = counting
    if MODE != "off":
        _hook_async(grpo)


def _hook_async(grpo) -> None:
    """async_grpo_train runs with the steered flag's feedback hook installed as the entry installs
    it (async_memory.install: upstream's advantage estimator wrapped); the feedback checks what it
    is handed, upstream's trained repeated_batch, is whole groups carrying their dataset idx, and
    counts them (the workers' scoring and the memory actor are tested in test_async_memory.py)."""
    from nemo_gradalign.integrations.nemo_rl import async_memory
    from nemo_gradalign.integrations.nemo_rl.config import lookup
    from nemo_gradalign.integrations.nemo_rl.memory_mode import group_ids

    def feedback(batch, master_config):
        groups = group_ids(batch["idx"], int(lookup(master_config, "grpo.num_generations_per_prompt")))
        assert len(batch["total_reward"]) == len(batch["idx"])
        CALLS["async_fed"] += 1
        CALLS["async_groups"] += len(groups)
        return {"gradalign/fed_groups": float(len(groups))}

    original = grpo.async_grpo_train

    def async_grpo_train(*args, **kwargs):
        uninstall = async_memory.install(grpo, feedback)
        try:
            return original(*args, **kwargs)
        finally:
            uninstall()

    grpo.async_grpo_train = async_grpo_train


def pytest_terminal_summary(terminalreporter):
    terminalreporter.write_line(f"gradalign hook (GRADALIGN_UPSTREAM_FLAG={MODE}): dynamic_sampling went "
                                f"through the hook {CALLS['hook']} times, scored {CALLS['scored']} batches ("
                                f"{CALLS['flattened']} flattened as the workers score them); "
                                f"async_grpo_train fed back {CALLS['async_fed']} trained batches "
                                f"({CALLS['async_groups']} groups) through the estimator hook")
