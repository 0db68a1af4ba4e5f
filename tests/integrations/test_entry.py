"""The NeMo RL entry: default gradalign block for struct-mode overrides, and the setup wrapper's
wiring (worker registration, policy factory, validation prompts, checkpoint state, hook) on
stand-ins whose signatures mirror NeMo RL's (main / v0.7 with policy_factory, v0.6 without)."""

from __future__ import annotations

import types
from pathlib import Path

import pytest
from omegaconf import OmegaConf

import upstream_standin
from nemo_gradalign.config import ConfigError, parse_gradalign
from nemo_gradalign.recipe_files import apply_overrides
from nemo_gradalign.integrations.nemo_rl.entry import (
    UPSTREAM_WORKER_FQN, WORKER_FQN, gradalign_setup, with_default_block)
from nemo_gradalign.integrations.nemo_rl.validation_loader import WithValidationPrompts
from test_validation_rollouts import standin_rollout


def test_plain_gradalign_override_works_once_the_default_block_exists():
    load = with_default_block(lambda path: OmegaConf.create({"grpo": {"num_prompts_per_step": 8}}))
    cfg = apply_overrides(load("recipe.yaml"), ["gradalign.enabled=true", "gradalign.method=dot"])
    assert cfg.gradalign.enabled is True and cfg.gradalign.method == "dot"
    with pytest.raises(ConfigError, match="gradalign.enabeld"):  # a typo fails like any other key
        apply_overrides(load("recipe.yaml"), ["gradalign.enabeld=true"])


class StatefulDataLoader:
    def __init__(self, items):
        self.dataset = items

    def __iter__(self):
        yield from ()

    def __len__(self):
        return 0

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


class CheckpointManager:
    def __init__(self, root: Path, latest=None):
        self.root, self.latest = root, latest

    def init_tmp_checkpoint(self, step, training_info, run_config=None):
        path = self.root / f"tmp_step_{step}"
        path.mkdir(parents=True)
        return path

    def get_latest_checkpoint_path(self):
        return self.latest


class RecordingWorkers:
    def __init__(self):
        self.calls = []

    def run_all_workers_single_data(self, method_name, *args, run_rank_0_only_axes=None, **kwargs):
        self.calls.append((method_name, kwargs.get("checkpoint_dir")))
        self.loss = kwargs["loss"]
        return [True]

    def get_all_worker_results(self, futures):
        return futures


class Policy:
    def __init__(self, cluster=None, config=None, worker_extension_cls_fqn=None, **kwargs):
        self.worker_extension_cls_fqn = worker_extension_cls_fqn
        self.worker_group = RecordingWorkers()


def make_grpo(tmp_path, with_factory: bool, latest=None):
    module = types.SimpleNamespace(Policy=Policy, dynamic_sampling=upstream_standin.dynamic_sampling,
                                   run_multi_turn_rollout=standin_rollout)

    def build(master_config, make_policy):
        policy = make_policy(cluster="cluster", config={})
        return (policy, None, "cluster", StatefulDataLoader(["t"]), StatefulDataLoader([{"idx": 0}, {"idx": 1}]),
                "loss", "logger", CheckpointManager(tmp_path, latest), {}, master_config)

    if with_factory:  # main / v0.7
        def setup(master_config, tokenizer, dataset, val_dataset, processor=None, policy_factory=None):
            return build(master_config, policy_factory or module.Policy)
    else:  # v0.6
        def setup(master_config, tokenizer, dataset, val_dataset, processor=None):
            return build(master_config, module.Policy)
    module.setup = setup
    return module


def master_config(**gradalign):
    return {"grpo": {"batch_multiplier": 4, "use_dynamic_sampling": True, "num_prompts_per_step": 2,
                     "num_generations_per_prompt": 2, "use_leave_one_out_baseline": True},
            "policy": {"megatron_cfg": {"enabled": True}, "generation": {"temperature": 0.6}},
            "gradalign": gradalign}


TOKENIZER = types.SimpleNamespace(pad_token_id=0)


@pytest.mark.parametrize("with_factory", [True, False], ids=["main/v0.7", "v0.6"])
def test_setup_flag_off_is_upstream(tmp_path, with_factory):
    grpo = make_grpo(tmp_path, with_factory)
    registry = {UPSTREAM_WORKER_FQN: "mcore-exe"}
    setup = gradalign_setup(grpo.setup, grpo, registry, Policy, list)
    result = setup(master_config(enabled=False), TOKENIZER, None, None)
    assert result[0].worker_extension_cls_fqn is None and isinstance(result[3], StatefulDataLoader)
    assert registry == {UPSTREAM_WORKER_FQN: "mcore-exe"} and grpo.dynamic_sampling is upstream_standin.dynamic_sampling


@pytest.mark.parametrize("with_factory", [True, False], ids=["main/v0.7", "v0.6"])
def test_setup_flag_on_wires_everything(tmp_path, with_factory):
    grpo = make_grpo(tmp_path, with_factory, latest=str(tmp_path / "step_3"))
    registry = {UPSTREAM_WORKER_FQN: "mcore-exe"}
    collate = lambda datums: upstream_standin.BatchedDataDict({"idx": [d["idx"] for d in datums]})
    setup = gradalign_setup(grpo.setup, grpo, registry, Policy, collate)
    policy, *_, loader, _val, _loss, _log, checkpointer, _state, _cfg = setup(
        master_config(enabled=True, schedule="step"), TOKENIZER, None, None)
    assert registry[WORKER_FQN] == "mcore-exe"  # same environment as upstream's Megatron worker
    assert policy.worker_extension_cls_fqn == WORKER_FQN
    assert isinstance(loader, WithValidationPrompts)
    rollout = grpo.run_multi_turn_rollout
    assert rollout.__gradalign_original__ is standin_rollout  # validation prompts: own rollout call
    path = checkpointer.init_tmp_checkpoint(7, {"val:accuracy": 0.5})
    assert path == tmp_path / "tmp_step_7" and (path / "gradalign" / "loader.json").is_file()
    assert policy.worker_group.calls == [("gradalign_load", str(tmp_path / "step_3")),
                                         ("gradalign_save", str(path))]
    assert policy.worker_group.loss == {"baseline": "leave_one_out", "normalize_std": True,
                                        "aggregation": "token_mean", "temperature": 0.6}
    assert grpo.dynamic_sampling.__gradalign_original__ is upstream_standin.dynamic_sampling


