"""The memory schedule's work around each GRPO update (the trainer side of MemorySchedule).

Before the update: G for the step — the Selector's validation gradient, rebuilt every
``gradalign.refresh_every`` steps exactly as the other schedules rebuild it — handed to
``grpo_step`` as the reading. After it: the batch's cosines, read from the update's own
backward, go into the score memory, and the record says what the step explored, skipped and
picked. Compute: G's rebuild is counted by the Selector (validation rollouts and their
forward+backward), the reading as ``read`` tokens (trainer/compute.py). ZeroVarianceFeedback is
the GRESO-like control's side: streaks of zero reward variance only, no G, no reading.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import torch

from nemo_gradalign.engine import EmptyReferenceGradient, GradientEngine
from nemo_gradalign.megatron.in_pass import AlignmentReading, InPassScores
from nemo_gradalign.megatron.update_reference import capture_reason
from nemo_gradalign.rollouts import ProblemRollouts
from nemo_gradalign.selection.schedules import MemorySchedule
from nemo_gradalign.selection.scores import simacc_factor
from nemo_gradalign.selection.selector import Selector
from nemo_gradalign.trainer.compute import ComputeMeter, rollout_tokens

log = logging.getLogger(__name__)
TAGS = ("corrupted", "target", "wrong_key")  # the regimes' flags (data/tasks.py)


class MemoryFeedback:
    def __init__(self, schedule: MemorySchedule, selector: Selector, engine: GradientEngine,
                 compute: ComputeMeter, pool: list):
        self.schedule, self.selector, self.engine, self.compute, self.pool = schedule, selector, engine, compute, pool
        self.capture_refused: str | None = None
        self.capture_checked = False
        self.tags = [t for t in TAGS if any(p.tags.get(t) for p in pool)]

    def reading(self, step: int, record: dict, trusted: list[ProblemRollouts] | None = None
                ) -> AlignmentReading | None:
        """The reading of this step's update, against G as of ``step``. ``trusted``: the batch's
        trusted groups, which build G (validation.train_share); if none of them carries a gradient
        before any G exists, the step trains unread (None) and its visits record no cosine. With
        validation.g_from_update, G is the one the last update left (``take_update``); only the
        first step, or every step once the layout refused the copy, builds it with a pass."""
        metrics = {"gradalign/scored_tokens": 0}
        current = self.selector.reference
        if self.from_update and current is not None and current.ready:
            record["gradalign/reference_step"] = current.built_at_step
            record["gradalign/generation"] = self.schedule.note_reference(current.built_at_step)
            return self._reading(current)
        try:
            reference = self.selector.validation_reference(step, metrics, trusted)
        except EmptyReferenceGradient:
            if trusted is None:
                raise
            record["gradalign/reference_missing"] = 1
            return None
        finally:
            self.compute.add("scored", metrics["gradalign/scored_tokens"])
            record.update(metrics)
        record["gradalign/generation"] = self.schedule.note_reference(reference.built_at_step)
        return self._reading(reference)

    def _reading(self, reference) -> AlignmentReading:
        cfg = self.selector.cfg
        return AlignmentReading(self.engine, reference, cfg.in_pass_projection, cfg.seed)

    @property
    def from_update(self) -> bool:
        return self.selector.cfg.validation.g_from_update and self.capture_refused is None

    def check_capture(self, model, trusted_rows: int, microbatch_rows: int) -> None:
        """Decide once, before the first reading, whether G can be copied off the updates (the
        layout and the microbatch split are the same every step); if not, say why, once: G is then
        built with a pass of its own, as without g_from_update."""
        if not self.selector.cfg.validation.g_from_update or self.capture_checked:
            return
        self.capture_checked = True
        self.capture_refused = capture_reason(model, self.engine, trusted_rows, microbatch_rows)
        if self.capture_refused:
            log.warning("G cannot be copied off the update (%s): it is built with a pass of its own",
                        self.capture_refused)

    def take_update(self, step: int, out: dict, record: dict) -> None:
        """G for the next step from this update's trusted groups (``grpo_step``'s capture); a zero
        one keeps G."""
        refused, grads = out.pop("capture_refused", None), out.pop("trusted_gradient", None)
        if refused or grads is None:  # check_capture said so already
            return
        reference = self.selector.reference or self.engine.empty_reference()
        try:
            reference.set_from_tensors(grads, step + 1)
        except EmptyReferenceGradient:  # no trusted group had a gradient: G stays as it was
            record["gradalign/reference_kept_stale"] = 1
            return
        self.selector.reference = reference

    def record(self, step: int, ids: list[int], batch: list[ProblemRollouts], scores: InPassScores | None,
               pool_at: int = 0) -> dict:
        """Remember the alignment of the batch's pool problems (``ids``, the batch's groups from
        ``pool_at``; the trusted groups before or after them); the step's selection metrics."""
        picked = batch[pool_at:pool_at + len(ids)]
        if scores is None:  # an unread step (no G yet): visits and zero streaks only
            zero = np.array([not self.selector.run_problem.has_gradient(r) for r in picked], dtype=bool)
            self.schedule.record_visits(ids, step, zero)
            return self._step_record(ids, np.full(zero.shape, np.nan), zero)
        if scores.problem_ids != [r.problem_id for r in batch]:
            raise RuntimeError("in-pass scores are not in the batch's order")
        pool = slice(pool_at, pool_at + len(ids))
        cosine, zero = scores.cosine().numpy()[pool], scores.zero_gradient.numpy()[pool]
        remembered = cosine  # simacc: direction x pass-rate spread, cos · 4a(1−a)
        if self.selector.cfg.method == "simacc":
            remembered = cosine * simacc_factor(torch.tensor([r.pass_rate for r in picked])).numpy()
        self.schedule.record(ids, step, remembered, zero)
        self.compute.add("read", rollout_tokens(batch))
        return self._step_record(ids, cosine, zero)

    def _step_record(self, ids: list[int], cosine: np.ndarray, zero: np.ndarray) -> dict:
        plan, memory = self.schedule.plan, self.schedule.memory
        preferred = ids[plan.explored:len(ids) - plan.refilled_from_skipped]
        out = {
            "gradalign/picked_ids": [self.pool[i].problem_id for i in ids],
            "gradalign/picked": len(ids),
            "gradalign/explored": plan.explored,
            "gradalign/preferred": len(preferred),
            "gradalign/skipped": int(plan.skipped.size),
            "gradalign/refilled_from_skipped": plan.refilled_from_skipped,
            "gradalign/zero_gradient_share": float(zero.mean()) if zero.size else math.nan,
            "gradalign/mean_cosine": float(cosine[~zero].mean()) if (~zero).any() else math.nan,
            "gradalign/batch_cosines": [None if z or math.isnan(c) else float(c) for c, z in zip(cosine, zero)],
            "gradalign/batch_zero_gradient": zero.tolist(),
            "gradalign/memory_seen": int(np.count_nonzero(memory.visits)),
            "gradalign/memory_visits": int(memory.visits.sum()),
        }
        for tag in self.tags:
            out[f"gradalign/batch_{tag}"] = [bool(self.pool[i].tags.get(tag)) for i in ids]  # per pick
            out[f"gradalign/picked_{tag}_share"] = self._share(tag, ids)
            out[f"gradalign/preferred_{tag}_share"] = self._share(tag, preferred)
            out[f"gradalign/skipped_{tag}_share"] = self._share(tag, plan.skipped.tolist())
        return out

    def _share(self, tag: str, ids) -> float:
        return sum(bool(self.pool[i].tags.get(tag)) for i in ids) / len(ids) if len(ids) else math.nan


