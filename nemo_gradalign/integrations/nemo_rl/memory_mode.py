"""``gradalign.schedule: memory`` in NeMo RL: prompts picked before rollout, plain GRPO's generation.

The training loader ``setup()`` returns is replaced by ``memory_dataloader`` over the same dataset
(one step's N prompts a batch, ``rl_collate_fn``, no worker processes) with an
``AlignmentMemorySampler``: grpo_train only iterates it, takes ``len()`` and ``state_dict()``, so
``train_dataloader.pt`` carries the sampler and its memory, and upstream's ``load_dataloader_state``
restores them. (On resume, ``setup()`` first loads that state into its own loader too; torchdata
applies a loaded state only when a loader is iterated, and upstream's never is once replaced.)

Feedback: at grpo_train's ``dynamic_sampling`` call (after rewards, before the update; dynamic
sampling itself stays off, so upstream returns the batch untouched) the N trained groups are
scored by the workers against G, as the step schedule scores candidates, and each group's cosine
(or its zero gradient) is recorded under its dataset ``idx``. With ``gradalign.in_pass: auto``
(the default) the workers' next ``train()`` is armed instead and reads the groups' alignment from
the update's own backward (in_pass_worker.py): no extra pass. Those scores are recorded just
before the sampler decides the next step or saves its state (``FeedbackFirstSampler``), so the
next pick and every checkpoint see them. Where the workers cannot read exactly, the reason is
logged once and the groups are scored with a separate backward, as before.
"""

from __future__ import annotations

import functools
import math
import time
from typing import Any, Callable

import numpy as np
import torch

from nemo_gradalign.config import GradAlignConfig
from nemo_gradalign.integrations.nemo_rl.config import lookup, read_gradalign
from nemo_gradalign.integrations.nemo_rl.sampler_state import dataset_keys, restore
from nemo_gradalign.selection.memory_sampler import AlignmentMemorySampler, memory_dataloader
from nemo_gradalign.selection.scores import simacc_factor
from nemo_gradalign.selection.trusted_draw import TrustedDraw
from nemo_gradalign.selection.trusted_mix import TrustedMixSampler


def memory_training_loader(upstream_loader, cfg: GradAlignConfig, collate, checkpoint_dir=None,
                           data_config=None, load_state: Callable | None = None, keys=None,
                           trusted: TrustedDraw | None = None, rows=None):
    """The loader that replaces ``upstream_loader`` (same dataset, same batch size), restored from
    ``checkpoint_dir`` by upstream's ``load_dataloader_state`` when one is given. ``keys``: the
    rows' identities (sampler_state.dataset_keys; computed here when not given). ``trusted``: the
    trusted share of each batch (the pool fills the rest), served from ``rows``
    (trusted_set.PoolAndTrusted: the pool's rows, then the trusted set's)."""
    dataset = upstream_loader.dataset
    keys = dataset_keys(dataset) if keys is None else keys
    from_pool = int(upstream_loader.batch_size) - (trusted.per_step if trusted else 0)
    kind = FeedbackFirstSampler if cfg.steer else TrustedMixSampler  # steer=false: no feedback to wait for
    sampler = kind(len(dataset), from_pool, cfg.memory, keys=keys, trusted=trusted)
    loader = memory_dataloader(dataset if rows is None else rows, sampler, collate)
    restore(loader, checkpoint_dir, data_config, load_state)
    return loader, sampler


class FeedbackFirstSampler(AlignmentMemorySampler):
    """The memory sampler, recording the feedback still waiting (the in-pass scores of the step
    just trained) before it decides a step or hands out its state."""

    def before_use(self) -> None:
        """Replaced by MemoryFeedback.flush."""

    def next_step(self):
        self.before_use()
        return super().next_step()

    def state_dict(self) -> dict:
        self.before_use()
        return super().state_dict()


def group_ids(idx, group_size: int) -> list[int]:
    """Each group's dataset index from a repeated batch's per-row ``idx`` (rows group-contiguous)."""
    rows = idx.tolist() if isinstance(idx, torch.Tensor) else [int(i) for i in idx]
    if len(rows) % group_size:
        raise ValueError(f"{len(rows)} rows are not whole groups of {group_size}")
    groups = [rows[g:g + group_size] for g in range(0, len(rows), group_size)]
    for rows_of_group in groups:
        if len(set(rows_of_group)) != 1:
            raise ValueError(f"a group's rows carry different dataset idx {rows_of_group}")
    return [g[0] for g in groups]


