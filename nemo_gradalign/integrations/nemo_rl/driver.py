"""Driver side of the selection: turn NeMo RL's ``repeated_batch`` into flat group data, send each
data-parallel rank whole groups, gather the workers' statistics, and score.

The workers run ``GradAlignWorkerLogic`` (worker_logic.py) behind the policy worker extension's
methods ``gradalign_build_reference`` and ``gradalign_score``.
"""

from __future__ import annotations

from typing import Callable

import torch

from nemo_gradalign.config import GradAlignConfig
from nemo_gradalign.engine import ProblemStats
from nemo_gradalign.integrations.nemo_rl.config_access import lookup
from nemo_gradalign.selection.scores import reference_source, score_problems

MODEL_PARALLEL_AXES = ["context_parallel", "tensor_parallel", "pipeline_parallel"]


def flat_group_data(repeated_batch, pad_token_id: int) -> dict[str, torch.Tensor]:
    """input_ids / input_lengths / token_mask / total_reward, as grpo_train builds train_data, from
    the message logs ``dynamic_sampling`` sees: upstream marks the trained tokens only after it
    (``add_grpo_token_loss_masks_and_generation_logprobs``: an assistant message carrying
    ``generation_logprobs``), so a message without ``token_loss_mask`` is marked by that rule here,
    on copies: upstream's messages are left as they are."""
    from nemo_rl.data.llm_message_utils import batched_message_log_to_flat_message

    logs = [[{"role": m["role"], "token_ids": m["token_ids"], "token_loss_mask": _trained_tokens(m)} for m in log]
            for log in repeated_batch["message_log"]]
    flat, lengths = batched_message_log_to_flat_message(logs, pad_value_dict={"token_ids": pad_token_id})
    return {"input_ids": flat["token_ids"], "input_lengths": lengths,
            "token_mask": flat["token_loss_mask"], "total_reward": repeated_batch["total_reward"]}


def trained_rows(batch, master_config) -> torch.Tensor | None:
    """[rows] 0/1: the rows grpo_train's loss keeps (its ``sample_mask``), as far as they are known
    when the groups are scored: ``loss_multiplier``, less the truncated rows under
    ``grpo.overlong_filtering`` and the rows flagged ``mask_sample`` (both applied after
    ``dynamic_sampling``); None where the batch carries none of them. (A row the sequence-level
    logprob-error check drops later is still scored.)"""
    if not any(key in batch for key in ("loss_multiplier", "truncated", "mask_sample")):
        return None
    rows = len(batch["total_reward"])
    keep = torch.ones(rows) if "loss_multiplier" not in batch else (torch.as_tensor(batch["loss_multiplier"]) != 0).float()
    if "truncated" in batch and lookup(master_config, "grpo.overlong_filtering", False):
        keep[torch.as_tensor(batch["truncated"], dtype=torch.bool)] = 0
    if "mask_sample" in batch:
        keep[torch.as_tensor(batch["mask_sample"], dtype=torch.bool)] = 0
    return keep


def _trained_tokens(message: dict) -> torch.Tensor:
    if "token_loss_mask" in message:
        return message["token_loss_mask"]
    trained = message["role"] == "assistant" and "generation_logprobs" in message
    return (torch.ones_like if trained else torch.zeros_like)(message["token_ids"])


def shard_whole_groups(data: dict[str, torch.Tensor], group_size: int, shards: int) -> list[dict]:
    """Contiguous shards of whole groups, one per data-parallel rank (sizes may differ by a group)."""
    n_groups = len(next(iter(data.values()))) // group_size
    bounds = [round(i * n_groups / shards) * group_size for i in range(shards + 1)]
    return [{k: v[bounds[i]:bounds[i + 1]] for k, v in data.items()} for i in range(shards)]


