"""Exact per-problem ⟨g_i, G⟩ and ‖g_i‖² on a sharded model, with one reduction per batch.

Per problem, on every rank: run its forward+backward (a callable the caller supplies), read the
two partial sums against the local reference shard, zero the grads — or, when the runner can,
read every problem's partials from one packed pass (megatron/per_problem.py). After all problems: one
all-reduce of [n, 2] over the model-parallel group; data-parallel ranks each take every D-th
problem and their results are gathered back in problem order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ContextManager, Protocol, Sequence

import torch
import torch.distributed as dist

from nemo_gradalign.engine.flat import FlatGradients, can_flatten
from nemo_gradalign.engine.grads import accumulable, local_grad, sum_grads, sum_in_place, zero_grads
from nemo_gradalign.engine.groups import EngineGroups
from nemo_gradalign.engine.reference import EMPTY_MESSAGE, EmptyReferenceGradient, ReferenceGradient
from nemo_gradalign.engine.rules import counted_params


class RunProblem(Protocol):
    """The engine's one interface to a model: a problem's forward+backward on this rank (grads
    accumulate), whether its gradient can be non-zero at all (else no backward is run), and the
    scope every pass runs in, which hands the model back to its owner as it was found.
    Optional, for speed: ``run_many(problems)`` (the sum of their gradients in few passes) and
    ``packed_partials(problems, references)`` (each problem's local partials from one packed
    pass, or None when the model cannot be read that way)."""

    def __call__(self, problem) -> None: ...

    def has_gradient(self, problem) -> bool: ...

    def borrowed(self) -> ContextManager: ...


@dataclass(frozen=True)
class ProblemStats:
    """Global per-problem statistics, in the order the problems were given."""

    dot: torch.Tensor  # ⟨g_i, G/‖G‖⟩, float64
    sqnorm: torch.Tensor  # ‖g_i‖², float64
    informative: torch.Tensor  # bool: g_i can be non-zero (else dot = sqnorm = 0 exactly)

    def cosine(self) -> torch.Tensor:
        """cos(g_i, G); 0 where g_i = 0 (never NaN)."""
        norm = self.sqnorm.clamp_min(0).sqrt()
        return torch.where(norm > 0, self.dot / norm.clamp_min(1e-300), torch.zeros_like(norm))


class GradientEngine:
    """Scores problems on this rank's shard of a (possibly TP/PP/DP-parallel) model."""

    def __init__(self, named_params: Sequence[tuple[str, torch.nn.Parameter]], groups: EngineGroups,
                 reference_dtype: str = "float32", split_problems: bool = True):
        """split_problems=False: each data-parallel rank was handed its own problems (NeMo RL
        shards whole groups over DP); scores stay local, the reference is still summed over DP."""
        named_params = list(named_params)
        self.params = [p for _, p in named_params]
        self.groups = groups
        self.counted = counted_params(named_params, groups.tp_rank, groups.tp_size, groups.pp_size,
                                      groups.ep_size, groups.vp_size, counts_dense=groups.counts_dense,
                                      etp_rank=groups.etp_rank)
        self.reference_dtype = reference_dtype
        self.split_problems = split_problems
        self.device = self.params[0].device if self.params else torch.device("cpu")
        counted_ids = {id(p) for p in self.counted.params}
        others = [p for p in self.params if id(p) not in counted_ids]
        self.flat = FlatGradients(self.counted.params, others) if can_flatten(self.params) else None

    def _zero(self) -> None:
        if self.flat is not None:
            self.flat.install()
            self.flat.zero()
        else:
            zero_grads(self.params)

    @property
    def _dp_split(self) -> int:
        return self.groups.dp_size if self.split_problems else 1

    def _local_share(self, n: int) -> range:
        return range(self.groups.dp_rank, n, self.groups.dp_size) if self.split_problems else range(n)

    def build_reference(self, problems: Sequence, run_problem: RunProblem,
                        step: int = 0, divisor=None) -> ReferenceGradient:
        """G = Σ over validation problems of g_v, each DP rank taking its share; unit norm
        (``divisor``: ReferenceGradient.set_from_grads)."""
        reference = self.empty_reference()
        self.refresh(reference, problems, run_problem, step, divisor)
        return reference

    def empty_reference(self) -> ReferenceGradient:
        """A reference not yet built, over this engine's counted parameters."""
        return ReferenceGradient(self.counted, self.groups, self.reference_dtype)

    def restore_reference(self, state: dict | None) -> ReferenceGradient | None:
        """A reference gradient from its state_dict (None stays None): checkpoint resume."""
        if state is None:
            return None
        reference = self.empty_reference()
        reference.load_state_dict(state)
        return reference

    def refresh(self, reference: ReferenceGradient, problems: Sequence,
                run_problem: RunProblem, step: int, divisor=None) -> None:
        has_grad = [run_problem.has_gradient(p) for p in problems]
        informative = torch.tensor([float(sum(has_grad))], device=self.device)
        if not self.split_problems:  # each DP rank holds other problems: agree on the count
            self.groups.sum_data_parallel([informative])
        if informative.item() == 0:  # checked before touching the buffers, on every rank alike
            raise EmptyReferenceGradient(EMPTY_MESSAGE)
        with run_problem.borrowed():
            self._zero()
            mine = [problems[i] for i in self._local_share(len(problems)) if has_grad[i]]
            run_many = getattr(run_problem, "run_many", None)
            if run_many is not None:  # G is a plain sum: many problems per pass
                run_many(mine)
            else:
                for problem in mine:
                    run_problem(problem)
            self._complete_layout_grads()
            try:
                reference.set_from_grads(self.counted, step, divisor)
            finally:
                self._zero()

    def _complete_layout_grads(self) -> None:
        """Make this rank's grads its exact share of g (engine/rules.py): sequence-parallel
        grads are partial over TP, summed by one small all-reduce; expert grads saw each token
        once per replica in the expert-parallel group, divided by that count; a word embedding
        tied across pipeline stages holds half of its grad on each end, summed over the embedding group; under
        context parallelism each rank's grads are its tokens' share, summed over CP (with EP the
        dense ones only: the EP group spans the CP ranks, so the experts saw every chunk) — the full
        gradient's all-reduce, per problem, as ‖g‖² needs (megatron's DDP sums the same grads
        over its data×context-parallel group once per step)."""
        if self.groups.ep_size > 1:
            for param in self.counted.experts:
                local_grad(param).div_(self.groups.replicas_per_expert_group)
        sum_grads(self.counted.sequence_parallel, self.groups.sum_tensor_parallel)
        sum_grads(self.counted.tied_embedding, self.groups.sum_embedding)
        if self.groups.cp_size == 1:
            return
        if self.groups.ep_size == 1 and self.flat is not None:
            sum_in_place(self.flat.counted, self.groups.sum_context_parallel)
            return
        # with EP the experts already saw every CP chunk, and the EP reduction spans the CP ranks
        experts = {id(p) for p in self.counted.experts} if self.groups.ep_size > 1 else set()
        shares = [p for p in self.counted.params if id(p) not in experts]
        sum_grads(shares, self.groups.sum_context_parallel)
        if self.groups.ep_size > 1 and self.groups.cp_rank != 0:  # so the dense sum is counted on CP rank 0 only
            for param in shares:
                local_grad(param).zero_()

    def _partials(self, reference: ReferenceGradient) -> torch.Tensor:
        if self.flat is not None:
            grads = accumulable(self.flat.counted)
            ref = reference.flat.to(grads.dtype)
            return torch.stack([torch.dot(grads, ref), torch.dot(grads, grads)]).double()
        dot = torch.zeros((), dtype=torch.float64, device=self.device)
        sq = torch.zeros((), dtype=torch.float64, device=self.device)
        for param, ref in zip(self.counted.params, reference.buffers):
            grad = local_grad(param)
            if grad is None:
                continue
            flat = accumulable(grad.reshape(-1))
            dot += torch.dot(flat, ref.reshape(-1).to(flat.dtype)).double()
            sq += torch.dot(flat, flat).double()
        return torch.stack([dot, sq])

    def score(self, problems: Sequence, run_problem: RunProblem,
              reference: ReferenceGradient) -> ProblemStats:
        """Per-problem ⟨g_i, Ĝ⟩ and ‖g_i‖² over the whole model, gathered in problem order."""
        if not reference.ready:
            raise RuntimeError("the reference gradient has not been built yet")
        n = len(problems)
        dp = self._dp_split
        per_rank = -(-n // dp) if n else 0
        local = torch.zeros(per_rank, 2, dtype=torch.float64, device=self.device)
        has_grad = [run_problem.has_gradient(p) for p in problems]
        share = list(self._local_share(n))
        slots = [slot for slot, i in enumerate(share) if has_grad[i]]  # g_i = 0 exactly: no pass
        with run_problem.borrowed():
            self._zero()
            packed = self._packed(reference, [problems[share[s]] for s in slots], run_problem)
            if packed is not None:
                local[slots] = packed.to(local.device)
                self._zero()
            else:
                for slot in slots:
                    run_problem(problems[share[slot]])
                    self._complete_layout_grads()
                    local[slot] = self._partials(reference)
                    self._zero()
        self.groups.sum_model_parallel(local)
        gathered = self._gather_data_parallel(local).cpu()
        order = torch.tensor([gathered_index(i, dp, per_rank) for i in range(n)], dtype=torch.long)
        stats = gathered.reshape(-1, 2)[order] if n else torch.zeros(0, 2, dtype=torch.float64)
        return ProblemStats(stats[:, 0].clone(), stats[:, 1].clone(), torch.tensor(has_grad, dtype=torch.bool))

    def _packed(self, reference: ReferenceGradient, problems: list, run_problem) -> torch.Tensor | None:
        """All of this rank's partials from one packed pass, when the runner can read them so
        (packed_partials) and no layout rule needs a problem's whole gradient first (SP sums
        over TP, tied embeddings over stages, CP over its ranks, EP divides experts): else None
        and one problem per backward."""
        packed = getattr(run_problem, "packed_partials", None)
        if (packed is None or self.counted.sequence_parallel or self.counted.tied_embedding
                or self.groups.ep_size > 1 or self.groups.cp_size > 1):
            return None
        return packed(problems, {id(p): r for p, r in zip(self.counted.params, reference.buffers)})

    def _gather_data_parallel(self, local: torch.Tensor) -> torch.Tensor:
        if self._dp_split == 1:
            return local
        parts = [torch.empty_like(local) for _ in range(self.groups.dp_size)]
        dist.all_gather(parts, local, group=self.groups.data_parallel)
        return torch.stack(parts)


def gathered_index(problem: int, dp_size: int, per_rank: int) -> int:
    """Row of problem ``problem`` in the DP-gathered [dp, per_rank] table (round-robin split)."""
    return (problem % dp_size) * per_rank + problem // dp_size
