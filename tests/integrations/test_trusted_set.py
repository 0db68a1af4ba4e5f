"""The trusted set trains and steers inside NeMo RL (``gradalign.validation.train_share``): named apart
from what NeMo RL evaluates on (refused at config time otherwise), read by upstream's own
ResponseDataset and processed by the pool's own processor, served with the pool's picks in one
loader batch (N prompts: plain GRPO's generation) that upstream's ``load_dataloader_state``
restores exactly, and fed back so that G is built from the batch's trusted groups while the memory
remembers the pool's groups only. The upstream cases need NeMo RL on the path (skipped otherwise)."""

from __future__ import annotations

import json
import types

import numpy as np
import pytest
import torch
from torchdata.stateful_dataloader import StatefulDataLoader

from nemo_gradalign.config import ConfigError, parse_gradalign
from nemo_gradalign.engine import ProblemStats
from nemo_gradalign.integrations.nemo_rl import trusted_set
from nemo_gradalign.integrations.nemo_rl.memory_mode import MemoryFeedback, memory_training_loader
from nemo_gradalign.integrations.nemo_rl.preflight import preflight
from nemo_gradalign.integrations.nemo_rl.sampler_state import trusted_draw
from test_memory_mode import _upstream_parts
from test_preflight import recipe

N, K, POOL = 4, 2, 40  # prompts a step (2 of them trusted), rollouts a prompt, pool rows
ON = ("gradalign.enabled=true", "++gradalign.validation.train_share=0.5")


def test_a_named_trusted_set_must_be_apart_from_what_nemo_rl_evaluates_on():
    with pytest.raises(ConfigError) as err:
        preflight(recipe(*ON, "++gradalign.validation.dataset=/data/val.jsonl",
                         "++data.validation={data_path: /data/val.jsonl}"))
    assert ("gradalign.validation.dataset='/data/val.jsonl' is data.validation.data_path, which NeMo RL evaluates "
            "on") in str(err.value)
    with pytest.raises(ConfigError) as err:
        preflight(recipe(*ON, "++gradalign.validation.dataset=/data/pool.jsonl",
                         "++data.train={data_path: /data/pool.jsonl}"))
    assert "is data.train.data_path, the pool itself" in str(err.value)
    assert preflight(recipe(*ON, "++gradalign.validation.dataset=/data/trusted.jsonl")) == ["++data.num_workers=0"]
    assert preflight(recipe(*ON)) == ["++data.num_workers=0"]  # unnamed: the unevaluated rows, checked in setup


def test_the_flag_alone_trains_a_trusted_share_under_the_memory_schedule():
    from nemo_gradalign.integrations.nemo_rl.config import DEFAULT_TRAIN_SHARE, read_gradalign

    assert read_gradalign(recipe("gradalign.enabled=true")).validation.train_share == DEFAULT_TRAIN_SHARE == 0.5
    named = recipe("gradalign.enabled=true", "gradalign.validation.dataset=/data/trusted.jsonl")
    assert read_gradalign(named).validation.train_share == 0.5
    assert preflight(named) == ["++data.num_workers=0"]
    direction_only = recipe("gradalign.enabled=true", "gradalign.validation.train_share=0")
    assert read_gradalign(direction_only).validation.train_share == 0.0
    mix = recipe("gradalign.enabled=true", "gradalign.steer=false")  # the trusted mix: one setting
    assert not read_gradalign(mix).steer and read_gradalign(mix).validation.train_share == 0.5
    assert preflight(mix) == ["++data.num_workers=0"]
    # it scores nothing: fp8 and the DTensor backend are no reason to refuse it; async is
    for layout in (["policy.megatron_cfg.expert_model_parallel_size=2", "policy.megatron_cfg.fp8_cfg.enabled=true"],
                   ["policy.megatron_cfg.enabled=false", "policy.dtensor_cfg.enabled=true"]):
        assert preflight(recipe("gradalign.enabled=true", "gradalign.steer=false", *layout)) == ["++data.num_workers=0"]
        with pytest.raises(ConfigError, match="fp8_cfg.enabled=True|dtensor_cfg.enabled=True"):
            preflight(recipe("gradalign.enabled=true", *layout))
    # async GRPO: the trusted mix runs there (its collector draws from the loader), and so does the
    # steered flag's memory sampler (async_memory.py), with G from the trusted share only
    assert preflight(recipe("gradalign.enabled=true", "gradalign.steer=false", "grpo.async_grpo.enabled=true")) == [
        "++data.num_workers=0"]
    assert "++data.num_workers=0" in preflight(recipe("gradalign.enabled=true", "grpo.async_grpo.enabled=true"))
    with pytest.raises(ConfigError, match="grpo.async_grpo.enabled=True: gradalign.schedule='step' selects at "
                                          "dynamic_sampling, which async GRPO never calls"):
        preflight(recipe("gradalign.enabled=true", "grpo.async_grpo.enabled=true", "gradalign.schedule=step"))
    # the data-plane trainer draws from the same loader (and saves its state the same way); the steered
    # flag runs there too (data_plane.py), with G from the trusted share only; the single controller
    # (run_grpo_single_controller.py) is refused in both modes
    for steer in ("gradalign.steer=false", "gradalign.steer=true"):
        assert preflight(recipe("gradalign.enabled=true", steer, "++data_plane.enabled=true")) == [
            "++data.num_workers=0"]
        with pytest.raises(ConfigError, match="async_rl=<set>: the single controller"):
            preflight(recipe("gradalign.enabled=true", steer, "++data_plane.enabled=true", "++async_rl.sampler.name=x"))
    step = recipe("gradalign.enabled=true", "gradalign.schedule=step", "gradalign.validation.dataset=/data/t.jsonl")
    assert read_gradalign(step).validation.train_share == 0.0  # the step schedule has no trusted share


