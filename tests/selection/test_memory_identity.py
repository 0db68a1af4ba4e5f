"""The score memory follows problems, not rows, and refuses states no run could have written.

The invariant (issue 28): the sampler's picks and memory are a function of the problems (their
keys) and their history, never of where a dataset puts them. So a run on a pool, saved, then
resumed on the same pool shuffled, picks at every step exactly the problems an uninterrupted run
on the shuffled pool picks, and ends with the same memory for every problem, bit for bit.
"""

import hashlib

import numpy as np
import pytest
import torch

from nemo_gradalign.selection.memory import ScoreMemory
from nemo_gradalign.selection.memory_sampler import AlignmentMemorySampler, MemorySamplerConfig
from nemo_gradalign.selection.problem_keys import keys_of

CONFIG = MemorySamplerConfig(seed=3, explore_share=0.25, zero_skip_step=0.3, confidence_z=0.5)
N, BATCH = 96, 8


def contents(n: int, start: int = 0) -> list[bytes]:
    return [f"problem {i}".encode() for i in range(start, start + n)]


def feedback(names: list[bytes], step: int):
    """A cosine and a zero-gradient flag per problem from its content alone (independent hash)."""
    u = np.array([int.from_bytes(hashlib.sha256(b + step.to_bytes(4, "little")).digest()[:4], "little")
                  for b in names]) / 2.0 ** 32
    return 0.8 * (2 * u - 1), u < 0.2


