"""Context parallelism: each CP rank holds two zig-zag chunks of every sequence.

megatron-core splits a sequence into 2·CP chunks and gives CP rank r chunks r and 2·CP−1−r
(``megatron.core.utils.get_batch_on_this_cp_rank``; its rotary embeddings and Transformer Engine's
CP attention expect the same layout, and NeMo RL's own sharding follows it). Parameters are
replicated over CP, so a rank's gradient is its tokens' share of the problem's gradient and the
shares add up — the sum megatron's DDP takes over its data×context-parallel group.

megatron-core's local attention refuses CP (only Transformer Engine's runs it), so on machines
without TE ``AllGatherContextParallelAttention`` is the attention: keys and values all-gathered
over CP (backward: reduce-scatter, so each rank gets its chunks' full gradient), queries local,
the causal mask taken on global positions. It is TE's ``cp_comm_type="all_gather"`` in plain
torch, around megatron's own ``DotProductAttention`` math.
"""

from __future__ import annotations

import copy
import functools
import inspect

import torch


def cp_size_and_rank() -> tuple[int, int]:
    from megatron.core import parallel_state as ps

    if not ps.model_parallel_is_initialized():
        return 1, 0
    return ps.get_context_parallel_world_size(), ps.get_context_parallel_rank()


def zigzag_positions(length: int, cp_size: int, cp_rank: int) -> torch.Tensor:
    """Global positions of the tokens CP rank ``cp_rank`` holds, in its local order."""
    if length % (2 * cp_size):
        raise ValueError(f"sequence length {length} is not a multiple of 2·CP={2 * cp_size}")
    chunk = length // (2 * cp_size)
    return torch.cat([torch.arange(c * chunk, (c + 1) * chunk)
                      for c in (cp_rank, 2 * cp_size - 1 - cp_rank)])


def shard_microbatch(mb: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """This CP rank's zig-zag share of every [b, L] tensor, with megatron's own slicing, plus the
    global ``position_ids`` of what it holds. L must be a multiple of 2·CP (pad first)."""
    batch, length = mb["tokens"].shape
    positions = torch.arange(length, device=mb["tokens"].device).unsqueeze(0).expand(batch, -1)
    return slice_for_this_cp_rank({**mb, "position_ids": positions.contiguous()})


def slice_for_this_cp_rank(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``megatron.core.utils.get_batch_on_this_cp_rank`` over megatron's CP group, whichever core.

    Core 0.18 added a required ``is_hybrid_cp`` and from then on reads ``cp_group=None`` as the
    *world* group (0.16/0.17: the CP group), so the group is always passed explicitly."""
    from megatron.core import parallel_state as ps
    from megatron.core.utils import get_batch_on_this_cp_rank

    params = inspect.signature(get_batch_on_this_cp_rank).parameters
    known = {"batch", "cp_group", "is_hybrid_cp", "hybrid_cp_group_func", "use_per_sequence_balancing"}
    unknown = [name for name, p in params.items() if p.default is p.empty and name not in known]
    if unknown or "cp_group" not in params:
        raise RuntimeError(
            f"megatron-core {megatron_core_version()}: get_batch_on_this_cp_rank"
            f"{inspect.signature(get_batch_on_this_cp_rank)} is not a signature nemo_gradalign knows "
            "(0.16.1 through 0.20.0); context parallelism cannot shard batches with it")
    hybrid = {"is_hybrid_cp": False} if "is_hybrid_cp" in params else {}
    return get_batch_on_this_cp_rank(batch, cp_group=ps.get_context_parallel_group(), **hybrid)


def megatron_core_version() -> str:
    """The installed megatron-core's version, for error messages (source installs included)."""
    from megatron.core import package_info

    return package_info.__version__


class AllGatherContextParallelAttention(torch.nn.Module):
    """Core attention for megatron-core's local layer spec under CP (see the module docstring).

    Takes the arguments megatron passes to any core attention; the attention mask it is given
    is ignored (it is for the local chunk layout only) and rebuilt from the zig-zag positions."""

    def __init__(self, config, layer_number, attn_mask_type, attention_type, attention_dropout=None,
                 softmax_scale=None, cp_comm_type=None, pg_collection=None, **_unused):
        from megatron.core import parallel_state as ps
        from megatron.core.transformer.dot_product_attention import DotProductAttention

        super().__init__()
        per_rank = copy.copy(config)  # the math on gathered keys is plain attention
        per_rank.context_parallel_size = 1
        self.attention = DotProductAttention(per_rank, layer_number, attn_mask_type, attention_type,
                                             attention_dropout, softmax_scale, pg_collection=pg_collection)
        self.cp_group = ps.get_context_parallel_group()
        self.cp_size, self.cp_rank = cp_size_and_rank()

    def forward(self, query, key, value, attention_mask, attn_mask_type=None, attention_bias=None,
                packed_seq_params=None, **_unused):
        from megatron.core.tensor_parallel.mappings import gather_from_sequence_parallel_region

        if packed_seq_params is not None or attention_bias is not None:
            raise NotImplementedError("packed sequences / attention bias under context parallelism")
        local = query.shape[0]  # [s/cp, b, heads, dim]
        key = gather_from_sequence_parallel_region(key, group=self.cp_group)
        value = gather_from_sequence_parallel_region(value, group=self.cp_group)
        masked = _causal_mask(local, self.cp_size, self.cp_rank).to(query.device)
        return self.attention(query, key, value, masked, attn_mask_type)


@functools.lru_cache(maxsize=8)
def _causal_mask(local: int, cp_size: int, cp_rank: int) -> torch.Tensor:
    """[1, 1, local, local·CP], True where this rank's query may not see a gathered key (keys in
    rank order, each rank's in its zig-zag order); built once per shape, not per layer."""
    length = local * cp_size
    q_pos = zigzag_positions(length, cp_size, cp_rank)
    k_pos = torch.cat([zigzag_positions(length, cp_size, r) for r in range(cp_size)])
    return (k_pos.unsqueeze(0) > q_pos.unsqueeze(1)).view(1, 1, local, length)
