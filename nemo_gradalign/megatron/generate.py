"""Sampling rollouts from the sharded GPT (any TP/PP), identical on every model-parallel rank.

No KV cache: each new token re-runs the forward over the whole (short) sequence, which is the
simplest exact path through megatron's pipeline schedule. Fine for the CPU demo's tiny model;
large models generate with vLLM in NeMo RL.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from nemo_gradalign.megatron.step import run_microbatches


def _full_vocab(logits: torch.Tensor) -> torch.Tensor:
    """Gather vocab-parallel logits [b, V/tp] into [b, V]."""
    from megatron.core import parallel_state as ps

    tp = ps.get_tensor_model_parallel_world_size()
    if tp == 1:
        return logits
    parts = [torch.empty_like(logits) for _ in range(tp)]
    dist.all_gather(parts, logits.contiguous(), group=ps.get_tensor_model_parallel_group())
    return torch.cat(parts, dim=-1)


@torch.no_grad()
def sample(model, prompts: torch.Tensor, uniforms: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Append sampled tokens to each row of ``prompts`` [b, P]; returns [b, P + new].

    ``uniforms`` [b, new] holds one U(0,1) draw per sampled token (inverse-CDF sampling): the
    caller draws them per problem, so a rollout does not depend on how problems are batched or
    split over data-parallel ranks. The last pipeline stage samples and broadcasts the tokens
    to the earlier stages, so every rank holds identical rollouts.
    """
    from megatron.core import parallel_state as ps

    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    tokens = prompts.clone()
    device = next(model.parameters()).device
    for step in range(uniforms.shape[1]):
        outs = run_microbatches(model, [{"tokens": tokens}], loss_fn=None, forward_only=True)
        nxt = torch.zeros(tokens.shape[0], dtype=torch.long, device=device)
        if ps.is_pipeline_last_stage():
            logits = _full_vocab(outs[0][:, -1, :].float()) / temperature
            cdf = torch.softmax(logits.double(), dim=-1).cumsum(-1).cpu()
            u = uniforms[:, step : step + 1].double().clamp_min(1e-12) * cdf[:, -1:]
            nxt = torch.searchsorted(cdf, u).squeeze(1).clamp_max(cdf.shape[1] - 1).to(device)
        if ps.get_pipeline_model_parallel_world_size() > 1:
            dist.broadcast(nxt, src=ps.get_pipeline_model_parallel_last_rank(),
                           group=ps.get_pipeline_model_parallel_group())
        tokens = torch.cat([tokens, nxt.cpu().unsqueeze(1)], dim=1)
    return tokens
