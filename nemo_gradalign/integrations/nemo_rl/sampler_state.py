"""The memory sampler's state in NeMo RL checkpoints, read as the user data it is.

Problem identity: a training row's key is a 64-bit hash of its raw, untokenized content
(``AllTaskProcessedDataset.dataset``: a Hugging Face dataset, read in Arrow batches, or any
indexable of rows), never its row number: upstream's ``train_test_split(seed=grpo.seed)`` or a
re-ordered ``data.train`` list puts other problems at the same rows with the same length.
Identical rows (DAPO-Math repeats each prompt ~100 times) are told apart by their repeat number
(selection/problem_keys.py). About 10 s per million rows, once per run.

Before ``setup()`` starts anything, the state a run will resume from (upstream resumes from the
highest ``step_N`` under ``checkpointing.checkpoint_dir``; its ``train_dataloader.pt`` holds the
sampler's state) is loaded into a fresh sampler over this run's data: a damaged or impossible
state is refused in one line naming the file, the field and the newest older checkpoint that
loads; one saved for other data is carried over by problem, and a line says how many problems
were kept, are new and were dropped.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from nemo_gradalign.config import ConfigError
from nemo_gradalign.selection.problem_keys import keys_of
from nemo_gradalign.selection.trusted_draw import TrustedDraw
from nemo_gradalign.trainer.checkpoint import step_folders
from nemo_gradalign.trainer.checkpoint_files import DamagedCheckpointFile, newest_intact, read_state

CHECKPOINT_FILE = "train_dataloader.pt"  # upstream's name (train_dataloader{suffix}.pt, one loader)


def _row_bytes(row) -> bytes:
    return json.dumps(row, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=repr).encode()


def _hf_rows(raw):
    """A Hugging Face dataset's rows, read in Arrow batches (its indices mapping respected)."""
    for batch in raw.with_format("arrow").iter(batch_size=8192):
        yield from batch.to_pylist()


def _raw_rows(dataset):
    """The rows before any processor runs: the HF dataset in Arrow batches, an indexable of rows,
    or, for a dataset without raw rows, each item less its ``idx``."""
    raw = getattr(dataset, "dataset", None)
    if raw is not None and hasattr(raw, "with_format"):
        yield from _hf_rows(raw)
    elif raw is not None:
        for i in range(len(raw)):
            yield raw[i]
    else:
        for i in range(len(dataset)):
            item = dataset[i]
            yield {k: v for k, v in item.items() if k != "idx"} if isinstance(item, dict) else item


def dataset_keys(dataset) -> np.ndarray:
    """One key per training row, in ``idx`` order."""
    keys = keys_of(_row_bytes(row) for row in _raw_rows(dataset))
    if keys.size != len(dataset):
        raise ValueError(f"the training dataset has {len(dataset)} rows but yielded {keys.size} raw rows")
    return keys


def load_into(sampler, file: Path) -> None:
    """The sampler part of a saved loader state, checked by the sampler; ValueError naming the file."""
    inner = _sampler_part(read_state(file))
    if inner is None:
        raise DamagedCheckpointFile(file, "it holds no memory sampler state")
    try:
        sampler.load_state_dict(inner)
    except (ValueError, KeyError, TypeError) as err:  # impossible values, or another seed / batch size
        raise ValueError(f"{file}: {err}") from None


def _sampler_part(state):
    """Our sampler's state inside torchdata's loader state (under the batch sampler's iterator
    state, or the index sampler's when saved before iterating)."""
    if not isinstance(state, dict):
        return None
    if "memory" in state and "version" in state:
        return state
    for key in ("_sampler_iter_state", "_index_sampler_state", "sampler_state"):
        found = _sampler_part(state.get(key))
        if found is not None:
            return found
    return None


def check_resume(checkpoint_dir, new_sampler) -> str | None:
    """Before setup(): load the latest checkpoint's sampler state into ``new_sampler()``. Returns
    the line to print when its problems moved; ConfigError naming the file when it is damaged."""
    folders = [p for _, p in step_folders(checkpoint_dir) if (p / CHECKPOINT_FILE).is_file()] if checkpoint_dir else []
    if not folders:
        return None
    latest, sampler = folders[-1], new_sampler()
    try:
        load_into(sampler, latest / CHECKPOINT_FILE)
    except ValueError as err:
        intact = newest_intact(folders[:-1], lambda older: load_into(new_sampler(), older / CHECKPOINT_FILE))
        where = (f"the newest intact checkpoint is {intact}: move {latest} out of {latest.parent} to resume from it"
                 if intact else f"no older checkpoint in {latest.parent} loads either")
        raise ConfigError(f"gradalign: cannot resume from {latest}: {err}; {where}") from None
    remap = sampler.last_remap
    if remap is None or remap.identical:
        return None
    return (f"gradalign: the training data differs from {latest}'s; the score memory follows problems by content: "
            f"{remap.summary()}")


def trusted_draw(master_config, cfg, trusted_rows) -> TrustedDraw | None:
    """The trusted share of each step (trusted_set.py), its problems known by their raw rows' content;
    None without one. ConfigError naming the field when the share leaves no room."""
    from nemo_gradalign.integrations.nemo_rl.config_access import loader_prompts

    if trusted_rows is None:
        return None
    keys = keys_of(_row_bytes(row) for row in _hf_rows(trusted_rows))
    try:
        return TrustedDraw.for_share(keys, cfg.validation.train_share, loader_prompts(master_config), cfg.memory.seed)
    except ValueError as err:
        raise ConfigError(str(err)) from None


def checked_keys(master_config, cfg, dataset, trusted: TrustedDraw | None = None,
                 log=lambda line: print(line, flush=True)) -> np.ndarray:
    """The training rows' keys, after checking the state this run resumes from (``check_resume``)."""
    from nemo_gradalign.integrations.nemo_rl.config import lookup
    from nemo_gradalign.integrations.nemo_rl.config_access import loader_prompts
    from nemo_gradalign.selection.memory_sampler import AlignmentMemorySampler

    keys = dataset_keys(dataset)
    enabled = lookup(master_config, "checkpointing.enabled", False)
    batch = loader_prompts(master_config) - (trusted.per_step if trusted else 0)

    def fresh():
        draw = None if trusted is None else TrustedDraw(trusted.keys, trusted.per_step, trusted.seed)
        return AlignmentMemorySampler(len(dataset), batch, cfg.memory, keys=keys, trusted=draw)

    line = check_resume(lookup(master_config, "checkpointing.checkpoint_dir") if enabled else None, fresh)
    if line:
        log(line)
    return keys


def restore(loader, checkpoint_dir, data_config, load_state: Callable | None) -> None:
    """Load the checkpoint's loader state (train_dataloader.pt) into ``loader``, if there is one:
    through upstream's ``load_dataloader_state``, or as the file's state_dict where NeMo RL has none."""
    if checkpoint_dir is None or not os.path.isfile(os.path.join(str(checkpoint_dir), CHECKPOINT_FILE)):
        return
    if load_state is not None:
        load_state(loader, str(checkpoint_dir), data_config)
    else:
        loader.load_state_dict(torch.load(os.path.join(str(checkpoint_dir), CHECKPOINT_FILE)))
