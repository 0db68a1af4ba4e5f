"""Stand-ins for the two NeMo RL pieces the selection hook touches, for CI where NeMo RL cannot be
installed. Signatures mirror upstream (NVIDIA-NeMo/RL main, v0.7.0, v0.6.0 — identical for these):
``BatchedDataDict.select_indices/slice/from_batches/repeat_interleave/size`` and
``dynamic_sampling(repeated_batch, std, baseline, dynamic_sampling_num_gen_batches, master_config,
timer, batch_cache=None) -> (batch, is_batch_complete, batch_cache, metrics)``. Behaviour follows
upstream's documented algorithm; the contract tests run the same checks on the real code."""

from __future__ import annotations

from collections import UserDict
from contextlib import contextmanager
from copy import deepcopy

import torch


class BatchedDataDict(UserDict):
    @classmethod
    def from_batches(cls, batches, pad_value_dict=None, allow_missing_packed_tensors=False):
        out = cls()
        for key in batches[0]:
            values = [b[key] for b in batches]
            out[key] = torch.cat(values) if torch.is_tensor(values[0]) else sum(values, [])
        return out

    @property
    def size(self) -> int:
        value = next(iter(self.data.values()))
        return value.shape[0] if torch.is_tensor(value) else len(value)

    def select_indices(self, indices):
        out = type(self)()
        for key, value in self.data.items():
            out[key] = value[indices] if torch.is_tensor(value) else [value[i] for i in indices]
        return out

    def slice(self, start: int, end: int):
        return self.select_indices(list(range(start, end)))

    def repeat_interleave(self, num_repeats: int):
        out = type(self)()
        for key, value in self.data.items():
            out[key] = (value.repeat_interleave(num_repeats, dim=0) if torch.is_tensor(value)
                        else [deepcopy(v) for v in value for _ in range(num_repeats)])
        return out


class Timer:
    @contextmanager
    def time(self, name):
        yield


def dynamic_sampling(repeated_batch, std, baseline, dynamic_sampling_num_gen_batches, master_config,
                     timer, batch_cache=None):
    """DAPO dynamic sampling: keep groups with std != 0, cache until N·G rows, keep the first N·G."""
    grpo = master_config.grpo
    need = grpo.num_prompts_per_step * grpo.num_generations_per_prompt
    repeated_batch["baseline"], repeated_batch["std"] = baseline, std
    metrics = {}
    if not grpo.use_dynamic_sampling:
        return repeated_batch, True, batch_cache, metrics
    keep = torch.arange(len(std))[std != 0.0].tolist()
    filtered = repeated_batch.select_indices(keep)
    filtered["filtered_reward"] = filtered["total_reward"]
    if filtered.size > 0:
        batch_cache = filtered if batch_cache is None else BatchedDataDict.from_batches([batch_cache, filtered])
        filtered = batch_cache
    if filtered.size < need:
        if dynamic_sampling_num_gen_batches > grpo.dynamic_sampling_max_gen_batches:
            raise ValueError("Dynamic sampling has reached the maximum allowed number of batches")
        return filtered, False, batch_cache, metrics
    metrics["dynamic_sampling_num_discarded_valid_samples"] = filtered.size - need
    return filtered.slice(0, need), True, batch_cache, metrics
