"""The contract with NeMo RL's Megatron worker: scoring leaves the host's training bit-identical.

A twin of the host from megatron-core's real parts: DistributedDataParallel configured as
upstream's recipes configure it (overlap_grad_reduce on and off, grads in fp32 or in the params'
dtype, SUM reduction as NeMo RL's ``average_in_collective=False``), megatron's Adam, the config
hooks installed once the way Megatron-Bridge's ``_update_model_config_funcs`` installs them
(``no_sync_func``/``grad_sync_func`` = DDP's, ``finalize_model_grads_func`` = a partial of
``finalize_model_grads`` with the process groups, ``grad_scale_func`` = the optimizer's), and a
training step shaped like the worker's ``train()``. Then

    score → train → score → train   ==   train → train

for weights and optimizer state, bit for bit, at DP=2, TP=2×DP=2, PP=2×DP=2, TP=2×DP=2 with
sequence parallelism and CP=2×DP=2 (DDP then reduces over data × context parallel), and MoE as NeMo RL
runs it (all-to-all dispatch, aux-loss-free router bias) at DP=2×EP=2, TP=2×EP=4 (ETP=1, SP) and
CP=2×EP=4 — weights, optimizer state and module buffers (the router's token counts). Scoring first is
the case of NeMo RL's step 1 (dynamic_sampling runs before the first ``train()``). The
distributed optimizer needs CUDA tensors in megatron-core and is not run here.
"""

from __future__ import annotations

import functools

import pytest
import torch

from helpers import random_problems
from nemo_gradalign.engine import EngineGroups, GradientEngine
from nemo_gradalign.megatron import cpu_shim, parallel
from nemo_gradalign.megatron.context_parallel import slice_for_this_cp_rank
from nemo_gradalign.megatron.model import ModelSpec, build_gpt
from nemo_gradalign.megatron.problem_runner import LossSettings, ProblemRunner
from nemo_gradalign.megatron.step import causal_mask

SPEC = ModelSpec(num_layers=2, hidden_size=32, num_attention_heads=4, vocab_size=32)
DDP_CONFIGS = [dict(overlap_grad_reduce=o, grad_reduce_in_fp32=f) for o in (True, False) for f in (True, False)]
VAL, POOL = random_problems(300, 4), random_problems(301, 6)


class Host:
    """What NeMo RL's worker holds after setup: DDP model, optimizer, hooks on the config."""

    def __init__(self, ddp_options: dict, spec: ModelSpec = SPEC, **optimizer_options):
        from megatron.core.distributed import (DistributedDataParallel, DistributedDataParallelConfig,
                                               finalize_model_grads)
        from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
        from megatron.core.process_groups_config import ProcessGroupCollection

        module = build_gpt(spec)
        ddp = DistributedDataParallelConfig(check_for_nan_in_grad=True, average_in_collective=False,
                                            **ddp_options)
        self.model = DistributedDataParallel(module.config, ddp, module)
        with cpu_shim.device_context():
            self.optimizer = get_megatron_optimizer(
                OptimizerConfig(optimizer="adam", lr=1e-2, clip_grad=0.0, params_dtype=torch.float32,
                                **optimizer_options),
                [self.model])
        config = module.config
        if ddp.overlap_grad_reduce:
            config.no_sync_func = self.model.no_sync
            config.grad_sync_func = self.model.start_grad_sync
        config.finalize_model_grads_func = functools.partial(
            finalize_model_grads, pg_collection=ProcessGroupCollection.use_mpu_process_groups())
        config.grad_scale_func = self.optimizer.scale_loss
        self.config = config

    def train_step(self, step: int) -> None:
        """zero_grad_buffer, one forward_backward over 3 microbatches with the hooks live, step."""
        from megatron.core import parallel_state as ps
        from megatron.core.pipeline_parallel import get_forward_backward_func

        gen = torch.Generator().manual_seed(1000 * step + ps.get_data_parallel_rank())
        batches = iter([torch.randint(1, SPEC.vocab_size, (2, 9), generator=gen) for _ in range(3)])  # 8 tokens: divisible by TP
        # (with EP, DP ranks of one EP group train different tokens, as in NeMo RL)
        def forward_step(_iterator, model):
            tokens = next(batches)
            batch = slice_for_this_cp_rank({  # CP: this rank's zig-zag share, megatron's own slicing
                "tokens": tokens[:, :-1], "labels": tokens[:, 1:],
                "position_ids": torch.arange(8, device=tokens.device).expand(2, -1).contiguous()})
            mask = causal_mask(8, tokens.device) if ps.get_context_parallel_world_size() == 1 else None
            out = model(batch["tokens"], batch["position_ids"], mask, labels=batch["labels"])
            return out, lambda loss: (loss.float().mean(), {})

        self.model.zero_grad_buffer()
        self.optimizer.zero_grad()
        batches = iter([b.to(next(self.model.parameters()).device) for b in batches])
        with cpu_shim.device_context():
            get_forward_backward_func()(forward_step_func=forward_step, data_iterator=batches,
                                        model=[self.model], num_microbatches=3, seq_length=8,
                                        micro_batch_size=2, forward_only=False)
            self.optimizer.step()

    def state(self) -> list[torch.Tensor]:
        tensors = [p.detach().clone() for p in self.model.parameters()]
        tensors += [b.clone() for b in self.model.module.buffers()]  # e.g. a MoE router's expert bias
        for opt in getattr(self.optimizer, "chained_optimizers", [self.optimizer]):
            for group in opt.optimizer.state.values():
                tensors += [v.clone() for v in group.values() if torch.is_tensor(v)]
        return tensors


