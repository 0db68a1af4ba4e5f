"""Verifiable synthetic tasks a tiny GPT learns on CPU, with exactly checkable answers.

Token layout (vocab 16): 0 pad, 1 ``=``, 2..5 task tokens, 6..15 the digits 0..9.
A prompt is ``[task d1 d2 d3 d4 =]``; the answer is 4 digit tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

PAD, EQUALS = 0, 1
TASK_TOKENS = {"sort": 2, "reverse": 3}
DIGIT0 = 6
VOCAB_SIZE = 16
N_DIGITS = 4
ANSWER_LEN = 4

SOLVERS: dict[str, Callable[[list[int]], list[int]]] = {
    "sort": sorted,
    "reverse": lambda d: d[::-1],
}


@dataclass
class Problem:
    """One verifiable prompt. ``tags["corrupted"]`` marks a problem whose reward is noise."""

    problem_id: int
    task: str
    digits: list[int]
    tags: dict = field(default_factory=dict)

    @property
    def prompt(self) -> list[int]:
        return [TASK_TOKENS[self.task], *(DIGIT0 + d for d in self.digits), EQUALS]

    @property
    def answer(self) -> list[int]:
        return [DIGIT0 + d for d in SOLVERS[self.task](self.digits)]

    def text(self) -> str:
        return f"{self.task} {''.join(map(str, self.digits))}"


def digit_tokens() -> list[int]:
    """The tokens a response may contain (sampling is restricted to them)."""
    return list(range(DIGIT0, DIGIT0 + 10))


def generate(task: str, n: int, seed: int, start_id: int = 0,
             exclude: set[tuple[int, ...]] | None = None) -> list[Problem]:
    """n distinct problems of one task, never repeating a digit string in ``exclude``."""
    if task not in SOLVERS:
        raise ValueError(f"unknown task {task!r}; choose one of {sorted(SOLVERS)}")
    gen = torch.Generator().manual_seed(seed)
    seen = set(exclude or ())
    problems = []
    while len(problems) < n:
        digits = tuple(int(d) for d in torch.randint(0, 10, (N_DIGITS,), generator=gen))
        if digits in seen:
            continue
        seen.add(digits)
        problems.append(Problem(start_id + len(problems), task, list(digits)))
    return problems


def verify(problem: Problem, response: list[int]) -> float:
    """1.0 for an exactly right answer, else 0.0."""
    return float(list(response) == problem.answer)


def reward(problem: Problem, response: list[int], generator: torch.Generator) -> float:
    """The verifier's reward; a corrupted problem is rewarded Bernoulli(0.5) whatever the answer
    (the official code's unreliable-reward regime, applied in selection and training alike)."""
    if problem.tags.get("corrupted"):
        return float(torch.rand((), generator=generator) < 0.5)
    return verify(problem, response)


def corrupt(problems: list[Problem], fraction: float, seed: int) -> list[Problem]:
    """Tag a seeded ``fraction`` of the problems as corrupted (noisy reward)."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"corrupt fraction must be in [0, 1], got {fraction}")
    gen = torch.Generator().manual_seed(seed)
    chosen = torch.randperm(len(problems), generator=gen)[: round(fraction * len(problems))]
    for i in chosen.tolist():
        problems[i].tags["corrupted"] = True
    return problems
