"""Whole groups for an expert-parallel group's lockstep scoring pass.

Under expert parallelism the engine needs every rank of an expert-parallel group to run the same
problem at the same time (a problem's tokens are dispatched over the whole group: engine/rules.py).
A host that shards problems over data-parallel ranks (NeMo RL's ``run_all_workers_sharded_data``)
gives the model replicas inside one EP group different problems. So before scoring, the EP group
gathers its replicas' problems — one list, in data-parallel rank order, the same on every rank of
the group — and each rank keeps the scores of its own. The cost: each rank scores the problems of
the EP×ETP/TP replicas in its group (dense work repeated that many times, expert work shared).
"""

from __future__ import annotations

import dataclasses

import torch.distributed as dist


@dataclasses.dataclass(frozen=True)
class LockstepProblems:
    problems: list  # every replica's problems, in data-parallel rank order, renumbered 0..n-1
    mine: slice     # where this rank's own problems sit in ``problems``


def gather_expert_group(problems: list) -> LockstepProblems:
    """This rank's problems joined with those of the other replicas in its expert-parallel group
    (unchanged without EP). TP partners hold the same problems and are counted once."""
    from megatron.core import parallel_state as ps

    if ps.get_expert_model_parallel_world_size() == 1:
        return LockstepProblems(list(problems), slice(0, len(problems)))
    group = ps.get_expert_model_parallel_group()
    parts = [None] * dist.get_world_size(group)
    dist.all_gather_object(parts, (ps.get_data_parallel_rank(), list(problems)), group=group)
    by_replica = dict(sorted(dict(parts).items()))  # TP partners send the same (rank, problems)
    joined, start, me = [], 0, ps.get_data_parallel_rank()
    for rank, theirs in by_replica.items():
        if rank == me:
            start = len(joined)
        joined += theirs
    joined = [dataclasses.replace(p, problem_id=i) for i, p in enumerate(joined)]
    return LockstepProblems(joined, slice(start, start + len(problems)))


def balances_with_a_loss(balancing) -> bool:
    """megatron's ``moe_router_load_balancing_type`` (one type or a list) adds an auxiliary loss."""
    return any(kind != "none" for kind in (balancing if isinstance(balancing, list) else [balancing]))


def check_router_losses(model) -> None:
    """Refuse a MoE model whose router adds an auxiliary loss (load balancing or z-loss) to the
    trainer's gradient: the scoring pass scores the policy loss alone (recipes can set the
    balancing type, but a model provider may set the coefficients)."""
    from megatron.core.utils import get_model_config

    from nemo_gradalign.engine.rules import UnsupportedLayout

    config = get_model_config(model)
    if not getattr(config, "num_moe_experts", None):
        return
    balancing = getattr(config, "moe_router_load_balancing_type", "none")
    if balances_with_a_loss(balancing) or getattr(config, "moe_z_loss_coeff", None):
        raise UnsupportedLayout(
            f"the MoE router adds an auxiliary loss to the trained gradient (moe_router_load_balancing_type="
            f"{balancing!r}, moe_z_loss_coeff={getattr(config, 'moe_z_loss_coeff', None)!r}), which scoring "
            "does not compute; set the balancing type to 'none' and no z-loss")
