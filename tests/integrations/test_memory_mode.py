"""``gradalign.schedule: memory`` in NeMo RL, config time and loader: the recipe keeps plain
GRPO's generation (dynamic sampling and the multiplier as the user set them), what the mode
cannot do is refused naming the field, and the training loader setup() returns is replaced by a
StatefulDataLoader with the memory sampler that upstream's resume path restores exactly. The
``upstream`` cases run NeMo RL's real dataset class, collate function and
``load_dataloader_state`` (skipped without a checkout on PYTHONPATH)."""

from __future__ import annotations

import math
import types

import pytest
import torch
from torchdata.stateful_dataloader import StatefulDataLoader

from nemo_gradalign.config import ConfigError, parse_gradalign
from nemo_gradalign.integrations.nemo_rl.memory_mode import memory_training_loader
from nemo_gradalign.integrations.nemo_rl.preflight import preflight
from nemo_gradalign.selection.memory_sampler import AlignmentMemorySampler
from test_preflight import _entry, recipe

MEMORY = ("gradalign.enabled=true", "gradalign.schedule=memory")


def test_memory_schedule_keeps_plain_grpo_generation(capsys):
    cfg = recipe(*MEMORY)
    assert cfg["data"]["num_workers"] == 1  # upstream's default
    assert preflight(cfg) == ["++data.num_workers=0"]
    assert cfg["grpo"]["use_dynamic_sampling"] is False and cfg["grpo"]["batch_multiplier"] == 1
    printed = capsys.readouterr().out.strip().splitlines()
    assert len(printed) == 1 and "set data.num_workers=0 (gradalign.schedule=memory" in printed[0]
    explicit = recipe(*MEMORY, "grpo.use_dynamic_sampling=false", "grpo.batch_multiplier=1", "data.num_workers=0",
                      "gradalign.memory.explore_share=0.5")
    assert preflight(explicit) == [] and capsys.readouterr().out == ""
    assert explicit["grpo"]["use_dynamic_sampling"] is False and explicit["grpo"]["batch_multiplier"] == 1


def test_memory_seed_follows_gradalign_seed_unless_set():
    from nemo_gradalign.integrations.nemo_rl.config import read_gradalign

    assert read_gradalign(recipe(*MEMORY, "gradalign.seed=7")).memory.seed == 7
    assert read_gradalign(recipe(*MEMORY, "gradalign.seed=7", "gradalign.memory.seed=3")).memory.seed == 3


@pytest.mark.parametrize("overrides, named", [
    (["grpo.use_dynamic_sampling=true"], ["grpo.use_dynamic_sampling=true"]),
    (["grpo.use_dynamic_sampling=true", "grpo.batch_multiplier=4"],
     ["grpo.use_dynamic_sampling=true", "grpo.batch_multiplier=4"]),
    (["data.use_multiple_dataloader=true"], ["data.use_multiple_dataloader=True"]),
    # async GRPO runs the memory sampler in an actor (async_memory.py) with G from the trusted share
    (["grpo.async_grpo.enabled=true", "gradalign.validation.train_share=0"],
     ["grpo.async_grpo.enabled=True", "gradalign.validation.train_share=0"]),
    (["gradalign.memory.skip_cap=1.5"], ["gradalign.memory.skip_cap", "1.5"]),
    (["gradalign.method=dot"], ["schedule='memory'", "'dot'"]),
], ids=["dynamic-sampling", "multiplier", "multiple-loaders", "async", "memory-knob", "method"])
def test_memory_schedule_refusals_name_the_field(overrides, named):
    with pytest.raises(ConfigError) as err:
        preflight(recipe(*MEMORY, *overrides))
    for text in named:
        assert text in str(err.value)


def test_real_entry_refuses_memory_with_dynamic_sampling():
    pytest.importorskip("nemo_rl.utils.config", reason="NeMo RL source not on PYTHONPATH")
    proc, seconds = _entry(*MEMORY, "grpo.use_dynamic_sampling=true")
    assert proc.returncode != 0 and "grpo.use_dynamic_sampling=true: gradalign.schedule=memory" in proc.stderr
    assert "nothing was started" in proc.stderr and seconds < 15, proc.stderr[-2000:]


# -- the loader ---------------------------------------------------------------------------------

