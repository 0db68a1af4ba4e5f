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
    assert read_gradalign(Master(grpo={}, gradalign={"enabled": True, "method": "dot"})).method == "dot"
    assert not read_gradalign(Master(grpo={})).enabled  # absent = upstream behaviour
    with pytest.raises(ConfigError, match="gradalign.method"):
        read_gradalign({"gradalign": {"enabled": True, "method": "cosine"}})
    bad = {"grpo": {"async_grpo": {"enabled": True}, "batch_multiplier": 1},
           "policy": {"megatron_cfg": {"enabled": False}}}
    with pytest.raises(ConfigError) as err:
        check_supported(bad, read_gradalign({"gradalign": {"enabled": True}}))
    text = str(err.value)
    assert "grpo.async_grpo.enabled=true" in text and "policy.megatron_cfg.enabled" in text
    assert "grpo.batch_multiplier=1 must equal gradalign.selection_ratio=4" in text


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


def test_validation_prompts_ride_along_and_are_split_out():
    from nemo_gradalign.integrations.nemo_rl.validation_loader import WithValidationPrompts

    class Loader:  # a Stateful loader, as NeMo RL's StatefulDataLoader
        def __init__(self, batches):
            self.batches, self.pos = batches, 0

        def __iter__(self):
            while self.pos < len(self.batches):
                self.pos += 1
                yield self.batches[self.pos - 1]

        def __len__(self):
            return len(self.batches)

        def state_dict(self):
            return {"pos": self.pos}

        def load_state_dict(self, state):
            self.pos = state["pos"]

    BDD = upstream_standin.BatchedDataDict
    train = [BDD({"message_log": [[{"content": f"t{i}"}]] * 4, "idx": torch.arange(4) + 10 * i,
                  "total_reward": torch.zeros(4)}) for i in range(3)]
    val = BDD({"message_log": [[{"content": "v"}]] * 2, "idx": torch.tensor([-1, -2]), "total_reward": torch.ones(2)})
    loader = WithValidationPrompts(Loader(train), val, refresh_every=2, batched_data_dict_cls=BDD)
    sizes = [b.size for b in loader]
    assert sizes == [6, 4, 6]  # batches 0 and 2 carry the 2 validation prompts
    resumed = WithValidationPrompts(Loader(train), val, 2, BDD)
    resumed.load_state_dict(loader.state_dict())
    assert resumed.batches_seen == 3 and resumed.loader.pos == 3

    # the hook hands the flagged rows to the scorer and never to upstream
    rows = Q * N * G
    batch, std, baseline = make_batch(BDD)
    batch["gradalign_validation"] = torch.zeros(rows, dtype=torch.bool)
    extra = BDD({"message_log": [[{"role": "user", "content": "val"}]] * G, "idx": torch.full((G,), -1),
                 "total_reward": torch.tensor([1.0, 0.0, 1.0]), "gradalign_validation": torch.ones(G, dtype=torch.bool)})
    merged = BDD.from_batches([batch, extra])
    seen = {}

    def scorer(candidates, cfg, validation):
        seen["candidates"], seen["validation"] = candidates.size, validation["idx"].tolist()
        return SCORES

    module = types.SimpleNamespace(dynamic_sampling=upstream_standin.dynamic_sampling)
    install(module, scorer)
    out, complete, _, _ = module.dynamic_sampling(merged, torch.cat([std, torch.full((G,), 0.4)]),
                                                  torch.cat([baseline, torch.full((G,), 0.6)]), 1,
                                                  master_config(True), upstream_standin.Timer())
    assert seen == {"candidates": rows, "validation": [-1, -1, -1]}
    assert complete and out["idx"].tolist() == [6, 7, 8, 0, 1, 2]
