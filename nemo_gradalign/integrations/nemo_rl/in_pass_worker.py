"""The worker's side of in-pass reading: each trained group's ⟨g, Ĝ⟩ and ‖g‖² read from the
backward that NeMo RL's Megatron worker ``train()`` runs anyway (megatron/in_pass.py explains
why the first pass of a step is g times the group's share of the loss).

The driver arms the next ``train()`` with the groups it believes this data-parallel rank trains
(the same sharded flat data ``gradalign_score`` gets: driver.shard_as_trained cuts it as
upstream's ``shard_by_batch_size(dp, batch_size=gbs)`` does). ``arm`` refuses, with a one-line
reason and before any pass, what the hooks cannot read under upstream's ``train()``: sequence
packing or dynamic batching (rows reordered or packed), a group split across optimizer steps, a
group split across microbatches without ``gradalign.in_pass_projection`` (with it, the split
groups' dots are exact and their squared norms projected: megatron/projected_read.py), layouts
``in_pass.layout_reason`` refuses. ``open`` runs at ``train()``: it checks the rows it is handed
are the armed groups and the loss is the one armed for, and returns the reading; the caller wraps
upstream's ``train()`` in it. A forward pre-hook on the model (ours) moves the reader to the next
microbatch: upstream's rows [m·mbs, (m+1)·mbs) (``make_microbatch_iterator``; global batch s is
rows [s·gbs/dp, (s+1)·gbs/dp)), every pipeline stage in order.

The share c_i of a group is what upstream's ClippedPGLossFn gives its rows: token-level loss
Σ mask / global_valid_toks, sequence-level Σ sample_mask / global_valid_seqs, both of the global
batch the group trains in, summed over the data-parallel group as ``process_global_batch`` does
(its ``+ 1e-8`` is below half an ulp of the float32 count for any count ≥ 1, so it rounds away; a
sequence-level row's inner mean over n_j + 1e-8 tokens is g's 1/n_j to 1e-8 relative, the bound
of that case). LossPostProcessor's ``· num_microbatches`` cancels megatron's
``/ num_microbatches``; the loss scale must be 1.

Which weights a read is against: the groups of optimizer step s of this ``train()`` are read at
the weights that step's backward runs at (after s earlier steps of the same call), each token
weighted by ρ = exp(log π − prev_logprobs) with upstream's clipping — the gradient that step
applies; G stays the one built before the call. In the first step ρ is 1 up to the rounding of
upstream's separate logprob pass (exactly 1 with ``loss_fn.force_on_policy_ratio: true``), so
what is read there is g_i to within max |ρ − 1| relative; later steps read the moved policy's
clipped gradient, as the trainer applies it, not g_i at the step's starting weights.
"""

from __future__ import annotations

import torch

from nemo_gradalign.engine.rules import UnsupportedLayout
from nemo_gradalign.integrations.nemo_rl.config import IN_PASS_LOSS_REFUSALS
from nemo_gradalign.integrations.nemo_rl.worker_logic import groups_from_batch
from nemo_gradalign.megatron.in_pass import InPassRead, layout_reason, microbatch_spans, shard_projections


def loss_fn_reason(loss_fn) -> str | None:
    """Why the loss's gradient is not Σ_i c_i g_i (None: it is), read off the loss object."""
    cfg = getattr(loss_fn, "cfg", None)
    for name, default, why in IN_PASS_LOSS_REFUSALS:
        value = getattr(loss_fn, name, getattr(cfg, name, default))
        if value not in (default, None, 0, 0.0, False):
            return f"loss_fn.{name}={value!r} {why}"
    return None


