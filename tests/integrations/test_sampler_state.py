"""The memory sampler's state in NeMo RL checkpoints (issue 28): rows known by content, a resume on
re-ordered data picks what a run on that data picks, and a damaged state is refused before setup()
naming the file, the field and the newest intact checkpoint. Real ``datasets.Dataset`` rows, a real
torchdata StatefulDataLoader; the ``upstream`` cases run NeMo RL's own AllTaskProcessedDataset,
rl_collate_fn and load_dataloader_state (skipped without a checkout on PYTHONPATH)."""

from __future__ import annotations

import hashlib
import types

import datasets
import numpy as np
import pytest
import torch

from nemo_gradalign.config import ConfigError, parse_gradalign
from nemo_gradalign.integrations.nemo_rl.memory_mode import memory_training_loader
from nemo_gradalign.integrations.nemo_rl.sampler_state import check_resume, dataset_keys
from nemo_gradalign.selection.memory_sampler import AlignmentMemorySampler
from nemo_gradalign.selection.problem_keys import keys_of

CFG = parse_gradalign({"enabled": True, "schedule": "memory", "memory": {"explore_share": 0.5, "seed": 4}})
N, BATCH = 40, 4


def raw_rows(order) -> datasets.Dataset:
    return datasets.Dataset.from_dict({"problem": [f"what is {i} + {i}?" for i in order],
                                       "answer": [str(2 * i) for i in order]})


class Processed(torch.utils.data.Dataset):
    """NeMo RL's AllTaskProcessedDataset in shape: raw rows in ``.dataset``, items with their ``idx``."""

    def __init__(self, raw):
        self.dataset = raw

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        return {"idx": i, "problem": self.dataset[i]["problem"]}


def ours(raw):
    return Processed(raw), lambda items: {"idx": [d["idx"] for d in items], "problem": [d["problem"] for d in items]}


def upstream(raw):
    processed = pytest.importorskip("nemo_rl.data.datasets.processed_dataset", reason="NeMo RL not importable")
    from nemo_rl.data.collate_fn import rl_collate_fn
    from nemo_rl.data.interfaces import TaskDataSpec

    def process(entry, spec, tokenizer, max_seq_length, idx):
        return {"message_log": [{"role": "user", "content": entry["problem"], "token_ids": torch.tensor([3, 4])}],
                "length": 2, "extra_env_info": {"problem": entry["problem"]}, "loss_multiplier": 1.0, "idx": idx,
                "task_name": "math"}

    tokenizer = types.SimpleNamespace(tokenizer=types.SimpleNamespace(bos_token_id=None))
    return (processed.AllTaskProcessedDataset(raw, tokenizer, TaskDataSpec(task_name="math"), process,
                                              max_seq_length=16),
            rl_collate_fn)


def problem_of(dataset, i) -> str:
    return dataset.dataset[int(i)]["problem"]


def train(loader, sampler, dataset, steps: int) -> list[list[str]]:
    """grpo_train's use of the loader, with feedback that depends on the problem, not its row."""
    out, batches = [], iter(loader)
    while len(out) < steps:
        batch = next(batches, None)
        if batch is None:
            batches = iter(loader)
            continue
        ids = [int(i) for i in batch["idx"]]
        names = [problem_of(dataset, i) for i in ids]
        u = np.array([int(hashlib.sha256(f"{n}/{sampler.step}".encode()).hexdigest()[:8], 16) for n in names]) / 16 ** 8
        zero = u < 0.2
        sampler.memory.record(ids, sampler.step - 1, (sampler.step - 1) // 3, np.where(zero, np.nan, 2 * u - 1), zero)
        out.append(names)
    return out


def fresh(dataset, collate, checkpoint=None, load_state=None):
    from torchdata.stateful_dataloader import StatefulDataLoader

    upstream_loader = StatefulDataLoader(dataset, batch_size=BATCH, shuffle=True, collate_fn=collate, drop_last=True)
    return memory_training_loader(upstream_loader, CFG, collate, checkpoint, {"train": {"dataset_name": "x"}},
                                  load_state)


def test_keys_are_the_raw_rows_content_in_idx_order():
    raw = raw_rows(range(N)).shuffle(seed=3)  # an indices mapping, as train_test_split leaves
    keys = dataset_keys(Processed(raw))
    expected = keys_of(f'{{"answer":"{r["answer"]}","problem":"{r["problem"]}"}}'.encode() for r in raw)
    assert np.array_equal(keys, expected)
    assert np.array_equal(dataset_keys(Processed(raw_rows(range(N - 1, -1, -1)))),
                          dataset_keys(Processed(raw_rows(range(N))))[::-1])


@pytest.mark.parametrize("parts", [ours, upstream], ids=["ours", "upstream"])
def test_resume_on_reordered_rows_picks_what_a_run_on_them_picks(tmp_path, parts):
    dataset, collate = parts(raw_rows(range(N)))
    loader, sampler = fresh(dataset, collate)
    train(loader, sampler, dataset, 13)
    (tmp_path / "step_13").mkdir()
    torch.save(loader.state_dict(), tmp_path / "step_13" / "train_dataloader.pt")

    reordered, collate = parts(raw_rows(np.random.default_rng(5).permutation(N)))
    keys = dataset_keys(reordered)
    line = check_resume(tmp_path, lambda: AlignmentMemorySampler(N, BATCH, CFG.memory, keys=keys))
    assert line.endswith(f"the score memory follows problems by content: {N} kept, 0 new (unseen), 0 dropped")
    load_state = None
    if parts is upstream:
        from nemo_rl.data.utils import load_dataloader_state as load_state
    again, sampler2 = fresh(reordered, collate, tmp_path / "step_13", load_state)
    later = train(again, sampler2, reordered, 9)
    straight_loader, straight = fresh(reordered, collate)
    assert train(straight_loader, straight, reordered, 22)[13:] == later
    assert sampler2.step == straight.step == 22 and len({n for b in later for n in b}) > BATCH


def test_a_damaged_state_is_refused_naming_file_field_and_the_intact_checkpoint(tmp_path):
    dataset, collate = ours(raw_rows(range(N)))
    loader, sampler = fresh(dataset, collate)
    for step in (4, 8):
        train(loader, sampler, dataset, 4)
        (tmp_path / f"step_{step}").mkdir()
        torch.save(loader.state_dict(), tmp_path / f"step_{step}" / "train_dataloader.pt")
    file = tmp_path / "step_8" / "train_dataloader.pt"
    state = torch.load(file, weights_only=False)
    memory = state["_sampler_iter_state"]["sampler_state"]["memory"]  # torchdata's batch sampler holds ours
    memory["mean"][int(torch.nonzero(memory["scored"])[0])] = float("nan")
    torch.save(state, file)
    new = lambda: AlignmentMemorySampler(N, BATCH, CFG.memory, keys=dataset_keys(dataset))  # noqa: E731
    with pytest.raises(ConfigError, match=r"mean\[\d+\]=nan is impossible") as err:
        check_resume(tmp_path, new)
    assert f"{file}: ScoreMemory state: mean[" in str(err.value)
    assert f"the newest intact checkpoint is {tmp_path / 'step_4'}" in str(err.value)
    file.write_bytes(file.read_bytes()[:100])
    with pytest.raises(ConfigError, match="it cannot be read"):
        check_resume(tmp_path, new)
    assert check_resume(tmp_path / "none", new) is None  # nothing to resume: nothing to say