def shard_as_trained(data: dict[str, torch.Tensor], group_size: int, shards: int,
                     batch_size: int | None) -> tuple[list[dict], torch.Tensor]:
    """The groups each data-parallel rank trains, and their order: where upstream's
    ``shard_by_batch_size(shards, batch_size)`` keeps groups whole (each chunk of ``batch_size``
    rows cut into ``shards`` equal parts, rank d taking part d of every chunk), its cut; else
    contiguous whole groups. ``order[j]``: the batch position of the j-th group of the shards
    concatenated in rank order (results gathered that way go back with ``out[order] = ...``)."""
    rows = len(next(iter(data.values())))
    batch_size = int(batch_size or rows)  # unset: one optimizer step over the whole batch
    part = batch_size // shards if batch_size % shards == 0 else 0
    if rows % batch_size or not part or part % group_size:
        cut = shard_whole_groups(data, group_size, shards)
        return cut, torch.arange(rows // group_size)
    ranges = [[range(c + d * part, c + (d + 1) * part) for c in range(0, rows, batch_size)] for d in range(shards)]
    index = [torch.tensor([r for chunk in rank for r in chunk], dtype=torch.long) for rank in ranges]
    order = torch.cat(index)[::group_size] // group_size
    return [{k: v[i] if torch.is_tensor(v) else [v[j] for j in i.tolist()] for k, v in data.items()}
            for i in index], order


class GroupScorer:
    """The hook's ``score_groups``: one score per group of ``repeated_batch`` (``statistics``:
    the same worker pass, unranked, for the memory schedule's feedback).

    gradalign and dot align with the trusted validation groups that arrive with a batch every
    ``refresh_every`` steps (validation_loader.py); learnalign aligns with the candidates
    themselves; the accuracy methods need no gradient. ``loss`` (config.scoring_loss) goes to
    every worker call, so workers score with the trainer's advantages and temperature.
    """

    def __init__(self, policy, cfg: GradAlignConfig, pad_token_id: int, loss: dict,
                 to_flat: Callable[[object, int], dict] = flat_group_data):
        self.policy, self.cfg, self.pad_token_id = policy, cfg, pad_token_id
        self.worker_kwargs = {"cfg": cfg.model_dump(mode="json"), "loss": dict(loss)}
        self.to_flat = to_flat
        self.step = 0
        self.has_reference = False  # workers hold a validation gradient (built or restored)
        self.in_pass_refusal: str | None = None  # why the last arm_in_pass fell back

    def _flat(self, batch, master_config) -> dict[str, torch.Tensor]:
        """The batch's flat rows, the rows grpo_train's loss will leave out (``trained_rows``) masked."""
        data = self.to_flat(batch, self.pad_token_id)
        keep = trained_rows(batch, master_config)
        return data if keep is None else {**data, "token_mask": data["token_mask"] * keep.unsqueeze(1).to(
            data["token_mask"].dtype)}

    def _run(self, method: str, shards: list[dict], **common) -> list:
        group = self.policy.worker_group
        futures = group.run_all_workers_sharded_data(
            method, data=shards, in_sharded_axes=["data_parallel"], replicate_on_axes=MODEL_PARALLEL_AXES,
            output_is_replicated=MODEL_PARALLEL_AXES,
            common_kwargs={**common, **self.worker_kwargs})
        return group.get_all_worker_results(futures)

    def save(self, checkpoint_dir: str) -> None:
        """Every worker writes its validation gradient into NeMo RL's tmp checkpoint directory."""
        group = self.policy.worker_group
        group.get_all_worker_results(group.run_all_workers_single_data(
            "gradalign_save", checkpoint_dir=str(checkpoint_dir), **self.worker_kwargs))

    def load(self, checkpoint_dir: str) -> bool:
        group = self.policy.worker_group
        return all(group.get_all_worker_results(group.run_all_workers_single_data(
            "gradalign_load", checkpoint_dir=str(checkpoint_dir), **self.worker_kwargs)))

    def statistics(self, repeated_batch, master_config, validation_batch=None, arm_in_pass: bool = False):
        """(ProblemStats or None, informative, pass rates) of every group of ``repeated_batch``:
        the workers' dot/‖g‖² against G (rebuilt first when ``validation_batch`` comes), or None
        for the methods that need no gradient (informative then means: rewards not all equal).
        ``arm_in_pass``: arm every worker's next train() to read the groups instead (stats and
        informative None; ``in_pass_scores()`` after train); where any worker cannot
        (``in_pass_refusal`` says why), all are disarmed and the groups scored now, as without."""
        cfg, step = self.cfg, self.step
        self.step += 1
        group_size = int(lookup(master_config, "grpo.num_generations_per_prompt"))
        data = self._flat(repeated_batch, master_config)
        rewards = data["total_reward"].float().reshape(-1, group_size)
        pass_rates = (rewards > 0.5).float().mean(1)
        source = reference_source(cfg.method)
        if source is None:
            return None, rewards.std(1) > 0, pass_rates
        dp = self.policy.sharding_annotations.get_axis_size("data_parallel")
        shards, self.order = shard_as_trained(data, group_size, dp,
                                              lookup(master_config, "policy.train_global_batch_size", None))
        self.policy.prepare_for_training()
        if source == "pool":
            self._run("gradalign_build_reference", shards, group_size=group_size, step=step)
        elif validation_batch is not None:
            val = shard_whole_groups(self._flat(validation_batch, master_config), group_size, dp)
            self._run("gradalign_build_reference", val, group_size=group_size, step=step)
            self.has_reference = True
        elif not self.has_reference:
            raise RuntimeError(f"gradalign.method={cfg.method!r} needs the validation prompts' "
                               "rollouts before the first selection (validation_loader.py)")
        self.in_pass_refusal = None
        if arm_in_pass:
            self.in_pass_refusal = next((r for r in self._run("gradalign_arm_in_pass", shards, group_size=group_size)
                                         if r), None)
            if self.in_pass_refusal is None:
                return None, None, pass_rates
            self._run("gradalign_disarm_in_pass", [{} for _ in shards])
        stats = self._in_batch_order(self._run("gradalign_score", shards, group_size=group_size))
        return stats, stats.informative, pass_rates

    def in_pass_scores(self) -> ProblemStats | str:
        """What the armed train() read, per group in batch order (as ``statistics``); or why it
        could not."""
        dp = self.policy.sharding_annotations.get_axis_size("data_parallel")
        parts = self._run("gradalign_in_pass_scores", [{} for _ in range(dp)])
        reason = next((p["reason"] for p in parts if "reason" in p), None)
        return reason if reason is not None else self._in_batch_order(parts)

    def _in_batch_order(self, parts: list[dict]) -> ProblemStats:
        """The workers' per-group results (ranks in order) put back in the batch's group order."""
        def placed(key):
            gathered = torch.cat([p[key] for p in parts])
            out = torch.empty_like(gathered)
            out[self.order] = gathered
            return out
        return ProblemStats(placed("dot"), placed("sqnorm"), placed("informative"))

    def __call__(self, repeated_batch, master_config, validation_batch=None) -> torch.Tensor:
        step = self.step
        stats, informative, pass_rates = self.statistics(repeated_batch, master_config, validation_batch)
        cfg = self.cfg
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
        return score_problems(cfg.method, pass_rates, informative, stats, gen, cfg.uninformative,
                              cfg.acc_low, cfg.acc_high)
