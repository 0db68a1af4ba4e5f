"""The memory schedule's feedback in NeMo RL: after each step's rollouts, the trained groups are
scored through the worker methods on a real megatron GPT and recorded in the sampler's memory
under the dataset ``idx`` each group carries: cosines equal the oracle's (float64), zero-gradient
groups are flagged, the step is the sampler's, G's generation counts its rebuilds. The
dynamic_sampling wrapper leaves upstream's result as it was (the stand-in here; the real function
where NeMo RL is importable) and adds the feedback's metrics."""

from __future__ import annotations

import math
import types

import pytest
import torch

import upstream_standin
from helpers import oracle_scores
from nemo_gradalign.integrations.nemo_rl.driver import GroupScorer
from nemo_gradalign.integrations.nemo_rl.memory_mode import MemoryFeedback, group_ids, with_memory_feedback
from nemo_gradalign.megatron import parallel
from nemo_gradalign.megatron.policy import Policy
from nemo_gradalign.selection.memory_sampler import AlignmentMemorySampler
from test_driver import InProcessWorkerGroup, LocalWorker
from test_worker_logic import CFG, G, LOSS, ORACLE_LOSS, POOL, SPEC, VAL, as_nemo_rl_batch

MASTER = types.SimpleNamespace(grpo=types.SimpleNamespace(num_generations_per_prompt=G),
                               gradalign={"enabled": True, "schedule": "memory"})


def _trained_batch(plan_ids: list[int]) -> dict:
    """The step's groups in the order the sampler picked them, each row carrying its dataset idx."""
    batch = as_nemo_rl_batch([POOL[i] for i in plan_ids])
    batch["idx"] = [i for i in plan_ids for _ in range(G)]
    return batch


def _feedback_rank(rank, out):
    parallel.init_distributed(parallel.Layout())
    policy = Policy(SPEC)
    standin_policy = types.SimpleNamespace(
        worker_group=InProcessWorkerGroup(LocalWorker(policy.model)), prepare_for_training=lambda *a, **k: None,
        sharding_annotations=types.SimpleNamespace(get_axis_size=lambda axis: 1))
    cfg = CFG.model_copy(update={"schedule": "memory"})
    scorer = GroupScorer(standin_policy, cfg, 0, LOSS, to_flat=lambda b, pad: b)
    sampler = AlignmentMemorySampler(len(POOL), 5)  # 5 of the 8 problems a step
    pending = [as_nemo_rl_batch(VAL), None, as_nemo_rl_batch(VAL)]  # G built at steps 0 and 2
    feedback = MemoryFeedback(sampler, scorer.statistics, lambda: pending.pop(0))
    steps = []
    for _ in range(3):
        ids = sampler.next_step().problem_ids.tolist()
        metrics = feedback(_trained_batch(ids), MASTER)
        steps.append((ids, metrics, sampler.memory.state_dict()))
    wrong = sampler.next_step().problem_ids.tolist()
    try:
        feedback(_trained_batch(sorted(set(range(len(POOL))) - set(wrong))[:5]), MASTER)
        refusal = None
    except RuntimeError as err:
        refusal = str(err)
    oracle = oracle_scores(policy.model.module, VAL, POOL, **ORACLE_LOSS)
    torch.save(dict(steps=steps, oracle=oracle, refusal=refusal), out)


def test_feedback_records_the_trained_groups_by_idx(tmp_path):
    parallel.spawn(_feedback_rank, 1, str(tmp_path / "f.pt"))
    res = torch.load(tmp_path / "f.pt", weights_only=False)
    cosine, informative = res["oracle"][2], res["oracle"][3]
    visits = torch.zeros(len(POOL), dtype=torch.int32)
    for step, (ids, metrics, memory) in enumerate(res["steps"]):
        visits[ids] += 1
        assert torch.equal(memory["visits"], visits)  # exactly the trained ids, once each
        assert memory["last_step"][ids].tolist() == [step] * len(ids)
        assert metrics["gradalign/generation"] == [0, 0, 1][step] == memory["latest_generation"]
        assert metrics["gradalign/zero_gradient_share"] == pytest.approx(float((~informative[ids]).double().mean()))
    last = res["steps"][-1][2]
    for i in range(len(POOL)):
        if not visits[i]:
            continue
        if informative[i]:  # the weights did not change: every visit records the same cosine
            assert abs(float(last["mean"][i]) - float(cosine[i])) <= 1e-9 * max(abs(float(cosine[i])), 1e-4)
            assert int(last["zero_streak"][i]) == 0
        else:
            assert int(last["scored"][i]) == 0 and int(last["zero_streak"][i]) == int(visits[i])
    assert "are not the prompts the memory sampler picked for step 3" in res["refusal"]


