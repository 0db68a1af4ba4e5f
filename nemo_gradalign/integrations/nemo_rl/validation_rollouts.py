"""Generates the trusted validation prompts in their own rollout call, so upstream never sees them.

grpo_train resolves ``run_multi_turn_rollout`` / ``run_async_multi_turn_rollout`` as module
globals of ``nemo_rl.algorithms.grpo`` at call time. The wrapper installed there calls upstream's
function on the training batch exactly as grpo_train asked (the ``gradalign_refresh`` marker
removed), so the batch, the rollout metrics grpo_train logs, the baselines, dynamic sampling and
the loader position are upstream's. On a marked batch it then calls the same function once more
on the validation prompts (repeated G times), with the same generation arguments, and keeps that
result for the selection hook (``take``); its metrics are dropped. Cost: one extra generation call
on refresh batches.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, Callable

from nemo_gradalign.integrations.nemo_rl.validation_loader import REFRESH


class ValidationRollouts:
    """The validation prompts and their latest rollouts, waiting for the selection hook.

    ``finish`` applies to them what grpo_train applies to training rows after the rollout
    (reward scaling / shaping), so the validation gradient uses the trained rewards."""

    def __init__(self, prompts, group_size: int, finish: Callable[[Any], Any] = lambda b: b):
        self.prompts, self.group_size, self.finish = prompts, group_size, finish
        self.pending = None

    def take(self):
        out, self.pending = self.pending, None
        return out


def with_validation(original: Callable, store: ValidationRollouts) -> Callable:
    """Wrap one upstream rollout function; same signature, same (batch, metrics) return."""
    signature = inspect.signature(original)

    @functools.wraps(original)
    def rollout(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        batch = bound.arguments["input_batch"]
        if REFRESH not in batch:
            return original(*args, **kwargs)
        batch = batch.copy()
        due = bool(batch.pop(REFRESH).any())
        bound.arguments["input_batch"] = batch
        result = original(*bound.args, **bound.kwargs)
        if due:
            bound.arguments["input_batch"] = store.prompts.repeat_interleave(store.group_size)
            validation, _metrics = original(*bound.args, **bound.kwargs)
            store.pending = store.finish(validation)
        return result

    rollout.__gradalign_original__ = original
    return rollout


ROLLOUT_NAMES = ("run_multi_turn_rollout", "run_async_multi_turn_rollout")


def install(grpo_module, store: ValidationRollouts) -> Callable[[], None]:
    """Wrap grpo's rollout globals; returns the function that puts upstream's back."""
    originals = {}
    for name in ROLLOUT_NAMES:
        current = getattr(grpo_module, name, None)
        if current is None:
            continue
        originals[name] = getattr(current, "__gradalign_original__", current)
        setattr(grpo_module, name, with_validation(originals[name], store))

    def uninstall() -> None:
        for name, fn in originals.items():
            setattr(grpo_module, name, fn)

    return uninstall
