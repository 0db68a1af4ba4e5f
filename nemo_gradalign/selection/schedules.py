"""When to select and what to train on. Every schedule is Stateful (state_dict/load_state_dict),
so a resumed run continues exactly where it stopped.

- RoundSchedule (the paper's): shuffle the pool once (seeded), cut it into chunks of M; each round
  scores chunk ``round mod C`` with fresh rollouts, keeps the top M/q, and trains T steps on them,
  B problems a step, reshuffling the kept set each pass (the official code's epochs over it).
- StepSchedule (online): every step draws q·N candidates from a shuffled pass over the pool,
  scores them once and trains on the top N **reusing their rollouts**.
- MemorySchedule (GradAlign-memory): every step picks N problems from the score memory *before*
  rollout (memory_sampler.py), so it generates what plain GRPO generates; the training pass
  itself scores them (megatron/in_pass.py) and ``record`` remembers the cosines. Without G
  (the GRESO-like control) ``record_visits`` keeps only the zero-gradient streaks it skips by.
"""

from __future__ import annotations

import torch

from nemo_gradalign.config import MemorySamplerConfig
from nemo_gradalign.selection import problem_keys
from nemo_gradalign.selection.memory_policy import StepPlan
from nemo_gradalign.selection.memory_sampler import AlignmentMemorySampler
from nemo_gradalign.selection.trusted_draw import TrustedDraw


def _permutation(n: int, seed: int) -> list[int]:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()


class RoundSchedule:
    def __init__(self, pool_size: int, chunk_size: int, keep: int, steps_per_round: int,
                 batch_size: int, seed: int, keys=None):
        """``keys``: the pool's problem identities; the kept set is saved by them, so a resume on a
        changed pool trains the kept problems that stayed, wherever they moved (None: row numbers)."""
        if chunk_size > pool_size:
            raise ValueError(f"gradalign.chunk_size={chunk_size} exceeds the pool ({pool_size} problems)")
        self.order = _permutation(pool_size, seed)
        self.chunk_size, self.keep, self.steps_per_round = chunk_size, keep, steps_per_round
        self.batch_size, self.seed = batch_size, seed
        self.num_chunks = pool_size // chunk_size  # the remainder is dropped, as officially
        self.keys = problem_keys.row_keys(pool_size) if keys is None else keys
        self.selected: list[int] = []

    reuses_selection_rollouts = False
    trusted_picks: tuple[int, ...] = ()  # no trusted share in the paper's schedule

    def round_of(self, step: int) -> int:
        return step // self.steps_per_round

    def candidates(self, step: int) -> list[int] | None:
        """The chunk to score when ``step`` opens a round, else None."""
        if step % self.steps_per_round:
            return None
        c = self.round_of(step) % self.num_chunks
        return self.order[c * self.chunk_size:(c + 1) * self.chunk_size]

    def set_selection(self, problem_ids: list[int]) -> None:
        self.selected = list(problem_ids)

    def batch(self, step: int) -> list[int]:
        """B problems of the kept set for this step: epochs over it, each freshly shuffled."""
        if not self.selected:
            return []
        within = step % self.steps_per_round
        start = within * self.batch_size
        picks = []
        while len(picks) < min(self.batch_size, len(self.selected)) :
            epoch = (start + len(picks)) // len(self.selected)
            perm = _permutation(len(self.selected), self.seed * 7919 + self.round_of(step) * 101 + epoch)
            picks.append(self.selected[perm[(start + len(picks)) % len(self.selected)]])
        return picks

    def state_dict(self) -> dict:
        return {"selected": list(self.selected),
                "selected_keys": problem_keys.as_tensor_payload(self.keys[self.selected])}

    def load_state_dict(self, state: dict) -> None:
        if "selected_keys" not in state:  # saved before keys: rows, which must exist
            rows = [int(i) for i in state["selected"]]
            if any(not 0 <= i < self.keys.size for i in rows):
                raise ValueError(f"RoundSchedule state: selected holds rows outside the pool's 0..{self.keys.size - 1}")
            self.selected = rows
            return
        saved = problem_keys.from_tensor_payload(state["selected_keys"], "RoundSchedule state: selected_keys")
        row_of = {int(k): row for row, k in enumerate(self.keys)}
        self.selected = [row_of[int(k)] for k in saved if int(k) in row_of]


