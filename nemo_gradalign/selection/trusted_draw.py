"""The trusted set's share of each step's batch, when the trusted set trains and steers.

With ``gradalign.validation.train_share`` > 0 the memory schedule fills that share of every
step's batch from the trusted set; those groups are trained on like the pool's and their
gradient is G (trainer/memory_feedback.py), so nothing is generated only to build G. The draw
walks seeded passes over the trusted problems (each pass a fresh permutation of them sorted by
content key, so a reordered trusted file draws the same problems), every problem once per pass.
Its state is one count, checked on load.
"""

from __future__ import annotations

import numpy as np


class TrustedDraw:
    def __init__(self, keys: np.ndarray, per_step: int, seed: int):
        if not 0 < per_step <= keys.size:
            raise ValueError(f"the trusted share of a step is {per_step} problems, but the trusted set has "
                             f"{keys.size}: it must be between 1 and the set's size")
        self.keys, self.per_step, self.seed = keys, per_step, seed
        self._by_key = np.argsort(keys, kind="stable")
        self.drawn = 0  # trusted picks handed out so far, over all passes

    @classmethod
    def for_share(cls, keys: np.ndarray, share: float, batch_size: int, seed: int) -> "TrustedDraw":
        """round(share · batch_size) trusted problems a step, leaving at least one for the pool;
        ValueError naming ``gradalign.validation.train_share`` otherwise."""
        per_step = round(share * batch_size)
        if not 1 <= per_step < batch_size:
            raise ValueError(f"gradalign.validation.train_share={share} of grpo.num_prompts_per_step={batch_size} "
                             f"is {per_step} trusted problems a step: it must leave between 1 and {batch_size - 1}")
        return cls(keys, per_step, seed)

    def _pass_order(self, epoch: int) -> np.ndarray:
        rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([self.seed, 0x7275, epoch])))
        return self._by_key[rng.permutation(self.keys.size)]

    def next(self) -> list[int]:
        """The next ``per_step`` trusted problems (indices into the trusted set)."""
        picks, orders = [], {}  # a step spans at most two passes: each permutation computed once
        for position in range(self.drawn, self.drawn + self.per_step):
            epoch, offset = divmod(position, self.keys.size)
            if epoch not in orders:
                orders[epoch] = self._pass_order(epoch)
            picks.append(int(orders[epoch][offset]))
        self.drawn += self.per_step
        return picks

    def state_dict(self) -> dict:
        return {"drawn": self.drawn}

    def checked(self, state) -> int:
        """The count a saved state holds, refused (naming it) unless this draw could have reached it."""
        drawn = state.get("drawn") if isinstance(state, dict) else None
        if not isinstance(drawn, int) or isinstance(drawn, bool) or drawn < 0 or drawn % self.per_step:
            raise ValueError(f"trusted draw state: drawn={drawn!r} must be a multiple of the {self.per_step} "
                             "trusted problems a step draws")
        return drawn

    def load_state_dict(self, state) -> None:
        self.drawn = self.checked(state)
