"""Alignment read from a training pass whose microbatches split problems (1–4 rollouts per
microbatch against groups of 2 and 4): the dot is exact, the squared norm is the norm of the
documented sign projection of each weight shard's gradient plus the exact rest — both checked
against a float64 oracle that shares no code with the reader — and the step is bit-identical.

The oracle (one autograd call per rollout, tests/helpers.py) gives every problem's gradient per
parameter at TP=1; here each weight is cut into the rank's shard (megatron's partition dim) and
projected with sign matrices drawn from the seed recipe projections.py documents, written out
again in tests/helpers.py. A second test checks the estimator, not the code: over 1,000 problems and 10 seeds,
the standardised error against the variance bound, and Spearman ≥ 0.99 of cosines at the
default dimension when the cosines have an LLM's spread (≈ 0.01; see the test).
"""

from __future__ import annotations

import pytest
import torch

from helpers import (assert_close_rel, edge_case_problems, oracle_gradient, oracle_parameter_gradients,
                     oracle_projected_sqnorm, oracle_scores, projected_shards, random_problems, step_state)
from nemo_gradalign.config import GradAlignConfig
from nemo_gradalign.engine import EngineGroups, GradientEngine
from nemo_gradalign.megatron import parallel
from nemo_gradalign.megatron.in_pass import AlignmentReading
from nemo_gradalign.megatron.model import ModelSpec, build_gpt
from nemo_gradalign.megatron.policy import Policy
from nemo_gradalign.megatron.problem_runner import LossSettings, ProblemRunner
from nemo_gradalign.trainer.update import grpo_step

SPEC64 = ModelSpec(num_layers=2, hidden_size=32, num_attention_heads=4, vocab_size=32, dtype="float64")
LOSS = LossSettings("leave_one_out", True, "token_mean")
VAL = random_problems(100, 6)
_RANDOM, _EDGE = random_problems(200, 40), edge_case_problems(first_id=100)
_K4, _K2 = [p for p in _RANDOM if p.k == 4], [p for p in _RANDOM if p.k == 2]
BATCH = [_K4[0], _K2[0], _K2[1], _EDGE[0], _EDGE[4], _EDGE[7], _K2[2], _K4[1]]  # 24 rollouts
DIM, SEED = 4, 7  # a small projection: the test checks the sketch itself, exactly
RTOL = 1e-9


def _rank(rank, layout, rows, out):
    parallel.init_distributed(layout)
    plain = Policy(SPEC64)
    plain_opt = plain.make_optimizer(1e-2)
    policy = Policy(SPEC64)
    opt = policy.make_optimizer(1e-2)
    engine = GradientEngine(policy.named_parameters(), EngineGroups.from_megatron(), "float64")
    reading = AlignmentReading(engine, engine.build_reference(VAL, ProblemRunner(policy.model, LOSS)), DIM, SEED)
    tables = []
    for _ in range(2):  # two steps, each two optimizer steps (inner epochs); the first is read
        grpo_step(plain, plain_opt, BATCH, LOSS, 0.2, 0.2, inner_epochs=2, max_rows=rows)
        scores = grpo_step(policy, opt, BATCH, LOSS, 0.2, 0.2, inner_epochs=2, max_rows=rows,
                           read_alignment=reading)["alignment"]
        tables.append(torch.stack([scores.dot, scores.sqnorm, scores.zero_gradient.double()]))
    identical = all(torch.equal(a, b) for a, b in zip(step_state(plain, plain_opt), step_state(policy, opt)))
    everything = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(everything, (projected_shards(policy.model, engine.counted.params),
                                                     identical, tables, scores.projected_dim))
    if rank == 0:
        torch.save(everything, out)


def _oracle_rank(rank, problems, out):
    parallel.init_distributed(parallel.Layout())
    model = build_gpt(SPEC64)
    loss = dict(baseline=LOSS.baseline, normalize_std=LOSS.normalize_std)
    torch.save((oracle_scores(model, VAL, problems, **loss), oracle_parameter_gradients(model, problems, **loss)), out)


@pytest.fixture(scope="module")
def oracle(tmp_path_factory):
    out = tmp_path_factory.mktemp("oracle") / "grads.pt"
    parallel.spawn(_oracle_rank, 1, BATCH, str(out))
    return torch.load(out)


@pytest.mark.parametrize("layout, rows", [
    (parallel.Layout(tp=2), 3),
    pytest.param(parallel.Layout(tp=2), 1, marks=pytest.mark.slow),
    pytest.param(parallel.Layout(pp=2), 2, marks=pytest.mark.slow),
    pytest.param(parallel.Layout(pp=2), 3, marks=pytest.mark.slow),
    pytest.param(parallel.Layout(tp=2, dp=2), 1, marks=pytest.mark.slow),
    pytest.param(parallel.Layout(tp=2, dp=2), 4, marks=pytest.mark.slow)], ids=str)
