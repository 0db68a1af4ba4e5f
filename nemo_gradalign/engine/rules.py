"""Counting rules: how much of each local parameter's gradient belongs to this rank's partials.

Summing the ranks' partials must give the full model's ⟨g, G⟩ and ‖g‖², so every coordinate of
the full gradient has to be counted exactly once across the model-parallel group. These are
megatron's own rules for its global grad norm (``clip_grads.py``): TP-sharded parameters
partition the coordinates; TP-duplicated ones are counted on TP rank 0 only. Under sequence
parallelism a duplicated parameter's local grad covers only this rank's slice of the sequence:
the engine first sums those grads over TP (megatron's ``_allreduce_non_tensor_model_parallel_grads``
rule, per problem, a few vectors of size h), after which they are ordinary duplicates.
Under expert parallelism every rank of an expert-parallel group runs the same problem (the
token dispatch spans the group). The group holds R = EP×ETP/TP whole model replicas (ETP = TP,
megatron's default: R = EP, one per EP rank; ETP = 1, NeMo RL's default: EP/TP replicas of TP
ranks each). Dense parameters are duplicates across the replicas (counted in the first, where
ep_rank×ETP/TP = 0); each expert shard lives on one rank (counted there, duplicates over expert TP
on its rank 0). Each replica dispatches every token of the problem once (under SP each TP rank
its S/TP slice), so an expert's grad is R times the problem's: the engine divides it by R (exact
for powers of 2). megatron-core trains MoE with TP>1 only under sequence parallelism
(``moe_layer.py``, forward); without SP (eval mode only) each TP rank would dispatch all S tokens:
refused, as not tested.
Word embeddings tied across pipeline stages (``shared_embedding``) are one parameter held twice:
the first stage's copy has the input half of its grad, the last stage's the output half. The
engine sums the two over megatron's embedding group per problem (``finalize_model_grads``'s
``_allreduce_word_embedding_grads`` rule), then counts the first stage's copy only: the last
stage's is marked ``shared``, which megatron's grad norm skips too (``param_is_not_shared``).
Context parallelism changes no count: parameters are replicated over CP and each CP rank's grad is
its tokens' share, so the engine sums the counted grads over CP per problem (megatron's DDP sums
them over data × context parallel) and the rules above then apply unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


class UnsupportedLayout(ValueError):
    """A parallel layout whose per-problem partials this engine cannot sum exactly."""


@dataclass(frozen=True)
class CountedParams:
    """This rank's parameters that contribute to the partials (the others are duplicates)."""

    params: list[torch.nn.Parameter]
    names: list[str]
    # this rank's sequence-parallel parameters (counted or not): their grads are summed over TP
    sequence_parallel: list[torch.nn.Parameter] = field(default_factory=list)
    # this rank's expert parameters: their grads are divided by the expert-parallel size
    experts: list[torch.nn.Parameter] = field(default_factory=list)
    # this rank's copy of a word embedding tied across pipeline stages (counted or not): its
    # grad is summed over the embedding group
    tied_embedding: list[torch.nn.Parameter] = field(default_factory=list)


def is_tensor_parallel_shard(param: torch.Tensor) -> bool:
    return bool(getattr(param, "tensor_model_parallel", False))


def is_expert(param: torch.Tensor) -> bool:
    """megatron marks expert parameters ``allreduce=False`` (reduced over expert-DP only)."""
    return getattr(param, "allreduce", True) is False


def is_sequence_parallel_partial(param: torch.Tensor, tp_size: int) -> bool:
    return tp_size > 1 and bool(getattr(param, "sequence_parallel", False))


def is_tied_across_stages(param: torch.Tensor, pp_size: int) -> bool:
    """megatron marks both stages' copies of a tied word embedding ``shared_embedding`` (PP>1)."""
    return pp_size > 1 and bool(getattr(param, "shared_embedding", False))


def is_shared_copy(param: torch.Tensor) -> bool:
    """The last stage's copy of a tied embedding: megatron's ``param_is_not_shared`` skips it."""
    return bool(getattr(param, "shared", False))


def check_supported(name: str, param: torch.Tensor, pp_size: int, ep_size: int, vp_size: int) -> None:
    """Refuse parameters whose local grad the engine cannot make this rank's exact share of g."""
    if is_tied_across_stages(param, pp_size) and (ep_size > 1 or vp_size > 1):
        raise UnsupportedLayout(
            f"parameter {name!r} is an embedding tied across pipeline stages, with "
            f"{'expert parallelism (EP>1)' if ep_size > 1 else 'a virtual (interleaved) pipeline'}: "
            "not verified exact. Score with untied embeddings "
            "(share_embeddings_and_output_weights=false), or without EP / virtual pipeline stages."
        )


def check_expert_tokens(has_experts: bool, tp_size: int, ep_size: int, sequence_parallel: bool) -> None:
    """Refuse MoE with TP>1 and EP>1 without sequence parallelism: each token would reach the
    experts TP×EP times, not the EP times the engine divides by (megatron trains it only with SP)."""
    if has_experts and tp_size > 1 and ep_size > 1 and not sequence_parallel:
        raise UnsupportedLayout(
            "expert parallelism with TP>1 needs sequence parallelism, as megatron-core's MoELayer "
            "requires in training: without it every TP rank dispatches the whole sequence, so the "
            "TP×EP all-gather carries each token TP×EP times (not verified exact). Set sequence_parallel=true"
        )


def counted_params(
    named_params: list[tuple[str, torch.nn.Parameter]], tp_rank: int, tp_size: int, pp_size: int,
    ep_size: int = 1, vp_size: int = 1, *, counts_dense: bool = True, etp_rank: int = 0,
) -> CountedParams:
    """Select the parameters this rank counts: all TP shards, duplicates only on TP rank 0 (for
    experts: expert-TP rank 0); dense parameters only where ``counts_dense`` (the EP group's first
    replica), experts wherever they live; a tied embedding on the first pipeline stage only."""
    keep, names, partial, experts, tied = [], [], [], [], []
    for name, param in named_params:
        if not param.requires_grad:
            continue
        check_supported(name, param, pp_size, ep_size, vp_size)
        if is_sequence_parallel_partial(param, tp_size):
            partial.append(param)
        if is_tied_across_stages(param, pp_size):
            tied.append(param)
            if is_shared_copy(param):
                continue
        expert = is_expert(param)
        if expert:
            experts.append(param)
        elif not counts_dense:
            continue
        if is_tensor_parallel_shard(param) or (etp_rank if expert else tp_rank) == 0:
            keep.append(param)
            names.append(name)
    check_expert_tokens(bool(experts), tp_size, ep_size, bool(partial))  # SP marks the router
    return CountedParams(keep, names, partial, experts, tied)