def run(sampler: AlignmentMemorySampler, names: list[bytes], start: int, stop: int) -> list[list[bytes]]:
    picked = []
    for step in range(start, stop):
        ids = sampler.next_step().problem_ids
        batch = [names[i] for i in ids]
        cos, zero = feedback(batch, step)
        sampler.memory.record(ids, step, step // 4, np.where(zero, np.nan, cos), zero)
        picked.append(batch)
    return picked


def by_content(sampler: AlignmentMemorySampler, names: list[bytes]) -> dict:
    memory = sampler.memory.state_dict()
    fields = [k for k, v in memory.items() if isinstance(v, torch.Tensor)]
    return {names[row]: tuple(memory[f][row].item() for f in fields) for row in range(len(names))}


def reload(state: dict) -> dict:
    import io

    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def test_a_shuffled_pool_resumes_as_an_uninterrupted_run_on_it():
    names = contents(N)
    shuffled = [names[i] for i in np.random.default_rng(7).permutation(N)]
    first = AlignmentMemorySampler(N, BATCH, CONFIG, keys=keys_of(names))
    before = run(first, names, 0, 17)  # two passes' worth of exploration, then preferences
    resumed = AlignmentMemorySampler(N, BATCH, CONFIG, keys=keys_of(shuffled))
    resumed.load_state_dict(reload(first.state_dict()))
    assert resumed.last_remap.summary() == f"{N} kept, 0 new (unseen), 0 dropped"
    after = run(resumed, shuffled, 17, 40)
    straight = AlignmentMemorySampler(N, BATCH, CONFIG, keys=keys_of(shuffled))
    assert run(straight, shuffled, 0, 40) == before + after
    assert by_content(resumed, shuffled) == by_content(straight, shuffled)
    assert len({n for batch in after for n in batch}) > BATCH  # the comparison covers real choices


def test_changed_pool_keeps_stayed_problems_and_says_how_many():
    names = contents(N)
    first = AlignmentMemorySampler(N, BATCH, CONFIG, keys=keys_of(names))
    run(first, names, 0, 20)
    old = by_content(first, names)
    changed = names[1:][::-1] + contents(3, start=1000)  # first dropped, reversed, three appended
    resumed = AlignmentMemorySampler(len(changed), BATCH, CONFIG, keys=keys_of(changed))
    resumed.load_state_dict(reload(first.state_dict()))
    assert resumed.last_remap.summary() == f"{N - 1} kept, 3 new (unseen), 1 dropped"
    now = by_content(resumed, changed)
    assert all(now[n] == old[n] for n in names[1:])
    assert all(now[n] == by_content(AlignmentMemorySampler(N, BATCH, CONFIG), names)[names[0]]
               for n in changed[-3:])  # unseen, as a fresh memory's rows
    assert resumed.step == first.step  # the step count (and each step's random stream) goes on
    explored = {changed[i] for i in resumed._order[:resumed.explore_cursor]}
    assert explored == {names[i] for i in first._order[:first.explore_cursor]} - {names[0]}
    later = run(resumed, changed, 20, 40)
    assert set(changed[-3:]) <= {n for batch in later for n in batch}  # new problems get explored


def damaged(field: str, value) -> dict:
    """A real run's state with one value of a problem that has cosines rewritten."""
    sampler = AlignmentMemorySampler(N, BATCH, CONFIG)
    run(sampler, contents(N), 0, 6)
    state = reload(sampler.state_dict())
    row = int(np.flatnonzero(state["memory"]["scored"].numpy() > 0)[0])
    state["memory"][field][row] = value
    return state


@pytest.mark.parametrize("field, value, message", [
    ("mean", float("nan"), r"mean\[\d+\]=nan is impossible \(not finite"),
    ("visits", -1, r"visits\[\d+\]=-1 is impossible \(a visit count below 0"),
    ("mean", 1e308, r"mean\[\d+\]=1e\+308 is impossible \(not a mean of cosines"),
    ("weight", -1.0, r"weight\[\d+\]=-1.0 is impossible \(outside \[1, scored\]"),
    ("m2", float("inf"), r"m2\[\d+\]=inf is impossible \(not finite"),
    ("scored", 99, r"scored\[\d+\]=99 is impossible \(cosine visits outside 0..visits"),
])
def test_an_impossible_memory_is_refused_naming_the_field(field, value, message):
    state = damaged(field, value)
    target = AlignmentMemorySampler(N, BATCH, CONFIG)
    before = target.state_dict()
    with pytest.raises(ValueError, match=message):
        target.load_state_dict(state)
    after = target.state_dict()  # nothing changed by a refused load
    assert all(torch.equal(before["memory"][k], after["memory"][k]) for k in before["memory"]
               if isinstance(before["memory"][k], torch.Tensor))


def test_visits_the_sampler_never_handed_out_are_refused():
    sampler = AlignmentMemorySampler(N, BATCH, CONFIG)
    run(sampler, contents(N), 0, 3)
    state = reload(sampler.state_dict())
    unexplored = int(sampler._order[-1])
    state["memory"]["visits"][unexplored] = 1
    state["memory"]["last_step"][unexplored] = 2
    with pytest.raises(ValueError, match="visits that the sampler never handed out"):
        AlignmentMemorySampler(N, BATCH, CONFIG).load_state_dict(state)
    state = reload(sampler.state_dict())
    state["order"][0] = state["order"][1]
    with pytest.raises(ValueError, match="order is not a permutation"):
        AlignmentMemorySampler(N, BATCH, CONFIG).load_state_dict(state)


def test_a_memory_a_run_wrote_passes_every_check():
    memory = ScoreMemory(50, generation_decay=0.5)
    rng = np.random.default_rng(0)
    for step in range(300):  # long enough for rounding to accumulate in mean, W and M2
        ids = rng.choice(50, 10, replace=False)
        zero = rng.random(10) < 0.2
        memory.record(ids, step, step // 7, np.where(zero, np.nan, rng.uniform(-1, 1, 10)), zero)
    ScoreMemory(50, generation_decay=0.5).load_state_dict(reload(memory.state_dict()))


def test_a_version_1_state_loads_on_unchanged_rows():
    names = contents(N)
    sampler = AlignmentMemorySampler(N, BATCH, CONFIG, keys=keys_of(names))
    run(sampler, names, 0, 5)
    legacy = AlignmentMemorySampler(N, BATCH, CONFIG)  # v1 explored a permutation of row numbers
    run(legacy, names, 0, 5)
    state = {k: v for k, v in reload(legacy.state_dict()).items() if k not in ("keys", "order")}
    state["version"] = 1
    restored = AlignmentMemorySampler(N, BATCH, CONFIG, keys=keys_of(names))
    restored.load_state_dict(state)
    assert np.array_equal(restored._order, legacy._order) and restored.explore_cursor == legacy.explore_cursor
