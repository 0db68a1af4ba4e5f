"""A megatron-core GPTModel (local layer spec) whose full weights do not depend on the layout.

Every parameter is filled from a generator keyed by (seed, its *global* name), then sliced to this
rank's tensor-parallel shard. So TP=1, TP=2, PP=2 and TP=2×PP=2 hold the same model, which is what
lets the tests compare sharded scores with a single-process oracle.
"""

from __future__ import annotations

import re
import zlib
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from nemo_gradalign.megatron import cpu_shim


class ModelSpec(BaseModel):
    """Size of the GPT. Defaults are the tiny CPU model of the embedded demo."""

    model_config = ConfigDict(extra="forbid")

    num_layers: int = Field(2, ge=1)
    hidden_size: int = Field(64, ge=8)
    num_attention_heads: int = Field(4, ge=1)
    ffn_hidden_size: int | None = Field(None, ge=1)
    vocab_size: int = Field(32, ge=2)
    max_sequence_length: int = Field(32, ge=2)
    init_std: float = Field(0.05, gt=0)
    tie_embeddings: bool = False
    # float64: exactness tests independent of CPU kernels; bfloat16: the large recipes' precision
    dtype: Literal["float32", "float64", "bfloat16"] = "float32"
    sequence_parallel: bool = False
    num_experts: int | None = Field(None, ge=2)  # MoE MLPs (top-2 routing, no token dropping)
    # how tokens reach the experts: megatron's all-gather, or all-to-all (NeMo RL's default)
    moe_dispatcher: Literal["allgather", "alltoall"] = "allgather"
    # aux-loss-free balancing (DeepSeek-V3): a router bias updated from token counts at each step
    moe_expert_bias: bool = False
    seed: int = 1234


_LAYER = re.compile(r"^((?:module\.)*decoder\.layers\.)(\d+)\.")
_EXPERT = re.compile(r"\.local_experts\.(\d+)\.")


def _global_names(model) -> dict[str, str]:
    """Local parameter name -> layout-independent name (global layer and expert index, untied alias)."""
    from megatron.core import parallel_state as ps

    numbers = [layer.layer_number - 1 for layer in model.decoder.layers]
    experts = model.config.num_moe_experts or 0
    experts_here = experts // ps.get_expert_model_parallel_world_size()
    first_expert = ps.get_expert_model_parallel_rank() * experts_here
    names = {}
    for name, param in model.named_parameters():
        name_g = _EXPERT.sub(lambda m: f".local_experts.{first_expert + int(m.group(1))}.", name)
        match = _LAYER.match(name_g)
        if match:
            name_g = f"{match.group(1)}{numbers[int(match.group(2))]}.{name_g[match.end():]}"
        elif getattr(param, "shared_embedding", False) and "output_layer" in name:
            name_g = "embedding.word_embeddings.weight"  # tied copy on the last PP stage
        names[name] = name_g
    return names


def _full_value(global_name: str, shape: torch.Size, seed: int, std: float) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(global_name.encode()))
    noise = torch.randn(shape, generator=gen, dtype=torch.float32)  # float32 draws: same weights in float64
    if "norm" in global_name and global_name.endswith("weight"):
        return 1.0 + 0.1 * noise  # layer norm gains
    if global_name.endswith("bias"):
        return 0.01 * noise
    return std * noise


def tp_shard(full: torch.Tensor, param: torch.Tensor, tp_rank: int, tp_size: int) -> torch.Tensor:
    """This rank's slice of a full tensor, following megatron's partition attributes."""
    if not getattr(param, "tensor_model_parallel", False) or tp_size == 1:
        return full
    if getattr(param, "partition_stride", 1) != 1:
        raise NotImplementedError("strided TP partitions (e.g. gated MLP) are not supported")
    return full.chunk(tp_size, dim=param.partition_dim)[tp_rank]


def full_shape(param: torch.Tensor, tp_size: int) -> torch.Size:
    shape = list(param.shape)
    if getattr(param, "tensor_model_parallel", False):
        shape[param.partition_dim] *= tp_size
    return torch.Size(shape)


@torch.no_grad()
def init_full_weights(model, seed: int, std: float) -> None:
    from megatron.core import parallel_state as ps

    dense = ps.get_tensor_model_parallel_rank(), ps.get_tensor_model_parallel_world_size()
    expert = ps.get_expert_tensor_parallel_rank(), ps.get_expert_tensor_parallel_world_size()
    names = _global_names(model)  # a tied embedding's last-stage copy: the embedding's own name
    for name, param in model.named_parameters():
        rank, size = expert if getattr(param, "allreduce", True) is False else dense  # experts: ETP shards
        full = _full_value(names[name], full_shape(param, size), seed, std)
        param.copy_(tp_shard(full, param, rank, size))


class SequenceParallelNorm:
    """torch's LayerNorm with its parameters marked ``sequence_parallel``, as megatron's fused and
    Transformer Engine norms mark them (so ``finalize_model_grads`` all-reduces their partial
    grads over TP); megatron-core's own torch wrapper refuses sequence parallelism."""

    def __new__(cls, config, hidden_size: int, eps: float = 1e-5, **_unused):
        norm = torch.nn.LayerNorm(hidden_size, eps=eps)
        for param in norm.parameters():
            param.sequence_parallel = config.sequence_parallel
        return norm


