"""The steered flag in NeMo RL's data-plane trainer, through upstream's own data-plane code: the
loader's batch is collated by upstream's ``rl_collate_fn`` (our collate keeps its idx and prompts),
the step's rows are written with upstream's ``kv_first_write`` into upstream's in-memory data-plane
client (the rollout actor's tensor bulk), the advantages come
from upstream's estimator created by ``grpo_sync._create_advantage_estimator`` (wrapped: it keeps
the rewards), and our TQPolicy subclass's ``train_from_meta`` feeds the memory before upstream's
``train_from_meta`` shards the keys (``shard_meta_for_dp``) and upstream's ``TQWorkerMixin``
fetches them into the worker's ``train()``.

- the first step's remembered cosines equal the brute-force oracle's (1e-9), under the dataset idx;
- the estimator's advantages are upstream's, unchanged; the ``gradalign/*`` metrics join the
  step's ``all_mb_metrics``; the sampler's next picks follow the memory;
- training is bit-identical to upstream's TQPolicy over the same rows (the twin worker:
  megatron-core's DDP and Adam on real gloo).
"""

from __future__ import annotations

import types

import pytest
import torch

from helpers import oracle_scores
from nemo_gradalign.integrations.nemo_rl import data_plane
from nemo_gradalign.integrations.nemo_rl.driver import GroupScorer
from nemo_gradalign.integrations.nemo_rl.memory_mode import FeedbackFirstSampler, MemoryFeedback
from nemo_gradalign.megatron import parallel
from nemo_gradalign.megatron.policy import Policy
from test_worker_in_pass import DDP_OPTIONS, POLICY, SPEC64, ReadingWorker
from test_worker_logic import CFG, G, LOSS, ORACLE_LOSS, POOL, VAL, as_nemo_rl_batch
from twin_train import ClippedPGLoss, TwinPolicyWorker

pytest.importorskip("nemo_rl.models.policy.tq_policy", reason="NeMo RL (NEMO_RL_ROOT) not importable")
PER_STEP, STEPS = 4, 2


class Section(dict):
    """A config section read both ways upstream reads them: main's models (attributes), v0.7's dicts."""
    __getattr__ = dict.__getitem__


MASTER = Section(grpo=Section(num_generations_per_prompt=G, adv_estimator=Section(
    name="grpo", use_leave_one_out_baseline=True, normalize_rewards=True, minus_baseline=True)),
    loss_fn=Section(), policy={**POLICY, "train_global_batch_size": PER_STEP * G})


def _worker_classes():
    from nemo_rl.data_plane.worker_mixin import TQWorkerMixin

    class PlaneWorker(TQWorkerMixin, ReadingWorker):  # as upstream's Megatron worker includes TQWorkerMixin
        pass

    class PlainPlaneWorker(TQWorkerMixin, TwinPolicyWorker):
        pass

    return PlaneWorker, PlainPlaneWorker


class InProcessGroup:
    """NeMo RL's RayWorkerGroup for one data-parallel rank: each sharded keyword (``data=`` from
    our driver, ``meta=`` from upstream's train_from_meta) hands the worker its one shard."""

    def __init__(self, worker):
        self.worker, self.calls = worker, []

    def run_all_workers_sharded_data(self, method, *, in_sharded_axes=None, replicate_on_axes=None,
                                     output_is_replicated=None, common_kwargs=None, **sharded):
        self.calls.append(method)
        return [getattr(self.worker, method)(**{k: v[0] for k, v in sharded.items()}, **(common_kwargs or {}))]

    def get_all_worker_results(self, futures):
        return futures

    def shutdown(self, *args, **kwargs) -> bool:  # TQPolicy's shutdown on garbage collection
        return True


def _policy(cls, client, worker):
    """Upstream's TQPolicy class (ours or theirs) over the in-memory client and one in-process
    worker: what its __init__ sets, without Ray (prepare_for_training moves GPU memory only)."""
    policy = cls.__new__(cls)
    policy.cfg, policy.dp_client, policy.tq_partition_id = MASTER.policy, client, "train"
    policy._router_replay_enabled, policy.flops_tracker = False, None
    policy.use_dynamic_batches = policy.use_sequence_packing = False
    policy.worker_group = InProcessGroup(worker)
    policy.sharding_annotations = types.SimpleNamespace(get_axis_size=lambda axis: 1)
    policy.prepare_for_training = lambda *a, **k: None
    return policy


def _served(collate, ids: list[int]):
    """The loader's batch of ``ids`` through ``collate`` (upstream's rl_collate_fn, or ours over it)."""
    return collate([{"message_log": [{"role": "user", "content": "", "token_ids": POOL[i].tokens[0, :POOL[i].prompt_len]}],
                     "length": POOL[i].prompt_len, "extra_env_info": {}, "loss_multiplier": 1.0, "idx": i,
                     "task_name": "math"} for i in ids])


