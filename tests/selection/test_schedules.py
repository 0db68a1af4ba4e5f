"""Round, step and memory schedules: what is scored when, what is trained on, and exact resume."""

from __future__ import annotations

import pytest

from nemo_gradalign.config import MemorySamplerConfig
from nemo_gradalign.selection.schedules import MemorySchedule, RoundSchedule, StepSchedule


def test_round_schedule_cycles_disjoint_chunks_and_trains_T_steps_on_the_kept_set():
    s = RoundSchedule(pool_size=100, chunk_size=32, keep=8, steps_per_round=3, batch_size=4, seed=1)
    chunks = [s.candidates(step) for step in range(0, 12, 3)]
    assert s.num_chunks == 3 and all(len(c) == 32 for c in chunks)
    assert not set(chunks[0]) & set(chunks[1]) and not set(chunks[1]) & set(chunks[2])
    assert chunks[3] == chunks[0]  # round 3 -> chunk 3 mod 3 = 0, re-scored under the new policy
    assert s.candidates(1) is None and s.candidates(2) is None
    s.set_selection(chunks[0][:8])
    batches = [s.batch(step) for step in range(3)]
    assert all(len(b) == 4 for b in batches)
    assert set(batches[0] + batches[1]) == set(chunks[0][:8])  # one pass over the kept set


def test_round_schedule_state_round_trip():
    a = RoundSchedule(100, 32, 8, 3, 4, seed=1)
    a.set_selection([5, 6, 7, 8, 9, 10, 11, 12])
    b = RoundSchedule(100, 32, 8, 3, 4, seed=1)
    b.load_state_dict(a.state_dict())
    assert [b.batch(s) for s in range(3)] == [a.batch(s) for s in range(3)]


def test_round_schedule_keeps_its_kept_set_by_problem_on_a_changed_pool():
    from nemo_gradalign.selection.problem_keys import keys_of

    names = [f"p{i}".encode() for i in range(100)]
    a = RoundSchedule(100, 32, 8, 3, 4, seed=1, keys=keys_of(names))
    a.set_selection([5, 6, 7, 8, 9, 10, 11, 12])
    changed = names[6:][::-1] + [b"new"]  # rows 0-5 dropped (5 was kept), the rest reversed
    b = RoundSchedule(len(changed), 32, 8, 3, 4, seed=1, keys=keys_of(changed))
    b.load_state_dict(a.state_dict())
    assert [changed[i] for i in b.selected] == names[6:13]
    rows_only = {"selected": [5, 150]}  # a state from before keys, for a pool it does not fit
    with pytest.raises(ValueError, match=r"selected holds rows outside the pool's 0..99"):
        RoundSchedule(100, 32, 8, 3, 4, seed=1).load_state_dict(rows_only)


def test_step_schedule_draws_q_times_N_and_passes_over_the_pool():
    s = StepSchedule(pool_size=12, draw=4, keep=2, seed=0)
    draws = [s.candidates(step) for step in range(3)]
    assert sorted(sum(draws, [])) == list(range(12))  # one full shuffled pass
    saved = s.state_dict()
    nxt = s.candidates(3)
    t = StepSchedule(12, 4, 2, seed=0)
    t.load_state_dict(saved)
    assert t.candidates(3) == nxt


def test_schedule_sizes_are_checked():
    with pytest.raises(ValueError, match="chunk_size=64 exceeds the pool"):
        RoundSchedule(10, 64, 16, 4, 16, 0)
    with pytest.raises(ValueError, match="draws 64 problems"):
        StepSchedule(10, 64, 16, 0)


def _drive(schedule: MemorySchedule, steps: range, rebuild_every: int) -> list[list[int]]:
    """Run the schedule as the trainer does: G noted each step (rebuilt every few), a batch, its
    observations recorded (a fixed cosine per problem; every fifth problem has no gradient)."""
    batches = []
    for step in steps:
        schedule.note_reference(step - step % rebuild_every)
        ids = schedule.batch(step)
        cosine = [((i * 37) % 19 - 9) / 10 for i in ids]
        schedule.record(ids, step, cosine, [i % 5 == 0 for i in ids])
        batches.append(ids)
    return batches


def test_memory_schedule_counts_G_generations_and_resumes_exactly():
    config = MemorySamplerConfig(seed=3, explore_share=0.5)
    whole = MemorySchedule(40, 6, config)
    straight = _drive(whole, range(20), rebuild_every=3)
    assert whole.generation == 6 and whole.memory.latest_generation == 6  # G built at 0, 3, ..., 18
    assert int(whole.memory.visits.sum()) == 20 * 6 and all(len(set(b)) == 6 for b in straight)

    first = MemorySchedule(40, 6, config)
    head = _drive(first, range(8), rebuild_every=3)
    second = MemorySchedule(40, 6, config)
    second.load_state_dict(first.state_dict())
    assert head + _drive(second, range(8, 20), rebuild_every=3) == straight
    assert second.generation == 6 and (second.memory.mean == whole.memory.mean).all()
    with pytest.raises(RuntimeError, match="asked for step 3, but its sampler is at step 20"):
        second.batch(3)
    with pytest.raises(ValueError, match=r"grpo.num_prompts_per_step=41 exceeds the pool \(40 problems\)"):
        MemorySchedule(40, 41, config)
