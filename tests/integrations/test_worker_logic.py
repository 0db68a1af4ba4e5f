"""The NeMo RL worker-extension scoring logic, called directly (no Ray) on a megatron-core GPT at
TP=2 and TP=2×DP=2 over gloo, with NeMo RL-shaped flat data, agrees with the brute-force oracle (float64, ≤ 1e-9)
under the loss the recipe trains with (leave-one-out baseline, std-normalised, temperature 0.7)."""

from __future__ import annotations

import pytest
import torch

from helpers import assert_close_rel, oracle_scores
from nemo_gradalign.config import GradAlignConfig
from nemo_gradalign.integrations.nemo_rl.config import scoring_loss
from nemo_gradalign.integrations.nemo_rl.worker_logic import GradAlignWorkerLogic, groups_from_batch
from nemo_gradalign.megatron import parallel
from nemo_gradalign.megatron.model import ModelSpec
from nemo_gradalign.megatron.policy import Policy
from nemo_gradalign.rollouts import ProblemRollouts

SPEC = ModelSpec(num_layers=2, hidden_size=32, num_attention_heads=4, vocab_size=32, dtype="float64")
CFG = GradAlignConfig(enabled=True, reference_dtype="float64")
G = 4
# upstream's grpo_math_1B_megatron.yaml shape (v0.7/main), with a non-unit sampling temperature
RECIPE = {"grpo": {"use_leave_one_out_baseline": True, "normalize_rewards": True,
                   "adv_estimator": {"name": "grpo", "normalize_rewards": True,
                                     "use_leave_one_out_baseline": True, "minus_baseline": True}},
          "policy": {"generation": {"temperature": 0.7, "top_k": None, "top_p": 1.0}}}
LOSS = scoring_loss(RECIPE, CFG)
ORACLE_LOSS = dict(baseline="leave_one_out", normalize_std=True, temperature=0.7)


def fixed_k_problems(seed: int, n: int) -> list[ProblemRollouts]:
    gen = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        prompt = int(torch.randint(2, 5, (1,), generator=gen))
        lens = torch.randint(1, 6, (G,), generator=gen)
        tokens = torch.randint(1, 32, (G, prompt + int(lens.max())), generator=gen)
        tokens[:, :prompt] = tokens[0, :prompt]
        for j in range(G):
            tokens[j, prompt + lens[j]:] = 0
        rewards = torch.tensor([0.0, 1.0, 1.0, 0.0]) if i % 3 else torch.ones(G)
        out.append(ProblemRollouts(i, tokens, prompt, lens, rewards))
    return out


def as_nemo_rl_batch(problems: list[ProblemRollouts]) -> dict[str, torch.Tensor]:
    """Flat group-contiguous rows, right-padded to one width, as grpo_train builds train_data."""
    width = max(p.tokens.shape[1] for p in problems) + 3
    rows = sum(p.k for p in problems)
    ids, mask = torch.zeros(rows, width, dtype=torch.long), torch.zeros(rows, width)
    lengths, rewards = torch.zeros(rows, dtype=torch.long), torch.zeros(rows)
    r = 0
    for p in problems:
        for j in range(p.k):
            n = p.prompt_len + int(p.response_lens[j])
            ids[r, :n] = p.tokens[j, :n]
            mask[r, p.prompt_len:n] = 1
            lengths[r], rewards[r] = n, p.rewards[j]
            r += 1
    return {"input_ids": ids, "input_lengths": lengths, "token_mask": mask, "total_reward": rewards}


VAL, POOL = fixed_k_problems(1, 6), fixed_k_problems(2, 8)


# NeMo RL's MoE recipes: the all-to-all dispatcher, the router frozen (freeze_moe_router: true)
MOE_SPEC = SPEC.model_copy(update={"num_experts": 4, "moe_dispatcher": "alltoall"})
# megatron-core rounds router probabilities to float32 whatever the model's dtype: 16u (see
# tests/engine/test_oracle.py), not the 1e-9 of a float64 dense model
RTOL_MOE = 16 * 2.0 ** -24


def nemo_rl_policy(spec: ModelSpec):
    """The model as NeMo RL's worker holds it: a frozen MoE router (its megatron_cfg default),
    then megatron's DDP."""
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig

    from nemo_gradalign.megatron.model import build_gpt

    module = build_gpt(spec)
    for name, param in module.named_parameters():
        if ".router." in name:
            param.requires_grad_(False)
    return DistributedDataParallel(module.config, DistributedDataParallelConfig(grad_reduce_in_fp32=False), module)


def _oracle_rank(rank, out, spec=SPEC):
    parallel.init_distributed(parallel.Layout())
    torch.save(oracle_scores(nemo_rl_policy(spec).module, VAL, POOL, **ORACLE_LOSS), out)