def gradalign_scores(host: Host) -> None:
    """What the GradAlign worker extension does at dynamic_sampling: G, then the pool's scores."""
    engine = GradientEngine(host.model.module.named_parameters(), EngineGroups.from_megatron(),
                            split_problems=False)
    hooks = {name: getattr(host.config, name) for name in ("no_sync_func", "grad_sync_func",
                                                           "finalize_model_grads_func", "grad_scale_func")}
    # one problem per pass (rollouts split over microbatches of 2), then packed (several
    # microbatches, weights frozen for the pass and handed back)
    for runner in (ProblemRunner(host.model, LossSettings("leave_one_out", True), max_rows=2, pack_rows=None),
                   ProblemRunner(host.model, LossSettings("leave_one_out", True), pack_rows=3)):
        engine.score(POOL, runner, engine.build_reference(VAL, runner))
    for name, value in hooks.items():
        assert getattr(host.config, name) is value, f"{name} was not restored"


# NeMo RL's MoE recipes: all-to-all dispatch; aux-loss-free balancing (a router bias moved by the
# step from the tokens each expert got), which a scoring forward must not count
MOE = {"num_experts": 4, "moe_dispatcher": "alltoall", "moe_expert_bias": True}


def _twin_rank(rank, layout, out, sequence_parallel):
    parallel.init_distributed(layout)
    spec = SPEC.model_copy(update={"sequence_parallel": sequence_parallel, **(MOE if layout.ep > 1 else {})})
    same = []
    for options in DDP_CONFIGS:
        plain = Host(options, spec)
        plain.train_step(1)
        plain.train_step(2)
        scored = Host(options, spec)
        gradalign_scores(scored)
        scored.train_step(1)
        gradalign_scores(scored)
        scored.train_step(2)
        same.append(all(torch.equal(a, b) for a, b in zip(plain.state(), scored.state())))
    gathered = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(gathered, same)
    if rank == 0:
        torch.save(gathered, out)


@pytest.mark.parametrize("layout,sequence_parallel", [
    (parallel.Layout(dp=2), False),  # the fast tier's twin
    *(pytest.param(layout, sp, marks=pytest.mark.slow) for layout, sp in (
        (parallel.Layout(tp=2, dp=2), False), (parallel.Layout(pp=2, dp=2), False),
        (parallel.Layout(tp=2, dp=2), True), (parallel.Layout(cp=2, dp=2), False),
        (parallel.Layout(dp=2, ep=2), False), (parallel.Layout(tp=2, dp=2, ep=4, etp=1), True),
        (parallel.Layout(cp=2, dp=2, ep=4), False))),
], ids=lambda v: str(v) if isinstance(v, parallel.Layout) else ("SP" if v else ""))
def test_scoring_leaves_the_hosts_training_bit_identical(layout, sequence_parallel, tmp_path):
    parallel.spawn(_twin_rank, layout.world_size, layout, str(tmp_path / "twin.pt"), sequence_parallel)
    per_rank = torch.load(tmp_path / "twin.pt")
    for options, *ranks in zip(DDP_CONFIGS, *per_rank):
        assert all(ranks), f"{layout} SP={sequence_parallel} {options}: training differs after scoring: {ranks}"
