"""The memory schedule with in-pass reading, driver to worker in one process: the feedback arms
the worker's train() instead of scoring (no ``gradalign_score`` call, no extra backward), and the
sampler records the read cosines before it picks the next step or saves its state, under each
group's dataset idx; the first step's cosines equal the oracle's (float64, weights not yet
trained). Where the worker cannot read (here: sequence packing) the groups are scored the old
way and the reason is logged once. The recipe-level refusals name the field."""

from __future__ import annotations

import types

import pytest
import torch

from helpers import oracle_scores
from nemo_gradalign.integrations.nemo_rl.config import in_pass_config_reason, read_gradalign
from nemo_gradalign.integrations.nemo_rl.driver import GroupScorer
from nemo_gradalign.integrations.nemo_rl.memory_mode import FeedbackFirstSampler, MemoryFeedback
from nemo_gradalign.megatron import parallel
from nemo_gradalign.megatron.policy import Policy
from test_driver import InProcessWorkerGroup
from test_worker_in_pass import DDP_OPTIONS, POLICY, SPEC64, ReadingWorker, _shard
from test_worker_logic import CFG, G, LOSS, ORACLE_LOSS, POOL, VAL, as_nemo_rl_batch
from twin_train import ClippedPGLoss

PER_STEP = 4
MASTER = types.SimpleNamespace(grpo=types.SimpleNamespace(num_generations_per_prompt=G),
                               gradalign={"enabled": True, "schedule": "memory"})


def _step(sampler, feedback, worker, ids) -> dict:
    """One GRPO step: feedback at dynamic_sampling, then the prev-logprob pass and train()."""
    batch = as_nemo_rl_batch([POOL[i] for i in ids])
    batch["idx"] = [i for i in ids for _ in range(G)]
    metrics = feedback(batch, MASTER)
    _, train = _shard([POOL[i] for i in ids])
    worker.train({**train, "prev_logprobs": worker.get_logprobs(train)}, ClippedPGLoss())
    return metrics


def _memory_rank(rank, out):
    parallel.init_distributed(parallel.Layout())
    policy_cfg = {**POLICY, "train_global_batch_size": PER_STEP * G}
    worker = ReadingWorker(DDP_OPTIONS[1], SPEC64, policy_cfg)
    group = InProcessWorkerGroup(worker)
    policy = types.SimpleNamespace(worker_group=group, prepare_for_training=lambda *a, **k: None,
                                   sharding_annotations=types.SimpleNamespace(get_axis_size=lambda axis: 1))
    scorer = GroupScorer(policy, CFG.model_copy(update={"schedule": "memory"}), 0, LOSS, to_flat=lambda b, pad: b)
    sampler, logs = FeedbackFirstSampler(len(POOL), PER_STEP), []
    validation = [as_nemo_rl_batch(VAL), None, None, None]
    feedback = MemoryFeedback(sampler, scorer.statistics, lambda: validation.pop(0), in_pass=scorer, log=logs.append)
    oracle = oracle_scores(Policy(SPEC64).model.module, VAL, POOL, **ORACLE_LOSS)

    ids0 = sampler.next_step().problem_ids.tolist()
    metrics0 = _step(sampler, feedback, worker, ids0)
    unrecorded = int(sampler.memory.visits.sum())
    ids1 = sampler.next_step().problem_ids.tolist()  # records step 0's in-pass scores first
    after0 = {k: v.copy() if hasattr(v, "copy") else v for k, v in sampler.memory.state_dict().items()}
    calls0 = [name for name, _ in group.calls]
    worker.cfg = {**policy_cfg, "sequence_packing": {"enabled": True}}
    metrics1 = _step(sampler, feedback, worker, ids1)
    _step(sampler, feedback, worker, sampler.next_step().problem_ids.tolist())
    calls1 = [name for name, _ in group.calls][len(calls0):]
    worker.cfg = policy_cfg
    ids3 = sampler.next_step().problem_ids.tolist()
    _step(sampler, feedback, worker, ids3)
    visits_before_save = sampler.memory.visits[ids3].tolist()
    saved = sampler.state_dict()  # a checkpoint: records step 3's in-pass scores first
    torch.save(dict(ids0=ids0, metrics0=metrics0, unrecorded=unrecorded, after0=after0, calls0=calls0,
                    metrics1=metrics1, calls1=calls1, logs=logs, oracle=oracle, ids3=ids3,
                    visits_before_save=visits_before_save, saved_visits=saved["memory"]["visits"][ids3].tolist()),
               out)


def test_memory_feedback_reads_the_trained_groups_in_the_training_pass(tmp_path):
    parallel.spawn(_memory_rank, 1, str(tmp_path / "m.pt"))
    res = torch.load(tmp_path / "m.pt", weights_only=False)
    _, _, cosine, informative = res["oracle"]
    assert res["metrics0"]["gradalign/in_pass"] == 1.0 and res["unrecorded"] == 0
    assert res["calls0"] == ["gradalign_build_reference", "gradalign_arm_in_pass", "gradalign_in_pass_scores"]
    mem, ids0 = res["after0"], res["ids0"]
    assert mem["visits"][ids0].tolist() == [1] * PER_STEP and mem["last_step"][ids0].tolist() == [0] * PER_STEP
    for i in ids0:
        if informative[i]:
            assert abs(float(mem["mean"][i]) - float(cosine[i])) <= 1e-9 * max(abs(float(cosine[i])), 1e-4)
        else:
            assert int(mem["scored"][i]) == 0 and int(mem["zero_streak"][i]) == 1
    assert any(informative[i] for i in ids0) and not all(informative[i] for i in ids0)
    # packing: refused when armed, scored apart (twice), the reason logged once
    assert res["metrics1"]["gradalign/in_pass"] == 0.0
    assert res["calls1"] == ["gradalign_arm_in_pass", "gradalign_disarm_in_pass", "gradalign_score"] * 2
    assert res["logs"] == ["gradalign: in-pass reading off (policy.sequence_packing.enabled=true reorders and packs "
                           "the trained rows): each trained group is scored with a separate backward"]
    assert [v + 1 for v in res["visits_before_save"]] == res["saved_visits"]


@pytest.mark.parametrize("block,loss_fn,reason", [
    ({"in_pass": "off"}, {}, "gradalign.in_pass=off"),
    ({}, {"reference_policy_kl_penalty": 0.01},
     "loss_fn.reference_policy_kl_penalty=0.01 adds the KL penalty's gradient to every group's gradient"),
    ({}, {"use_importance_sampling_correction": True},
     "loss_fn.use_importance_sampling_correction=True weighs tokens by π_old/π_gen"),
    ({}, {"reference_policy_kl_penalty": 0.0, "token_level_loss": False}, None)])
def test_recipe_level_in_pass_refusals_name_the_field(block, loss_fn, reason):
    recipe = {"gradalign": {"enabled": True, "schedule": "memory", **block}, "loss_fn": loss_fn}
    assert in_pass_config_reason(recipe, read_gradalign(recipe)) == reason
