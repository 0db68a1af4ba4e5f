"""The dynamic_sampling hook: flag off = upstream untouched; flag on = whole top-scored groups,
exactly N·G rows, upstream's filtering and metrics kept. Runs on stand-ins in CI and on the real
NeMo RL source where it is importable (contract tests at the end)."""

from __future__ import annotations

import types

import pytest
import torch

import upstream_standin
from nemo_gradalign.config import ConfigError
from nemo_gradalign.integrations.nemo_rl.config import check_supported, read_gradalign
from nemo_gradalign.integrations.nemo_rl.selection import install, ranked_rows

G, N, Q = 3, 2, 2  # generations per prompt, prompts kept, oversampling
SCORES = torch.tensor([0.1, float("-inf"), 0.7, -0.2])  # group 1 is uninformative


def make_batch(BatchedDataDict):
    rows = Q * N * G
    rewards = torch.tensor([1.0, 0.0, 1.0, 1.0, 1.0, 1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0])
    batch = BatchedDataDict({  # key order as upstream's batches: size is read off the first key
        "message_log": [[{"role": "user", "content": f"p{r // G}"}] for r in range(rows)],
        "idx": torch.arange(rows),
        "total_reward": rewards,
    })
    groups = rewards.reshape(-1, G)
    std = groups.std(1, unbiased=False).repeat_interleave(G)
    return batch, std, groups.mean(1).repeat_interleave(G)


class AttrDict(dict):
    """Readable both ways, as upstream refs differ: ``cfg.grpo.x`` (main) and ``cfg["grpo"]["x"]``."""

    def __getattr__(self, name):
        try:
            value = self[name]
        except KeyError:
            raise AttributeError(name) from None
        return AttrDict(value) if isinstance(value, dict) else value


def master_config(enabled: bool | None) -> AttrDict:
    cfg = {"grpo": dict(num_prompts_per_step=N, num_generations_per_prompt=G, use_dynamic_sampling=True,
                        dynamic_sampling_max_gen_batches=3, batch_multiplier=Q,
                        deduplicate_multimodal_data=False)}
    if enabled is not None:
        cfg["gradalign"] = {"enabled": enabled, "selection_ratio": Q}
    return AttrDict(cfg)


def run(grpo_module, BatchedDataDict, Timer, enabled):
    batch, std, baseline = make_batch(BatchedDataDict)
    return grpo_module.dynamic_sampling(batch, std, baseline, 1, master_config(enabled), Timer())


def check_hook(grpo_module, BatchedDataDict, Timer):
    upstream = [run(grpo_module, BatchedDataDict, Timer, flag) for flag in (None, False)]
    uninstall = install(grpo_module, lambda batch, cfg, validation: SCORES)
    try:
        off = [run(grpo_module, BatchedDataDict, Timer, flag) for flag in (None, False)]
        for (b0, c0, _, m0), (b1, c1, _, m1) in zip(upstream, off):  # flag off: untouched
            assert c0 == c1 and m0 == m1 and b0.size == b1.size
            assert torch.equal(b0["idx"], b1["idx"]) and torch.equal(b0["std"], b1["std"])
        batch, complete, _, metrics = run(grpo_module, BatchedDataDict, Timer, True)
    finally:
        uninstall()
    assert complete and batch.size == N * G
    assert batch["idx"].tolist() == [6, 7, 8, 0, 1, 2]  # groups 2 then 0: the top two, whole
    assert batch["message_log"][0][0]["content"] == "p2"
    assert torch.equal(batch["std"], make_batch(BatchedDataDict)[1][[6, 7, 8, 0, 1, 2]])
    assert metrics["dynamic_sampling_num_discarded_valid_samples"] == 3  # upstream's own metric kept
    assert metrics["gradalign/uninformative_share"] == 0.25
    assert metrics["gradalign/score_max"] == pytest.approx(0.7)
    assert grpo_module.dynamic_sampling is not None


def test_hook_on_stand_ins():
    module = types.SimpleNamespace(dynamic_sampling=upstream_standin.dynamic_sampling)
    check_hook(module, upstream_standin.BatchedDataDict, upstream_standin.Timer)
    assert module.dynamic_sampling is upstream_standin.dynamic_sampling  # uninstalled


