"""Which rows of a packed microbatch belong to which problem, and that microbatch's partials.

Whole problems are packed as consecutive rows of a microbatch (``problem_runner.packed_microbatches``);
megatron's activations are [s, b, d], so a problem's tokens are a slice of b at every position s.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

Span = tuple[int, int, int]  # (problem index, first row, end row) within a microbatch


@dataclass
class PackedRows:
    """Which rows of a microbatch belong to which problem, as a gather index: problem j of the
    microbatch owns rows index[j] (padded with the index of an all-zero row); ``acc`` collects
    the microbatch's [P, 2] partials, added to the caller's rows once at the end."""

    problems: torch.Tensor  # [P] problem indices into the caller's list
    index: torch.Tensor | None  # [P, most rows of one problem]; None: P equal spans from row 0
    width: int
    acc: torch.Tensor
    # small per-problem grads (biases, norms) with their references, read together at the end:
    # one matrix-vector product instead of a few tiny ones per parameter
    small: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)

    def read_small(self) -> None:
        if self.small:
            grads = torch.cat([g for g, _ in self.small], 1)
            self.acc[:, 0].addmv_(grads, torch.cat([r for _, r in self.small]))
            self.acc[:, 1] += (grads * grads).sum(1)
            self.small.clear()

    @classmethod
    def of(cls, spans: list[Span], rows: int, device, dtype: torch.dtype) -> "PackedRows":
        width = max(r1 - r0 for _, r0, r1 in spans)
        problems = torch.tensor([p for p, _, _ in spans], device=device)
        acc = torch.zeros(len(spans), 2, dtype=dtype, device=device)
        if all((r0, r1) == (j * width, (j + 1) * width) for j, (_, r0, r1) in enumerate(spans)):
            return cls(problems, None, width, acc)  # the usual case: k rollouts for every problem
        index = torch.full((len(spans), width), rows, dtype=torch.long)
        for j, (_, r0, r1) in enumerate(spans):
            index[j, :r1 - r0] = torch.arange(r0, r1)
        return cls(problems, index.to(device), width, acc)

    def group(self, x: torch.Tensor, sequence_first: bool) -> torch.Tensor:
        """[s, b, d] (or [b, s, d]) -> [P, tokens of the widest problem, d]; padding is zero.
        A problem's tokens come in any fixed order (sums over tokens do not care): a microbatch
        that is one problem is only a view."""
        n, d = len(self.problems), x.shape[-1]
        if n == 1 and self.index is None and self.width == x.shape[1 if sequence_first else 0]:
            return x.reshape(1, -1, d)
        rows = x.transpose(0, 1) if sequence_first else x
        if self.index is None:
            grouped = rows[:n * self.width]
        else:
            rows = torch.cat([rows, rows.new_zeros(1, *rows.shape[1:])])
            grouped = rows[self.index]
        return grouped.reshape(n, -1, d)

    def sum_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """[s, b, d] -> [P, d], each problem's sum over its tokens (no copy for equal spans)."""
        if self.index is not None:
            return self.group(x, sequence_first=True).sum(1)
        n = len(self.problems)
        return x.sum(0)[:n * self.width].view(n, self.width, x.shape[-1]).sum(1)
