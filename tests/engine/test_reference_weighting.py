"""``gradalign.reference_weighting: trainer``: G weighs each validation problem as the trainer's
loss over the validation set as one batch does (by tokens under token_mean, by rollouts under
sequence_mean); float64 scores against a brute-force oracle, one problem per pass and packed."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from helpers import assert_close_rel, oracle_scores, random_problems
from nemo_gradalign import grpo
from nemo_gradalign.engine import EngineGroups, GradientEngine
from nemo_gradalign.megatron import parallel
from nemo_gradalign.megatron.model import ModelSpec, build_gpt
from nemo_gradalign.megatron.problem_runner import LossSettings, ProblemRunner

SPEC64 = ModelSpec(num_layers=2, hidden_size=32, num_attention_heads=4, vocab_size=32, dtype="float64")
VAL, POOL = random_problems(41, 6), random_problems(42, 5)  # unequal rollout counts and lengths


def _rank(rank, out):
    parallel.init_distributed(parallel.Layout())
    model = build_gpt(SPEC64)
    engine = GradientEngine(model.named_parameters(), EngineGroups.from_megatron(), "float64")
    results = {}
    for aggregation in ("token_mean", "sequence_mean"):
        loss = LossSettings("mean", False, aggregation)
        for weighting in ("sum", "trainer"):
            reference_loss = dataclasses.replace(loss, aggregation=grpo.reference_aggregation(aggregation, weighting))
            for pack_rows in (None, 16):
                reference = engine.build_reference(VAL, ProblemRunner(model, reference_loss, pack_rows=pack_rows))
                stats = engine.score(POOL, ProblemRunner(model, loss, pack_rows=pack_rows), reference)
                results[aggregation, weighting, pack_rows] = stats.cosine()
            results[aggregation, weighting, "oracle"] = oracle_scores(
                model, VAL, POOL, reference_weighting=weighting, aggregation=aggregation)[2]
    torch.save(results, out)


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = tmp_path_factory.mktemp("weighting") / "out.pt"
    parallel.spawn(_rank, 1, str(out))
    return torch.load(out)


@pytest.mark.parametrize("aggregation", ["token_mean", "sequence_mean"])
@pytest.mark.parametrize("weighting", ["sum", "trainer"])
@pytest.mark.parametrize("pack_rows", [None, 16])
def test_reference_weighting_matches_the_oracle(results, aggregation, weighting, pack_rows):
    assert_close_rel(results[aggregation, weighting, pack_rows], results[aggregation, weighting, "oracle"],
                     rtol=1e-9, floor=1e-6)


def test_trainer_weighting_changes_the_scores_on_mixed_lengths(results):
    for aggregation in ("token_mean", "sequence_mean"):
        diff = (results[aggregation, "trainer", "oracle"] - results[aggregation, "sum", "oracle"]).abs().max()
        assert diff > 1e-3, f"{aggregation}: mixed lengths and rollout counts should move the cosines"