def test_ranked_rows_keeps_groups_whole():
    assert ranked_rows(torch.tensor([0.0, 2.0, 1.0]), 2) == [2, 3, 4, 5, 0, 1]


def test_config_shapes_and_unsupported_combinations():
    from pydantic import BaseModel, ConfigDict

    class Master(BaseModel):  # v0.7 / main: pydantic with extra="allow"
        model_config = ConfigDict(extra="allow")
        grpo: dict

    assert read_gradalign({"gradalign": {"enabled": True}}).enabled  # v0.6: plain dict
    # the flag alone: the schedule with plain GRPO's generation; a scoring method: the step schedule
    assert read_gradalign({"gradalign": {"enabled": True}}).schedule == "memory"
    assert read_gradalign({"gradalign": {"enabled": True, "schedule": "step"}}).schedule == "step"
    assert read_gradalign(Master(grpo={}, gradalign={"enabled": True, "method": "dot"})).method == "dot"
    assert read_gradalign(Master(grpo={}, gradalign={"enabled": True, "method": "dot"})).schedule == "step"
    assert not read_gradalign(Master(grpo={})).enabled  # absent = upstream behaviour
    with pytest.raises(ConfigError, match="gradalign.method"):
        read_gradalign({"gradalign": {"enabled": True, "method": "cosine"}})
    bad = {"grpo": {"async_grpo": {"enabled": True}, "batch_multiplier": 1},
           "policy": {"megatron_cfg": {"enabled": False}}}
    with pytest.raises(ConfigError) as err:
        check_supported(bad, read_gradalign({"gradalign": {"enabled": True, "schedule": "step"}}))
    text = str(err.value)
    assert "grpo.async_grpo.enabled=True" in text and "policy.megatron_cfg.enabled=False" in text
    assert "grpo.batch_multiplier=1: GradAlign needs dynamic sampling" in text


# -- contract tests: the same checks against NeMo RL's real source (PYTHONPATH=<checkout>) --------

def test_hook_on_real_nemo_rl():
    grpo = pytest.importorskip("nemo_rl.algorithms.grpo", reason="NeMo RL source not on PYTHONPATH")
    from nemo_rl.distributed.batched_data_dict import BatchedDataDict
    from nemo_rl.utils.timer import Timer

    check_hook(grpo, BatchedDataDict, Timer)


def test_real_signatures_match_what_the_hook_wraps():
    grpo = pytest.importorskip("nemo_rl.algorithms.grpo", reason="NeMo RL source not on PYTHONPATH")
    import inspect

    from nemo_rl.distributed.batched_data_dict import BatchedDataDict
    from nemo_rl.utils.checkpoint import CheckpointManager

    assert list(inspect.signature(grpo.dynamic_sampling).parameters) == list(
        inspect.signature(upstream_standin.dynamic_sampling).parameters)
    for name in ("select_indices", "slice", "from_batches"):
        assert list(inspect.signature(getattr(BatchedDataDict, name)).parameters)[:2] == list(
            inspect.signature(getattr(upstream_standin.BatchedDataDict, name)).parameters)[:2]
    assert list(inspect.signature(CheckpointManager.init_tmp_checkpoint).parameters)[:3] == [
        "self", "step", "training_info"]


def test_validation_rollouts_reach_the_scorer_and_never_upstream():
    BDD = upstream_standin.BatchedDataDict
    batch, std, baseline = make_batch(BDD)
    validation = BDD({"message_log": [[{"role": "user", "content": "val"}]] * G, "idx": torch.full((G,), -1),
                      "total_reward": torch.tensor([1.0, 0.0, 1.0])})
    pending = [validation]
    seen = {}

    def scorer(candidates, cfg, val):
        seen["candidates"], seen["validation"] = candidates.size, val["idx"].tolist() if val else None
        return SCORES

    module = types.SimpleNamespace(dynamic_sampling=upstream_standin.dynamic_sampling)
    install(module, scorer, lambda: pending.pop() if pending else None)
    for expected in ([-1, -1, -1], None):  # handed over once, then gone
        out, complete, _, _ = module.dynamic_sampling(batch, std, baseline, 1, master_config(True),
                                                      upstream_standin.Timer())
        assert seen == {"candidates": Q * N * G, "validation": expected}
        assert complete and out["idx"].tolist() == [6, 7, 8, 0, 1, 2]


