"""The reference (validation) gradient G, held per rank as buffers shaped like its shards.

G is the sum of the validation problems' policy gradients, L2-normalised over the whole model
(all TP/PP ranks). Only this rank's counted parameters get a buffer; a checkpoint stores the
buffers by parameter name so a restored run scores exactly as before.
"""

from __future__ import annotations

import math

import torch

from nemo_gradalign.engine.flat import flat_views
from nemo_gradalign.engine.grads import local_grad
from nemo_gradalign.engine.groups import EngineGroups
from nemo_gradalign.engine.rules import CountedParams

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float64": torch.float64}


EMPTY_MESSAGE = (
    "the validation gradient is zero: every validation problem's rollouts got the same reward "
    "(or the same response), so none carries a policy-gradient signal. Use more validation "
    "problems or rollouts_per_problem, or a policy that is neither always right nor always "
    "wrong on them."
)


class EmptyReferenceGradient(ValueError):
    """The validation gradient is zero: no validation problem had reward variance."""


class ReferenceGradient:
    """Unit-norm G over this rank's shard, plus the bookkeeping to know when to refresh it."""

    def __init__(self, counted: CountedParams, groups: EngineGroups, dtype: str = "float32"):
        self.names = list(counted.names)
        self.groups = groups
        self.dtype = DTYPES[dtype]
        device = counted.params[0].device if counted.params else torch.device("cpu")
        # one flat tensor, the per-parameter buffers are views of it: a problem's dot with G is
        # then a single kernel when the grads are flat too (engine/flat.py)
        self.flat = torch.zeros(sum(p.numel() for p in counted.params), dtype=self.dtype, device=device)
        self.buffers = flat_views(self.flat, counted.params)
        self.norm = 0.0  # ‖G‖ before normalisation (for logging)
        self.built_at_step: int | None = None

    @property
    def ready(self) -> bool:
        return self.built_at_step is not None

    def needs_refresh(self, step: int, refresh_every: int) -> bool:
        return not self.ready or step - self.built_at_step >= refresh_every

    def set_from_grads(self, counted: CountedParams, step: int, divisor=None) -> None:
        """Take G from the grads accumulated over all validation problems, sum DP, normalise.
        ``divisor(param)`` (a tensor shaped like it, or None) divides G elementwise first: the
        official code's optional Adam preconditioning, G / (√v̂ + ε)."""
        for buf, param in zip(self.buffers, counted.params):
            grad = local_grad(param)
            if grad is None:
                buf.zero_()
            else:
                buf.copy_(grad)
        self.groups.sum_data_parallel([self.flat])  # the buffers are views of it: one collective
        for buf, param in zip(self.buffers, counted.params):
            scale = divisor(param) if divisor is not None else None
            if scale is not None:
                buf.div_(scale.to(buf.dtype))
        sq = self.flat.double().square().sum().reshape(1)
        norm = math.sqrt(self.groups.sum_model_parallel(sq).item())
        if not math.isfinite(norm):
            raise ValueError(f"the validation gradient is not finite (norm {norm})")
        if norm == 0.0:
            raise EmptyReferenceGradient(EMPTY_MESSAGE)
        for buf in self.buffers:
            buf.div_(norm)
        self.norm = norm
        self.built_at_step = step

    def set_from_tensors(self, grads: list[torch.Tensor], step: int) -> None:
        """G from this rank's shards of a gradient that is already whole on every rank (the update's
        trusted share, megatron/update_reference.py): unit norm over the model-parallel ranks.
        EmptyReferenceGradient when it is zero, the current G left as it was."""
        sq = torch.zeros(1, dtype=torch.float64, device=self.flat.device)
        for grad in grads:
            sq += grad.double().square().sum()
        norm = math.sqrt(self.groups.sum_model_parallel(sq).item())
        if not math.isfinite(norm):
            raise ValueError(f"the validation gradient is not finite (norm {norm})")
        if norm == 0.0:
            raise EmptyReferenceGradient(EMPTY_MESSAGE)
        for buf, grad in zip(self.buffers, grads):
            buf.copy_(grad)
        self.flat.div_(norm)
        self.norm = norm
        self.built_at_step = step

    def state_dict(self) -> dict:
        return {
            "buffers": {n: b.clone() for n, b in zip(self.names, self.buffers)},
            "norm": self.norm,
            "built_at_step": self.built_at_step,
            "dtype": str(self.dtype),
        }

    def load_state_dict(self, state: dict) -> None:
        missing = set(self.names) ^ set(state["buffers"])
        if missing:
            raise KeyError(f"reference gradient checkpoint does not match this rank: {sorted(missing)}")
        for name, buf in zip(self.names, self.buffers):
            src = state["buffers"][name]
            if src.shape != buf.shape:
                raise ValueError(f"reference buffer {name!r}: shape {tuple(src.shape)} != {tuple(buf.shape)}")
            buf.copy_(src)
        self.norm = float(state["norm"])
        self.built_at_step = state["built_at_step"]