def _layer_spec(spec: ModelSpec, layers_here: int, context_parallel: bool):
    """megatron-core's local layer spec; with sequence parallelism, its norms are SP-marked; with
    context parallelism, its core attention is the all-gather CP one (context_parallel.py)."""
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
    from megatron.core.transformer.transformer_block import TransformerBlockSubmodules

    from nemo_gradalign.megatron.context_parallel import AllGatherContextParallelAttention

    layer = get_gpt_layer_local_spec(num_experts=spec.num_experts)
    if context_parallel:
        layer.submodules.self_attention.submodules.core_attention = AllGatherContextParallelAttention
    if not spec.sequence_parallel:
        return layer
    layer.submodules.input_layernorm = SequenceParallelNorm
    layer.submodules.pre_mlp_layernorm = SequenceParallelNorm
    return TransformerBlockSubmodules(layer_specs=[layer] * layers_here, layer_norm=SequenceParallelNorm)


def _moe_options(spec: ModelSpec, ep: int, etp: int) -> dict:
    """Top-2 routing in float64, no auxiliary loss (its gradient is not the policy's) and no
    capacity limit (no token is dropped), so every layout computes the same function."""
    if spec.num_experts is None:
        if ep > 1:
            raise ValueError(f"expert parallel size {ep} needs model.num_experts")
        return {}
    if spec.num_experts % ep:
        raise ValueError(f"model.num_experts={spec.num_experts} is not divisible by EP={ep}")
    bias = dict(moe_router_enable_expert_bias=True, moe_router_bias_update_rate=1e-2,
                moe_router_score_function="sigmoid") if spec.moe_expert_bias else {}
    return dict(num_moe_experts=spec.num_experts, moe_router_topk=2, expert_model_parallel_size=ep,
                expert_tensor_parallel_size=etp, moe_token_dispatcher_type=spec.moe_dispatcher,
                moe_router_load_balancing_type="none", moe_router_dtype="fp64", add_bias_linear=False, **bias)


def check_split(spec: ModelSpec, tp: int, pp: int, prefix: str = "model.") -> None:
    """The model can be cut into TP shards and PP stages (ValueError naming the fields if not):
    checked by ``train`` and ``launch`` before any rank starts, and again when a rank builds it."""
    if spec.num_layers % pp:
        raise ValueError(f"{prefix}num_layers={spec.num_layers} is not divisible by PP={pp}")
    if spec.num_attention_heads % tp or spec.vocab_size % tp:
        raise ValueError(
            f"{prefix}num_attention_heads={spec.num_attention_heads} and {prefix}vocab_size="
            f"{spec.vocab_size} must be divisible by TP={tp}"
        )


def build_gpt(spec: ModelSpec):
    """GPTModel for this rank's pipeline stage; needs `parallel.init_distributed` first."""
    from megatron.core import parallel_state as ps
    from megatron.core.models.gpt import GPTModel
    from megatron.core.transformer import TransformerConfig

    tp = ps.get_tensor_model_parallel_world_size()
    pp = ps.get_pipeline_model_parallel_world_size()
    cp = ps.get_context_parallel_world_size()
    check_split(spec, tp, pp)
    config = TransformerConfig(
        num_layers=spec.num_layers,
        hidden_size=spec.hidden_size,
        num_attention_heads=spec.num_attention_heads,
        ffn_hidden_size=spec.ffn_hidden_size,
        tensor_model_parallel_size=tp,
        pipeline_model_parallel_size=pp,
        context_parallel_size=cp,
        sequence_parallel=spec.sequence_parallel and tp > 1,
        pipeline_dtype=getattr(torch, spec.dtype),
        params_dtype=getattr(torch, spec.dtype),
        hidden_dropout=0.0,
        attention_dropout=0.0,
        use_cpu_initialization=cpu_shim.needed(),
        gradient_accumulation_fusion=False,
        **_moe_options(spec, ps.get_expert_model_parallel_world_size(), ps.get_expert_tensor_parallel_world_size()),
    )
    with cpu_shim.device_context():
        model = GPTModel(
            config=config,
            transformer_layer_spec=_layer_spec(spec, spec.num_layers // pp, cp > 1),
            vocab_size=spec.vocab_size,
            max_sequence_length=spec.max_sequence_length,
            pre_process=ps.is_pipeline_first_stage(),
            post_process=ps.is_pipeline_last_stage(),
            share_embeddings_and_output_weights=spec.tie_embeddings,
        )
    if torch.cuda.is_available():
        model.cuda()
    # the local spec's torch LayerNorm ignores params_dtype; .to() keeps megatron's param attributes
    model.to(getattr(torch, spec.dtype))
    init_full_weights(model, spec.seed, spec.init_std)
    return model


def layout_free_state(model) -> dict[str, torch.Tensor]:
    """This rank's parameters keyed by global name (for comparing layouts and for checkpoints)."""
    names = _global_names(model)
    return {names[n]: p.detach().clone() for n, p in model.named_parameters()}
