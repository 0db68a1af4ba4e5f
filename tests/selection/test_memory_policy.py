"""The memory policy's formulas, recomputed by hand in float64 from the raw cosines."""

import math

import numpy as np

from nemo_gradalign.selection.memory import ScoreMemory
from nemo_gradalign.selection.memory_policy import alignment_bounds, preference, skip_probability
from nemo_gradalign.selection.memory_sampler import MemorySamplerConfig

EPS = np.finfo(np.float64).eps


def test_upper_bound_matches_hand_computation():
    memory = ScoreMemory(3, generation_decay=0.5)
    memory.record([0, 1, 2], 0, 0, [0.1, 0.5, 0.2], [False] * 3)
    memory.record([0, 2], 1, 0, [0.3, 0.4], [False] * 2)
    memory.record([0, 2], 2, 1, [-0.2, 0.0], [False] * 2)
    # by hand, aged to generation 1: weights (0.5, 0.5, 1) for 0 and 2, (0.5) for 1
    rows = {0: ([0.1, 0.3, -0.2], [0.5, 0.5, 1.0]), 1: ([0.5], [0.5]), 2: ([0.2, 0.4, 0.0], [0.5, 0.5, 1.0])}
    stats = {}
    for i, (x, w) in rows.items():
        big_w = math.fsum(w)
        mean = math.fsum(a * b for a, b in zip(w, x)) / big_w
        stats[i] = (big_w, mean, math.fsum(b * (a - mean) ** 2 for a, b in zip(x, w)))
    sigma2 = math.fsum(m2 for _, _, m2 in stats.values()) / math.fsum(max(w - 1, 0) for w, _, _ in stats.values())
    k0 = 2.0
    mean, se = alignment_bounds(memory, k0, np.arange(memory.num_problems))
    for i, (big_w, m, m2) in stats.items():
        s2 = (m2 + k0 * sigma2) / (max(big_w - 1, 0) + k0)
        assert abs(mean[i] - m) <= 16 * EPS
        assert abs(se[i] - math.sqrt(s2 / big_w)) <= 64 * EPS * math.sqrt(s2 / big_w)


def test_confident_skip_needs_a_spread_estimate():
    memory = ScoreMemory(2)
    memory.record([0], 0, 0, [-0.9], [False])
    memory.record([0], 1, 0, [-0.9], [False])  # two identical visits: M2 = 0, pooled σ² = 0
    knobs = MemorySamplerConfig().knobs()
    mean, se = alignment_bounds(memory, knobs.prior_weight, np.arange(memory.num_problems))
    assert skip_probability(memory, knobs, mean, se)[0] == knobs.skip_cap  # UCB = −0.9 + 0 ≤ 0
    single = ScoreMemory(2)
    single.record([0], 0, 0, [-0.9], [False])  # one problem, one visit: σ² unknown
    mean, se = alignment_bounds(single, knobs.prior_weight, np.arange(single.num_problems))
    assert math.isnan(se[0]) and skip_probability(single, knobs, mean, se)[0] == 0.0


def test_forgotten_cosines_do_not_judge():
    memory = ScoreMemory(3, generation_decay=0.0)
    for step in range(3):
        memory.record([0, 1], step, 0, [-0.8, 0.3], [False, False])
    memory.record([2], 3, 1, [0.1], [False])  # G rebuilt: generation 1
    mean, se = alignment_bounds(memory, 2.0, np.arange(memory.num_problems))
    assert math.isnan(mean[0]) and math.isnan(mean[1]) and mean[2] == 0.1
    knobs = MemorySamplerConfig(generation_decay=0.0).knobs()
    assert skip_probability(memory, knobs, mean, se)[0] == 0.0


def test_preference_is_standardised_and_scale_free():
    rng = np.random.default_rng(0)
    cos = rng.uniform(-0.5, 0.5, 20)
    zs = []
    for scale in (1.0, 0.01):
        memory = ScoreMemory(21)
        memory.record(np.arange(20), 0, 0, cos * scale, np.zeros(20, bool))
        knobs = MemorySamplerConfig().knobs()
        mean, se = alignment_bounds(memory, knobs.prior_weight, np.arange(memory.num_problems))
        zs.append(preference(memory, knobs, mean, se, np.arange(21)))
    expected = np.append(cos, cos.mean())  # problem 20, never scored, sits at the average
    expected = (expected - expected.mean()) / expected.std()
    # float64 over 21 terms, |z| < 3: rounding stays below 21·3·eps ≈ 1.4e-14; 1e-12 leaves room
    assert np.allclose(zs[0], expected, rtol=0, atol=1e-12) and np.allclose(zs[1], expected, rtol=0, atol=1e-12)
