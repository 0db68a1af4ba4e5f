"""The flag on NeMo-Gym recipes, against upstream's own NeMo-Gym data code: the named trusted set
is read by upstream's ``NemoGymDataset`` and processed by the pool's ``nemo_gym_data_processor``
into the loader's dataset; bad lines are refused naming the line; the rolled-out batch of the
NeMo-Gym rollout grpo_train calls (from a stand-in of its contract: the real one needs NeMo-Gym's
servers) gets the input rows' ``idx`` back; the recipe-level rules; and the entry
starts upstream's NeMo-Gym runner."""

from __future__ import annotations

import json
import types

import pytest
import torch

from nemo_gradalign.config import ConfigError
from nemo_gradalign.integrations.nemo_rl import nemo_gym, trusted_set
from nemo_gradalign.integrations.nemo_rl.config import read_gradalign

pytest.importorskip("nemo_rl.data.datasets.response_datasets.nemogym_dataset", reason="NeMo RL not importable")


def _gym_file(path, n: int, agent: str = "math_agent", first: int = 0):
    lines = [json.dumps({"responses_create_params": {"input": [{"role": "user", "content": f"q{first + i}"}]},
                         "agent_ref": {"name": agent}, "expected": str(first + i)}) for i in range(n)]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def _gym_pool(path):
    """The training data as upstream's NeMo-Gym setup builds it: NemoGymDataset rows processed by
    nemo_gym_data_processor (a placeholder message_log; the prompt is rendered by NeMo-Gym)."""
    from nemo_rl.data.datasets.processed_dataset import AllTaskProcessedDataset
    from nemo_rl.data.datasets.response_datasets.nemogym_dataset import NemoGymDataset
    from nemo_rl.data.interfaces import TaskDataSpec
    from nemo_rl.data.processors import nemo_gym_data_processor

    raw = NemoGymDataset(path)
    spec = TaskDataSpec(task_name=raw.task_name)
    processor = types.SimpleNamespace(tokenizer=types.SimpleNamespace(bos_token_id=None))  # no BOS to check
    return AllTaskProcessedDataset(raw.dataset, processor, spec, {raw.task_name: (spec, nemo_gym_data_processor)},
                                   max_seq_length=None)


def test_the_named_trusted_set_is_read_and_processed_as_the_pools_nemo_gym_rows(tmp_path):
    pool = _gym_pool(_gym_file(tmp_path / "pool.jsonl", 5))
    master = {"env": {"should_use_nemo_gym": True}, "grpo": {}}
    cfg = read_gradalign({"gradalign": {"enabled": True, "validation": {
        "dataset": _gym_file(tmp_path / "trusted.jsonl", 3, first=100), "train_share": 0.5}}})
    cfg, rows, trusted = trusted_set.resolve(master, cfg, pool, None)
    both = trusted_set.PoolAndTrusted(pool, trusted)
    item = both[6]
    assert len(both) == 8 and item["idx"] == 6 and item["task_name"] == pool[0]["task_name"]
    assert item["extra_env_info"]["responses_create_params"]["input"][0]["content"] == "q101"
    assert item["extra_env_info"]["agent_ref"] == {"name": "math_agent"}
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"responses_create_params": {}, "agent_ref": {"name": "a"}}) + "\n"
                   + json.dumps({"input": "no agent"}) + "\n")
    with pytest.raises(ConfigError, match=r"bad.jsonl' line 2 is not a NeMo-Gym row"):
        nemo_gym.load_rows(str(bad), None)


def test_the_rolled_out_rows_get_their_dataset_idx_back():
    import nemo_rl.algorithms.grpo as grpo
    from nemo_rl.distributed.batched_data_dict import BatchedDataDict

    def standin(policy_generation, input_batch, tokenizer, task_to_env, generation_config, *args, **kwargs):
        """The NeMo-Gym rollout's contract (main's run_nemo_gym_rollout_sync, v0.7's run_async_nemo_gym_rollout):
        the rows back in input order, without their idx; input_ids, final_batch, rollout_metrics."""
        rows = input_batch.size
        out = BatchedDataDict({"message_log": [[{"role": "user", "token_ids": torch.tensor([i])}] for i in range(rows)],
                               "total_reward": torch.arange(rows, dtype=torch.float32),
                               "loss_multiplier": torch.ones(rows)})
        return types.SimpleNamespace(input_ids=torch.zeros(rows, 1), final_batch=out, rollout_metrics={})

    batch = BatchedDataDict({"idx": [7, 7, 3, 3], "extra_env_info": [{}] * 4})
    result = nemo_gym.with_rows_identities(standin)(None, batch, None, {}, {}, False)
    assert result.final_batch["idx"] == [7, 7, 3, 3]
    keyword = nemo_gym.with_rows_identities(standin)(policy_generation=None, input_batch=batch, tokenizer=None,
                                                     task_to_env={}, generation_config={})
    assert keyword.final_batch["idx"] == [7, 7, 3, 3]
    short = nemo_gym.with_rows_identities(lambda *a, **k: standin(None, BatchedDataDict({"idx": [1, 1]}), *a[2:]))
    with pytest.raises(RuntimeError, match="NeMo-Gym returned 2 rows for 4"):
        short(None, batch, None, {}, {}, False)
    name = next(n for n in nemo_gym.ROLLOUTS if hasattr(grpo, n))  # the one this NeMo RL's grpo_train calls
    upstream = getattr(grpo, name)
    uninstall = nemo_gym.install(grpo)
    try:
        assert getattr(grpo, name).__gradalign_original__ is upstream
        nemo_gym.install(grpo)  # once is enough: the original is kept, not wrapped twice
        assert getattr(grpo, name).__gradalign_original__ is upstream
    finally:
        uninstall()
    assert getattr(grpo, name) is upstream
    with pytest.raises(ConfigError, match="has none of run_nemo_gym_rollout_sync"):
        nemo_gym.install(types.SimpleNamespace())


def test_recipe_rules_and_the_runner_upstream_starts():
    from nemo_gradalign.integrations.nemo_rl.__main__ import upstream_script
    from test_preflight import preflight, recipe

    gym = ("++env.should_use_nemo_gym=true", "gradalign.validation.dataset=/data/trusted.jsonl")
    assert preflight(recipe("gradalign.enabled=true", *gym)) == ["++data.num_workers=0"]
    assert preflight(recipe("gradalign.enabled=true", "gradalign.steer=false", "grpo.async_grpo.enabled=true",
                            *gym)) == ["++data.num_workers=0"]
    for extra, named in ((("grpo.async_grpo.enabled=true",), "use gradalign.steer=false (the trusted mix) there"),
                         (("gradalign.schedule=step",), "gradalign.schedule='step' ranks candidates"),
                         (("gradalign.validation.dataset=null",), "set gradalign.validation.dataset (NeMo-Gym")):
        with pytest.raises(ConfigError, match=named.replace("(", r"\(").replace(")", r"\)")):
            preflight(recipe("gradalign.enabled=true", *gym, *extra))
    assert upstream_script(recipe("gradalign.enabled=true", *gym)) == "nemo_gym/run_grpo_nemo_gym.py"
