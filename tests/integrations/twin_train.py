"""A stand-in for NeMo RL's Megatron policy worker as far as ``train()`` goes (main 7ea279a,
``MegatronPolicyWorkerImpl.train`` and what it calls), on megatron-core's real parts (the Host of
test_worker_twin: DDP with upstream's options, megatron's Adam, the config hooks):

- ``local_gbs = gbs // dp`` rows per global batch, ``total rows // gbs`` optimizer steps;
- ``process_global_batch``: global_valid_seqs / global_valid_toks = Σ sample_mask and
  Σ token_mask[:, 1:]·sample_mask, all-reduced over DP;
- ``make_microbatch_iterator(mbs)``: consecutive rows; megatron's forward_backward_func over them;
  logits divided by the generation temperature; the loss (ClippedPGLossFn's token-level clipped
  surrogate with ρ = exp(logπ − prev_logprobs), KL penalty 0) multiplied by num_microbatches to
  undo megatron's averaging (LossPostProcessor);
- zero_grad_buffer + zero_grad before, optimizer.step() after each global batch.

``get_logprobs`` plays upstream's prev-logprob pass (a no-grad forward, PP=1), so ρ = 1 up to
rounding; without prev_logprobs the loss takes upstream's ``force_on_policy_ratio`` ratio.
"""

from __future__ import annotations

import enum

import torch

from nemo_gradalign.megatron import cpu_shim
from nemo_gradalign.megatron.logprobs import vocab_parallel_logprobs
from nemo_gradalign.megatron.step import causal_mask
from test_worker_twin import Host


class LossType(enum.Enum):  # upstream's nemo_rl.algorithms.loss.interfaces.LossType
    TOKEN_LEVEL = "token_level"
    SEQUENCE_LEVEL = "sequence_level"


class ClippedPGLoss:
    """ClippedPGLossFn's attributes the reader looks at, and its token-level loss."""

    loss_type = LossType.TOKEN_LEVEL

    def __init__(self, ratio_clip: float = 0.2, reference_policy_kl_penalty: float = 0.0):
        self.ratio_clip, self.reference_policy_kl_penalty = ratio_clip, reference_policy_kl_penalty

    def __call__(self, logprobs, data, global_valid_seqs, global_valid_toks):
        mask = data["token_mask"][:, 1:] * data["sample_mask"].unsqueeze(-1)
        adv = data["advantages"][:, 1:]
        if "prev_logprobs" in data:
            ratio = torch.exp(logprobs - data["prev_logprobs"][:, 1:])
            clipped = ratio.clamp(1 - self.ratio_clip, 1 + self.ratio_clip)
        else:  # force_on_policy_ratio: exp(logπ − logπ.detach()) = 1, unclamped
            ratio = clipped = torch.exp(logprobs - logprobs.detach())
        per_token = torch.max(-adv * ratio, -adv * clipped)
        return (per_token * mask).sum() / (global_valid_toks + 1e-8)


def nemo_rl_advantages(rewards: torch.Tensor, group_size: int, width: int) -> torch.Tensor:
    """[rows, width]: leave-one-out baseline, divided by the leave-one-out std + 1e-6 where it is
    positive (grpo.use_leave_one_out_baseline + normalize_rewards), broadcast over tokens."""
    r = rewards.double().reshape(-1, group_size)
    others = (r.sum(1, keepdim=True) - r) / (group_size - 1)
    sq = ((r.unsqueeze(1) - others.unsqueeze(2)) ** 2)
    eye = torch.eye(group_size, dtype=torch.bool).unsqueeze(0)
    std = (sq.masked_fill(eye, 0).sum(2) / (group_size - 2)).sqrt() if group_size > 2 else torch.zeros_like(r)
    adv = torch.where(std > 0, (r - others) / (std + 1e-6), r - others)
    return adv.reshape(-1, 1).expand(-1, width).contiguous()


class TwinPolicyWorker(Host):
    """What upstream's worker holds (``self.model``, ``self.optimizer``, ``self.cfg``) and its train()."""

    def __init__(self, ddp_options: dict, spec, policy_cfg: dict):
        super().__init__(ddp_options, spec)
        self.cfg = policy_cfg

    def _forward(self, model, rows: dict) -> torch.Tensor:
        ids = rows["input_ids"]
        width = ids.shape[1]
        # logits [b, s, V/tp] on the last stage, hidden states on the others
        return model(ids, torch.arange(width).expand(len(ids), -1), causal_mask(width, ids.device))

    def get_logprobs(self, data: dict) -> torch.Tensor:
        """[rows, width]: log π of token t at position t (0 at t = 0), without grad (PP=1 only)."""
        with torch.no_grad():
            logits = self._forward(self.model, data)
            lp = vocab_parallel_logprobs(logits[:, :-1], data["input_ids"][:, 1:], self._temperature())
        return torch.cat([torch.zeros_like(lp[:, :1]), lp], 1)

    def _temperature(self) -> float:
        return float(self.cfg["generation"]["temperature"])

    def train(self, data, loss_fn, eval_mode: bool = False, gbs=None, mbs=None, check_dim_skip_keys=None):
        from megatron.core import parallel_state as ps
        from megatron.core.pipeline_parallel import get_forward_backward_func

        gbs, mbs = gbs or self.cfg["train_global_batch_size"], mbs or self.cfg["train_micro_batch_size"]
        dp_group = ps.get_data_parallel_group()
        local_gbs = gbs // ps.get_data_parallel_world_size()
        total = torch.tensor(len(data["input_ids"]))
        torch.distributed.all_reduce(total, group=dp_group)
        losses = []
        for gb in range(int(total) // gbs):
            batch = {k: v[gb * local_gbs:(gb + 1) * local_gbs] for k, v in data.items()}
            valid = torch.tensor([batch["sample_mask"].sum(), (batch["token_mask"][:, 1:] *
                                                               batch["sample_mask"].unsqueeze(-1)).sum()])
            torch.distributed.all_reduce(valid, group=dp_group)
            n_mb = local_gbs // mbs
            micro = iter([{k: v[m * mbs:(m + 1) * mbs] for k, v in batch.items()} for m in range(n_mb)])

            def forward_step(iterator, model):
                rows = next(iterator)
                out = self._forward(model, rows)

                def loss(output):
                    lp = vocab_parallel_logprobs(output[:, :-1], rows["input_ids"][:, 1:], self._temperature())
                    value = loss_fn(lp, rows, valid[0], valid[1])
                    return value * n_mb, {"loss": value.detach()}
                return out, loss

            self.model.zero_grad_buffer()
            self.optimizer.zero_grad()
            with cpu_shim.device_context():
                out = get_forward_backward_func()(
                    forward_step_func=forward_step, data_iterator=micro, model=[self.model],
                    num_microbatches=n_mb, seq_length=batch["input_ids"].shape[1], micro_batch_size=mbs,
                    forward_only=eval_mode)
                grad_norm = self.optimizer.step()[1] if not eval_mode else 0.0
            losses += [o["loss"] for o in out]
        # upstream's keys: the loss, the last step's grad norm, the per-microbatch metrics
        return {"global_loss": torch.stack(losses).sum() if losses else None, "grad_norm": torch.tensor([grad_norm or 0.0]),
                "all_mb_metrics": {"loss": [float(x) for x in losses]}}
