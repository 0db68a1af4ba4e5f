"""Exact per-problem ⟨g_i, G⟩ and ‖g_i‖² for many problems in ONE forward+backward.

Problems are packed as rows of the same microbatches (rows never attend to each other, so a
problem's loss depends only on its own rows). Every parameter of the local GPT belongs to a
module whose weight gradient is a sum over tokens of a per-token term built from the module's
input x_t and the gradient δ_t at its output:

- linear (megatron's Column/RowParallelLinear): ∂W = Σ_t δ_t x_tᵀ, ∂b = Σ_t δ_t;
- layer norm: ∂γ = Σ_t δ_t ⊙ x̂_t, ∂β = Σ_t δ_t;
- embedding (vocab-parallel or positions): row v of ∂E = Σ_{t: id_t = v} δ_t.

Forward hooks keep x (and which rows belong to which problem); a tensor hook on the output
receives δ in backward, sums each problem's tokens into its own gradient of that parameter —
one weight-sized buffer at a time, the same flops as the weight gradient itself (a "ghost norm"
through the T×T token Gram matrices would save memory, never flops, because the ghost dot
⟨G, Σ δxᵀ⟩ already costs T·in·out) — and adds its dot with the reference and its squared norm
to the problem's row. Squared norms and dots are sums over parameters, so per-parameter
per-problem values add up to the exact totals. Anything this cannot attribute exactly is
refused up front (``unsupported_reason``) and the caller falls back to one problem per backward.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from nemo_gradalign.engine.grads import accumulable
from nemo_gradalign.megatron.packed_rows import PackedRows, Span

def _module_kinds():
    from megatron.core.tensor_parallel import ColumnParallelLinear, RowParallelLinear, VocabParallelEmbedding

    return {ColumnParallelLinear: "linear", RowParallelLinear: "linear",
            VocabParallelEmbedding: "embedding", torch.nn.Embedding: "embedding",
            torch.nn.LayerNorm: "layernorm"}


def unsupported_reason(model) -> str | None:
    """Why this model's per-problem gradients cannot be read from one packed pass (None: they can)."""
    from megatron.core.utils import get_model_config

    config = get_model_config(model)
    if config.sequence_parallel:
        return "sequence parallelism (layer-norm grads are partial over TP)"
    if getattr(config, "num_moe_experts", None):
        return "MoE layers (tokens are permuted across experts)"
    if getattr(config, "recompute_granularity", None):
        return "activation recomputation (modules run forward twice)"
    if getattr(config, "context_parallel_size", 1) > 1:
        return "context parallelism"
    kinds = _module_kinds()
    for name, module in model.named_modules():
        if list(module.parameters(recurse=False)) and type(module) not in kinds:
            return f"module {name!r} ({type(module).__name__}) has parameters of an unknown kind"
        if getattr(module, "share_embeddings_and_output_weights", False):
            return "embeddings tied to the output layer (one parameter fed by two modules)"
    return None


# torch.bmm(a, b, out_dtype=...): the overload aten::bmm.dtype (PyTorch >= 2.8), run on CUDA only
_WIDE_BMM = "dtype" in torch.ops.aten.bmm.overloads()


