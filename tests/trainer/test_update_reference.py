"""G copied off the update (gradalign.validation.g_from_update): the trusted groups, trained first
in microbatches of their own, leave exactly their share of the step's gradient in the accumulated
grads when the first pool microbatch starts; copying it changes nothing in the step.

A float64 GPT trained by the embedded grpo_step (megatron DDP and Adam) at TP=1, TP=2 and TP=2×DP=2.
The copied G, made unit-norm, scores the pool problems (engine, a separate pass at the same weights)
exactly as the brute-force oracle (tests/helpers.py) scores them against G = Σ_v N_v g_v over the
trusted problems (N_v their response tokens: their weight in the step's token mean): 1e-9
relative. The same steps without the copy give torch.equal weights, Adam state and in-pass
readings. Refused (the step still runs, unchanged): trusted rows that do not fill whole
microbatches, pipeline and sequence parallelism.
"""

from __future__ import annotations

import pytest
import torch

from helpers import assert_close_rel, oracle_scores, random_problems, spawned_oracle, step_state
from nemo_gradalign.engine import EngineGroups, GradientEngine
from nemo_gradalign.megatron import parallel
from nemo_gradalign.megatron.in_pass import AlignmentReading
from nemo_gradalign.megatron.model import ModelSpec, build_gpt
from nemo_gradalign.megatron.policy import Policy
from nemo_gradalign.megatron.problem_runner import LossSettings, ProblemRunner
from nemo_gradalign.megatron.update_reference import UpdateReference
from nemo_gradalign.trainer.update import grpo_step

SPEC64 = ModelSpec(num_layers=2, hidden_size=32, num_attention_heads=4, vocab_size=32, dtype="float64")
LOSS = LossSettings("leave_one_out", True, "token_mean")
_RANDOM = random_problems(300, 40)
_K4, _K2 = [p for p in _RANDOM if p.k == 4 and p.has_gradient("leave_one_out", True)], [p for p in _RANDOM if p.k == 2]
TRUSTED = [_K4[0], _K4[1]]  # 8 rows: the first microbatch of 8
POOL = [_K4[2], _K4[3], _K2[0], _K2[1], _K2[2], _K2[3]]  # 4+4 | 2+2+2+2
ROWS, RTOL = 8, 1e-9
VAL = random_problems(101, 4)  # the G the in-pass reading of both runs is against


def _run(capture: bool, max_rows: int = ROWS, read: bool = True):
    """Two steps (a copy each) on a fresh policy; (policy, optimizer, engine, first step's output)."""
    policy = Policy(SPEC64)
    optimizer = policy.make_optimizer(1e-2)
    engine = GradientEngine(policy.named_parameters(), EngineGroups.from_megatron(), "float64")
    reading = AlignmentReading(engine, engine.build_reference(VAL, ProblemRunner(policy.model, LOSS))) if read else None
    outs = [grpo_step(policy, optimizer, TRUSTED + POOL, LOSS, 0.2, 0.2, inner_epochs=2, max_rows=max_rows,
                      read_alignment=reading,
                      capture=UpdateReference(engine, sum(p.k for p in TRUSTED)) if capture else None)
            for _ in range(2)]
    return policy, optimizer, engine, outs[0]


def _capture_rank(rank, layout, out):
    from megatron.core import parallel_state as ps

    parallel.init_distributed(layout)
    plain_policy, plain_opt, _, plain = _run(capture=False)
    policy, opt, engine, copied = _run(capture=True)
    identical = all(torch.equal(a, b) for a, b in zip(step_state(plain_policy, plain_opt), step_state(policy, opt)))
    identical &= torch.equal(plain["alignment"].dot, copied["alignment"].dot)
    refused = _run(capture=True, max_rows=6, read=False)[3]["capture_refused"]  # 6 | 2+4 | ...: trusted split
    # score the pool against the copied G at the weights it was copied at (a fresh policy, same init)
    fresh = Policy(SPEC64)
    scorer = GradientEngine(fresh.named_parameters(), EngineGroups.from_megatron(), "float64")
    reference = scorer.empty_reference()
    reference.set_from_tensors(copied["trusted_gradient"], step=1)
    stats = scorer.score(POOL, ProblemRunner(fresh.model, LOSS), reference)
    table = torch.stack([stats.dot, stats.sqnorm, stats.cosine()])
    replicas = [torch.empty_like(table) for _ in range(ps.get_data_parallel_world_size())]
    torch.distributed.all_gather(replicas, table, group=ps.get_data_parallel_group())
    flags = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(flags, identical)
    if rank == 0:
        torch.save((table, flags, all(torch.equal(r, table) for r in replicas), refused), out)


def _oracle_rank(rank, out):
    parallel.init_distributed(parallel.Layout())
    torch.save(oracle_scores(build_gpt(SPEC64), TRUSTED, POOL, reference_weighting="trainer",
                             baseline=LOSS.baseline, normalize_std=LOSS.normalize_std), out)


@pytest.fixture(scope="module")
def oracle(tmp_path_factory):
    return spawned_oracle(tmp_path_factory, _oracle_rank)


@pytest.mark.parametrize("layout", [
    parallel.Layout(tp=2),
    pytest.param(parallel.Layout(), marks=pytest.mark.slow),
    pytest.param(parallel.Layout(tp=2, dp=2), marks=pytest.mark.slow)], ids=str)
def test_the_copied_g_is_the_trusted_groups_share_and_the_step_is_unchanged(layout, oracle, tmp_path):
    parallel.spawn(_capture_rank, layout.world_size, layout, str(tmp_path / "capture.pt"))
    (dot, sqnorm, cosine), flags, same_on_dp, refused = torch.load(tmp_path / "capture.pt")
    assert all(flags), f"{layout}: weights, Adam state or readings differ without the copy, per rank {flags}"
    assert same_on_dp  # every DP replica trains the whole batch and holds all of G
    assert refused == ("the trusted groups' 8 rollouts do not fill whole microbatches of 6 "
                       "(policy.max_rollouts_per_microbatch)")
    o_dot, o_sq, o_cos, o_nonzero = oracle
    assert o_nonzero.all()
    worst = max(assert_close_rel(got, want, rtol=RTOL, floor=1e-4 * float(want.abs().max()))
                for got, want in ((dot, o_dot), (sqnorm, o_sq), (cosine, o_cos)))
    print(f"{layout}: pool scored against the copied G vs the oracle, max relative error {worst:.2e}")


def _refusal_rank(rank, layout, spec, out):
    parallel.init_distributed(layout)
    policy = Policy(spec)
    engine = GradientEngine(policy.named_parameters(), EngineGroups.from_megatron(), "float64")
    result = grpo_step(policy, policy.make_optimizer(1e-2), TRUSTED + POOL, LOSS, 0.2, 0.2, inner_epochs=1,
                       max_rows=ROWS, capture=UpdateReference(engine, 8))
    if rank == 0:
        torch.save(result["capture_refused"], out)


@pytest.mark.slow
@pytest.mark.parametrize("layout,spec,reason", [
    (parallel.Layout(pp=2), SPEC64, "pipeline parallelism interleaves the microbatches' backward passes"),
    (parallel.Layout(tp=2), SPEC64.model_copy(update={"sequence_parallel": True}),
     "sequence parallelism leaves layer-norm grads partial over TP until finalize")], ids=["pp2", "tp2-sp"])
def test_layouts_whose_grads_are_not_whole_per_rank_are_refused(layout, spec, reason, tmp_path):
    parallel.spawn(_refusal_rank, layout.world_size, layout, spec, str(tmp_path / "refused.pt"))
    assert torch.load(tmp_path / "refused.pt") == reason
