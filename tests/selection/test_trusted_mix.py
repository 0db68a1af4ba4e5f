"""The trusted mix without steering (gradalign.steer=false): the pool's share walks seeded passes,
every pool problem once a pass, the trusted share interleaved with it in each batch, and a loader
stopped mid-run resumes to the same batches through torchdata's real StatefulDataLoader — also
after Ray's serializer has carried it to another process, as async GRPO hands it to its collector."""

from __future__ import annotations

import pickle

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


def as_tensor(rows):  # module-level: the loader must pickle, as Ray pickles it for async GRPO
    return torch.tensor(rows)


def loader(mix: TrustedMixSampler):
    return memory_dataloader(list(range(POOL + TRUSTED)), mix, as_tensor)


def draw(source, n: int) -> list[list[int]]:
    """The next ``n`` batches, across epochs (one epoch is POOL // PICKS = 3 steps), as a for loop over
    the loader again and again (NeMo RL's collector wraps it in a cycling loader) would see them."""
    out = []
    while len(out) < n:
        out += [b.tolist() for _, b in zip(range(n - len(out)), source)]
    return out


def test_every_pool_problem_once_a_pass_and_the_trusted_share_after_it():
    mix = sampler()
    steps = [mix.next_step().problem_ids.tolist() + [POOL + j for j in mix.last_trusted] for _ in range(10)]
    pool = [i for step in steps for i in step[:PICKS]]
    assert all(i < POOL for i in pool) and all(POOL <= i for step in steps for i in step[PICKS:])
    assert sorted(pool[:POOL]) == sorted(pool[POOL:2 * POOL]) == list(range(POOL))  # passes, across step borders
    assert pool[:POOL] != pool[POOL:2 * POOL]  # each pass its own order
    assert [i - POOL for step in steps[:2] for i in step[PICKS:]] != [] and mix.memory.visits.sum() == 0


def test_every_prefix_of_a_batch_holds_the_trusted_share():
    """Async GRPO's collector, gap-filling a target, generates only a batch's first prompts."""
    batches = draw(loader(sampler()), 6)
    for batch in batches:
        assert len(batch) == PICKS + PER_STEP
        for k in range(1, len(batch) + 1):
            trusted = sum(i >= POOL for i in batch[:k])
            assert abs(trusted - k * PER_STEP / len(batch)) <= 0.5 + 1e-9, (batch, k)
    pool = [i for b in batches for i in b if i < POOL]
    assert sorted(pool[:POOL]) == list(range(POOL))  # still every pool problem once a pass


def test_the_loader_crosses_to_another_process_and_its_state_comes_back():
    """What async_grpo_train does: the loader goes to the collector actor (Ray pickles it), is drawn
    from there, and the checkpoint stores the actor's ``state_dict()``; a resumed run loads it."""
    here = loader(sampler())
    there = pickle.loads(pickle.dumps(here))
    it = iter(there)
    drawn = [next(it).tolist() for _ in range(2)]
    state = pickle.loads(pickle.dumps(there.state_dict()))  # the actor's reply to get_dataloader_state
    assert drawn == draw(here, 2)  # the same draw in either process
    later = [b.tolist() for b in it] + draw(there, 3)
    resumed = loader(sampler())
    resumed.load_state_dict(state)
    assert draw(resumed, 4) == later


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
