"""Methods the GradAlign policy worker adds to NeMo RL's Megatron policy worker.

A mixin over anything with ``self.model`` (the worker's DDP-wrapped megatron model), so the same
methods run in CI on our own megatron model and, combined with ``MegatronPolicyWorkerImpl`` in
``worker.py``, inside NeMo RL's Ray workers. The driver calls them through
``run_all_workers_sharded_data`` (data = this rank's whole groups) and
``run_all_workers_single_data`` (checkpoint save/load).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist

from nemo_gradalign.config import parse_gradalign
from nemo_gradalign.integrations.nemo_rl.worker_logic import GradAlignWorkerLogic

STATE_DIR = "gradalign"


class GradAlignWorkerMixin:
    def _gradalign_logic(self, cfg: dict, loss: dict) -> GradAlignWorkerLogic:
        """Built at the first call with the driver's settings (the recipe's loss, config.scoring_loss)."""
        logic = getattr(self, "_gradalign", None)
        if logic is None:
            logic = self._gradalign = GradAlignWorkerLogic(self.model, parse_gradalign(cfg), loss)
        return logic

    def gradalign_build_reference(self, *, data, group_size: int, step: int, cfg: dict, loss: dict) -> dict:
        return self._gradalign_logic(cfg, loss).build_reference(data, group_size, step)

    def gradalign_score(self, *, data, group_size: int, cfg: dict, loss: dict) -> dict:
        return self._gradalign_logic(cfg, loss).score(data, group_size)

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
