"""Where a parameter's accumulated gradient lives (megatron DDP's ``main_grad`` or ``.grad``), and
summing such grads over a process group."""

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


def sum_grads(params: list[torch.nn.Parameter], all_reduce) -> None:
    """Replace the params' grads by their sum over a group: one collective for all of them. A
    grad that backward never reached is zeros (every rank of the group must take part)."""
    if not params:
        return
    for param in params:
        if local_grad(param) is None:
            param.grad = torch.zeros_like(param)
    grads = [local_grad(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    sum_in_place(flat, all_reduce)
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def sum_in_place(tensor: torch.Tensor, all_reduce) -> None:
    """``tensor`` summed over a group, in place. 16-bit tensors are summed in fp32: one rounding
    when stored back, however many ranks add up (a 16-bit all-reduce rounds at every step)."""
    wide = accumulable(tensor)
    all_reduce(wide)
    if wide is not tensor:
        tensor.copy_(wide)
