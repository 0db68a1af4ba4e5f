"""The engine's one interface, "run this problem's forward+backward on this rank", for a megatron
GPTModel: ``ProblemRunner`` (one problem per pass, or many packed into shared microbatches and read
per problem), with the loss settings that turn a problem's rollouts into its policy gradient.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from nemo_gradalign import advantages, grpo
from nemo_gradalign.megatron.borrow import borrowed
from nemo_gradalign.megatron.per_problem import PerProblemPartials, unsupported_reason
from nemo_gradalign.megatron.step import run_microbatches, shift_labels, split_rows
from nemo_gradalign.rollouts import ProblemRollouts


@dataclass(frozen=True)
class LossSettings:
    """How a problem's rollouts turn into its policy-gradient loss (grpo.py)."""

    baseline: advantages.Baseline = "mean"
    normalize_std: bool = False
    aggregation: grpo.Aggregation = "token_mean"
    temperature: float = 1.0  # log-probs of softmax(logits / T), as the trainer computes them


def problem_microbatches(problem: ProblemRollouts, loss: LossSettings,
                         max_rows: int | None) -> list[dict[str, torch.Tensor]]:
    weights = problem.token_weights(loss.baseline, loss.normalize_std, loss.aggregation)
    tensors = {"tokens": problem.tokens, "labels": shift_labels(problem.tokens), "weights": weights}
    return split_rows(tensors, max_rows)


def packed_microbatches(problems: list[ProblemRollouts], loss: LossSettings, rows: int
                        ) -> tuple[list[dict[str, torch.Tensor]], list[list[tuple[int, int, int]]]]:
    """Whole problems packed as rows of equal-shaped microbatches (pipeline p2p needs one shape):
    right-padded to the longest sequence, at least ``rows`` rows each (more if one problem has
    more rollouts), zero rows as padding (weight 0). Returns the microbatches and, per
    microbatch, (problem index, first row, end row) of each problem in it."""
    length = max(p.tokens.shape[1] for p in problems)
    rows = max(rows, max(p.k for p in problems))
    groups, spans, used = [[]], [[]], 0
    for index, problem in enumerate(problems):
        if used + problem.k > rows:
            groups.append([])
            spans.append([])
            used = 0
        groups[-1].append(problem)
        spans[-1].append((index, used, used + problem.k))
        used += problem.k
    microbatches = []
    for group in groups:
        parts = {"tokens": [], "weights": []}
        for problem in group:
            pad = (0, length - problem.tokens.shape[1])
            parts["tokens"].append(F.pad(problem.tokens, pad))
            parts["weights"].append(F.pad(problem.token_weights(loss.baseline, loss.normalize_std,
                                                                 loss.aggregation), pad))
        tensors = {k: torch.cat(v) for k, v in parts.items()}
        tensors = {k: F.pad(v, (0, 0, 0, rows - v.shape[0])) for k, v in tensors.items()}
        tensors["labels"] = shift_labels(tensors["tokens"])
        microbatches.append(tensors)
    return microbatches, spans


def weighted_logprob_loss(logprobs: torch.Tensor, mb: dict) -> torch.Tensor:
    """Σ w · log π over the microbatch's tokens."""
    return grpo.policy_surrogate(logprobs, mb["weights"])


class ProblemRunner:
    """The engine's runner: one problem's on-policy forward+backward (grads accumulate), and
    whether that problem's gradient can be non-zero under these loss settings."""

    def __init__(self, model, loss: LossSettings = LossSettings(), max_rows: int | None = None,
                 pack_rows: int | None = 64):
        """``pack_rows``: rows per microbatch when many problems share one pass (None: one
        problem per pass, the layer-agnostic path); never more than ``max_rows``, the memory
        limit the user set, and a problem larger than it is never packed (it must be split)."""
        self.model = model
        self.loss = loss
        self.max_rows = max_rows
        self.pack_rows = min(pack_rows, max_rows) if pack_rows and max_rows else pack_rows
        self.unpackable = unsupported_reason(model) if pack_rows else "packing is off"

    def _packs(self, problems: list[ProblemRollouts]) -> bool:
        return bool(self.pack_rows) and (not self.max_rows or max(p.k for p in problems) <= self.max_rows)

    def __call__(self, problem: ProblemRollouts) -> None:
        run_microbatches(self.model, problem_microbatches(problem, self.loss, self.max_rows),
                         weighted_logprob_loss, temperature=self.loss.temperature)

    def run_many(self, problems: list[ProblemRollouts]) -> None:
        """Σ of the problems' gradients, many problems per microbatch (the reference build)."""
        if problems and not self._packs(problems):
            for problem in problems:
                self(problem)
        elif problems:
            microbatches, _ = packed_microbatches(problems, self.loss, self.pack_rows)
            run_microbatches(self.model, microbatches, weighted_logprob_loss,
                             temperature=self.loss.temperature)

    def packed_partials(self, problems: list[ProblemRollouts],
                        references: dict[int, torch.Tensor]) -> torch.Tensor | None:
        """This rank's [n, 2] (dot, sqnorm) partials of every problem over the counted parameters
        (``references``: id(param) -> reference shard) from one packed pass; None when this
        model cannot be read that way (``self.unpackable`` says why)."""
        if self.unpackable or (problems and not self._packs(problems)):
            return None
        with PerProblemPartials(self.model, references, len(problems)) as reader:
            if problems:
                microbatches, spans = packed_microbatches(problems, self.loss, self.pack_rows)
                rows = microbatches[0]["tokens"].shape[0]
                run_microbatches(self.model, microbatches, weighted_logprob_loss,
                                 temperature=self.loss.temperature,
                                 on_microbatch=lambda i: reader.next_microbatch(spans[i], rows))
        return reader.partials

    def has_gradient(self, problem: ProblemRollouts) -> bool:
        return problem.has_gradient(self.loss.baseline, self.loss.normalize_std)

    def borrowed(self):
        """The scope the engine scores in: the model's owner gets it back untouched."""
        return borrowed(self.model)
