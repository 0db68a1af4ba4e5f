"""Brings the trusted validation prompts into NeMo RL's own generation: every ``refresh_every``-th
training batch carries them too, each row flagged ``gradalign_validation``. They are generated,
rewarded by their environment and reach the dynamic_sampling hook with the candidates, which
splits them out to rebuild the validation gradient (selection.split_validation_rows); upstream
never trains on them. Cost: the validation prompts' generation on refresh steps.

Stateful like the loader it wraps (``__iter__``, ``__len__``, ``state_dict``, ``load_state_dict``),
so NeMo RL's checkpoints resume it.
"""

from __future__ import annotations

import torch

from nemo_gradalign.integrations.nemo_rl.selection import VALIDATION_FLAG


def flagged(batch, value: bool):
    batch[VALIDATION_FLAG] = torch.full((batch.size,), value, dtype=torch.bool)
    return batch


class WithValidationPrompts:
    def __init__(self, loader, validation_batch, refresh_every: int, batched_data_dict_cls):
        self.loader, self.refresh_every = loader, refresh_every
        self.validation = flagged(validation_batch, True)
        self.cls = batched_data_dict_cls
        self.batches_seen = 0

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for batch in self.loader:
            batch = flagged(batch, False)
            if self.batches_seen % self.refresh_every == 0:
                batch = self.cls.from_batches([batch, self.validation])
            self.batches_seen += 1
            yield batch

    def state_dict(self) -> dict:
        return {"loader": self.loader.state_dict(), "gradalign_batches_seen": self.batches_seen}

    def load_state_dict(self, state: dict) -> None:
        if "loader" not in state:  # a checkpoint written without GradAlign
            self.loader.load_state_dict(state)
            return
        self.loader.load_state_dict(state["loader"])
        self.batches_seen = int(state["gradalign_batches_seen"])

    def __getattr__(self, name):  # anything else NeMo RL asks of its loader
        return getattr(self.loader, name)
