"""The trusted mix without steering (gradalign.steer=false): the pool's share walks seeded passes,
every pool problem once a pass, the trusted share follows it in each step, and a loader stopped
mid-run resumes to the same batches through torchdata's real StatefulDataLoader."""

from __future__ import annotations

import pytest
import torch

from nemo_gradalign.config import ConfigError, MemorySamplerConfig, parse_gradalign
from nemo_gradalign.selection import problem_keys
from nemo_gradalign.selection.memory_sampler import memory_dataloader
from nemo_gradalign.selection.trusted_draw import TrustedDraw
from nemo_gradalign.selection.trusted_mix import TrustedMixSampler

POOL, PICKS, TRUSTED, PER_STEP = 10, 3, 4, 2


def sampler(seed: int = 5) -> TrustedMixSampler:
    draw = TrustedDraw(problem_keys.keys_of(f"t{j}".encode() for j in range(TRUSTED)), PER_STEP, seed)
    return TrustedMixSampler(POOL, PICKS, MemorySamplerConfig(seed=seed), trusted=draw)


def loader(mix: TrustedMixSampler):
    return memory_dataloader(list(range(POOL + TRUSTED)), mix, lambda rows: torch.tensor(rows))


def test_every_pool_problem_once_a_pass_and_the_trusted_share_after_it():
    mix = sampler()
    steps = [mix.next_step().problem_ids.tolist() + [POOL + j for j in mix.last_trusted] for _ in range(10)]
    pool = [i for step in steps for i in step[:PICKS]]
    assert all(i < POOL for i in pool) and all(POOL <= i for step in steps for i in step[PICKS:])
    assert sorted(pool[:POOL]) == sorted(pool[POOL:2 * POOL]) == list(range(POOL))  # passes, across step borders
    assert pool[:POOL] != pool[POOL:2 * POOL]  # each pass its own order
    assert [i - POOL for step in steps[:2] for i in step[PICKS:]] != [] and mix.memory.visits.sum() == 0


def test_a_loader_stopped_mid_run_resumes_to_the_same_batches():
    first = loader(sampler())
    batches, it = [], iter(first)
    for _ in range(2):  # one epoch is POOL // PICKS = 3 steps: stop inside the second
        for batch in it:
            batches.append(batch.tolist())
            if len(batches) == 4:
                break
        if len(batches) == 4:
            break
        it = iter(first)
    state = first.state_dict()
    later = [b.tolist() for b in it] + [b.tolist() for b in first]
    again = loader(sampler())
    again.load_state_dict(state)
    assert [b.tolist() for b in again] + [b.tolist() for b in again] == later
    other = loader(sampler(seed=6))
    other.load_state_dict(state)  # torchdata applies a loaded state when the loader is next iterated
    with pytest.raises(ValueError, match="seed=5 was saved, this run has seed=6"):
        next(iter(other))


def test_steer_false_needs_a_trusted_share_under_the_memory_schedule():
    assert not parse_gradalign({"steer": False, "schedule": "memory", "validation": {"train_share": 0.5}}).steer
    for block in ({"steer": False, "schedule": "memory"}, {"steer": False, "schedule": "step"}):
        with pytest.raises(ConfigError, match="steer=false trains a trusted share and steers nothing"):
            parse_gradalign(block)
    with pytest.raises(ValueError, match="needs a trusted share"):
        TrustedMixSampler(POOL, PICKS, MemorySamplerConfig())
