"""The process groups the engine reduces over (None everywhere in a single process)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from nemo_gradalign.engine.rules import UnsupportedLayout


@dataclass(frozen=True)
class EngineGroups:
    """model_parallel: TP×PP ranks that hold one model replica; data_parallel: the replicas
    (without context parallelism: CP ranks share each problem); embedding: the first and last
    pipeline stages (same TP rank), whose tied word embeddings' grads are summed;
    context_parallel: the ranks whose grads are shares of one problem's, summed per problem."""

    model_parallel: object | None = None
    data_parallel: object | None = None
    tensor_parallel: object | None = None
    tp_rank: int = 0
    tp_size: int = 1
    pp_size: int = 1
    ep_rank: int = 0
    ep_size: int = 1
    etp_rank: int = 0  # expert tensor parallel (megatron's expert_tensor_parallel_size)
    etp_size: int = 1
    embedding: object | None = None
    vp_size: int = 1
    context_parallel: object | None = None  # ranks holding zig-zag shares of the same sequences
    cp_size: int = 1
    cp_rank: int = 0

    @classmethod
    def from_megatron(cls) -> "EngineGroups":
        """megatron's groups. With expert parallelism, one problem runs on a whole EP group:
        partials are summed over the expert layout's ETP×EP×PP ranks and problems are split over
        expert-data-parallel. The EP group must hold whole model replicas of TP×CP ranks (TP
        divisible by ETP, EP×ETP by TP×CP — megatron's default ETP = TP, NeMo RL's ETP = 1 with EP
        a multiple of TP×CP): then dense parameters are counted in its first replica and every
        token reaches the experts once per replica (engine/rules.py)."""
        from megatron.core import parallel_state as ps

        ep = ps.get_expert_model_parallel_world_size()
        tp = ps.get_tensor_model_parallel_world_size()
        cp = ps.get_context_parallel_world_size()
        etp = ps.get_expert_tensor_parallel_world_size() if ep > 1 else tp
        if ep > 1:
            _check_expert_layout(tp, ep, etp, cp)
        return cls(
            context_parallel=ps.get_context_parallel_group() if cp > 1 else None,
            cp_size=cp,
            cp_rank=ps.get_context_parallel_rank(),
            model_parallel=ps.get_expert_tensor_model_pipeline_parallel_group() if ep > 1
            else ps.get_model_parallel_group(),
            data_parallel=ps.get_expert_data_parallel_group() if ep > 1 else ps.get_data_parallel_group(),
            ep_rank=ps.get_expert_model_parallel_rank(),
            ep_size=ep,
            etp_rank=ps.get_expert_tensor_parallel_rank() if ep > 1 else 0,
            etp_size=etp,
            tensor_parallel=ps.get_tensor_model_parallel_group(),
            tp_rank=ps.get_tensor_model_parallel_rank(),
            tp_size=tp,
            pp_size=ps.get_pipeline_model_parallel_world_size(),
            embedding=ps.get_embedding_group(check_initialized=False),
            vp_size=ps.get_virtual_pipeline_model_parallel_world_size() or 1,
        )

    @property
    def replicas_per_expert_group(self) -> int:
        """Model replicas in one expert-parallel group: how many times each token of a problem
        reaches the experts when the whole group runs that problem (1 without EP)."""
        return self.ep_size * self.etp_size // (self.tp_size * self.cp_size) if self.ep_size > 1 else 1

    @property
    def counts_dense(self) -> bool:
        """This rank's dense parameters are counted: it lies in its EP group's first replica."""
        return self.ep_size == 1 or self.ep_rank * self.etp_size // (self.tp_size * self.cp_size) == 0

    @property
    def dp_size(self) -> int:
        return dist.get_world_size(self.data_parallel) if self.data_parallel is not None else 1

    @property
    def dp_rank(self) -> int:
        return dist.get_rank(self.data_parallel) if self.data_parallel is not None else 0

    def sum_model_parallel(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.model_parallel is not None and dist.get_world_size(self.model_parallel) > 1:
            dist.all_reduce(tensor, group=self.model_parallel)
        return tensor

    def sum_tensor_parallel(self, tensor: torch.Tensor) -> None:
        if self.tp_size > 1:
            dist.all_reduce(tensor, group=self.tensor_parallel)

    def sum_context_parallel(self, tensor: torch.Tensor) -> None:
        if self.cp_size > 1:
            dist.all_reduce(tensor, group=self.context_parallel)

    def sum_embedding(self, tensor: torch.Tensor) -> None:
        """Sum over the embedding group; only its ranks hold a tied copy, and only they call."""
        if self.embedding is None:
            raise RuntimeError("a tied embedding's grad needs megatron's embedding group (none on this rank)")
        if dist.get_world_size(self.embedding) > 1:
            dist.all_reduce(tensor, group=self.embedding)

    def sum_data_parallel(self, tensors: list[torch.Tensor]) -> None:
        if self.dp_size > 1:
            for tensor in tensors:
                dist.all_reduce(tensor, group=self.data_parallel)


def _check_expert_layout(tp: int, ep: int, etp: int, cp: int) -> None:
    """Refuse expert layouts whose per-problem sums this engine has no rule for."""
    from megatron.core import parallel_state as ps

    if tp % etp or (ep * etp) % (tp * cp):
        raise UnsupportedLayout(
            f"expert_tensor_parallel_size={etp}, expert_model_parallel_size={ep}, TP={tp}, CP={cp}: an "
            "expert-parallel group must hold whole model replicas (TP divisible by ETP and EP×ETP by "
            "TP×CP), else one problem's expert gradient is split over expert-data-parallel ranks; not exact")
    lockstep = set(dist.get_process_group_ranks(ps.get_expert_tensor_model_pipeline_parallel_group()))
    replica = [ps.get_model_parallel_group()] + ([ps.get_context_parallel_group()] if cp > 1 else [])
    if not all(set(dist.get_process_group_ranks(group)) <= lockstep for group in replica):
        raise UnsupportedLayout(
            "megatron's rank order put this rank's TP×CP×PP ranks outside its expert ETP×EP×PP group: "
            "the dense and expert partials would not add up in one reduction; use the default order tp-cp-ep-dp-pp")
