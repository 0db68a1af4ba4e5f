"""Every scoring method against values worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from nemo_gradalign.engine import ProblemStats
from nemo_gradalign.selection.scores import reference_source, score_problems, top_indices

# four problems: g·Ĝ and ‖g‖² chosen so the cosines are easy: 0.6, -0.8, 0 (g=0), 0.1
STATS = ProblemStats(
    dot=torch.tensor([3.0, -4.0, 0.0, 0.5], dtype=torch.float64),
    sqnorm=torch.tensor([25.0, 25.0, 0.0, 25.0], dtype=torch.float64),
    informative=torch.tensor([True, True, False, True]),
)
RATES = torch.tensor([0.5, 0.25, 1.0, 0.875])


def _score(method, **kw):
    return score_problems(method, RATES, STATS.informative, STATS, **kw)


def test_gradalign_is_the_cosine_and_excludes_uninformative():
    scores = _score("gradalign")
    assert scores[[0, 1, 3]].tolist() == pytest.approx([0.6, -0.8, 0.1])
    assert scores[2] == -math.inf
    assert top_indices(scores, 4) == [0, 3, 1]  # the uninformative one is never picked


def test_simacc_is_the_cosine_times_four_a_one_minus_a():
    scores = _score("simacc")  # by hand: 0.6·4·0.5·0.5, −0.8·4·0.25·0.75, excluded, 0.1·4·0.875·0.125
    assert scores[[0, 1, 3]].tolist() == pytest.approx([0.6, -0.6, 0.04375], rel=1e-15)
    assert scores[2] == -math.inf and reference_source("simacc") == "validation"
    assert top_indices(scores, 4) == [0, 3, 1]


def test_zero_mode_reproduces_the_official_ranking():
    scores = _score("gradalign", uninformative="zero")
    assert scores.tolist() == pytest.approx([0.6, -0.8, 0.0, 0.1])
    assert top_indices(scores, 3) == [0, 3, 2]  # g=0 outranks the negatively aligned problem


def test_dot_is_unnormalised_projection_on_unit_G():
    assert _score("dot", uninformative="zero").tolist() == [3.0, -4.0, 0.0, 0.5]


def test_learnalign_scores_like_gradalign_against_the_pool_gradient():
    assert reference_source("learnalign") == "pool" and reference_source("gradalign") == "validation"
    assert reference_source("accgreedy") is None
    assert torch.equal(_score("learnalign"), _score("gradalign"))


def test_accgreedy_prefers_pass_rates_near_half_and_keeps_pool_order_on_ties():
    scores = _score("accgreedy")
    assert scores.tolist() == pytest.approx([0.0, -0.25, -0.5, -0.375])
    assert top_indices(scores, 4) == [0, 1, 3, 2]
    tie = score_problems("accgreedy", torch.tensor([0.25, 0.75, 0.25]), torch.ones(3, dtype=torch.bool))
    assert top_indices(tie, 3) == [0, 1, 2]


def test_accfilter_is_uniform_among_mid_pass_rates_and_seeded():
    a = _score("accfilter", generator=torch.Generator().manual_seed(0))
    b = _score("accfilter", generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b)
    # eligible: 0.5 and 0.25 are in [0.2, 0.8]; 1.0 and 0.875 are not
    assert torch.isfinite(a[[0, 1]]).all() and (a[[2, 3]] == -math.inf).all()
    assert sorted(top_indices(a, 4)) == [0, 1]


def test_random_is_seeded_uniform():
    a = _score("random", generator=torch.Generator().manual_seed(1))
    b = _score("random", generator=torch.Generator().manual_seed(1))
    c = _score("random", generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert ((a >= 0) & (a < 1)).all()


def test_no_method_yields_nan():
    for method in ("gradalign", "dot", "learnalign", "accgreedy", "accfilter", "random", "dapo"):
        for mode in ("exclude", "zero"):
            scores = _score(method, uninformative=mode, generator=torch.Generator().manual_seed(0))
            assert not torch.isnan(scores).any(), method


def test_bad_method_and_missing_stats_are_clear_errors():
    with pytest.raises(ValueError, match="unknown scoring method 'cosine'"):
        _score("cosine")
    with pytest.raises(ValueError, match="needs gradient statistics"):
        score_problems("gradalign", RATES, STATS.informative, None)


def test_dapo_keeps_uniform_draws_among_mixed_pass_rates_only():
    rates = torch.tensor([0.0, 0.125, 1.0, 0.5, 0.875, 1.0])
    informative = torch.ones(6, dtype=torch.bool)  # dapo reads pass rates, not the gradient flag
    scores = score_problems("dapo", rates, informative, generator=torch.Generator().manual_seed(3))
    # by hand: the same seeded uniforms, with pass rate 0 and 1 excluded
    uniforms = torch.rand(6, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    assert scores.tolist() == [-math.inf, uniforms[1].item(), -math.inf, uniforms[3].item(),
                               uniforms[4].item(), -math.inf]
    picked = top_indices(scores, 2)
    assert set(picked) <= {1, 3, 4} and len(picked) == 2
    assert sorted(top_indices(scores, 16)) == [1, 3, 4]  # never an all-0 or all-1 group


def test_significance_keeps_only_scores_above_the_noise_scale_of_the_negative_ones():
    from nemo_gradalign.selection.scores import significant_only

    scores = torch.tensor([0.5, -0.3, 0.35, -0.4, 0.2, float("-inf"), 0.0], dtype=torch.float64)
    sigma = math.sqrt((0.3 ** 2 + 0.4 ** 2) / 2)  # RMS of the negative scores, by hand
    kept, threshold = significant_only(scores, 1.0)
    assert threshold == pytest.approx(sigma, rel=1e-15)
    assert top_indices(kept, 10) == [0]  # 0.35 < σ̂ ≈ 0.354: noise; the quota is not filled
    kept, threshold = significant_only(scores, 0.5)
    assert top_indices(kept, 10) == [0, 2, 4]
    all_positive = torch.tensor([0.1, 0.2], dtype=torch.float64)
    assert significant_only(all_positive, 2.0)[1] == 0.0  # nothing negative: keep what is > 0
