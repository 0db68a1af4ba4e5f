"""The trusted share of a batch (gradalign.validation.train_share): every trusted problem once per
pass, the same problems whatever order the trusted file lists them in, and a state that is checked."""

from __future__ import annotations

import numpy as np
import pytest

from nemo_gradalign.config import MemorySamplerConfig
from nemo_gradalign.selection import problem_keys
from nemo_gradalign.selection.memory_sampler import AlignmentMemorySampler, memory_dataloader
from nemo_gradalign.selection.schedules import MemorySchedule
from nemo_gradalign.selection.trusted_draw import TrustedDraw

KEYS = problem_keys.keys_of(f"trusted problem {i}".encode() for i in range(10))


def test_each_trusted_problem_once_per_pass_then_a_fresh_order():
    draw = TrustedDraw(KEYS, per_step=5, seed=3)
    first, second = draw.next() + draw.next(), draw.next() + draw.next()
    assert sorted(first) == sorted(second) == list(range(10))
    assert first != second  # each pass its own permutation
    again = TrustedDraw(KEYS, per_step=5, seed=3)
    assert again.next() + again.next() == first  # seeded


def test_a_reordered_trusted_set_draws_the_same_problems_at_their_new_rows():
    moved = np.random.default_rng(0).permutation(KEYS.size)  # row r of the new file holds old row moved[r]
    old, new = TrustedDraw(KEYS, 3, seed=1), TrustedDraw(KEYS[moved], 3, seed=1)
    for _ in range(7):
        assert [int(moved[r]) for r in new.next()] == old.next()


def test_state_round_trips_and_is_checked():
    draw = TrustedDraw(KEYS, 4, seed=0)
    draw.next(), draw.next()
    resumed = TrustedDraw(KEYS, 4, seed=0)
    resumed.load_state_dict(draw.state_dict())
    assert resumed.next() == draw.next()
    for bad in ({"drawn": 6}, {"drawn": -4}, {"drawn": "8"}, {"drawn": True}, {}, None):
        with pytest.raises(ValueError, match="trusted draw state: drawn="):
            resumed.load_state_dict(bad)
    with pytest.raises(ValueError, match="the trusted share of a step is 11 problems, but the trusted set has 10"):
        TrustedDraw(KEYS, 11, seed=0)


def test_memory_schedule_fills_the_rest_from_the_pool_and_saves_the_draw_with_it():
    def schedule(trusted):
        return MemorySchedule(40, 8, MemorySamplerConfig(seed=0), trusted=trusted)

    a = schedule(TrustedDraw(KEYS, 3, seed=0))
    ids = a.batch(0)
    assert len(ids) == 5 and len(a.trusted_picks) == 3  # 8 a step: 3 trusted, 5 from the pool
    a.record_visits(ids, 0, np.zeros(5, dtype=bool))
    b = schedule(TrustedDraw(KEYS, 3, seed=0))
    b.load_state_dict(a.state_dict())
    assert b.batch(1) == a.batch(1) and b.trusted_picks == a.trusted_picks
    with pytest.raises(ValueError, match="saved with a trusted share of each step, which this run does not draw"):
        schedule(None).load_state_dict(a.state_dict())
    untouched = schedule(TrustedDraw(KEYS, 3, seed=0))
    state = a.state_dict()
    state = {**state, "sampler": {**state["sampler"], "trusted": {"drawn": 4}}}
    with pytest.raises(ValueError, match="drawn=4 must be a multiple of the 3"):
        untouched.load_state_dict(state)
    assert untouched.sampler.trusted.drawn == 0 and untouched.sampler.step == 0  # a refused load changes nothing


def test_a_loader_over_pool_then_trusted_rows_yields_whole_steps_and_resumes_exactly():
    """NeMo RL's shape: one dataset of the pool's rows then the trusted set's; each loader batch is
    a step: the memory's picks, then the trusted ones at ``pool + j``."""
    pool, rows = 20, list(range(20 + KEYS.size))
    sampler = AlignmentMemorySampler(pool, 4, MemorySamplerConfig(seed=1), trusted=TrustedDraw(KEYS, 2, seed=1))
    loader = memory_dataloader(rows, sampler, collate_fn=list)
    assert len(loader) == pool // 4 and len(sampler) == (pool // 4) * 6
    batches = iter(loader)
    first = next(batches)
    assert len(first) == 6 and all(i < pool for i in first[:4]) and all(i >= pool for i in first[4:])
    assert [i - pool for i in first[4:]] == sampler.last_trusted
    state = loader.state_dict()
    again = AlignmentMemorySampler(pool, 4, MemorySamplerConfig(seed=1), trusted=TrustedDraw(KEYS, 2, seed=1))
    resumed = memory_dataloader(rows, again, collate_fn=list)
    resumed.load_state_dict(state)
    assert list(resumed) == list(batches)  # the rest of the epoch, trusted draws included
    with pytest.raises(ValueError, match="the dataset has 20 problems, the sampler 30"):
        memory_dataloader(rows[:pool], sampler)