class StepSchedule:
    def __init__(self, pool_size: int, draw: int, keep: int, seed: int, trusted: TrustedDraw | None = None):
        """``trusted``: plain GRPO's trusted share (grpo.trusted_share), drawn with each step's candidates."""
        if draw > pool_size:
            raise ValueError(f"a step draws {draw} problems (q·N) but the pool has {pool_size}")
        self.pool_size, self.draw, self.keep, self.seed = pool_size, draw, keep, seed
        self.cursor = 0  # position in the endless sequence of shuffled passes over the pool
        self.selected: list[int] = []
        self.trusted, self.trusted_picks = trusted, []

    reuses_selection_rollouts = True

    def _at(self, position: int) -> int:
        epoch, offset = divmod(position, self.pool_size)
        return _permutation(self.pool_size, self.seed * 7919 + epoch)[offset]

    def candidates(self, step: int) -> list[int]:
        ids = [self._at(self.cursor + i) for i in range(self.draw)]
        self.cursor += self.draw
        self.trusted_picks = self.trusted.next() if self.trusted else []
        return ids

    def set_selection(self, problem_ids: list[int]) -> None:
        self.selected = list(problem_ids)

    def batch(self, step: int) -> list[int]:
        return list(self.selected)

    def state_dict(self) -> dict:
        state = {"cursor": self.cursor, "selected": list(self.selected)}
        return {**state, "trusted": self.trusted.state_dict(), "trusted_picks": list(self.trusted_picks)} \
            if self.trusted else state

    def load_state_dict(self, state: dict) -> None:
        if self.trusted:
            self.trusted.load_state_dict(state["trusted"])
            self.trusted_picks = list(state["trusted_picks"])
        self.cursor, self.selected = int(state["cursor"]), list(state["selected"])


class MemorySchedule:
    reuses_selection_rollouts = False

    def __init__(self, pool_size: int, batch_size: int, config: MemorySamplerConfig, keys=None,
                 trusted: TrustedDraw | None = None):
        """``keys``: the pool's problem identities (problem_keys.keys_of), which the memory follows.
        ``trusted``: the trusted set's share of each batch (trusted_draw.py); the pool fills the rest."""
        if batch_size > pool_size:
            raise ValueError(f"grpo.num_prompts_per_step={batch_size} exceeds the pool ({pool_size} problems)")
        from_pool = batch_size - (trusted.per_step if trusted else 0)
        self.sampler = AlignmentMemorySampler(pool_size, from_pool, config, keys=keys, trusted=trusted)
        self.memory = self.sampler.memory
        self.generation = -1  # G rebuilds seen, minus one: the memory's generation of G
        self.reference_step: int | None = None  # the step the current G was built at
        self.plan: StepPlan | None = None

    def candidates(self, step: int) -> None:
        return None  # nothing is scored apart from training

    def batch(self, step: int) -> list[int]:
        """The step's problems, decided now from what the memory holds after step - 1."""
        if self.sampler.step != step:
            raise RuntimeError(f"memory schedule asked for step {step}, but its sampler is at step {self.sampler.step}")
        self.plan = self.sampler.next_step()
        return self.plan.problem_ids.tolist()

    @property
    def trusted_picks(self) -> list[int]:
        """This step's trusted problems (indices into the trusted set), drawn with the batch."""
        return self.sampler.last_trusted

    def note_reference(self, built_at_step: int) -> int:
        """The generation of G built at ``built_at_step``: a new one each time G is rebuilt."""
        if built_at_step != self.reference_step:
            self.generation, self.reference_step = self.generation + 1, built_at_step
        return self.generation

    def record(self, problem_ids: list[int], step: int, cosine, zero_gradient) -> None:
        self.memory.record(problem_ids, step, self.generation, cosine, zero_gradient,
                           zero_scores=self.sampler.config.zero_gradient_scores_zero)

    def record_visits(self, problem_ids: list[int], step: int, zero_gradient) -> None:
        """Visits without cosines (no G: the GRESO-like control, ``grpo.sampler=greso``)."""
        self.memory.record_visits(problem_ids, step, zero_gradient)

    def state_dict(self) -> dict:
        return {"sampler": self.sampler.state_dict(), "generation": self.generation,
                "reference_step": self.reference_step}

    def load_state_dict(self, state: dict) -> None:
        """Checked like the sampler's state: G's generation and step must be ones this run could reach."""
        if not isinstance(state, dict) or not {"sampler", "generation", "reference_step"} <= state.keys():
            raise ValueError("MemorySchedule state: expected fields sampler, generation, reference_step")
        generation, reference = state["generation"], state["reference_step"]
        if not isinstance(generation, int) or generation < -1:
            raise ValueError(f"MemorySchedule state: generation={generation!r} must be an int >= -1")
        if reference is not None and (not isinstance(reference, int) or reference < 0):
            raise ValueError(f"MemorySchedule state: reference_step={reference!r} must be null or an int >= 0")
        memory = state["sampler"].get("memory") if isinstance(state["sampler"], dict) else None
        memory_generation = memory.get("latest_generation") if isinstance(memory, dict) else None
        if isinstance(memory_generation, int) and memory_generation > generation:
            raise ValueError(f"MemorySchedule state: generation={generation} is below the memory's latest "
                             f"generation {memory_generation}")
        self.sampler.load_state_dict(state["sampler"])
        self.generation, self.reference_step = generation, reference
        self.plan = None
