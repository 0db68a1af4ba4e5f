"""Per-token log-probabilities from vocab-parallel logits, in float32 or the logits' wider dtype.

megatron-core's ``vocab_parallel_cross_entropy`` casts logits to float32, which would cap a
float64 model at float32 accuracy; NeMo RL computes its training log-probs from the
vocab-parallel logits itself (after dividing them by the generation temperature). This is that
computation: a max over the full vocabulary (no gradient: a constant shift), then a
log-sum-exp and the target logit, each summed over the tensor-parallel ranks with megatron's
``reduce_from_tensor_model_parallel_region`` (all-reduce forward, identity backward — exact
here, since every rank uses the summed value identically).
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def vocab_parallel_logprobs(logits: torch.Tensor, labels: torch.Tensor,
                            temperature: float = 1.0) -> torch.Tensor:
    """log softmax(logits / temperature)[label] per position; logits [..., V/tp], labels [...]."""
    from megatron.core import parallel_state as ps
    from megatron.core.tensor_parallel.mappings import reduce_from_tensor_model_parallel_region

    if logits.dtype in (torch.bfloat16, torch.float16):
        logits = logits.float()  # as NeMo RL takes its log-probs from bf16 logits
    if temperature != 1.0:
        logits = logits / temperature
    tp = ps.get_tensor_model_parallel_world_size()
    vocab_local = logits.shape[-1]
    peak = logits.detach().amax(dim=-1, keepdim=True)
    if tp > 1:
        dist.all_reduce(peak, op=dist.ReduceOp.MAX, group=ps.get_tensor_model_parallel_group())
    shifted = logits - peak
    start = ps.get_tensor_model_parallel_rank() * vocab_local
    local = labels - start
    here = (local >= 0) & (local < vocab_local)
    target = shifted.gather(-1, local.clamp(0, vocab_local - 1).unsqueeze(-1)).squeeze(-1)
    target = torch.where(here, target, torch.zeros_like(target))
    sum_exp = shifted.exp().sum(dim=-1)
    if tp > 1:
        target = reduce_from_tensor_model_parallel_region(target)
        sum_exp = reduce_from_tensor_model_parallel_region(sum_exp)
    return target - sum_exp.log()
