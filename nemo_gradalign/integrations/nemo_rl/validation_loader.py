"""The refresh cadence of the validation gradient, carried by NeMo RL's own training loader.

Every ``refresh_every``-th training batch gets a per-row marker ``gradalign_refresh``; the rollout
wrapper (validation_rollouts.py) pops it and, on marked batches, generates the trusted validation
prompts in a call of their own. The batch upstream sees is unchanged: same rows, same order.

Resume: ``state_dict``/``load_state_dict`` are exactly the inner loader's (upstream writes
``train_dataloader.pt`` and, on resume, loads it into the raw StatefulDataLoader inside ``setup()``
before this wrapper exists). The wrapper's own counter lives in the checkpoint's
``gradalign/loader.json`` (``save_counter`` / ``load_counter``, called from the entry's checkpoint hook).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

REFRESH = "gradalign_refresh"  # per-row bool: generate the validation prompts with this batch
COUNTER_FILE = Path("gradalign") / "loader.json"


class WithValidationPrompts:
    def __init__(self, loader, refresh_every: int):
        self.loader, self.refresh_every = loader, refresh_every
        self.batches_seen = 0

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for batch in self.loader:
            due = self.batches_seen % self.refresh_every == 0
            batch[REFRESH] = torch.full((batch.size,), due, dtype=torch.bool)
            self.batches_seen += 1
            yield batch

    def state_dict(self) -> dict:
        return self.loader.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.loader.load_state_dict(state)

    def __getattr__(self, name):  # anything else NeMo RL asks of its loader
        return getattr(self.loader, name)


def save_counter(loader: WithValidationPrompts, checkpoint_dir) -> None:
    path = Path(checkpoint_dir) / COUNTER_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"batches_seen": loader.batches_seen}))


def load_counter(loader: WithValidationPrompts, checkpoint_dir) -> bool:
    """Restore the cadence from a checkpoint; False when it holds no GradAlign loader state."""
    path = Path(checkpoint_dir) / COUNTER_FILE
    if not path.is_file():
        return False
    loader.batches_seen = int(json.loads(path.read_text())["batches_seen"])
    return True
