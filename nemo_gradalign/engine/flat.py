"""Gradients as views of one flat buffer, so a problem's partials are two kernels, not 2·P.

The counted parameters come first, in the reference gradient's order, the TP duplicates after
them; ⟨g, G⟩ and ‖g‖² are then ``dot(flat[:n], G.flat)`` and ``dot(flat[:n], flat[:n])``, and
zeroing is one ``fill``. Autograd accumulates in place into an existing ``.grad``, so the views
stay valid through backward. Models whose grads live in megatron DDP's ``main_grad`` buffer keep
their own layout and use the per-parameter path instead.
"""

from __future__ import annotations

import torch


def flat_views(flat: torch.Tensor, params) -> list[torch.Tensor]:
    """Consecutive slices of ``flat`` shaped like ``params`` (shared by grads and the reference)."""
    views, offset = [], 0
    for p in params:
        views.append(flat[offset:offset + p.numel()].view(p.shape))
        offset += p.numel()
    return views


def can_flatten(params: list[torch.nn.Parameter]) -> bool:
    if not params or any(hasattr(p, "main_grad") for p in params):
        return False
    first = params[0]
    return all(p.dtype == first.dtype and p.device == first.device for p in params)


class FlatGradients:
    def __init__(self, counted: list[torch.nn.Parameter], others: list[torch.nn.Parameter]):
        self.params = counted + others
        self.n_counted = sum(p.numel() for p in counted)
        first = self.params[0]
        self.flat = torch.zeros(sum(p.numel() for p in self.params), dtype=first.dtype, device=first.device)
        self.views = flat_views(self.flat, self.params)

    @property
    def counted(self) -> torch.Tensor:
        return self.flat[: self.n_counted]

    def install(self) -> None:
        """(Re)point every ``.grad`` at its view; an optimizer's zero_grad may have dropped them."""
        for p, view in zip(self.params, self.views):
            if p.grad is not view:
                if p.grad is None:
                    view.zero_()
                else:
                    view.copy_(p.grad)
                p.grad = view

    def zero(self) -> None:
        self.flat.zero_()
