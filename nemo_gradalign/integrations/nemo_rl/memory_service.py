"""The memory sampler for async GRPO, where the loader lives in another process.

``async_grpo_train`` hands the training loader to its trajectory collector actor (Ray pickles
it there) and the collector draws batches in a background thread, ahead of training; feedback
comes from the driver after each trained step. So the sampler and its memory live in one Ray
actor of their own (``MemoryService``); the loader's sampler (``RemoteMemorySampler``, pickled
with the loader) asks it for each step's indices, and the driver's feedback (``MemoryView``)
records into it. The collector's ``get_dataloader_state()`` (upstream's async checkpoint) reaches
the actor through the loader's ``state_dict()``, so a checkpoint holds the sampler and its memory
as they were when it was written, and upstream's ``load_dataloader_state`` restores them.

Each batch interleaves pool and trusted rows (trusted_mix.interleaved): when the collector
gap-fills a target it generates only a batch's first prompts, which then still hold the share.

Lag: a batch is decided when the collector draws it. The collector generates for targets up to
``max_trajectory_age_steps`` = a steps past the trainer's weights and draws one batch before it
checks whether to pause, so in steady collection a batch trained at step t was decided after the
feedback of step t − a − 2: its picks see every step's feedback but the last a + 1. A batch the
collector holds through a pause (a refit) is decided earlier still; one it drops (no target left)
is never trained and records no visit.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from torch.utils.data import Sampler

from nemo_gradalign.selection.memory_sampler import AlignmentMemorySampler
from nemo_gradalign.selection.trusted_mix import interleaved


class MemoryService:
    """The sampler and its memory, behind plain method calls (made a Ray actor by ``start``)."""

    def __init__(self, num_problems: int, batch_size: int, config, keys, trusted):
        self.sampler = AlignmentMemorySampler(num_problems, batch_size, config, keys=keys, trusted=trusted)

    def next_batch(self) -> list[int] | None:
        """The next step's dataset rows (pool and trusted interleaved); None ends the epoch (and
        rolls it over), as the local sampler's iterator does when it is exhausted."""
        sampler = self.sampler
        if sampler.position >= sampler.steps_per_epoch:
            sampler.epoch, sampler.position = sampler.epoch + 1, 0
            return None
        pool = sampler.next_step().problem_ids.tolist()
        return interleaved(pool, [sampler.num_problems + j for j in sampler.last_trusted])

    def record(self, *args, **kwargs) -> None:
        self.sampler.memory.record(*args, **kwargs)

    def record_visits(self, *args, **kwargs) -> None:
        self.sampler.memory.record_visits(*args, **kwargs)

    def latest_generation(self) -> int:
        return int(self.sampler.memory.latest_generation)

    def visits(self) -> np.ndarray:
        return self.sampler.memory.visits.copy()

    def next_feedback_step(self) -> int:
        """One past the latest step any visit was recorded at (0 before any): the trained steps
        count on across a resume, as the memory's visit steps must never go back."""
        last = self.sampler.memory.last_step
        return int(last.max()) + 1 if last.size else 0

    def state_dict(self) -> dict:
        return self.sampler.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.sampler.load_state_dict(state)


def start(num_problems: int, batch_size: int, config, keys, trusted, ray_module=None):
    """A MemoryService Ray actor (no CPU reserved: it only does bookkeeping between steps)."""
    if ray_module is None:
        import ray as ray_module
    actor = ray_module.remote(num_cpus=0)(MemoryService)
    return actor.remote(num_problems, batch_size, config, keys, trusted)


def _get(ref):
    import ray

    return ray.get(ref)


class RemoteMemorySampler(Sampler[int]):
    """The loader's sampler: each step's rows from the service; its state is the service's."""

    def __init__(self, service, num_problems: int, loader_batch_size: int, steps_per_epoch: int, trusted):
        self.service, self.num_problems = service, num_problems
        self.loader_batch_size, self.steps_per_epoch = loader_batch_size, steps_per_epoch
        self.trusted = trusted  # the trusted share's draw: memory_dataloader sizes the rows by it

    def __len__(self) -> int:
        return self.steps_per_epoch * self.loader_batch_size

    def __iter__(self):
        while True:
            rows = _get(self.service.next_batch.remote())
            if rows is None:
                return
            yield from rows

    def state_dict(self) -> dict:
        return _get(self.service.state_dict.remote())

    def load_state_dict(self, state: dict) -> None:
        _get(self.service.load_state_dict.remote(state))


class _RemoteMemory:
    """What MemoryFeedback reads and writes of a ScoreMemory, forwarded to the service."""

    def __init__(self, service):
        self.service = service

    @property
    def latest_generation(self) -> int:
        return _get(self.service.latest_generation.remote())

    @property
    def visits(self) -> np.ndarray:
        return _get(self.service.visits.remote())

    def record(self, *args, **kwargs) -> None:
        _get(self.service.record.remote(*args, **kwargs))

    def record_visits(self, *args, **kwargs) -> None:
        _get(self.service.record_visits.remote(*args, **kwargs))


class MemoryView:
    """The driver's side: MemoryFeedback's ``sampler`` in async GRPO. ``step`` is one past the
    trained step being fed back (``begin_step`` sets it from the memory, so it counts on after a
    resume; the collector decides ahead, so the sampler's own count is not the trained step);
    there is no ``last_plan``: a trained batch's groups may come from several decided batches."""

    def __init__(self, service, num_problems: int, config, trusted: Any):
        self.service, self.config, self.trusted = service, config, trusted
        self.num_problems = num_problems
        self.memory = _RemoteMemory(service)
        self.last_plan = None
        self.step = 0

    def begin_step(self) -> None:
        self.step = _get(self.service.next_feedback_step.remote()) + 1
