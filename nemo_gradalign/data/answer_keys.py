"""Plausible wrong answer keys: wrong answers a policy on this task family actually produces.

The ``low_utility`` regime's random-digit keys are almost never sampled, so their groups are all-zero
and any method that skips zero-variance groups drops them for free. Real wrong labels are plausible:

- ``near_miss_key`` (label flip, ``noisy_flip``): the true answer with one digit off by one, at a
  random position, in a random direction that stays within 0..9. Off-by-one is the warm-started
  policy's most frequent single slip (docs/results.md, "Regimes"); adjacent swaps are rarer.
- ``shuffled_key`` (``low_utility_shuffled``): a uniformly random wrong arrangement of the prompt's
  own digits, what a policy emits before it has learnt the order. It agrees with the truth no more
  than chance, so rewarding it teaches nothing about the op beyond "answer with the prompt's
  digits", which the warm-up already taught.
"""

from __future__ import annotations

import torch

from nemo_gradalign.data import tasks


def _pick(n: int, gen: torch.Generator) -> int:
    return int(torch.randint(n, (1,), generator=gen))


def true_digits(problem: tasks.Problem) -> list[int]:
    return tasks.OPS[problem.op](list(problem.digits))


def near_miss_key(problem: tasks.Problem, gen: torch.Generator) -> list[int]:
    """The true answer with one digit off by one (uniform position, uniform valid direction)."""
    key = true_digits(problem)
    i = _pick(len(key), gen)
    steps = [s for s in (-1, 1) if 0 <= key[i] + s <= 9]
    key[i] += steps[_pick(len(steps), gen)]
    return key


def can_shuffle(problem: tasks.Problem) -> bool:
    """A wrong arrangement of the digits exists only when at least two digits differ."""
    return len(set(problem.digits)) > 1


def shuffled_key(problem: tasks.Problem, gen: torch.Generator) -> list[int]:
    """A uniformly random arrangement of the prompt's digits that is not the true answer."""
    if not can_shuffle(problem):
        raise ValueError(f"problem {problem.problem_id}: digits {problem.digits} are all equal; "
                         "no arrangement of them is wrong")
    truth = true_digits(problem)
    while True:  # rejection keeps the draw uniform over the wrong arrangements
        key = [truth[i] for i in torch.randperm(len(truth), generator=gen).tolist()]
        if key != truth:
            return key


def assign(problems: list[tasks.Problem], fraction: float, seed: int, make_key, eligible=None) -> None:
    """Give a seeded ``fraction`` of the problems (among the eligible ones) a key from ``make_key``,
    tagged ``wrong_key`` as every wrong-key regime is."""
    pool = [i for i, p in enumerate(problems) if eligible is None or eligible(p)]
    n = round(fraction * len(problems))
    if n > len(pool):
        raise ValueError(f"a fraction {fraction} of {len(problems)} problems is {n}, but only {len(pool)} "
                         "can take such a key")
    order = torch.randperm(len(pool), generator=torch.Generator().manual_seed(seed)).tolist()
    gen = torch.Generator().manual_seed(seed + 1)
    for i in sorted(pool[j] for j in order[:n]):
        p = problems[i]
        p.key, p.tags["wrong_key"] = make_key(p, gen), True
