"""Engine scores on TP/PP/DP layouts equal an independent brute-force oracle.

float64 models: ≤ 1e-9 relative under every advantage setting NeMo RL has, on groups built to
break naive advantage code. float32: the engine's reading of a problem's partial sums stays
within the standard dot-product rounding bound γ_n·Σ|g||G|. Neither depends on the CPU's kernels.
"""

from __future__ import annotations

import pytest
import torch

from helpers import assert_close_rel, edge_case_problems, oracle_scores, random_problems
from nemo_gradalign.engine import EngineGroups, GradientEngine
from nemo_gradalign.megatron import parallel
from nemo_gradalign.megatron.model import ModelSpec, build_gpt
from nemo_gradalign.megatron.per_problem import PerProblemPartials
from nemo_gradalign.megatron.problem_runner import LossSettings, ProblemRunner

SPEC64 = ModelSpec(num_layers=2, hidden_size=32, num_attention_heads=4, vocab_size=32, dtype="float64")
VAL = random_problems(100, 6)
POOL = random_problems(200, 8) + edge_case_problems(first_id=100)
SETTINGS = {  # name: (loss, max rollouts per microbatch)
    "official": (LossSettings("mean", False, "token_mean"), None),
    "mean_std": (LossSettings("mean", True, "token_mean"), None),
    "loo": (LossSettings("leave_one_out", False, "token_mean"), None),
    "nemo_rl_default": (LossSettings("leave_one_out", True, "token_mean"), None),
    "loo_std_seqmean_split": (LossSettings("leave_one_out", True, "sequence_mean"), 2),
}
RTOL = 1e-9
PACKED, PACK_ROWS = "/packed", 5  # 5 rows: several microbatches, some holding two problems
PACKED_SETTINGS = ("nemo_rl_default", "loo_std_seqmean_split", "moe")
TIED = {"tie_embeddings": True}
MOE = {"num_experts": 4}  # 2 experts per rank at EP=2
# megatron-core computes router probabilities with softmax(dtype=float32) whatever the model's
# dtype (moe_utils.topk_softmax_with_capacity): each carries a float32 rounding (u = 2^-24), and
# layouts whose float64 logits differ in the last bits may round them differently. The probs
# scale expert outputs linearly; a few u through forward and backward, bounded here by 16u.
RTOL_MOE = 16 * 2.0 ** -24


def _wrap_ddp(model, grad_reduce_in_fp32):
    """megatron's DDP: grads land in `main_grad` views of its contiguous buffer."""
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig

    config = DistributedDataParallelConfig(grad_reduce_in_fp32=grad_reduce_in_fp32)
    return DistributedDataParallel(model.config, config, model)


def _oracle_rank(rank, out):
    parallel.init_distributed(parallel.Layout())
    model = build_gpt(SPEC64)
    results = {}
    for name, (loss, _) in SETTINGS.items():
        results[name] = oracle_scores(model, VAL, POOL, aggregation=loss.aggregation,
                                      baseline=loss.baseline, normalize_std=loss.normalize_std)
    with torch.no_grad():  # the bfloat16 model's weights, exactly, in float64
        for p in model.parameters():
            p.copy_(p.to(torch.bfloat16))
    loss = SETTINGS["nemo_rl_default"][0]
    results["bf16_weights"] = oracle_scores(model, VAL, POOL, baseline=loss.baseline,
                                            normalize_std=loss.normalize_std)
    results["moe"] = oracle_scores(build_gpt(SPEC64.model_copy(update=MOE)), VAL, POOL,
                                   baseline=loss.baseline, normalize_std=loss.normalize_std)
    torch.save(results, out)


def _tied_oracle_rank(rank, out):
    """The tied model in one process: input and output share one parameter, counted once."""
    parallel.init_distributed(parallel.Layout())
    model = build_gpt(SPEC64.model_copy(update=TIED))
    assert model.output_layer.weight is None  # PP=1: the output layer reads the embedding itself
    torch.save({name: oracle_scores(model, VAL, POOL, aggregation=loss.aggregation, baseline=loss.baseline,
                                    normalize_std=loss.normalize_std)
                for name, (loss, _) in SETTINGS.items()}, out)


