"""Engine scores on TP/PP/DP layouts equal a brute-force single-process fp32 oracle (≤ 1e-5)."""

from __future__ import annotations

import pytest
import torch

from helpers import assert_close_rel, oracle_scores, random_problems
from nemo_gradalign.engine import EngineGroups, GradientEngine
from nemo_gradalign.megatron import parallel
from nemo_gradalign.megatron.model import ModelSpec, build_gpt
from nemo_gradalign.megatron.step import LossSettings, ProblemRunner

SPEC = ModelSpec(num_layers=2, hidden_size=32, num_attention_heads=4, vocab_size=32)
VAL, POOL = random_problems(100, 6), random_problems(200, 10)
SETTINGS = {
    "official": dict(loss=LossSettings("mean", False, "token_mean"), max_rows=None),
    "loo_seqmean_split": dict(loss=LossSettings("leave_one_out", False, "sequence_mean"), max_rows=2),
}


def _oracle_rank(rank, out):
    parallel.init_distributed(parallel.Layout())
    model = build_gpt(SPEC)
    results = {}
    for name, s in SETTINGS.items():
        results[name] = oracle_scores(model, VAL, POOL, aggregation=s["loss"].aggregation,
                                      baseline=s["loss"].baseline)
    torch.save(results, out)


def _wrap_ddp(model):
    """megatron's DDP: grads land in `main_grad` views of its contiguous buffer."""
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig

    return DistributedDataParallel(model.config, DistributedDataParallelConfig(grad_reduce_in_fp32=True), model)


def _engine_rank(rank, layout, out, ddp=False):
    parallel.init_distributed(layout)
    model = build_gpt(SPEC)
    if ddp:
        model = _wrap_ddp(model)
    engine = GradientEngine(model.named_parameters(), EngineGroups.from_megatron())
    results = {}
    for name, s in SETTINGS.items():
        run = ProblemRunner(model, s["loss"], s["max_rows"])
        stats = engine.score(POOL, run, engine.build_reference(VAL, run))
        results[name] = (stats.dot, stats.sqnorm, stats.cosine())
    if rank == 0:
        torch.save(results, out)


@pytest.fixture(scope="module")
def oracle(tmp_path_factory):
    out = tmp_path_factory.mktemp("oracle") / "oracle.pt"
    parallel.spawn(_oracle_rank, 1, str(out))
    return torch.load(out)


@pytest.mark.parametrize("layout", [
    parallel.Layout(tp=2), parallel.Layout(pp=2), parallel.Layout(tp=2, pp=2), parallel.Layout(dp=2),
], ids=str)
def test_engine_matches_oracle(layout, oracle, tmp_path):
    _check_against_oracle(layout, oracle, tmp_path, ddp=False)


def test_engine_reads_megatron_ddp_main_grad(oracle, tmp_path):
    """With megatron's DDP wrapper (grads in main_grad, DP=2 x TP=2) the scores are the same."""
    _check_against_oracle(parallel.Layout(tp=2, dp=2), oracle, tmp_path, ddp=True)


def _check_against_oracle(layout, oracle, tmp_path, ddp):
    out = tmp_path / "engine.pt"
    parallel.spawn(_engine_rank, layout.world_size, layout, str(out), ddp)
    results = torch.load(out)
    for name in SETTINGS:
        dot, sq, cos = results[name]
        o_dot, o_sq, o_cos = oracle[name]
        assert_close_rel(dot, o_dot)
        assert_close_rel(sq, o_sq)
        assert_close_rel(cos, o_cos)
        informative = torch.tensor([p.informative for p in POOL])
        assert (sq[~informative] == 0).all() and (cos[~informative] == 0).all()
        assert (sq[informative] > 0).all() and torch.isfinite(cos).all()
