"""The trained policy: a GPT wrapped in megatron's DDP, with megatron's Adam.

Grads live in DDP's ``main_grad`` buffer; they are all-reduced over data-parallel ranks only in
training steps (``finalize_grads=True``), never while the engine scores problems.
"""

from __future__ import annotations

import torch

from nemo_gradalign.megatron import cpu_shim
from nemo_gradalign.megatron.model import ModelSpec, build_gpt


class Policy:
    def __init__(self, spec: ModelSpec):
        from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig

        module = build_gpt(spec)
        # grads in the params' dtype: fp32 for training, float64 in the exactness tests
        self.model = DistributedDataParallel(
            module.config, DistributedDataParallelConfig(grad_reduce_in_fp32=False), module)
        self.optimizer = None

    def make_optimizer(self, lr: float, weight_decay: float = 0.0, betas=(0.9, 0.999)):
        """megatron's Adam over this model. Gradient clipping is off: megatron's clip asserts CUDA
        tensors (reference/probe_cpu.md), and the tiny CPU model does not need it."""
        from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer

        cfg = OptimizerConfig(optimizer="adam", lr=lr, weight_decay=weight_decay, adam_beta1=betas[0],
                              adam_beta2=betas[1], clip_grad=0.0, params_dtype=torch.float32)
        with cpu_shim.device_context():
            return get_megatron_optimizer(cfg, [self.model])

    def zero_grad(self, optimizer) -> None:
        self.model.zero_grad_buffer()
        optimizer.zero_grad()

    def step(self, optimizer) -> None:
        with cpu_shim.device_context():
            optimizer.step()
        self.zero_grad(optimizer)

    def named_parameters(self):
        return self.model.module.named_parameters()


def adam_divisor(optimizer, eps: float = 1e-8):
    """param -> √v̂ + ε from megatron's Adam state (v̂ = exp_avg_sq / (1 − β₂^t)), None for a
    parameter without state yet (before the first step G is not preconditioned). Only fp32
    parameters that the optimizer holds itself (no fp32 main copies, no distributed optimizer)."""
    inners = getattr(optimizer, "chained_optimizers", [optimizer])
    found = {}
    for inner in inners:
        torch_opt = inner.optimizer
        for group in torch_opt.param_groups:
            for param in group["params"]:
                found[id(param)] = (torch_opt.state, group["betas"][1], param)

    def divisor(param):
        if id(param) not in found:
            raise ValueError("gradalign.precondition=adam needs the optimizer to hold the model's own "
                             "parameters (fp32, no distributed optimizer)")
        state, beta2, key = found[id(param)]
        entry = state.get(key)
        if not entry or "exp_avg_sq" not in entry:
            return None
        steps = float(entry["step"])
        return (entry["exp_avg_sq"] / (1 - beta2 ** steps)).sqrt().add_(eps)

    return divisor
