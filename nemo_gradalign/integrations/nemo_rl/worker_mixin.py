"""Methods the GradAlign policy worker adds to NeMo RL's Megatron policy worker.

A mixin over anything with ``self.model`` (the worker's DDP-wrapped megatron model), so the same
methods run in CI on our own megatron model and, combined with ``MegatronPolicyWorkerImpl`` in
``worker.py``, inside NeMo RL's Ray workers. The driver calls them through
``run_all_workers_sharded_data`` (data = this rank's whole groups) and
``run_all_workers_single_data`` (checkpoint save/load).

``train`` is upstream's own, unchanged unless the driver armed it (``gradalign_arm_in_pass``):
then upstream's ``train()`` runs inside our reading hooks and the trained groups' scores wait for
``gradalign_in_pass_scores`` (in_pass_worker.py).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist

from nemo_gradalign.config import GradAlignConfig, parse_gradalign
from nemo_gradalign.engine.rules import UnsupportedLayout
from nemo_gradalign.integrations.nemo_rl.in_pass_worker import ArmedRead
from nemo_gradalign.integrations.nemo_rl.worker_logic import GradAlignWorkerLogic

STATE_DIR = "gradalign"


def scoring_rows(cfg: GradAlignConfig, worker) -> GradAlignConfig:
    """``gradalign.max_rollouts_per_microbatch`` unset: the host's own ``policy.train_micro_batch_size``,
    so a scoring microbatch (one group, or several packed) is never larger than the training
    microbatches the user sized the GPUs for. Without that cap a group of 16 rollouts, or 128 packed
    rows, would run as one microbatch: its activations and fp32 logits (rows × length × vocab) can
    be tens of times a training microbatch's."""
    host = getattr(worker, "cfg", None)
    rows = host.get("train_micro_batch_size") if isinstance(host, dict) else None
    if cfg.max_rollouts_per_microbatch is not None or not rows:
        return cfg
    return cfg.model_copy(update={"max_rollouts_per_microbatch": int(rows)})


class GradAlignWorkerMixin:
    def _gradalign_logic(self, cfg: dict, loss: dict) -> GradAlignWorkerLogic:
        """Built at the first call with the driver's settings (the recipe's loss, config.scoring_loss)."""
        logic = getattr(self, "_gradalign", None)
        if logic is None:
            logic = self._gradalign = GradAlignWorkerLogic(self.model, scoring_rows(parse_gradalign(cfg), self), loss)
        return logic

    def gradalign_build_reference(self, *, data, group_size: int, step: int, cfg: dict, loss: dict) -> dict:
        return self._gradalign_logic(cfg, loss).build_reference(data, group_size, step)

    def gradalign_score(self, *, data, group_size: int, cfg: dict, loss: dict) -> dict:
        return self._gradalign_logic(cfg, loss).score(data, group_size)

    def gradalign_arm_in_pass(self, *, data, group_size: int, cfg: dict, loss: dict) -> str | None:
        """Read the next train() per group of ``data`` (this rank's groups); the reason if it cannot."""
        from megatron.core import parallel_state

        self._gradalign_armed = self._gradalign_read = None
        try:
            self._gradalign_armed = ArmedRead.arm(self._gradalign_logic(cfg, loss), self.model, data, group_size,
                                                  self.cfg, parallel_state.get_data_parallel_world_size())
        except UnsupportedLayout as err:
            return str(err)
        return None

    def gradalign_disarm_in_pass(self, *, data=None, cfg: dict, loss: dict) -> None:
        self._gradalign_armed = None

    def gradalign_in_pass_scores(self, *, data=None, cfg: dict, loss: dict) -> dict:
        """What the last armed train() read: gradalign_score's dict, or {"reason": why not}."""
        read, self._gradalign_read = getattr(self, "_gradalign_read", None), None
        return read if read is not None else {"reason": "no armed train() ran since the last call"}

    def train(self, data, loss_fn, eval_mode: bool = False, gbs: int | None = None, mbs: int | None = None,
              check_dim_skip_keys=None):
        """Upstream's train(); armed, inside the per-group reading hooks (never changes the step)."""
        extra = {} if check_dim_skip_keys is None else {"check_dim_skip_keys": check_dim_skip_keys}
        armed = None if eval_mode else getattr(self, "_gradalign_armed", None)
        if armed is None:  # an eval-mode call leaves the arming for the step's train()
            return super().train(data, loss_fn, eval_mode, gbs, mbs, **extra)
        self._gradalign_armed = None
        try:
            reading = armed.open(self.model, data, loss_fn, gbs, mbs)
        except UnsupportedLayout as err:
            self._gradalign_read = {"reason": str(err)}
            return super().train(data, loss_fn, eval_mode, gbs, mbs, **extra)
        with reading:
            result = super().train(data, loss_fn, eval_mode, gbs, mbs, **extra)
        self._gradalign_read = reading.scores()
        return result

    def gradalign_save(self, checkpoint_dir: str, cfg: dict, loss: dict) -> str:
        """Write this rank's validation gradient into NeMo RL's tmp checkpoint directory."""
        folder = Path(checkpoint_dir) / STATE_DIR
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"rank_{dist.get_rank() if dist.is_initialized() else 0}.pt"
        torch.save(self._gradalign_logic(cfg, loss).state_dict(), path)
        return str(path)

    def gradalign_load(self, checkpoint_dir: str, cfg: dict, loss: dict) -> bool:
        """Restore this rank's validation gradient; False when the checkpoint holds none."""
        path = Path(checkpoint_dir) / STATE_DIR / f"rank_{dist.get_rank() if dist.is_initialized() else 0}.pt"
        if not path.is_file():
            return False
        logic = self._gradalign_logic(cfg, loss)
        logic.load_state_dict(torch.load(path, weights_only=False))
        return logic.reference is not None
