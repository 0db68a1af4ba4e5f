"""Reference gradient: checkpoint round trip, refresh, empty validation set, counting rules, refused layouts."""

from __future__ import annotations

import pytest
import torch

from helpers import random_problems
from nemo_gradalign.engine import EmptyReferenceGradient, EngineGroups, GradientEngine, UnsupportedLayout
from nemo_gradalign.megatron import parallel
from nemo_gradalign.megatron.model import ModelSpec, build_gpt
from nemo_gradalign.megatron.problem_runner import ProblemRunner

SPEC = ModelSpec(num_layers=2, hidden_size=32, num_attention_heads=4, vocab_size=32)
VAL, POOL = random_problems(7, 5), random_problems(8, 8)


def _roundtrip_rank(rank, tmp):
    parallel.init_distributed(parallel.Layout(tp=2))
    model = build_gpt(SPEC)
    engine = GradientEngine(model.named_parameters(), EngineGroups.from_megatron())
    run = ProblemRunner(model)
    reference = engine.build_reference(VAL, run, step=3)
    before = engine.score(POOL, run, reference)
    torch.save(reference.state_dict(), f"{tmp}/ref_rank{rank}.pt")

    restored = GradientEngine(model.named_parameters(), EngineGroups.from_megatron())
    fresh = restored.build_reference(random_problems(99, 3), run)  # a different G...
    fresh.load_state_dict(torch.load(f"{tmp}/ref_rank{rank}.pt"))  # ...replaced by the saved one
    after_load = restored.score(POOL, run, fresh)

    with torch.no_grad():  # a weight change: the same G no longer describes the policy
        for p in model.parameters():
            p.add_(0.05 * torch.sin(torch.arange(p.numel(), dtype=p.dtype)).reshape(p.shape))
    stale = restored.score(POOL, run, fresh)
    assert fresh.needs_refresh(step=13, refresh_every=10) and not fresh.needs_refresh(12, 10)
    restored.refresh(fresh, VAL, run, step=13)
    refreshed = restored.score(POOL, run, fresh)
    if rank == 0:
        torch.save(dict(before=before, after_load=after_load, stale=stale, refreshed=refreshed,
                        built=(reference.built_at_step, fresh.built_at_step)), f"{tmp}/out.pt")


def test_save_load_gives_identical_scores_and_refresh_changes_them(tmp_path):
    parallel.spawn(_roundtrip_rank, 2, str(tmp_path))
    out = torch.load(tmp_path / "out.pt", weights_only=False)
    assert torch.equal(out["before"].dot, out["after_load"].dot)
    assert torch.equal(out["before"].sqnorm, out["after_load"].sqnorm)
    informative = out["before"].informative
    delta = (out["refreshed"].cosine() - out["before"].cosine())[informative].abs()
    assert delta.max() > 1e-3, "scores after a weight change + refresh should differ"
    # the refresh itself matters: the stale G and the refreshed G give different scores
    assert (out["refreshed"].dot - out["stale"].dot)[informative].abs().max() > 1e-4
    assert out["built"] == (3, 13)


def _empty_rank(rank):
    parallel.init_distributed(parallel.Layout())
    model = build_gpt(SPEC)
    engine = GradientEngine(model.named_parameters(), EngineGroups.from_megatron())
    all_same = [p for p in random_problems(5, 12) if not p.has_gradient()]
    assert all_same
    with pytest.raises(EmptyReferenceGradient, match="same reward"):
        engine.build_reference(all_same, ProblemRunner(model))


def test_validation_set_without_informative_problem_is_a_clear_error():
    parallel.spawn(_empty_rank, 1)


def _tied_pp_rank(rank, tmp):
    parallel.init_distributed(parallel.Layout(pp=2))
    model = build_gpt(SPEC.model_copy(update={"tie_embeddings": True}))
    engine = GradientEngine(model.named_parameters(), EngineGroups.from_megatron())
    reference = engine.build_reference(VAL, ProblemRunner(model))
    torch.save(reference.state_dict()["buffers"], f"{tmp}/ref_rank{rank}.pt")


@pytest.mark.slow
def test_tied_embedding_reference_is_stored_once_on_the_first_stage(tmp_path):
    """PP=2, tied: the reference holds the summed embedding grad on the first stage only (the
    scores against it are checked in test_oracle.py)."""
    parallel.spawn(_tied_pp_rank, 2, str(tmp_path))
    first, last = (torch.load(tmp_path / f"ref_rank{r}.pt") for r in (0, 1))
    assert first["embedding.word_embeddings.weight"].abs().sum() > 0
    assert not [n for n in last if "output_layer" in n or "word_embeddings" in n]


def _tied_copies():
    first, last = torch.nn.Parameter(torch.ones(4, 2)), torch.nn.Parameter(torch.ones(4, 2))
    for p in (first, last):
        p.tensor_model_parallel, p.partition_dim, p.shared_embedding = True, 0, True
    last.shared = True  # megatron marks the last stage's copy (LanguageModule)
    return [("embedding.word_embeddings.weight", first)], [("output_layer.weight", last)]


