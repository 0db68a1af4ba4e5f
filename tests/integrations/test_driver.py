"""The driver path end to end in one process: repeated_batch -> flat group data -> whole groups
per data-parallel rank -> the worker logic on a real megatron GPT -> scores. NeMo RL's Ray worker
group is replaced by an in-process stand-in with the real method signatures."""

from __future__ import annotations

import math
import types

import pytest
import torch

from helpers import oracle_scores
from nemo_gradalign.integrations.nemo_rl.driver import GroupScorer, shard_as_trained, shard_whole_groups
from nemo_gradalign.integrations.nemo_rl.worker_mixin import GradAlignWorkerMixin
from nemo_gradalign.megatron import parallel
from nemo_gradalign.megatron.policy import Policy
from test_worker_logic import CFG, G, LOSS, ORACLE_LOSS, POOL, SPEC, as_nemo_rl_batch


class LocalWorker(GradAlignWorkerMixin):
    """One 'Megatron policy worker': the mixin over a real megatron model, as in NeMo RL."""

    def __init__(self, model):
        self.model = model


class InProcessWorkerGroup:
    """Stand-in for NeMo RL's RayWorkerGroup with its method signatures
    (run_all_workers_sharded_data, run_all_workers_single_data, get_all_worker_results); one
    data-parallel rank, so one shard."""

    def __init__(self, worker):
        self.worker, self.calls = worker, []

    def run_all_workers_sharded_data(self, method_name, *args, in_sharded_axes=None, replicate_on_axes=None,
                                     output_is_replicated=None, make_dummy_calls_to_free_axes=False,
                                     common_kwargs=None, **kwargs):
        self.calls.append((method_name, len(kwargs["data"])))
        return [getattr(self.worker, method_name)(data=shard, **common_kwargs) for shard in kwargs["data"]]

    def run_all_workers_single_data(self, method_name, *args, run_rank_0_only_axes=None, **kwargs):
        self.calls.append((method_name, 1))
        return [getattr(self.worker, method_name)(*args, **kwargs)]

    def get_all_worker_results(self, futures):
        return futures


def _driver_rank(rank, out):
    parallel.init_distributed(parallel.Layout())
    policy = Policy(SPEC)
    group = InProcessWorkerGroup(LocalWorker(policy.model))
    standin_policy = types.SimpleNamespace(
        worker_group=group, prepare_for_training=lambda *a, **k: None,
        sharding_annotations=types.SimpleNamespace(get_axis_size=lambda axis: 1))
    cfg = types.SimpleNamespace(grpo=types.SimpleNamespace(num_generations_per_prompt=G))
    batch = as_nemo_rl_batch(POOL)
    scorer = GroupScorer(standin_policy, CFG.model_copy(update={"method": "learnalign"}), 0, LOSS,
                         to_flat=lambda b, pad: b)
    learn = scorer(batch, cfg)
    assert vars(group.worker._gradalign.runner.loss) == LOSS  # the recipe's loss reached the worker
    scorer.save(out + ".ckpt")  # NeMo RL's tmp checkpoint dir gets gradalign/rank_0.pt
    saved = group.worker._gradalign.reference.flat.clone()
    group.worker._gradalign.reference.flat.zero_()
    assert scorer.load(out + ".ckpt") and torch.equal(group.worker._gradalign.reference.flat, saved)
    accg = GroupScorer(standin_policy, CFG.model_copy(update={"method": "accgreedy"}), 0, LOSS,
                       to_flat=lambda b, pad: b)(batch, cfg)
    oracle = oracle_scores(policy.model.module, POOL, POOL, **ORACLE_LOSS)
    torch.save(dict(learn=learn, accg=accg, oracle=oracle, calls=group.calls), out)


def test_driver_scores_groups_through_the_worker_methods(tmp_path):
    parallel.spawn(_driver_rank, 1, str(tmp_path / "d.pt"))
    res = torch.load(tmp_path / "d.pt")
    cosine, informative = res["oracle"][2], res["oracle"][3]
    for got, want, inf in zip(res["learn"].tolist(), cosine.tolist(), informative.tolist()):
        assert (got == -math.inf) if not inf else abs(got - want) <= 1e-9 * max(abs(want), 1e-4)
    assert res["calls"] == [("gradalign_build_reference", 1), ("gradalign_score", 1),
                            ("gradalign_save", 1), ("gradalign_load", 1)]
    rates = [float((p.rewards > 0.5).float().mean()) for p in POOL]
    assert res["accg"].tolist() == [-abs(r - 0.5) for r in rates]


def test_whole_groups_per_data_parallel_rank():
    data = {"x": torch.arange(5 * G)}
    shards = shard_whole_groups(data, G, 2)
    assert [len(s["x"]) for s in shards] == [2 * G, 3 * G]  # rounding keeps groups whole
    assert torch.equal(torch.cat([s["x"] for s in shards]), data["x"])


