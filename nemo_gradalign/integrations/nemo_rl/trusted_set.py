"""The trusted set that trains and steers inside NeMo RL (``gradalign.validation.train_share`` > 0).

It is named apart from what NeMo RL evaluates on: ``gradalign.validation.dataset`` (a local JSONL /
parquet / Arrow file or a hub name, in upstream's ResponseDataset form: ``input`` and ``output``
columns, or ``messages``) is read by upstream's own ``ResponseDataset``; a trusted set that is the data
NeMo RL validates on, or the pool itself, is refused at config time naming both fields. Its rows are
processed by the pool's own processor (the pool's task, prompt and environment), so a trusted prompt is
rendered, rewarded and trained exactly as a pool prompt would be, and follow the pool's rows in one
dataset (``PoolAndTrusted``): the memory sampler's loader hands out a step's pool picks and trusted
picks as one batch — one generation call, plain GRPO's generation.

With ``gradalign.validation.dataset`` unset (the flag alone), the trusted set is the recipe's
validation rows that NeMo RL never evaluates: ``validate()`` reads its unshuffled loader for
``grpo.max_val_samples // grpo.val_batch_size`` batches, so every row past those is unread
(``ValidationTail``; on ``grpo_math_1B_megatron.yaml`` 49,744 of OpenMathInstruct-2's ~50,000). Those
rows are served as NeMo RL processed them for validation, so their task must be one of the pool's.
Where no row is left, the flag's default falls back to G from the evaluated prompts in a call of
its own (validation_cost.py's line says what that costs); an explicit share is refused.
"""

from __future__ import annotations

import os
from typing import Any

from torch.utils.data import Dataset

from nemo_gradalign.config import ConfigError, GradAlignConfig
from nemo_gradalign.integrations.nemo_rl.config_access import is_vision_or_audio, lookup
from nemo_gradalign.integrations.nemo_rl.nemo_gym import is_nemo_gym
from nemo_gradalign.integrations.nemo_rl.nemo_gym import load_rows as load_gym_rows


def _named_data(master_config: Any, block: str) -> list[tuple[str, str]]:
    """(field, value) of every dataset a ``data.<block>`` entry (or list of entries) names."""
    entries = lookup(master_config, f"data.{block}")
    if entries is None:
        return []
    listed = entries if isinstance(entries, (list, tuple)) or type(entries).__name__ == "ListConfig" else [entries]
    named = []
    for i, entry in enumerate(listed):
        where = f"data.{block}" + (f"[{i}]" if len(listed) > 1 else "")
        for key in ("data_path", "dataset_name"):
            value = lookup(entry, key)
            if value is not None:
                named.append((f"{where}.{key}", str(value)))
    return named


def refusals(master_config: Any, cfg: GradAlignConfig) -> list[str]:
    """What keeps the trusted set from training here, one line each (config time, no data read)."""
    share, path = cfg.validation.train_share, cfg.validation.dataset
    if not share or path is None:  # unnamed: the validation rows NeMo RL never evaluates (checked in setup)
        return []
    found = []
    if is_vision_or_audio(master_config) and not is_nemo_gym(master_config):  # NeMo-Gym rows are read as they are
        found.append(f"gradalign.validation.dataset={path!r}: a named trusted set is read as text (ResponseDataset), "
                     "and this recipe's rows carry images or audio; leave it unset (the trusted share then comes "
                     "from the validation rows NeMo RL never evaluates, read by the recipe's own dataset)")
    for block, what in (("validation", "which NeMo RL evaluates on"), ("train", "the pool itself")):
        for field, value in _named_data(master_config, block):
            if os.path.normpath(value) == os.path.normpath(path):
                found.append(f"gradalign.validation.dataset={path!r} is {field}, {what}: with "
                             f"gradalign.validation.train_share={share} the trusted set trains, so name one apart")
    return found


def load_trusted_rows(cfg: GradAlignConfig, gym: bool = False):
    """The trusted set's raw rows (a Hugging Face dataset of ``messages``), read by upstream's
    ResponseDataset (``gym``: NeMo-Gym rows, nemo_gym.py); ConfigError naming the field when it
    cannot be read."""
    from nemo_rl.data.datasets.response_datasets.response_dataset import ResponseDataset

    path = cfg.validation.dataset
    if gym:
        return load_gym_rows(path, cfg.validation.max_problems)
    split = {} if os.path.exists(path) else {"split": cfg.validation.split}  # a hub name has splits
    try:
        rows = ResponseDataset(data_path=path, **split).dataset
    except Exception as err:  # noqa: BLE001 - any reader failure is the user's file: one line
        raise ConfigError(f"gradalign.validation.dataset={path!r} cannot be read as a ResponseDataset "
                          f"(input/output columns, or messages): {type(err).__name__}: {err}") from None
    if len(rows) == 0:
        raise ConfigError(f"gradalign.validation.dataset={path!r} holds no rows")
    if cfg.validation.max_problems is not None:
        rows = rows.select(range(min(len(rows), cfg.validation.max_problems)))
    return rows