def policy_reason(policy_cfg: dict, rows: int, group_size: int, dp: int, projection: int | None = None) -> str | None:
    """Why upstream's train() on this rank's ``rows`` rows cannot be read per group (None: it can).
    Microbatches that split groups are read with projected norms (``projection``: k, else refused)."""
    get = lambda *path: _get(policy_cfg, path)
    for section in ("sequence_packing", "dynamic_batching"):
        if get(section, "enabled"):
            return f"policy.{section}.enabled=true reorders and packs the trained rows"
    if (get("megatron_cfg", "virtual_pipeline_model_parallel_size") or 1) > 1:
        return "policy.megatron_cfg.virtual_pipeline_model_parallel_size > 1 interleaves microbatches over chunks"
    if get("megatron_cfg", "use_fused_linear_logprobs"):
        return "policy.megatron_cfg.use_fused_linear_logprobs=true runs the output layer outside its forward"
    if get("draft", "enabled"):
        return "policy.draft.enabled=true trains a draft model in the same pass"
    gbs, mbs = int(get("train_global_batch_size")), int(get("train_micro_batch_size"))
    if (rows * dp) % gbs or gbs % dp:
        return (f"policy.train_global_batch_size={gbs} does not divide the step's {rows * dp} rows into equal "
                f"parts over {dp} data-parallel ranks: train() would leave rows out")
    local = gbs // dp
    if local % mbs:
        return (f"policy.train_micro_batch_size={mbs} does not divide the {local} rows a data-parallel rank "
                "trains per optimizer step")
    if local % group_size:
        return (f"policy.train_global_batch_size={gbs} gives each of {dp} data-parallel ranks {local} rows per "
                f"optimizer step, which splits groups of grpo.num_generations_per_prompt={group_size} across "
                "optimizer steps (a group's gradient would be read at two weights)")
    if mbs % group_size and projection is None:
        return (f"policy.train_micro_batch_size={mbs} splits groups of grpo.num_generations_per_prompt="
                f"{group_size} across microbatches and gradalign.in_pass_projection=null; set it to a multiple "
                "of the group size, or a projection dimension")
    return None


def mtp_reason(model) -> str | None:
    from megatron.core.utils import get_model_config

    layers = getattr(get_model_config(model), "mtp_num_layers", None)
    return f"mtp_num_layers={layers}: multi-token prediction adds its loss to the same pass" if layers else None


def _get(cfg, path):
    for key in path:
        cfg = cfg.get(key) if isinstance(cfg, dict) else getattr(cfg, key, None)
        if cfg is None:
            return None
    return cfg


