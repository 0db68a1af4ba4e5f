"""Alignment read from the training pass: each trained problem's ⟨g_i, Ĝ⟩ and ‖g_i‖² from the
forward+backward the GRPO step runs anyway (its first inner epoch) — no second backward.

Why this is g_i: in the first inner epoch the weights are those that produced the old log-probs,
so ρ = exp(log π − log π_old) = 1 and the clipped surrogate's gradient is the unclipped one (at
ρ = 1 inside the clip range min() and clamp() pass it through whole). With the token mean over
the batch (``token_scale`` = mask / N), problem i's share of the step's gradient is
−(1/N) Σ_j A_j ∇ Σ_t log π_jt = c_i · g_i, with c_i = N_i / N (its tokens' share of
``token_scale``) and g_i the scorer's token-mean gradient under the *trainer's* advantages.
The packed scoring hooks (per_problem.py) read each problem's share per layer from the δ and x
autograd uses, touching no gradient; dividing by c_i (dot) and c_i² (squared norm) gives g_i's,
so cosines are those of the share itself. KL is not in this trainer's loss
(grpo.clipped_surrogate): nothing is left out of the score.

Microbatches that split a problem (fewer rows than its rollouts, or unequal spans across a
boundary) are read token by token instead (projected_read.py): the dot stays exact, the squared
norm of weights is estimated from a seeded projection of dimension ``projection_dim``² per weight
shard (projections.py gives its variance); ``projection_dim=None`` refuses such splits.

Counting rules are the engine's: references only for its counted parameters, partials summed
over TP×PP. Every data-parallel rank of the embedded trainer trains the whole batch (DDP
averages identical replicas), so every rank reads every problem: nothing to gather.
Anything the hooks cannot attribute exactly is refused before the step starts.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from nemo_gradalign.engine import GradientEngine, ReferenceGradient
from nemo_gradalign.engine.rules import UnsupportedLayout
from nemo_gradalign.engine.scorer import ProblemStats
from nemo_gradalign.megatron.per_problem import PerProblemPartials, unsupported_reason
from nemo_gradalign.megatron.projected_read import ProjectedPartials
from nemo_gradalign.megatron.projections import Projections
from nemo_gradalign.rollouts import ProblemRollouts


@dataclass(frozen=True)
class InPassScores:
    """Per problem of the trained batch, in batch order: what ScoreMemory.record takes."""

    problem_ids: list[int]
    dot: torch.Tensor  # ⟨g_i, Ĝ⟩, float64, on the scorer's scale (token-mean g_i)
    sqnorm: torch.Tensor  # ‖g_i‖², float64
    zero_gradient: torch.Tensor  # bool: g_i = 0 exactly (dot = sqnorm = 0)
    projected_dim: int = 0  # 0: sqnorm exact; else weights' share estimated at this k_out·k_in

    def cosine(self) -> torch.Tensor:
        """cos(g_i, G); 0 where g_i = 0."""
        return ProblemStats(self.dot, self.sqnorm, ~self.zero_gradient).cosine()


class AlignmentReading:
    """Handed to ``grpo_step(read_alignment=...)``: the engine (counting rules, process groups)
    and the unit-norm reference G the batch's problems are read against; ``projection_dim``:
    k_out = k_in of the projections a split problem's norm is estimated with (None: refuse)."""

    def __init__(self, engine: GradientEngine, reference: ReferenceGradient, projection_dim: int | None = None,
                 seed: int = 0):
        self.engine = engine
        self.reference = reference
        self.projection_dim, self.seed = projection_dim, seed

    def open(self, model, batch: list[ProblemRollouts], token_scale: torch.Tensor,
             microbatches: list[dict], baseline: str, normalize_std: bool) -> "InPassRead":
        """Check everything (cheap) and return the reader for this step's reading pass."""
        reason = layout_reason(model, self.engine)
        if reason:
            raise UnsupportedLayout(f"in-pass alignment cannot read this model exactly: {reason}; "
                                    "score with the engine (a separate pass) instead")
        if not self.reference.ready:
            raise RuntimeError("in-pass alignment: the reference gradient has not been built yet")
        if not {id(p) for p in self.engine.counted.params} <= {id(p) for p in model.parameters()}:
            raise ValueError("in-pass alignment: the engine counts parameters that are not this model's "
                             "(build the GradientEngine on the trained model's named_parameters())")
        rows = microbatches[0]["tokens"].shape[0]
        spans = microbatch_spans(batch, rows, len(microbatches))
        refs = {id(p): r for p, r in zip(self.engine.counted.params, self.reference.buffers)}
        return InPassRead(self.engine, model, batch, token_scale, spans, rows, refs, baseline, normalize_std,
                          shard_projections(self.projection_dim, self.seed))


@functools.lru_cache(maxsize=None)
def shard_projections(dim: int | None, seed: int) -> Projections | None:
    """Projections seeded per tensor and pipeline rank (the same on every data-parallel rank); one
    per process (a rank), so every step reads with the same matrices, made once. None: no
    projection dimension (split problems are refused)."""
    from megatron.core import parallel_state as ps

    if dim is None:
        return None
    return Projections(dim, dim, seed, ps.get_tensor_model_parallel_rank(), ps.get_pipeline_model_parallel_rank())