def _processed(rows, task="math"):
    """Upstream's AllTaskProcessedDataset over a Hugging Face dataset, as setup() receives it."""
    from datasets import Dataset as HFDataset
    from nemo_rl.data.datasets.processed_dataset import AllTaskProcessedDataset
    from nemo_rl.data.interfaces import TaskDataSpec

    def process(entry, spec, tokenizer, max_seq_length, idx):
        return {"message_log": [{"role": "user", "content": entry["q"], "token_ids": torch.tensor([3, 4])}],
                "length": 2, "extra_env_info": {"ground_truth": entry["a"]}, "loss_multiplier": 1.0, "idx": idx,
                "task_name": spec.task_name}

    tokenizer = types.SimpleNamespace(tokenizer=types.SimpleNamespace(bos_token_id=None))
    return AllTaskProcessedDataset(HFDataset.from_list(rows), tokenizer, TaskDataSpec(task_name=task), process,
                                   max_seq_length=16)


def _validation(n, task="math"):
    return _processed([{"q": f"v{i}", "a": str(i)} for i in range(n)], task)


def test_unnamed_the_trusted_set_is_the_validation_rows_nemo_rl_never_evaluates():
    """validate() reads its unshuffled loader for max_val_samples // val_batch_size batches: the rows
    past those train; what it evaluates never does."""
    pytest.importorskip("nemo_rl.data.datasets.processed_dataset", reason="NeMo RL not importable")
    master = recipe("gradalign.enabled=true", "grpo.max_val_samples=10", "grpo.val_batch_size=4")
    cfg = parse_gradalign({"enabled": True, "schedule": "memory", "validation": {"train_share": 0.5}})
    pool, validation = _processed([{"q": f"p{i}", "a": "0"} for i in range(POOL)]), _validation(20)
    same, raw, tail = trusted_set.resolve(master, cfg, pool, validation)
    assert same is cfg and len(tail) == 12 and raw["q"] == [f"v{i}" for i in range(8, 20)]  # 2 batches of 4 read
    assert tail[0]["extra_env_info"] == {"ground_truth": "8"} and tail[0]["task_name"] == "math"
    capped = parse_gradalign({"enabled": True, "schedule": "memory", "validation": {"train_share": 0.5,
                                                                                   "max_problems": 5}})
    assert len(trusted_set.resolve(master, capped, pool, validation)[2]) == 5