def _engine_rank(rank, layout, out, ddp=False, sequence_parallel=False, tied=False, read_small_at_once=False,
                 dispatcher="allgather"):
    parallel.init_distributed(layout)
    if read_small_at_once:  # packed scoring's deferred bias/norm reads flushed at every one
        PerProblemPartials.PENDING = 0
    moe = {**MOE, "moe_dispatcher": dispatcher} if layout.ep > 1 else {}
    model = build_gpt(SPEC64.model_copy(update={"sequence_parallel": sequence_parallel, **moe,
                                                **(TIED if tied else {})}))
    if ddp:
        model = _wrap_ddp(model, grad_reduce_in_fp32=False)
    engine = GradientEngine(model.named_parameters(), EngineGroups.from_megatron(), "float64")
    if tied:  # at PP=2 every rank holds one copy: the engine sums it over the embedding group
        assert len(engine.counted.tied_embedding) == 1
    results = {}
    settings = {"moe": SETTINGS["nemo_rl_default"]} if moe else SETTINGS
    for name, (loss, max_rows) in settings.items():
        # one problem per pass; and (two settings, to keep CI short) many problems packed into
        # microbatches of ≥ PACK_ROWS rows, where the reference is always built packed
        packings = [("", None)] + ([(PACKED, PACK_ROWS)] if name in PACKED_SETTINGS else [])
        for suffix, pack_rows in packings:
            run = ProblemRunner(model, loss, None if pack_rows else max_rows, pack_rows=pack_rows)
            stats = engine.score(POOL, run, engine.build_reference(VAL, run))
            results[name + suffix] = (stats.dot, stats.sqnorm, stats.cosine(), stats.informative)
    if rank == 0:
        torch.save(results, out)


@pytest.fixture(scope="module")
def oracle(tmp_path_factory):
    out = tmp_path_factory.mktemp("oracle") / "oracle.pt"
    parallel.spawn(_oracle_rank, 1, str(out))
    return torch.load(out)


@pytest.fixture(scope="module")
def tied_oracle(tmp_path_factory):
    out = tmp_path_factory.mktemp("oracle") / "tied_oracle.pt"
    parallel.spawn(_tied_oracle_rank, 1, str(out))
    return torch.load(out)


@pytest.mark.parametrize("layout", [
    parallel.Layout(tp=2),  # the fast tier's exactness case
    *(pytest.param(layout, marks=pytest.mark.slow)
      for layout in (parallel.Layout(pp=2), parallel.Layout(tp=2, pp=2), parallel.Layout(dp=2))),
], ids=str)
def test_engine_matches_oracle_in_float64(layout, oracle, tmp_path):
    _check_against_oracle(layout, oracle, tmp_path)


@pytest.mark.slow
def test_engine_reads_megatron_ddp_main_grad(oracle, tmp_path):
    """With megatron's DDP wrapper (grads in main_grad, DP=2 x TP=2) the scores are the same
    (and packed scoring's small partials are read as they come, not batched per microbatch)."""
    _check_against_oracle(parallel.Layout(tp=2, dp=2), oracle, tmp_path, ddp=True, read_small_at_once=True)


@pytest.mark.slow
@pytest.mark.parametrize("layout", [parallel.Layout(tp=2), parallel.Layout(tp=2, pp=2)], ids=str)
def test_engine_matches_oracle_with_sequence_parallelism(layout, oracle, tmp_path):
    """SP: layer-norm grads are partial per TP rank (and sequences are padded to a multiple of TP)."""
    _check_against_oracle(layout, oracle, tmp_path, ddp=True, sequence_parallel=True)


