"""G read off the update itself: the trusted groups' share of the step's gradient, copied from the
trainer's own accumulation (``gradalign.validation.g_from_update``).

With a trusted share of each batch (validation.train_share) the trusted groups are trained on, so
the update's backward already computes their gradient. Put first in the batch, in microbatches of
their own, they are all that the accumulated grads hold when the first pool microbatch starts: a
copy there is G_next = Σ_{i trusted} c_i g_i exactly (c_i = N_i / N, each problem's token share,
as the step weighs it), with the trainer's own float arithmetic — no pass of its own, nothing
touched. It is G for the *next* step (built at this step's weights, before its update), since this
step's pool groups are read in the same backward against the G that already exists.

Exact only where the local grads before megatron's finalize are each rank's share of g: refused
(the caller falls back to a separate pass) under pipeline parallelism (1F1B interleaves
microbatches), sequence parallelism (layer-norm grads partial over TP until finalize), and what
in_pass.layout_reason refuses (context and expert parallelism, a tied embedding, dropout, a loss
scale). Every data-parallel rank of the embedded trainer trains the whole batch, so each holds all
of G: nothing is summed over DP.
"""

from __future__ import annotations

import torch

from nemo_gradalign.engine import GradientEngine
from nemo_gradalign.engine.grads import local_grad
from nemo_gradalign.megatron.in_pass import layout_reason


def capture_reason(model, engine: GradientEngine, trusted_rows: int, microbatch_rows: int) -> str | None:
    """Why the trusted groups' gradient cannot be copied off this update exactly (None: it can)."""
    from megatron.core.utils import get_model_config

    if trusted_rows % microbatch_rows:
        return (f"the trusted groups' {trusted_rows} rollouts do not fill whole microbatches of {microbatch_rows} "
                "(policy.max_rollouts_per_microbatch)")
    if engine.groups.pp_size > 1:
        return "pipeline parallelism interleaves the microbatches' backward passes"
    if getattr(get_model_config(model), "sequence_parallel", False):
        return "sequence parallelism leaves layer-norm grads partial over TP until finalize"
    return layout_reason(model, engine)


class UpdateReference:
    """Arm with ``open``; ``on_microbatch`` before each microbatch's forward; ``grads`` after."""

    def __init__(self, engine: GradientEngine, trusted_rows: int):
        self.engine, self.trusted_rows = engine, trusted_rows
        self.boundary: int | None = None
        self.grads: list[torch.Tensor] | None = None

    def open(self, model, microbatches: list[dict]) -> str | None:
        """Check the layout; None when armed, else the reason (nothing is then copied)."""
        rows = microbatches[0]["tokens"].shape[0]
        reason = capture_reason(model, self.engine, self.trusted_rows, rows)
        self.boundary = None if reason else self.trusted_rows // rows
        self.grads = None
        return reason

    def on_microbatch(self, index: int) -> None:
        """Before the first pool microbatch's forward: the grads hold the trusted groups' alone."""
        if index == self.boundary:
            self.grads = [_copy(local_grad(p), p) for p in self.engine.counted.params]


def _copy(grad: torch.Tensor | None, param: torch.nn.Parameter) -> torch.Tensor:
    return torch.zeros_like(param, dtype=param.dtype) if grad is None else grad.detach().clone()