def test_no_unevaluated_row_lowers_the_default_share_and_refuses_an_explicit_one():
    pytest.importorskip("nemo_rl.data.datasets.processed_dataset", reason="NeMo RL not importable")
    cfg = parse_gradalign({"enabled": True, "schedule": "memory", "validation": {"train_share": 0.5}})
    pool, lines = _processed([{"q": f"p{i}", "a": "0"} for i in range(POOL)]), []
    default = recipe("gradalign.enabled=true", "grpo.max_val_samples=256", "grpo.val_batch_size=256")
    lowered, raw, tail = trusted_set.resolve(default, cfg, pool, _validation(30), lines.append)
    assert lowered.validation.train_share == 0.0 and raw is None and tail is None
    assert lines == ["gradalign: no trusted set trains (NeMo RL evaluates all 30 validation rows "
                     "(grpo.max_val_samples=256), so none is left to train on): G comes from the evaluated "
                     "validation prompts, generated in a call of their own"]
    explicit = recipe(*ON, "grpo.max_val_samples=256", "grpo.val_batch_size=256")
    with pytest.raises(ConfigError, match=r"gradalign.validation.train_share=0.5 with gradalign.validation.dataset "
                                          r"unset trains on the validation rows NeMo RL never evaluates, but NeMo RL "
                                          r"evaluates all 30"):
        trusted_set.resolve(explicit, cfg, pool, _validation(30))
    with pytest.raises(ConfigError, match=r"the validation rows' task\(s\) \['code'\] are not the training data's "
                                          r"\['math'\]"):
        trusted_set.resolve(explicit, cfg, pool, _validation(300, task="code"))


def _trusted_file(tmp_path, n=6):
    path = tmp_path / "trusted.jsonl"
    path.write_text("".join(json.dumps({"input": f"t{j}", "output": str(j)}) + "\n" for j in range(n)))
    return str(path)


def _upstream_pool_and_trusted(tmp_path):
    """Upstream's ResponseDataset reads the file; the pool's AllTaskProcessedDataset's processor renders it."""
    pool, collate, load_state = _upstream_parts()
    cfg = parse_gradalign({"enabled": True, "schedule": "memory", "validation": {
        "dataset": _trusted_file(tmp_path), "train_share": 0.5}})
    rows = trusted_set.load_trusted_rows(cfg)
    rows = rows.map(lambda r: {"problem": 100 + int(r["messages"][1]["content"])})  # the toy processor's field
    return pool, trusted_set.processed_trusted(pool, rows), cfg, rows, collate, load_state


def test_trusted_rows_are_read_by_upstream_and_rendered_by_the_pools_processor(tmp_path):
    pytest.importorskip("nemo_rl.data.datasets.response_datasets.response_dataset", reason="NeMo RL not importable")
    pool, trusted, cfg, rows, _, _ = _upstream_pool_and_trusted(tmp_path)
    both = trusted_set.PoolAndTrusted(pool, trusted)
    assert len(both) == POOL + 6 and both[3]["idx"] == 3 and both[3]["extra_env_info"] == {"answer": 3}
    item = both[POOL + 2]
    assert item["idx"] == POOL + 2 and item["task_name"] == "math" and item["extra_env_info"] == {"answer": 102}
    bad = parse_gradalign({"enabled": True, "schedule": "memory", "validation": {
        "dataset": str(tmp_path / "missing.jsonl"), "train_share": 0.5}})
    with pytest.raises(ConfigError, match=r"gradalign.validation.dataset='.*missing.jsonl' cannot be read"):
        trusted_set.load_trusted_rows(bad)


def _setup_loader(pool, collate):
    return StatefulDataLoader(pool, batch_size=N, shuffle=True, collate_fn=collate, drop_last=True, num_workers=1)


def test_loader_serves_pool_and_trusted_picks_as_one_batch_and_resumes_through_upstream(tmp_path):
    pytest.importorskip("nemo_rl.data.datasets.response_datasets.response_dataset", reason="NeMo RL not importable")
    pool, trusted, cfg, rows, collate, load_state = _upstream_pool_and_trusted(tmp_path)
    master = {"grpo": {"num_prompts_per_step": N}}
    data_config = {"train": {"dataset_name": "stand-in"}}

    def loader_for(checkpoint=None):
        draw = trusted_draw(master, cfg, rows)
        return memory_training_loader(_setup_loader(pool, collate), cfg, collate, checkpoint, data_config,
                                      load_state if checkpoint else None, trusted=draw,
                                      rows=trusted_set.PoolAndTrusted(pool, trusted))

    loader, sampler = loader_for()
    assert loader.batch_size == N and len(loader) == POOL // 2  # steps an epoch: 2 pool picks each
    batches = iter(loader)
    seen = []
    for step in range(8):
        idx = list(next(batches)["idx"])
        assert len(idx) == N and all(i < POOL for i in idx[:2]) and all(i >= POOL for i in idx[2:])
        sampler.memory.record_visits(idx[:2], step, np.zeros(2, dtype=bool))
        seen.append(idx)
    assert sorted(i - POOL for b in seen[:3] for i in b[2:]) == list(range(6))  # every trusted row once a pass
    torch.save(loader.state_dict(), tmp_path / "train_dataloader.pt")
    later = [list(next(batches)["idx"]) for _ in range(3)]
    again, sampler2 = loader_for(tmp_path)
    assert [list(b["idx"]) for _, b in zip(range(3), again)] == later
    assert sampler2.trusted.drawn == 11 * 2 and sampler2.step == 11  # 8 restored, 3 more