@pytest.mark.slow
@pytest.mark.parametrize("layout,dispatcher", [
    (parallel.Layout(dp=2, ep=2), "allgather"), (parallel.Layout(dp=2, ep=2), "alltoall"),
    (parallel.Layout(tp=2, dp=2, ep=2), "allgather"),
    (parallel.Layout(tp=2, dp=2, ep=2, etp=1), "alltoall"), (parallel.Layout(tp=2, dp=2, ep=4, etp=1), "alltoall"),
    (parallel.Layout(cp=2, dp=2, ep=2), "alltoall"), (parallel.Layout(cp=2, dp=2, ep=4), "alltoall"),
], ids=lambda v: str(v))
def test_engine_matches_oracle_with_expert_parallelism(layout, dispatcher, oracle, tmp_path):
    """MoE, 4 experts: the EP group runs each problem together; dense parameters count once (in
    the group's first replica), experts where they live, divided by the replicas in the group.
    With TP=2 sequence parallelism is on, as megatron-core requires for MoE with TP>1. ETP=TP
    (megatron's default): experts TP-sharded, one replica per EP rank. ETP=1 (NeMo RL's default):
    whole experts; EP=2 is the TP group itself (1 replica), EP=4 spans two TP=2 replicas. CP=2:
    the EP group spans the CP ranks (a replica is its CP pair): dense grads summed over CP, experts
    not (they saw both chunks)."""
    _check_against_oracle(layout, oracle, tmp_path, ddp=True, sequence_parallel=layout.tp > 1,
                          dispatcher=dispatcher)


@pytest.mark.slow
@pytest.mark.parametrize("layout,ddp,sequence_parallel", [
    (parallel.Layout(cp=2), False, False), (parallel.Layout(pp=2, cp=2), True, False),
    (parallel.Layout(tp=2, cp=2), True, True),
], ids=["CP2", "PP2xCP2-DDP", "TP2xCP2-DDP-SP"])
def test_engine_matches_oracle_with_context_parallelism(layout, ddp, sequence_parallel, oracle, tmp_path):
    """CP: every rank runs its zig-zag chunks of each sequence (megatron's own slicing, an
    all-gather CP attention); its grads are its tokens' share, summed over CP per problem."""
    _check_against_oracle(layout, oracle, tmp_path, ddp=ddp, sequence_parallel=sequence_parallel)


@pytest.mark.slow
@pytest.mark.parametrize("layout,ddp", [(parallel.Layout(pp=2), False), (parallel.Layout(tp=2, pp=2), True),
                                        (parallel.Layout(pp=2, cp=2), True)],
                         ids=["PP2", "TP2xPP2-DDP", "PP2xCP2-DDP"])
def test_engine_matches_oracle_with_tied_embeddings(layout, ddp, tied_oracle, tmp_path):
    """Word embeddings tied across pipeline stages: each stage's copy holds half of the grad;
    summed per problem over the embedding group, counted on the first stage only."""
    _check_against_oracle(layout, tied_oracle, tmp_path, ddp=ddp, tied=True)


def _check_against_oracle(layout, oracle, tmp_path, ddp=False, sequence_parallel=False, tied=False,
                          read_small_at_once=False, dispatcher="allgather"):
    out = tmp_path / "engine.pt"
    parallel.spawn(_engine_rank, layout.world_size, layout, str(out), ddp, sequence_parallel, tied,
                   read_small_at_once, dispatcher)
    results = torch.load(out)
    worst = 0.0
    for name in results:
        dot, sq, cos, informative = results[name]
        o_dot, o_sq, o_cos, o_nonzero = oracle[name.removesuffix(PACKED)]
        assert informative.tolist() == o_nonzero.tolist(), name
        assert (sq[~informative] == 0).all() and (cos[~informative] == 0).all()
        for got, want in ((dot, o_dot), (sq, o_sq), (cos, o_cos)):
            # relative to each value, or to 1e-4 of the largest where a value is ~0 by cancellation
            rtol = RTOL_MOE if name.startswith("moe") else RTOL
            worst = max(worst, assert_close_rel(got, want, rtol=rtol, floor=1e-4 * float(want.abs().max())))
    variant = "".join(f" {k}" for k, on in (("DDP", ddp), ("SP", sequence_parallel), ("tied", tied)) if on)
    print(f"{layout}{variant}: max relative error {worst:.2e} "
          f"(kernels {torch.backends.cpu.get_cpu_capability()})")


