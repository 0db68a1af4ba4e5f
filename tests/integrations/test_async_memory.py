"""The steered memory sampler in async GRPO, on real Ray: the loader is carried by Ray's serializer
into a collector actor that iterates it (as upstream's AsyncTrajectoryCollector does), each batch is
decided by the MemoryService actor when the collector draws it, the driver's feedback goes through
upstream's estimator hook (``compute_advantage(repeated_batch=...)``) into the same memory, and a
checkpoint taken from the collector's loader (upstream's ``get_dataloader_state``) resumes a fresh
run to the same batches and the same memory, through torchdata's real StatefulDataLoader.

The workers' scoring is outside this test (test_memory_feedback.py runs it on a real megatron GPT):
``statistics`` here returns fixed per-group numbers so the memory's content can be checked.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from nemo_gradalign.config import MemorySamplerConfig, parse_gradalign
from nemo_gradalign.engine.scorer import ProblemStats
from nemo_gradalign.integrations.nemo_rl import async_memory
from nemo_gradalign.selection import problem_keys
from nemo_gradalign.selection.trusted_draw import TrustedDraw

ray = pytest.importorskip("ray")

POOL, PICKS, TRUSTED, PER_STEP, G = 36, 3, 4, 2, 2  # 12 steps an epoch
CFG = parse_gradalign({"enabled": True, "schedule": "memory", "seed": 3, "validation": {"train_share": 0.4},
                       "memory": {"explore_share": 0.5, "zero_skip_step": 0.5}})
MASTER = {"grpo": {"num_generations_per_prompt": G}}


@pytest.fixture(scope="module")
def ray_local():
    here = str(Path(__file__).parent)  # the actors unpickle this module's collate function and classes
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join([here, os.environ.get("PYTHONPATH", "")])}})
    yield
    ray.shutdown()


def as_tensor(rows):  # module level: Ray pickles the loader's collate function with it
    return torch.tensor(rows)


class UpstreamLoader:
    """What async_memory_loader reads of setup()'s loader: its dataset and batch size."""

    def __init__(self):
        self.dataset, self.batch_size = list(range(POOL)), PICKS + PER_STEP


@ray.remote(num_cpus=0)
class Collector:
    """upstream's collector's use of the loader: one ``for batch in dataloader`` (async GRPO hands
    it the loader itself; the run ends when it is exhausted), and its state."""

    def __init__(self, loader):
        self.loader, self.batches = loader, iter(loader)

    def draw(self, n: int) -> list[list[int]]:
        return [next(self.batches).tolist() for _ in range(n)]

    def get_dataloader_state(self) -> dict:
        return self.loader.state_dict()


def _run(checkpoint_dir=None, load_state=None):
    draw = TrustedDraw(problem_keys.keys_of(f"t{j}".encode() for j in range(TRUSTED)), PER_STEP, CFG.memory.seed)
    keys = problem_keys.keys_of(f"p{i}".encode() for i in range(POOL))
    return async_memory.async_memory_loader(UpstreamLoader(), CFG, as_tensor, checkpoint_dir=checkpoint_dir,
                                            load_state=load_state, keys=keys, trusted=draw,
                                            rows=list(range(POOL + TRUSTED)))


class Batch(dict):
    """NeMo RL's BatchedDataDict as the feedback reads it (rows, ``idx``, ``select_indices``)."""

    def select_indices(self, rows):
        return Batch({k: v[rows] for k, v in self.items()})


def _trained(rows: list[int]) -> Batch:
    """The repeated batch of one trained step: G rows per prompt; every pool problem with an odd
    index has rewards that do not vary (a zero gradient), the rest do."""
    idx = torch.tensor([i for i in rows for _ in range(G)])
    reward = torch.tensor([float(r % G) if (i >= POOL or i % 2 == 0) else 1.0 for i in rows for r in range(G)])
    return Batch({"idx": idx, "total_reward": reward})


def _statistics(batch, master_config, validation):
    groups = batch["idx"].reshape(-1, G)[:, 0]
    varies = batch["total_reward"].reshape(-1, G).std(1) > 0
    dot = torch.where(varies, 0.01 * (groups.double() + 1), torch.zeros(len(groups), dtype=torch.float64))
    return ProblemStats(dot, torch.where(varies, 1.0, 0.0).double(), varies), varies, varies.float()


