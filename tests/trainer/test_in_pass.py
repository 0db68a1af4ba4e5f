"""Alignment read from the training pass equals the brute-force oracle, and reading it leaves
the GRPO step bit-identical.

A float64 GPT trained by the embedded grpo_step (megatron DDP, megatron Adam) at TP=2, PP=2
and TP=2×DP=2: the first inner epoch's backward is read per problem (megatron/in_pass.py).
The oracle (tests/helpers.py, one autograd call per rollout, exact-fraction advantages) scores
the same problems with the same weights and the trainer's advantages: dot, ‖g‖² and cosine
agree to 1e-9 relative. The same step without the reader gives torch.equal weights and Adam
state. Refused before any pass runs (weights and Adam state untouched): a microbatch size
that splits a problem, dropout, sequence parallelism, an engine built on another model.
"""

from __future__ import annotations

import pytest
import torch

from helpers import (assert_close_rel, edge_case_problems, oracle_scores, random_problems, spawned_oracle,
                     step_state)
from nemo_gradalign.engine import EngineGroups, GradientEngine, ReferenceGradient, UnsupportedLayout
from nemo_gradalign.megatron import parallel
from nemo_gradalign.megatron.in_pass import AlignmentReading
from nemo_gradalign.megatron.model import ModelSpec, build_gpt
from nemo_gradalign.megatron.policy import Policy
from nemo_gradalign.megatron.problem_runner import LossSettings, ProblemRunner
from nemo_gradalign.trainer.update import grpo_step

SPEC64 = ModelSpec(num_layers=2, hidden_size=32, num_attention_heads=4, vocab_size=32, dtype="float64")
LOSS = LossSettings("leave_one_out", True, "token_mean")  # NeMo RL's defaults, trainer and scorer alike
VAL = random_problems(100, 6)
# eight rows per microbatch, three microbatches of whole problems of 4 and 2 rollouts (unequal
# spans: 4+2+2, 4+4, 2+2+4); random groups and edge cases (cancelling std, identical responses
# with a zero gradient, k = 2 where the leave-one-out std is 0)
_RANDOM, _EDGE = random_problems(200, 40), edge_case_problems(first_id=100)
_K4, _K2 = [p for p in _RANDOM if p.k == 4], [p for p in _RANDOM if p.k == 2]
BATCH = [_K4[0], _K2[0], _K2[1], _EDGE[0], _EDGE[4], _EDGE[7], _K2[2], _K4[1]]
ROWS = 8
RTOL = 1e-9


def _step(policy, optimizer, reading=None, max_rows=ROWS) -> dict:
    return grpo_step(policy, optimizer, BATCH, LOSS, 0.2, 0.2, inner_epochs=2, max_rows=max_rows,
                     read_alignment=reading)


def _in_pass_rank(rank, layout, out):
    from megatron.core import parallel_state as ps

    parallel.init_distributed(layout)
    plain = Policy(SPEC64)
    plain_opt = plain.make_optimizer(1e-2)
    _step(plain, plain_opt)
    _step(plain, plain_opt)

    reading_policy = Policy(SPEC64)
    opt = reading_policy.make_optimizer(1e-2)
    engine = GradientEngine(reading_policy.named_parameters(), EngineGroups.from_megatron(), "float64")
    reading = AlignmentReading(engine, engine.build_reference(VAL, ProblemRunner(reading_policy.model, LOSS)))
    before = step_state(reading_policy, opt)
    with pytest.raises(UnsupportedLayout, match=r"microbatches of 5 rollouts \(policy.max_rollouts_per_"
                       r"microbatch, evened out over the batch\) split problem 4 \(rollouts 4..5 "):
        _step(reading_policy, opt, reading, max_rows=5)
    assert all(torch.equal(a, b) for a, b in zip(before, step_state(reading_policy, opt)))
    if layout == parallel.Layout(tp=2):
        _refuses_what_it_cannot_read(reading_policy, opt, reading)
    scores = _step(reading_policy, opt, reading)["alignment"]
    _step(reading_policy, opt, reading)  # a second reading step (after one optimizer update)
    identical = all(torch.equal(a, b) for a, b in zip(step_state(plain, plain_opt),
                                                      step_state(reading_policy, opt)))

    table = torch.stack([scores.dot, scores.sqnorm, scores.cosine(), scores.zero_gradient.double()])
    replicas = [torch.empty_like(table) for _ in range(ps.get_data_parallel_world_size())]
    torch.distributed.all_gather(replicas, table, group=ps.get_data_parallel_group())
    flags = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(flags, identical)
    if rank == 0:
        same_on_dp = all(torch.equal(r, table) for r in replicas)
        torch.save((scores.problem_ids, table, flags, same_on_dp), out)


def _refuses_what_it_cannot_read(policy, optimizer, reading):
    """Layouts whose per-problem share the hooks cannot attribute: refused before any pass."""
    config = policy.model.config
    config.hidden_dropout = 0.1
    with pytest.raises(UnsupportedLayout, match=r"cannot read this model exactly: dropout \(hidden_dropout=0.1"):
        _step(policy, optimizer, reading)
    config.hidden_dropout = 0.0
    sp = Policy(SPEC64.model_copy(update={"sequence_parallel": True}))
    engine = GradientEngine(sp.named_parameters(), EngineGroups.from_megatron(), "float64")
    with pytest.raises(UnsupportedLayout, match="cannot read this model exactly: sequence parallelism"):
        _step(sp, sp.make_optimizer(1e-2), AlignmentReading(engine, ReferenceGradient(engine.counted, engine.groups)))
    with pytest.raises(ValueError, match="the engine counts parameters that are not this model's"):
        _step(policy, optimizer, AlignmentReading(engine, reading.reference))


def _oracle_rank(rank, out):
    parallel.init_distributed(parallel.Layout())
    torch.save(oracle_scores(build_gpt(SPEC64), VAL, BATCH, baseline=LOSS.baseline,
                             normalize_std=LOSS.normalize_std), out)


@pytest.fixture(scope="module")
def oracle(tmp_path_factory):
    return spawned_oracle(tmp_path_factory, _oracle_rank)


@pytest.mark.parametrize("layout", [
    parallel.Layout(tp=2),  # the fast tier's case
    pytest.param(parallel.Layout(pp=2), marks=pytest.mark.slow),
    pytest.param(parallel.Layout(tp=2, dp=2), marks=pytest.mark.slow)], ids=str)
def test_in_pass_scores_equal_the_oracle_and_the_step_is_unchanged(layout, oracle, tmp_path):
    parallel.spawn(_in_pass_rank, layout.world_size, layout, str(tmp_path / "in_pass.pt"))
    ids, (dot, sqnorm, cosine, zero), flags, same_on_dp = torch.load(tmp_path / "in_pass.pt")
    assert all(flags), f"{layout}: weights or Adam state differ from the plain step, per rank {flags}"
    assert same_on_dp  # every DP replica trains (and reads) the whole batch
    o_dot, o_sq, o_cos, o_nonzero = oracle
    assert ids == [p.problem_id for p in BATCH]
    assert (zero == 0).tolist() == o_nonzero.tolist()
    assert o_nonzero.any() and not o_nonzero.all()  # both kinds are in the batch
    worst = 0.0
    for got, want in ((dot, o_dot), (sqnorm, o_sq), (cosine, o_cos)):
        worst = max(worst, assert_close_rel(got, want, rtol=RTOL, floor=1e-4 * float(want.abs().max())))
    print(f"{layout}: in-pass vs oracle, max relative error {worst:.2e}")