def test_tied_embedding_is_summed_on_both_stages_and_counted_on_the_first():
    from nemo_gradalign.engine.rules import counted_params

    first, last = _tied_copies()
    for tp_rank in (0, 1):
        on_first, on_last = counted_params(first, tp_rank, 2, 2), counted_params(last, tp_rank, 2, 2)
        assert on_first.tied_embedding == [first[0][1]] and on_first.names == [first[0][0]]
        assert on_last.tied_embedding == [last[0][1]] and on_last.names == []
    assert counted_params(first, 0, 1, 1).tied_embedding == []  # PP=1: one parameter, nothing to sum


@pytest.mark.parametrize("ep_size,vp_size,what", [(2, 1, "expert parallelism"), (1, 2, "virtual")])
def test_tied_embedding_with_ep_or_virtual_pipeline_is_refused(ep_size, vp_size, what):
    from nemo_gradalign.engine.rules import counted_params

    for named in _tied_copies():
        with pytest.raises(UnsupportedLayout, match=what):
            counted_params(named, 0, 1, 2, ep_size=ep_size, vp_size=vp_size)


def test_sequence_parallel_parameters_are_summed_over_tp_then_counted_once():
    """megatron marks SP-partial grads with `sequence_parallel`: every TP rank lists them for the
    per-problem TP sum; rank 0 alone counts them afterwards, as any duplicate."""
    norm = torch.nn.LayerNorm(4)
    setattr(norm.weight, "sequence_parallel", True)
    from nemo_gradalign.engine.rules import counted_params

    named = list(norm.named_parameters())
    assert counted_params(named, 0, 2, 1).sequence_parallel == [norm.weight]
    assert counted_params(named, 1, 2, 1).sequence_parallel == [norm.weight]
    assert counted_params(named, 1, 2, 1).names == [] and len(counted_params(named, 0, 2, 1).names) == 2
    assert counted_params(named, 0, 1, 1).sequence_parallel == []  # TP=1: grads are whole


def test_tp_duplicates_are_counted_on_rank_zero_only():
    from nemo_gradalign.engine.rules import counted_params

    shard, dup = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(2))
    setattr(shard, "tensor_model_parallel", True)
    named = [("shard", shard), ("dup", dup)]
    assert counted_params(named, 0, 2, 1).names == ["shard", "dup"]
    assert counted_params(named, 1, 2, 1).names == ["shard"]


@pytest.mark.parametrize("sequence_parallel", [True, False])
def test_experts_with_tp_need_sequence_parallelism(sequence_parallel):
    """EP with TP>1: megatron's allgather dispatcher gathers over TP×EP; only under SP (which
    megatron-core's MoELayer requires in training, and which marks the router) does each token
    reach the experts EP times, the multiplicity the engine divides by."""
    from nemo_gradalign.engine.rules import counted_params

    router, expert = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(2))
    setattr(router, "sequence_parallel", sequence_parallel)
    setattr(expert, "tensor_model_parallel", True)
    setattr(expert, "allreduce", False)
    named = [("mlp.router.weight", router), ("mlp.experts.local_experts.0.linear_fc1.weight", expert)]
    # a rank outside its EP group's first replica counts no dense parameter, its experts still
    second_replica = counted_params(named, 0, 1, 1, ep_size=2, counts_dense=False)
    assert second_replica.experts == [expert] and second_replica.names == ["mlp.experts.local_experts.0.linear_fc1.weight"]
    if sequence_parallel:
        on_rank1 = counted_params(named, 1, 2, 1, ep_size=2, counts_dense=False)
        assert on_rank1.experts == [expert] and on_rank1.sequence_parallel == [router]
        # an expert not marked as a TP shard (ETP=1 experts may not be) counts on expert-TP rank 0, whatever the TP rank
        setattr(expert, "tensor_model_parallel", False)
        assert counted_params(named, 1, 2, 1, ep_size=2, counts_dense=False, etp_rank=0).names == [named[1][0]]
    else:
        with pytest.raises(UnsupportedLayout, match="needs sequence parallelism"):
            counted_params(named, 0, 2, 1, ep_size=2)


@pytest.mark.slow
def test_packing_respects_the_microbatch_memory_limit():
    """max_rollouts_per_microbatch is a memory limit: packing never exceeds it, and a problem
    with more rollouts than it is never packed (it has to be split: one problem per pass)."""
    parallel.spawn(_packing_limit_rank, 1)


def _packing_limit_rank(rank):
    from nemo_gradalign.megatron.problem_runner import LossSettings

    parallel.init_distributed(parallel.Layout())
    model = build_gpt(SPEC)
    capped = ProblemRunner(model, LossSettings(), max_rows=6, pack_rows=128)
    assert capped.pack_rows == 6 and capped._packs(POOL[:3])  # POOL groups have ≤ 6 rollouts
    big = [p for p in POOL if p.k > 2][:2]
    small = ProblemRunner(model, LossSettings(), max_rows=2, pack_rows=128)
    assert len(big) == 2 and not small._packs(big) and small.packed_partials(big, {}) is None
