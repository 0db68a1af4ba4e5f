"""The training dataloader's sampler for GradAlign-memory: picks each step's prompts before rollout.

It fits the loader NeMo RL's ``setup()`` builds, unchanged but for ``sampler=``:
``StatefulDataLoader(dataset, batch_size=num_prompts_per_step, sampler=<this>, drop_last=True,
collate_fn=rl_collate_fn)``. Each consecutive ``batch_size`` indices it yields are one step's
problems, decided when the loader asks for that step (memory_policy.py), so the feedback
recorded after step t shapes step t+1. ``len()`` is that of a plain epoch (``n // batch_size``
steps × ``batch_size``), so ``len(dataloader)`` and grpo_train's epoch count mean what they
always did; an epoch here is a number of steps, not a pass (problems may repeat across steps,
never within one).

Deterministic: step s draws from ``numpy.random.Generator(PCG64(SeedSequence([seed, s])))``
and the exploration order from ``[seed]``; no global RNG, so every rank and a resumed run pick
the same. torchdata's StatefulDataLoader saves ``state_dict()`` (position, exploration cursor,
and the memory) with the loader's and restores it through ``load_state_dict``. Build the loader
with ``num_workers=0``: with worker processes torchdata asks for indices ahead of training and
snapshots the sampler then, so batches would be decided before the feedback of the steps just
before them and a checkpoint's memory would miss the latest feedback.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import Sampler

from nemo_gradalign.config import MemorySamplerConfig, parse_block
from nemo_gradalign.selection.memory import ScoreMemory
from nemo_gradalign.selection.memory_policy import StepPlan, plan_step

STATE_VERSION = 1
__all__ = ["AlignmentMemorySampler", "MemorySamplerConfig", "batch_problem_ids", "memory_dataloader",
           "parse_memory_sampler"]


def parse_memory_sampler(block: Any, root: str = "gradalign.memory") -> MemorySamplerConfig:
    """Validate a mapping into a MemorySamplerConfig; errors name ``root.field`` and the value."""
    return parse_block(MemorySamplerConfig, block, root)


class AlignmentMemorySampler(Sampler[int]):
    def __init__(self, num_problems: int, batch_size: int, config: MemorySamplerConfig | None = None,
                 memory: ScoreMemory | None = None):
        self.config = config or MemorySamplerConfig()
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"AlignmentMemorySampler: batch_size must be a positive int, got {batch_size!r}")
        if not isinstance(num_problems, int) or num_problems < batch_size:
            raise ValueError(f"AlignmentMemorySampler: the dataset has {num_problems!r} problems, fewer than "
                             f"one step's batch_size={batch_size}")
        if memory is not None and memory.num_problems != num_problems:
            raise ValueError(f"AlignmentMemorySampler: memory holds {memory.num_problems} problems, "
                             f"the dataset {num_problems}")
        if memory is not None and memory.generation_decay != self.config.generation_decay:
            raise ValueError(f"AlignmentMemorySampler: memory.generation_decay={memory.generation_decay} differs "
                             f"from config.generation_decay={self.config.generation_decay}")
        self.num_problems, self.batch_size = num_problems, batch_size
        self.steps_per_epoch = num_problems // batch_size
        self.memory = memory or ScoreMemory(num_problems, self.config.generation_decay)
        self._order = np.random.Generator(np.random.PCG64(np.random.SeedSequence([self.config.seed]))) \
            .permutation(num_problems).astype(np.int32)
        self.epoch = 0          # epochs completed before the current one
        self.position = 0       # steps of the current epoch already decided
        self.explore_cursor = 0  # problems of the exploration order handed out so far
        self.last_plan: StepPlan | None = None

    @property
    def step(self) -> int:
        """Global index of the next step this sampler decides."""
        return self.epoch * self.steps_per_epoch + self.position

    def __len__(self) -> int:
        return self.steps_per_epoch * self.batch_size

    def __iter__(self) -> Iterator[int]:
        """The rest of the current epoch. The epoch rolls over when this iterator is exhausted, as
        a restored plain loader does: a state saved after an epoch's last batch resumes to an
        empty rest of that epoch, then a new one."""
        while self.position < self.steps_per_epoch:
            yield from self.next_step().problem_ids.tolist()
        self.epoch, self.position = self.epoch + 1, 0

    def next_step(self) -> StepPlan:
        """Decide the next step's problems from the memory as it is now, and advance. A trainer
        without a dataloader may call this directly (epochs then never roll over)."""
        rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([self.config.seed, self.step])))
        plan = plan_step(self.memory, self.config.knobs(), self._order, self.explore_cursor, self.batch_size, rng)
        self.explore_cursor += plan.explored
        self.position += 1
        self.last_plan = plan
        return plan

    def state_dict(self) -> dict:
        return {"version": STATE_VERSION, "seed": self.config.seed, "num_problems": self.num_problems,
                "batch_size": self.batch_size, "epoch": self.epoch, "position": self.position,
                "explore_cursor": self.explore_cursor, "memory": self.memory.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        """Restore; a saved state from another seed, dataset size or batch size is refused (it
        would silently continue a different sequence of steps)."""
        if not isinstance(state, dict):
            raise ValueError(f"AlignmentMemorySampler state must be a dict, got {type(state).__name__}")
        for key in ("version", "seed", "num_problems", "batch_size", "epoch", "position", "explore_cursor", "memory"):
            if key not in state:
                raise ValueError(f"AlignmentMemorySampler state: missing field {key!r}")
        if state["version"] != STATE_VERSION:
            raise ValueError(f"AlignmentMemorySampler state: version {state['version']!r} is not supported "
                             f"(this code reads version {STATE_VERSION})")
        for key, now in (("seed", self.config.seed), ("num_problems", self.num_problems),
                         ("batch_size", self.batch_size)):
            if state[key] != now:
                raise ValueError(f"AlignmentMemorySampler state: {key}={state[key]!r} was saved, this run has "
                                 f"{key}={now!r}")
        if not isinstance(state["position"], int) or state["position"] < 0:
            raise ValueError(f"AlignmentMemorySampler state: position={state['position']!r} must be a "
                             f"non-negative int")
        if not 0 <= state["explore_cursor"] <= self.num_problems:
            raise ValueError(f"AlignmentMemorySampler state: explore_cursor={state['explore_cursor']!r} is outside "
                             f"0..{self.num_problems}")
        if not isinstance(state["epoch"], int) or state["epoch"] < 0:
            raise ValueError(f"AlignmentMemorySampler state: epoch={state['epoch']!r} must be a non-negative int")
        self.memory.load_state_dict(state["memory"])
        self.epoch, self.position = state["epoch"], state["position"]
        self.explore_cursor = state["explore_cursor"]
        self.last_plan = None


def memory_dataloader(dataset, sampler: AlignmentMemorySampler, collate_fn=None):
    """The training loader for this sampler: NeMo RL ``setup()``'s StatefulDataLoader with
    ``sampler=`` in place of ``shuffle=``, one step's prompts a batch, no worker processes."""
    from torchdata.stateful_dataloader import StatefulDataLoader

    if len(dataset) != sampler.num_problems:
        raise ValueError(f"memory_dataloader: the dataset has {len(dataset)} problems, the sampler "
                         f"{sampler.num_problems}")
    return StatefulDataLoader(dataset, batch_size=sampler.batch_size, sampler=sampler, drop_last=True,
                              collate_fn=collate_fn, num_workers=0)


def batch_problem_ids(batch: dict) -> list[int]:
    """The dataset indices of a collated batch (NeMo RL's rl_collate_fn keeps them under ``idx``)."""
    idx = batch["idx"]
    return idx.tolist() if isinstance(idx, torch.Tensor) else [int(i) for i in idx]