def _worker_rank(rank, layout, out, spec=SPEC):
    from megatron.core import parallel_state as ps

    parallel.init_distributed(layout)
    spec = spec.model_copy(update={"sequence_parallel": layout.tp > 1 and spec.num_experts is not None})
    policy = Policy(spec) if spec.num_experts is None else type("P", (), {"model": nemo_rl_policy(spec)})
    logic = GradAlignWorkerLogic(policy.model, CFG, LOSS)
    dp, d = ps.get_data_parallel_world_size(), ps.get_data_parallel_rank()
    shard = lambda items: items[d * len(items) // dp:(d + 1) * len(items) // dp]  # contiguous, whole groups
    logic.build_reference(as_nemo_rl_batch(shard(VAL)), G, step=0)
    local = logic.score(as_nemo_rl_batch(shard(POOL)), G)
    restored = GradAlignWorkerLogic(policy.model, CFG, LOSS)
    restored.load_state_dict(logic.state_dict())  # what a NeMo RL checkpoint holds per rank
    assert torch.equal(restored.score(as_nemo_rl_batch(shard(POOL)), G)["dot"], local["dot"])
    gathered = [None] * dp
    torch.distributed.all_gather_object(gathered, local, group=ps.get_data_parallel_group())
    if rank == 0:
        torch.save({k: torch.cat([g[k] for g in gathered]) for k in local}, out)


def test_scoring_loss_follows_the_recipe():
    assert LOSS == {"baseline": "leave_one_out", "normalize_std": True, "aggregation": "token_mean",
                    "temperature": 0.7}
    legacy = {"grpo": {"use_leave_one_out_baseline": False, "normalize_rewards": False},
              "policy": {"generation": {"temperature": 1.0}}}  # v0.6/v0.7 without adv_estimator
    assert scoring_loss(legacy, CFG)["baseline"] == "mean" and not scoring_loss(legacy, CFG)["normalize_std"]
    override = GradAlignConfig.model_validate({**CFG.model_dump(), "advantage": {"baseline": "mean"}})
    assert scoring_loss(RECIPE, override)["baseline"] == "mean"  # the gradalign block may override


def test_groups_from_batch_round_trips_the_groups():
    groups = groups_from_batch(**{k: v for k, v in as_nemo_rl_batch(POOL).items()
                                  if k != "total_reward"}, rewards=as_nemo_rl_batch(POOL)["total_reward"],
                               group_size=G)
    assert [g.has_gradient() for g in groups] == [p.has_gradient() for p in POOL]
    for g, p in zip(groups, POOL):
        assert [key[0][-1] for key in g.responses()] == [int(p.tokens[j, p.prompt_len + p.response_lens[j] - 1]) for j in range(G)]


@pytest.mark.slow
def test_worker_logic_matches_oracle_at_tp2_and_tp2_dp2(tmp_path):
    parallel.spawn(_oracle_rank, 1, str(tmp_path / "oracle.pt"))
    o_dot, o_sq, o_cos, o_nonzero = torch.load(tmp_path / "oracle.pt")
    for layout in (parallel.Layout(tp=2), parallel.Layout(tp=2, dp=2)):
        parallel.spawn(_worker_rank, layout.world_size, layout, str(tmp_path / "w.pt"))
        got = torch.load(tmp_path / "w.pt")
        for key, want in (("dot", o_dot), ("sqnorm", o_sq), ("cosine", o_cos)):
            assert_close_rel(got[key], want, rtol=1e-9, floor=1e-4 * float(want.abs().max()))
        assert got["informative"].tolist() == o_nonzero.tolist()


@pytest.mark.slow
def test_worker_logic_matches_oracle_with_expert_parallelism(tmp_path):
    """MoE as NeMo RL's recipes run it (all-to-all dispatcher, frozen router, ETP=1, SP with TP):
    each DP rank holds its own groups, the EP group's replicas score them together and each rank
    returns its own. EP=2 at TP=1; EP=2 with TP=2×SP (the EP group is the TP group); EP=4 with
    TP=2×SP, and with CP=2 (two replicas in one EP group, each with other groups)."""
    parallel.spawn(_oracle_rank, 1, str(tmp_path / "oracle.pt"), MOE_SPEC)
    o_dot, o_sq, o_cos, o_nonzero = torch.load(tmp_path / "oracle.pt")
    for layout in (parallel.Layout(dp=2, ep=2), parallel.Layout(tp=2, dp=2, ep=2, etp=1),
                   parallel.Layout(tp=2, dp=2, ep=4, etp=1), parallel.Layout(cp=2, dp=2, ep=4)):
        parallel.spawn(_worker_rank, layout.world_size, layout, str(tmp_path / "w.pt"), MOE_SPEC)
        got = torch.load(tmp_path / "w.pt")
        for key, want in (("dot", o_dot), ("sqnorm", o_sq), ("cosine", o_cos)):
            worst = assert_close_rel(got[key], want, rtol=RTOL_MOE, floor=1e-4 * float(want.abs().max()))
            print(f"{layout} {key}: max relative error {worst:.2e}")
        assert got["informative"].tolist() == o_nonzero.tolist()
