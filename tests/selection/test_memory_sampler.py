"""AlignmentMemorySampler: exploration, designed skip and draw rates (binomial bounds), exact
resume through a real torchdata StatefulDataLoader over a datasets.Dataset, determinism."""

import inspect
import io
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from torchdata.stateful_dataloader import StatefulDataLoader

from nemo_gradalign.config import ConfigError
from nemo_gradalign.selection.memory import ScoreMemory
from nemo_gradalign.selection.memory_policy import plan_step, weighted_without_replacement
from nemo_gradalign.selection.memory_sampler import (AlignmentMemorySampler, MemorySamplerConfig,
                                                     batch_problem_ids, memory_dataloader,
                                                     parse_memory_sampler)

REPO = Path(__file__).resolve().parents[2]


def hoeffding(trials: int, delta: float = 1e-9) -> float:
    """|observed rate − p| of `trials` independent Bernoulli(p) exceeds this with probability ≤ delta
    (Hoeffding: P(|X/N − p| ≥ ε) ≤ 2·exp(−2Nε²))."""
    return math.sqrt(math.log(2 / delta) / (2 * trials))


def feedback(ids, step):
    """Deterministic stand-in for the training pass: a cosine per problem, some zero gradients."""
    ids = np.asarray(ids)
    cos = 0.8 * np.sin(ids * 12.9898 + step * 78.233)
    return cos, (ids * 7 + step) % 5 == 0


