"""Rollout collection: sample k responses per problem, reward them, pack them for scoring.

Randomness is keyed by (seed, salt, problem id), so a problem's rollouts and rewards are the
same whatever the layout (TP/PP/DP) or batch they were generated in.
"""

from __future__ import annotations

import zlib
from typing import Callable

import torch
import torch.distributed as dist

from nemo_gradalign.data import tasks
from nemo_gradalign.megatron.generate import sample
from nemo_gradalign.rollouts import ProblemRollouts


def _keyed_generator(seed: int, salt: str, problem_id: int) -> torch.Generator:
    return torch.Generator().manual_seed(zlib.crc32(f"{seed}/{salt}/{problem_id}".encode()))


def _dp_share(items: list, dp_rank: int, dp_size: int) -> list:
    return items[dp_rank::dp_size]


RewardFn = Callable[[tasks.Problem, list[int], torch.Generator], float]


def collect_rollouts(model, problems: list[tasks.Problem], k: int, seed: int, salt: str,
                     temperature: float = 1.0, reward_fn: RewardFn = tasks.reward) -> list[ProblemRollouts]:
    """k rollouts per problem, rewarded; every rank returns all problems, in the given order.

    Data-parallel replicas each generate their share, then exchange the results. A reward
    function returning NaN/inf stops the run with an error naming the problem (ProblemRollouts).
    """
    from megatron.core import parallel_state as ps

    dp_size, dp_rank = ps.get_data_parallel_world_size(), ps.get_data_parallel_rank()
    mine = _dp_share(problems, dp_rank, dp_size)
    local = _generate_by_shape(model, mine, k, seed, salt, temperature, reward_fn)
    if dp_size == 1:
        return local
    shares = [None] * dp_size
    dist.all_gather_object(shares, local, group=ps.get_data_parallel_group())
    ordered = [None] * len(problems)
    for rank, share in enumerate(shares):
        ordered[rank::dp_size] = share
    return ordered


def _generate_by_shape(model, problems, k, seed, salt, temperature, reward_fn) -> list[ProblemRollouts]:
    """Batch problems of one (prompt, answer) shape together; keep the given order.

    Every model-parallel rank holds the same problems, so all walk the shapes in the same order.
    """
    out: dict[int, ProblemRollouts] = {}
    for shape in sorted({p.shape for p in problems}):
        idx = [i for i, p in enumerate(problems) if p.shape == shape]
        for i, r in zip(idx, _generate(model, [problems[i] for i in idx], k, seed, salt, temperature, reward_fn)):
            out[i] = r
    return [out[i] for i in range(len(problems))]


def _generate(model, problems, k, seed, salt, temperature, reward_fn) -> list[ProblemRollouts]:
    prompt_len, answer_len = problems[0].shape
    prompts = torch.tensor([p.prompt for p in problems for _ in range(k)], dtype=torch.long)
    gens = [_keyed_generator(seed, salt, p.problem_id) for p in problems]
    uniforms = torch.cat([torch.rand(k, answer_len, generator=g) for g in gens])
    tokens = sample(model, prompts, uniforms, temperature)
    out = []
    for i, (problem, gen) in enumerate(zip(problems, gens)):
        rows = tokens[i * k:(i + 1) * k]
        rewards = torch.tensor([reward_fn(problem, r[prompt_len:].tolist(), gen) for r in rows])
        out.append(ProblemRollouts(
            problem.problem_id, rows, prompt_len,
            torch.full((k,), answer_len, dtype=torch.long), rewards,
            tags={"op": problem.op, **problem.tags},
        ))
    return out
