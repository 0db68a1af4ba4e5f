"""What the Megatron policy worker extension does, without Ray or NeMo RL: it is handed this rank's
megatron model (the worker's DDP-wrapped GPTModel shard) and NeMo RL-shaped data, and scores
whole groups with OUR engine — the same code the CPU tests run.

NeMo RL batches are group-contiguous: rows [g·G, (g+1)·G) are the G generations of prompt g.
``run_all_workers_sharded_data`` hands each data-parallel rank its own whole groups, so the engine
runs with ``split_problems=False``: scores stay local, the validation gradient is summed over DP.
Under expert parallelism the replicas of one EP group first join their groups and score them
together (megatron/expert_lockstep.py); each rank returns its own groups' scores.
"""

from __future__ import annotations

import dataclasses

import torch

from nemo_gradalign import grpo
from nemo_gradalign.config import GradAlignConfig
from nemo_gradalign.engine import EngineGroups, GradientEngine, ReferenceGradient
from nemo_gradalign.megatron.expert_lockstep import check_router_losses, gather_expert_group
from nemo_gradalign.megatron.problem_runner import LossSettings, ProblemRunner
from nemo_gradalign.rollouts import ProblemRollouts


def groups_from_batch(input_ids: torch.Tensor, input_lengths: torch.Tensor, token_mask: torch.Tensor,
                      rewards: torch.Tensor, group_size: int) -> list[ProblemRollouts]:
    """NeMo RL's flat train data (``input_ids``, ``input_lengths``, ``token_mask`` [B, S] and
    per-sample ``total_reward``) as one ProblemRollouts per prompt group."""
    rows = input_ids.shape[0]
    if group_size < 1 or rows % group_size:
        raise ValueError(f"batch of {rows} rows is not whole groups of "
                         f"grpo.num_generations_per_prompt={group_size}")
    groups = []
    for g in range(rows // group_size):
        sl = slice(g * group_size, (g + 1) * group_size)
        width = int(input_lengths[sl].max())
        mask = token_mask[sl, :width].clone()
        for j, length in enumerate(input_lengths[sl].tolist()):
            mask[j, length:] = 0  # padding is never trained
        groups.append(ProblemRollouts(
            problem_id=g, tokens=input_ids[sl, :width].long().cpu(), prompt_len=1,
            response_lens=input_lengths[sl].long().cpu(), rewards=rewards[sl].float().cpu(),
            token_mask=mask.cpu()))
    return groups


def _lockstep_groups(data: dict, group_size: int):
    """This rank's groups, joined with the other replicas' of its expert-parallel group (if any)."""
    return gather_expert_group(groups_from_batch(data["input_ids"], data["input_lengths"], data["token_mask"],
                                                 data["total_reward"], group_size))


class GradAlignWorkerLogic:
    """Validation gradient and group scores on this rank's shard; Stateful for checkpoints.

    ``loss`` comes from the driver (config.scoring_loss of the whole recipe): a worker only sees
    its ``policy`` section, yet must score with the trainer's advantages and temperature."""

    def __init__(self, model, cfg: GradAlignConfig, loss: dict, named_parameters=None,
                 groups: EngineGroups | None = None):
        loss = LossSettings(**loss)
        check_router_losses(model)
        module = getattr(model, "module", model)
        named = list(named_parameters if named_parameters is not None else module.named_parameters())
        self.cfg = cfg
        self.engine = GradientEngine(named, groups or EngineGroups.from_megatron(), cfg.reference_dtype,
                                     split_problems=False)
        self.runner = ProblemRunner(model, loss, cfg.max_rollouts_per_microbatch, cfg.pack_rows)
        reference_loss = dataclasses.replace(  # gradalign.reference_weighting: how G weighs its problems
            loss, aggregation=grpo.reference_aggregation(loss.aggregation, cfg.reference_weighting))
        self.reference_runner = ProblemRunner(model, reference_loss, cfg.max_rollouts_per_microbatch, cfg.pack_rows)
        self.reference: ReferenceGradient | None = None

    def build_reference(self, data: dict, group_size: int, step: int) -> dict:
        """Rebuild G from this rank's share of validation groups (DP-summed); returns metrics."""
        groups = _lockstep_groups(data, group_size).problems
        if self.reference is None:
            self.reference = self.engine.build_reference(groups, self.reference_runner, step)
        else:
            self.engine.refresh(self.reference, groups, self.reference_runner, step)
        return {"gradalign/reference_norm": self.reference.norm, "gradalign/reference_step": step}

    def needs_refresh(self, step: int) -> bool:
        return self.reference is None or self.reference.needs_refresh(step, self.cfg.refresh_every)

    def score(self, data: dict, group_size: int) -> dict[str, torch.Tensor]:
        """Per group of this rank's share: ⟨g, Ĝ⟩, ‖g‖², cosine and whether g can be non-zero."""
        if self.reference is None:
            raise RuntimeError("build_reference must run before score")
        lockstep = _lockstep_groups(data, group_size)
        stats = self.engine.score(lockstep.problems, self.runner, self.reference)
        mine = lockstep.mine
        return {"dot": stats.dot[mine], "sqnorm": stats.sqnorm[mine], "cosine": stats.cosine()[mine],
                "informative": stats.informative[mine]}

    def state_dict(self) -> dict:
        return {"reference": self.reference.state_dict() if self.reference else None}

    def load_state_dict(self, state: dict) -> None:
        self.reference = self.engine.restore_reference(state.get("reference"))