class UpstreamEstimator:
    last_metrics = {"upstream/metric": 1.0}

    def compute_advantage(self, prompt_ids=None, rewards=None, mask=None, repeated_batch=None, **kwargs):
        return rewards - rewards.mean()


def test_the_collector_draws_from_the_memory_the_driver_feeds_and_a_checkpoint_resumes_exactly(ray_local, tmp_path):
    loader, view = _run()
    collector = Collector.remote(loader)  # Ray pickles the loader into the actor, as start_collection does
    feedback = async_memory.AsyncMemoryFeedback(view, _statistics, lambda: None, refresh_every=1)
    grpo = type("grpo", (), {"_create_advantage_estimator": staticmethod(lambda cfg: UpstreamEstimator())})
    async_memory.install(grpo, feedback)
    estimator = grpo._create_advantage_estimator(MASTER)

    drawn = ray.get(collector.draw.remote(6))  # the collector runs ahead of training
    assert all(len(b) == PICKS + PER_STEP for b in drawn)
    for rows in drawn[:4]:  # four steps trained, the rest still waiting in the buffer
        batch = _trained(rows)
        advantages = estimator.compute_advantage(rewards=batch["total_reward"], repeated_batch=batch)
        assert torch.equal(advantages, batch["total_reward"] - batch["total_reward"].mean())  # upstream's, untouched
        metrics = estimator.last_metrics
        assert metrics["upstream/metric"] == 1.0 and "gradalign/mean_cosine" in metrics
    visits = view.memory.visits
    trained = [i for rows in drawn[:4] for i in rows if i < POOL]
    assert visits.sum() == len(trained) and all(visits[i] >= 1 for i in trained)
    assert view.memory.latest_generation == 3  # G from each step's trusted groups (all four vary)

    # checkpoint as upstream's async loop takes it: from the collector's loader; then go on
    state = ray.get(collector.get_dataloader_state.remote())
    saved_memory = ray.get(view.service.state_dict.remote())["memory"]
    later = ray.get(collector.draw.remote(5))
    torch.save({"state": state}, tmp_path / "train_dataloader.pt")

    resumed, resumed_view = _run(tmp_path, lambda dl, path, cfg: dl.load_state_dict(
        torch.load(f"{path}/train_dataloader.pt", weights_only=False)["state"]))
    again = ray.get(Collector.remote(resumed).draw.remote(5))  # torchdata applies a loaded state on iteration
    assert again == later  # the same decisions from the same memory and position
    restored = ray.get(resumed_view.service.state_dict.remote())["memory"]  # drawing records nothing
    _same_memory(saved_memory, restored)
    unfed = Collector.remote(_run()[0])  # the same draws without any feedback: other decisions
    assert ray.get(unfed.draw.remote(6)) == drawn and ray.get(unfed.draw.remote(5)) != later

    # training goes on in both runs: the resumed one's feedback continues the steps and ends in
    # the same memory as the uninterrupted one's
    for run_view, batches in ((view, later), (resumed_view, again)):
        run_estimator = async_memory.FeedbackFirstEstimator(UpstreamEstimator(), async_memory.AsyncMemoryFeedback(
            run_view, _statistics, lambda: None, refresh_every=1), MASTER)
        for rows in batches[:2]:
            batch = _trained(rows)
            run_estimator.compute_advantage(rewards=batch["total_reward"], repeated_batch=batch)
    _same_memory(ray.get(view.service.state_dict.remote())["memory"],
                 ray.get(resumed_view.service.state_dict.remote())["memory"])
    assert int(view.memory.visits.sum()) == len(trained) + sum(i < POOL for rows in later[:2] for i in rows)


def _same_memory(a: dict, b: dict) -> None:
    for key, value in a.items():
        same = np.array_equal(np.asarray(value), np.asarray(b[key]), equal_nan=True) \
            if not isinstance(value, (int, float)) else value == b[key]
        assert same, (key, value, b[key])
