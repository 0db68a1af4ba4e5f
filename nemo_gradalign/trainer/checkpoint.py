"""Checkpoints in NeMo RL's layout: every rank writes into ``tmp_step_N/``, rank 0 renames it to
``step_N/`` (atomic), keeps the latest plus the ``keep_top_k`` best by ``metric_name``.

A kill at any moment leaves either a complete ``step_N/`` or a ``tmp_step_N/`` that resume
ignores, so a failure never corrupts the checkpoint a run resumes from. A ``step_N/`` without a
readable ``training_info.json`` (written last, before the rename) is not a checkpoint: discovery,
resume and pruning ignore it. Components are Stateful
(``state_dict``/``load_state_dict``); each is stored per rank as ``<name>/rank_<r>.pt``.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import torch
import torch.distributed as dist

from nemo_gradalign.trainer.checkpoint_files import load_component

_STEP = re.compile(r"^step_(\d+)$")


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def step_folders(root: Path) -> list[tuple[int, Path]]:
    """(N, ``step_N/``) under ``root``, oldest first, complete or not (NeMo RL orders them so too)."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted((int(m.group(1)), p) for p in root.iterdir() if (m := _STEP.match(p.name)))


def read_info(path: Path) -> dict | None:
    """A checkpoint's training_info.json, or None when the folder is not a complete checkpoint."""
    try:
        info = json.loads((Path(path) / "training_info.json").read_text())
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


class Stateful:
    """Adapts a (state_dict, load_state_dict) pair of callables to the Stateful protocol."""

    def __init__(self, get, put):
        self.state_dict, self.load_state_dict = get, put


class CheckpointManager:
    def __init__(self, checkpoint_dir: str, keep_top_k: int, metric_name: str):
        self.root = Path(checkpoint_dir)
        self.keep_top_k, self.metric_name = keep_top_k, metric_name

    def save(self, step: int, components: dict, training_info: dict, config: dict | None = None,
             extra: dict[str, dict] | None = None) -> Path:
        """``extra``: file name -> JSON content, written by rank 0 into the checkpoint."""
        tmp, final = self.root / f"tmp_step_{step}", self.root / f"step_{step}"
        if _rank() == 0:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        _barrier()
        for name, component in components.items():
            folder = tmp / name
            folder.mkdir(parents=True, exist_ok=True)
            torch.save(component.state_dict(), folder / f"rank_{_rank()}.pt")
        _barrier()
        if _rank() == 0:
            (tmp / "training_info.json").write_text(json.dumps({"step": step, **training_info}, indent=1))
            for name, content in (extra or {}).items():
                (tmp / name).write_text(json.dumps(content, indent=1))
            if config is not None:
                import yaml

                (tmp / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
            if final.exists():
                shutil.rmtree(final)
            tmp.rename(final)
            self._prune()
        _barrier()
        return final

    def _step_folders(self) -> list[tuple[int, Path]]:
        return step_folders(self.root)

    def checkpoints(self) -> list[tuple[int, Path]]:
        """Complete checkpoints, oldest first."""
        return [(step, p) for step, p in self._step_folders() if read_info(p) is not None]

    def incomplete(self) -> list[Path]:
        """``step_N/`` folders that are not checkpoints, and interrupted ``tmp_step_N/`` saves."""
        stray = [p for _, p in self._step_folders() if read_info(p) is None]
        return stray + (sorted(self.root.glob("tmp_step_*")) if self.root.is_dir() else [])

    def latest(self) -> Path | None:
        found = self.checkpoints()
        return found[-1][1] if found else None

    def load(self, path: Path, components: dict) -> dict:
        for name, component in components.items():
            file = Path(path) / name / f"rank_{_rank()}.pt"
            if not file.is_file():
                raise FileNotFoundError(f"checkpoint {path} has no {name}/rank_{_rank()}.pt "
                                        "(was it written with a different number of ranks?)")
            load_component(file, component)
        return json.loads((Path(path) / "training_info.json").read_text())

    def _prune(self) -> None:
        found = self.checkpoints()
        if len(found) <= self.keep_top_k:
            return
        latest = found[-1][1]

        def metric(path: Path) -> float:
            value = (read_info(path) or {}).get(self.metric_name)
            return float("-inf") if value is None else float(value)

        best = sorted((p for _, p in found), key=metric, reverse=True)[: self.keep_top_k]
        for _, path in found:
            if path != latest and path not in best:
                shutil.rmtree(path)