class MemoryFeedback:
    """After each step's rollouts: score the trained groups and record them in the memory.

    ``statistics(batch, master_config, validation_batch)`` is the driver's GroupScorer.statistics
    (validation_batch: the validation prompts' rollouts on a G-refresh step, else None). The G
    generation recorded is one more than the memory's latest after each rebuild, so it survives a
    resume with the memory itself. ``in_pass``: the GroupScorer, when the recipe allows reading
    the groups from the workers' train() (config.in_pass_config_reason); its scores are recorded
    by ``flush``, which the sampler calls before it next decides or saves."""

    def __init__(self, sampler: AlignmentMemorySampler, statistics: Callable, take_validation: Callable[[], Any],
                 in_pass=None, log: Callable[[str], None] = lambda line: print(line, flush=True),
                 simacc: bool = False, refresh_every: int = 1):
        """``simacc``: remember cos · 4a(1−a) (gradalign.method=simacc), a the group's pass rate.
        With a trusted share (``sampler.trusted``: trusted_set.py) G is rebuilt every ``refresh_every``
        steps from the batch's own trusted groups, and ``take_validation`` is not used."""
        self.sampler, self.statistics, self.take_validation = sampler, statistics, take_validation
        self.simacc, self.refresh_every = simacc, refresh_every
        self.in_pass, self.log, self.logged = in_pass, log, set()
        self.pending, self.flushed = None, {}
        if isinstance(sampler, FeedbackFirstSampler):
            sampler.before_use = self.flush

    def __call__(self, batch, master_config) -> dict[str, float]:
        t0 = time.perf_counter()
        self.flush()
        group_size = int(lookup(master_config, "grpo.num_generations_per_prompt"))
        groups = group_ids(batch["idx"], group_size)
        pool = [g for g, i in enumerate(groups) if i < self.sampler.num_problems]  # the rest are trusted
        ids = [groups[g] for g in pool]
        plan, step = self.sampler.last_plan, self.sampler.step - 1
        if plan is not None and sorted(ids) != sorted(plan.problem_ids.tolist()):
            raise RuntimeError(f"the trained groups {sorted(ids)} are not the prompts the memory sampler picked "
                               f"for step {step} ({sorted(plan.problem_ids.tolist())})")
        metrics, self.flushed = self.flushed, {}
        if self.sampler.trusted is not None:
            validation = self._trusted_rows(batch, groups, group_size, step)
        else:
            validation = self.take_validation()
        generation = self.sampler.memory.latest_generation + (1 if validation is not None else 0)
        if generation < 0 and self.sampler.trusted is not None:  # no trusted group has carried a gradient yet
            zero = np.array([not informative for informative in _varies(batch, group_size)[pool]], dtype=bool)
            self.sampler.memory.record_visits(ids, step, zero)
            return {**metrics, "gradalign/reference_missing": 1.0, "gradalign/seconds": time.perf_counter() - t0}
        if generation < 0:
            raise RuntimeError("gradalign.schedule=memory: no validation gradient G was built before the first "
                               "step's feedback")
        if self.in_pass is not None:
            stats, informative, rates = self.in_pass.statistics(batch, master_config, validation, arm_in_pass=True)
            if stats is None:
                self.pending = (ids, step, generation, rates[pool] if len(pool) < len(groups) else rates,
                                pool if len(pool) < len(groups) else None)
                return {**metrics, "gradalign/seconds": time.perf_counter() - t0, "gradalign/in_pass": 1.0}
            self._log_once(f"gradalign: in-pass reading off ({self.in_pass.in_pass_refusal}): each trained "
                           "group is scored with a separate backward")
        else:
            stats, informative, rates = self.statistics(batch, master_config, validation)
        if len(pool) < len(groups):  # the trusted groups are not remembered
            stats, informative, rates = _rows(stats, pool), informative[pool], rates[pool]
        metrics.update(self._record(ids, step, generation, stats, informative, rates))
        metrics.update({"gradalign/seconds": time.perf_counter() - t0, "gradalign/in_pass": 0.0})
        if plan is not None:
            metrics.update({"gradalign/explored": plan.explored, "gradalign/skipped": int(plan.skipped.size),
                            "gradalign/refilled_from_skipped": plan.refilled_from_skipped})
        return metrics

    def flush(self) -> None:
        """Record the armed step's in-pass scores (after its train()); logged and skipped if the
        workers could not read them."""
        if self.pending is None:
            return
        (ids, step, generation, rates, pool), self.pending = self.pending, None
        result = self.in_pass.in_pass_scores()
        if isinstance(result, str):
            self.log(f"gradalign: step {step}'s in-pass reading failed in train() ({result}); "
                     "its groups are not recorded")
            return
        result = result if pool is None else _rows(result, pool)
        self.flushed = self._record(ids, step, generation, result, result.informative, rates)

    def _trusted_rows(self, batch, groups: list[int], group_size: int, step: int):
        """The batch's trusted groups (rows past the pool's), which rebuild G every ``refresh_every``
        steps (every step until a first G exists); None otherwise, or when none of them has a
        gradient (G as it was)."""
        trusted = [g for g, i in enumerate(groups) if i >= self.sampler.num_problems]
        drawn = self._drawn_trusted(sorted(groups[g] for g in trusted))
        if sorted(groups[g] for g in trusted) != drawn:
            raise RuntimeError(f"the trained trusted groups {sorted(groups[g] for g in trusted)} are not the "
                               f"ones the sampler drew for step {step} ({drawn})")
        due = step % self.refresh_every == 0 or self.sampler.memory.latest_generation < 0
        if not due or not _varies(batch, group_size)[trusted].any():
            return None
        return batch.select_indices([g * group_size + r for g in trusted for r in range(group_size)])

    def _drawn_trusted(self, trained: list[int]) -> list[int]:
        """The trusted rows the sampler drew for the step being fed back."""
        return sorted(self.sampler.num_problems + j for j in self.sampler.last_trusted)

    def _record(self, ids, step, generation, stats, informative, rates) -> dict[str, float]:
        memory = self.sampler.memory
        zero = ~informative.cpu().numpy().astype(bool)
        cosine = stats.cosine().cpu().numpy()
        if self.simacc:
            cosine = cosine * simacc_factor(rates.cpu()).numpy()
        memory.record(ids, step, generation, np.where(zero, np.nan, cosine), zero,
                      zero_scores=self.sampler.config.zero_gradient_scores_zero)
        scored = cosine[~zero]
        return {"gradalign/generation": generation,
                "gradalign/zero_gradient_share": float(zero.mean()) if zero.size else math.nan,
                "gradalign/mean_cosine": float(scored.mean()) if scored.size else math.nan,
                "gradalign/memory_seen": int(np.count_nonzero(memory.visits))}

    def _log_once(self, line: str) -> None:
        if line not in self.logged:
            self.logged.add(line)
            self.log(line)