def _batch(idx: list[int], varies: list[bool]):
    """What dynamic_sampling hands the feedback: K rows a group with their dataset idx; a group's
    rewards differ (a gradient) or are all 0 (none)."""
    from nemo_rl.distributed.batched_data_dict import BatchedDataDict

    return BatchedDataDict({"idx": [i for i in idx for _ in range(K)],
                            "total_reward": torch.tensor([float(r) * v for v in varies for r in range(K)])})


def test_g_comes_from_the_batchs_trusted_groups_and_only_the_pool_is_remembered(tmp_path):
    pytest.importorskip("nemo_rl.distributed.batched_data_dict", reason="NeMo RL not importable")
    pool, trusted, cfg, rows, collate, _ = _upstream_pool_and_trusted(tmp_path)
    loader, sampler = memory_training_loader(_setup_loader(pool, collate), cfg, collate,
                                             trusted=trusted_draw({"grpo": {"num_prompts_per_step": N}}, cfg, rows),
                                             rows=trusted_set.PoolAndTrusted(pool, trusted))
    seen_validation = []

    def statistics(batch, master_config, validation):  # the workers' numbers: dot = the group's dataset idx
        seen_validation.append(None if validation is None else list(validation["idx"]))
        groups = batch["idx"][::K]
        return (ProblemStats(torch.tensor(groups, dtype=torch.float64), torch.full((len(groups),), 1e4,
                                                                                 dtype=torch.float64),
                             torch.ones(len(groups), dtype=torch.bool)), torch.ones(len(groups), dtype=torch.bool),
                torch.full((len(groups),), 0.5))

    feedback = MemoryFeedback(sampler, statistics, take_validation=None, refresh_every=2)
    master = types.SimpleNamespace(grpo=types.SimpleNamespace(num_generations_per_prompt=K))
    batches = iter(loader)
    idx = list(next(batches)["idx"])
    # step 0: no trusted group carries a gradient (rewards all 0): no G yet, visits recorded without cosines
    assert feedback(_batch(idx, [True, True, False, False]), master)["gradalign/reference_missing"] == 1.0
    assert sampler.memory.visits[idx[:2]].tolist() == [1, 1] and sampler.memory.scored.sum() == 0
    # step 1: not a refresh step (refresh_every=2), but no G exists yet: G from its two trusted groups
    idx = list(next(batches)["idx"])
    metrics = feedback(_batch(idx, [True] * 4), master)
    assert seen_validation[-1] == [i for i in idx[2:] for _ in range(K)] and metrics["gradalign/generation"] == 0
    assert np.allclose(sampler.memory.mean[idx[:2]], np.array(idx[:2]) / 100.0)  # dot / (‖g‖ = 100), pool rows
    idx = list(next(batches)["idx"])
    assert feedback(_batch(idx, [True] * 4), master)["gradalign/generation"] == 1  # step 2: due, rebuilt
    assert seen_validation[-1] == [i for i in idx[2:] for _ in range(K)]
    assert sampler.memory.visits.size == POOL and sampler.memory.visits.sum() == 6  # only pool picks remembered
    with pytest.raises(RuntimeError, match="are not the ones the sampler drew for step 3"):
        wrong = list(next(batches)["idx"])
        feedback(_batch(wrong[:2] + [POOL + 5 - (wrong[2] - POOL), wrong[3]], [True] * 4), master)