class ZeroVarianceFeedback(MemoryFeedback):
    """The GRESO-like control (``grpo.sampler=greso``): no G is built and nothing is read from the
    update (no compute charged for either); a problem's zero-gradient streak comes from its
    rollouts' rewards (no reward variance: zero advantages, a zero gradient)."""

    def __init__(self, schedule: MemorySchedule, has_gradient, compute: ComputeMeter, pool: list):
        super().__init__(schedule, None, None, compute, pool)
        self.has_gradient = has_gradient

    def reading(self, step: int, record: dict, trusted=None) -> None:
        return None

    def record(self, step: int, ids: list[int], batch: list[ProblemRollouts], scores: None = None,
               pool_at: int = 0) -> dict:
        zero = np.array([not self.has_gradient(r) for r in batch[pool_at:pool_at + len(ids)]], dtype=bool)
        self.schedule.record_visits(ids, step, zero)
        return self._step_record(ids, np.full(zero.shape, np.nan), zero)


def memory_feedback(schedule, selector: Selector | None, engine: GradientEngine, compute: ComputeMeter, pool: list,
                    loss) -> MemoryFeedback | None:
    """The feedback a schedule needs: none (round, step), G and its reading (GradAlign-memory), or
    zero-variance streaks judged with the training loss's advantages (the GRESO-like control)."""
    if not isinstance(schedule, MemorySchedule):
        return None
    if selector is None:
        return ZeroVarianceFeedback(schedule, lambda r: r.has_gradient(loss.baseline, loss.normalize_std), compute,
                                    pool)
    return MemoryFeedback(schedule, selector, engine, compute, pool)
