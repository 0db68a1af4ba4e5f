"""Verifiable digit tasks a tiny GPT learns on CPU, with exactly checkable answers.

A prompt is ``[op d1 .. dn =]`` and the answer is n digit tokens. Operations and lengths give a
spread of difficulty (copy-3 is easy, sort-6 hard), as real data have, so clean problems stay
informative while the policy improves. Token layout (vocab 32): 0 pad, 1 ``=``, 2.. operation
tokens, 16..25 the digits 0..9.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

PAD, EQUALS = 0, 1
OPS: dict[str, Callable[[list[int]], list[int]]] = {
    "sort": sorted,
    "reverse": lambda d: d[::-1],
    "copy": list,
    "sort_desc": lambda d: sorted(d, reverse=True),
}
OP_TOKENS = {name: 2 + i for i, name in enumerate(OPS)}
DIGIT0 = 16
VOCAB_SIZE = 32
MIN_LEN, MAX_LEN = 2, 6
MAX_SEQUENCE = 2 * MAX_LEN + 2
MIN_VOCAB = DIGIT0 + 10  # the highest token a prompt or answer uses is digit 9


def distinct_problems(ops, lengths) -> int:
    """How many different problems ``generate`` can draw from these ops and lengths."""
    return len(set(ops)) * sum(10 ** length for length in set(lengths))


@dataclass
class Problem:
    """One verifiable prompt.

    tags: ``corrupted`` (reward is Bernoulli(0.5) noise), ``wrong_key`` (the answer key is wrong),
    ``target`` (belongs to the target distribution of the imbalance regime).
    """

    problem_id: int
    op: str
    digits: list[int]
    tags: dict = field(default_factory=dict)
    key: list[int] | None = None  # the answer key; None means the true answer

    def __post_init__(self):
        if self.op not in OPS:
            raise ValueError(f"problem {self.problem_id}: unknown op {self.op!r}; choose one of {sorted(OPS)}")
        if not (MIN_LEN <= len(self.digits) <= MAX_LEN) or any(not 0 <= d <= 9 for d in self.digits):
            raise ValueError(f"problem {self.problem_id}: digits must be {MIN_LEN}..{MAX_LEN} values "
                             f"in 0..9, got {self.digits}")

    @property
    def prompt(self) -> list[int]:
        return [OP_TOKENS[self.op], *(DIGIT0 + d for d in self.digits), EQUALS]

    @property
    def true_answer(self) -> list[int]:
        return [DIGIT0 + d for d in OPS[self.op](self.digits)]

    @property
    def answer(self) -> list[int]:
        """The answer key the verifier checks against (wrong for ``wrong_key`` problems)."""
        return [DIGIT0 + d for d in self.key] if self.key is not None else self.true_answer

    @property
    def shape(self) -> tuple[int, int]:
        """(prompt length, answer length): problems of one shape batch without padding."""
        return len(self.digits) + 2, len(self.digits)

    def text(self) -> str:
        return f"{self.op} {''.join(map(str, self.digits))}"


def generate(ops: list[str], lengths: list[int], n: int, seed: int, start_id: int = 0,
             exclude: set[tuple] | None = None) -> list[Problem]:
    """n distinct problems, op and length uniform over the given ones, none in ``exclude``.

    ``exclude`` is updated in place, so successive calls yield disjoint sets.
    """
    for op in ops:
        if op not in OPS:
            raise ValueError(f"unknown op {op!r}; choose one of {sorted(OPS)}")
    for length in lengths:
        if not MIN_LEN <= length <= MAX_LEN:
            raise ValueError(f"length {length} outside {MIN_LEN}..{MAX_LEN}")
    gen = torch.Generator().manual_seed(seed)
    seen = exclude if exclude is not None else set()
    problems: list[Problem] = []
    while len(problems) < n:
        op = ops[int(torch.randint(len(ops), (1,), generator=gen))]
        length = lengths[int(torch.randint(len(lengths), (1,), generator=gen))]
        digits = tuple(int(d) for d in torch.randint(0, 10, (length,), generator=gen))
        if (op, digits) in seen:
            continue
        seen.add((op, digits))
        problems.append(Problem(start_id + len(problems), op, list(digits)))
    return problems


def verify(problem: Problem, response: list[int]) -> float:
    """1.0 when the response equals the answer key, else 0.0."""
    return float(list(response) == problem.answer)


def reward(problem: Problem, response: list[int], generator: torch.Generator) -> float:
    """The verifier's reward; a corrupted problem is rewarded Bernoulli(0.5) whatever the answer
    (the official code's unreliable-reward regime, applied in selection and training alike)."""
    if problem.tags.get("corrupted"):
        return float(torch.rand((), generator=generator) < 0.5)
    return verify(problem, response)