def _upstream_parts():
    processed = pytest.importorskip("nemo_rl.data.datasets.processed_dataset", reason="NeMo RL not importable")
    from nemo_rl.data.collate_fn import rl_collate_fn
    from nemo_rl.data.interfaces import TaskDataSpec
    from nemo_rl.data.utils import load_dataloader_state

    def process(entry, spec, tokenizer, max_seq_length, idx):  # a DatumSpec, as upstream's processors build
        tokens = torch.tensor([3, 4 + entry["problem"] % 7, 5])
        return {"message_log": [{"role": "user", "content": f"p{entry['problem']}", "token_ids": tokens}],
                "length": 3, "extra_env_info": {"answer": entry["problem"]}, "loss_multiplier": 1.0,
                "idx": idx, "task_name": "math"}

    tokenizer = types.SimpleNamespace(tokenizer=types.SimpleNamespace(bos_token_id=None))  # no BOS to check
    dataset = processed.AllTaskProcessedDataset([{"problem": i} for i in range(40)], tokenizer,
                                                TaskDataSpec(task_name="math"), process, max_seq_length=16)
    return dataset, rl_collate_fn, load_dataloader_state


def _our_parts():
    class Prompts(torch.utils.data.Dataset):
        def __len__(self):
            return 40

        def __getitem__(self, i):
            return {"idx": i, "prompt": f"p{i}"}

    def collate(datums):
        return {"idx": [d["idx"] for d in datums], "prompt": [d["prompt"] for d in datums]}

    return Prompts(), collate, None


def _feedback(sampler, batch):
    """A fixed function of (problem, step): what the workers' scores would record."""
    ids, step = list(batch["idx"]), sampler.step - 1
    zero = [i % 5 == 0 for i in ids]
    cosine = [math.nan if z else math.sin(7 * i + step) for i, z in zip(ids, zero)]
    sampler.memory.record(ids, step, step // 2, cosine, zero)


class Training:
    """grpo_train's use of the loader: one iterator per epoch, the feedback after each batch."""

    def __init__(self, loader, sampler):
        self.loader, self.sampler, self.batches = loader, sampler, iter(loader)

    def steps(self, n: int) -> list[list[int]]:
        out = []
        while len(out) < n:
            batch = next(self.batches, None)
            if batch is None:  # epoch over: grpo_train's next `for batch in dataloader`
                self.batches = iter(self.loader)
                continue
            _feedback(self.sampler, batch)
            out.append(list(batch["idx"]))
        return out


def _same_memory(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(
        torch.equal(sa[k], sb[k]) if torch.is_tensor(sa[k]) else sa[k] == sb[k] for k in sa)


@pytest.mark.parametrize("parts", [_our_parts, _upstream_parts], ids=["ours", "upstream"])
def test_loader_replaces_setups_and_resumes_exactly(tmp_path, parts):
    dataset, collate, load_state = parts()
    cfg = parse_gradalign({"enabled": True, "schedule": "memory", "memory": {"explore_share": 0.5}})
    built_by_setup = StatefulDataLoader(dataset, batch_size=4, shuffle=True, collate_fn=collate, drop_last=True,
                                        num_workers=1)  # upstream's default num_workers
    loader, sampler = memory_training_loader(built_by_setup, cfg, collate)
    assert isinstance(loader, StatefulDataLoader) and loader.dataset is dataset and loader.sampler is sampler
    assert isinstance(sampler, AlignmentMemorySampler) and loader.num_workers == 0
    assert loader.batch_size == 4 and len(loader) == len(built_by_setup) == 10
    assert sampler.config.seed == cfg.seed  # follows gradalign.seed

    training = Training(loader, sampler)
    training.steps(13)  # into the second epoch, where the memory's choices start
    torch.save(loader.state_dict(), tmp_path / "train_dataloader.pt")  # as grpo_train checkpoints
    later = training.steps(9)  # and on into the third epoch

    resumed_setup = StatefulDataLoader(dataset, batch_size=4, shuffle=True, collate_fn=collate, drop_last=True,
                                       num_workers=1)
    if load_state is not None:  # setup() itself loads our state into its own loader: must not fail
        load_state(resumed_setup, str(tmp_path), {"train": {"dataset_name": "stand-in"}})
    again, sampler2 = memory_training_loader(resumed_setup, cfg, collate, tmp_path,
                                             {"train": {"dataset_name": "stand-in"}}, load_state)
    assert Training(again, sampler2).steps(9) == later
    assert _same_memory(sampler2.memory, sampler.memory) and sampler2.step == sampler.step == 22
    assert sampler.memory.visits.sum() == 22 * 4


def test_loader_without_a_checkpoint_file_starts_fresh(tmp_path):
    dataset, collate, _ = _our_parts()
    cfg = parse_gradalign({"enabled": True, "schedule": "memory"})
    upstream_shaped = StatefulDataLoader(dataset, batch_size=8, shuffle=False, collate_fn=collate, drop_last=True)
    loader, sampler = memory_training_loader(upstream_shaped, cfg, collate, tmp_path)
    assert sampler.step == 0 and len(next(iter(loader))["idx"]) == 8
