"""The trusted mix without steering (NeMo RL's ``gradalign.steer: false``): each step's trusted
share trains, and the pool's share is drawn as plain GRPO draws it.

README's "What to run" names it: in the embedded grid, half a batch of trusted problems with the
pool's half drawn plainly (``grpo-t50``) is level with the steered default at a seventh less cost
a step. The pool walks seeded passes (every problem once a pass; the first pass is the memory
sampler's own exploration order, later ones fresh permutations of the problems sorted by key),
so it is the memory sampler with the memory never consulted: the same state, resume and checks.
"""

from __future__ import annotations

import numpy as np

from nemo_gradalign.selection.memory_policy import StepPlan
from nemo_gradalign.selection.memory_sampler import AlignmentMemorySampler


class TrustedMixSampler(AlignmentMemorySampler):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.trusted is None:
            raise ValueError("TrustedMixSampler: the trusted mix needs a trusted share of each step")

    def _pass(self, index: int) -> np.ndarray:
        if index == 0:
            return self._order
        seed = np.random.SeedSequence([self.config.seed, 0x706F6F6C, index])
        return np.argsort(self.keys, kind="stable")[np.random.Generator(np.random.PCG64(seed)).permutation(self.num_problems)]

    def __iter__(self):
        """As the memory sampler's, with each step's trusted and pool rows interleaved so every
        prefix of a batch holds the share (± one row): async GRPO's collector, when it gap-fills
        a target, generates only a batch's first prompts."""
        while self.position < self.steps_per_epoch:
            pool = [int(i) for i in self.next_step().problem_ids]
            trusted = [self.num_problems + j for j in self.last_trusted]
            yield from interleaved(pool, trusted)
        self.epoch, self.position = self.epoch + 1, 0

    def next_step(self) -> StepPlan:
        """The next ``batch_size`` problems of the passes (``step`` steps of them were handed out)."""
        picks, passes, start = [], {}, self.step * self.batch_size
        for position in range(start, start + self.batch_size):
            index, offset = divmod(position, self.num_problems)
            if index not in passes:
                passes[index] = self._pass(index)
            picks.append(int(passes[index][offset]))
        plan = StepPlan(np.asarray(picks, dtype=np.int64), len(picks), np.zeros(0, dtype=np.int64), 0)
        self.explore_cursor = min(self.num_problems, start + self.batch_size)  # the first pass's, as saved
        self.position += 1
        self.last_plan = plan
        self.last_trusted = self.trusted.next()
        return plan


def interleaved(first: list, second: list) -> list:
    """``first`` and ``second`` merged in order so that every prefix of length k holds
    round(k·len(second)/n) items of ``second`` (n the total)."""
    n, out, taken = len(first) + len(second), [], 0
    for k in range(1, n + 1):
        want = (2 * k * len(second) + n) // (2 * n) if n else 0
        if want > taken:
            out.append(second[taken])
            taken += 1
        else:
            out.append(first[k - 1 - taken])
    return out