def layout_reason(model, engine: GradientEngine) -> str | None:
    """Why a training pass of ``model`` cannot be read per problem exactly (None: it can)."""
    from megatron.core.utils import get_model_config

    reason = unsupported_reason(model)
    if reason:
        return reason
    config = get_model_config(model)
    groups = engine.groups
    if engine.counted.tied_embedding:
        return "a word embedding tied across pipeline stages"
    if groups.ep_size > 1 or groups.cp_size > 1:
        return f"expert_model_parallel_size={groups.ep_size}, context_parallel_size={groups.cp_size}"
    if config.hidden_dropout or config.attention_dropout:
        return (f"dropout (hidden_dropout={config.hidden_dropout}, attention_dropout="
                f"{config.attention_dropout}): the training pass's gradient is not g_i")
    scale = loss_scale(config, next(model.parameters()).device)
    if scale != 1.0:
        return f"a loss scale of {scale} (config.grad_scale_func) multiplies the training pass's gradients"
    return None


def loss_scale(config, device) -> float:
    """The factor megatron's schedule multiplies each microbatch's loss by (``grad_scale_func``,
    the optimizer's ``scale_loss``: a constant 1 for bf16/fp32 optimizers, fp16's dynamic scale)."""
    scale_func = getattr(config, "grad_scale_func", None)
    if scale_func is None:
        return 1.0
    return float(scale_func(torch.ones((), dtype=torch.float32, device=device)))


def microbatch_spans(batch: list[ProblemRollouts], rows: int, n_microbatches: int) -> list[list]:
    """Per microbatch of ``rows`` rows (split_rows of the batch's rollouts in order), the
    (problem index, first row, end row) of each problem's rows in it; a problem split across
    microbatches has a span in each."""
    spans, at = [[] for _ in range(n_microbatches)], 0
    for index, problem in enumerate(batch):
        for row in range(at, at + problem.k):
            mb, local = divmod(row, rows)
            if spans[mb] and spans[mb][-1][0] == index:
                spans[mb][-1] = (index, spans[mb][-1][1], local + 1)
            else:
                spans[mb].append((index, local, local + 1))
        at += problem.k
    return spans


def split_problem(spans: list[list]) -> int | None:
    """The first problem whose rows are in two microbatches (None: every problem is whole)."""
    seen = set()
    for mb in spans:
        for p, _, _ in mb:
            if p in seen:
                return p
            seen.add(p)
    return None


class InPassRead:
    """Context manager around the reading pass; ``next_microbatch(i)`` before microbatch i's
    forward (run_microbatches' ``on_microbatch``); ``scores()`` after it, on every rank."""

    def __init__(self, engine: GradientEngine, model, batch, token_scale, spans, rows: int, refs,
                 baseline: str, normalize_std: bool, projections: Projections | None = None):
        self.engine, self.batch, self.spans, self.rows = engine, batch, spans, rows
        at, shares = 0, []
        for problem in batch:  # c_i = N_i / N, exactly as the step weighs the problem's tokens
            shares.append(token_scale[at:at + problem.k].double().sum())
            at += problem.k
        self.shares = torch.stack(shares) if shares else torch.zeros(0, dtype=torch.float64)
        self.informative = torch.tensor([p.has_gradient(baseline, normalize_std) for p in batch],
                                        dtype=torch.bool)
        split = split_problem(spans)
        if split is None:
            self.reader, self.projected_dim = PerProblemPartials(model, refs, len(batch), freeze_weights=False), 0
        elif projections is None:
            problem, first = batch[split], sum(q.k for q in batch[:split])
            raise UnsupportedLayout(
                f"in-pass alignment needs whole problems per microbatch: the step's microbatches of {rows} rollouts "
                f"(policy.max_rollouts_per_microbatch, evened out over the batch) split problem {problem.problem_id} "
                f"(rollouts {first}..{first + problem.k - 1} of the batch); set it to a multiple of the rollouts per "
                "problem that divides the batch, or unset it; or set a projection dimension")
        else:
            names = {id(p): name for name, p in model.named_parameters()}
            self.reader = ProjectedPartials(model, refs, names, len(batch), projections)
            self.projected_dim = projections.dim

    def __enter__(self):
        self.reader.__enter__()
        return self

    def __exit__(self, *exc):
        return self.reader.__exit__(*exc)

    def next_microbatch(self, index: int) -> None:
        self.reader.next_microbatch(self.spans[index], self.rows)

    def scores(self) -> InPassScores:
        """Summed over TP×PP (one all-reduce of [n, 2]); g_i's dot and squared norm per problem."""
        local = self.reader.partials
        self.engine.groups.sum_model_parallel(local)
        local = local.cpu()
        keep = self.informative & (self.shares > 0)
        share = torch.where(keep, self.shares, torch.ones_like(self.shares))
        dot = torch.where(keep, local[:, 0] / share, torch.zeros_like(share))
        sqnorm = torch.where(keep, local[:, 1] / share.square(), torch.zeros_like(share))
        return InPassScores([p.problem_id for p in self.batch], dot, sqnorm, ~keep, self.projected_dim)