def test_setup_refuses_unsupported_configs(tmp_path):
    grpo = make_grpo(tmp_path, True)
    setup = gradalign_setup(grpo.setup, grpo, {UPSTREAM_WORKER_FQN: "x"}, Policy, list)
    bad = master_config(enabled=True)
    bad["grpo"]["async_grpo"] = {"enabled": True}
    with pytest.raises(ConfigError, match="grpo.async_grpo.enabled=True"):
        setup(bad, TOKENIZER, None, None)


def test_real_setup_and_loader_signatures():
    grpo = pytest.importorskip("nemo_rl.algorithms.grpo", reason="NeMo RL source not on PYTHONPATH")
    import inspect

    from nemo_rl.models.policy.lm_policy import Policy as RealPolicy

    params = list(inspect.signature(grpo.setup).parameters)
    assert params[:4] == ["master_config", "tokenizer", "dataset", "val_dataset"]
    assert "worker_extension_cls_fqn" in inspect.signature(RealPolicy).parameters


def test_setup_memory_schedule_replaces_the_training_loader(tmp_path):
    """gradalign.schedule=memory: setup's training loader becomes the memory sampler's (same
    dataset and batch size, validation prompts marked as before), restored from the latest
    checkpoint's train_dataloader.pt, and dynamic_sampling records feedback instead of selecting."""
    import torch
    from torchdata.stateful_dataloader import StatefulDataLoader as RealLoader

    from nemo_gradalign.integrations.nemo_rl.memory_mode import with_memory_feedback
    from nemo_gradalign.selection.memory_sampler import AlignmentMemorySampler, memory_dataloader

    from nemo_gradalign.integrations.nemo_rl.sampler_state import dataset_keys

    dataset = [{"idx": i, "prompt": f"p{i}"} for i in range(12)]
    collate = lambda datums: upstream_standin.BatchedDataDict({"idx": [d["idx"] for d in datums]})
    grpo = make_grpo(tmp_path, True)

    def setup(master_config, tokenizer, train, val_dataset, processor=None, policy_factory=None):
        policy = policy_factory(cluster="cluster", config={})
        loader = RealLoader(train, batch_size=3, shuffle=True, collate_fn=collate, drop_last=True, num_workers=1)
        return (policy, None, "cluster", loader, StatefulDataLoader([{"idx": 0}]), "loss", "logger",
                CheckpointManager(tmp_path, str(tmp_path / "step_2")), {}, master_config)

    cfg = master_config(enabled=True, schedule="memory")
    cfg["grpo"].update(batch_multiplier=1, use_dynamic_sampling=False)
    cfg["checkpointing"] = {"enabled": True, "checkpoint_dir": str(tmp_path)}  # where the stand-in's manager looks
    cfg["grpo"]["num_prompts_per_step"] = 3  # the stand-in setup's loader batch
    saved = AlignmentMemorySampler(12, 3, parse_gradalign({"enabled": True, "schedule": "memory"}).memory,
                                   keys=dataset_keys(dataset))  # the rows known by content, as the entry knows them
    before = memory_dataloader(dataset, saved, collate)  # a previous run: two steps, their feedback
    for step, batch in zip(range(2), before):
        saved.memory.record(batch["idx"], step, 0, [0.5] * 3, [False] * 3)
    (tmp_path / "step_2").mkdir()
    torch.save(before.state_dict(), tmp_path / "step_2" / "train_dataloader.pt")
    result = gradalign_setup(setup, grpo, {UPSTREAM_WORKER_FQN: "x"}, Policy, collate)(cfg, TOKENIZER, dataset, None)
    loader = result[3]
    assert isinstance(loader, WithValidationPrompts) and isinstance(loader.loader, RealLoader)
    sampler = loader.loader.sampler
    assert isinstance(sampler, AlignmentMemorySampler) and loader.loader.dataset is dataset and len(loader) == 4
    batch = next(iter(loader))  # torchdata applies the loaded state when iterated
    assert sampler.step == 3 and sampler.memory.visits.sum() == 6 and len(batch["idx"]) == 3
    assert batch["idx"] == list(saved.next_step().problem_ids)  # the previous run's next step
    assert grpo.dynamic_sampling.__gradalign_original__ is upstream_standin.dynamic_sampling
    assert grpo.dynamic_sampling.__code__ is with_memory_feedback(None, None).__code__

    # a hand-edited memory (issue 28) is refused before upstream's setup() starts anything
    file = tmp_path / "step_2" / "train_dataloader.pt"
    state = torch.load(file, weights_only=False)
    state["_sampler_iter_state"]["sampler_state"]["memory"]["mean"][int(batch["idx"][0])] = float("nan")
    torch.save(state, file)
    called = []
    with pytest.raises(ConfigError, match=rf"{file}: ScoreMemory state: mean\[\d+\]=nan is impossible"):
        gradalign_setup(lambda *a, **k: called.append(1), grpo, {UPSTREAM_WORKER_FQN: "x"}, Policy, collate)(
            cfg, TOKENIZER, dataset, None)
    assert called == []