def _varies(batch, group_size: int) -> np.ndarray:
    """Per group: do its rewards differ (else its advantages, and its gradient, are exactly zero)?"""
    rewards = torch.as_tensor(batch["total_reward"]).float().reshape(-1, group_size)
    return (rewards.max(1).values > rewards.min(1).values).numpy()


def _rows(stats, rows: list[int]):
    """The statistics of the groups at ``rows`` (the pool's), in that order."""
    index = torch.tensor(rows, dtype=torch.long)
    return type(stats)(stats.dot[index], stats.sqnorm[index], stats.informative[index])


def with_memory_feedback(original: Callable, feedback: MemoryFeedback) -> Callable:
    """Wrap upstream's dynamic_sampling: same signature and return; upstream's result unchanged
    but for the ``gradalign/*`` metrics of the feedback recorded on complete batches."""

    @functools.wraps(original)
    def dynamic_sampling(repeated_batch, std, baseline, dynamic_sampling_num_gen_batches, master_config,
                         timer, batch_cache=None):
        batch, complete, cache, metrics = original(repeated_batch, std, baseline, dynamic_sampling_num_gen_batches,
                                                   master_config, timer, batch_cache)
        if complete and read_gradalign(master_config).enabled:
            metrics = {**(metrics or {}), **feedback(batch, master_config)}
        return batch, complete, cache, metrics

    dynamic_sampling.__gradalign_original__ = original
    return dynamic_sampling


def install(grpo_module, feedback: MemoryFeedback) -> Callable[[], None]:
    """Replace ``grpo_module.dynamic_sampling`` (a module global grpo_train calls every step);
    returns the function that puts upstream's back."""
    current = grpo_module.dynamic_sampling
    original = getattr(current, "__gradalign_original__", current)
    grpo_module.dynamic_sampling = with_memory_feedback(original, feedback)

    def uninstall() -> None:
        grpo_module.dynamic_sampling = original

    return uninstall
