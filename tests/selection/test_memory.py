"""ScoreMemory: statistics against a two-pass float64 oracle, exact state round trip, validation
errors, bounded size."""

import io
import math

import numpy as np
import pytest
import torch

from nemo_gradalign.selection.memory import ScoreMemory

EPS = np.finfo(np.float64).eps


def random_visits(n, steps, seed, per_step=6, zero_share=0.3, rebuild_every=3):
    """A run's feedback: (step, generation, ids, cosines, zero flags) per step."""
    rng = np.random.default_rng(seed)
    out = []
    for step in range(steps):
        ids = rng.choice(n, size=per_step, replace=False)
        zero = rng.random(per_step) < zero_share
        cos = np.where(zero, np.nan, rng.uniform(-1, 1, per_step))
        out.append((step, step // rebuild_every, ids, cos, zero))
    return out


def oracle(visits, n, decay):
    """Per problem, from the full history: visits, scored, last step, zero streak, generation of the
    latest cosine, and W, mean, M2 with weights decay**(latest cosine generation - generation)."""
    rows = []
    for i in range(n):
        mine = [(s, g, c, z) for s, g, ids, cos, zeros in visits
                for c, z, pid in zip(cos, zeros, ids) if pid == i]
        scored = [(g, c) for s, g, c, z in mine if not z]
        streak = 0
        for *_, z in reversed(mine):
            if not z:
                break
            streak += 1
        row = {"visits": len(mine), "scored": len(scored), "last_step": mine[-1][0] if mine else -1,
               "zero_streak": streak, "generation": scored[-1][0] if scored else -1,
               "weight": 0.0, "mean": 0.0, "m2": 0.0}
        if scored:
            g_last = scored[-1][0]
            w = [decay ** (g_last - g) for g, _ in scored]
            big_w = math.fsum(w)
            mean = math.fsum(wi * c for wi, (_, c) in zip(w, scored)) / big_w
            row.update(weight=big_w, mean=mean,
                       m2=math.fsum(wi * (c - mean) ** 2 for wi, (_, c) in zip(w, scored)))
        rows.append(row)
    return rows


def fill(memory, visits):
    for step, gen, ids, cos, zero in visits:
        memory.record(ids, step, gen, cos, zero)


@pytest.mark.parametrize("decay", [1.0, 0.5, 0.0])
def test_statistics_match_two_pass_oracle(decay):
    n, visits = 12, random_visits(12, 40, seed=1)
    memory = ScoreMemory(n, generation_decay=decay)
    fill(memory, visits)
    # Welford in float64 over <= 40 visits of |x| <= 1: each update adds O(eps) relative error,
    # so 40 updates stay below 4 * 40 * eps (a generous constant over the textbook bound).
    tol = 4 * 40 * EPS
    for i, row in enumerate(oracle(visits, n, decay)):
        for name in ("visits", "scored", "last_step", "zero_streak", "generation"):
            assert getattr(memory, name)[i] == row[name], (i, name)
        for name in ("weight", "mean", "m2"):
            assert abs(getattr(memory, name)[i] - row[name]) <= tol * max(1.0, abs(row[name])), (i, name)


def test_aged_weight_ages_to_the_newest_generation():
    memory = ScoreMemory(3, generation_decay=0.5)
    memory.record([0, 1], 0, 0, [0.2, 0.4], [False, False])
    memory.record([1, 2], 1, 3, [0.1, 0.0], [False, True])
    weight, m2 = memory.aged_weight_and_m2()
    assert weight[0] == 0.5 ** 3 and weight[1] == 0.5 ** 3 * 1 + 1 and weight[2] == 0.0
    assert m2[0] == 0.0 and m2[2] == 0.0


def test_zero_gradient_visit_keeps_cosines_and_streak_resets():
    memory = ScoreMemory(2)
    memory.record([0], 0, 0, [0.3], [False])
    memory.record([0], 1, 0, [float("nan")], [True])
    memory.record([0], 2, 0, [float("nan")], [True])
    assert memory.zero_streak[0] == 2 and memory.mean[0] == 0.3 and memory.visits[0] == 3
    memory.record([0], 3, 0, [0.1], [False])
    assert memory.zero_streak[0] == 0 and memory.scored[0] == 2


def test_state_round_trip_is_exact_and_snapshots_do_not_alias():
    n, visits = 30, random_visits(30, 25, seed=2)
    memory = ScoreMemory(n)
    fill(memory, visits[:20])
    state = memory.state_dict()
    buf = io.BytesIO()
    torch.save(state, buf)
    saved = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in state.items()}
    fill(memory, visits[20:])  # the live memory moves on; the snapshot must not
    for k, v in saved.items():
        assert torch.equal(v, state[k]) if isinstance(v, torch.Tensor) else v == state[k]
    buf.seek(0)
    restored = ScoreMemory(n)
    restored.load_state_dict(torch.load(buf, weights_only=True))
    fill(restored, visits[20:])
    for k, v in memory.state_dict().items():
        assert torch.equal(v, restored.state_dict()[k]) if isinstance(v, torch.Tensor) else v == restored.state_dict()[k]


def test_load_refuses_mismatched_state_naming_the_field():
    state = ScoreMemory(10).state_dict()
    with pytest.raises(ValueError, match=r"num_problems=10, but this dataset has 11 problems"):
        ScoreMemory(11).load_state_dict(state)
    bad = dict(state, visits=torch.zeros(9, dtype=torch.int32))
    with pytest.raises(ValueError, match=r"field 'visits' is int32 of shape \(9,\), expected int32 of shape \(10,\)"):
        ScoreMemory(10).load_state_dict(bad)
    with pytest.raises(ValueError, match=r"field 'mean' is float32"):
        ScoreMemory(10).load_state_dict(dict(state, mean=torch.zeros(10)))
    with pytest.raises(ValueError, match=r"missing field 'm2'"):
        ScoreMemory(10).load_state_dict({k: v for k, v in state.items() if k != "m2"})
    with pytest.raises(ValueError, match=r"version 2 is not supported"):
        ScoreMemory(10).load_state_dict(dict(state, version=2))
    target = ScoreMemory(10)
    target.record([1], 0, 0, [0.5], [False])
    with pytest.raises(ValueError, match="num_problems"):
        target.load_state_dict(ScoreMemory(9).state_dict())
    assert target.visits[1] == 1 and target.mean[1] == 0.5  # a refused load changes nothing


@pytest.mark.parametrize("args, message", [
    (([10], 0, 0, [0.1], [False]), r"problem id 10 is outside this dataset's 0..9"),
    (([1, 1], 0, 0, [0.1, 0.2], [False, False]), "appears twice"),
    (([1], 0, 0, [float("nan")], [False]), r"cosine nan of problem 1 \(which has a gradient\) is not in \[-1, 1\]"),
    (([1], 0, 0, [1.5], [False]), r"cosine 1.5 of problem 1"),
    (([1], 0, 0, [0.1, 0.2], [False]), r"cosine has shape \(2,\), problem_ids \(1,\)"),
    (([1], 0, 0, [0.1], [0]), "zero_gradient must be booleans"),
    (([1], -1, 0, [0.1], [False]), "step must be a non-negative int"),
])
def test_record_refuses_bad_observations(args, message):
    with pytest.raises(ValueError, match=message):
        ScoreMemory(10).record(*args)


def test_record_refuses_time_going_backwards():
    memory = ScoreMemory(4)
    memory.record([0], 5, 2, [0.1], [False])
    with pytest.raises(ValueError, match=r"generation must be an int >= the latest one recorded \(2\), got 1"):
        memory.record([1], 6, 1, [0.1], [False])
    with pytest.raises(ValueError, match="step 4 is earlier than a recorded visit"):
        memory.record([0], 4, 2, [0.1], [False])


def test_memory_for_a_million_problems_is_bounded():
    n = 1_000_000
    memory = ScoreMemory(n)
    assert memory.nbytes == 44 * n  # 5 int32 + 3 float64 per problem, nothing else grows
    rng = np.random.default_rng(0)
    for step in range(20):
        ids = rng.choice(n, 4096, replace=False)
        memory.record(ids, step, step // 4, rng.uniform(-1, 1, 4096), rng.random(4096) < 0.3)
    assert memory.nbytes == 44 * n
    state = memory.state_dict()
    assert sum(v.numel() * v.element_size() for v in state.values() if isinstance(v, torch.Tensor)) == 44 * n


def test_visits_without_cosines_move_only_counts_and_zero_streaks():
    memory = ScoreMemory(3)
    memory.record([0, 1, 2], 0, 0, [0.5, math.nan, 0.1], [False, True, False])
    before = {name: getattr(memory, name).copy() for name in ("scored", "weight", "mean", "m2", "generation")}
    memory.record_visits([1, 2], 1, [True, True])
    assert memory.visits.tolist() == [1, 2, 2] and memory.zero_streak.tolist() == [0, 2, 1]
    assert memory.last_step.tolist() == [0, 1, 1]
    memory.record_visits(np.array([1]), 2, np.array([False]))
    assert memory.zero_streak.tolist() == [0, 0, 1] and memory.visits.tolist() == [1, 3, 2]
    for name, value in before.items():
        assert np.array_equal(getattr(memory, name), value), name
    with pytest.raises(ValueError, match=r"problem id 3 is outside this dataset's 0..2"):
        memory.record_visits([3], 3, [True])
    with pytest.raises(ValueError, match=r"step 1 is earlier than a recorded visit"):
        memory.record_visits([1], 1, [True])


def test_zero_gradient_visits_can_count_as_an_alignment_of_zero():
    """gradalign.memory.zero_gradient_scores_zero: g_i = 0 means ⟨g_i, G⟩ = 0 was observed."""
    counted, skipped = ScoreMemory(2), ScoreMemory(2)
    for memory, flag in ((counted, True), (skipped, False)):
        memory.record([0, 1], 0, 0, [0.5, 0.25], [False, False], zero_scores=flag)
        memory.record([0], 1, 0, [float("nan")], [True], zero_scores=flag)
    assert counted.mean[0] == 0.25 and counted.weight[0] == 2 and counted.scored[0] == 2
    assert counted.m2[0] == 0.125  # (0.5 − 0.25)² + (0 − 0.25)²
    assert skipped.mean[0] == 0.5 and skipped.scored[0] == 1
    assert counted.zero_streak[0] == skipped.zero_streak[0] == 1
    ScoreMemory(2).load_state_dict(counted.state_dict())  # a state such visits write is a valid one