class SizedWorker(LocalWorker):
    """A worker whose recipe trains microbatches of 2 rows (``policy.train_micro_batch_size``)."""

    def __init__(self, model):
        super().__init__(model)
        self.cfg = {"train_micro_batch_size": 2}


def _sized_rank(rank, out):
    parallel.init_distributed(parallel.Layout())
    policy = Policy(SPEC)
    worker = SizedWorker(policy.model)
    rows = []
    handle = policy.model.module.register_forward_pre_hook(lambda module, args: rows.append(args[0].shape[0]))
    data = as_nemo_rl_batch(POOL)
    kwargs = dict(group_size=G, cfg=CFG.model_dump(mode="json"), loss=LOSS)
    worker.gradalign_build_reference(data=data, step=0, **kwargs)
    scores = worker.gradalign_score(data=data, **kwargs)
    handle.remove()
    oracle = oracle_scores(policy.model.module, POOL, POOL, **ORACLE_LOSS)
    torch.save(dict(rows=rows, cosine=scores["cosine"], oracle=oracle), out)


def test_scoring_microbatches_are_never_larger_than_the_recipes(tmp_path):
    """gradalign.max_rollouts_per_microbatch unset: the worker scores in microbatches of the recipe's
    train_micro_batch_size (here 2 rows, a group of G = 4 split in two), with the same exact scores."""
    parallel.spawn(_sized_rank, 1, str(tmp_path / "s.pt"))
    res = torch.load(tmp_path / "s.pt")
    assert res["rows"] and max(res["rows"]) <= 2, res["rows"]
    cosine, informative = res["oracle"][2], res["oracle"][3]
    for got, want, inf in zip(res["cosine"].tolist(), cosine.tolist(), informative.tolist()):
        if inf:
            assert abs(got - want) <= 1e-9 * max(abs(want), 1e-4)


def test_shards_follow_upstreams_cut_of_train_batches():
    """Several optimizer steps per train(): the driver arms each rank with the rows upstream's
    own ``shard_by_batch_size(dp, batch_size=gbs)`` hands its train(), and puts results back in
    batch order; where that cut would split a group, contiguous whole groups as before."""
    batched = pytest.importorskip("nemo_rl.distributed.batched_data_dict")
    data = {"x": torch.arange(8 * G), "y": torch.arange(8 * G) * 10}
    for dp, gbs in ((2, 4 * G), (2, 8 * G), (4, 4 * G), (1, 2 * G), (2, 2 * G)):
        shards, order = shard_as_trained(data, G, dp, gbs)
        upstream = batched.BatchedDataDict(dict(data)).shard_by_batch_size(dp, batch_size=gbs)
        assert [s["x"].tolist() for s in shards] == [u["x"].tolist() for u in upstream], (dp, gbs)
        groups = torch.cat([s["x"] for s in shards])[::G] // G
        assert torch.equal(order, groups)
        back = torch.empty_like(order)
        back[order] = groups  # a per-group result in rank order, put back
        assert torch.equal(back, torch.arange(8))
    shards, order = shard_as_trained(data, G, 2, 2)  # 1 row per rank and step: groups kept whole instead
    assert [len(s["x"]) for s in shards] == [4 * G, 4 * G] and torch.equal(order, torch.arange(8))


def test_rows_the_loss_leaves_out_are_not_scored():
    """grpo_train's sample_mask drops rows after dynamic_sampling (loss_multiplier 0, truncated rows
    under grpo.overlong_filtering, NeMo-Gym's mask_sample): the scored rows are the trained ones."""
    from nemo_gradalign.integrations.nemo_rl.driver import trained_rows

    batch = {"total_reward": torch.ones(6), "loss_multiplier": torch.tensor([1.0, 1.0, 0.0, 1.0, 1.0, 1.0]),
             "truncated": [False, True, False, False, False, False],
             "mask_sample": torch.tensor([False, False, False, False, False, True]),
             "input_ids": torch.ones(6, 3, dtype=torch.long), "input_lengths": torch.full((6,), 3),
             "token_mask": torch.ones(6, 3)}
    filtering = {"grpo": {"overlong_filtering": True}}
    assert trained_rows(batch, filtering).tolist() == [1, 0, 0, 1, 1, 0]
    assert trained_rows(batch, {"grpo": {}}).tolist() == [1, 1, 0, 1, 1, 0]
    assert trained_rows({"total_reward": torch.ones(2)}, filtering) is None
    scorer = GroupScorer(None, CFG, 0, LOSS, to_flat=lambda b, pad: {k: b[k] for k in
                                                                      ("input_ids", "input_lengths", "token_mask",
                                                                       "total_reward")})
    assert scorer._flat(batch, filtering)["token_mask"].sum(1).tolist() == [3, 0, 0, 3, 3, 0]