# -- whole groups through upstream's row filter under the leave-one-out baseline -----------------

LOO_REWARDS = torch.tensor([1.0, 0.0, 0.0, 0.0,   1.0, 1.0, 0.0, 0.0,   0.0, 0.0, 0.0, 0.0,   1.0, 1.0, 1.0, 0.0])


def loo_std(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """Per row, the (Bessel) std of the group's other rewards: NeMo RL's leave-one-out std."""
    groups = rewards.reshape(-1, group_size)
    return torch.stack([torch.cat([g[:j], g[j + 1:]]).std() for g in groups for j in range(group_size)])


def loo_baseline_and_std(prompts, rewards, valid_mask, leave_one_out_baseline=True):
    """NeMo RL's calculate_baseline_and_std_per_prompt for whole contiguous groups (stand-in)."""
    _, inverse = torch.unique(prompts, dim=0, return_inverse=True)
    baseline, std = torch.zeros_like(rewards), torch.zeros_like(rewards)
    for g in inverse.unique():
        rows = (inverse == g).nonzero().flatten()
        r = rewards[rows]
        for j, row in enumerate(rows.tolist()):
            others = torch.cat([r[:j], r[j + 1:]])
            baseline[row] = others.mean()
            std[row] = others.std().nan_to_num(0) if len(others) > 1 else 0.0
    return baseline, std


def check_whole_groups(grpo_module, BatchedDataDict, Timer, baseline_and_std=None):
    g, n = 4, 2
    rows = LOO_REWARDS.numel()
    batch = BatchedDataDict({"message_log": [[{"role": "user", "content": f"p{r // g}"}] for r in range(rows)],
                             "idx": torch.arange(rows), "total_reward": LOO_REWARDS.clone()})
    if baseline_and_std is None:
        std, baseline = loo_std(LOO_REWARDS, g), torch.zeros(rows)
    else:
        baseline, std = baseline_and_std(torch.arange(rows).div(g, rounding_mode="floor").unsqueeze(1),
                                         LOO_REWARDS.clone(), torch.ones(rows), leave_one_out_baseline=True)
    assert std[0] == 0 and std[1] > 0  # the lone 1 of [1,0,0,0]: upstream alone would drop that row
    cfg = master_config(True)
    cfg["grpo"].update(num_prompts_per_step=n, num_generations_per_prompt=g, batch_multiplier=2)
    cfg["gradalign"]["selection_ratio"] = 2
    scores = torch.tensor([0.9, 0.1, float("-inf"), 0.5])  # best: group 0, then 3
    uninstall = install(grpo_module, lambda b, c, v: scores)
    try:
        out, complete, _, metrics = grpo_module.dynamic_sampling(batch, std, baseline, 1, cfg, Timer())
    finally:
        uninstall()
    assert complete and out["idx"].tolist() == [0, 1, 2, 3, 12, 13, 14, 15]  # whole groups 0 and 3
    assert torch.equal(out["std"], std[[0, 1, 2, 3, 12, 13, 14, 15]])  # the true per-row std again
    assert "gradalign_row_std" not in out
    assert metrics["dynamic_sampling_num_discarded_valid_samples"] == 4  # group 1, whole


def test_whole_groups_kept_under_leave_one_out_std_on_stand_ins():
    module = types.SimpleNamespace(dynamic_sampling=upstream_standin.dynamic_sampling)
    check_whole_groups(module, upstream_standin.BatchedDataDict, upstream_standin.Timer)


def test_whole_groups_kept_by_the_real_dynamic_sampling_and_baseline():
    grpo = pytest.importorskip("nemo_rl.algorithms.grpo", reason="NeMo RL source not on PYTHONPATH")
    from nemo_rl.distributed.batched_data_dict import BatchedDataDict
    from nemo_rl.utils.timer import Timer

    check_whole_groups(grpo, BatchedDataDict, Timer, grpo.calculate_baseline_and_std_per_prompt)