def drive(loader, sampler, epoch, step, until, save_at=None):
    """grpo_train's loop: epochs of `for batch in loader`, feedback after each step, a checkpoint
    of the loader at step `save_at` (as grpo_train saves train_dataloader.pt)."""
    batches, saved = [], None
    while step < until:
        for batch in loader:
            ids = batch_problem_ids(batch)
            batches.append(ids)
            sampler.memory.record(ids, step, step // 3, *feedback(ids, step))
            step += 1
            if step == save_at:
                buf = io.BytesIO()
                torch.save(loader.state_dict(), buf)
                saved = (buf.getvalue(), epoch, step)
            if step >= until:
                return batches, saved
        epoch += 1
    return batches, saved


def make_loader(dataset, batch_size, seed=3):
    sampler = AlignmentMemorySampler(len(dataset), batch_size, MemorySamplerConfig(seed=seed))
    return memory_dataloader(dataset, sampler), sampler


@pytest.fixture(scope="module")
def dataset():
    return datasets.Dataset.from_dict({"idx": list(range(53)), "prompt": [f"problem {i}" for i in range(53)]})


def test_length_is_a_plain_epoch(dataset):
    loader, sampler = make_loader(dataset, 8)
    assert isinstance(loader, StatefulDataLoader) and loader.num_workers == 0 and loader.batch_size == 8
    assert len(sampler) == 6 * 8 and len(loader) == 53 // 8
    with pytest.raises(ValueError, match="memory_dataloader: the dataset has 53 problems, the sampler 54"):
        memory_dataloader(dataset, AlignmentMemorySampler(54, 8))


@pytest.mark.parametrize("save_at", [2, 6, 9])  # mid-epoch, after an epoch's last batch, in epoch 2
def test_resume_through_stateful_dataloader_is_exact(dataset, save_at):
    loader, sampler = make_loader(dataset, 8)
    reference, saved = drive(loader, sampler, 0, 0, until=20, save_at=save_at)
    blob, epoch, step = saved
    fresh_loader, fresh_sampler = make_loader(dataset, 8)
    fresh_loader.load_state_dict(torch.load(io.BytesIO(blob), weights_only=True))  # as load_dataloader_state
    resumed, _ = drive(fresh_loader, fresh_sampler, epoch, step, until=20)
    assert resumed == reference[save_at:]
    for key, value in sampler.memory.state_dict().items():
        other = fresh_sampler.memory.state_dict()[key]
        assert torch.equal(value, other) if isinstance(value, torch.Tensor) else value == other
    assert all(len(set(b)) == 8 for b in reference)  # one step never holds a problem twice


def test_unseen_problems_are_explored_first():
    sampler = AlignmentMemorySampler(50, 8)
    first = [sampler.next_step().problem_ids for _ in range(7)]  # ceil(50 / 8) steps
    explored = np.concatenate(first)[:50]
    assert sorted(explored.tolist()) == list(range(50))
    shared = AlignmentMemorySampler(50, 8, MemorySamplerConfig(explore_share=0.25))
    counts = [shared.next_step().explored for _ in range(30)]
    # step 0 has nothing seen to prefer, so unseen problems fill it; then ceil(0.25 * 8) a step
    assert counts[:22] == [8] + [2] * 21 and sum(counts) == 50


def synthetic_memory(groups, rng):
    """Problems 0..4k-1 in four groups of k: confidently misaligned (4 visits near −0.5), one zero
    visit after a good one, three zero visits, aligned (4 visits near +0.5)."""
    k = groups
    memory = ScoreMemory(4 * k)
    for visit in range(4):
        noise = 0.01 * rng.standard_normal(4 * k)
        cos = np.where(np.arange(4 * k) < k, -0.5, 0.5) + noise
        zero = np.zeros(4 * k, bool)
        if visit >= 1:
            zero[k:2 * k] = visit == 3
            zero[2 * k:3 * k] = True
        if visit == 0:
            zero[2 * k:3 * k] = False
        memory.record(np.arange(4 * k), visit, 0, cos, zero)
    return memory


# groups: misaligned, zero streak 1, zero streak 3, aligned. Misaligned: cap; streak s: min(cap, step·s)
@pytest.mark.parametrize("zero_skip_step,designed", [(0.5, [0.9, 0.5, 0.9, 0.0]),  # skip_cap 0.9
                                                     (0.0, [0.9, 0.0, 0.0, 0.0])])  # zero gradients kept
def test_skip_rates_are_the_designed_ones(zero_skip_step, designed):
    k, steps = 100, 200
    memory = synthetic_memory(k, np.random.default_rng(0))
    assert memory.zero_streak[k] == 1 and memory.zero_streak[2 * k] == 3
    cfg = MemorySamplerConfig(seed=5, zero_skip_step=zero_skip_step)
    sampler = AlignmentMemorySampler(4 * k, 40, cfg, memory)
    for _ in range(10):
        sampler.next_step()  # explores all 4k problems
    assert sampler.explore_cursor == 4 * k
    skips = np.zeros(4 * k)
    for _ in range(steps):
        skips[sampler.next_step().skipped] += 1
    for g, p in enumerate(designed):
        rate = skips[g * k:(g + 1) * k].sum() / (k * steps)
        assert abs(rate - p) <= hoeffding(k * steps), (g, rate, p)


def test_skipped_problems_come_back_at_the_designed_rate():
    """All kept seen problems fit in the batch (the rest is unseen), so a problem is in a batch
    exactly when it is not skipped: drawn at rate 1 − p, and every one within 300 steps
    (P(never) ≤ 0.9^300 ≈ 2e-14 each)."""
    k, steps, unseen = 50, 300, 5000
    memory = ScoreMemory(4 * k + unseen)
    small = synthetic_memory(k, np.random.default_rng(1))
    for name in ("visits", "scored", "last_step", "zero_streak", "generation", "weight", "mean", "m2"):
        getattr(memory, name)[:4 * k] = getattr(small, name)
    memory.latest_generation = 0
    knobs = MemorySamplerConfig(explore_share=0.05, zero_skip_step=0.5).knobs()
    batch = 4 * k + 10  # 4k seen + ceil(0.05 · 210) = 11 unseen slots
    drawn = np.zeros(4 * k)
    for step in range(steps):
        plan = plan_step(memory, knobs, np.arange(memory.num_problems), 4 * k, batch,
                         np.random.default_rng([9, step]))
        seen = plan.problem_ids[plan.problem_ids < 4 * k]
        drawn[seen] += 1
        assert plan.refilled_from_skipped == 0 and len(set(plan.problem_ids.tolist())) == batch
    for g, p in enumerate([0.9, 0.5, 0.9, 0.0]):
        rate = drawn[g * k:(g + 1) * k].sum() / (k * steps)
        assert abs(rate - (1 - p)) <= hoeffding(k * steps), (g, rate)
    assert (drawn > 0).all()


@pytest.mark.parametrize("weights, k", [([1.0, 2.0, 3.0, 4.0], 1), ([1.0, 2.0, 3.0, 4.0], 2)])
def test_weighted_draw_inclusion_matches_plackett_luce(weights, k):
    p = np.array(weights) / sum(weights)
    # P(i among the first k draws without replacement, P ∝ w): k=1: p_i; k=2: p_i + Σ_j≠i p_j p_i/(1−p_j)
    expected = p if k == 1 else np.array([p[i] + sum(p[j] * p[i] / (1 - p[j]) for j in range(4) if j != i)
                                          for i in range(4)])
    trials = 20000
    counts = np.zeros(4)
    for t in range(trials):
        picks = weighted_without_replacement(np.log(weights), k, np.random.default_rng([4, t]))
        assert len(set(picks.tolist())) == k
        counts[picks] += 1
    assert np.all(np.abs(counts / trials - expected) <= hoeffding(trials))


def run_steps(sampler, steps):
    out = []
    for step in range(steps):
        ids = sampler.next_step().problem_ids.tolist()
        out.append(ids)
        sampler.memory.record(ids, step, step // 4, *feedback(ids, step))
    return out


def test_same_seed_same_batches_on_every_rank_and_process():
    a, b = (AlignmentMemorySampler(97, 12, MemorySamplerConfig(seed=7)) for _ in range(2))
    ours = run_steps(a, 40)
    assert ours == run_steps(b, 40)
    assert ours != run_steps(AlignmentMemorySampler(97, 12, MemorySamplerConfig(seed=8)), 40)
    script = "\n".join(["import json", "import numpy as np",
                        "from nemo_gradalign.selection.memory_sampler import AlignmentMemorySampler, MemorySamplerConfig",
                        inspect.getsource(feedback), inspect.getsource(run_steps),
                        "print(json.dumps(run_steps(AlignmentMemorySampler(97, 12, MemorySamplerConfig(seed=7)), 40)))"])
    # the repository first, then whatever else this interpreter's packages need (the newest-stack
    # lane keeps megatron-core's wheels on PYTHONPATH)
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env = dict(os.environ, PYTHONPATH=path, PYTHONHASHSEED="123")
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == ours


def test_misaligned_problems_fade_from_the_batches():
    """A pool where a third of the problems point against G: after two epochs they are drawn far
    less than their share, yet still drawn now and then."""
    n, batch = 90, 10
    sampler = AlignmentMemorySampler(n, batch, MemorySamplerConfig(seed=1))
    rng = np.random.default_rng(2)
    late = []
    for step in range(60):
        ids = np.array(sampler.next_step().problem_ids)
        cos = np.where(ids < 30, -0.2, 0.2) + 0.15 * rng.standard_normal(batch)
        sampler.memory.record(ids, step, step // 5, cos, np.zeros(batch, bool))
        if step >= 30:
            late.extend(ids.tolist())
    share = np.mean(np.array(late) < 30)
    assert share < 1 / 3 / 2 and share > 0


def test_config_and_state_errors_name_the_field():
    with pytest.raises(ConfigError, match=r"gradalign.memory.skip_cap: Input should be less than 1 \(got 1.0\)"):
        parse_memory_sampler({"skip_cap": 1.0})
    with pytest.raises(ConfigError, match=r"gradalign.memory.temprature: Extra inputs are not permitted"):
        parse_memory_sampler({"temprature": 2.0})
    with pytest.raises(ValueError, match="the dataset has 5 problems, fewer than one step's batch_size=8"):
        AlignmentMemorySampler(5, 8)
    state = AlignmentMemorySampler(40, 8, MemorySamplerConfig(seed=1)).state_dict()
    with pytest.raises(ValueError, match=r"seed=1 was saved, this run has seed=2"):
        AlignmentMemorySampler(40, 8, MemorySamplerConfig(seed=2)).load_state_dict(state)
    with pytest.raises(ValueError, match=r"batch_size=8 was saved, this run has batch_size=4"):
        AlignmentMemorySampler(40, 4, MemorySamplerConfig(seed=1)).load_state_dict(state)
    grown = AlignmentMemorySampler(41, 8, MemorySamplerConfig(seed=1))
    grown.load_state_dict(state)  # rows known by number here: the 41st is a new problem
    assert grown.last_remap.summary() == "40 kept, 1 new (unseen), 0 dropped"


def test_sampler_for_a_million_problems_is_bounded():
    n = 1_000_000
    sampler = AlignmentMemorySampler(n, 512)
    # memory 44 B + exploration order 4 B + identity key 8 B
    assert sampler.memory.nbytes + sampler._order.nbytes + sampler.keys.nbytes == 56 * n
