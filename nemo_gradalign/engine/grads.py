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
