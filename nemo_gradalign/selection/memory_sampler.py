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
the same. Problems are known by identity (``keys``, selection/problem_keys.py), never by row
number: the exploration order permutes the problems sorted by key, and every decision reads them
in that order, so a reordered dataset picks the same problems (at their new rows). torchdata's
StatefulDataLoader saves ``state_dict()`` (position, exploration order and cursor, keys and the
memory) with the loader's and restores it through ``load_state_dict``; a state saved for other
rows is carried over by key (``last_remap`` says how many problems were kept, new, dropped). Build the loader
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
from nemo_gradalign.selection import problem_keys
from nemo_gradalign.selection.memory import ScoreMemory
from nemo_gradalign.selection.memory_policy import StepPlan, plan_step
from nemo_gradalign.selection.problem_keys import Remap
from nemo_gradalign.selection.trusted_draw import TrustedDraw

STATE_VERSION = 2  # 1: rows by number, no keys or order saved (still read when the rows are unchanged)
__all__ = ["AlignmentMemorySampler", "MemorySamplerConfig", "batch_problem_ids", "memory_dataloader",
           "parse_memory_sampler"]


def parse_memory_sampler(block: Any, root: str = "gradalign.memory") -> MemorySamplerConfig:
    """Validate a mapping into a MemorySamplerConfig; errors name ``root.field`` and the value."""
    return parse_block(MemorySamplerConfig, block, root)


