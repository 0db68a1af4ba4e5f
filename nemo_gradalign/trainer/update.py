"""One GRPO step on a batch of problems: old log-probs, then μ clipped-ratio optimizer steps."""

from __future__ import annotations

from contextlib import nullcontext

import torch

from nemo_gradalign import advantages, grpo
from nemo_gradalign.megatron.in_pass import AlignmentReading
from nemo_gradalign.megatron.policy import Policy
from nemo_gradalign.megatron.problem_runner import LossSettings
from nemo_gradalign.megatron.step import run_microbatches, shift_labels, split_rows
from nemo_gradalign.megatron.update_reference import UpdateReference
from nemo_gradalign.rollouts import ProblemRollouts


def pack(batch: list[ProblemRollouts], loss: LossSettings, dtype: torch.dtype = torch.float32
         ) -> dict[str, torch.Tensor]:
    """All rollouts of the batch as right-padded rows with per-token advantages and token-mean
    scale over the whole batch (NeMo RL's token-level loss), in ``dtype``: float32, or float64
    for a float64 model (advantages and 1/N then carry no float32 rounding)."""
    width = max(r.tokens.shape[1] for r in batch)
    rows = sum(r.k for r in batch)
    tokens = torch.zeros(rows, width, dtype=torch.long)
    adv = torch.zeros(rows, width, dtype=dtype)
    mask = torch.zeros(rows, width, dtype=dtype)
    at = 0
    for r in batch:
        length = r.tokens.shape[1]
        tokens[at:at + r.k, :length] = r.tokens
        m = torch.zeros(r.k, width, dtype=dtype)
        m[:, :length] = r.label_mask().to(dtype)
        a = advantages.group_advantages(r.rewards, loss.baseline, loss.normalize_std).to(dtype)
        mask[at:at + r.k] = m
        adv[at:at + r.k] = a.unsqueeze(1) * m
        at += r.k
    return {"tokens": tokens, "labels": shift_labels(tokens), "advantages": adv,
            "token_scale": mask / mask.sum().clamp_min(1)}


def grpo_step(policy: Policy, optimizer, batch: list[ProblemRollouts], loss: LossSettings,
              clip_min: float, clip_max: float, inner_epochs: int, max_rows: int | None,
              read_alignment: AlignmentReading | None = None, capture: UpdateReference | None = None) -> dict:
    """Clipped-ratio GRPO update: μ = ``inner_epochs`` optimizer steps over the whole batch.

    ``read_alignment``: also read each problem's ⟨g_i, Ĝ⟩ and ‖g_i‖² from the first inner
    epoch's own backward (megatron/in_pass.py), returned as ``"alignment"``. ``capture``: copy the
    leading trusted groups' gradient off that backward (megatron/update_reference.py), returned as
    ``"trusted_gradient"`` (or ``"capture_refused"``, the reason). The step's arithmetic is
    unchanged either way (bit-identical weights and optimizer state)."""
    model = policy.model
    dtype = torch.float64 if next(model.parameters()).dtype == torch.float64 else torch.float32
    packed = pack(batch, loss, dtype)
    microbatches = split_rows(packed, max_rows)
    reading = None
    if read_alignment is not None:  # refuses what it cannot read before any pass runs
        reading = read_alignment.open(model, batch, packed["token_scale"], microbatches,
                                      loss.baseline, loss.normalize_std)
    refused = capture.open(model, microbatches) if capture is not None else None
    callbacks = [f for f in (reading.next_microbatch if reading else None,
                             capture.on_microbatch if capture is not None and not refused else None) if f]
    policy.zero_grad(optimizer)
    old = run_microbatches(model, microbatches, loss_fn=None, forward_only=True, temperature=loss.temperature)
    for mb, logp in zip(microbatches, old):  # only the last pipeline stage gets (and needs) them
        mb["old_logprobs"] = logp
    losses, result = [], {}
    for epoch in range(inner_epochs):
        read = reading if epoch == 0 else None  # ρ = 1 only before the first optimizer step
        with read if read is not None else nullcontext():
            out = run_microbatches(
                model, microbatches,
                lambda logp, mb: grpo.clipped_surrogate(logp, mb["old_logprobs"], mb["advantages"],
                                                      mb["token_scale"], clip_min, clip_max),
                finalize_grads=True, temperature=loss.temperature,
                on_microbatch=_each(callbacks) if epoch == 0 and callbacks else None)
        if read is not None:
            result["alignment"] = read.scores()
        if epoch == 0 and capture is not None:
            result["trusted_gradient" if not refused else "capture_refused"] = refused or capture.grads
        policy.step(optimizer)
        losses.append(float(sum(out)) if out else float("nan"))
    return {"loss": losses[-1], **result}


def _each(callbacks):
    def on_microbatch(index: int) -> None:
        for callback in callbacks:
            callback(index)
    return on_microbatch