def pool_task(pool) -> str:
    """The pool's one task name: the trusted rows take it, and with it the pool's processor and env."""
    processors = pool.task_data_processors
    if not isinstance(processors, dict):
        return pool.default_task_data_spec.task_name
    if len(processors) != 1:
        raise ConfigError(f"gradalign.validation.train_share: the training data holds {len(processors)} tasks "
                          f"({', '.join(sorted(processors))}); a trusted set that trains is supported for a "
                          "single-task pool only (whose processor and environment its rows would take)")
    return next(iter(processors))


def processed_trusted(pool, rows):
    """The trusted rows processed as the pool's: its tokenizer, task specs, processors, length cap."""
    from nemo_rl.data.datasets.processed_dataset import AllTaskProcessedDataset

    task = pool_task(pool)
    rows = rows.remove_columns([c for c in ("task_name",) if c in rows.column_names])
    rows = rows.add_column("task_name", [task] * len(rows))
    return AllTaskProcessedDataset(rows, pool.tokenizer, pool.default_task_data_spec, pool.task_data_processors,
                                   pool.task_data_preprocessors, max_seq_length=pool.max_seq_length)


class PoolAndTrusted(Dataset):
    """The pool's rows, then the trusted set's; a trusted item's ``idx`` is its row here."""

    def __init__(self, pool, trusted):
        self.pool, self.trusted = pool, trusted

    def __len__(self) -> int:
        return len(self.pool) + len(self.trusted)

    def __getitem__(self, i: int):
        if i < len(self.pool):
            return self.pool[i]
        return {**self.trusted[i - len(self.pool)], "idx": i}


def evaluated_rows(master_config: Any, available: int) -> int:
    """How many of the validation data's first rows NeMo RL's ``validate()`` reads: its loader is
    unshuffled and stops after ``max_val_samples // val_batch_size`` batches (all, without both)."""
    samples, batch = lookup(master_config, "grpo.max_val_samples"), lookup(master_config, "grpo.val_batch_size")
    if samples is None or not batch:
        return available
    return min(available, int(samples) // int(batch) * int(batch))


def _tasks(processed) -> set[str]:
    processors = processed.task_data_processors
    return set(processors) if isinstance(processors, dict) else {processed.default_task_data_spec.task_name}


class ValidationTail(Dataset):
    """Rows ``start..stop`` of NeMo RL's processed validation data (the ones it never evaluates);
    ``dataset`` holds their raw rows, for their content keys."""

    def __init__(self, validation, start: int, stop: int):
        self.validation, self.start, self.stop = validation, start, stop
        raw = validation.dataset
        self.dataset = raw.select(range(start, stop)) if hasattr(raw, "select") else raw[start:stop]

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitem__(self, j: int):
        return self.validation[self.start + j]


def validation_tail(master_config: Any, cfg: GradAlignConfig, pool, validation) -> tuple[ValidationTail | None, str]:
    """The validation rows NeMo RL never evaluates, as the trusted set that trains (capped at
    ``validation.max_problems``), or None and the one-line reason there are none."""
    if validation is None or isinstance(validation, dict) or not hasattr(validation, "dataset"):
        return None, "the recipe has no single validation dataset"
    available = len(validation)
    start = evaluated_rows(master_config, available)
    stop = available if cfg.validation.max_problems is None else min(available, start + cfg.validation.max_problems)
    if stop <= start:
        return None, (f"NeMo RL evaluates all {available:,} validation rows (grpo.max_val_samples="
                      f"{lookup(master_config, 'grpo.max_val_samples')}), so none is left to train on")
    foreign = _tasks(validation) - _tasks(pool)
    if foreign:
        return None, (f"the validation rows' task(s) {sorted(foreign)} are not the training data's "
                      f"{sorted(_tasks(pool))}, whose environment would reward them")
    return ValidationTail(validation, start, stop), ""


def resolve(master_config: Any, cfg: GradAlignConfig, pool, validation, log=print):
    """(cfg, raw rows, processed rows) of the trusted set that trains: the named one, else the
    validation tail. None left: an explicit share is refused; the default becomes 0 (one line)."""
    share = cfg.validation.train_share
    if not share:
        return cfg, None, None
    if cfg.validation.dataset is not None:
        rows = load_trusted_rows(cfg, is_nemo_gym(master_config))
        pool_task(pool)  # a multi-task pool is refused before setup()
        return cfg, rows, processed_trusted(pool, rows)
    tail, why = validation_tail(master_config, cfg, pool, validation)
    if tail is not None:
        return cfg, tail.dataset, tail
    if lookup(master_config, "gradalign.validation.train_share") is not None or not cfg.steer:  # the user's choice
        raise ConfigError(f"gradalign.validation.train_share={share} with gradalign.validation.dataset unset trains "
                          f"on the validation rows NeMo RL never evaluates, but {why}: name a trusted set in "
                          "gradalign.validation.dataset")
    log(f"gradalign: no trusted set trains ({why}): G comes from the evaluated validation prompts, generated "
        "in a call of their own")
    return cfg.model_copy(update={"validation": cfg.validation.model_copy(update={"train_share": 0.0})}), None, None
