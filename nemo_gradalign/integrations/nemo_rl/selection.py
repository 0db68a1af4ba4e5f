"""The selection hook at NeMo RL's ``dynamic_sampling`` position (reference/nemo_rl.md §1.4, §1.6).

With ``grpo.batch_multiplier = q`` and ``use_dynamic_sampling: true`` the dataloader draws q·N
prompts; after generation and rewards ``grpo_train`` calls ``dynamic_sampling(repeated_batch, std,
baseline, n_gen_batches, master_config, timer, batch_cache)``, which drops zero-std groups and keeps
the first N·G rows. The hook scores every group, reorders the batch whole group by whole group,
best first, and delegates to upstream's function — so upstream's filtering, caching, slicing and
metrics stay exactly as they are and the kept N·G rows are the top-scored groups. Upstream's row
filter is handed each group's largest std (``group_std``) so it keeps or drops whole groups; the
batch it returns gets the true per-row std back. With the flag off (or no ``gradalign:`` block)
the call goes straight to upstream's function.

Limit: when one generation batch holds fewer than N informative groups, upstream caches them and
tops up from the next batch, first come first kept; ranking is within each generation batch.
"""

from __future__ import annotations

import functools
import math
import statistics
import time
from typing import Any, Callable

import torch

from nemo_gradalign.integrations.nemo_rl.config import lookup, read_gradalign

# (candidate batch, master_config, validation batch or None) -> one score per group, -inf = never keep
ScoreGroups = Callable[[Any, Any, Any], torch.Tensor]
ROW_STD = "gradalign_row_std"  # the true per-row std, carried through upstream's filter and cache


def ranked_rows(scores: torch.Tensor, group_size: int) -> list[int]:
    """Row indices of all groups, whole groups, best score first (ties keep batch order)."""
    order = torch.sort(scores.double(), descending=True, stable=True).indices.tolist()
    return [g * group_size + j for g in order for j in range(group_size)]


def selection_metrics(scores: torch.Tensor, rewards: torch.Tensor, group_size: int, keep: int) -> dict:
    finite = [s for s in scores.tolist() if math.isfinite(s)]
    order = torch.sort(scores.double(), descending=True, stable=True).indices[:keep]
    pass_rates = (rewards.reshape(-1, group_size) > 0.5).float().mean(1)
    return {
        "gradalign/uninformative_share": 1.0 - len(finite) / max(1, scores.numel()),
        "gradalign/score_min": min(finite, default=float("nan")),
        "gradalign/score_median": statistics.median(finite) if finite else float("nan"),
        "gradalign/score_max": max(finite, default=float("nan")),
        "gradalign/top_pass_rate": float(pass_rates[order].mean()) if keep else float("nan"),
        "gradalign/pool_pass_rate": float(pass_rates.mean()),
    }


def group_std(std: torch.Tensor, group_size: int) -> torch.Tensor:
    """Every row gets its group's largest std, so upstream's row filter (``std != 0``) keeps or
    drops whole groups. Per-row std (leave-one-out) is 0 for the lone 1 of [1, 0, 0, 0]; upstream
    alone would drop that row and split the group."""
    return std.reshape(-1, group_size).amax(1).repeat_interleave(group_size)


def with_gradalign(original: Callable, score_groups: ScoreGroups,
                   take_validation: Callable[[], Any] = lambda: None) -> Callable:
    """Wrap upstream's dynamic_sampling; same signature, same 4-tuple return. The batch upstream
    returns carries the true per-row std again (``batch["std"]``), as without GradAlign."""

    @functools.wraps(original)
    def dynamic_sampling(repeated_batch, std, baseline, dynamic_sampling_num_gen_batches, master_config,
                         timer, batch_cache=None):
        cfg = read_gradalign(master_config)
        if not cfg.enabled:
            return original(repeated_batch, std, baseline, dynamic_sampling_num_gen_batches,
                            master_config, timer, batch_cache)
        group_size = int(lookup(master_config, "grpo.num_generations_per_prompt"))
        keep = int(lookup(master_config, "grpo.num_prompts_per_step"))
        t0 = time.perf_counter()
        scores = score_groups(repeated_batch, master_config, take_validation()).cpu()
        if scores.numel() * group_size != repeated_batch.size:
            raise ValueError(f"{scores.numel()} group scores for {repeated_batch.size} rows of "
                             f"groups of {group_size}")
        rows = ranked_rows(scores, group_size)
        index = torch.tensor(rows, dtype=torch.long)
        metrics = selection_metrics(scores, repeated_batch["total_reward"].cpu(), group_size, keep)
        metrics["gradalign/seconds"] = time.perf_counter() - t0
        ranked = repeated_batch.select_indices(rows)
        row_std = std[index.to(std.device)]
        ranked[ROW_STD] = row_std
        batch, complete, cache, upstream_metrics = original(
            ranked, group_std(row_std, group_size), baseline[index.to(baseline.device)],
            dynamic_sampling_num_gen_batches, master_config, timer, batch_cache)
        if complete:
            batch["std"] = batch.pop(ROW_STD)
        return batch, complete, cache, {**upstream_metrics, **metrics}

    dynamic_sampling.__gradalign_original__ = original
    return dynamic_sampling


def install(grpo_module, score_groups: ScoreGroups,
            take_validation: Callable[[], Any] = lambda: None) -> Callable[[], None]:
    """Replace ``grpo_module.dynamic_sampling`` (grpo_train looks it up as a module global at call
    time, v0.4 → main); returns the function that puts upstream's back. ``take_validation`` hands
    over the validation prompts' rollouts of this batch, if any (validation_rollouts.py)."""
    current = grpo_module.dynamic_sampling
    original = getattr(current, "__gradalign_original__", current)
    grpo_module.dynamic_sampling = with_gradalign(original, score_groups, take_validation)

    def uninstall() -> None:
        grpo_module.dynamic_sampling = original

    return uninstall
