"""In-pass reading in the GradAlign worker's ``train()``: the worker mixin over a stand-in of NeMo
RL's Megatron worker whose train() is shaped like upstream's (twin_train.py: megatron-core's DDP
with upstream's options, megatron's Adam and config hooks, microbatches of consecutive rows, the
clipped surrogate over global_valid_toks) on a float64 GPT over real gloo ranks.

- ``arm → train → arm → train`` equals ``train → train`` bit for bit (weights and Adam state),
  with G built by a separate pass before the first step, as the driver does (float64 with grads in
  the params' dtype, float32 with upstream's fp32 grad reduction; overlapped reduce on and off);
- the first step's per-group dot, ‖g‖² and cosine equal the brute-force oracle (helpers.py,
  one autograd call per rollout, exact-fraction advantages) to 1e-9 relative, gathered over DP
  in rank order; zero-gradient groups are flagged as the oracle finds them;
- microbatches of 1–2 rows split the groups of 4: the dot stays exact, ‖g‖² is the documented
  projection of the oracle's gradient (to 1e-9), training bit-identical as above;
- what cannot be read is refused with its one-line reason, and the step trains as without.
"""

from __future__ import annotations

import pytest
import torch

from helpers import (assert_close_rel, oracle_parameter_gradients, oracle_projected_sqnorm, oracle_scores,
                     projected_shards, spawned_oracle)
from nemo_gradalign.integrations.nemo_rl.worker_mixin import GradAlignWorkerMixin
from nemo_gradalign.megatron import parallel
from nemo_gradalign.megatron.model import ModelSpec
from nemo_gradalign.megatron.policy import Policy
from test_worker_logic import CFG, G, LOSS, ORACLE_LOSS, POOL, VAL, as_nemo_rl_batch, fixed_k_problems
from twin_train import ClippedPGLoss, TwinPolicyWorker, nemo_rl_advantages

SPEC64 = ModelSpec(num_layers=2, hidden_size=32, num_attention_heads=4, vocab_size=32, dtype="float64")
POLICY = {"train_global_batch_size": len(POOL) * G, "train_micro_batch_size": 2 * G,
          "generation": {"temperature": LOSS["temperature"]}, "sequence_packing": {"enabled": False},
          "dynamic_batching": {"enabled": False}, "megatron_cfg": {}}
DDP_OPTIONS = [dict(overlap_grad_reduce=o, grad_reduce_in_fp32=False) for o in (True, False)]
# the bit-identity check also runs a float32 GPT with upstream's fp32 grad reduction
FP32_RUNS = [(SPEC64.model_copy(update={"dtype": "float32"}), dict(overlap_grad_reduce=o, grad_reduce_in_fp32=True))
             for o in (True, False)]
STEP2 = fixed_k_problems(3, len(POOL))
CFG_JSON = CFG.model_dump(mode="json")
EXACT = CFG.model_copy(update={"in_pass_projection": None}).model_dump(mode="json")


class ReadingWorker(GradAlignWorkerMixin, TwinPolicyWorker):
    """The GradAlign worker: our mixin over the (stand-in) upstream worker, as worker.py builds it."""