def _step(policy, worker, estimator, ids: list[int], step: int):
    """One grpo_train_sync step past rollout: the bulk put, prev-logprobs, advantages, train."""
    from nemo_rl.data_plane.column_io import kv_first_write
    from nemo_rl.distributed.batched_data_dict import BatchedDataDict

    flat = as_nemo_rl_batch([POOL[i] for i in ids])
    rows = len(flat["input_ids"])
    policy.prepare_step(num_samples=rows, group_size=G)
    bulk = BatchedDataDict({"input_ids": flat["input_ids"], "input_lengths": flat["input_lengths"],
                            "generation_logprobs": torch.zeros(flat["input_ids"].shape),
                            "token_mask": flat["token_mask"].float(), "sample_mask": torch.ones(rows)})
    meta = kv_first_write(bulk, sample_ids=[f"{step}_{r}" for r in range(rows)], dp_client=policy.dp_client,
                          partition_id="train")
    prev = worker.get_logprobs({"input_ids": flat["input_ids"]})
    mask = flat["token_mask"].float()
    advantages = estimator.compute_advantage(
        prompt_ids=torch.arange(len(ids)).repeat_interleave(G).unsqueeze(1), rewards=flat["total_reward"].float(),
        mask=mask, repeated_batch=BatchedDataDict({"total_reward": flat["total_reward"]}), logprobs_policy=prev,
        logprobs_reference=None)
    policy.write_to_dataplane(meta, fields={"prev_logprobs": prev, "reference_policy_logprobs": torch.zeros_like(prev),
                                            "advantages": advantages, "sample_mask": torch.ones(rows)})
    result = policy.train_from_meta(meta, loss_fn=ClippedPGLoss())
    policy.finish_step(meta)
    return result, advantages


def _plane_rank(rank, out):
    import nemo_rl.algorithms.grpo_sync as grpo_sync
    from nemo_rl.data.collate_fn import rl_collate_fn
    from nemo_rl.data_plane.adapters.noop import NoOpDataPlaneClient
    from nemo_rl.models.policy.tq_policy import TQPolicy

    parallel.init_distributed(parallel.Layout())
    plane_worker, plain_worker = _worker_classes()
    oracle = oracle_scores(Policy(SPEC64).model.module, VAL, POOL, **ORACLE_LOSS)
    upstream_create = grpo_sync._create_advantage_estimator

    worker = plane_worker(DDP_OPTIONS[1], SPEC64, MASTER.policy)
    worker._dp_client = NoOpDataPlaneClient()  # setup_data_plane's client (TQ stands behind it in a real run)
    policy = _policy(data_plane.policy_class(), worker._dp_client, worker)
    scorer = GroupScorer(policy, CFG.model_copy(update={"schedule": "memory"}), 0, LOSS, to_flat=data_plane.flat_rows)
    sampler, validation, logs = FeedbackFirstSampler(len(POOL), PER_STEP), [as_nemo_rl_batch(VAL), None], []
    feedback = MemoryFeedback(sampler, scorer.statistics, lambda: validation.pop(0), log=logs.append)
    stash, served = data_plane.RewardStash(), data_plane.LastBatch(rl_collate_fn)
    uninstall = data_plane.install_reward_stash(grpo_sync, stash)
    policy.gradalign_feedback = data_plane.DataPlaneFeedback(feedback, stash, served, MASTER, 0)
    estimator = grpo_sync._create_advantage_estimator(MASTER)  # as grpo_train_sync creates it
    picks, results, advantages, memory0 = [], [], [], None
    for step in range(STEPS):
        picks.append(sampler.next_step().problem_ids.tolist())
        _served(served, picks[-1])  # grpo_train_sync's `for batch in wrapped_dataloader`
        result, adv = _step(policy, worker, estimator, picks[-1], step)
        results.append({k: v for k, v in result["all_mb_metrics"].items() if k.startswith("gradalign/")})
        advantages.append(adv)
        memory0 = sampler.memory.mean.copy() if memory0 is None else memory0
    uninstall()
    restored = grpo_sync._create_advantage_estimator is upstream_create
    _served(served, picks[0][::-1])  # a batch whose rows the data plane holds in another order: refused
    try:
        _step(policy, worker, grpo_sync._create_advantage_estimator(MASTER), picks[0], STEPS)
        refusal = None
    except RuntimeError as err:
        refusal = str(err)

    plain = plain_worker(DDP_OPTIONS[1], SPEC64, MASTER.policy)
    plain._dp_client = NoOpDataPlaneClient()
    upstream = _policy(TQPolicy, plain._dp_client, plain)
    upstream_estimator = grpo_sync._create_advantage_estimator(MASTER)
    same_advantages = True
    for step, ids in enumerate(picks):
        _, adv = _step(upstream, plain, upstream_estimator, ids, step)
        same_advantages &= torch.equal(adv, advantages[step])
    same = all(torch.equal(a, b) for a, b in zip(plain.state(), worker.state()))
    torch.save(dict(picks=picks, results=results, memory0=memory0, oracle=oracle, restored=restored, refusal=refusal,
                    same=same, same_advantages=same_advantages, calls=policy.worker_group.calls), out)