def response_pool():
    """POOL problems as upstream's AllTaskProcessedDataset serves them (a processor reading messages,
    as math_hf_data_processor does)."""
    from nemo_rl.data.datasets.processed_dataset import AllTaskProcessedDataset
    from nemo_rl.data.interfaces import TaskDataSpec

    def process(entry, spec, tokenizer, max_seq_length, idx):
        question, answer = entry["messages"][0]["content"], entry["messages"][1]["content"]
        return {"message_log": [{"role": "user", "content": question, "token_ids": torch.tensor([3, len(question)])}],
                "length": 2, "extra_env_info": {"ground_truth": answer}, "loss_multiplier": 1.0, "idx": idx,
                "task_name": spec.task_name}

    rows = [{"messages": [{"role": "user", "content": f"p{i}"}, {"role": "assistant", "content": str(i)}],
             "task_name": "math"} for i in range(POOL)]
    return AllTaskProcessedDataset(rows, types.SimpleNamespace(tokenizer=types.SimpleNamespace(bos_token_id=None)),
                                   TaskDataSpec(task_name="math"), process, max_seq_length=16)


def test_entry_serves_the_trusted_share_through_setups_loader_and_generates_nothing_apart(tmp_path, capsys):
    """The setup wrapper with the trusted set training: the loader setup() returns becomes the memory
    loader over pool + trusted rows (no validation marker, no second rollout call), the flag's line says
    G costs no generation, and the feedback builds G from the batch's trusted rows."""
    pytest.importorskip("nemo_rl.data.datasets.response_datasets.response_dataset", reason="NeMo RL not importable")
    from test_entry import TOKENIZER, CheckpointManager, Policy, StatefulDataLoader as Stub, make_grpo, master_config

    from nemo_gradalign.integrations.nemo_rl.entry import UPSTREAM_WORKER_FQN, gradalign_setup
    from nemo_gradalign.integrations.nemo_rl.validation_loader import WithValidationPrompts
    from test_validation_rollouts import standin_rollout

    pool = response_pool()
    _, collate, _ = _upstream_parts()
    grpo = make_grpo(tmp_path, True)

    def setup(master_config, tokenizer, train, val_dataset, processor=None, policy_factory=None):
        g = master_config["grpo"]  # upstream's sizing: q·N prompts a loader batch under dynamic sampling
        size = int(N * g["batch_multiplier"]) if g["use_dynamic_sampling"] else N
        loader = StatefulDataLoader(train, batch_size=size, shuffle=True, collate_fn=collate, drop_last=True)
        return ((policy_factory or Policy)(cluster="cluster", config={}), None, "cluster", loader, Stub([{"idx": 0}]),
                "loss", "logger", CheckpointManager(tmp_path), {}, master_config)

    cfg = master_config(enabled=True, schedule="memory", validation={"dataset": _trusted_file(tmp_path),
                                                                     "train_share": 0.5})
    cfg["grpo"].update(batch_multiplier=1, use_dynamic_sampling=False, num_prompts_per_step=N)
    result = gradalign_setup(setup, grpo, {UPSTREAM_WORKER_FQN: "x"}, Policy, collate)(cfg, TOKENIZER, pool, None)
    loader = result[3]
    assert not isinstance(loader, WithValidationPrompts) and grpo.run_multi_turn_rollout is standin_rollout
    assert ("gradalign: the trusted set trains and steers: 2 of each step's 4 prompts come from "
            "gradalign.validation.dataset (6 problems), the memory picks the other 2") in capsys.readouterr().out
    idx = list(next(iter(loader))["idx"])
    assert len(idx) == N and all(i < POOL for i in idx[:2]) and all(POOL <= i < POOL + 6 for i in idx[2:])
    trusted_item = loader.dataset[idx[2]]
    assert trusted_item["extra_env_info"] == {"ground_truth": str(idx[2] - POOL)} and trusted_item["task_name"] == "math"
    with pytest.raises(ConfigError, match="the training data holds 2 tasks"):
        trusted_set.pool_task(types.SimpleNamespace(task_data_processors={"a": None, "b": None}))

    # gradalign.steer=false, the trusted mix: only the loader is replaced; upstream's policy and hooks stay
    from nemo_gradalign.selection.trusted_mix import TrustedMixSampler

    mix_grpo, registry = make_grpo(tmp_path, True), {UPSTREAM_WORKER_FQN: "x"}
    hooks = (mix_grpo.dynamic_sampling, mix_grpo.run_multi_turn_rollout, mix_grpo.Policy)
    mix = master_config(enabled=True, schedule="memory", steer=False,
                        validation={"dataset": _trusted_file(tmp_path), "train_share": 0.5})
    mix["grpo"].update(batch_multiplier=1, use_dynamic_sampling=False, num_prompts_per_step=N)
    result = gradalign_setup(setup, mix_grpo, registry, Policy, collate)(mix, TOKENIZER, pool, None)
    assert registry == {UPSTREAM_WORKER_FQN: "x"} and result[0].worker_extension_cls_fqn is None
    assert (mix_grpo.dynamic_sampling, mix_grpo.run_multi_turn_rollout, mix_grpo.Policy) == hooks
    assert isinstance(result[3].sampler, TrustedMixSampler)
    assert ("gradalign: the trusted mix (gradalign.steer=false): 2 of each step's 4 prompts come from "
            "gradalign.validation.dataset (6 problems), the other 2 from the pool in seeded shuffled passes; no G, "
            "nothing scored") in capsys.readouterr().out
    idx = [list(b["idx"]) for _, b in zip(range(POOL // 2), result[3])]
    assert sorted(i for b in idx for i in b if i < POOL) == list(range(POOL))  # the pool's half: one pass
    assert all(sum(POOL <= i < POOL + 6 for i in b) == 2 and POOL <= b[0] for b in idx)  # interleaved, 2 trusted

    # DAPO (dynamic sampling, batch_multiplier 2): each loader batch of 2N holds the share; upstream's
    # dynamic sampling then keeps the groups with reward variance from both
    dapo = master_config(enabled=True, schedule="memory", steer=False,
                         validation={"dataset": _trusted_file(tmp_path), "train_share": 0.5})
    dapo["grpo"].update(batch_multiplier=2, use_dynamic_sampling=True, num_prompts_per_step=N)
    result = gradalign_setup(setup, make_grpo(tmp_path, True), {UPSTREAM_WORKER_FQN: "x"}, Policy, collate)(
        dapo, TOKENIZER, pool, None)
    assert "4 of each drawn batch's 8 prompts come from gradalign.validation.dataset" in capsys.readouterr().out
    idx = [list(b["idx"]) for _, b in zip(range(POOL // 4), result[3])]
    assert all(len(b) == 2 * N and sum(i >= POOL for i in b) == N for b in idx)
    assert sorted(i for b in idx for i in b if i < POOL) == list(range(POOL))  # one pass of the pool
    assert preflight(recipe("gradalign.enabled=true", "gradalign.steer=false", "grpo.use_dynamic_sampling=true",
                            "grpo.batch_multiplier=3")) == ["++data.num_workers=0"]

    # async GRPO, steered: the loader's sampler asks the memory actor (on real Ray); upstream's
    # advantage estimator is wrapped for the feedback, dynamic_sampling is left alone
    ray = pytest.importorskip("ray")
    from nemo_gradalign.integrations.nemo_rl.async_memory import FeedbackFirstEstimator
    from nemo_gradalign.integrations.nemo_rl.memory_service import RemoteMemorySampler

    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        async_grpo = make_grpo(tmp_path, True)
        async_grpo._create_advantage_estimator = lambda master_config: "upstream's estimator"
        steered = master_config(enabled=True, schedule="memory", validation={"dataset": _trusted_file(tmp_path),
                                                                            "train_share": 0.5})
        steered["grpo"].update(batch_multiplier=1, use_dynamic_sampling=False, num_prompts_per_step=N,
                               async_grpo={"enabled": True, "max_trajectory_age_steps": 1})
        hooks = (async_grpo.dynamic_sampling, async_grpo.run_multi_turn_rollout)
        result = gradalign_setup(setup, async_grpo, {UPSTREAM_WORKER_FQN: "x"}, Policy, collate)(
            steered, TOKENIZER, pool, None)
        assert isinstance(result[3].sampler, RemoteMemorySampler) and result[0].worker_extension_cls_fqn is not None
        assert (async_grpo.dynamic_sampling, async_grpo.run_multi_turn_rollout) == hooks
        estimator = async_grpo._create_advantage_estimator(steered)
        assert isinstance(estimator, FeedbackFirstEstimator) and estimator._estimator == "upstream's estimator"
        idx = [list(b["idx"]) for _, b in zip(range(POOL // 2), result[3])]
        assert sorted(i for b in idx for i in b if i < POOL) == list(range(POOL))  # unseen first: one pass
        assert all(sum(POOL <= i < POOL + 6 for i in b) == 2 and POOL <= b[0] for b in idx)  # interleaved
    finally:
        ray.shutdown()