def test_edge_cases_are_scored_as_their_definition_says(oracle):
    """The oracle itself on the groups of edge_case_problems (no engine involved): which have a
    gradient under which settings, and a 1e10 scale change that leaves the cosine alone."""
    first = len(POOL) - len(edge_case_problems(0))
    nonzero = {name: oracle[name][3][first:].tolist() for name in SETTINGS}
    assert nonzero["official"] == [True, False, True, True, False, False, True, True, False]
    assert nonzero["loo"] == nonzero["official"]  # leave-one-out A = k/(k-1) · mean-centred A
    assert nonzero["nemo_rl_default"] == [True, True, True, True, False, True, True, True, False]
    cos = oracle["official"][2]
    assert abs(float(cos[first + 2] - cos[first + 3])) <= RTOL * abs(float(cos[first + 3]))


def _rounding_bound_rank(rank, out, dtype):
    """Engine dots/norms at TP=2 through DDP main_grad (fp32, or bf16 as NeMo RL's recipes keep
    it) vs a float64 re-read of the same gradients, with the rounding bound of an n-term fp32
    dot product: the engine accumulates 16-bit grads in fp32."""
    from megatron.core import parallel_state as ps

    parallel.init_distributed(parallel.Layout(tp=2))
    model = _wrap_ddp(build_gpt(SPEC64.model_copy(update={"dtype": dtype})), grad_reduce_in_fp32=False)
    engine = GradientEngine(model.named_parameters(), EngineGroups.from_megatron())
    run = ProblemRunner(model, *SETTINGS["nemo_rl_default"], pack_rows=None)  # reads main_grad
    reference = engine.build_reference(VAL, run)
    stats = engine.score(POOL, run, reference)
    # the packed path builds each problem's gradient from activations in fp32: not main_grad's
    # rounding, so it is measured against float64 (printed), not against this bound
    packed = engine.score(POOL, ProblemRunner(model, *SETTINGS["nemo_rl_default"], pack_rows=PACK_ROWS),
                          reference).cosine()
    u = 2.0 ** -24
    rows = []
    for problem in POOL:
        model.zero_grad_buffer()
        if run.has_gradient(problem):
            run(problem)
        grads = [p.main_grad.double().reshape(-1) for p in engine.counted.params]
        refs = [b.double().reshape(-1) for b in reference.buffers]
        n = max(g.numel() for g in grads)
        gamma = n * u / (1 - n * u)
        rows.append(torch.stack([sum(g @ r for g, r in zip(grads, refs)), sum(g @ g for g in grads),
                                 gamma * sum(g.abs() @ r.abs() for g, r in zip(grads, refs)),
                                 gamma * sum(g @ g for g in grads)]))
    exact = torch.stack(rows)
    torch.distributed.all_reduce(exact, group=ps.get_model_parallel_group())
    if rank == 0:
        torch.save((stats.dot, stats.sqnorm, exact, stats.cosine(), packed), out)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_engine_within_fp32_dot_product_rounding_bound(dtype, oracle, tmp_path):
    parallel.spawn(_rounding_bound_rank, 2, str(tmp_path / "bound.pt"), dtype)
    dot, sq, exact, cos, packed = torch.load(tmp_path / "bound.pt")
    used = ((dot - exact[:, 0]).abs() / exact[:, 2].clamp_min(1e-300)).max()
    print(f"{dtype} grads: dot error / fp32 rounding bound: max {float(used):.2e}")
    if dtype == "bfloat16":  # what bf16 weights, activations and grads cost, against float64
        want = oracle["bf16_weights"][2]
        print(f"bfloat16 model vs its own weights in float64: max |Δcos| {float((cos - want).abs().max()):.2e} "
              f"(packed: {float((packed - want).abs().max()):.2e}), max |cos| {float(want.abs().max()):.2e}")
    assert ((dot - exact[:, 0]).abs() <= exact[:, 2]).all()
    assert ((sq - exact[:, 1]).abs() <= exact[:, 3]).all()
    assert (exact[:, 1] > 0).sum() >= len(POOL) // 2  # the bound is checked on real gradients