def wide_product(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b (batched) summed in fp32 (``accumulable``'s dtype). Why not cast first: a product of
    two 16-bit numbers is exact in fp32 either way, but fp32 inputs run the matmul on an H200 at
    ~1/10 of the 16-bit tensor-core rate — that made the per-problem weight products 2-3x slower
    than a training pass (issue 19). On CUDA, 16-bit inputs go to the tensor cores with an fp32
    output and fp32 accumulation (``out_dtype``, PyTorch >= 2.8); elsewhere, cast first."""
    if _WIDE_BMM and a.is_cuda and a.dtype == b.dtype and a.dtype in (torch.bfloat16, torch.float16):
        return torch.bmm(a, b, out_dtype=torch.float32)
    return accumulable(a) @ accumulable(b)


@dataclass
class _Pending:
    """What a module's forward left for its backward: its input and the microbatch's rows."""

    inputs: torch.Tensor
    rows: PackedRows


class PerProblemPartials:
    """Context manager: install hooks on ``model``; ``next_microbatch(spans)`` before each
    microbatch's forward (every pipeline stage sees the microbatches in order); ``partials`` is
    this rank's [n, 2] float64 (dot, sqnorm) over the counted parameters afterwards.
    ``freeze_weights=False`` leaves autograd's weight gradients as they are (a training pass
    read in passing: the hooks only read δ and x, so the step's grads are bit-identical)."""

    # per-problem weight gradients are built this many elements at a time
    CHUNK_ELEMENTS = 1 << 24

    def __init__(self, model, references: dict[int, torch.Tensor], n_problems: int,
                 freeze_weights: bool = True):
        self.model = model
        self.freeze_weights = freeze_weights
        self.references = references  # id(param) -> this rank's reference shard; others not counted
        first = next(model.parameters())
        device = first.device
        # a microbatch's partials add up in the grads' accumulation dtype, as the flat one-problem
        # path's dot does; the totals over microbatches in float64
        self._dtype = accumulable(torch.empty(0, dtype=first.dtype)).dtype
        self._partials = torch.zeros(n_problems, 2, dtype=torch.float64, device=device)
        self._device = device
        self._refs: dict[tuple[int, torch.dtype], torch.Tensor] = {}
        self._rows: PackedRows | None = None
        self._done: list[PackedRows] = []
        self._pending = 0  # elements of small per-problem grads waiting to be read
        self._microbatch = -1
        self._seen: set[tuple[int, int]] = set()
        self._handles = []

    def next_microbatch(self, spans: list[Span], rows: int) -> None:
        self._rows = PackedRows.of(spans, rows, self._device, self._dtype)
        self._done.append(self._rows)
        self._microbatch += 1

    @property
    def partials(self) -> torch.Tensor:
        """This rank's [n, 2] (dot, sqnorm) of every problem, after the pass."""
        for rows in self._done:
            rows.read_small()
            self._partials.index_add_(0, rows.problems, rows.acc.double())
        self._done.clear()
        return self._partials

    def __enter__(self):
        """Hooks on every layer with counted parameters. Linear and layer-norm weights stop
        requiring grad for the pass (restored on exit): their per-problem gradients are formed
        here, so autograd's summed weight gradient would be discarded work — megatron then runs
        its frozen-weight linear (input gradients only). Embeddings keep theirs: backward must
        start from a tensor that requires grad."""
        kinds = _module_kinds()
        self._frozen = []
        for module in self.model.modules():
            kind = kinds.get(type(module))
            if kind and any(id(p) in self.references for p in module.parameters(recurse=False)):
                self._handles.append(module.register_forward_hook(self._forward_hook(kind), with_kwargs=True))
                if kind != "embedding" and self.freeze_weights:
                    self._frozen += [p for p in module.parameters(recurse=False) if p.requires_grad]
        for param in self._frozen:
            param.requires_grad_(False)
        return self

    def __exit__(self, *exc):
        for param in self._frozen:
            param.requires_grad_(True)
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        return False

    def _forward_hook(self, kind: str):
        def hook(module, args, kwargs, output):
            key = (id(module), self._microbatch)
            if key in self._seen:
                raise RuntimeError(f"{type(module).__name__} ran forward twice in one microbatch; "
                                   "packed scoring cannot attribute its gradient")
            self._seen.add(key)
            if kwargs.get("weight") is not None:
                raise RuntimeError("a linear layer was called with an external weight (tied embeddings)")
            out = output[0] if isinstance(output, tuple) else output
            if not out.requires_grad:
                return
            pending = _Pending(args[0].detach(), self._rows)
            out.register_hook(lambda grad: self._backward(kind, module, pending, grad))
        return hook

    def _backward(self, kind: str, module, pending: _Pending, grad: torch.Tensor) -> None:
        with torch.no_grad():
            if kind == "linear":  # its weight products take 16-bit δ and x as they are
                self._linear(module, pending, grad)
            else:
                getattr(self, "_" + kind)(module, pending, accumulable(grad))

    # -- per kind: [P, ...] per-problem gradients of each counted parameter ------------------
    def _reference(self, param, dtype: torch.dtype) -> torch.Tensor | None:
        """The parameter's reference shard, flat, in the grads' dtype (cast once per pass)."""
        key = (id(param), dtype)
        if key not in self._refs:
            ref = self.references.get(id(param))
            self._refs[key] = None if ref is None else ref.reshape(-1).to(dtype)
        return self._refs[key]

    SMALL = 1 << 12  # per-problem grads of at most this many elements are read later, together
    PENDING = 1 << 22  # ... once this many elements wait (about 16 MB in fp32), or at the end

    def _add(self, acc: torch.Tensor, grads: torch.Tensor, ref: torch.Tensor | None) -> None:
        """Add each problem's ⟨grad, ref⟩ and ‖grad‖² (grads [P, ...]) to ``acc`` [P, 2]."""
        if ref is None:
            return
        flat = grads.reshape(grads.shape[0], -1)
        acc[:, 0].addmv_(flat, ref)
        acc[:, 1] += (flat * flat).sum(1)

    def _add_later(self, rows: PackedRows, grads: torch.Tensor, ref: torch.Tensor | None) -> None:
        """``_add`` for all of a microbatch's problems; small grads (biases, norms) wait to be
        read together, until too many elements wait."""
        if ref is None or grads[0].numel() > self.SMALL:
            self._add(rows.acc, grads, ref)
            return
        rows.small.append((grads.reshape(grads.shape[0], -1), ref))
        self._pending += grads.numel()
        if self._pending > self.PENDING:
            for waiting in self._done:
                waiting.read_small()
            self._pending = 0

    def _linear(self, module, pending: _Pending, grad: torch.Tensor) -> None:
        # [s, b, ·] activations; a bias (added inside or returned apart) shares the output's δ
        rows = pending.rows
        dtype = accumulable(grad[:0]).dtype
        ref = self._reference(module.weight, dtype)
        if ref is not None:
            x = rows.group(pending.inputs, sequence_first=True)
            delta = rows.group(grad, sequence_first=True)
            step = max(1, self.CHUNK_ELEMENTS // module.weight.numel())
            for j in range(0, len(rows.problems), step):
                self._add(rows.acc[j:j + step], wide_product(delta[j:j + step].transpose(1, 2), x[j:j + step]), ref)
        if getattr(module, "bias", None) is not None:
            self._add_later(rows, rows.sum_tokens(accumulable(grad)), self._reference(module.bias, dtype))

    def _layernorm(self, module, pending: _Pending, grad: torch.Tensor) -> None:
        rows = pending.rows
        if module.weight is not None:
            x_hat = F.layer_norm(pending.inputs, module.normalized_shape, None, None, module.eps)
            self._add_later(rows, rows.sum_tokens(grad * accumulable(x_hat)),
                            self._reference(module.weight, grad.dtype))
        if module.bias is not None:
            self._add_later(rows, rows.sum_tokens(grad), self._reference(module.bias, grad.dtype))

    def _embedding(self, module, pending: _Pending, grad: torch.Tensor) -> None:
        # ids and δ are [b, s, ·]; a vocab-parallel shard owns rows [start, start + rows) of E.
        # Each problem's ∂E has a row per distinct id it uses: sum δ over (problem, id) pairs.
        ref = self.references.get(id(module.weight))
        if ref is None:
            return
        rows = module.weight.shape[0]
        local = pending.rows.group(pending.inputs.unsqueeze(-1), sequence_first=False).squeeze(-1)
        local = local - getattr(module, "vocab_start_index", 0)
        delta = pending.rows.group(grad, sequence_first=False)
        owner = torch.arange(local.shape[0], device=local.device).unsqueeze(1).expand_as(local)
        mine = (local >= 0) & (local < rows)
        pairs, where = torch.unique(owner[mine] * rows + local[mine], return_inverse=True)
        summed = delta.new_zeros(len(pairs), delta.shape[-1]).index_add_(0, where, delta[mine])
        dots = (summed * ref[pairs % rows].to(summed.dtype)).sum(1)
        sqnorms = (summed * summed).sum(1)
        pending.rows.acc.index_add_(0, pairs // rows, torch.stack([dots, sqnorms], 1).to(pending.rows.acc.dtype))