def test_split_problems_read_exactly_against_the_oracle_and_the_step_is_unchanged(layout, rows, oracle, tmp_path):
    parallel.spawn(_rank, layout.world_size, layout, rows, str(tmp_path / "read.pt"))
    ranks = torch.load(tmp_path / "read.pt")
    assert all(r[1] for r in ranks), "weights or Adam state differ from the plain steps"
    first = ranks[0][2][0]
    assert all(torch.equal(r[2][0], first) for r in ranks)  # every rank returns the same table
    splits = any(sum(p.k for p in BATCH[:i]) // rows != (sum(p.k for p in BATCH[:i + 1]) - 1) // rows
                 for i in range(len(BATCH)))
    assert ranks[0][3] == (DIM * DIM if splits else 0)  # 4 rows: whole problems, the exact reader
    (o_dot, o_sq, _, o_nonzero), grads = oracle
    dot, sqnorm, zero = first
    assert (zero == 0).tolist() == o_nonzero.tolist() and o_nonzero.any() and not o_nonzero.all()
    want_sq = torch.tensor([oracle_projected_sqnorm(g, [r[0] for r in ranks], DIM, SEED) if splits else float(o_sq[i])
                            for i, g in enumerate(grads)], dtype=torch.float64)
    keep = o_nonzero
    worst_dot = assert_close_rel(dot, o_dot, rtol=RTOL, floor=1e-4 * float(o_dot.abs().max()))
    worst_sq = assert_close_rel(sqnorm[keep], want_sq[keep], rtol=RTOL)
    assert (sqnorm[~keep] == 0).all()
    print(f"{layout}, {rows} rows per microbatch: vs oracle, max relative error dot {worst_dot:.2e}, "
          f"squared norm {worst_sq:.2e} ({'projected' if splits else 'exact'})")


# -- the estimator: its error against the variance bound, and what it does to cosine ranks ------
STAT_DIMS, STAT_SEEDS, PER_SEED = (8, GradAlignConfig().in_pass_projection), 10, 100
STAT_PROBLEMS = random_problems(500, STAT_SEEDS * PER_SEED, uninformative_every=10**9)


def _estimates_rank(rank, out):
    """Each seed reads its own 100 problems (microbatches of 3 rollouts) from fresh weights."""
    parallel.init_distributed(parallel.Layout())
    found = {}
    for dim in STAT_DIMS:
        for s in range(STAT_SEEDS):
            policy = Policy(SPEC64)
            engine = GradientEngine(policy.named_parameters(), EngineGroups.from_megatron(), "float64")
            reading = AlignmentReading(engine, engine.build_reference(VAL, ProblemRunner(policy.model, LOSS)), dim, s)
            batch = STAT_PROBLEMS[s * PER_SEED:(s + 1) * PER_SEED]
            scores = grpo_step(policy, policy.make_optimizer(1e-2), batch, LOSS, 0.2, 0.2, inner_epochs=1,
                               max_rows=3, read_alignment=reading)["alignment"]
            assert scores.projected_dim == dim * dim
            found.setdefault(dim, []).append(scores.sqnorm)
    torch.save({dim: torch.cat(parts) for dim, parts in found.items()}, out)


def _bound_rank(rank, out):
    """Per problem: exact ‖g‖² and, per dimension, the variance bound Σ_w ‖g_w‖⁴ v(k, ρ_w) over
    the projected weights (2-D), ρ_w = Σσ⁴/(Σσ²)² from the singular values."""
    parallel.init_distributed(parallel.Layout())
    model = build_gpt(SPEC64)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    rows = []
    for problem in STAT_PROBLEMS:
        flat, _ = oracle_gradient(model, problem, baseline=LOSS.baseline, normalize_std=LOSS.normalize_std)
        at, bounds = 0, torch.zeros(len(STAT_DIMS), dtype=torch.float64)
        for _, p in named:
            g = flat[at:at + p.numel()].view(p.shape)
            at += p.numel()
            if p.dim() == 2 and float(g.square().sum()) > 0:
                sigma2 = torch.linalg.svdvals(g).square()
                rho, norm4 = float(sigma2.square().sum() / sigma2.sum() ** 2), float(sigma2.sum()) ** 2
                for j, k in enumerate(STAT_DIMS):
                    bounds[j] += norm4 * ((2 / k) * ((1 + 1 / k) * rho + 1 / k) + 2 * rho / k)
        rows.append(torch.cat([(flat @ flat).reshape(1), bounds]))
    torch.save(torch.stack(rows), out)


def _spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    ra, rb = a.argsort().argsort().double(), b.argsort().argsort().double()
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra @ rb) / (ra.norm() * rb.norm()))


@pytest.mark.slow
def test_projected_norms_stay_inside_the_variance_bound_and_keep_cosine_ranks(tmp_path):
    parallel.spawn(_estimates_rank, 1, str(tmp_path / "est.pt"))
    parallel.spawn(_bound_rank, 1, str(tmp_path / "bound.pt"))
    estimates, oracle = torch.load(tmp_path / "est.pt"), torch.load(tmp_path / "bound.pt")
    exact = oracle[:, 0]
    keep = exact > 1e-24
    assert int(keep.sum()) >= 1000 * 0.9
    for j, dim in enumerate(STAT_DIMS):
        z = (estimates[dim] - exact)[keep] / oracle[keep, 1 + j].sqrt()
        # E z² ≤ 1 (the bound); 1,000 problems over 10 independent seeds (the problems of one seed
        # share its projections, so their errors are not independent): allow sampling noise. A
        # biased estimate would show here too, as its square
        print(f"k={dim}x{dim}: mean z {float(z.mean()):+.3f}, mean z² {float(z.square().mean()):.3f}, "
              f"max |z| {float(z.abs().max()):.2f}, median relative error "
              f"{float(((estimates[dim] - exact).abs() / exact)[keep].median()):.4f}")
        assert float(z.square().mean()) <= 1.3
    # cosines at an LLM's spread: c ~ N(0.01, 0.01) (seeded), read with the exact dot c·‖g‖ and
    # the estimated norm: c·‖g‖/‖g‖~. Only the norm's error moves them (the dot is exact).
    dim = STAT_DIMS[-1]
    c = 0.01 + 0.01 * torch.randn(int(keep.sum()), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    read = c * (exact[keep] / estimates[dim][keep]).sqrt()
    rho = _spearman(read, c)
    print(f"default k={dim}x{dim}: Spearman of read cosines with exact {rho:.5f}")
    assert rho >= 0.99
