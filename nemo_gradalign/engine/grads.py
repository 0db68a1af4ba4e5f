"""Where a parameter's accumulated gradient lives: megatron DDP's ``main_grad`` or ``.grad``."""

from __future__ import annotations

import torch


def local_grad(param: torch.nn.Parameter) -> torch.Tensor | None:
    main = getattr(param, "main_grad", None)
    return main if main is not None else param.grad


def zero_grads(params) -> None:
    for param in params:
        main = getattr(param, "main_grad", None)
        if main is not None:
            main.zero_()
        param.grad = None


def accumulable(grad: torch.Tensor) -> torch.Tensor:
    """bf16/fp16 grads (NeMo RL keeps main_grad in bf16) are summed in fp32: a 16-bit dot over
    millions of terms would carry ~1e-2 relative error; fp32 adds only its own rounding."""
    return grad.float() if grad.dtype in (torch.bfloat16, torch.float16) else grad