def _shard(problems, gbs: int | None = None) -> tuple[dict, dict]:
    """(arm data, train data) of this DP rank, cut as upstream's shard_by_batch_size(dp,
    batch_size=gbs) cuts train()'s batch: each chunk of gbs rows in dp equal parts, rank d taking
    part d of every chunk (gbs None: the whole batch, one contiguous part per rank)."""
    from megatron.core import parallel_state as ps

    flat = as_nemo_rl_batch(problems)
    rows, dp, d = len(flat["input_ids"]), ps.get_data_parallel_world_size(), ps.get_data_parallel_rank()
    gbs = gbs or rows
    mine = torch.cat([torch.arange(c + d * gbs // dp, c + (d + 1) * gbs // dp) for c in range(0, rows, gbs)])
    part = {k: v[mine] for k, v in flat.items()}
    width = part["input_ids"].shape[1]
    # masks in float32 as grpo_train's (loss_multiplier): the loss's global_valid_toks + 1e-8 is then
    # the float32 count itself, as upstream's
    train = {"input_ids": part["input_ids"], "input_lengths": part["input_lengths"],
             "token_mask": part["token_mask"].float(), "sample_mask": torch.ones(len(part["input_ids"])),
             "advantages": nemo_rl_advantages(part["total_reward"], G, width)}
    return part, train


def _train(worker, problems, read: bool, cfg: dict = CFG_JSON) -> dict | None:
    """One GRPO step as grpo_train runs it: (arm,) prev-logprobs pass (PP=1), train()."""
    arm, train = _shard(problems, worker.cfg["train_global_batch_size"])
    if read:
        assert worker.gradalign_arm_in_pass(data=arm, group_size=G, cfg=cfg, loss=LOSS) is None
    if worker.config.pipeline_model_parallel_size == 1:
        train["prev_logprobs"] = worker.get_logprobs(train)
    worker.train(train, ClippedPGLoss())
    return worker.gradalign_in_pass_scores(cfg=cfg, loss=LOSS) if read else None


def _reading_rank(rank, layout, out):
    from megatron.core import parallel_state as ps

    parallel.init_distributed(layout)
    same, first = [], None
    for spec, options in [(SPEC64, o) for o in DDP_OPTIONS] + FP32_RUNS:
        plain = TwinPolicyWorker(options, spec, POLICY)
        _train(plain, POOL, read=False)
        _train(plain, STEP2, read=False)
        reading = ReadingWorker(options, spec, POLICY)
        val, _ = _shard(VAL)
        reading.gradalign_build_reference(data=val, group_size=G, step=0, cfg=CFG_JSON, loss=LOSS)
        scores = [_train(reading, POOL, read=True), _train(reading, STEP2, read=True)]
        assert all("reason" not in s for s in scores), scores
        first = first or scores[0]
        same.append(all(torch.equal(a, b) for a, b in zip(plain.state(), reading.state())))
    gathered = [None] * ps.get_data_parallel_world_size()
    torch.distributed.all_gather_object(gathered, first, group=ps.get_data_parallel_group())
    flags = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(flags, same)
    if rank == 0:
        torch.save(({k: torch.cat([g[k] for g in gathered]) for k in first}, flags), out)


def _oracle_rank(rank, out):
    parallel.init_distributed(parallel.Layout())
    torch.save(oracle_scores(Policy(SPEC64).model.module, VAL, POOL, **ORACLE_LOSS), out)


@pytest.fixture(scope="module")
def oracle(tmp_path_factory):
    return spawned_oracle(tmp_path_factory, _oracle_rank)


@pytest.mark.parametrize("layout", [
    parallel.Layout(dp=2),  # the fast tier's case
    *(pytest.param(layout, marks=pytest.mark.slow) for layout in (
        parallel.Layout(tp=2), parallel.Layout(pp=2), parallel.Layout(tp=2, dp=2), parallel.Layout(pp=2, dp=2)))],
    ids=str)
def test_train_reads_the_oracles_scores_and_trains_bit_identically(layout, oracle, tmp_path):
    parallel.spawn(_reading_rank, layout.world_size, layout, str(tmp_path / "read.pt"))
    got, flags = torch.load(tmp_path / "read.pt")
    assert all(all(f) for f in flags), f"{layout}: training differs with reading on, per rank {flags}"
    o_dot, o_sq, o_cos, o_nonzero = oracle
    assert got["informative"].tolist() == o_nonzero.tolist()
    assert o_nonzero.any() and not o_nonzero.all()
    keep = o_nonzero
    worst = 0.0
    for name, want in (("dot", o_dot), ("sqnorm", o_sq), ("cosine", o_cos)):
        worst = max(worst, assert_close_rel(got[name][keep], want[keep], rtol=1e-9))
        assert torch.all(got[name][~keep] == 0)
    print(f"{layout}: in-pass (worker train) vs oracle, max relative error {worst:.2e}")


# microbatches that split groups (1 or 2 rows against groups of G = 4): dots exact, squared norms the
# documented projection of the oracle's gradient (a small k, so the check is of the sketch itself)
SPLIT_CFG = CFG.model_copy(update={"in_pass_projection": 4, "seed": 11}).model_dump(mode="json")


def _split_rank(rank, layout, mbs, out):
    parallel.init_distributed(layout)
    policy, same, first = {**POLICY, "train_micro_batch_size": mbs}, [], None
    for options in DDP_OPTIONS:
        plain = TwinPolicyWorker(options, SPEC64, policy)
        _train(plain, POOL, read=False)
        _train(plain, STEP2, read=False)
        reading = ReadingWorker(options, SPEC64, policy)
        reading.gradalign_build_reference(data=_shard(VAL)[0], group_size=G, step=0, cfg=SPLIT_CFG, loss=LOSS)
        scores = [_train(reading, POOL, read=True, cfg=SPLIT_CFG), _train(reading, STEP2, read=True, cfg=SPLIT_CFG)]
        assert all("reason" not in s for s in scores), scores
        first = first or scores[0]
        same.append(all(torch.equal(a, b) for a, b in zip(plain.state(), reading.state())))
    projected = projected_shards(reading.model, reading._gradalign.engine.counted.params)
    found = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(found, (first, same, projected))
    if rank == 0:
        torch.save(found, out)


def _split_oracle_rank(rank, out):
    parallel.init_distributed(parallel.Layout())
    model = Policy(SPEC64).model.module
    torch.save((oracle_scores(model, VAL, POOL, **ORACLE_LOSS), oracle_parameter_gradients(model, POOL, **ORACLE_LOSS)),
               out)


@pytest.mark.parametrize("layout, mbs", [
    (parallel.Layout(dp=2), 2),
    *(pytest.param(layout, mbs, marks=pytest.mark.slow) for layout, mbs in (
        (parallel.Layout(tp=2), 1), (parallel.Layout(pp=2), 2), (parallel.Layout(tp=2, dp=2), 1)))], ids=str)
def test_train_reads_groups_split_across_microbatches(layout, mbs, tmp_path, tmp_path_factory):
    parallel.spawn(_split_rank, layout.world_size, layout, mbs, str(tmp_path / "read.pt"))
    parallel.spawn(_split_oracle_rank, 1, str(tmp_path / "oracle.pt"))
    ranks = torch.load(tmp_path / "read.pt")
    (o_dot, _, _, o_nonzero), grads = torch.load(tmp_path / "oracle.pt")
    assert all(all(same) for _, same, _ in ranks), f"{layout}: training differs with reading on"
    dp_ranks = sorted({r[2][0][3] for r in ranks})
    got = {k: torch.cat([next(r[0] for r in ranks if r[2][0][3] == d and r[2][0][0] == 0 and r[2][0][2] == 0)[k]
                         for d in dp_ranks]) for k in ("dot", "sqnorm", "informative")}
    assert got["informative"].tolist() == o_nonzero.tolist() and o_nonzero.any() and not o_nonzero.all()
    keep = o_nonzero
    want_sq = torch.tensor([oracle_projected_sqnorm(g, [r[2] for r in ranks], 4, 11) for g in grads],
                           dtype=torch.float64)
    worst = max(assert_close_rel(got["dot"][keep], o_dot[keep], rtol=1e-9),
                assert_close_rel(got["sqnorm"][keep], want_sq[keep], rtol=1e-9))
    print(f"{layout}, {mbs} rows per microbatch: split groups read in the worker's train(), max relative error "
          f"{worst:.2e} (dot exact, squared norm projected at k=4x4)")


def _refusal_rank(rank, out):
    parallel.init_distributed(parallel.Layout())
    worker = ReadingWorker(DDP_OPTIONS[1], SPEC64, POLICY)
    arm, train = _shard(POOL)
    kw = dict(group_size=G, cfg=CFG_JSON, loss=LOSS)
    found = {"no_reference": worker.gradalign_arm_in_pass(data=arm, **kw)}
    worker.gradalign_build_reference(data=_shard(VAL)[0], step=0, **kw)
    for name, change in (("packing", {"sequence_packing": {"enabled": True}}),
                         ("dynamic", {"dynamic_batching": {"enabled": True}}),
                         ("virtual", {"megatron_cfg": {"virtual_pipeline_model_parallel_size": 2}}),
                         ("split", {"train_micro_batch_size": G // 2}),  # read, with projected norms
                         ("uneven", {"train_micro_batch_size": 3}),
                         ("two_steps", {"train_global_batch_size": len(POOL) * G // 2}),  # read
                         ("leftover", {"train_global_batch_size": 12}),
                         ("step_splits", {"train_global_batch_size": 2, "train_micro_batch_size": 2})):
        worker.cfg = {**POLICY, **change}
        found[name] = worker.gradalign_arm_in_pass(data=arm, **kw)
    worker.cfg = POLICY
    exact = ReadingWorker(DDP_OPTIONS[1], SPEC64, {**POLICY, "train_micro_batch_size": G // 2})
    exact.gradalign_build_reference(data=_shard(VAL)[0], step=0, **{**kw, "cfg": EXACT})
    found["split_exact_only"] = exact.gradalign_arm_in_pass(data=arm, **{**kw, "cfg": EXACT})
    worker.model.module.config.hidden_dropout = 0.1
    found["dropout"] = worker.gradalign_arm_in_pass(data=arm, **kw)
    worker.model.module.config.hidden_dropout = 0.0
    worker.config.mtp_num_layers = 1
    found["mtp"] = worker.gradalign_arm_in_pass(data=arm, **kw)
    worker.config.mtp_num_layers = None
    scale_loss, worker.config.grad_scale_func = worker.config.grad_scale_func, lambda loss: loss * 4.0  # fp16's
    found["loss_scale"] = worker.gradalign_arm_in_pass(data=arm, **kw)
    worker.config.grad_scale_func = scale_loss  # megatron's Adam: a constant 1, read through
    before = [t.clone() for t in worker.state()]
    for name, loss, data in (("kl", ClippedPGLoss(reference_policy_kl_penalty=0.01), train),
                             ("rows", ClippedPGLoss(), _shard(STEP2)[1])):
        assert worker.gradalign_arm_in_pass(data=arm, **kw) is None
        data = {**data, "prev_logprobs": worker.get_logprobs(data)}
        worker.train(data, loss)
        found[name] = worker.gradalign_in_pass_scores(cfg=CFG_JSON, loss=LOSS).get("reason")
    found["trained"] = not all(torch.equal(a, b) for a, b in zip(before, worker.state()))
    found["unarmed"] = worker.gradalign_in_pass_scores(cfg=CFG_JSON, loss=LOSS).get("reason")
    torch.save(found, out)


def test_what_cannot_be_read_is_refused_with_its_reason(tmp_path):
    parallel.spawn(_refusal_rank, 1, str(tmp_path / "refusals.pt"))
    found = torch.load(tmp_path / "refusals.pt")
    assert found.pop("trained")  # refused reads still train
    assert found == {
        "no_reference": "no validation gradient G has been built yet",
        "packing": "policy.sequence_packing.enabled=true reorders and packs the trained rows",
        "dynamic": "policy.dynamic_batching.enabled=true reorders and packs the trained rows",
        "virtual": "policy.megatron_cfg.virtual_pipeline_model_parallel_size > 1 interleaves microbatches over "
                   "chunks",
        "split": None,
        "split_exact_only": "policy.train_micro_batch_size=2 splits groups of grpo.num_generations_per_prompt=4 across "
                 "microbatches and gradalign.in_pass_projection=null; set it to a multiple of the group size, or a "
                 "projection dimension",
        "uneven": "policy.train_micro_batch_size=3 does not divide the 32 rows a data-parallel rank trains per "
                  "optimizer step",
        "two_steps": None,
        "leftover": "policy.train_global_batch_size=12 does not divide the step's 32 rows into equal parts over 1 "
                    "data-parallel ranks: train() would leave rows out",
        "step_splits": "policy.train_global_batch_size=2 gives each of 1 data-parallel ranks 2 rows per optimizer "
                       "step, which splits groups of grpo.num_generations_per_prompt=4 across optimizer steps (a "
                       "group's gradient would be read at two weights)",
        "dropout": "dropout (hidden_dropout=0.1, attention_dropout=0.0): the training pass's gradient is not g_i",
        "mtp": "mtp_num_layers=1: multi-token prediction adds its loss to the same pass",
        "loss_scale": "a loss scale of 4.0 (config.grad_scale_func) multiplies the training pass's gradients",
        "kl": "loss_fn.reference_policy_kl_penalty=0.01 adds the KL penalty's gradient to every group's gradient",
        "rows": "the rows train() was handed are not the groups the driver armed (upstream sharded the batch "
                "differently)",
        "unarmed": "no armed train() ran since the last call"}


def test_train_override_has_upstreams_exact_signature():
    """Our ``train`` replaces upstream's on the worker class: same parameters, same defaults
    (read from the NeMo RL checkout's source; its worker module needs Megatron-Bridge to import)."""
    import ast
    import inspect
    import os
    from pathlib import Path

    root = os.environ.get("NEMO_RL_ROOT")
    source = Path(root or "-") / "nemo_rl/models/policy/workers/megatron_policy_worker.py"
    if not source.is_file():
        pytest.skip("NEMO_RL_ROOT (a NeMo RL checkout) not set")
    tree = ast.parse(source.read_text())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "MegatronPolicyWorkerImpl")
    train = next(n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == "train")
    names = [a.arg for a in train.args.args]
    defaults = [ast.literal_eval(d) for d in train.args.defaults]
    ours = inspect.signature(GradAlignWorkerMixin.train).parameters.values()
    assert [p.name for p in ours] == names
    assert [p.default for p in ours if p.default is not inspect.Parameter.empty] == defaults