def test_data_plane_trainer_feeds_the_memory_and_trains_as_upstream(tmp_path):
    parallel.spawn(_plane_rank, 1, str(tmp_path / "plane.pt"))
    res = torch.load(tmp_path / "plane.pt", weights_only=False)
    assert res["same"], "training differs from upstream's TQPolicy over the same rows"
    assert res["same_advantages"] and res["restored"]
    _, _, cosine, informative = res["oracle"]
    first = res["picks"][0]
    keep = [i for i in first if informative[i]]
    assert keep and len(keep) < len(first)
    got = torch.tensor(res["memory0"][keep], dtype=torch.float64)
    want = cosine[keep].double()
    worst = float(((got - want).abs() / want.abs().clamp_min(1e-12)).max())
    assert worst <= 1e-9, (got, want)
    assert all(r["gradalign/in_pass"] == 0.0 and "gradalign/mean_cosine" in r for r in res["results"])
    assert res["refusal"] and "does not start with the prompt of dataset idx" in res["refusal"]
    assert res["calls"].count("train_presharded") == len(res["picks"])
    assert res["calls"].count("gradalign_score") == len(res["picks"])
    print(f"data plane: {len(res['picks'])} steps, picks {res['picks']}, first step's cosines vs oracle "
          f"max relative error {worst:.2e}")


def test_entry_builds_our_data_plane_policy_and_keeps_the_rows_identities(tmp_path):
    """The setup wrapper on a data-plane recipe: setup() gets our TQPolicy subclass as its
    policy_factory (the data_plane block and the GradAlign worker, as run_grpo.py's factory passes
    them), the memory loader collates through LastBatch, grpo_sync's estimator factory is wrapped
    (and nothing else of upstream's), and the policy carries the feedback."""
    import functools

    import nemo_rl.algorithms.grpo_sync as grpo_sync
    from torchdata.stateful_dataloader import StatefulDataLoader

    from nemo_gradalign.integrations.nemo_rl.entry import UPSTREAM_WORKER_FQN, WORKER_FQN, gradalign_setup
    from test_entry import TOKENIZER, CheckpointManager, Policy, StatefulDataLoader as Stub, make_grpo, master_config
    from test_trusted_set import N, _trusted_file, _upstream_parts, response_pool

    _, collate, _ = _upstream_parts()
    grpo, made = make_grpo(tmp_path, True), {}

    def setup(master_config, tokenizer, train, val_dataset, processor=None, policy_factory=None):
        made["factory"] = policy_factory  # building it would start Ray and the data plane
        loader = StatefulDataLoader(train, batch_size=N, shuffle=True, collate_fn=collate, drop_last=True)
        return (types.SimpleNamespace(), None, "cluster", loader, Stub([{"idx": 0}]), "loss", "logger",
                CheckpointManager(tmp_path), {}, master_config)

    cfg = master_config(enabled=True, schedule="memory", validation={"dataset": _trusted_file(tmp_path),
                                                                     "train_share": 0.5})
    cfg["grpo"].update(batch_multiplier=1, use_dynamic_sampling=False, num_prompts_per_step=N)
    cfg["data_plane"] = {"enabled": True, "impl": "transfer_queue"}
    hooks = (grpo.dynamic_sampling, grpo.run_multi_turn_rollout)
    upstream_create = grpo_sync._create_advantage_estimator
    try:
        result = gradalign_setup(setup, grpo, {UPSTREAM_WORKER_FQN: "x"}, Policy, collate)(cfg, TOKENIZER,
                                                                                         response_pool(), None)
        factory = made["factory"]
        assert isinstance(factory, functools.partial) and factory.func is data_plane.policy_class()
        assert factory.keywords == {"dp_cfg": cfg["data_plane"], "worker_extension_cls_fqn": WORKER_FQN}
        assert grpo_sync._create_advantage_estimator.__gradalign_original__ is upstream_create
        assert (grpo.dynamic_sampling, grpo.run_multi_turn_rollout) == hooks
        feedback = result[0].gradalign_feedback
        assert isinstance(feedback, data_plane.DataPlaneFeedback)
        batch = next(iter(result[3]))
        assert feedback.served.idx == [int(i) for i in batch["idx"]] and len(feedback.served.prompts) == N
    finally:
        grpo_sync._create_advantage_estimator = upstream_create