class AlignmentMemorySampler(Sampler[int]):
    def __init__(self, num_problems: int, batch_size: int, config: MemorySamplerConfig | None = None,
                 memory: ScoreMemory | None = None, keys: np.ndarray | None = None, trusted: TrustedDraw | None = None):
        """``keys``: each row's identity (problem_keys.keys_of); None: the row number is the identity.
        ``trusted``: the trusted set's share of each step (trusted_draw.py): ``batch_size`` problems
        come from the memory, ``trusted.per_step`` more from the trusted set, yielded after them as
        ``num_problems + j`` (a dataset of the pool's rows, then the trusted set's)."""
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
        self.keys = problem_keys.row_keys(num_problems) if keys is None else np.asarray(keys, dtype=np.uint64)
        if self.keys.shape != (num_problems,) or np.unique(self.keys).size != num_problems:
            raise ValueError(f"AlignmentMemorySampler: keys must be {num_problems} distinct problem keys")
        self._order = self._fresh_order(self.keys)
        self.epoch = 0          # epochs completed before the current one
        self.position = 0       # steps of the current epoch already decided
        self.explore_cursor = 0  # problems of the exploration order handed out so far
        self.last_plan: StepPlan | None = None
        self.last_remap: Remap | None = None  # how the last loaded state's problems met this dataset's
        self.trusted = trusted
        self.last_trusted: list[int] = []  # the last step's trusted problems (indices into the trusted set)
        self.loader_batch_size = batch_size + (trusted.per_step if trusted else 0)  # one step's rows

    def _fresh_order(self, keys: np.ndarray) -> np.ndarray:
        """The exploration order of these problems: a seeded permutation of them sorted by key."""
        by_key = np.argsort(keys, kind="stable")
        permutation = np.random.Generator(np.random.PCG64(np.random.SeedSequence([self.config.seed]))) \
            .permutation(keys.size)
        return by_key[permutation].astype(np.int32)

    @property
    def step(self) -> int:
        """Global index of the next step this sampler decides."""
        return self.epoch * self.steps_per_epoch + self.position

    def __len__(self) -> int:
        return self.steps_per_epoch * self.loader_batch_size

    def __iter__(self) -> Iterator[int]:
        """The rest of the current epoch. The epoch rolls over when this iterator is exhausted, as
        a restored plain loader does: a state saved after an epoch's last batch resumes to an
        empty rest of that epoch, then a new one."""
        while self.position < self.steps_per_epoch:
            yield from self.next_step().problem_ids.tolist()
            yield from (self.num_problems + j for j in self.last_trusted)
        self.epoch, self.position = self.epoch + 1, 0

    def next_step(self) -> StepPlan:
        """Decide the next step's problems from the memory as it is now, and advance. A trainer
        without a dataloader may call this directly (epochs then never roll over)."""
        rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([self.config.seed, self.step])))
        plan = plan_step(self.memory, self.config.knobs(), self._order, self.explore_cursor, self.batch_size, rng)
        self.explore_cursor += plan.explored
        self.position += 1
        self.last_plan = plan
        self.last_trusted = self.trusted.next() if self.trusted else []
        return plan

    def state_dict(self) -> dict:
        return {"version": STATE_VERSION, "seed": self.config.seed, "num_problems": self.num_problems,
                "batch_size": self.batch_size, "epoch": self.epoch, "position": self.position,
                "explore_cursor": self.explore_cursor, "keys": problem_keys.as_tensor_payload(self.keys),
                "order": torch.from_numpy(self._order.copy()), "memory": self.memory.state_dict(),
                **({"trusted": self.trusted.state_dict()} if self.trusted else {})}

    def load_state_dict(self, state: dict) -> None:
        """Restore, carrying the saved problems over to this dataset's rows by key; a state from
        another seed or batch size, or a damaged one, is refused naming the field (it would
        silently continue a different sequence of steps)."""
        if isinstance(state, dict) and (self.trusted is None) != ("trusted" not in state):
            was, now = ("without", "draws") if self.trusted else ("with", "does not draw")
            raise ValueError(f"AlignmentMemorySampler state: saved {was} a trusted share of each step, which this "
                             f"run {now} (gradalign.validation.train_share)")
        saved = checked_state(state, self.config.seed, self.batch_size)
        drawn = self.trusted.checked(state["trusted"]) if self.trusted else 0
        keys = saved["keys"]
        if keys is None:  # version 1 knew problems by row number: it loads onto the same rows only
            if saved["num_problems"] != self.num_problems:
                raise ValueError(f"AlignmentMemorySampler state: num_problems={saved['num_problems']} was saved by a "
                                 f"version that knew problems by row number only, this run has {self.num_problems}")
            keys = self.keys
        remap = Remap.between(keys, self.keys)
        order = saved["order"] if saved["order"] is not None else self._fresh_order(problem_keys.row_keys(keys.size))
        explored = order[:saved["explore_cursor"]]
        step = saved["epoch"] * (saved["num_problems"] // self.batch_size) + saved["position"]
        as_saved = ScoreMemory(keys.size, self.config.generation_decay)
        as_saved.load_state_dict(saved["memory"])  # every field checked, naming it
        if as_saved.visits.max() > step or np.delete(as_saved.visits, explored).any():
            raise ValueError(f"AlignmentMemorySampler state: the memory counts visits that the sampler never "
                             f"handed out (up to {int(as_saved.visits.max())} visits in {step} steps, or a "
                             f"visited problem outside the {explored.size} explored)")
        self.memory.load_state_dict(saved["memory"], None if remap.identical else remap.source)
        if remap.identical:
            self._order, self.epoch, self.position = order.astype(np.int32), saved["epoch"], saved["position"]
            self.explore_cursor = int(explored.size)
        else:  # the step count (and each step's random stream) goes on over this dataset's epochs
            self._order, self.explore_cursor = self._carried_order(remap, explored)
            self.epoch, self.position = divmod(step, self.steps_per_epoch)
        self.last_remap, self.last_plan = remap, None
        if self.trusted:
            self.trusted.drawn = drawn

    def _carried_order(self, remap: Remap, explored: np.ndarray) -> tuple[np.ndarray, int]:
        """The explored problems that stayed, in their order, then the rest as a fresh run on this
        dataset would explore them; and how many are explored."""
        row_now = np.full(remap.dropped + remap.kept, -1, dtype=np.int64)  # saved row -> row now
        row_now[remap.source[remap.source >= 0]] = np.flatnonzero(remap.source >= 0)
        kept = row_now[explored]
        kept = kept[kept >= 0]
        fresh = self._fresh_order(self.keys)
        return np.concatenate([kept, fresh[~np.isin(fresh, kept)]]).astype(np.int32), int(kept.size)


def checked_state(state, seed: int, batch_size: int) -> dict:
    """A sampler state's fields, checked: present, typed and in range (keys and order as arrays,
    None in a version-1 state)."""
    if not isinstance(state, dict):
        raise ValueError(f"AlignmentMemorySampler state must be a dict, got {type(state).__name__}")
    version = state.get("version")
    if version not in (1, STATE_VERSION):
        raise ValueError(f"AlignmentMemorySampler state: version {version!r} is not supported "
                         f"(this code reads versions 1 and {STATE_VERSION})")
    fields = ("seed", "num_problems", "batch_size", "epoch", "position", "explore_cursor", "memory")
    for key in fields + (("keys", "order") if version == STATE_VERSION else ()):
        if key not in state:
            raise ValueError(f"AlignmentMemorySampler state: missing field {key!r}")
    for key, now in (("seed", seed), ("batch_size", batch_size)):
        if state[key] != now:
            raise ValueError(f"AlignmentMemorySampler state: {key}={state[key]!r} was saved, this run has "
                             f"{key}={now!r}")
    n = state["num_problems"]
    if not isinstance(n, int) or n < batch_size:
        raise ValueError(f"AlignmentMemorySampler state: num_problems={n!r} must be an int >= batch_size")
    for key, top in (("epoch", None), ("position", None), ("explore_cursor", n)):
        value = state[key]
        if not isinstance(value, int) or value < 0 or (top is not None and value > top):
            raise ValueError(f"AlignmentMemorySampler state: {key}={value!r} must be an int in "
                             f"0..{'' if top is None else top}")
    out = {**state, "keys": None, "order": None}
    if version == STATE_VERSION:
        out["keys"] = problem_keys.from_tensor_payload(state["keys"], "AlignmentMemorySampler state: keys")
        order = state["order"].numpy() if isinstance(state["order"], torch.Tensor) else np.asarray(state["order"])
        if order.shape != (n,) or not np.issubdtype(order.dtype, np.integer) or \
                not np.array_equal(np.sort(order), np.arange(n)):
            raise ValueError(f"AlignmentMemorySampler state: order is not a permutation of the {n} problems")
        if out["keys"].size != n:
            raise ValueError(f"AlignmentMemorySampler state: {out['keys'].size} keys for num_problems={n}")
        out["order"] = order.astype(np.int64)
    return out


def memory_dataloader(dataset, sampler: AlignmentMemorySampler, collate_fn=None):
    """The training loader for this sampler: NeMo RL ``setup()``'s StatefulDataLoader with
    ``sampler=`` in place of ``shuffle=``, one step's prompts a batch, no worker processes."""
    from torchdata.stateful_dataloader import StatefulDataLoader

    rows = sampler.num_problems + (sampler.trusted.keys.size if sampler.trusted else 0)
    if len(dataset) != rows:
        raise ValueError(f"memory_dataloader: the dataset has {len(dataset)} problems, the sampler {rows}")
    return StatefulDataLoader(dataset, batch_size=sampler.loader_batch_size, sampler=sampler, drop_last=True,
                              collate_fn=collate_fn, num_workers=0)


def batch_problem_ids(batch: dict) -> list[int]:
    """The dataset indices of a collated batch (NeMo RL's rl_collate_fn keeps them under ``idx``)."""
    idx = batch["idx"]
    return idx.tolist() if isinstance(idx, torch.Tensor) else [int(i) for i in idx]
