"""Forward/backward of token batches through megatron-core's schedules (so any PP works).

The engine's one interface is "run this problem's forward+backward on this rank";
``ProblemRunner`` is that callable for a megatron GPTModel.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from nemo_gradalign import advantages, grpo
from nemo_gradalign.megatron import cpu_shim
from nemo_gradalign.megatron.borrow import borrowed
from nemo_gradalign.megatron.context_parallel import cp_size_and_rank, shard_microbatch
from nemo_gradalign.megatron.logprobs import vocab_parallel_logprobs
from nemo_gradalign.megatron.per_problem import PerProblemPartials, unsupported_reason
from nemo_gradalign.rollouts import ProblemRollouts


def causal_mask(seq_len: int, device=None) -> torch.Tensor:
    """megatron's convention: True marks positions a token may NOT attend to."""
    return torch.triu(torch.ones(1, 1, seq_len, seq_len, dtype=torch.bool, device=device), 1)


def shift_labels(tokens: torch.Tensor) -> torch.Tensor:
    """labels[t] = tokens[t+1]; the last position has no label (weight 0 wherever it is used)."""
    labels = torch.zeros_like(tokens)
    labels[:, :-1] = tokens[:, 1:]
    return labels


def microbatch_rows(rows: int, max_rows: int | None) -> int:
    """Rows per microbatch when ``rows`` are split by ``split_rows``: at most ``max_rows``, evened
    out so the microbatches differ as little as possible."""
    n_mb = 1 if not max_rows or rows <= max_rows else -(-rows // max_rows)
    return -(-rows // n_mb)


def split_rows(tensors: dict[str, torch.Tensor], max_rows: int | None) -> list[dict[str, torch.Tensor]]:
    """Equal-sized microbatches (pipeline p2p needs one shape); padding rows are all zero.

    A zero row carries weight 0, so it adds nothing to any loss or gradient.
    """
    rows = next(iter(tensors.values())).shape[0]
    per = microbatch_rows(rows, max_rows)
    n_mb = -(-rows // per) if rows else 1
    pad = per * n_mb - rows
    if pad:
        tensors = {k: torch.cat([v, v.new_zeros((pad, *v.shape[1:]))]) for k, v in tensors.items()}
    return [{k: v[i * per:(i + 1) * per] for k, v in tensors.items()} for i in range(n_mb)]


LossFn = Callable[[torch.Tensor, dict], torch.Tensor]  # (log-probs or logits, microbatch) -> loss


def run_microbatches(model, microbatches: list[dict[str, torch.Tensor]], loss_fn: LossFn | None,
                     forward_only: bool = False, finalize_grads: bool = False,
                     temperature: float = 1.0, on_microbatch: Callable[[int], None] | None = None) -> list:
    """One call of megatron's forward_backward_func over ``microbatches``.

    Each microbatch holds ``tokens`` [b, L] and, for a loss, ``labels`` [b, L]. ``loss_fn`` maps
    the last stage's output (per-token log-probs of the labels when given, in the model's dtype,
    else vocab-parallel logits) to the microbatch's share of the total loss; it is not averaged
    over microbatches. Without a ``loss_fn`` those outputs come back. Log-probs are of
    softmax(logits / ``temperature``), as NeMo RL's Megatron loss and get_logprobs take them.
    Returns, on the last stage, one entry per microbatch (else []). ``finalize_grads`` runs
    megatron's ``finalize_model_grads`` at the end (DP all-reduce, tied-embedding sync) for the
    embedded trainer's own steps; the config's own hook is put back afterwards. Scoring runs
    inside ``borrow.borrowed`` (every hook off, grads local). ``on_microbatch(i)`` is called
    before microbatch i's forward, on every pipeline stage, in order. Under context parallelism
    each rank runs its zig-zag share of every sequence (context_parallel.py): losses then cover
    this rank's tokens only, and outputs (which would be shares too) cannot be returned.
    """
    from megatron.core.distributed import finalize_model_grads
    from megatron.core.utils import get_model_config

    from megatron.core.pipeline_parallel import get_forward_backward_func

    config = get_model_config(model)
    cp, _ = cp_size_and_rank()
    if cp > 1 and loss_fn is None:
        raise NotImplementedError("outputs under context parallelism would be per-rank shares; "
                                  "only losses (scoring, training) run with CP > 1")
    length = microbatches[0]["tokens"].shape[1]
    microbatches = _pad_for_layout(microbatches, config, cp)
    n_mb = len(microbatches)
    batch, seq_len = microbatches[0]["tokens"].shape
    device = next(model.parameters()).device
    mask = causal_mask(seq_len, device) if cp == 1 else None  # the CP attention masks by position
    positions = torch.arange(seq_len, device=device).unsqueeze(0).expand(batch, -1)
    batches = iter(enumerate(microbatches))

    def forward_step(_iterator, model_chunk):
        index, mb = next(batches)
        if on_microbatch is not None:
            on_microbatch(index)
        mb = {k: v.to(device) for k, v in mb.items()}
        if cp > 1:
            mb = shard_microbatch(mb)
        output = model_chunk(mb["tokens"], mb.get("position_ids", positions), mask)

        def loss_func(logits):
            out = logits if "labels" not in mb else vocab_parallel_logprobs(logits, mb["labels"], temperature)
            if loss_fn is None:
                return out.sum() * 0.0, {"out": out.detach()}
            loss = loss_fn(out, mb)
            # megatron scales a 2-tuple loss by CP / (number of microbatches); undo that.
            return loss * n_mb / cp, {"out": loss.detach()}

        return output, loss_func

    own_finalize = config.finalize_model_grads_func
    if finalize_grads:
        config.finalize_model_grads_func = finalize_model_grads
    try:
        with cpu_shim.device_context():
            results = get_forward_backward_func()(
                forward_step_func=forward_step,
                data_iterator=batches,
                model=[model],
                num_microbatches=n_mb,
                seq_length=seq_len,
                micro_batch_size=batch,
                forward_only=forward_only,
            )
    finally:
        config.finalize_model_grads_func = own_finalize
    return [r["out"][:, :length] if r["out"].dim() > 1 else r["out"] for r in results]


def _pad_for_layout(microbatches: list[dict], config, cp: int) -> list[dict]:
    """Sequence parallelism splits each CP rank's share of the sequence over TP ranks and context
    parallelism cuts it into 2·CP chunks, so the length must divide by (2·CP)·TP: right-pad every
    [b, L] tensor with zeros (a causal model's earlier positions do not see them; weight 0, so no
    loss or gradient). Outputs are cropped back to L."""
    length = microbatches[0]["tokens"].shape[1]
    multiple = (2 * cp if cp > 1 else 1) * (config.tensor_model_parallel_size if config.sequence_parallel else 1)
    pad = (-length) % multiple
    if not pad:
        return microbatches
    return [{k: torch.nn.functional.pad(v, (0, pad)) for k, v in mb.items()} for mb in microbatches]


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