class ArmedRead:
    """What ``gradalign_arm_in_pass`` leaves for the next ``train()``: the groups, the rows they
    came as, the microbatch size train() must use, the loss settings and the engine."""

    def __init__(self, logic, data: dict, group_size: int, policy_cfg: dict, dp: int):
        self.logic, self.group_size, self.dp = logic, group_size, dp
        self.ids, self.lengths = data["input_ids"], data["input_lengths"]
        self.groups = groups_from_batch(data["input_ids"], data["input_lengths"], data["token_mask"],
                                        data["total_reward"], group_size)
        self.gbs = int(_get(policy_cfg, ("train_global_batch_size",)))
        self.mbs = int(_get(policy_cfg, ("train_micro_batch_size",)))

    @classmethod
    def arm(cls, logic, model, data: dict, group_size: int, policy_cfg: dict, dp: int) -> "ArmedRead":
        """The armed read, or UnsupportedLayout naming what cannot be read (before any pass)."""
        reason = (layout_reason(model, logic.engine) or mtp_reason(model)
                  or policy_reason(policy_cfg, len(data["input_ids"]), group_size, dp, logic.cfg.in_pass_projection))
        if reason is None and (logic.reference is None or not logic.reference.ready):
            reason = "no validation gradient G has been built yet"
        if reason:
            raise UnsupportedLayout(reason)
        return cls(logic, data, group_size, policy_cfg, dp)

    def open(self, model, data, loss_fn, gbs: int | None, mbs: int | None) -> "TrainReading":
        """The reading of this train() call, or UnsupportedLayout (nothing installed yet)."""
        gbs, mbs = gbs or self.gbs, mbs or self.mbs
        if (gbs, mbs) != (self.gbs, self.mbs):
            raise UnsupportedLayout(f"train() was called with gbs={gbs}, mbs={mbs}; armed for "
                                    f"{self.gbs}, {self.mbs}")
        reason = loss_fn_reason(loss_fn)
        if reason is None and not self._same_rows(data):
            reason = ("the rows train() was handed are not the groups the driver armed (upstream sharded "
                      "the batch differently)")
        token_level = getattr(getattr(loss_fn, "loss_type", None), "name", "TOKEN_LEVEL") != "SEQUENCE_LEVEL"
        # one all-reduce over DP, on every rank whatever it found: no rank is left in a collective
        shares, refused = row_shares(data, token_level, self.dp, gbs // self.dp, next(model.parameters()).device,
                                     reason is not None)
        if refused:
            raise UnsupportedLayout(reason or "another data-parallel rank cannot read its rows")
        spans = microbatch_spans(self.groups, mbs, len(self.groups) * self.group_size // mbs)
        logic = self.logic
        refs = {id(p): r for p, r in zip(logic.engine.counted.params, logic.reference.buffers)}
        loss = logic.runner.loss
        read = InPassRead(logic.engine, model, self.groups, shares, spans, mbs, refs, loss.baseline,
                          loss.normalize_std, shard_projections(logic.cfg.in_pass_projection, logic.cfg.seed))
        return TrainReading(model, read, len(spans))

    def _same_rows(self, data) -> bool:
        ids, lengths = data["input_ids"], data["input_lengths"]
        if len(ids) != len(self.ids) or not torch.equal(lengths.cpu().long(), self.lengths.cpu().long()):
            return False
        width = int(lengths.max()) if len(lengths) else 0
        if ids.shape[1] < width or self.ids.shape[1] < width:
            return False
        inside = torch.arange(width).unsqueeze(0) < lengths.cpu().unsqueeze(1)
        return bool(((ids[:, :width].cpu() == self.ids[:, :width].cpu()) | ~inside).all())


def row_shares(data, token_level: bool, dp: int, local_gbs: int, device, refuse: bool) -> tuple[torch.Tensor, bool]:
    """[rows] float64: each row's share of the loss of the optimizer step it trains in (its masked
    tokens over that global batch's global_valid_toks, or its sample_mask over global_valid_seqs,
    summed over DP as ``process_global_batch`` does; rows [s·local_gbs, (s+1)·local_gbs) are step
    s), and whether any data-parallel rank ``refuse``s (one all-reduce carries both)."""
    sample = data["sample_mask"].double().cpu()
    if token_level:
        local = (data["token_mask"][:, 1:].double().cpu() * sample.unsqueeze(-1)).sum(1)
    else:
        local = sample
    n = len(local) // local_gbs  # upstream hands every rank the same number of rows
    steps, refuse = local[:n * local_gbs].reshape(n, local_gbs), refuse or n * local_gbs != len(local)
    total = torch.cat([steps.sum(1), torch.tensor([float(refuse)], dtype=torch.float64)]).to(device)
    if dp > 1:
        from megatron.core import parallel_state

        torch.distributed.all_reduce(total, group=parallel_state.get_data_parallel_group())
    total = total.cpu()
    count, refused = total[:-1].unsqueeze(1), float(total[-1])
    shares = torch.where(count > 0, steps / torch.where(count > 0, count, torch.ones_like(count)), 0.0)
    return shares.reshape(-1), refused > 0


class TrainReading:
    """Context manager around upstream's train(): the per-problem hooks, plus a forward pre-hook
    on the model that starts microbatch m before its forward (every pipeline stage in order)."""

    def __init__(self, model, read: InPassRead, n_microbatches: int):
        self.model, self.read, self.n_microbatches, self.seen = model, read, n_microbatches, 0

    def __enter__(self):
        self.read.__enter__()
        self._handle = self.model.register_forward_pre_hook(self._next)
        return self

    def _next(self, module, args):
        if self.seen >= self.n_microbatches:
            raise RuntimeError(f"in-pass reading: the model ran more than the {self.n_microbatches} "
                               "microbatch forwards of one global batch in train()")
        self.read.next_microbatch(self.seen)
        self.seen += 1

    def __exit__(self, *exc):
        self._handle.remove()
        return self.read.__exit__(*exc)

    def scores(self) -> dict[str, torch.Tensor]:
        """Per armed group, in order: dot, sqnorm, cosine, informative (as ``gradalign_score``), or
        {"reason": ...}. The model-parallel sum runs on every rank either way."""
        scores = self.read.scores()
        if self.seen != self.n_microbatches:
            return {"reason": f"{self.seen} microbatch forwards ran in train(), {self.n_microbatches} were expected"}
        return {"dot": scores.dot, "sqnorm": scores.sqnorm, "cosine": scores.cosine(),
                "informative": ~scores.zero_gradient}
