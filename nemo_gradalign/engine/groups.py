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
    embedding: object | None = None
    vp_size: int = 1
    context_parallel: object | None = None  # ranks holding zig-zag shares of the same sequences
    cp_size: int = 1

    @classmethod
    def from_megatron(cls) -> "EngineGroups":
        """megatron's groups. With expert parallelism, one problem runs on a whole EP group:
        partials are summed over TP×EP×PP and problems are split over expert-data-parallel.
        Experts must be sharded like the dense layers (megatron's default
        expert_tensor_parallel_size = TP): then expert TP ranks are the dense TP ranks and the
        TP counting rule holds for both."""
        from megatron.core import parallel_state as ps

        ep = ps.get_expert_model_parallel_world_size()
        tp = ps.get_tensor_model_parallel_world_size()
        if ep > 1 and ps.get_expert_tensor_parallel_world_size() != tp:
            raise UnsupportedLayout(
                f"expert_tensor_parallel_size={ps.get_expert_tensor_parallel_world_size()} differs from "
                f"TP={tp}: expert shards would not follow the dense TP counting rule and the lockstep "
                "group (ETP×EP×PP) would not cover the dense TP group; not verified exact. Leave "
                "expert_tensor_parallel_size unset (megatron's default: TP)")
        cp = ps.get_context_parallel_world_size()
        if cp > 1 and ep > 1:
            raise UnsupportedLayout(
                f"context_parallel_size={cp} with expert_model_parallel_size={ep}: megatron folds CP "
                "into the expert layout's data-parallel ranks, whose per-problem sums were not "
                "verified exact; use one of them")
        return cls(
            context_parallel=ps.get_context_parallel_group() if cp > 1 else None,
            cp_size=cp,
            model_parallel=ps.get_expert_tensor_model_pipeline_parallel_group() if ep > 1
            else ps.get_model_parallel_group(),
            data_parallel=ps.get_expert_data_parallel_group() if ep > 1 else ps.get_data_parallel_group(),
            ep_rank=ps.get_expert_model_parallel_rank(),
            ep_size=ep,
            tensor_parallel=ps.get_tensor_model_parallel_group(),
            tp_rank=ps.get_tensor_model_parallel_rank(),
            tp_size=tp,
            pp_size=ps.get_pipeline_model_parallel_world_size(),
            embedding=ps.get_embedding_group(check_initialized=False),
            vp_size=ps.get_virtual_pipeline_model_parallel_world_size() or 1,
        )

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
