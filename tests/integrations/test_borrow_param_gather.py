"""Scoring a model whose DDP gathers weights lazily (distributed optimizer + ``overlap_param_gather``,
NeMo RL's default megatron recipe): DDP's forward pre-hooks assert that every bucketed weight
requires grad, and packed scoring freezes its weights for the pass. Found on an H200 by
benchmarks/twin_device_check.py; here on gloo ranks (the optimizer itself needs CUDA, so the
host's step is a forward+backward into DDP's grad buffers, reduced over DP).

    score (one per pass, then packed) → host's pass   ==   host's pass
for the grad buffers, bit for bit, with the pre-hooks (and the gathers they wait for) as before.
"""

from __future__ import annotations

import torch

from helpers import random_problems
from nemo_gradalign.engine import EngineGroups, GradientEngine
from nemo_gradalign.megatron import parallel
from nemo_gradalign.megatron.model import ModelSpec, build_gpt
from nemo_gradalign.megatron.problem_runner import LossSettings, ProblemRunner
from nemo_gradalign.megatron.step import causal_mask

SPEC = ModelSpec(num_layers=2, hidden_size=32, num_attention_heads=4, vocab_size=32)


def _lazy_gather_ddp():
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig

    module = build_gpt(SPEC)
    config = DistributedDataParallelConfig(use_distributed_optimizer=True, overlap_param_gather=True,
                                           overlap_grad_reduce=True, average_in_collective=False)
    return DistributedDataParallel(module.config, config, module)


def _host_pass(model, rank: int) -> list[torch.Tensor]:
    """The host's own training pass (different rows per DP rank), then its grad reduce."""
    gen = torch.Generator().manual_seed(100 + rank)
    tokens = torch.randint(1, SPEC.vocab_size, (3, 9), generator=gen)
    positions = torch.arange(9).unsqueeze(0).expand(3, -1)
    model.zero_grad_buffer()
    logits = model(tokens, positions, causal_mask(9))
    logits.float().logsumexp(-1).mean().backward()
    model.finish_grad_sync()
    return [b.grad_data.clone() for b in model.buffers]


def _rank(rank, out):
    parallel.init_distributed(parallel.Layout(dp=2))
    plain, scored = _lazy_gather_ddp(), _lazy_gather_ddp()
    hooks = len(scored.remove_forward_pre_hook_handles)
    engine = GradientEngine(scored.module.named_parameters(), EngineGroups.from_megatron(), split_problems=False)
    for runner in (ProblemRunner(scored, LossSettings("leave_one_out", True), max_rows=2, pack_rows=None),
                   ProblemRunner(scored, LossSettings("leave_one_out", True), pack_rows=3)):
        engine.score(random_problems(301, 6), runner, engine.build_reference(random_problems(300, 4), runner))
    result = dict(hooks_before=hooks, hooks_after=len(scored.remove_forward_pre_hook_handles),
                  frozen=[n for n, p in scored.named_parameters() if not p.requires_grad],
                  same=all(torch.equal(a, b) for a, b in zip(_host_pass(plain, rank), _host_pass(scored, rank))))
    gathered = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(gathered, result)
    if rank == 0:
        torch.save(gathered, out)


def test_scoring_with_lazy_weight_gathers_leaves_the_host_pass_bit_identical(tmp_path):
    parallel.spawn(_rank, 2, str(tmp_path / "out.pt"))
    for rank, result in enumerate(torch.load(tmp_path / "out.pt")):
        assert result["hooks_before"] > 0, "DDP did not install its forward pre-hooks: nothing tested"
        assert result["hooks_after"] == result["hooks_before"], rank
        assert result["frozen"] == [], rank
        assert result["same"], f"rank {rank}: the host's grads differ after scoring"