def test_group_ids_read_one_idx_per_whole_group():
    assert group_ids([4, 4, 9, 9, 1, 1], 2) == [4, 9, 1]
    assert group_ids(torch.tensor([3, 3, 3]), 3) == [3]
    with pytest.raises(ValueError, match="different dataset idx"):
        group_ids([4, 4, 9, 4], 2)
    with pytest.raises(ValueError, match="not whole groups of 2"):
        group_ids([4, 4, 9], 2)


def test_simacc_remembers_cosine_times_pass_rate_spread():
    """gradalign.method=simacc: the memory holds cos · 4a(1−a), a from the scorer's pass rates."""
    sampler = AlignmentMemorySampler(6, 2)
    ids = sampler.next_step().problem_ids.tolist()
    stats = types.SimpleNamespace(cosine=lambda: torch.tensor([0.4, -0.5], dtype=torch.float64))
    rates = torch.tensor([0.25, 0.5])  # factors 4·¼·¾ = 0.75 and 1

    def statistics(b, master_config, validation):
        return stats, torch.tensor([True, True]), rates

    master = types.SimpleNamespace(grpo=types.SimpleNamespace(num_generations_per_prompt=2))
    feedback = MemoryFeedback(sampler, statistics, lambda: "validation rollouts", simacc=True)
    feedback({"idx": [i for i in ids for _ in range(2)]}, master)
    assert sampler.memory.mean[ids].tolist() == pytest.approx([0.4 * 0.75, -0.5], rel=1e-15)


def _wrapper_case(dynamic_sampling, batch_type, master):
    """One step through the wrapper: upstream's result untouched, the feedback's metrics added."""
    sampler = AlignmentMemorySampler(6, 2)
    ids = sampler.next_step().problem_ids.tolist()
    batch = batch_type({"idx": [i for i in ids for _ in range(2)],
                        "total_reward": torch.tensor([1.0, 0.0, 1.0, 1.0])})
    seen = []

    def statistics(b, master_config, validation):
        seen.append(list(b["idx"]))
        informative = torch.tensor([True, False])
        stats = types.SimpleNamespace(cosine=lambda: torch.tensor([0.25, 0.0], dtype=torch.float64))
        return stats, informative, None

    feedback = MemoryFeedback(sampler, statistics, lambda: "validation rollouts")
    wrapped = with_memory_feedback(dynamic_sampling, feedback)
    std, baseline = torch.tensor([0.7, 0.7, 0.0, 0.0]), torch.tensor([0.5, 0.5, 1.0, 1.0])
    out, complete, cache, metrics = wrapped(batch, std, baseline, 1, master, upstream_standin.Timer(), None)
    want, *_ = dynamic_sampling(batch, std, baseline, 1, master, upstream_standin.Timer(), None)
    assert complete and out is batch and cache is None and seen == [[i for i in ids for _ in range(2)]]
    assert list(out.keys()) == list(want.keys()) and metrics["gradalign/generation"] == 0
    assert metrics["gradalign/mean_cosine"] == 0.25 and metrics["gradalign/zero_gradient_share"] == 0.5
    assert sampler.memory.visits[ids].tolist() == [1, 1] and sampler.memory.mean[ids[0]] == 0.25
    assert sampler.memory.zero_streak[ids[1]] == 1 and math.isfinite(metrics["gradalign/seconds"])


def test_wrapper_keeps_upstreams_result_standin():
    master = types.SimpleNamespace(grpo=types.SimpleNamespace(
        num_generations_per_prompt=2, num_prompts_per_step=2, use_dynamic_sampling=False),
        gradalign={"enabled": True, "schedule": "memory"})
    _wrapper_case(upstream_standin.dynamic_sampling, upstream_standin.BatchedDataDict, master)


def test_wrapper_keeps_upstreams_result_real():
    grpo = pytest.importorskip("nemo_rl.algorithms.grpo", reason="NeMo RL's grpo not importable")
    from nemo_rl.distributed.batched_data_dict import BatchedDataDict

    class Config(dict):  # main reads master_config.grpo.x, v0.7.0 master_config["grpo"]["x"]
        __getattr__ = dict.__getitem__

    master = Config(grpo=Config(num_generations_per_prompt=2, num_prompts_per_step=2, use_dynamic_sampling=False,
                                dynamic_sampling_max_gen_batches=10), gradalign={"enabled": True, "schedule": "memory"})
    _wrapper_case(grpo.dynamic_sampling, BatchedDataDict, master)
